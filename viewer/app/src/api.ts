// One way to call the hub: same-origin fetch with the HttpOnly session cookie set by login.
// Errors become ApiError carrying the hub's `detail`; a 401 sends the user back to login.
import { signal } from "@preact/signals";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly detail: string,
  ) {
    super(detail || `HTTP ${status}`);
  }
}

/** Set when a call comes back 401: the shell shows the login page. */
export const sessionExpired = signal(false);

type Json = unknown;

export interface CallOptions {
  method?: string;
  body?: Json;
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

export async function api<T>(path: string, options: CallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json", ...options.headers };
  let body: BodyInit | undefined;
  if (options.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(path, {
    method: options.method ?? (body ? "POST" : "GET"),
    headers,
    body,
    credentials: "same-origin",
    signal: options.signal,
  });
  if (!response.ok) throw await apiError(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

export async function apiError(response: Response): Promise<ApiError> {
  if (response.status === 401 && !response.url.endsWith("/api/auth/login")) {
    sessionExpired.value = true;
  }
  let detail = "";
  try {
    const payload = (await response.json()) as { detail?: unknown };
    detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
  } catch {
    detail = response.statusText;
  }
  return new ApiError(response.status, detail);
}

/** A websocket URL on this origin (ws: or wss: as the page). */
export function websocketUrl(path: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
