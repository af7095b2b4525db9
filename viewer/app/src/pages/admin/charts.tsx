// Small bar charts drawn as inline SVG: one or more series per category, a value axis from
// zero, labels as SVG text (data never becomes markup). Every chart sits beside a table with
// the same numbers, so the SVG itself is only described to screen readers by its title.

export interface Series {
  key: string;
  label: string;
  values: (number | null)[];
}

const WIDTH = 640;
const HEIGHT = 240;
const LEFT = 44;
const RIGHT = 8;
const TOP = 16;
const BOTTOM = 44;
const PLOT_W = WIDTH - LEFT - RIGHT;
const PLOT_H = HEIGHT - TOP - BOTTOM;

/** The axis: a round step (1, 2, 2.5, 5 × 10^n; whole numbers for counts) and a top that is
 * a multiple of it at or above the largest value. */
export function axis(largest: number, integer: boolean): { top: number; step: number } {
  let raw = largest > 0 ? largest / 4 : 1;
  if (integer) raw = Math.max(raw, 1);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const steps = integer && magnitude === 1 ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = (steps.find((f) => f * magnitude >= raw) ?? 10) * magnitude;
  return { top: Math.max(step, Math.ceil(largest / step - 1e-9) * step), step };
}

/** Cut a label to about `room` columns, CJK counting double. */
function fit(label: string, room: number): string {
  let width = 0;
  let out = "";
  for (const ch of label) {
    width += /[\u2e80-\uffff]/.test(ch) ? 2 : 1;
    if (width > room) return `${out}…`;
    out += ch;
  }
  return out;
}

export function BarChart(props: {
  id: string;
  title: string;
  categories: string[];
  series: Series[];
  max?: number;
  integer?: boolean; // counts: whole-number ticks
  format?: (value: number) => string;
  empty: string;
  caption?: string; // shown above the chart when a figure holds two
}) {
  const { categories, series } = props;
  const format = props.format ?? ((v: number) => String(Number(v.toPrecision(3))));
  const values = series.flatMap((s) => s.values.filter((v): v is number => v !== null));
  if (!categories.length || !values.length) {
    return <p class="muted chart-empty">{props.empty}</p>;
  }
  const { top, step } = props.max
    ? { top: props.max, step: props.max / 4 }
    : axis(Math.max(...values), props.integer ?? false);
  const band = PLOT_W / categories.length;
  // Bars no wider than 56 units, the group centred in its band.
  const barWidth = Math.max(1, Math.min((band * 0.8) / series.length, 56));
  const inset = (band - barWidth * series.length) / 2;
  const y = (v: number) => TOP + PLOT_H - (Math.min(v, top) / top) * PLOT_H;
  // Show every k-th category label so they never overlap.
  const labelEvery = Math.max(1, Math.ceil(categories.length / Math.floor(PLOT_W / 56)));
  const room = Math.max(4, Math.floor((band * labelEvery) / 7));
  const showValues = categories.length * series.length <= 24;
  const ticks = Array.from({ length: Math.round(top / step) + 1 }, (_, i) => i * step);
  return (
    <div class="chart">
      {props.caption && <p class="chart-caption">{props.caption}</p>}
      <svg
        class="bar-chart"
        id={props.id}
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        role="img"
        aria-labelledby={`${props.id}-title`}
      >
        <title id={`${props.id}-title`}>{props.title}</title>
        {ticks.map((tick) => (
          <g class="tick">
            <line x1={LEFT} x2={WIDTH - RIGHT} y1={y(tick)} y2={y(tick)} />
            <text x={LEFT - 4} y={y(tick) + 4} text-anchor="end">
              {format(tick)}
            </text>
          </g>
        ))}
        {categories.map((category, i) => (
          <g class="category" data-category={category}>
            {series.map((s, j) => {
              const value = s.values[i];
              if (value === null || value === undefined) return null;
              const x = LEFT + i * band + inset + j * barWidth;
              const height = TOP + PLOT_H - y(value);
              return (
                <g>
                  <rect
                    class={`bar series-${j}`}
                    data-series={s.key}
                    data-value={value}
                    x={x}
                    y={y(value)}
                    width={barWidth}
                    height={height}
                  >
                    <title>{`${category} · ${s.label}: ${format(value)}`}</title>
                  </rect>
                  {showValues && (
                    <text class="value" x={x + barWidth / 2} y={y(value) - 3} text-anchor="middle">
                      {format(value)}
                    </text>
                  )}
                </g>
              );
            })}
            {i % labelEvery === 0 && (
              <text class="label" x={LEFT + i * band + band / 2} y={HEIGHT - BOTTOM + 16} text-anchor="middle">
                {fit(category, room)}
              </text>
            )}
          </g>
        ))}
        <line class="axis" x1={LEFT} x2={WIDTH - RIGHT} y1={TOP + PLOT_H} y2={TOP + PLOT_H} />
      </svg>
      {series.length > 1 && (
        <ul class="legend">
          {series.map((s, j) => (
            <li>
              <span class={`swatch series-${j}`} aria-hidden="true" />
              {s.label}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
