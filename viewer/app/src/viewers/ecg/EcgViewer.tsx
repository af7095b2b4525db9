// The calibrated 12-lead ECG: paper grid, calibration pulses and traces on one canvas (drawn
// in device pixels so lines stay sharp), lead labels as text over it, a caliper drawn as SVG
// by dragging, the hub's measurements and the cart's header beside it.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { JSX } from "preact";
import { ApiError } from "../../api";
import { formatDicomDate, locale } from "../../i18n";
import {
  fetchHeader,
  fetchMeasurements,
  fetchSignals,
  formatDicomDateTime,
  type EcgHeader,
  type Measurements,
  type MeasuredValues,
} from "./data";
import { t } from "./messages";
import {
  GAINS,
  PX_PER_MM,
  SPEEDS,
  drawPaper,
  layoutPaper,
  segmentAt,
  sizeCanvas,
  type EcgSignals,
  type Gain,
  type Layout,
  type Paper,
  type Segment,
  type Speed,
} from "./paper";
import "./ecg.css";

export interface EcgViewerProps {
  sopInstanceUid: string;
  /** Show the patient/acquisition header (a page that already names the patient may not). */
  showHeader?: boolean;
  /** Start in this layout (3×4 with a II rhythm strip unless told). */
  initialLayout?: Layout;
}

/** Timings a benchmark reads: ms since navigation start (performance.now()). */
interface EcgStats {
  openedMs: number;
  samplesMs?: number;
  firstDrawMs?: number;
  drawMs?: number;
}
declare global {
  interface Window {
    __ecgStats?: EcgStats;
  }
}

interface Caliper {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  seg?: Segment;
}

function useDevicePixelRatio(): number {
  const [dpr, setDpr] = useState(window.devicePixelRatio || 1);
  useEffect(() => {
    // A browser zoom or a move to another screen changes the ratio: redraw at the new one.
    const query = window.matchMedia(`(resolution: ${dpr}dppx)`);
    const changed = () => setDpr(window.devicePixelRatio || 1);
    query.addEventListener("change", changed);
    return () => query.removeEventListener("change", changed);
  }, [dpr]);
  return dpr;
}

function errorText(error: unknown): string {
  if (error instanceof ApiError && (error.status === 404 || error.status === 403)) return t("notFound");
  const detail = error instanceof Error ? error.message : String(error);
  return t("loadFailed", { detail });
}

