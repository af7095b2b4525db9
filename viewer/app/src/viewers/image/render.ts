// Stored values to screen pixels: Modality LUT (rescale), VOI window (PS3.3 C.11.2.1.2),
// MONOCHROME1 and the user's invert, folded into one lookup table per stored word, so
// re-windowing a 512×512 slice is one table lookup per pixel.
import type { Raw } from "./frames";
import type { Instance, Window } from "./series";

const OPAQUE = 0xff000000;

function grey(level: number): number {
  return (OPAQUE | (level << 16) | (level << 8) | level) >>> 0;
}

/** The stored word as the value it means: BitsStored bits, sign-extended if signed. */
function storedValue(word: number, instance: Instance): number {
  const bits = Math.min(instance.bitsStored, 32);
  if (bits >= 32) return instance.signed ? word | 0 : word >>> 0;
  const masked = word & ((2 ** bits - 1) >>> 0);
  return instance.signed && masked >= 2 ** (bits - 1) ? masked - 2 ** bits : masked;
}

export function modalityValue(word: number, instance: Instance): number {
  return storedValue(word, instance) * instance.slope + instance.intercept;
}

/** VOI LUT function of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID) to 0..255. */
export function voi(value: number, window: Window, fn: string): number {
  const { center, width } = window;
  let y: number;
  if (fn === "SIGMOID") {
    y = 1 / (1 + Math.exp((-4 * (value - center)) / width));
  } else if (fn === "LINEAR_EXACT") {
    y = (value - center) / width + 0.5;
  } else {
    const w = Math.max(width - 1, 1e-6);
    y = (value - (center - 0.5)) / w + 0.5;
  }
  return Math.round(Math.min(Math.max(y, 0), 1) * 255);
}

export function isColour(instance: Instance): boolean {
  return instance.samples > 1 || instance.photometric === "PALETTE COLOR";
}

let cachedKey = "";
let cachedLut: Uint32Array | undefined;

function greyLut(instance: Instance, window: Window, invert: boolean): Uint32Array {
  const size = instance.bitsAllocated <= 8 ? 256 : 65536;
  const flip = invert !== (instance.photometric === "MONOCHROME1");
  const key = [
    size,
    instance.bitsStored,
    instance.signed,
    instance.slope,
    instance.intercept,
    window.center,
    window.width,
    instance.voiFunction,
    flip,
  ].join();
  if (key === cachedKey && cachedLut) return cachedLut;
  const lut = new Uint32Array(size);
  for (let word = 0; word < size; word++) {
    const level = voi(modalityValue(word, instance), window, instance.voiFunction);
    lut[word] = grey(flip ? 255 - level : level);
  }
  cachedKey = key;
  cachedLut = lut;
  return lut;
}

function clampByte(value: number): number {
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

/** Paint one frame into `out` (ImageData of the frame's size). */
export function paint(
  raw: Raw,
  instance: Instance,
  window: Window,
  invert: boolean,
  out: ImageData,
): void {
  const pixels = new Uint32Array(out.data.buffer);
  const count = instance.rows * instance.columns;
  if (instance.photometric === "PALETTE COLOR" && instance.palette) {
    const { lut, first } = instance.palette;
    const last = lut.length - 1;
    for (let i = 0; i < count; i++) {
      const index = raw[i] - first;
      const colour = lut[index < 0 ? 0 : index > last ? last : index];
      pixels[i] = invert ? (colour ^ 0x00ffffff) >>> 0 : colour;
    }
    return;
  }
  if (instance.samples >= 3) {
    // Decoded colour arrives as interleaved RGB; a natively stored frame comes as stored:
    // maybe planar, maybe YCbCr.
    const native = instance.nativeColour === true;
    const ybr = native && instance.photometric.startsWith("YBR");
    const planar = native && instance.planar;
    const [r0, g0, b0, step] = planar ? [0, count, 2 * count, 1] : [0, 1, 2, 3];
    const flip = invert ? 255 : 0;
    for (let i = 0; i < count; i++) {
      const at = i * step;
      let r = raw[r0 + at];
      let g = raw[g0 + at];
      let b = raw[b0 + at];
      if (ybr) {
        const y = r;
        const cb = g - 128;
        const cr = b - 128;
        r = clampByte(Math.round(y + 1.402 * cr));
        g = clampByte(Math.round(y - 0.344136 * cb - 0.714136 * cr));
        b = clampByte(Math.round(y + 1.772 * cb));
      }
      pixels[i] = (OPAQUE | ((b ^ flip) << 16) | ((g ^ flip) << 8) | (r ^ flip)) >>> 0;
    }
    return;
  }
  if (instance.bitsAllocated <= 16) {
    const lut = greyLut(instance, window, invert);
    for (let i = 0; i < count; i++) pixels[i] = lut[raw[i]];
    return;
  }
  const flip = invert !== (instance.photometric === "MONOCHROME1");
  for (let i = 0; i < count; i++) {
    const level = voi(modalityValue(raw[i], instance), window, instance.voiFunction);
    pixels[i] = grey(flip ? 255 - level : level);
  }
}

/** A window spanning the frame's values, for images that name none. */
export function fullRangeWindow(raw: Raw, instance: Instance): Window {
  if (isColour(instance)) return { center: 127.5, width: 256 };
  let low = Infinity;
  let high = -Infinity;
  const count = instance.rows * instance.columns;
  for (let i = 0; i < count; i++) {
    const value = modalityValue(raw[i], instance);
    if (value < low) low = value;
    if (value > high) high = value;
  }
  if (!Number.isFinite(low)) return { center: 127.5, width: 256 };
  return { center: (low + high) / 2, width: Math.max(high - low, 1) };
}
