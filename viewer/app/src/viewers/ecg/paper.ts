// ECG paper geometry and drawing: everything is laid out in millimetres of paper and turned
// into CSS pixels with the CSS inch (96 px = 25.4 mm), so at zoom 100% and devicePixelRatio 1
// a ruler held to the screen reads what paper would. Grid lines are snapped to device pixels
// (sharp at any ratio) one by one, so rounding never accumulates along the strip.

export const PX_PER_MM = 96 / 25.4;

export type Layout = "3x4" | "12x1";
export type Gain = 5 | 10 | 20; // mm/mV
export type Speed = 25 | 50; // mm/s

export const GAINS: Gain[] = [5, 10, 20];
export const SPEEDS: Speed[] = [25, 50];

const STANDARD_ORDER = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"];
const CAL_PULSE_S = 0.2; // the 1 mV calibration pulse lasts 200 ms
const COLUMN_S = 2.5; // 3×4: each column shows 2.5 s of its leads
const RHYTHM_S = 10;
const RIGHT_MARGIN_MM = 5;

export interface EcgSignals {
  names: string[];
  samplingHz: number;
  numSamples: number;
  leads: Float32Array[]; // µV, one per name
}

/** One drawn piece of a lead: which lead, which seconds, where on the paper. */
export interface Segment {
  lead: number;
  name: string;
  startS: number;
  endS: number;
  xMm: number; // where startS is drawn
  baselineMm: number; // y of 0 mV
  rhythm: boolean;
}

export interface Row {
  topMm: number;
  heightMm: number;
  baselineMm: number;
}

export interface Paper {
  layout: Layout;
  gain: Gain;
  speed: Speed;
  widthMm: number;
  heightMm: number;
  traceXMm: number; // x of t = 0 in every row (after the calibration pulse)
  rows: Row[];
  segments: Segment[];
}

function rowHeightMm(layout: Layout, gain: Gain): number {
  // Multiples of 5 mm, so every baseline sits on a major line as on printed paper.
  if (layout === "12x1") return { 5: 15, 10: 20, 20: 35 }[gain];
  return { 5: 20, 10: 30, 20: 50 }[gain];
}

/** The leads in reading order: the standard 12 first, anything else after. */
export function orderedLeads(names: string[]): number[] {
  const known = STANDARD_ORDER.map((n) => names.indexOf(n)).filter((i) => i >= 0);
  const rest = names.map((_, i) => i).filter((i) => !known.includes(i));
  return [...known, ...rest];
}

export function layoutPaper(signals: EcgSignals, layout: Layout, gain: Gain, speed: Speed): Paper {
  const rowMm = rowHeightMm(layout, gain);
  // Room for the pulse (200 ms) with a little space either side, rounded up to a major square.
  const traceXMm = Math.ceil((CAL_PULSE_S * speed + 4) / 5) * 5;
  const durationS = signals.numSamples / signals.samplingHz;
  const stripS = Math.min(RHYTHM_S, durationS);
  const order = orderedLeads(signals.names);
  const rows: Row[] = [];
  const segments: Segment[] = [];
  const addRow = (): Row => {
    const topMm = rows.length * rowMm;
    const row = { topMm, heightMm: rowMm, baselineMm: topMm + rowMm * 0.6 };
    rows.push(row);
    return row;
  };
  if (layout === "3x4") {
    const columns = 4;
    const perColumn = 3;
    for (let r = 0; r < perColumn; r++) {
      const row = addRow();
      for (let c = 0; c < columns; c++) {
        const lead = order[c * perColumn + r];
        if (lead === undefined) continue;
        const startS = c * COLUMN_S;
        if (startS >= durationS) continue;
        segments.push({
          lead,
          name: signals.names[lead],
          startS,
          endS: Math.min(startS + COLUMN_S, durationS),
          xMm: traceXMm + startS * speed,
          baselineMm: row.baselineMm,
          rhythm: false,
        });
      }
    }
    const rhythmLead = signals.names.indexOf("II") >= 0 ? signals.names.indexOf("II") : order[0];
    const row = addRow();
    segments.push({
      lead: rhythmLead,
      name: signals.names[rhythmLead],
      startS: 0,
      endS: stripS,
      xMm: traceXMm,
      baselineMm: row.baselineMm,
      rhythm: true,
    });
  } else {
    for (const lead of order) {
      const row = addRow();
      segments.push({
        lead,
        name: signals.names[lead],
        startS: 0,
        endS: stripS,
        xMm: traceXMm,
        baselineMm: row.baselineMm,
        rhythm: false,
      });
    }
  }
  const traceS = layout === "3x4" ? Math.max(stripS, 4 * COLUMN_S) : stripS;
  const widthMm = Math.ceil((traceXMm + traceS * speed + RIGHT_MARGIN_MM) / 5) * 5;
  const heightMm = rows.length * rowMm + 5;
  return { layout, gain, speed, widthMm, heightMm, traceXMm, rows, segments };
}