export function EcgViewer(props: EcgViewerProps) {
  const sop = props.sopInstanceUid;
  const [signals, setSignals] = useState<EcgSignals | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [measurements, setMeasurements] = useState<Measurements | null>(null);
  const [measureError, setMeasureError] = useState<string | null>(null);
  const [header, setHeader] = useState<EcgHeader | null>(null);
  const [layout, setLayout] = useState<Layout>(props.initialLayout ?? "3x4");
  const [gain, setGain] = useState<Gain>(10);
  const [speed, setSpeed] = useState<Speed>(25);
  const [caliper, setCaliper] = useState<Caliper | null>(null);
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const drawnOnce = useRef(false);
  const dragging = useRef(false);
  const dpr = useDevicePixelRatio();

  useEffect(() => {
    const abort = new AbortController();
    const stats: EcgStats = { openedMs: performance.now() };
    window.__ecgStats = stats;
    drawnOnce.current = false;
    setSignals(null);
    setError(null);
    setMeasurements(null);
    setMeasureError(null);
    setHeader(null);
    setCaliper(null);
    // The traces first: the hub answers the samples fastest when nothing competes, and the
    // reader looks at the tracing before the numbers. Measurements and header follow at once.
    const rest = () => {
      if (abort.signal.aborted) return;
      fetchMeasurements(sop, abort.signal)
        .then(setMeasurements)
        .catch((e: unknown) => abort.signal.aborted || setMeasureError(errorText(e)));
      fetchHeader(sop, abort.signal)
        .then(setHeader)
        .catch(() => undefined); // the header is a courtesy; the traces and values stand alone
    };
    fetchSignals(sop, abort.signal)
      .then((s) => {
        stats.samplesMs = performance.now();
        setSignals(s);
      })
      .catch((e: unknown) => abort.signal.aborted || setError(errorText(e)))
      .finally(rest);
    return () => abort.abort();
  }, [sop]);

  const paper = useMemo(
    () => (signals ? layoutPaper(signals, layout, gain, speed) : null),
    [signals, layout, gain, speed],
  );

  useEffect(() => {
    const canvas = canvasRef.current;
    if (!canvas || !paper || !signals) return;
    const started = performance.now();
    sizeCanvas(canvas, paper, dpr);
    drawPaper(canvas, paper, signals, dpr);
    const done = performance.now();
    const stats = window.__ecgStats;
    if (stats) {
      stats.drawMs = done - started;
      if (!drawnOnce.current) stats.firstDrawMs = done;
    }
    drawnOnce.current = true;
    canvas.dataset.drawn = `${layout} ${gain} ${speed}`;
  }, [paper, signals, dpr]);

  // Changing the scale moves everything: an old caliper would measure nothing.
  useEffect(() => setCaliper(null), [layout, gain, speed]);

  const onKeyDown = (e: KeyboardEvent) => {
    const target = e.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape" && caliper) {
      setCaliper(null);
      e.preventDefault();
    } else if (e.key === "g" || e.key === "G") {
      setGain((g) => GAINS[(GAINS.indexOf(g) + 1) % GAINS.length]);
    } else if (e.key === "s" || e.key === "S") {
      setSpeed((s) => SPEEDS[(SPEEDS.indexOf(s) + 1) % SPEEDS.length]);
    } else if (e.key === "l" || e.key === "L") {
      setLayout((l) => (l === "3x4" ? "12x1" : "3x4"));
    }
  };

  const point = (e: PointerEvent): [number, number] => {
    const rect = (e.currentTarget as Element).getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  };
  const onPointerDown = (e: PointerEvent) => {
    if (!paper || e.button !== 0) return;
    const [x, y] = point(e);
    const target = e.currentTarget as Element;
    target.setPointerCapture(e.pointerId);
    // Keep the keyboard here (Escape clears, g/s/l switch) though the default is prevented.
    target.closest<HTMLElement>(".ecg-paper-scroll")?.focus({ preventScroll: true });
    dragging.current = true;
    setCaliper({ x1: x, y1: y, x2: x, y2: y, seg: segmentAt(paper, x, y) });
    e.preventDefault();
  };
  const onPointerMove = (e: PointerEvent) => {
    if (!dragging.current) return;
    const [x, y] = point(e);
    setCaliper((c) => (c ? { ...c, x2: x, y2: y } : c));
  };
  const onPointerUp = () => {
    dragging.current = false;
  };

  return (
    <div class="ecg-viewer" tabIndex={-1} onKeyDown={onKeyDown}>
      {props.showHeader !== false && <HeaderBar header={header} signals={signals} />}
      <Toolbar
        layout={layout}
        gain={gain}
        speed={speed}
        onLayout={setLayout}
        onGain={setGain}
        onSpeed={setSpeed}
      />
      <div class="ecg-body">
        <div class="ecg-paper-scroll" tabIndex={0} aria-label={t("caliperHelp")}>
          {error ? (
            <p class="error" role="alert">
              {error}
            </p>
          ) : !paper ? (
            <div class="ecg-loading" aria-busy="true">
              {t("loading")}
            </div>
          ) : null}
          <div
            class="ecg-paper"
            hidden={!paper}
            style={
              paper ? { width: `${paper.widthMm * PX_PER_MM}px`, height: `${paper.heightMm * PX_PER_MM}px` } : undefined
            }
          >
            <canvas
              ref={canvasRef}
              data-testid="ecg-canvas"
              role="img"
              aria-label={t("paper", { speed, gain })}
            />
            {paper?.segments.map((seg) => (
              <span
                key={`${seg.name}-${seg.startS}-${seg.rhythm}`}
                class={seg.rhythm ? "ecg-lead-label rhythm" : "ecg-lead-label"}
                data-lead={seg.name}
                style={{
                  left: `${(seg.xMm + 1) * PX_PER_MM}px`,
                  top: `${(paperRowOf(paper, seg).topMm + 0.5) * PX_PER_MM}px`,
                }}
              >
                {seg.name}
              </span>
            ))}
            {paper && (
              <svg
                class="ecg-overlay"
                data-testid="ecg-overlay"
                width={paper.widthMm * PX_PER_MM}
                height={paper.heightMm * PX_PER_MM}
                onPointerDown={onPointerDown}
                onPointerMove={onPointerMove}
                onPointerUp={onPointerUp}
                onPointerCancel={onPointerUp}
              >
                {caliper && <CaliperMarks caliper={caliper} paper={paper} />}
              </svg>
            )}
          </div>
        </div>
        <aside class="ecg-side">
          <CaliperReadout caliper={caliper} paper={paper} onClear={() => setCaliper(null)} />
          <MeasurementsPanel measurements={measurements} error={measureError} />
          <StatementsPanel header={header} measurements={measurements} />
        </aside>
      </div>
    </div>
  );
}

