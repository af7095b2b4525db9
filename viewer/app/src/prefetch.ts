// A page's first request, started by the shell at the same time as the session check when
// the address alone says what the page will ask for, so the page does not wait for one round
// trip after another. Plain fetch, not api(): before the session is known a 401 must not log
// anybody out. A page takes its answer once (null when it failed: the page then asks afresh
// through its usual path, which reports errors as it always does).
const early = new Map<string, Promise<Response | null>>();

export function prefetch(path: string, accept = "application/json"): void {
  early.set(
    path,
    fetch(path, { credentials: "same-origin", headers: { accept } })
      .then((response) => (response.ok ? response : null))
      .catch(() => null),
  );
}

/** The prefetched response of `path` (null when it failed), once; later loads fetch afresh. */
export function takePrefetched(path: string): Promise<Response | null> | null {
  const taken = early.get(path) ?? null;
  early.delete(path);
  return taken;
}
