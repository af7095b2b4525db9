// The canvas side of the viewer, outside Preact: the stack position, window, zoom and pan,
// measurements and cine live here and are drawn once per animation frame. The component
// gets a snapshot after each change for its overlay and toolbar.
import type { StackLoader } from "./frames";
import { fullRangeWindow, paint } from "./render";
import type { StackImage, Window } from "./series";

export type Tool = "window" | "pan" | "zoom" | "length" | "angle";
export type Point = { x: number; y: number };

export interface Measurement {
  id: number;
  kind: "length" | "angle";
  image: number;
  points: Point[]; // image pixel coordinates (column, row)
}

export interface MeasurementValue {
  id: number;
  kind: "length" | "angle";
  value: number;
  unit: "mm" | "px" | "deg";
}

export interface Snapshot {
  index: number;
  total: number;
  loaded: number;
  window: Window;
  zoom: number; // CSS pixels per image pixel
  invert: boolean;
  tool: Tool;
  playing: boolean;
  fps: number;
  ready: boolean; // the image on screen has its pixels
  error?: string;
  measurements: MeasurementValue[];
}

export interface Geometry {
  zoom: number; // 1: fitted to the stage
  pan: [number, number]; // fractions of the stage's width and height
}

export interface ViewerStats {
  firstImageMs?: number; // since navigation (performance.now())
  openToFirstImageMs?: number;
  loaded: number;
  total: number;
  drawn: number;
  index: number;
}

declare global {
  interface Window {
    __viewerStats?: ViewerStats;
  }
}

export const PRESETS: Record<"lung" | "mediastinum" | "bone" | "brain", Window> = {
  lung: { center: -600, width: 1500 },
  mediastinum: { center: 40, width: 400 },
  bone: { center: 400, width: 1800 },
  brain: { center: 40, width: 80 },
};

const MIN_ZOOM = 0.05;
const MAX_ZOOM = 40;
const WHEEL_STEP = 40; // pixels of wheel delta per slice; one notch is 53-120

type Drag = {
  action: Tool;
  start: Point;
  last: Point;
  measurement?: Measurement;
};

