// Pixels from WADO-RS frames: the hub decodes compressed frames to uncompressed little endian
// (multipart/related; type="application/octet-stream"), so every transfer syntax arrives the
// same way. The loader keeps a few requests in flight, always fetching the images nearest to
// the one on screen first, and keeps each frame's raw values for fast re-windowing.
import { apiError } from "../../api";
import { MultipartStream, part10Pixels } from "./part10";
import type { Instance, StackImage } from "./series";

const FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"';
const SERIES_ACCEPT = 'multipart/related; type="application/dicom"';
const IN_FLIGHT = 6;
/** While the series streams, frames requests only for the images next to the one shown. */
const STREAM_NEAR = 2;
/** Single-frame instances from which the whole series is worth streaming. */
const STREAM_FROM = 3;
/** Frames of a multi-frame instance asked for in one request. */
const FRAMES_PER_REQUEST = 8;

export type Raw = Uint8Array | Uint16Array | Uint32Array;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function indexOf(bytes: Uint8Array, pattern: Uint8Array, from: number): number {
  const first = pattern[0];
  const last = bytes.length - pattern.length;
  for (let i = bytes.indexOf(first, from); i !== -1 && i <= last; i = bytes.indexOf(first, i + 1)) {
    let j = 1;
    while (j < pattern.length && bytes[i + j] === pattern[j]) j++;
    if (j === pattern.length) return i;
  }
  return -1;
}

/** The bodies of a multipart/related response (PS3.18 §8.7), by Content-Length when a part
 * names it, else up to the next boundary. A non-multipart body is one part. */
export function multipartBodies(body: ArrayBuffer, contentType: string): Uint8Array[] {
  const bytes = new Uint8Array(body);
  const match = /boundary="?([^";,\s]+)"?/i.exec(contentType);
  if (!contentType.toLowerCase().startsWith("multipart/") || !match) return [bytes];
  const delimiter = encoder.encode(`--${match[1]}`);
  const nextDelimiter = encoder.encode(`\r\n--${match[1]}`);
  const headerEnd = encoder.encode("\r\n\r\n");
  const parts: Uint8Array[] = [];
  let pos = indexOf(bytes, delimiter, 0);
  while (pos !== -1) {
    pos += delimiter.length;
    if (bytes[pos] === 0x2d && bytes[pos + 1] === 0x2d) break; // "--": the closing delimiter
    const headersAt = indexOf(bytes, headerEnd, pos);
    if (headersAt === -1) break;
    const headers = decoder.decode(bytes.subarray(pos, headersAt));
    const start = headersAt + headerEnd.length;
    const length = /content-length:\s*(\d+)/i.exec(headers);
    let end = length ? start + Number(length[1]) : indexOf(bytes, nextDelimiter, start);
    if (end === -1 || end > bytes.length) end = bytes.length;
    parts.push(bytes.subarray(start, end));
    pos = indexOf(bytes, delimiter, end);
  }
  return parts;
}

/** A frame's bytes as typed values (copied: aligned, and the response can be freed). */
export function toRaw(bytes: Uint8Array, instance: Instance): Raw {
  const count = instance.rows * instance.columns * instance.samples;
  const width = instance.bitsAllocated <= 8 ? 1 : instance.bitsAllocated <= 16 ? 2 : 4;
  if (bytes.length < count * width) {
    throw new Error(`frame has ${bytes.length} bytes, ${count * width} expected`);
  }
  const copy = bytes.slice(0, count * width);
  if (width === 1) return copy;
  return width === 2 ? new Uint16Array(copy.buffer) : new Uint32Array(copy.buffer);
}

function frameUrl(base: string, instance: Instance, frames: number[]): string {
  return `${base}/instances/${encodeURIComponent(instance.sopUid)}/frames/${frames.join(",")}`;
}

export async function fetchFrames(
  base: string,
  instance: Instance,
  frames: number[],
  signal?: AbortSignal,
): Promise<Raw[]> {
  const response = await fetch(frameUrl(base, instance, frames), {
    headers: { accept: FRAME_ACCEPT },
    credentials: "same-origin",
    signal,
  });
  if (!response.ok) throw await apiError(response);
  const bodies = multipartBodies(
    await response.arrayBuffer(),
    response.headers.get("content-type") ?? "",
  );
  if (bodies.length !== frames.length) {
    throw new Error(`${bodies.length} frames received, ${frames.length} asked`);
  }
  return bodies.map((body) => toRaw(body, instance));
}

/** Bulk data (a palette table) as its bytes. */
export async function fetchBulk(uri: string, signal?: AbortSignal): Promise<Uint8Array> {
  const path = uri.replace(/^https?:\/\/[^/]+/, ""); // same origin, whatever host the hub saw
  const response = await fetch(path, {
    headers: { accept: "application/octet-stream" },
    credentials: "same-origin",
    signal,
  });
  if (!response.ok) throw await apiError(response);
  const bodies = multipartBodies(
    await response.arrayBuffer(),
    response.headers.get("content-type") ?? "",
  );
  return bodies[0];
}

/** Loads every image of a stack. The image on screen comes first, alone, through the frames
 * route; then the whole series streams as stored (one request, the hub's fastest path) and
 * natively encoded slices are taken from it while a couple of frames requests serve where
 * the reader is. What the stream cannot give (compressed, multi-frame) then comes as frames,
 * nearest to the image on screen first, IN_FLIGHT requests at a time. */
