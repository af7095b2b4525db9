// The reader's queue, asked for by the shell on /app/worklist at the same time as the session
// check (the shared mechanism of ../../prefetch.ts).
import { prefetch, takePrefetched as takeResponse } from "../../prefetch";

export const WORKLIST_PATH = "/api/worklist?limit=500";

export function prefetchWorklist(): void {
  prefetch(WORKLIST_PATH);
}

/** The prefetched answer (null when it failed), once; later loads fetch afresh. */
export function takePrefetched(): Promise<unknown> | null {
  const taken = takeResponse(WORKLIST_PATH);
  return taken && taken.then((response) => (response ? response.json() : null)).catch(() => null);
}
