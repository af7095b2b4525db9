// Uploads a picked study to the hub by STOW-RS, a few files per request, so a township
// clinic's slow and flaky link loses at most one request's worth when it drops.
//
// Every file is tracked on its own: acknowledged by the hub (stored), refused (failed, with
// the hub's reason, retried only when the technician asks) or still to send. A request that
// breaks off (network gone, hub restarting) puts its files back; before anything is sent
// again the hub is asked (QIDO) which of them it already holds, because it stores each part
// as soon as the part has arrived: so no file is sent twice once the hub has it.
import { signal } from "@preact/signals";
import { unzipSync } from "fflate";
import { sessionExpired } from "../../api";
import { type DicomHeader, NotDicom, isDicomdir, readDicomHeader } from "./dicomHeader";

export type ItemState =
  | "reading" // header being read
  | "invalid" // not a DICOM file: never sent
  | "skipped" // a DICOMDIR or a second copy of a picked instance
  | "ready" // picked, waiting for the technician to start
  | "pending" // queued
  | "sending"
  | "stored" // acknowledged by the hub (or found there on resume)
  | "failed"; // refused by the hub

export interface UploadItem {
  id: number;
  name: string; // path inside a folder or ZIP
  size: number;
  blob: Blob;
  state: ItemState;
  header: DicomHeader | null;
  sent: number; // bytes of this file sent in the current request
  reason: string; // why invalid or failed (the hub's words where it gave some)
  code: number | null; // the hub's Failure Reason (0008,1197)
  alreadyThere: boolean; // found on the hub on resume, not sent again
}

export type Phase = "idle" | "sending" | "offline" | "waiting" | "done";

// A few files per request: small enough that a drop loses seconds on 4 Mbit/s, big enough
// that per-request latency does not dominate on small files.
const BATCH_FILES = 6;
const BATCH_BYTES = 1.5 * 1024 * 1024;
const PARALLEL = 3;
const STALL_MS = 45_000; // no upload progress this long: the link is dead, abort and resume
const MAX_BACKOFF_MS = 30_000;

const STORED_SEQ = "00081199";
const FAILED_SEQ = "00081198";
const SOP_UID = "00081155";
const FAILURE_REASON = "00081197";
const ERROR_COMMENT = "00000902";

class Transient extends Error {}

interface DicomJsonElement {
  vr?: string;
  Value?: unknown[];
}
type DicomJson = Record<string, DicomJsonElement>;

function first(ds: DicomJson | undefined, tag: string): unknown {
  return ds?.[tag]?.Value?.[0];
}

function sleep(ms: number, wake: EventTarget | null = null, event = ""): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      wake?.removeEventListener(event, done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    wake?.addEventListener(event, done);
  });
}

function waitOnline(): Promise<void> {
  if (navigator.onLine) return Promise.resolve();
  return new Promise((resolve) => window.addEventListener("online", () => resolve(), { once: true }));
}

/** An earlier pick of the same instance (the technician dropped the folder twice). */
function isCopy(other: UploadItem, header: DicomHeader): boolean {
  const counted = other.state !== "skipped" && other.state !== "invalid";
  return counted && other.header?.sopInstanceUid === header.sopInstanceUid;
}

