// Just enough of a DICOM Part 10 reader to name what the technician picked before it goes
// over a slow link: the file meta and the first elements of the data set (patient, study,
// UIDs), stopping long before pixel data. The hub parses every file again on arrival; this
// one only has to be right for well-formed files and say "not DICOM" for everything else.

export interface DicomHeader {
  transferSyntaxUid: string;
  sopClassUid: string;
  sopInstanceUid: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  patientName: string; // PN as written (model.personName shows it)
  patientId: string;
  studyDate: string; // DA, YYYYMMDD
  modality: string;
  studyDescription: string;
}

/** The bytes are not a DICOM file (no "DICM" and no file meta group). */
export class NotDicom extends Error {}

/** The bytes ended before the elements we need: read more of the file. */
class Truncated extends Error {}

const IMPLICIT_LE = "1.2.840.10008.1.2";
const EXPLICIT_BE = "1.2.840.10008.1.2.2";
const DEFLATED = "1.2.840.10008.1.2.1.99";
const DICOMDIR_CLASS = "1.2.840.10008.1.3.10";
// VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 §7.1.2).
const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const UNDEFINED = 0xffffffff;

// (group << 16 | element) of what we keep.
const TAGS: Record<number, keyof DicomHeader | "charset"> = {
  0x00080005: "charset",
  0x00080016: "sopClassUid",
  0x00080018: "sopInstanceUid",
  0x00080020: "studyDate",
  0x00080060: "modality",
  0x00081030: "studyDescription",
  0x00100010: "patientName",
  0x00100020: "patientId",
  0x0020000d: "studyInstanceUid",
  0x0020000e: "seriesInstanceUid",
};
const LAST_TAG = 0x0020000e;

export function isDicomdir(header: DicomHeader): boolean {
  return header.sopClassUid === DICOMDIR_CLASS;
}

/** Read the header from the start of a file, reading more of it only when needed. */
export async function readDicomHeader(blob: Blob): Promise<DicomHeader> {
  for (const size of [64 * 1024, 1024 * 1024, blob.size]) {
    const bytes = new Uint8Array(await blob.slice(0, size).arrayBuffer());
    try {
      return parseDicomHeader(bytes, bytes.length >= blob.size);
    } catch (error) {
      if (!(error instanceof Truncated) || size >= blob.size) throw error;
    }
  }
  throw new NotDicom("empty file");
}

class Cursor {
  pos: number;
  constructor(
    readonly view: DataView,
    start: number,
    public little: boolean,
    public explicit: boolean,
  ) {
    this.pos = start;
  }
  need(n: number): void {
    if (this.pos + n > this.view.byteLength) throw new Truncated();
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos, this.little);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos, this.little);
    this.pos += 4;
    return v;
  }
  ascii(n: number): string {
    this.need(n);
    let s = "";
    for (let i = 0; i < n; i++) s += String.fromCharCode(this.view.getUint8(this.pos + i));
    this.pos += n;
    return s;
  }
}

interface Element {
  tag: number;
  vr: string; // "" in implicit VR
  length: number;
  valueStart: number;
}

function readElement(c: Cursor): Element {
  const group = c.u16();
  const element = c.u16();
  const tag = ((group << 16) | element) >>> 0;
  // Item and delimitation tags never carry a VR, in any transfer syntax.
  if (group === 0xfffe || !c.explicit) return { tag, vr: "", length: c.u32(), valueStart: c.pos };
  const vr = c.ascii(2);
  if (!/^[A-Z]{2}$/.test(vr)) throw new NotDicom(`bad VR at ${c.pos - 2}`);
  let length: number;
  if (LONG_VRS.has(vr)) {
    c.u16();
    length = c.u32();
  } else {
    length = c.u16();
  }
  return { tag, vr, length, valueStart: c.pos };
}

/** Skip a value of undefined length: a sequence's items up to its delimiter. */
function skipUndefined(c: Cursor): void {
  for (;;) {
    const item = readElement(c);
    if (item.tag === 0xfffee0dd) return; // sequence delimitation
    if (item.tag !== 0xfffee000) throw new NotDicom("broken sequence");
    if (item.length !== UNDEFINED) {
      c.need(item.length);
      c.pos += item.length;
      continue;
    }
    for (;;) {
      const inner = readElement(c);
      if (inner.tag === 0xfffee00d) break; // item delimitation
      skipValue(c, inner);
    }
  }
}