function paperRowOf(paper: Paper, seg: Segment) {
  return paper.rows.find((r) => r.baselineMm === seg.baselineMm) ?? paper.rows[0];
}

interface CaliperValues {
  ms: number;
  mv: number;
  bpm: number | null;
}

function caliperValues(c: Caliper, paper: Paper): CaliperValues {
  const ms = (Math.abs(c.x2 - c.x1) / PX_PER_MM / paper.speed) * 1000;
  const mv = (c.y1 - c.y2) / PX_PER_MM / paper.gain; // up is positive, as on paper
  return { ms, mv, bpm: ms >= 200 ? 60000 / ms : null };
}

function CaliperMarks(props: { caliper: Caliper; paper: Paper }) {
  const { caliper: c, paper } = props;
  const row = c.seg ? paperRowOf(paper, c.seg) : undefined;
  const top = row ? row.topMm * PX_PER_MM : Math.min(c.y1, c.y2) - 20;
  const bottom = row ? (row.topMm + row.heightMm) * PX_PER_MM : Math.max(c.y1, c.y2) + 20;
  const v = caliperValues(c, paper);
  const labelX = Math.max(c.x1, c.x2) + 6;
  const labelY = Math.min(c.y1, c.y2) - 6;
  return (
    <g class="ecg-caliper">
      <line x1={c.x1} x2={c.x1} y1={top} y2={bottom} />
      <line x1={c.x2} x2={c.x2} y1={top} y2={bottom} />
      <line x1={c.x1} x2={c.x2} y1={c.y1} y2={c.y1} class="dashed" />
      <line x1={c.x2 - 8} x2={c.x2 + 8} y1={c.y2} y2={c.y2} />
      <line x1={c.x2} x2={c.x2} y1={c.y1} y2={c.y2} class="amp" />
      <text x={labelX} y={Math.max(12, labelY)}>
        {`${Math.round(v.ms)} ms · ${v.mv.toFixed(2)} mV`}
      </text>
    </g>
  );
}

function CaliperReadout(props: { caliper: Caliper | null; paper: Paper | null; onClear: () => void }) {
  const { caliper, paper } = props;
  const v = caliper && paper ? caliperValues(caliper, paper) : null;
  return (
    <section class="panel ecg-caliper-panel" aria-live="polite">
      <h3>{t("caliper")}</h3>
      {v && caliper && (v.ms > 0 || v.mv !== 0) ? (
        <div data-testid="ecg-caliper">
          <p class="ecg-caliper-values">
            <span data-value="ms" data-raw={v.ms.toFixed(1)}>
              {t("caliperTime", { ms: Math.round(v.ms) })}
            </span>
            {v.bpm !== null && (
              <span data-value="bpm" data-raw={v.bpm.toFixed(1)}>
                {t("caliperRate", { bpm: Math.round(v.bpm) })}
              </span>
            )}
            <span data-value="mv" data-raw={v.mv.toFixed(3)}>
              {t("caliperAmplitude", { mv: v.mv.toFixed(2) })}
            </span>
            {caliper.seg && <span class="muted">{t("caliperLead", { lead: caliper.seg.name })}</span>}
          </p>
          <button type="button" onClick={props.onClear}>
            {t("clearCaliper")}
          </button>
        </div>
      ) : (
        <>
          <p class="muted">{t("caliperHelp")}</p>
          <p class="muted ecg-shortcuts">{t("shortcuts")}</p>
        </>
      )}
    </section>
  );
}