export const PAPER_COLORS = {
  background: "#fffdfb",
  minor: "#f6c9cc",
  major: "#e3878d",
  trace: "#111111",
  pulse: "#111111",
};

/** Size the canvas for `paper` (CSS size in calibrated px, backing store in device px). */
export function sizeCanvas(canvas: HTMLCanvasElement, paper: Paper, dpr: number): void {
  // The CSS size is exactly the backing store's: any other would resample (blur) the lines.
  canvas.width = Math.round(paper.widthMm * PX_PER_MM * dpr);
  canvas.height = Math.round(paper.heightMm * PX_PER_MM * dpr);
  canvas.style.width = `${canvas.width / dpr}px`;
  canvas.style.height = `${canvas.height / dpr}px`;
}

function drawGrid(ctx: CanvasRenderingContext2D, paper: Paper, dpr: number): void {
  const w = ctx.canvas.width;
  const h = ctx.canvas.height;
  const unit = PX_PER_MM * dpr; // device px per mm
  const line = Math.max(1, Math.round(dpr)); // one device pixel at 1x, two at 2x…
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = PAPER_COLORS.background;
  ctx.fillRect(0, 0, w, h);
  // Minor lines first, major over them; each line on a whole device pixel.
  for (const major of [false, true]) {
    ctx.fillStyle = major ? PAPER_COLORS.major : PAPER_COLORS.minor;
    for (let mm = 0; mm <= paper.widthMm; mm++) {
      if ((mm % 5 === 0) !== major) continue;
      ctx.fillRect(Math.round(mm * unit), 0, line, h);
    }
    for (let mm = 0; mm <= paper.heightMm; mm++) {
      if ((mm % 5 === 0) !== major) continue;
      ctx.fillRect(0, Math.round(mm * unit), w, line);
    }
  }
}

function drawPulse(ctx: CanvasRenderingContext2D, paper: Paper, row: Row): void {
  const s = PX_PER_MM;
  const x0 = (paper.traceXMm - CAL_PULSE_S * paper.speed) / 2; // centred in its margin
  const width = CAL_PULSE_S * paper.speed;
  const base = row.baselineMm;
  const top = base - paper.gain; // 1 mV high
  ctx.beginPath();
  ctx.moveTo((x0 - 1.5) * s, base * s);
  ctx.lineTo(x0 * s, base * s);
  ctx.lineTo(x0 * s, top * s);
  ctx.lineTo((x0 + width) * s, top * s);
  ctx.lineTo((x0 + width) * s, base * s);
  ctx.lineTo((x0 + width + 1.5) * s, base * s);
  ctx.stroke();
}

