// The gateway's HTTP API (docs/PROTOCOL.md): JSON envelope {code, message, data}; code 0 = success.

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Call the API; the envelope's data, or an ApiError carrying the error table's code. */
export async function api(method, path, { body, token } = {}) {
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