function Toolbar(props: {
  layout: Layout;
  gain: Gain;
  speed: Speed;
  onLayout: (l: Layout) => void;
  onGain: (g: Gain) => void;
  onSpeed: (s: Speed) => void;
}) {
  const group = <T extends string | number>(
    label: string,
    values: T[],
    current: T,
    name: (v: T) => string,
    pick: (v: T) => void,
    testid: string,
  ): JSX.Element => (
    <div class="ecg-switch" role="group" aria-label={label} data-testid={testid}>
      <span class="ecg-switch-label">{label}</span>
      {values.map((v) => (
        <button type="button" aria-pressed={v === current} class={v === current ? "on" : ""} onClick={() => pick(v)}>
          {name(v)}
        </button>
      ))}
    </div>
  );
  return (
    <div class="ecg-toolbar">
      {group<Layout>(
        t("layout"),
        ["3x4", "12x1"],
        props.layout,
        (l) => (l === "3x4" ? t("layout3x4") : t("layout12x1")),
        props.onLayout,
        "ecg-layout",
      )}
      {group<Gain>(t("gain"), GAINS, props.gain, (g) => t("mmPerMv", { value: g }), props.onGain, "ecg-gain")}
      {group<Speed>(t("speed"), SPEEDS, props.speed, (s) => t("mmPerS", { value: s }), props.onSpeed, "ecg-speed")}
    </div>
  );
}

function sexName(sex: string): string {
  return sex === "M" ? t("sexM") : sex === "F" ? t("sexF") : sex === "O" ? t("sexO") : sex;
}

function ageAt(birth: string, when: string): number | null {
  if (birth.length < 8 || when.length < 8) return null;
  const b = [Number(birth.slice(0, 4)), Number(birth.slice(4, 6)), Number(birth.slice(6, 8))];
  const w = [Number(when.slice(0, 4)), Number(when.slice(4, 6)), Number(when.slice(6, 8))];
  let years = w[0] - b[0];
  if (w[1] < b[1] || (w[1] === b[1] && w[2] < b[2])) years -= 1;
  return Number.isFinite(years) && years >= 0 ? years : null;
}

function HeaderBar(props: { header: EcgHeader | null; signals: EcgSignals | null }) {
  const h = props.header;
  const s = props.signals;
  const age = h ? ageAt(h.birthDate, h.acquired) : null;
  const items: [string, string, string][] = [];
  if (h) {
    items.push([t("patientId"), h.patientId, "patient-id"]);
    if (h.sex) items.push([t("sex"), sexName(h.sex), "sex"]);
    if (h.birthDate)
      items.push([t("birthDate"), `${formatDicomDate(h.birthDate)}${age !== null ? ` (${t("age", { years: age })})` : ""}`, "birth"]);
    if (h.acquired) items.push([t("acquired"), formatDicomDateTime(h.acquired), "acquired"]);
    if (h.institution) items.push([t("institution"), h.institution, "institution"]);
    if (h.device) items.push([t("device"), h.device, "device"]);
  }
  if (s)
    items.push([
      t("recording"),
      t("recordingValue", {
        leads: s.names.length,
        seconds: (s.numSamples / s.samplingHz).toFixed(1),
        hz: s.samplingHz,
      }),
      "recording",
    ]);
  return (
    <div class="ecg-header" data-testid="ecg-header">
      <h2 class="ecg-patient" data-testid="ecg-patient">
        {h?.patientName || t("title")}
      </h2>
      <dl>
        {items.map(([label, value, key]) => (
          <div key={key} data-field={key}>
            <dt>{label}</dt>
            <dd>{value}</dd>
          </div>
        ))}
      </dl>
    </div>
  );
}