function drawSegment(ctx: CanvasRenderingContext2D, paper: Paper, signals: EcgSignals, seg: Segment): void {
  const data = signals.leads[seg.lead];
  const fs = signals.samplingHz;
  const first = Math.round(seg.startS * fs);
  const last = Math.min(Math.round(seg.endS * fs), signals.numSamples) - 1;
  if (last <= first) return;
  const pxPerSample = (paper.speed / fs) * PX_PER_MM;
  const pxPerUv = (paper.gain / 1000) * PX_PER_MM;
  const x0 = seg.xMm * PX_PER_MM;
  const y0 = seg.baselineMm * PX_PER_MM;
  ctx.beginPath();
  // Many samples fall on one pixel column at 1000 Hz: draw each column's first, lowest,
  // highest and last value, which keeps every peak and costs a fraction of the points.
  const perColumn = 1 / pxPerSample;
  if (perColumn < 3) {
    ctx.moveTo(x0, y0 - data[first] * pxPerUv);
    for (let i = first + 1; i <= last; i++) {
      ctx.lineTo(x0 + (i - first) * pxPerSample, y0 - data[i] * pxPerUv);
    }
  } else {
    const step = Math.max(1, Math.floor(perColumn / 2)); // two buckets per CSS px column
    ctx.moveTo(x0, y0 - data[first] * pxPerUv);
    for (let i = first; i <= last; i += step) {
      const end = Math.min(last, i + step - 1);
      let lo = i;
      let hi = i;
      for (let k = i + 1; k <= end; k++) {
        if (data[k] < data[lo]) lo = k;
        if (data[k] > data[hi]) hi = k;
      }
      const [a, b] = lo < hi ? [lo, hi] : [hi, lo];
      ctx.lineTo(x0 + (a - first) * pxPerSample, y0 - data[a] * pxPerUv);
      if (b !== a) ctx.lineTo(x0 + (b - first) * pxPerSample, y0 - data[b] * pxPerUv);
      ctx.lineTo(x0 + (end - first) * pxPerSample, y0 - data[end] * pxPerUv);
    }
  }
  ctx.stroke();
}

/** Column boundaries of the 3×4 layout: a short tick where one lead gives way to the next. */
function drawSeparators(ctx: CanvasRenderingContext2D, paper: Paper): void {
  for (const seg of paper.segments) {
    if (seg.rhythm || seg.startS === 0) continue;
    const x = seg.xMm * PX_PER_MM;
    ctx.beginPath();
    ctx.moveTo(x, (seg.baselineMm - 3) * PX_PER_MM);
    ctx.lineTo(x, (seg.baselineMm + 3) * PX_PER_MM);
    ctx.stroke();
  }
}

/** Grid, calibration pulses and traces (labels are HTML beside it, so they stay text). */
export function drawPaper(canvas: HTMLCanvasElement, paper: Paper, signals: EcgSignals, dpr: number): void {
  const ctx = canvas.getContext("2d", { alpha: false });
  if (!ctx) return;
  drawGrid(ctx, paper, dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.lineJoin = "round";
  ctx.lineCap = "round";
  ctx.strokeStyle = PAPER_COLORS.pulse;
  ctx.lineWidth = 1.3;
  for (const row of paper.rows) drawPulse(ctx, paper, row);
  ctx.lineWidth = 1;
  drawSeparators(ctx, paper);
  ctx.strokeStyle = PAPER_COLORS.trace;
  ctx.lineWidth = 1.1;
  for (const seg of paper.segments) drawSegment(ctx, paper, signals, seg);
}

/** Paper position (CSS px from the canvas's corner) → time in s and level in mV of `seg`. */
export function paperToSignal(paper: Paper, xPx: number, yPx: number, seg: Segment): { s: number; mv: number } {
  const xMm = xPx / PX_PER_MM;
  const yMm = yPx / PX_PER_MM;
  return { s: seg.startS + (xMm - seg.xMm) / paper.speed, mv: (seg.baselineMm - yMm) / paper.gain };
}

/** The segment drawn under a point, if any (by row and time span). */
export function segmentAt(paper: Paper, xPx: number, yPx: number): Segment | undefined {
  const xMm = xPx / PX_PER_MM;
  const yMm = yPx / PX_PER_MM;
  const row = paper.rows.find((r) => yMm >= r.topMm && yMm < r.topMm + r.heightMm);
  if (!row) return undefined;
  return paper.segments.find(
    (s) => s.baselineMm === row.baselineMm && xMm >= s.xMm && xMm <= s.xMm + (s.endS - s.startS) * paper.speed,
  );
}