export class StackViewport {
  private stack: StackImage[] = [];
  private loader?: StackLoader;
  private index = 0;
  private window: Window = { center: 40, width: 400 };
  private windowSet = false;
  private invert = false;
  private scale = 1;
  private panX = 0;
  private panY = 0;
  private fitted = true;
  private tool: Tool = "window";
  private measurements: Measurement[] = [];
  private pendingAngle?: Measurement;
  private nextId = 1;
  private drag?: Drag;
  private wheelDelta = 0;
  private playing = false;
  private fps = 15;
  private lastCineStep = 0;
  private frameRequest = 0;
  private cineRequest = 0;
  private painted = { index: -1, key: "" };
  private readonly offscreen = document.createElement("canvas");
  private image?: ImageData;
  private readonly openedAt = performance.now();
  readonly stats: ViewerStats = { loaded: 0, total: 0, drawn: 0, index: 0 };
  private readonly resize: ResizeObserver;
  private readonly detach: () => void;

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly onChange: (snapshot: Snapshot) => void,
  ) {
    window.__viewerStats = this.stats;
    this.resize = new ResizeObserver(() => {
      if (this.fitted) this.fitView();
      this.requestDraw();
    });
    this.resize.observe(canvas);
    this.detach = this.listen();
  }

  dispose(): void {
    this.resize.disconnect();
    this.detach();
    cancelAnimationFrame(this.frameRequest);
    cancelAnimationFrame(this.cineRequest);
    this.loader?.dispose();
  }

  setStack(stack: StackImage[], loader: StackLoader, start: number): void {
    this.loader?.dispose();
    this.stack = stack;
    this.loader = loader;
    this.index = Math.min(Math.max(start, 0), Math.max(stack.length - 1, 0));
    this.measurements = [];
    this.pendingAngle = undefined;
    this.painted = { index: -1, key: "" };
    this.windowSet = false;
    const first = stack[this.index]?.instance;
    if (first?.windows.length) {
      this.window = { ...first.windows[0] };
      this.windowSet = true;
    }
    const fps = stack.find((image) => image.instance.framesPerSecond)?.instance.framesPerSecond;
    this.fps = Math.round(Math.min(Math.max(fps ?? 15, 1), 60));
    this.stats.total = stack.length;
    this.stats.loaded = 0;
    this.fitted = true;
    this.fitView();
    loader.focus(this.index);
    this.changed();
  }

  /** The loader has new images: draw if the one on screen is among them. */
  imagesLoaded(indices: number[]): void {
    this.stats.loaded = this.loader?.loadedCount ?? 0;
    if (indices.includes(this.index)) this.requestDraw();
    this.changed();
  }

  // --- commands (toolbar, keys) -----------------------------------------------------------

  get current(): number {
    return this.index;
  }

  get total(): number {
    return this.stack.length;
  }

  setIndex(index: number): void {
    if (!this.stack.length) return;
    const next = Math.min(Math.max(Math.round(index), 0), this.stack.length - 1);
    if (next === this.index) return;
    this.index = next;
    this.pendingAngle = undefined;
    this.loader?.focus(next);
    this.requestDraw();
    this.changed();
  }

  scroll(delta: number): void {
    this.setIndex(this.index + delta);
  }

  setWindow(window: Window): void {
    this.window = { center: window.center, width: Math.max(1, window.width) };
    this.windowSet = true;
    this.requestDraw();
    this.changed();
  }

  toggleInvert(): void {
    this.invert = !this.invert;
    this.requestDraw();
    this.changed();
  }

  setInvert(invert: boolean): void {
    if (invert !== this.invert) this.toggleInvert();
  }

  /** Zoom and pan in terms another screen can use: zoom relative to fit, pan as fractions of
   * the stage (a shared viewer on a canvas of another size shows the same part). */
  geometry(): Geometry {
    const { width, height } = this.size();
    const fit = this.fitScale();
    return {
      zoom: this.fitted || !fit ? 1 : this.scale / fit,
      pan: this.fitted || !width || !height ? [0, 0] : [this.panX / width, this.panY / height],
    };
  }

  setGeometry(geometry: Geometry): void {
    const fit = this.fitScale();
    const { width, height } = this.size();
    if (geometry.zoom === 1 && geometry.pan[0] === 0 && geometry.pan[1] === 0) {
      if (!this.fitted) this.fit();
      return;
    }
    if (!fit) return;
    this.scale = Math.min(Math.max(fit * geometry.zoom, MIN_ZOOM), MAX_ZOOM);
    this.panX = geometry.pan[0] * width;
    this.panY = geometry.pan[1] * height;
    this.fitted = false;
    this.requestDraw();
    this.changed();
  }

  setTool(tool: Tool): void {
    this.tool = tool;
    this.pendingAngle = undefined;
    this.requestDraw();
    this.changed();
  }

  fit(): void {
    this.fitted = true;
    this.fitView();
    this.requestDraw();
    this.changed();
  }

  /** Back to how the series opened: fitted, its own window, no invert. */
  reset(): void {
    const instance = this.stack[this.index]?.instance;
    if (instance?.windows.length) this.window = { ...instance.windows[0] };
    else this.windowSet = false;
    this.invert = false;
    this.fit();
  }

  clearMeasurements(): void {
    this.measurements = this.measurements.filter((m) => m.image !== this.index);
    this.pendingAngle = undefined;
    this.requestDraw();
    this.changed();
  }

  cancel(): void {
    this.pendingAngle = undefined;
    this.drag = undefined;
    this.requestDraw();
  }

  setPlaying(playing: boolean): void {
    if (playing === this.playing || this.stack.length < 2) return;
    this.playing = playing;
    cancelAnimationFrame(this.cineRequest);
    if (playing) {
      this.lastCineStep = performance.now();
      this.cineRequest = requestAnimationFrame(this.cineTick);
    }
    this.changed();
  }

  setFps(fps: number): void {
    if (!Number.isFinite(fps)) return;
    this.fps = Math.min(Math.max(Math.round(fps), 1), 60);
    this.changed();
  }

  get isPlaying(): boolean {
    return this.playing;
  }

  private readonly cineTick = (now: number): void => {
    if (!this.playing) return;
    if (now - this.lastCineStep >= 1000 / this.fps) {
      const next = (this.index + 1) % this.stack.length;
      // Wait for a frame still loading rather than flash a blank one.
      if (this.loader?.raw[next] || this.loader?.failed[next]) {
        this.lastCineStep = now;
        this.setIndex(next);
      }
    }
    this.cineRequest = requestAnimationFrame(this.cineTick);
  };

  // --- geometry -----------------------------------------------------------------------------

  /** Rows are this many times as tall as columns are wide (non-square pixels). */
  private aspect(): number {
    const spacing = this.stack[this.index]?.instance.spacing;
    return spacing ? spacing[0] / spacing[1] : 1;
  }

  private size(): { width: number; height: number } {
    return { width: this.canvas.clientWidth, height: this.canvas.clientHeight };
  }

  private fitScale(): number {
    const instance = this.stack[this.index]?.instance;
    const { width, height } = this.size();
    if (!instance || !width || !height) return 0;
    return Math.min(width / instance.columns, height / (instance.rows * this.aspect()));
  }

  private fitView(): void {
    const scale = this.fitScale();
    if (!scale) return;
    this.scale = scale;
    this.panX = 0;
    this.panY = 0;
  }

  private toScreen(point: Point): Point {
    const instance = this.stack[this.index].instance;
    const { width, height } = this.size();
    return {
      x: width / 2 + this.panX + (point.x - instance.columns / 2) * this.scale,
      y: height / 2 + this.panY + (point.y - instance.rows / 2) * this.scale * this.aspect(),
    };
  }

  private toImage(point: Point): Point {
    const instance = this.stack[this.index].instance;
    const { width, height } = this.size();
    return {
      x: (point.x - width / 2 - this.panX) / this.scale + instance.columns / 2,
      y: (point.y - height / 2 - this.panY) / (this.scale * this.aspect()) + instance.rows / 2,
    };
  }

  private zoomAt(factor: number, at: Point): void {
    const before = this.toImage(at);
    this.scale = Math.min(Math.max(this.scale * factor, MIN_ZOOM), MAX_ZOOM);
    const after = this.toScreen(before);
    this.panX += at.x - after.x;
    this.panY += at.y - after.y;
    this.fitted = false;
    this.requestDraw();
    this.changed();
  }

  // --- measurements ---------------------------------------------------------------------

  private measure(m: Measurement): MeasurementValue {
    const spacing = this.stack[m.image]?.instance.spacing;
    const [rowMm, colMm] = spacing ?? [1, 1];
    const vector = (a: Point, b: Point): [number, number] => [
      (b.x - a.x) * colMm,
      (b.y - a.y) * rowMm,
    ];
    if (m.kind === "length") {
      const [dx, dy] = vector(m.points[0], m.points[1]);
      return { id: m.id, kind: m.kind, value: Math.hypot(dx, dy), unit: spacing ? "mm" : "px" };
    }
    const [ax, ay] = vector(m.points[1], m.points[0]);
    const [bx, by] = vector(m.points[1], m.points[2] ?? m.points[1]);
    const cos = (ax * bx + ay * by) / (Math.hypot(ax, ay) * Math.hypot(bx, by) || 1);
    const degrees = (Math.acos(Math.min(Math.max(cos, -1), 1)) * 180) / Math.PI;
    return { id: m.id, kind: m.kind, value: degrees, unit: "deg" };
  }

  private onImage(): Measurement[] {
    const shown = this.measurements.filter((m) => m.image === this.index);
    return this.pendingAngle ? [...shown, this.pendingAngle] : shown;
  }

  // --- input ------------------------------------------------------------------------------

  private listen(): () => void {
    const canvas = this.canvas;
    const local = (event: MouseEvent): Point => {
      const box = canvas.getBoundingClientRect();
      return { x: event.clientX - box.left, y: event.clientY - box.top };
    };
    const down = (event: PointerEvent): void => {
      if (!this.stack.length) return;
      const at = local(event);
      const action: Tool = event.button === 2 ? "window" : event.button === 1 ? "pan" : this.tool;
      event.preventDefault();
      // Keys go to the viewer once the reader works on the image.
      canvas.closest<HTMLElement>("[tabindex]")?.focus({ preventScroll: true });
      canvas.setPointerCapture(event.pointerId);
      if (action === "angle") {
        this.angleClick(this.toImage(at));
        return;
      }
      const drag: Drag = { action, start: at, last: at };
      if (action === "length") {
        const point = this.toImage(at);
        drag.measurement = {
          id: this.nextId++,
          kind: "length",
          image: this.index,
          points: [point, { ...point }],
        };
        this.measurements.push(drag.measurement);
      }
      this.drag = drag;
    };
    const move = (event: PointerEvent): void => {
      const at = local(event);
      if (this.pendingAngle && !this.drag) {
        const points = this.pendingAngle.points;
        points[points.length - 1] = this.toImage(at);
        this.requestDraw();
        return;
      }
      const drag = this.drag;
      if (!drag) return;
      const dx = at.x - drag.last.x;
      const dy = at.y - drag.last.y;
      drag.last = at;
      if (drag.action === "window") {
        const step = Math.max(this.window.width, 10) / 200;
        this.setWindow({
          center: this.window.center + dy * step,
          width: this.window.width + dx * step,
        });
      } else if (drag.action === "pan") {
        this.panX += dx;
        this.panY += dy;
        this.fitted = false;
        this.requestDraw();
        this.changed(); // a shared view follows the pan
      } else if (drag.action === "zoom") {
        this.zoomAt(Math.exp(-dy / 150), drag.start);
      } else if (drag.measurement) {
        drag.measurement.points[1] = this.toImage(at);
        this.requestDraw();
        this.changed();
      }
    };
    const up = (): void => {
      const measurement = this.drag?.measurement;
      if (measurement) {
        const [a, b] = measurement.points;
        if (Math.hypot(b.x - a.x, b.y - a.y) * this.scale < 2) {
          this.measurements = this.measurements.filter((m) => m !== measurement);
        }
        this.changed();
      }
      this.drag = undefined;
      this.requestDraw();
    };
    const wheel = (event: WheelEvent): void => {
      if (!this.stack.length) return;
      event.preventDefault();
      const pixels = event.deltaMode === 1 ? event.deltaY * 40 : event.deltaY;
      if (event.ctrlKey) {
        this.zoomAt(Math.exp(-pixels / 500), local(event));
        return;
      }
      this.wheelDelta += pixels;
      if (Math.abs(this.wheelDelta) >= WHEEL_STEP) {
        this.scroll(Math.sign(this.wheelDelta));
        this.wheelDelta = 0;
      }
    };
    const menu = (event: Event): void => event.preventDefault();
    canvas.addEventListener("pointerdown", down);
    canvas.addEventListener("pointermove", move);
    canvas.addEventListener("pointerup", up);
    canvas.addEventListener("pointercancel", up);
    canvas.addEventListener("wheel", wheel, { passive: false });
    canvas.addEventListener("contextmenu", menu);
    return () => {
      canvas.removeEventListener("pointerdown", down);
      canvas.removeEventListener("pointermove", move);
      canvas.removeEventListener("pointerup", up);
      canvas.removeEventListener("pointercancel", up);
      canvas.removeEventListener("wheel", wheel);
      canvas.removeEventListener("contextmenu", menu);
    };
  }

  /** Angle: click one end, the vertex, the other end. */
  private angleClick(point: Point): void {
    if (!this.pendingAngle) {
      this.pendingAngle = {
        id: this.nextId++,
        kind: "angle",
        image: this.index,
        points: [point, { ...point }],
      };
    } else if (this.pendingAngle.points.length === 2) {
      this.pendingAngle.points[1] = point;
      this.pendingAngle.points.push({ ...point });
    } else {
      this.pendingAngle.points[2] = point;
      this.measurements.push(this.pendingAngle);
      this.pendingAngle = undefined;
      this.changed();
    }
    this.requestDraw();
  }

  // --- drawing ----------------------------------------------------------------------------

  requestDraw(): void {
    if (this.frameRequest) return;
    this.frameRequest = requestAnimationFrame(() => {
      this.frameRequest = 0;
      this.draw();
    });
  }

  private changed(): void {
    this.stats.index = this.index;
    this.onChange(this.snapshot());
  }

  snapshot(): Snapshot {
    const loader = this.loader;
    return {
      index: this.index,
      total: this.stack.length,
      loaded: loader?.loadedCount ?? 0,
      window: { ...this.window },
      zoom: this.scale,
      invert: this.invert,
      tool: this.tool,
      playing: this.playing,
      fps: this.fps,
      ready: Boolean(loader?.raw[this.index]),
      error: loader?.failed[this.index],
      measurements: this.measurements
        .filter((m) => m.image === this.index)
        .map((m) => this.measure(m)),
    };
  }

  /** Window and invert the image on screen into the offscreen canvas, if they changed. */
  private paintCurrent(): boolean {
    const image = this.stack[this.index];
    const raw = this.loader?.raw[this.index];
    if (!image || !raw) return false;
    const { instance } = image;
    if (!this.windowSet) {
      this.window = fullRangeWindow(raw, instance);
      this.windowSet = true;
      this.changed();
    }
    const key = `${this.window.center},${this.window.width},${this.invert}`;
    if (this.painted.index === this.index && this.painted.key === key) return true;
    if (
      !this.image ||
      this.image.width !== instance.columns ||
      this.image.height !== instance.rows
    ) {
      this.image = new ImageData(instance.columns, instance.rows);
      this.offscreen.width = instance.columns;
      this.offscreen.height = instance.rows;
    }
    paint(raw, instance, this.window, this.invert, this.image);
    this.offscreen.getContext("2d")!.putImageData(this.image, 0, 0);
    this.painted = { index: this.index, key };
    return true;
  }

  private draw(): void {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.size();
    if (!width || !height) return;
    const [pixelWidth, pixelHeight] = [Math.round(width * ratio), Math.round(height * ratio)];
    if (this.canvas.width !== pixelWidth || this.canvas.height !== pixelHeight) {
      this.canvas.width = pixelWidth;
      this.canvas.height = pixelHeight;
    }
    const ctx = this.canvas.getContext("2d")!;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    if (!this.paintCurrent()) return;
    const instance = this.stack[this.index].instance;
    const topLeft = this.toScreen({ x: 0, y: 0 });
    ctx.imageSmoothingEnabled = this.scale < 4; // big zoom: show the pixels as they are
    ctx.drawImage(
      this.offscreen,
      topLeft.x,
      topLeft.y,
      instance.columns * this.scale,
      instance.rows * this.scale * this.aspect(),
    );
    this.drawMeasurements(ctx);
    this.stats.drawn++;
    this.stats.index = this.index;
    if (this.stats.firstImageMs === undefined) {
      const now = performance.now();
      this.stats.firstImageMs = Math.round(now);
      this.stats.openToFirstImageMs = Math.round(now - this.openedAt);
    }
  }

  private drawMeasurements(ctx: CanvasRenderingContext2D): void {
    ctx.lineWidth = 1.5;
    ctx.font = "13px system-ui, sans-serif";
    for (const m of this.onImage()) {
      const points = m.points.map((p) => this.toScreen(p));
      ctx.strokeStyle = "#ffd400";
      ctx.beginPath();
      points.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
      ctx.stroke();
      for (const p of points) {
        ctx.beginPath();
        ctx.arc(p.x, p.y, 3, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (m === this.pendingAngle && m.points.length < 3) continue;
      const value = this.measure(m);
      const label = value.unit === "deg" ? `${value.value.toFixed(1)}°` : formatLength(value);
      const anchor = points[1]; // the far end of a length, the vertex of an angle
      ctx.fillStyle = "#000";
      ctx.fillText(label, anchor.x + 7, anchor.y - 5);
      ctx.fillStyle = "#ffd400";
      ctx.fillText(label, anchor.x + 6, anchor.y - 6);
    }
  }
}

export function formatLength(value: MeasurementValue): string {
  return `${value.value.toFixed(value.unit === "mm" ? 1 : 0)} ${value.unit}`;
}
