// The traces' samples, asked for by the shell on /app/ecg/:sop at the same time as the session
// check (the shared mechanism of ../../prefetch.ts); kept apart from data.ts so the shell's
// bundle carries only this path, not the viewer's data code.
import { prefetch } from "../../prefetch";

/** int16 per lead with its µV scale: half the bytes of float32, encoded once by the hub. */
export function samplesPath(sop: string): string {
  return `/api/ecg/${encodeURIComponent(sop)}/samples?format=int16`;
}

export function prefetchEcg(sop: string): void {
  prefetch(samplesPath(sop), "application/octet-stream");
}
