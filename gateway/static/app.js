// PingMe web client: log in, conversations with unread counts and online dots, private and group
// chats, typing, read receipts, history paged by seq. Every piece of user data goes into the page
// with textContent (never as HTML). Push is a hint, sync is the truth (docs/PROTOCOL.md): on every
// (re)connect the client re-reads the conversation list, syncs each open conversation from the
// last seq it holds, and resends every unacknowledged message with its msg_id; messages are keyed
// by msg_id (store.js), so none is shown twice.

import { api, ApiError, useSession } from "./api.js";
import { Link } from "./link.js";
import { Conversation, uuid4 } from "./store.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "pingme.session";  // per tab: two windows can be two users
const PENDING_KEY = "pingme.pending";
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 4000;
const PAGE = 50;
// Errors after which a resend cannot succeed: the message is marked failed.
const FINAL_SEND_ERRORS = new Set([10002, 10004, 10006, 30001, 40002, 40003]);
// A sync refused for now (10007 over the sync budget, 20001 the database away): sync again later.
const SYNC_AGAIN_ERRORS = new Set([10007, 20001]);

const state = {
  token: null,
  refreshToken: null,
  refreshTimer: null,
  me: null,
  link: null,
  convs: new Map(),      // conversation_id -> Conversation
  drafts: new Map(),     // peer user id -> Conversation without id (no message stored yet)
  current: null,
  pending: new Map(),    // msg_id -> {msg_id, content, target: {to_user_id} | {group_id}, peerId}
  users: new Map(),      // user id -> {id, username, nickname} | "loading"
  online: new Map(),     // user id -> bool
  typing: new Map(),     // conversation_id -> Map(user id -> timer)
  lastTypingSent: 0,
  sendPausedUntil: 0,
  sendTimer: null,
  syncTimer: null,
  syncAgain: new Set(),  // conversation ids whose sync was refused for now
};

// ---- session ----------------------------------------------------------------------------------

function saveSession() {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: state.token, refreshToken: state.refreshToken,
                                                       expiresAt: state.expiresAt, me: state.me }));
}

// Access tokens are short-lived (jwt.ttl_seconds): the refresh token gets a new pair before the
// access token expires (and after an API call or a socket found it expired). A refresh token is
// good once: its successor replaces it at once (docs/SECURITY.md).
function takeTokens(tokens) {
  state.token = tokens.token;
  state.refreshToken = tokens.refresh_token || null;
  state.expiresAt = Date.now() + tokens.expires_in * 1000;
  saveSession();
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  if (!state.refreshToken || !state.expiresAt) return;
  const delay = Math.max(1000, (state.expiresAt - Date.now()) * 0.8);
  state.refreshTimer = setTimeout(() => refreshSession(), Math.min(delay, 2 ** 31 - 1));
}

let refreshing = null;
async function refreshSession() {
  if (!state.refreshToken) return false;
  if (!refreshing) {  // one refresh at a time: a second one with the same token would end the session
    refreshing = api("POST", "/api/v1/auth/refresh", { body: { refresh_token: state.refreshToken } })
      .then((tokens) => { takeTokens(tokens); return true; })
      .catch((err) => {
        if (err instanceof ApiError && err.code === 30005) logout(`Please log in again (${err.message}).`);
        return false;
      })
      .finally(() => { refreshing = null; });
  }
  return refreshing;
}

useSession({ token: () => state.token, refresh: refreshSession });

function savePending() {
  sessionStorage.setItem(PENDING_KEY, JSON.stringify([...state.pending.values()]));
}