function skipValue(c: Cursor, el: Element): void {
  if (el.length === UNDEFINED) {
    // UN of undefined length is implicit VR little endian inside (PS3.5 §6.2.2).
    const saved = c.explicit;
    if (el.vr === "UN") c.explicit = false;
    skipUndefined(c);
    c.explicit = saved;
    return;
  }
  c.need(el.length);
  c.pos += el.length;
}

function decoderFor(charset: string): TextDecoder {
  const terms = charset.toUpperCase();
  if (terms.includes("192")) return new TextDecoder("utf-8");
  // ISO 2022 IR 58 is GB 2312 in EUC form once its escape sequences are gone.
  if (terms.includes("GB18030") || terms.includes("GBK") || terms.includes("IR 58")) {
    return new TextDecoder("gb18030");
  }
  return new TextDecoder("latin1");
}

function text(bytes: Uint8Array, decoder: TextDecoder): string {
  return decoder.decode(stripEscapes(bytes)).replace(/\0+$/, "").trim();
}

/** Remove ISO 2022 escape sequences (ESC, then intermediate bytes, then a final byte). */
function stripEscapes(bytes: Uint8Array): Uint8Array {
  if (!bytes.includes(0x1b)) return bytes;
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x1b) {
      i++;
      while (i < bytes.length && bytes[i] >= 0x20 && bytes[i] <= 0x2f) i++;
      continue; // bytes[i] is the final byte
    }
    out.push(bytes[i]);
  }
  return Uint8Array.from(out);
}

/**
 * Parse the header of a Part 10 file (preamble optional). `complete` says the bytes are the
 * whole file, so running out of them means a damaged file rather than "read more".
 */
export function parseDicomHeader(bytes: Uint8Array, complete = true): DicomHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = (at: number) =>
    bytes.length >= at + 4 && String.fromCharCode(...bytes.subarray(at, at + 4)) === "DICM";
  let start: number;
  if (magic(128)) start = 132;
  else if (magic(0)) start = 4;
  else if (bytes.length >= 8 && bytes[0] === 0x02 && bytes[1] === 0x00) start = 0;
  else throw new NotDicom(bytes.length < 132 ? "too short" : "no DICM marker");

  const header: DicomHeader = {
    transferSyntaxUid: "",
    sopClassUid: "",
    sopInstanceUid: "",
    studyInstanceUid: "",
    seriesInstanceUid: "",
    patientName: "",
    patientId: "",
    studyDate: "",
    modality: "",
    studyDescription: "",
  };
  const ascii = new TextDecoder("latin1");
  try {
    // File meta: always explicit VR little endian, group 0002.
    const meta = new Cursor(view, start, true, true);
    for (;;) {
      if (meta.pos + 2 > bytes.length) throw new Truncated();
      if (view.getUint16(meta.pos, true) !== 0x0002) break;
      const el = readElement(meta);
      if (el.length === UNDEFINED) throw new NotDicom("undefined length in file meta");
      meta.need(el.length);
      const value = () => text(bytes.subarray(el.valueStart, el.valueStart + el.length), ascii);
      if (el.tag === 0x00020002) header.sopClassUid = value();
      else if (el.tag === 0x00020003) header.sopInstanceUid = value();
      else if (el.tag === 0x00020010) header.transferSyntaxUid = value();
      meta.pos += el.length;
    }
    if (!header.transferSyntaxUid) throw new NotDicom("file meta has no transfer syntax");
    if (header.transferSyntaxUid === DEFLATED) return header; // the meta names the instance
    const ts = header.transferSyntaxUid;
    const data = new Cursor(view, meta.pos, ts !== EXPLICIT_BE, ts !== IMPLICIT_LE);
    let decoder = ascii;
    while (data.pos < bytes.length) {
      const el = readElement(data);
      if (el.tag > LAST_TAG) break;
      const key = TAGS[el.tag];
      if (key && el.length !== UNDEFINED) {
        data.need(el.length);
        const raw = bytes.subarray(el.valueStart, el.valueStart + el.length);
        if (key === "charset") decoder = decoderFor(text(raw, ascii));
        else if (key === "patientName" || key === "studyDescription" || key === "patientId") {
          header[key] = text(raw, decoder);
        }
        else header[key] = text(raw, ascii);
      }
      skipValue(data, el);
    }
  } catch (error) {
    if (error instanceof Truncated && complete) throw new NotDicom("the file ends inside its header");
    throw error;
  }
  return header;
}
