// Case changes for the clinic desk: the hub's live feed (/api/worklist/live) tells a
// technician about his institution's cases and his own notifications (critical results).
// Messages carry no patient data, so each one only makes the pages refetch; a slow poll
// stays underneath for a link that drops websockets without telling anyone.
import { signal } from "@preact/signals";
import { useEffect, useRef } from "preact/hooks";
import { websocketUrl } from "../../api";

/** Bumped on every case message (and on reconnects: something may have been missed). */
export const caseChanges = signal(0);
/** Bumped on notifications (a critical result flagged for the clinic) and reconnects. */
export const criticalChanges = signal(0);

const POLL_MS = 60_000;
const MAX_RETRY_MS = 30_000;

let users = 0;
let socket: WebSocket | null = null;
let retryTimer = 0;
let pollTimer = 0;
let failures = 0;

function bumpAll(): void {
  caseChanges.value++;
  criticalChanges.value++;
}

function connect(): void {
  socket = new WebSocket(websocketUrl("/api/worklist/live"));
  socket.onmessage = (event) => {
    let message: { type?: string } = {};
    try {
      message = JSON.parse(String(event.data)) as { type?: string };
    } catch {
      return;
    }
    if (message.type === "hello") {
      if (failures > 0) bumpAll(); // back after a gap: refetch what we may have missed
      failures = 0;
    } else if (message.type === "notification" || message.type === "resync") {
      bumpAll();
    } else if (message.type?.startsWith("case.")) {
      caseChanges.value++;
    }
  };
  socket.onclose = (event) => {
    socket = null;
    // 4401/4403: not allowed; the next poll finds out and the shell shows the login.
    if (users === 0 || event.code === 4401 || event.code === 4403) return;
    failures++;
    retryTimer = window.setTimeout(connect, Math.min(MAX_RETRY_MS, 1000 * 2 ** failures));
  };
}

function open(): void {
  users++;
  if (users > 1) return;
  failures = 0;
  connect();
  pollTimer = window.setInterval(bumpAll, POLL_MS);
  window.addEventListener("online", bumpAll);
}

function close(): void {
  users--;
  if (users > 0) return;
  clearTimeout(retryTimer);
  clearInterval(pollTimer);
  window.removeEventListener("online", bumpAll);
  socket?.close();
  socket = null;
}

/** Keep the live feed open while the calling component is mounted. */
export function useLive(): void {
  useEffect(() => {
    open();
    return close;
  }, []);
}

/** Call `load` now and again (debounced) whenever `source` is bumped. */
export function useRefetch(source: typeof caseChanges, load: () => void, deps: unknown[] = []): void {
  const timer = useRef(0);
  const first = useRef(true);
  const value = source.value; // read in render: the component re-renders on a bump
  useEffect(() => {
    clearTimeout(timer.current);
    // A burst of messages (sign, then notify) is one refetch; the first load is at once.
    timer.current = window.setTimeout(load, first.current ? 0 : 300);
    first.current = false;
    return () => clearTimeout(timer.current);
  }, [value, ...deps]);
}