async function onLogin(event) {
  event.preventDefault();
  const form = event.target;
  const action = event.submitter ? event.submitter.value : "login";
  const body = { username: form.username.value.trim(), password: form.password.value };
  $("login-error").textContent = "";
  try {
    if (action === "register") await api("POST", "/api/v1/auth/register", { body });
    const session = await api("POST", "/api/v1/auth/login", { body });
    state.me = session.user;
    takeTokens(session);
    form.password.value = "";
    startChat();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
}

function logout(message = "") {
  if (state.token && message === "") {  // the user's own logout: end the session on the server too
    api("POST", "/api/v1/auth/logout", { token: state.token }).catch(() => {});
  }
  clearTimeout(state.refreshTimer);
  clearTimeout(state.sendTimer);
  clearTimeout(state.syncTimer);
  state.syncTimer = null;
  state.syncAgain.clear();
  state.sendPausedUntil = 0;
  if (state.link) state.link.stop();
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  Object.assign(state, { token: null, refreshToken: null, expiresAt: null, me: null, link: null, current: null });
  for (const key of ["convs", "drafts", "pending", "users", "online", "typing"]) state[key].clear();
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
}

function startChat() {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("me-name").textContent = state.me.username;
  state.users.set(state.me.id, state.me);
  for (const p of JSON.parse(sessionStorage.getItem(PENDING_KEY) || "[]")) state.pending.set(p.msg_id, p);
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  state.link = new Link(wsUrl, () => state.token, {
    onOpen,
    onFrame,
    onStatus: showStatus,
    onAuthFailed: async (message, code) => {
      // An expired token is refreshed and the socket opened again; anything else ends the session.
      if (code === 30004 && await refreshSession() && state.link) state.link.reconnectNow();
      else logout(`Please log in again (${message}).`);
    },
  });
  state.link.start();
  renderConversations();
}

function showStatus(name, detail) {
  const el = $("status");
  el.dataset.state = name;
  if (name === "reconnecting") {
    el.textContent = `reconnecting in ${(detail.delay / 1000).toFixed(1)} s`;
  } else {
    el.textContent = name === "online" ? "online" : "connecting…";
  }
}

// ---- (re)connect: the conversation list, sync, resend ----------------------------------------

async function onOpen() {
  try {
    await refreshConversations();
  } catch (err) {
    showError(err);
  }
  for (const conv of state.convs.values()) {
    if (conv.loaded) requestSync(conv);
  }
  for (const p of state.pending.values()) sendPending(p);
  const conv = state.current;  // a read ack sent just before the drop may be lost: again (idempotent)
  if (conv && conv.id && conv.lastSeq) {
    state.link.send("ack", { conversation_id: conv.id, seq: conv.lastSeq, ack_type: "read" });
    conv.readSeq = conv.lastSeq;
  }
}

async function refreshConversations() {
  const data = await api("GET", "/api/v1/conversations", { auth: true });
  for (const info of data.conversations) {
    let conv = state.convs.get(info.conversation_id);
    if (!conv && info.type === "private" && state.drafts.has(info.peer_id)) {
      conv = adoptDraft(info.peer_id, info.conversation_id);
    }
    if (conv) conv.update(info);
    else state.convs.set(info.conversation_id, new Conversation(info));
    if (info.type === "private" && !state.online.has(info.peer_id)) loadPresence(info.peer_id);
  }
  renderConversations();
  if (state.current) renderConversation();
}

function adoptDraft(peerId, conversationId) {
  const draft = state.drafts.get(peerId);
  state.drafts.delete(peerId);
  draft.id = conversationId;
  const existing = state.convs.get(conversationId);
  if (existing) {  // the list or a push got there first: keep that one, with the draft's messages
    for (const m of draft.messages.values()) existing.add({ ...m, conversation_id: conversationId });
    if (state.current === draft) openConversation(existing);  // loads its history
    return existing;
  }
  state.convs.set(conversationId, draft);
  return draft;
}

function requestSync(conv) {
  state.link.send("sync", { conversation_id: conv.id, after_seq: conv.maxSeq(), limit: 200 });
}

// A refused sync names its conversation: that one syncs again, from what it has, after the hint
// (none named, as for a sync without a conversation: every loaded conversation).
function syncAgainLater(conversationId, ms) {
  if (conversationId != null) state.syncAgain.add(conversationId);
  else for (const conv of state.convs.values()) if (conv.loaded) state.syncAgain.add(conv.id);
  if (state.syncTimer) return;
  state.syncTimer = setTimeout(() => {
    state.syncTimer = null;
    const ids = [...state.syncAgain];
    state.syncAgain.clear();
    for (const id of ids) {
      const conv = state.convs.get(id);
      if (state.link && conv && conv.loaded) requestSync(conv);
    }
  }, ms);
}

async function loadPresence(userId) {
  state.online.set(userId, false);
  try {
    const status = await api("GET", `/api/v1/users/${userId}/status`, { auth: true });
    state.online.set(userId, status.online);
    renderConversations();
    if (state.current) renderHeader();
  } catch (err) {
    state.online.delete(userId);
  }
}

// ---- frames from the gateway ----------------------------------------------------------------

function onFrame(type, payload) {
  switch (type) {
    case "message": onMessage(payload); break;
    case "message_ack": onAck(payload); break;
    case "sync": onSync(payload); break;
    case "receipt": onReceipt(payload); break;
    case "typing": onTyping(payload); break;
    case "presence": onPresence(payload); break;
    case "error": onError(payload); break;
    default: break;
  }
}

function onMessage(message) {
  const conv = state.convs.get(message.conversation_id);
  if (!conv) {  // a new conversation (someone wrote first, or added us to a group)
    refreshConversations().then(() => onMessage(message), showError);
    return;
  }
  if (conv.loaded && conv.maxSeq() && message.seq > conv.maxSeq() + 1) requestSync(conv);  // a gap
  if (!conv.add(message)) return;
  if (message.from_user_id === state.me.id) conv.readSeq = Math.max(conv.readSeq, message.seq);
  else if (conv === state.current && document.visibilityState === "visible") markRead(conv);
  else state.link.send("ack", { conversation_id: conv.id, seq: message.seq, ack_type: "delivered" });
  clearTyping(conv.id, message.from_user_id);
  // A private peer's presence is shown to you once they wrote to you (docs/SECURITY.md): ask now.
  if (conv.type === "private" && message.from_user_id === conv.peerId && !state.online.has(conv.peerId)) {
    loadPresence(conv.peerId);
  }
  changed(conv);
}

function onAck(ack) {
  const pending = state.pending.get(ack.msg_id);
  if (!pending) return;  // an ack of a resend already answered
  state.pending.delete(ack.msg_id);
  savePending();
  let conv = state.convs.get(ack.conversation_id);
  if (!conv && pending.peerId != null && state.drafts.has(pending.peerId)) conv = adoptDraft(pending.peerId, ack.conversation_id);
  if (!conv) {
    refreshConversations().catch(showError);
    return;
  }
  const known = conv.messages.get(ack.msg_id);
  conv.add({ ...(known || {}), msg_id: ack.msg_id, content: pending.content, content_type: "text",
             from_user_id: state.me.id, conversation_id: ack.conversation_id, seq: ack.seq,
             server_ts: ack.server_ts });
  conv.readSeq = Math.max(conv.readSeq, ack.seq);  // your own messages are never unread
  changed(conv);
}

function onSync(result) {
  const conv = state.convs.get(result.conversation_id);
  if (!conv) return;
  for (const message of result.messages) {
    conv.add(message);
    if (message.from_user_id === state.me.id) conv.readSeq = Math.max(conv.readSeq, message.seq);
  }
  if (result.has_more) requestSync(conv);
  if (conv === state.current) markRead(conv);
  changed(conv);
}

function onReceipt(receipt) {
  const conv = state.convs.get(receipt.conversation_id);
  if (!conv) return;
  conv.noteRead(receipt.user_id, receipt.seq);
  if (conv === state.current) renderMessages();
}

function onTyping({ conversation_id: convId, user_id: userId }) {
  const typers = state.typing.get(convId) || new Map();
  state.typing.set(convId, typers);
  clearTimeout(typers.get(userId));
  typers.set(userId, setTimeout(() => clearTyping(convId, userId), TYPING_SHOWN_MS));
  if (state.current && state.current.id === convId) renderTyping();
}

function clearTyping(convId, userId) {
  const typers = state.typing.get(convId);
  if (!typers || !typers.has(userId)) return;
  clearTimeout(typers.get(userId));
  typers.delete(userId);
  if (state.current && state.current.id === convId) renderTyping();
}

function onPresence({ user_id: userId, online }) {
  state.online.set(userId, online);
  renderConversations();
  if (state.current) renderHeader();
}

function onError(error) {
  const pending = state.pending.get(error.ref);
  if (pending && error.code === 10007) {  // over the send rate limit: pause, then resend in order
    pauseSending(error.retry_after_ms || 1000);
    return;
  }
  if (error.ref === "sync" && SYNC_AGAIN_ERRORS.has(error.code)) {
    syncAgainLater(error.conversation_id, error.retry_after_ms || 2000);
    return;
  }
  if (!pending) {
    showError(new ApiError(0, error.code, error.message));
    return;
  }
  if (!FINAL_SEND_ERRORS.has(error.code)) return;  // e.g. 50008: resent on the next connect
  state.pending.delete(error.ref);
  savePending();
  const conv = conversationOf(pending);
  const message = conv && conv.messages.get(error.ref);
  if (message) {
    message.failed = error.message;
    changed(conv);
  }
}

// ---- actions ----------------------------------------------------------------------------------

function conversationOf(pending) {
  if (pending.target.group_id != null) return state.convs.get(pending.target.group_id);
  for (const conv of state.convs.values()) {
    if (conv.type === "private" && conv.peerId === pending.peerId) return conv;
  }
  return state.drafts.get(pending.peerId);
}

// While the server refuses sends (10007), new messages wait with the refused ones; when the retry
// hint has passed, every pending message goes again in the order it was written (same msg_id).
function pauseSending(ms) {
  const until = Date.now() + ms;
  if (until <= state.sendPausedUntil) return;
  state.sendPausedUntil = until;
  clearTimeout(state.sendTimer);
  state.sendTimer = setTimeout(() => {
    state.sendPausedUntil = 0;
    if (state.link) for (const p of state.pending.values()) sendPending(p);
  }, ms);
}

function sendPending(p) {
  if (Date.now() < state.sendPausedUntil) return;  // the timer of pauseSending sends it
  state.link.send("send", { msg_id: p.msg_id, content: p.content, content_type: "text", ...p.target });
}

function onSend(event) {
  event.preventDefault();
  const input = $("composer-input");
  const content = input.value;
  const conv = state.current;
  if (!conv || !content.trim()) return;
  const target = conv.type === "group" ? { group_id: conv.id } : { to_user_id: conv.peerId };
  const p = { msg_id: uuid4(), content, target, peerId: conv.type === "group" ? null : conv.peerId };
  state.pending.set(p.msg_id, p);
  savePending();
  conv.add({ msg_id: p.msg_id, content, content_type: "text", from_user_id: state.me.id,
             conversation_id: conv.id, seq: null, localTs: Date.now() });
  sendPending(p);
  input.value = "";
  changed(conv, true);
}

function onComposerInput() {
  const conv = state.current;
  const now = Date.now();
  if (conv && conv.id && now - state.lastTypingSent > TYPING_SEND_EVERY_MS) {
    if (state.link.send("typing", { conversation_id: conv.id })) state.lastTypingSent = now;
  }
}

function markRead(conv) {
  if (conv.id && conv.lastSeq > conv.readSeq &&
      state.link.send("ack", { conversation_id: conv.id, seq: conv.lastSeq, ack_type: "read" })) {
    conv.readSeq = conv.lastSeq;
    renderConversations();
  }
}

async function openConversation(conv) {
  state.current = conv;
  state.lastTypingSent = 0;
  $("conversation").hidden = false;
  renderConversations();
  renderConversation();
  scrollToBottom();
  $("composer-input").focus();
  markRead(conv);
  if (conv.id && !conv.loaded) {
    try {
      const page = await api("GET", `/api/v1/conversations/${conv.id}/messages?limit=${PAGE}`, { auth: true });
      for (const m of page.messages) conv.add(m);
      conv.hasMore = page.has_more;
      conv.loaded = true;
      requestSync(conv);  // what arrived between the page and now
    } catch (err) {
      showError(err);
    }
    if (state.current === conv) {
      renderConversation();
      scrollToBottom();
    }
  }
  markRead(conv);
}

async function loadOlder() {
  const conv = state.current;
  if (!conv || !conv.loaded || !conv.hasMore || conv.loadingOlder) return;
  conv.loadingOlder = true;
  const pane = $("messages-pane");
  try {
    const before = conv.minSeq();
    const page = await api("GET", `/api/v1/conversations/${conv.id}/messages?before_seq=${before}&limit=${PAGE}`,
                           { auth: true });
    const fromBottom = pane.scrollHeight - pane.scrollTop;
    for (const m of page.messages) conv.add(m);
    conv.hasMore = page.has_more;
    if (state.current === conv) {
      renderMessages();
      pane.scrollTop = pane.scrollHeight - fromBottom;  // keep what the reader looks at in place
    }
  } catch (err) {
    showError(err);
  } finally {
    conv.loadingOlder = false;
  }
}

async function findUser(username) {
  const user = await api("GET", `/api/v1/users?username=${encodeURIComponent(username)}`, { auth: true });
  state.users.set(user.id, user);
  return user;
}

async function onNewChat(event) {
  event.preventDefault();
  const input = event.target.username;
  $("sidebar-error").textContent = "";
  try {
    const user = await findUser(input.value.trim());
    if (user.id === state.me.id) throw new Error("that is you");
    let conv = [...state.convs.values()].find((c) => c.type === "private" && c.peerId === user.id);
    if (!conv) {
      conv = state.drafts.get(user.id) || new Conversation({ type: "private", peer_id: user.id });
      conv.loaded = true;  // nothing is stored yet: what it will hold is all there is
      conv.hasMore = false;
      state.drafts.set(user.id, conv);
      loadPresence(user.id);
    }
    input.value = "";
    openConversation(conv);
  } catch (err) {
    showError(err);
  }
}

async function onNewGroup(event) {
  event.preventDefault();
  const form = event.target;
  $("sidebar-error").textContent = "";
  try {
    const names = form.members.value.split(",").map((s) => s.trim()).filter(Boolean);
    const ids = [];
    for (const name of names) ids.push((await findUser(name)).id);
    const group = await api("POST", "/api/v1/groups", { auth: true, body: { name: form.name.value.trim(), member_ids: ids } });
    form.reset();
    await refreshConversations();
    openConversation(state.convs.get(group.conversation_id));
  } catch (err) {
    showError(err);
  }
}

async function onAddMember(event) {
  event.preventDefault();
  const form = event.target;
  const conv = state.current;
  try {
    const user = await findUser(form.username.value.trim());
    await api("POST", `/api/v1/groups/${conv.id}/members`, { auth: true, body: { user_ids: [user.id] } });
    form.reset();
  } catch (err) {
    showError(err);
  }
}

function showError(err) {
  if (err instanceof ApiError && (err.code === 30004 || err.code === 30005)) {
    logout(`Please log in again (${err.message}).`);  // the token expired or is no longer valid
    return;
  }
  $("sidebar-error").textContent = err && err.message ? err.message : String(err);
}

// ---- rendering (textContent only) ---------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A user's name, fetched once and re-rendered when it arrives. */
function userName(id) {
  const user = state.users.get(id);
  if (user && user !== "loading") return user.nickname || user.username;
  if (!user) {
    state.users.set(id, "loading");
    api("GET", `/api/v1/users/${id}`, { auth: true }).then((u) => {
      state.users.set(id, u);
      renderConversations();
      if (state.current) renderConversation();
    }, () => state.users.delete(id));
  }
  return `user ${id}`;
}

function title(conv) {
  return conv.type === "group" ? conv.name : userName(conv.peerId);
}

function preview(message) {
  if (!message) return "";
  if (message.content_type === "system") return systemText(message);
  const who = message.from_user_id === state.me.id ? "You: " : "";
  return who + message.content;
}

function systemText(message) {
  let event;
  try {
    event = JSON.parse(message.content);
  } catch (err) {
    return message.content;
  }
  const by = userName(event.by);
  const names = (event.user_ids || []).map(userName).join(", ");
  switch (event.event) {
    case "group_created": return `${by} created the group`;
    case "members_added": return `${by} added ${names}`;
    case "member_left": return `${by} left`;
    case "member_removed": return `${by} removed ${names}`;
    default: return event.event || "update";
  }
}

function sortedConversations() {
  const all = [...state.convs.values(), ...state.drafts.values()];
  const ts = (c) => (c.lastMessage ? c.lastMessage.server_ts || 0 : Infinity);
  return all.sort((a, b) => ts(b) - ts(a));
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren(...sortedConversations().map((conv) => {
    const item = el("li", "conv");
    if (conv === state.current) item.classList.add("active");
    item.dataset.conversationId = conv.id == null ? "" : String(conv.id);
    item.dataset.unread = String(conv.unread);
    const dot = el("span", "dot");
    if (conv.type === "private") dot.classList.add(state.online.get(conv.peerId) ? "online" : "offline");
    else dot.classList.add("group");
    item.append(dot, el("span", "conv-name", title(conv)));
    const badge = el("span", "badge", String(conv.unread));
    badge.hidden = conv.unread === 0 || conv === state.current;
    item.append(badge, el("span", "conv-preview", preview(conv.lastMessage)));
    item.addEventListener("click", () => openConversation(conv));
    return item;
  }));
}

function renderConversation() {
  renderHeader();
  renderTyping();
  renderMessages();
}

function renderHeader() {
  const conv = state.current;
  $("conversation-title").textContent = title(conv);
  const dot = $("peer-dot");
  dot.className = "dot";
  if (conv.type === "private") dot.classList.add(state.online.get(conv.peerId) ? "online" : "offline");
  $("add-member-form").hidden = conv.type !== "group";
}

function renderTyping() {
  const conv = state.current;
  const typers = conv && conv.id ? [...(state.typing.get(conv.id) || new Map()).keys()] : [];
  $("typing").textContent = typers.length ? `${typers.map(userName).join(", ")} typing…` : "";
}

function receiptText(conv, message) {
  if (message.failed) return `not sent: ${message.failed}`;
  if (message.pending) return "sending…";
  const readers = [...conv.readBy].filter(([user, seq]) => user !== state.me.id && seq >= message.seq).length;
  if (conv.type === "private") return readers ? "✓✓ read" : "✓ sent";
  return readers ? `✓ read by ${readers}` : "✓ sent";
}

function renderMessages() {
  const conv = state.current;
  const pane = $("messages-pane");
  const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
  $("load-older").hidden = !(conv.loaded && conv.hasMore);
  $("messages").replaceChildren(...conv.ordered().map((m) => {
    if (m.content_type === "system") {
      const item = el("li", "system", systemText(m));
      item.dataset.msgId = m.msg_id;
      item.dataset.seq = String(m.seq);
      return item;
    }
    const mine = m.from_user_id === state.me.id;
    const item = el("li", mine ? "msg mine" : "msg");
    item.dataset.msgId = m.msg_id;
    item.dataset.seq = m.seq == null ? "" : String(m.seq);
    item.dataset.status = m.failed ? "failed" : m.pending ? "pending" : "stored";
    if (m.pending) item.classList.add("pending");
    if (m.failed) item.classList.add("failed");
    if (!mine && conv.type === "group") item.append(el("div", "msg-from", userName(m.from_user_id)));
    item.append(el("div", "msg-text", m.content));
    const time = m.server_ts ? new Date(m.server_ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    item.append(el("div", "msg-meta", mine ? `${time} ${receiptText(conv, m)}` : time));
    return item;
  }));
  if (atBottom) scrollToBottom();
}

function scrollToBottom() {
  const pane = $("messages-pane");
  pane.scrollTop = pane.scrollHeight;
}

function changed(conv, scroll = false) {
  renderConversations();
  if (conv === state.current) {
    renderMessages();
    if (scroll) scrollToBottom();
  }
}

// ---- wiring -----------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout-button").addEventListener("click", () => logout());
  $("new-chat-form").addEventListener("submit", onNewChat);
  $("new-group-form").addEventListener("submit", onNewGroup);
  $("add-member-form").addEventListener("submit", onAddMember);
  $("composer").addEventListener("submit", onSend);
  $("composer-input").addEventListener("input", onComposerInput);
  $("load-older").addEventListener("click", loadOlder);
  $("messages-pane").addEventListener("scroll", () => {
    if ($("messages-pane").scrollTop < 40) loadOlder();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.current) markRead(state.current);
  });
  const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  if (saved && saved.token) {
    Object.assign(state, { token: saved.token, refreshToken: saved.refreshToken || null,
                           expiresAt: saved.expiresAt || null, me: saved.me });
    scheduleRefresh();
    startChat();
  }
}

init();
