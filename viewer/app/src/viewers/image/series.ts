// A series' DICOM JSON metadata (PS3.18 Annex F) turned into the stack a reader scrolls:
// one entry per frame, in anatomical order, with what is needed to turn stored values into
// grey levels (rescale, window, photometric interpretation, bits) and to measure (spacing).

export interface DicomElement {
  vr: string;
  Value?: unknown[];
  InlineBinary?: string;
  BulkDataURI?: string;
}
export type DicomJson = Record<string, DicomElement | undefined>;

export function values(ds: DicomJson, tag: string): unknown[] {
  return ds[tag]?.Value ?? [];
}

/** The first value as text; a person name as its groups (alphabetic=ideographic=phonetic,
 * as DICOM writes them), each with its ^ separators as spaces. */
export function text(ds: DicomJson, tag: string): string {
  const first = values(ds, tag)[0];
  if (first === undefined || first === null) return "";
  if (typeof first === "object") {
    const name = first as { Alphabetic?: string; Ideographic?: string; Phonetic?: string };
    const groups = [name.Alphabetic, name.Ideographic, name.Phonetic].map((group) =>
      (group ?? "").replace(/\^+/g, " ").trim(),
    );
    while (groups.length && !groups[groups.length - 1]) groups.pop();
    return groups.join("=");
  }
  return String(first);
}

export function numbers(ds: DicomJson, tag: string): number[] {
  return values(ds, tag)
    .map((value) => Number(value))
    .filter((value) => Number.isFinite(value));
}

export function number(ds: DicomJson, tag: string): number | undefined {
  return numbers(ds, tag)[0];
}

function items(ds: DicomJson, tag: string): DicomJson[] {
  return values(ds, tag) as DicomJson[];
}

export interface Window {
  center: number;
  width: number;
}

export interface Palette {
  /** Entry for each stored index from `first`, as packed 0xAABBGGRR (ImageData order). */
  lut: Uint32Array;
  first: number;
}

/** What one instance says about all its frames. */
export interface Instance {
  sopUid: string;
  ds: DicomJson;
  rows: number;
  columns: number;
  samples: number;
  bitsAllocated: number;
  bitsStored: number;
  signed: boolean;
  photometric: string;
  planar: boolean;
  slope: number;
  intercept: number;
  windows: Window[];
  voiFunction: string;
  /** mm between row centres, then between column centres (PS3.3 10.7.1.3). */
  spacing?: [number, number];
  frames: number;
  instanceNumber: number;
  position?: number[];
  orientation?: number[];
  framesPerSecond?: number;
  palette?: Palette;
  /** Colour frames come as stored (native transfer syntax), not decoded to RGB by the hub. */
  nativeColour?: boolean;
  /** Set when the palette tables are bulk data to fetch before drawing. */
  paletteUris?: string[];
}

/** One image of the stack: a frame (from 1) of an instance. */
export interface StackImage {
  instance: Instance;
  frame: number;
}

