// The image viewer: series thumbnails, one stack viewport drawn on a canvas by our own code,
// overlay text in the corners, a scrollbar, tools and cine. Pixels come as WADO-RS frames
// decoded by the hub; see series.ts (metadata), frames.ts (loading), render.ts (windowing)
// and viewport.ts (drawing and input).
import { useEffect, useRef, useState } from "preact/hooks";
import { api } from "../../api";
import { formatDicomDate } from "../../i18n";
import { StackLoader, fetchBulk } from "./frames";
import { t } from "./messages";
import { isColour } from "./render";
import {
  NATIVE_SYNTAXES,
  buildPalette,
  buildStack,
  isImageModality,
  needsStoredSyntax,
  number,
  numbers,
  text,
  type DicomJson,
  type StackImage,
} from "./series";
import {
  PRESETS,
  StackViewport,
  formatLength,
  type Geometry,
  type Snapshot,
  type Tool,
} from "./viewport";
import "./ImageViewer.css";

/** Where the viewer stands, for another viewer to show the same (a consult's shared viewer). */
export interface ViewerState {
  study: string;
  series: string;
  instance: string; // SOP Instance UID of the image on screen
  frame: number; // 1-based, for multi-frame instances
  index: number; // 0-based position in the series' stack
  total: number;
  window: { center: number; width: number };
  invert: boolean;
  zoom: number; // relative to fit
  pan: [number, number]; // fractions of the stage
}

/** Somewhere to go: a series, optionally an image in it and how to show it. */
export interface ViewTarget {
  series: string;
  instance?: string;
  frame?: number;
  window?: { center: number; width: number };
  invert?: boolean;
  zoom?: number;
  pan?: [number, number];
}

export interface ImageViewerProps {
  studyInstanceUid: string;
  seriesInstanceUid?: string;
  /** Open this image of `seriesInstanceUid` first (a key image link). */
  instanceUid?: string;
  frame?: number;
  /** Go there whenever a new object is given (a followed host); undefined leaves the user be. */
  target?: ViewTarget;
  /** Told each time what is shown changes (image, window, invert, zoom, pan, series). */
  onStateChange?: (state: ViewerState) => void;
  /** Take keyboard focus when opened (a page of its own; not beside a report editor). */
  autoFocus?: boolean;
}

interface SeriesEntry {
  uid: string;
  number: string;
  modality: string;
  description: string;
  count: number;
}

type ToolLabel = "toolWindow" | "toolPan" | "toolZoom" | "toolLength" | "toolAngle";
const TOOLS: { tool: Tool; label: ToolLabel; key: string }[] = [
  { tool: "window", label: "toolWindow", key: "w" },
  { tool: "pan", label: "toolPan", key: "p" },
  { tool: "zoom", label: "toolZoom", key: "z" },
  { tool: "length", label: "toolLength", key: "l" },
  { tool: "angle", label: "toolAngle", key: "a" },
];
const PRESET_KEYS = ["lung", "mediastinum", "bone", "brain"] as const;

function studyPath(study: string): string {
  return `/dicomweb/studies/${encodeURIComponent(study)}`;
}

function seriesEntries(rows: DicomJson[]): SeriesEntry[] {
  return rows
    .map((row) => ({
      uid: text(row, "0020000E"),
      number: text(row, "00200011"),
      modality: text(row, "00080060"),
      description: text(row, "0008103E"),
      count: number(row, "00201209") ?? 0,
    }))
    .filter((entry) => entry.uid)
    .sort((a, b) => Number(a.number || 0) - Number(b.number || 0));
}

/** Things drawing needs that the metadata only points at: bulk palettes, stored syntax. */
async function completeStack(study: string, series: string, stack: StackImage[]): Promise<void> {
  const instances = [...new Set(stack.map((image) => image.instance))];
  await Promise.all(
    instances
      .filter((instance) => instance.paletteUris)
      .map(async (instance) => {
        const tables = await Promise.all(instance.paletteUris!.map((uri) => fetchBulk(uri)));
        instance.palette = buildPalette(numbers(instance.ds, "00281101"), tables);
      }),
  );
  if (!instances.some(needsStoredSyntax)) return;
  const rows = await api<DicomJson[]>(
    `${studyPath(study)}/series/${encodeURIComponent(series)}/instances?includefield=00083002`,
  );
  const syntaxOf = new Map(rows.map((row) => [text(row, "00080018"), text(row, "00083002")]));
  for (const instance of instances) {
    instance.nativeColour = NATIVE_SYNTAXES.has(syntaxOf.get(instance.sopUid) ?? "");
  }
}

