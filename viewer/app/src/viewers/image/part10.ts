// The pixels of a natively encoded DICOM file (PS3.10), found by walking its elements: what
// the viewer needs from a whole-series WADO-RS stream (multipart/related;
// type="application/dicom"), which the hub sends as stored and much faster than one frames
// request per slice. Compressed, big endian or odd files return undefined: their frames
// come decoded from the frames route instead.

const IMPLICIT_LE = "1.2.840.10008.1.2";
const EXPLICIT_LE = "1.2.840.10008.1.2.1";
// Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 §7.1.2).
const LONG_VRS = new Set(
  ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"],
);
const UNDEFINED = 0xffffffff;
const ITEM = 0xfffee000;
const ITEM_END = 0xfffee00d;
const SEQUENCE_END = 0xfffee0dd;

export interface Part10Pixels {
  sopUid: string;
  pixels: Uint8Array; // the Pixel Data value (a view into the file's bytes)
}

class Reader {
  constructor(
    readonly bytes: Uint8Array,
    readonly view: DataView,
    readonly explicit: boolean,
  ) {}

  tag(at: number): number {
    return ((this.view.getUint16(at, true) << 16) | this.view.getUint16(at + 2, true)) >>> 0;
  }

  /** The element at `at`: its tag, VR (explicit only), value offset and length. */
  element(at: number): { tag: number; vr: string; value: number; length: number } {
    const tag = this.tag(at);
    if (tag === ITEM || tag === ITEM_END || tag === SEQUENCE_END || !this.explicit) {
      return { tag, vr: "", value: at + 8, length: this.view.getUint32(at + 4, true) };
    }
    const vr = String.fromCharCode(this.bytes[at + 4], this.bytes[at + 5]);
    if (LONG_VRS.has(vr)) {
      return { tag, vr, value: at + 12, length: this.view.getUint32(at + 8, true) };
    }
    return { tag, vr, value: at + 8, length: this.view.getUint16(at + 6, true) };
  }

  text(at: number, length: number): string {
    return String.fromCharCode(...this.bytes.subarray(at, at + length)).replace(/[\0 ]+$/, "");
  }

  /** Past an undefined-length sequence (or item) starting at `at`: items until the end. */
  skipUndefined(at: number, end: number): number {
    let pos = at;
    while (pos + 8 <= this.bytes.length) {
      const { tag, value, length } = this.element(pos);
      if (tag === end) return value;
      if (tag === ITEM) {
        pos = length === UNDEFINED ? this.skipUndefined(value, ITEM_END) : value + length;
      } else {
        pos = length === UNDEFINED ? this.skipUndefined(value, SEQUENCE_END) : value + length;
      }
    }
    throw new Error("sequence runs past the end of the file");
  }
}

export function part10Pixels(bytes: Uint8Array): Part10Pixels | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 144 || String.fromCharCode(...bytes.subarray(128, 132)) !== "DICM") {
    return undefined;
  }
  try {
    // File meta (always explicit VR little endian): the transfer syntax.
    const meta = new Reader(bytes, view, true);
    let pos = 132;
    let syntax = "";
    while (pos + 8 <= bytes.length && view.getUint16(pos, true) === 0x0002) {
      const { tag, value, length } = meta.element(pos);
      if (tag === 0x00020010) syntax = meta.text(value, length);
      pos = value + length;
    }
    if (syntax !== EXPLICIT_LE && syntax !== IMPLICIT_LE) return undefined;
    const reader = new Reader(bytes, view, syntax === EXPLICIT_LE);
    let sopUid = "";
    while (pos + 8 <= bytes.length) {
      const { tag, value, length } = reader.element(pos);
      if (tag === 0x00080018) sopUid = reader.text(value, length);
      if (tag === 0x7fe00010) {
        if (length === UNDEFINED || value + length > bytes.length) return undefined;
        return { sopUid, pixels: bytes.subarray(value, value + length) };
      }
      if (tag > 0x7fe00010) return undefined;
      pos = length === UNDEFINED ? reader.skipUndefined(value, SEQUENCE_END) : value + length;
    }
  } catch {
    return undefined; // anything odd: the frames route decodes it
  }
  return undefined;
}

/** Parts of a multipart/related body as they arrive, each by its Content-Length. A part is
 * handed over as a view of the buffer, valid during the call only (copy what you keep). */
export class MultipartStream {
  private buffer = new Uint8Array(1 << 20);
  private start = 0;
  private end = 0;
  private need = -1; // bytes of the part body being read; -1 while reading headers
  private finished = false;

  constructor(private readonly onPart: (body: Uint8Array) => void) {}

  push(chunk: Uint8Array): void {
    this.append(chunk);
    while (!this.finished && this.step()) {
      /* one part or one header block per step */
    }
  }

  private append(chunk: Uint8Array): void {
    if (this.start > 0 && this.end + chunk.length > this.buffer.length) {
      this.buffer.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    if (this.end + chunk.length > this.buffer.length) {
      const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.end + chunk.length));
      grown.set(this.buffer.subarray(0, this.end));
      this.buffer = grown;
    }
    this.buffer.set(chunk, this.end);
    this.end += chunk.length;
  }

  private step(): boolean {
    const data = this.buffer.subarray(this.start, this.end);
    if (this.need < 0) {
      const headEnd = findCrlfCrlf(data);
      if (headEnd === -1) return false;
      const head = String.fromCharCode(...data.subarray(0, headEnd));
      if (/^\s*--\S*--/.test(head)) {
        this.finished = true;
        return false;
      }
      const length = /content-length:\s*(\d+)/i.exec(head);
      if (!length) throw new Error("multipart part without Content-Length");
      this.need = Number(length[1]);
      this.start += headEnd + 4;
      return true;
    }
    if (data.length < this.need) return false;
    this.onPart(data.subarray(0, this.need));
    this.start += this.need;
    this.need = -1;
    return true;
  }
}

function findCrlfCrlf(data: Uint8Array): number {
  for (let i = data.indexOf(13); i !== -1 && i + 3 < data.length; i = data.indexOf(13, i + 1)) {
    if (data[i + 1] === 10 && data[i + 2] === 13 && data[i + 3] === 10) return i;
  }
  return -1;
}
