// The relay's JSON API, called from the same origin with the token typed at login as a bearer token.
// No cookies are sent or kept (credentials: "omit"), so there is nothing for a CSRF to ride on.

const TOKEN_KEY = "akool-relay.token";
const TENANT_KEY = "akool-relay.tenant";

// The console is served at <base>/ui/ and this file at <base>/ui/js/api.js: the API is at <base>/.
const BASE = new URL("../../", import.meta.url);

export class Unauthorized extends Error {
  constructor() {
    super("the token was refused");
  }
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  /** The operator's tenant filter ("" = every tenant). */
  get tenant() {
    return sessionStorage.getItem(TENANT_KEY) || "";
  },
  set tenant(value) {
    if (value) sessionStorage.setItem(TENANT_KEY, value);
    else sessionStorage.removeItem(TENANT_KEY);
  },
};

/** The URL of an API path with query parameters; arrays repeat the parameter, empty values are left out. */
export function apiUrl(path, params = {}) {
  const url = new URL(path.replace(/^\//, ""), BASE);
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.append(key, String(v));
    }
  }
  return url;
}

/** Calls the API. Resolves to the parsed JSON (null for an empty answer); rejects with Unauthorized
 * on 401 (the token is forgotten), with ApiError on any other non-2xx answer. */
export async function api(path, { method = "GET", params, body, token = session.token } = {}) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(apiUrl(path, params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) throw new ApiError(response.status, data && data.detail !== undefined ? explain(data.detail) : data);
  return data;
}

/** FastAPI's `detail`: a string, or a list of field errors. */
function explain(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).filter((p) => p !== "body" && p !== "query").join(".")}: ${e.msg}`).join("; ");
  }
  return JSON.stringify(detail);
}