/** The stack position of an instance (and frame), or undefined when it is not in the stack. */
function indexOf(stack: StackImage[], instance?: string, frame?: number): number | undefined {
  if (!instance) return undefined;
  const found = stack.findIndex(
    (image) => image.instance.sopUid === instance && (!frame || image.frame === frame),
  );
  return found < 0 ? undefined : found;
}

function round(value: number): string {
  return String(Math.round(value));
}

export function ImageViewer(props: ImageViewerProps) {
  const { studyInstanceUid: study } = props;
  const root = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const viewport = useRef<StackViewport | undefined>(undefined);
  const [series, setSeries] = useState<SeriesEntry[]>([]);
  const [selected, setSelected] = useState<string | undefined>(
    props.target?.series ?? props.seriesInstanceUid,
  );
  // Where to go once the series on the way is loaded; the stack's series once it is.
  const pending = useRef<ViewTarget | undefined>(
    props.target ??
      (props.seriesInstanceUid
        ? { series: props.seriesInstanceUid, instance: props.instanceUid, frame: props.frame }
        : undefined),
  );
  const shown = useRef<string | undefined>(undefined);
  const [header, setHeader] = useState<DicomJson | undefined>();
  const [stack, setStack] = useState<StackImage[]>([]);
  const [snapshot, setSnapshot] = useState<Snapshot | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [empty, setEmpty] = useState(false);

  useEffect(() => {
    const view = new StackViewport(canvas.current!, setSnapshot);
    viewport.current = view;
    if (props.autoFocus) root.current?.focus();
    return () => view.dispose();
  }, []);

  useEffect(() => {
    if (props.seriesInstanceUid) setSelected(props.seriesInstanceUid);
  }, [props.seriesInstanceUid]);

  /** Go to a target now if its series is on screen, else once it is loaded. */
  function go(target: ViewTarget, stackNow: StackImage[]): void {
    const view = viewport.current;
    if (!view || shown.current !== target.series) {
      pending.current = target;
      setSelected(target.series);
      return;
    }
    pending.current = undefined;
    const at = indexOf(stackNow, target.instance, target.frame);
    if (at !== undefined) view.setIndex(at);
    if (target.window) view.setWindow(target.window);
    if (target.invert !== undefined) view.setInvert(target.invert);
    if (target.zoom !== undefined && target.pan) {
      view.setGeometry({ zoom: target.zoom, pan: target.pan });
    }
  }

  useEffect(() => {
    if (props.target) go(props.target, stack);
  }, [props.target]);

  // The study's series, for the thumbnails and to choose the first series with images.
  useEffect(() => {
    let live = true;
    setSeries([]);
    setEmpty(false);
    api<DicomJson[]>(`${studyPath(study)}/series?includefield=0008103E,00201209`)
      .then((rows) => {
        if (!live) return;
        const entries = seriesEntries(rows);
        setSeries(entries);
        const first = entries.find((entry) => isImageModality(entry.modality));
        setSelected((current) => current ?? first?.uid);
        if (!first && !props.seriesInstanceUid && !props.target) setEmpty(true);
      })
      .catch((reason: unknown) => live && setError(String((reason as Error).message ?? reason)));
    return () => {
      live = false;
    };
  }, [study]);

  // One series: metadata, then pixels from the image on screen outwards.
  useEffect(() => {
    if (!selected) return;
    const abort = new AbortController();
    setError(undefined);
    const view = viewport.current!;
    const none: StackImage[] = [];
    view.setStack(none, new StackLoader("", none, () => undefined), 0); // nothing stale meanwhile
    shown.current = undefined;
    const seriesPath = `${studyPath(study)}/series/${encodeURIComponent(selected)}`;
    (async () => {
      const metadata = await api<DicomJson[]>(`${seriesPath}/metadata`, { signal: abort.signal });
      const images = buildStack(metadata);
      await completeStack(study, selected, images);
      if (abort.signal.aborted) return;
      setHeader(metadata[0]);
      setStack(images);
      if (!images.length) {
        setEmpty(true);
        return;
      }
      setEmpty(false);
      const loader = new StackLoader(seriesPath, images, (indices) => view.imagesLoaded(indices));
      const target = pending.current?.series === selected ? pending.current : undefined;
      view.setStack(images, loader, indexOf(images, target?.instance, target?.frame) ?? 0);
      shown.current = selected;
      if (target) go(target, images);
    })().catch((reason: unknown) => {
      if (!abort.signal.aborted) setError(String((reason as Error).message ?? reason));
    });
    return () => abort.abort();
  }, [study, selected]);

  const view = viewport.current;
  const total = snapshot?.total ?? 0;
  const index = snapshot?.index ?? 0;
  const current = stack[index];

  function onKeyDown(event: KeyboardEvent): void {
    const target = event.target as HTMLElement;
    if (["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName)) return;
    if (target.tagName === "BUTTON" && (event.key === " " || event.key === "Enter")) return;
    if (!view || event.ctrlKey || event.metaKey || event.altKey) return;
    const page = Math.max(1, Math.round(total / 10));
    const actions: Record<string, () => void> = {
      ArrowDown: () => view.scroll(1),
      ArrowRight: () => view.scroll(1),
      ArrowUp: () => view.scroll(-1),
      ArrowLeft: () => view.scroll(-1),
      PageDown: () => view.scroll(page),
      PageUp: () => view.scroll(-page),
      Home: () => view.setIndex(0),
      End: () => view.setIndex(total - 1),
      f: () => view.fit(),
      i: () => view.toggleInvert(),
      r: () => view.reset(),
      " ": () => view.setPlaying(!view.isPlaying),
      Delete: () => view.clearMeasurements(),
      Backspace: () => view.clearMeasurements(),
      Escape: () => view.cancel(),
    };
    PRESET_KEYS.forEach((name, i) => {
      actions[String(i + 1)] = () => view.setWindow(PRESETS[name]);
    });
    for (const { tool, key } of TOOLS) actions[key] = () => view.setTool(tool);
    const action = actions[event.key.length === 1 ? event.key.toLowerCase() : event.key];
    if (!action) return;
    event.preventDefault();
    action();
  }

  const scrollbar = useRef<HTMLDivElement>(null);
  function scrollTo(event: PointerEvent): void {
    const box = scrollbar.current!.getBoundingClientRect();
    const fraction = Math.min(Math.max((event.clientY - box.top) / box.height, 0), 1);
    view?.setIndex(fraction * (total - 1));
  }

  // Tell the owner what is on screen, once per change (snapshots also come while loading).
  const told = useRef("");
  const { onStateChange } = props;
  useEffect(() => {
    if (!onStateChange || !view || !snapshot || !current || shown.current !== selected) return;
    const geometry: Geometry = view.geometry();
    const state: ViewerState = {
      study,
      series: selected!,
      instance: current.instance.sopUid,
      frame: current.frame,
      index,
      total,
      window: { center: snapshot.window.center, width: snapshot.window.width },
      invert: snapshot.invert,
      zoom: geometry.zoom,
      pan: geometry.pan,
    };
    const key = JSON.stringify(state);
    if (key === told.current) return;
    told.current = key;
    onStateChange(state);
  }, [snapshot, current, selected, onStateChange]);

  const thumbPercent = total ? Math.max(100 / total, 4) : 100;
  const thumbTop = total > 1 ? (index / (total - 1)) * (100 - thumbPercent) : 0;
  const ds = header ?? {};
  const location = current ? number(current.instance.ds, "00201041") : undefined;
  const sliceText = total ? t("slice", { n: index + 1, total }) : "";
  // Thumbnails are rendered by the hub: ask for them once the first image is drawn, so they
  // do not compete with it.
  const [showThumbnails, setShowThumbnails] = useState(false);
  useEffect(() => {
    if (snapshot?.ready || error || empty) setShowThumbnails(true);
  }, [snapshot?.ready, error, empty]);

  return (
    <div
      class="image-viewer"
      ref={root}
      tabIndex={0}
      onKeyDown={onKeyDown}
      aria-label={t("viewer")}
      title={t("help")}
      data-slice={total ? index + 1 : undefined}
      data-total={total}
      data-loaded={snapshot?.loaded ?? 0}
      data-ready={snapshot?.ready ? "true" : "false"}
    >
      <nav class="iv-series" aria-label={t("series")}>
        {series.map((entry) => (
          <button
            key={entry.uid}
            type="button"
            class="iv-thumb-button"
            aria-pressed={entry.uid === selected}
            onClick={() => setSelected(entry.uid)}
            data-testid="series-thumbnail"
          >
            {showThumbnails && (
              <img
                src={`${studyPath(study)}/series/${encodeURIComponent(entry.uid)}/thumbnail`}
                alt=""
                loading="lazy"
                onError={(event) => ((event.currentTarget as HTMLImageElement).hidden = true)}
              />
            )}
            <span>
              {t("seriesItem", { number: entry.number || "?" })} {entry.modality}
            </span>
            {entry.description && <span class="iv-thumb-desc">{entry.description}</span>}
            <span class="muted">{t("images", { count: entry.count })}</span>
          </button>
        ))}
      </nav>
      <div class="iv-main">
        <div class="iv-toolbar" role="toolbar" aria-label={t("tools")}>
          <div class="iv-group">
            {TOOLS.map(({ tool, label }) => (
              <button
                key={tool}
                type="button"
                aria-pressed={snapshot?.tool === tool}
                onClick={() => view?.setTool(tool)}
              >
                {t(label)}
              </button>
            ))}
          </div>
          <div class="iv-group" aria-label={t("presets")} role="group">
            {PRESET_KEYS.map((name) => (
              <button key={name} type="button" onClick={() => view?.setWindow(PRESETS[name])}>
                {t(name)}
              </button>
            ))}
          </div>
          <div class="iv-group">
            <button type="button" onClick={() => view?.fit()}>
              {t("fit")}
            </button>
            <button
              type="button"
              aria-pressed={snapshot?.invert ?? false}
              onClick={() => view?.toggleInvert()}
            >
              {t("invert")}
            </button>
            <button type="button" onClick={() => view?.reset()}>
              {t("reset")}
            </button>
            <button type="button" onClick={() => view?.clearMeasurements()}>
              {t("clear")}
            </button>
          </div>
          {total > 1 && (
            <div class="iv-group">
              <button
                type="button"
                class={snapshot?.playing ? "primary" : ""}
                onClick={() => view?.setPlaying(!view.isPlaying)}
                data-testid="cine-play"
              >
                {snapshot?.playing ? t("pause") : t("play")}
              </button>
              <label class="iv-fps">
                <input
                  type="number"
                  min={1}
                  max={60}
                  value={snapshot?.fps ?? 15}
                  onInput={(event) => view?.setFps(Number(event.currentTarget.value))}
                />
                <span>{t("fps")}</span>
              </label>
            </div>
          )}
        </div>
        <div class="iv-stage">
          <canvas ref={canvas} class="iv-canvas" role="img" aria-label={t("canvas")} />
          <div class="iv-overlay iv-tl" data-testid="overlay-patient">
            <div>{text(ds, "00100010")}</div>
            <div>{text(ds, "00100020")}</div>
            <div>{[text(ds, "00100040"), text(ds, "00101010")].filter(Boolean).join(" ")}</div>
          </div>
          <div class="iv-overlay iv-tr" data-testid="overlay-study">
            <div>{text(ds, "00081030")}</div>
            <div>{formatDicomDate(text(ds, "00080020"))}</div>
            <div>
              {[text(ds, "00080060"), text(ds, "00200011") && `#${text(ds, "00200011")}`]
                .filter(Boolean)
                .join(" ")}{" "}
              {text(ds, "0008103E")}
            </div>
          </div>
          <div class="iv-overlay iv-bl">
            <div data-testid="overlay-slice">{sliceText}</div>
            {location !== undefined && <div>{t("location", { value: location.toFixed(1) })}</div>}
            {snapshot && snapshot.loaded < total && (
              <div>{t("loaded", { loaded: snapshot.loaded, total })}</div>
            )}
          </div>
          <div class="iv-overlay iv-br" data-testid="overlay-window">
            {snapshot && (
              <>
                {current && !isColour(current.instance) && (
                  <div>
                    {t("windowLevel", {
                      center: round(snapshot.window.center),
                      width: round(snapshot.window.width),
                    })}
                  </div>
                )}
                <div>{t("zoom", { percent: Math.round(snapshot.zoom * 100) })}</div>
                {snapshot.invert && <div>{t("inverted")}</div>}
              </>
            )}
          </div>
          {(error || empty || (total > 0 && snapshot && !snapshot.ready) || (!total && !error)) && (
            <div class="iv-status" role={error ? "alert" : "status"}>
              {error
                ? t("failed", { detail: error })
                : empty
                  ? t("noImages")
                  : snapshot?.error
                    ? t("failed", { detail: snapshot.error })
                    : t("loading")}
            </div>
          )}
          {total > 1 && (
            <div
              class="iv-scrollbar"
              ref={scrollbar}
              role="slider"
              aria-label={t("scrollbar")}
              aria-orientation="vertical"
              aria-valuemin={1}
              aria-valuemax={total}
              aria-valuenow={index + 1}
              aria-valuetext={sliceText}
              onPointerDown={(event) => {
                event.currentTarget.setPointerCapture(event.pointerId);
                scrollTo(event);
              }}
              onPointerMove={(event) => {
                if (event.buttons & 1) scrollTo(event);
              }}
            >
              <div
                class="iv-scroll-thumb"
                style={{ height: `${thumbPercent}%`, top: `${thumbTop}%` }}
              />
            </div>
          )}
        </div>
        <ul class="iv-measurements" aria-label={t("measurements")} aria-live="polite">
          {snapshot?.measurements.map((m) => (
            <li key={m.id} data-testid="measurement">
              {m.kind === "length"
                ? t("length", { value: formatLength(m) })
                : t("angle", { value: m.value.toFixed(1) })}
            </li>
          ))}
        </ul>
      </div>
    </div>
  );
}