export class StackLoader {
  readonly raw: (Raw | undefined)[];
  readonly failed: (string | undefined)[];
  loadedCount = 0;
  private pending: boolean[];
  private inFlight = 0;
  private focusIndex = 0;
  private abort = new AbortController();
  private stream: "not yet" | "scheduled" | "running" | "over" = "not yet";
  private readonly streamAbort = new AbortController();

  constructor(
    private readonly base: string,
    private readonly stack: StackImage[],
    private readonly onLoaded: (indices: number[]) => void,
  ) {
    this.raw = new Array(stack.length).fill(undefined);
    this.failed = new Array(stack.length).fill(undefined);
    this.pending = new Array(stack.length).fill(false);
  }

  /** Load around this image next (the one on screen). */
  focus(index: number): void {
    this.focusIndex = index;
    this.pump();
  }

  dispose(): void {
    this.abort.abort();
    this.streamAbort.abort();
  }

  private nextWanted(): number {
    const total = this.stack.length;
    const streaming = this.stream === "running" || this.stream === "scheduled";
    const reach = streaming ? STREAM_NEAR + 1 : total;
    for (let distance = 0; distance < reach; distance++) {
      // Ahead first: a reader scrolls on in the direction they started.
      for (const index of [this.focusIndex + distance, this.focusIndex - distance]) {
        if (index < 0 || index >= total) continue;
        if (!this.raw[index] && !this.failed[index] && !this.pending[index]) return index;
      }
    }
    return -1;
  }

  private pump(): void {
    if (this.loadedCount > 0 && this.stream === "not yet") this.scheduleStream();
    // The first image alone: on a busy hub it would otherwise queue behind the rest.
    const streaming = this.stream === "running" || this.stream === "scheduled";
    const limit = this.loadedCount === 0 ? 1 : streaming ? 2 : IN_FLIGHT;
    while (this.inFlight < limit && !this.abort.signal.aborted) {
      const index = this.nextWanted();
      if (index === -1) return;
      void this.load(this.batch(index));
    }
  }

  /** Stream the series once the first image is drawn: parsing it keeps the main thread busy. */
  private scheduleStream(): void {
    const single = this.stack.filter((image) => image.instance.frames === 1);
    if (single.length < STREAM_FROM) {
      this.stream = "over";
      return;
    }
    this.stream = "scheduled";
    const start = (): void => {
      if (this.stream === "scheduled" && !this.abort.signal.aborted) this.startStream(single);
    };
    requestAnimationFrame(() => requestAnimationFrame(start));
    setTimeout(start, 250); // a hidden tab has no animation frames
  }

  private startStream(single: StackImage[]): void {
    this.stream = "running";
    const indexOf = new Map(single.map((image) => [image.instance.sopUid, image]));
    const position = new Map(this.stack.map((image, index) => [image, index]));
    let parts = 0;
    let usable = 0;
    let arrived: number[] = [];
    const parser = new MultipartStream((body) => {
      parts++;
      const found = part10Pixels(body);
      const image = found && indexOf.get(found.sopUid);
      if (found && image) {
        const index = position.get(image)!;
        try {
          if (!this.raw[index]) {
            this.raw[index] = toRaw(found.pixels, image.instance);
            this.loadedCount++;
            arrived.push(index);
          }
          usable++;
        } catch {
          /* not what the header says: the frames route will decode it */
        }
      }
      // A series stored compressed gives nothing here: leave it to the frames route.
      if (parts >= 2 && usable === 0) this.streamAbort.abort();
    });
    const run = async (): Promise<void> => {
      const signal = AbortSignal.any([this.abort.signal, this.streamAbort.signal]);
      const response = await fetch(this.base, {
        headers: { accept: SERIES_ACCEPT },
        credentials: "same-origin",
        signal,
      });
      if (!response.ok || !response.body) return;
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        parser.push(value);
        if (arrived.length) {
          const batch = arrived;
          arrived = [];
          this.onLoaded(batch);
        }
      }
    };
    run()
      .catch(() => undefined) // whatever the stream missed, frames requests fetch
      .finally(() => {
        this.stream = "over";
        if (!this.abort.signal.aborted) this.pump();
      });
  }

  /** The image, and for a multi-frame instance its next frames too, as one request. */
  private batch(index: number): number[] {
    const { instance } = this.stack[index];
    const indices = [index];
    for (let next = index + 1; next < this.stack.length; next++) {
      if (indices.length >= FRAMES_PER_REQUEST || this.stack[next].instance !== instance) break;
      if (this.raw[next] || this.pending[next] || this.failed[next]) break;
      indices.push(next);
    }
    return indices;
  }

  private async load(indices: number[]): Promise<void> {
    this.inFlight++;
    for (const index of indices) this.pending[index] = true;
    const { instance } = this.stack[indices[0]];
    try {
      const frames = indices.map((index) => this.stack[index].frame);
      const raws = await fetchFrames(this.base, instance, frames, this.abort.signal);
      indices.forEach((index, i) => {
        if (this.raw[index]) return; // the series stream brought it meanwhile
        this.raw[index] = raws[i];
        this.loadedCount++;
      });
    } catch (error) {
      if (this.abort.signal.aborted) return;
      const message = error instanceof Error ? error.message : String(error);
      for (const index of indices) if (!this.raw[index]) this.failed[index] = message;
    } finally {
      for (const index of indices) this.pending[index] = false;
      this.inFlight--;
    }
    this.onLoaded(indices);
    this.pump();
  }
}
