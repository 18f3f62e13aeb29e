// The gateway's HTTP API (docs/PROTOCOL.md): JSON envelope {code, message, data}; code 0 = success.

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// The signed-in session (app.js sets it): calls with `auth: true` use its access token, and one
// that finds it expired (30004) refreshes it once (POST /api/v1/auth/refresh) and tries again.
let session = null;
export function useSession(provider) {
  session = provider;  // {token(): string, refresh(): Promise<boolean>} or null
}

/** Call the API; the envelope's data, or an ApiError carrying the error table's code. */
export async function api(method, path, { body, token, auth } = {}) {
  if (auth && session) {
    try {
      return await call(method, path, body, session.token());
    } catch (err) {
      if (!(err instanceof ApiError && err.code === 30004) || !(await session.refresh())) throw err;
      return call(method, path, body, session.token());
    }
  }
  return call(method, path, body, token);
}

async function call(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, 0, "the server cannot be reached");
  }
  let envelope;
  try {
    envelope = await response.json();
  } catch (err) {
    throw new ApiError(response.status, 0, `unexpected answer (HTTP ${response.status})`);
  }
  if (envelope.code !== 0) {
    throw new ApiError(response.status, envelope.code, envelope.message || "error", envelope.field);
  }
  return envelope.data;
}