const NON_IMAGE_MODALITIES = new Set(["SR", "ECG", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT"]);

/** Transfer syntaxes whose frames the hub sends as stored (PS3.5 §A.1-A.5). */
export const NATIVE_SYNTAXES = new Set([
  "1.2.840.10008.1.2",
  "1.2.840.10008.1.2.1",
  "1.2.840.10008.1.2.2",
  "1.2.840.10008.1.2.1.99",
]);

/** Whether drawing needs to know if colour frames come as stored or decoded. */
export function needsStoredSyntax(instance: Instance): boolean {
  return instance.samples >= 3 && (instance.planar || instance.photometric.startsWith("YBR"));
}

export function isImageModality(modality: string): boolean {
  return !NON_IMAGE_MODALITIES.has(modality.toUpperCase());
}

function pixelSpacing(ds: DicomJson): [number, number] | undefined {
  let spacing = numbers(ds, "00280030"); // Pixel Spacing
  if (spacing.length < 2) {
    // Enhanced objects keep it in the shared functional groups' Pixel Measures.
    const shared = items(ds, "52009229")[0];
    const measures = shared ? items(shared, "00289110")[0] : undefined;
    spacing = measures ? numbers(measures, "00280030") : [];
  }
  if (spacing.length < 2) spacing = numbers(ds, "00181164"); // Imager Pixel Spacing
  if (spacing.length >= 2 && spacing[0] > 0 && spacing[1] > 0) return [spacing[0], spacing[1]];
  // Ultrasound: the first region calibrated in cm (units code 3) gives both deltas.
  for (const region of items(ds, "00186011")) {
    const [unitsX, unitsY] = [number(region, "00186024"), number(region, "00186026")];
    const [dx, dy] = [number(region, "0018602C"), number(region, "0018602E")];
    if (unitsX === 3 && unitsY === 3 && dx && dy && dx > 0 && dy > 0) {
      return [Math.abs(dy) * 10, Math.abs(dx) * 10];
    }
  }
  return undefined;
}

function windows(ds: DicomJson): Window[] {
  const centers = numbers(ds, "00281050");
  const widths = numbers(ds, "00281051");
  const found: Window[] = [];
  for (let i = 0; i < Math.min(centers.length, widths.length); i++) {
    if (widths[i] >= 1) found.push({ center: centers[i], width: widths[i] });
  }
  return found;
}

function framesPerSecond(ds: DicomJson): number | undefined {
  const cineRate = number(ds, "00180040");
  if (cineRate && cineRate > 0) return cineRate;
  const frameTime = number(ds, "00181063"); // ms
  if (frameTime && frameTime > 0) return 1000 / frameTime;
  const recommended = number(ds, "00082144");
  return recommended && recommended > 0 ? recommended : undefined;
}

function base64Bytes(data: string): Uint8Array {
  const binary = atob(data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** A palette from its three descriptors and tables (PS3.3 C.7.6.3.1.5-6). */
export function buildPalette(descriptor: number[], tables: Uint8Array[]): Palette {
  const entries = descriptor[0] === 0 ? 65536 : descriptor[0];
  const first = descriptor[1] ?? 0;
  const bits = descriptor[2] ?? 16;
  const channel = (bytes: Uint8Array): Uint8Array => {
    const out = new Uint8Array(entries);
    if (bits === 8 && bytes.length === entries) return bytes.slice(); // 8-bit values packed
    for (let i = 0; i < entries; i++) {
      const word = (bytes[2 * i] ?? 0) | ((bytes[2 * i + 1] ?? 0) << 8);
      out[i] = bits === 8 ? word & 0xff : word >> 8;
    }
    return out;
  };
  const [red, green, blue] = tables.map(channel);
  const lut = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) {
    lut[i] = (0xff000000 | (blue[i] << 16) | (green[i] << 8) | red[i]) >>> 0;
  }
  return { lut, first };
}

export function parseInstance(ds: DicomJson): Instance {
  const photometric = text(ds, "00280004") || "MONOCHROME2";
  const samples = number(ds, "00280002") ?? 1;
  const bitsAllocated = number(ds, "00280100") ?? 16;
  const instance: Instance = {
    sopUid: text(ds, "00080018"),
    ds,
    rows: number(ds, "00280010") ?? 0,
    columns: number(ds, "00280011") ?? 0,
    samples,
    bitsAllocated,
    bitsStored: number(ds, "00280101") ?? bitsAllocated,
    signed: number(ds, "00280103") === 1,
    photometric,
    planar: samples > 1 && number(ds, "00280006") === 1,
    slope: number(ds, "00281053") ?? 1,
    intercept: number(ds, "00281052") ?? 0,
    windows: windows(ds),
    voiFunction: text(ds, "00281056").toUpperCase() || "LINEAR",
    spacing: pixelSpacing(ds),
    frames: Math.max(1, number(ds, "00280008") ?? 1),
    instanceNumber: number(ds, "00200013") ?? 0,
    framesPerSecond: framesPerSecond(ds),
  };
  const position = numbers(ds, "00200032");
  const orientation = numbers(ds, "00200037");
  if (position.length === 3) instance.position = position;
  if (orientation.length === 6) instance.orientation = orientation;
  if (photometric === "PALETTE COLOR") {
    const descriptor = numbers(ds, "00281101");
    const tables = ["00281201", "00281202", "00281203"].map((tag) => ds[tag]);
    if (tables.every((table) => table?.InlineBinary)) {
      instance.palette = buildPalette(
        descriptor,
        tables.map((table) => base64Bytes(table!.InlineBinary!)),
      );
    } else if (tables.every((table) => table?.BulkDataURI)) {
      instance.paletteUris = tables.map((table) => table!.BulkDataURI!);
    }
  }
  return instance;
}

function normal(orientation: number[]): number[] {
  const [a, b, c, d, e, f] = orientation;
  return [b * f - c * e, c * d - a * f, a * e - b * d];
}

/** Instances in anatomical order: along the slice normal when positions differ (keeping the
 * direction InstanceNumber runs in), else by InstanceNumber; then every frame of each. */
export function buildStack(metadata: DicomJson[]): StackImage[] {
  const instances = metadata
    .map(parseInstance)
    .filter((instance) => instance.rows > 0 && instance.columns > 0 && "7FE00010" in instance.ds);
  instances.sort((a, b) => a.instanceNumber - b.instanceNumber);
  const reference = instances.find((instance) => instance.orientation);
  if (reference && instances.every((instance) => instance.position)) {
    const axis = normal(reference.orientation!);
    const along = (instance: Instance): number =>
      instance.position!.reduce((sum, value, i) => sum + value * axis[i], 0);
    const distinct = new Set(instances.map((instance) => along(instance).toFixed(3)));
    if (distinct.size === instances.length && instances.length > 1) {
      const byNumber = instances.slice();
      instances.sort((a, b) => along(a) - along(b));
      const firstByNumber = byNumber[0];
      const lastByNumber = byNumber[byNumber.length - 1];
      if (instances.indexOf(firstByNumber) > instances.indexOf(lastByNumber)) instances.reverse();
    }
  }
  const stack: StackImage[] = [];
  for (const instance of instances) {
    for (let frame = 1; frame <= instance.frames; frame++) stack.push({ instance, frame });
  }
  return stack;
}