function boundaryString(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `telehealth-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export class Uploader {
  /** Bumped (at most once a frame) whenever anything changed: views read it to re-render. */
  readonly tick = signal(0);
  items: UploadItem[] = [];
  phase: Phase = "idle";
  /** Seconds until the next attempt after a failure, for the view. */
  retryAt = 0;
  /** STOW requests answered by the hub (for the curious and for tests). */
  requests = 0;

  private nextId = 1;
  private running: Promise<void> | null = null;
  // Bumped whenever the hub may hold files we do not know about (a request broke); a sync
  // clears only the generation it started from, so a break during a sync is synced again.
  private unsynced = 0;
  private synced = 0;
  private syncing: Promise<void> | null = null;
  private failures = 0;
  private batchLimit = BATCH_FILES;
  private frame = 0;
  private stopped = false;

  constructor() {
    // Leaving the page (reload, closing the tab) stops the upload: ask first.
    window.addEventListener("beforeunload", (event) => {
      if (this.items.some((i) => i.state === "pending" || i.state === "sending")) event.preventDefault();
    });
  }

  changed(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.tick.value++;
    });
  }

  // --- picking ------------------------------------------------------------------------------

  /** Add picked files (ZIPs unpacked); their headers are read at once for the summary. */
  async add(files: { file: File; path: string }[]): Promise<void> {
    const added: UploadItem[] = [];
    for (const { file, path } of files) {
      if (/\.zip$/i.test(file.name)) {
        added.push(...(await this.unzip(file, path)));
      } else {
        added.push(this.item(path || file.name, file));
      }
    }
    this.items.push(...added);
    this.changed();
    for (const item of added) await this.readHeader(item);
    this.changed();
  }

  private item(name: string, blob: Blob): UploadItem {
    return {
      id: this.nextId++,
      name,
      size: blob.size,
      blob,
      state: "reading",
      header: null,
      sent: 0,
      reason: "",
      code: null,
      alreadyThere: false,
    };
  }

  private async unzip(file: File, path: string): Promise<UploadItem[]> {
    try {
      const entries = unzipSync(new Uint8Array(await file.arrayBuffer()), {
        // Folders and macOS resource forks are not instances.
        filter: (entry) => !entry.name.endsWith("/") && !entry.name.includes("__MACOSX/"),
      });
      return Object.entries(entries).map(([name, data]) =>
        this.item(`${path || file.name}/${name}`, new Blob([data as Uint8Array<ArrayBuffer>])),
      );
    } catch (error) {
      const item = this.item(path || file.name, file);
      item.state = "invalid";
      item.reason = `zip: ${(error as Error).message}`;
      return [item];
    }
  }

  private async readHeader(item: UploadItem): Promise<void> {
    if (item.state !== "reading") return;
    try {
      const header = await readDicomHeader(item.blob);
      item.header = header;
      if (isDicomdir(header) || /(^|\/)DICOMDIR$/i.test(item.name)) {
        item.state = "skipped";
        item.reason = "dicomdir";
      } else if (!header.sopInstanceUid) {
        item.state = "invalid";
        item.reason = "no SOP Instance UID";
      } else if (this.items.some((other) => other.id < item.id && isCopy(other, header))) {
        item.state = "skipped";
        item.reason = "duplicate";
      } else {
        item.state = "ready";
      }
    } catch (error) {
      item.state = "invalid";
      item.reason = error instanceof NotDicom ? "not-dicom" : String((error as Error).message);
    }
  }

  remove(predicate: (item: UploadItem) => boolean): void {
    this.items = this.items.filter((i) => i.state === "sending" || !predicate(i));
    this.changed();
  }

  // --- sending ------------------------------------------------------------------------------

  /** Queue what is ready (or failed, with `retryFailed`) and send until nothing is left. */
  start(which: (item: UploadItem) => boolean = () => true, retryFailed = false): Promise<void> {
    for (const item of this.items) {
      if (!which(item)) continue;
      if (item.state === "ready" || (retryFailed && item.state === "failed")) {
        item.state = "pending";
        item.reason = "";
        item.code = null;
      }
    }
    // Ask the hub first: after a page reload the technician may pick the same study again.
    this.unsynced++;
    this.stopped = false;
    this.changed();
    if (!this.running) {
      const workers = Array.from({ length: PARALLEL }, () => this.worker());
      this.running = Promise.all(workers).then(() => {
        this.running = null;
        this.phase = this.items.some((i) => i.state === "pending") ? "idle" : "done";
        this.changed();
      });
    }
    return this.running;
  }

  private pending(): UploadItem[] {
    return this.items.filter((i) => i.state === "pending");
  }

  private async worker(): Promise<void> {
    while (!this.stopped && this.pending().length) {
      if (!navigator.onLine) {
        this.phase = "offline";
        this.changed();
        await waitOnline();
        continue;
      }
      const wait = this.retryAt - Date.now();
      if (wait > 0) {
        this.phase = "waiting";
        this.changed();
        await sleep(wait, window, "online"); // a link back up is worth trying at once
        this.retryAt = 0;
        continue;
      }
      if (this.unsynced !== this.synced || this.syncing) {
        this.syncing ??= this.sync().finally(() => (this.syncing = null));
        await this.syncing;
        continue;
      }
      const batch = this.takeBatch();
      if (!batch.length) return;
      this.phase = "sending";
      await this.send(batch);
    }
  }

  private takeBatch(): UploadItem[] {
    const batch: UploadItem[] = [];
    let bytes = 0;
    for (const item of this.pending()) {
      if (batch.length >= this.batchLimit) break;
      if (batch.length && bytes + item.size > BATCH_BYTES) break;
      batch.push(item);
      bytes += item.size;
    }
    for (const item of batch) {
      item.state = "sending";
      item.sent = 0;
    }
    return batch;
  }

  private backoff(): void {
    this.failures++;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (this.failures - 1));
    this.retryAt = Date.now() + delay * (0.75 + Math.random() * 0.5);
    this.unsynced++;
  }

  /** Which pending files the hub already holds (it stores each part as it arrives). */
  private async sync(): Promise<void> {
    const generation = this.unsynced;
    const studies = new Set(this.pending().map((i) => i.header?.studyInstanceUid ?? ""));
    studies.delete("");
    try {
      for (const study of studies) {
        const held = await hubInstances(study);
        for (const item of this.pending()) {
          if (item.header?.studyInstanceUid === study && held.has(item.header.sopInstanceUid)) {
            item.state = "stored";
            item.alreadyThere = true;
            item.sent = item.size;
          }
        }
      }
      this.synced = generation;
    } catch (error) {
      if (error instanceof Transient) this.backoff();
      else this.stop();
    }
    this.changed();
  }

  private stop(): void {
    this.stopped = true;
    for (const item of this.pending()) item.state = "ready";
  }

  private async send(batch: UploadItem[]): Promise<void> {
    const boundary = boundaryString();
    const parts: BlobPart[] = [];
    const offsets: number[] = [];
    let length = 0;
    for (const item of batch) {
      const head = `--${boundary}\r\nContent-Type: application/dicom\r\nContent-Length: ${item.size}\r\n\r\n`;
      length += head.length;
      offsets.push(length);
      length += item.size + 2;
      parts.push(head, item.blob, "\r\n");
    }
    parts.push(`--${boundary}--\r\n`);
    const body = new Blob(parts);
    try {
      const { status, json, detail } = await post(body, boundary, (loaded) => {
        batch.forEach((item, i) => (item.sent = Math.max(0, Math.min(item.size, loaded - offsets[i]))));
        this.changed();
      });
      this.requests++;
      if (status === 413 && batch.length > 1) {
        // Over the hub's request limit before any part: send these one by one.
        this.batchLimit = 1;
        batch.forEach((item) => (item.state = "pending"));
      } else if (status === 200 || status === 202 || status === 409 || status === 413) {
        this.settle(batch, json, detail);
      } else {
        batch.forEach((item) => this.fail(item, detail || `HTTP ${status}`, null));
      }
      this.failures = 0;
    } catch (error) {
      for (const item of batch) {
        item.state = "pending";
        item.sent = 0;
      }
      if (error instanceof Transient) this.backoff();
      else this.stop();
    }
    this.changed();
  }

  private fail(item: UploadItem, reason: string, code: number | null): void {
    item.state = "failed";
    item.reason = reason;
    item.code = code;
    item.sent = 0;
  }

  /** Map the Store Instances Response back to the files by SOP Instance UID. */
  private settle(batch: UploadItem[], json: DicomJson | null, detail: string): void {
    const stored = new Set<string>();
    for (const ds of (json?.[STORED_SEQ]?.Value ?? []) as DicomJson[]) stored.add(String(first(ds, SOP_UID) ?? ""));
    const failed = new Map<string, { reason: string; code: number | null }>();
    const anonymous: { reason: string; code: number | null }[] = [];
    for (const ds of (json?.[FAILED_SEQ]?.Value ?? []) as DicomJson[]) {
      const code = first(ds, FAILURE_REASON);
      const entry = { reason: String(first(ds, ERROR_COMMENT) ?? ""), code: typeof code === "number" ? code : null };
      const uid = String(first(ds, SOP_UID) ?? "");
      if (uid) failed.set(uid, entry);
      else anonymous.push(entry);
    }
    for (const item of batch) {
      const uid = item.header?.sopInstanceUid ?? "";
      if (stored.has(uid)) {
        item.state = "stored";
        item.sent = item.size;
        continue;
      }
      const why = failed.get(uid) ?? anonymous.shift() ?? { reason: detail || "no answer for this file", code: null };
      this.fail(item, why.reason, why.code);
    }
  }

  // --- for the view -------------------------------------------------------------------------

  counts(items: UploadItem[] = this.items): Record<ItemState, number> & { bytes: number; sentBytes: number } {
    const counts = { reading: 0, invalid: 0, skipped: 0, ready: 0, pending: 0, sending: 0, stored: 0, failed: 0, bytes: 0, sentBytes: 0 };
    for (const item of items) {
      counts[item.state]++;
      if (item.state === "invalid" || item.state === "skipped") continue;
      counts.bytes += item.size;
      counts.sentBytes += item.state === "stored" ? item.size : item.state === "sending" ? item.sent : 0;
    }
    return counts;
  }
}

interface Answer {
  status: number;
  json: DicomJson | null;
  detail: string;
}

/** One STOW-RS request with upload progress (fetch has none); Transient when worth retrying. */
function post(body: Blob, boundary: string, progress: (loaded: number) => void): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    let lastProgress = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - lastProgress > STALL_MS) xhr.abort();
    }, 5000);
    const finish = () => clearInterval(watchdog);
    xhr.open("POST", "/dicomweb/studies");
    xhr.setRequestHeader("content-type", `multipart/related; type="application/dicom"; boundary=${boundary}`);
    xhr.setRequestHeader("accept", "application/dicom+json");
    xhr.upload.onprogress = (event) => {
      lastProgress = Date.now();
      progress(event.loaded);
    };
    xhr.onerror = xhr.onabort = xhr.ontimeout = () => {
      finish();
      reject(new Transient("network"));
    };
    xhr.onload = () => {
      finish();
      const status = xhr.status;
      if (status === 401) {
        sessionExpired.value = true;
        reject(new Error("login required"));
        return;
      }
      // Busy or restarting hubs, gateways and proxies: try again later.
      if (status === 0 || status === 408 || status === 429 || status >= 500) {
        reject(new Transient(`HTTP ${status}`));
        return;
      }
      let json: DicomJson | null = null;
      let detail = "";
      try {
        const parsed = JSON.parse(xhr.responseText) as DicomJson & { detail?: unknown };
        if (typeof parsed.detail === "string") detail = parsed.detail;
        else json = parsed;
      } catch {
        detail = xhr.statusText;
      }
      resolve({ status, json, detail });
    };
    xhr.send(body);
  });
}

/** SOP Instance UIDs of a study the hub holds (QIDO-RS, paged); empty when it has none. */
export async function hubInstances(study: string): Promise<Set<string>> {
  const held = new Set<string>();
  const page = 1000;
  for (let offset = 0; ; offset += page) {
    let response: Response;
    try {
      response = await fetch(
        `/dicomweb/studies/${encodeURIComponent(study)}/instances?limit=${page}&offset=${offset}&includefield=00080018`,
        { headers: { accept: "application/dicom+json" }, credentials: "same-origin" },
      );
    } catch {
      throw new Transient("network");
    }
    if (response.status === 404 || response.status === 204) return held;
    if (response.status === 401) {
      sessionExpired.value = true;
      throw new Error("login required");
    }
    if (!response.ok) throw new Transient(`HTTP ${response.status}`);
    const rows = (await response.json()) as DicomJson[];
    for (const row of rows) held.add(String(first(row, "00080018") ?? ""));
    if (rows.length < page) return held;
  }
}
