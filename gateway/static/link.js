// The WebSocket to the gateway, kept open: first-frame auth (the token never goes into the URL,
// which proxies and access logs record), then reconnect with exponential backoff and jitter after
// every drop. Close codes (docs/PROTOCOL.md): 4001 = the token is refused (the app refreshes it or
// logs in again); 4003 = the token was revoked (logout elsewhere, password change: log in again);
// 1012 = the gateway is restarting (reconnect at once, maybe to another gateway); 1013 = try again
// later, 1011 = server error, 1006 = dropped: back off. The caller syncs and resends unacknowledged
// messages on every (re)open.

export const CLOSE_AUTH_FAILED = 4001;
export const CLOSE_TOKEN_REVOKED = 4003;
export const CLOSE_SERVICE_RESTART = 1012;
export const CLOSE_TRY_AGAIN = 1013;

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

/** Delay before reconnect attempt `attempt` (0, 1, ...): exponential, capped, with "equal
 * jitter" (half fixed, half random) so that clients dropped together do not return together. */
export function backoff(attempt, base = BASE_DELAY_MS, cap = MAX_DELAY_MS) {
  const ceiling = Math.min(cap, base * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export class Link {
  /** token: a function giving the current access token (it is refreshed while the link lives).
   * handlers: onOpen(authOk), onFrame(type, payload), onStatus(state, detail), onAuthFailed(message, code) */
  constructor(url, token, handlers) {
    this.url = url;
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.ready = false;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.onOnline = () => this.reconnectNow();
  }

  start() {
    window.addEventListener("online", this.onOnline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "logout");
  }

  /** Send a frame; false when the socket is not open and authenticated (the caller keeps it). */
  send(type, payload) {
    if (!this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ type, payload }));
    return true;
  }

  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.connect();
  }

  connect() {
    this.timer = null;
    this.handlers.onStatus("connecting", {});
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let authFailure = "";
    let authCode = 0;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", payload: { token: this.token() } }));
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (frame.type === "auth_ok") {
        this.ready = true;
        this.attempt = 0;
        this.handlers.onStatus("online", {});
        this.handlers.onOpen(frame.payload);
      } else if (frame.type === "auth_fail") {
        authFailure = (frame.payload && frame.payload.message) || "authentication failed";
        authCode = frame.payload && frame.payload.code;
      } else {
        this.handlers.onFrame(frame.type, frame.payload || {});
      }
    };
    ws.onclose = (event) => {
      this.ws = null;
      this.ready = false;
      if (this.stopped) return;
      if (event.code === CLOSE_AUTH_FAILED || event.code === CLOSE_TOKEN_REVOKED) {
        this.handlers.onAuthFailed(authFailure || event.reason || "your session has expired",
                                   event.code === CLOSE_TOKEN_REVOKED ? 30005 : authCode);
        return;
      }
      // A restarting gateway: the first attempt goes at once (jittered below a second), later
      // ones back off as usual in case the restart takes a while.
      if (event.code === CLOSE_SERVICE_RESTART && this.lastCode !== CLOSE_SERVICE_RESTART) this.attempt = 0;
      this.lastCode = event.code;
      const delay = backoff(this.attempt++);
      this.handlers.onStatus("reconnecting", { delay, code: event.code });
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }
}