type Row = [key: string, label: string, format: (v: number) => string];

function MeasurementsPanel(props: { measurements: Measurements | null; error: string | null }) {
  const m = props.measurements;
  const rows: Row[] = [
    ["heart_rate_bpm", t("heartRate"), (v) => t("bpm", { value: Math.round(v) })],
    ["rr_mean_ms", t("rr"), (v) => t("ms", { value: Math.round(v) })],
    ["pr_ms", t("pr"), (v) => t("ms", { value: Math.round(v) })],
    ["qrs_ms", t("qrs"), (v) => t("ms", { value: Math.round(v) })],
    ["qt_ms", t("qt"), (v) => t("ms", { value: Math.round(v) })],
    ["qtc_bazett_ms", t("qtcB"), (v) => t("ms", { value: Math.round(v) })],
    ["qtc_fridericia_ms", t("qtcF"), (v) => t("ms", { value: Math.round(v) })],
    ["frontal_axis_deg", t("axis"), (v) => t("deg", { value: Math.round(v) })],
  ];
  const value = (values: MeasuredValues, key: string): unknown => values[key];
  return (
    <section class="panel ecg-measurements" data-testid="ecg-measurements" lang={locale.value}>
      <h3>{t("measurements")}</h3>
      {props.error ? (
        <p class="error">{props.error}</p>
      ) : !m ? (
        <p class="muted" aria-busy="true">
          {t("measurementsPending")}
        </p>
      ) : m.status !== "computed" ? (
        <p class="error">{t("measurementsFailed", { detail: m.error })}</p>
      ) : (
        <>
          <dl>
            {rows.map(([key, label, format]) => {
              const v = value(m.effective, key);
              const byReader = m.reader !== null && key in m.reader.values;
              const why = m.automatic.not_computable?.[key];
              return (
                <div key={key} data-field={key}>
                  <dt>{label}</dt>
                  <dd title={typeof v === "number" ? undefined : why}>
                    {typeof v === "number" ? format(v) : t("notComputable")}
                    {byReader && (
                      <span class="badge ecg-reader" title={t("readerValue")}>
                        ✎
                      </span>
                    )}
                  </dd>
                </div>
              );
            })}
            <div data-field="rhythm_regular">
              <dt>{t("rhythm")}</dt>
              <dd>
                {m.effective.rhythm_regular === true
                  ? t("regular")
                  : m.effective.rhythm_regular === false
                    ? t("irregular")
                    : t("notComputable")}
              </dd>
            </div>
          </dl>
          <p class="muted ecg-algorithm">{t("algorithm", { name: m.algorithm })}</p>
        </>
      )}
    </section>
  );
}

function StatementsPanel(props: { header: EcgHeader | null; measurements: Measurements | null }) {
  const triage = props.measurements?.triage ?? [];
  const h = props.header;
  if (!h && !triage.length) return null;
  return (
    <section class="panel ecg-statements" data-testid="ecg-statements">
      {triage.length > 0 && (
        <>
          <h3>{t("triage")}</h3>
          <ul>
            {triage.map((r) => (
              <li key={r.code} class={`ecg-triage ${r.priority}`}>
                <span class="badge">{r.priority === "stat" ? t("stat") : t("urgent")}</span> {r.message}
              </li>
            ))}
          </ul>
        </>
      )}
      {h && (
        <>
          <h3>{t("statements")}</h3>
          {h.statements.length ? (
            <ul>
              {h.statements.map((s, i) => (
                <li key={i}>{s}</li>
              ))}
            </ul>
          ) : (
            <p class="muted">{t("noStatements")}</p>
          )}
          {h.cartValues.length > 0 && (
            <details>
              <summary>{t("cartValues")}</summary>
              <dl class="ecg-cart-values">
                {h.cartValues.map((c, i) => (
                  <div key={i}>
                    <dt>{c.name}</dt>
                    <dd>{c.value}</dd>
                  </div>
                ))}
              </dl>
            </details>
          )}
        </>
      )}
    </section>
  );
}
