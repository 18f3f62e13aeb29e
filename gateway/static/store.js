// What the client knows of each conversation. Messages are keyed by msg_id, so a message that
// arrives twice (a push and a sync, or a resend's ack) is kept once, and listed in seq order
// (pending messages, which have no seq yet, after the stored ones).

export class Conversation {
  constructor(info) {
    this.id = null;            // null for a private chat whose first message is not stored yet
    this.type = "private";
    this.name = "";
    this.peerId = null;
    this.lastSeq = 0;
    this.readSeq = 0;
    this.lastMessage = null;
    this.messages = new Map(); // msg_id -> message ({seq: null, pending: true} until acked)
    this.loaded = false;       // its latest page of history was read (then it is kept in sync)
    this.hasMore = true;       // older history exists
    this.readBy = new Map();   // user_id -> the seq they have read up to, as far as we know
    this.update(info);
  }

  update(info) {
    if (info.conversation_id !== undefined) this.id = info.conversation_id;
    if (info.type !== undefined) this.type = info.type;
    if (info.name) this.name = info.name;
    if (info.peer_id !== undefined) this.peerId = info.peer_id;
    if (info.last_seq !== undefined) this.lastSeq = Math.max(this.lastSeq, info.last_seq);
    if (info.read_seq !== undefined) this.readSeq = Math.max(this.readSeq, info.read_seq);
    if (info.last_message) this.noteLast(info.last_message);
  }

  noteLast(message) {
    if (!this.lastMessage || (message.seq || 0) >= (this.lastMessage.seq || 0)) this.lastMessage = message;
    if (message.seq) this.lastSeq = Math.max(this.lastSeq, message.seq);
  }

  /** Keep a message (stored, or pending without seq); true when it is new or just got its seq. */
  add(message) {
    const known = this.messages.get(message.msg_id);
    if (known && known.seq != null) return false;
    this.messages.set(message.msg_id, { ...known, ...message, pending: message.seq == null });
    if (message.seq != null) {
      this.noteLast(message);
      this.noteRead(message.from_user_id, message.seq);  // sending moves the sender's read cursor
    }
    return true;
  }

  /** A member's read position: from their receipts, and from their own messages (the server moves
   * a sender's read cursor to their message's seq without sending a receipt). */
  noteRead(userId, seq) {
    if (userId != null && seq > (this.readBy.get(userId) || 0)) this.readBy.set(userId, seq);
  }

  get unread() {
    return Math.max(this.lastSeq - this.readSeq, 0);
  }

  /** The highest stored seq held (0: none). */
  maxSeq() {
    let max = 0;
    for (const m of this.messages.values()) if (m.seq != null && m.seq > max) max = m.seq;
    return max;
  }

  minSeq() {
    let min = Infinity;
    for (const m of this.messages.values()) if (m.seq != null && m.seq < min) min = m.seq;
    return min === Infinity ? null : min;
  }

  ordered() {
    return [...this.messages.values()].sort((a, b) => {
      if (a.seq != null && b.seq != null) return a.seq - b.seq;
      if (a.seq != null) return -1;
      if (b.seq != null) return 1;
      return a.localTs - b.localTs;
    });
  }
}

/** A random UUID v4 (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
