// The consortium's figures over a chosen period: volumes, turnaround, deadline compliance and
// critical-result acknowledgement, by clinic and by reader. Charts are inline SVG; each has a
// table with the same numbers beside it.
import type { ComponentChildren } from "preact";
import { useEffect, useState } from "preact/hooks";
import { api } from "../../api";
import { formatDateTime } from "../../i18n";
import { can } from "../../session";
import { BarChart } from "./charts";
import { type Institution, LoadState, NotAllowed, PRIORITIES, type Priority, treeOrder, useLoad, word } from "./common";
import { t } from "./messages";
import "./admin.css";

interface Turn {
  count: number;
  p50: number | null;
  p90: number | null;
}
interface Share {
  due: number;
  met: number;
  rate: number | null;
}
interface Acknowledgement {
  flagged: number;
  acknowledged: number;
  rate: number | null;
  p50: number | null;
  p90: number | null;
}
interface ClinicFigures {
  institution_id: number;
  institution_code: string;
  institution_name: string;
  cases: number;
  signed: number;
  turnaround: Turn;
  compliance: Share;
  critical: Acknowledgement;
}
interface ReaderFigures {
  user_id: number;
  username: string;
  display_name: string;
  signed: number;
  turnaround: Turn;
  compliance: Share;
  critical: Acknowledgement;
}
interface Summary {
  start: string;
  end: string;
  generated_at: string;
  volumes: { institution_code: string; service: string; day: string; cases: number }[];
  compliance: { priority: Priority; due: number; met: number; missed: number; pending: number; rate: number | null }[];
  critical: { flagged: number; acknowledged: number; open: number; ack_minutes: Turn };
  by_clinic: ClinicFigures[];
  by_reader: ReaderFigures[];
}

type Preset = "7" | "30" | "90" | "custom";

const DAY_MS = 86_400_000;
const isoDay = (date: Date) => date.toISOString().slice(0, 10);
const nextDay = (day: string) => isoDay(new Date(Date.parse(`${day}T00:00:00Z`) + DAY_MS));

function summaryPath(preset: Preset, from: string, to: string, institution: string): string {
  const query = new URLSearchParams();
  if (preset === "custom") {
    // Dates without a zone: the hub reads them in the consortium's time zone; `to` is inclusive.
    query.set("from", `${from}T00:00:00`);
    query.set("to", `${nextDay(to)}T00:00:00`);
  } else {
    query.set("from", new Date(Date.now() - Number(preset) * DAY_MS).toISOString());
  }
  if (institution) query.set("institution", institution);
  return `/api/metrics/summary?${query}`;
}

const percent = (rate: number | null) => (rate === null ? "–" : `${Math.round(rate * 1000) / 10}%`);
const minutes = (value: number | null) => (value === null ? "–" : t("minutesUnit", { n: Math.round(value * 10) / 10 }));
const pct = (v: number) => `${Math.round(v)}%`;

/** Every day from the first to the last with requests, so quiet days show as gaps. */
function perDay(volumes: Summary["volumes"]): [string, number][] {
  const counts = new Map<string, number>();
  for (const v of volumes) counts.set(v.day, (counts.get(v.day) ?? 0) + v.cases);
  const days = [...counts.keys()].sort();
  if (!days.length) return [];
  const out: [string, number][] = [];
  for (let day = days[0]; day <= days[days.length - 1] && out.length < 400; day = nextDay(day)) {
    out.push([day, counts.get(day) ?? 0]);
  }
  return out;
}

export function Dashboard() {
  const [preset, setPreset] = useState<Preset>("30");
  const today = isoDay(new Date());
  const [from, setFrom] = useState(isoDay(new Date(Date.now() - 29 * DAY_MS)));
  const [to, setTo] = useState(today);
  const [institution, setInstitution] = useState("");
  const [path, setPath] = useState(() => summaryPath("30", from, to, ""));
  const places = useLoad<Institution[]>("/api/institutions");
  const [summary, setSummary] = useState<Summary | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);

  useEffect(() => {
    if (!can("view_metrics")) return;
    const abort = new AbortController();
    setError(null);
    api<Summary>(path, { signal: abort.signal })
      .then(setSummary)
      .catch((e: unknown) => {
        if (!abort.signal.aborted) setError(e);
      });
    return () => abort.abort();
  }, [path]);

  if (!can("view_metrics")) return <NotAllowed />;

  const choose = (next: Preset) => {
    setPreset(next);
    if (next !== "custom") setPath(summaryPath(next, from, to, institution));
  };

  return (
    <div class="dashboard">
      <div class="dashboard-head">
        <h1>{t("dashboard")}</h1>
        <form
          class="period"
          onSubmit={(e) => {
            e.preventDefault();
            setPath(summaryPath(preset, from, to, institution));
          }}
        >
          <fieldset class="presets">
            <legend>{t("period")}</legend>
            {(["7", "30", "90", "custom"] as Preset[]).map((p) => (
              <label class={`preset ${preset === p ? "chosen" : ""}`}>
                <input type="radio" name="period" value={p} checked={preset === p} onChange={() => choose(p)} />
                {p === "custom" ? t("custom") : t(`last${p}` as "last7")}
              </label>
            ))}
          </fieldset>
          {preset === "custom" && (
            <>
              <label>
                {t("from")}
                <input type="date" name="from" value={from} max={to} onInput={(e) => setFrom(e.currentTarget.value)} />
              </label>
              <label>
                {t("to")}
                <input type="date" name="to" value={to} min={from} onInput={(e) => setTo(e.currentTarget.value)} />
              </label>
            </>
          )}
          <label>
            {t("clinicFilter")}
            <select
              name="institution"
              value={institution}
              onChange={(e) => {
                setInstitution(e.currentTarget.value);
                if (preset !== "custom") setPath(summaryPath(preset, from, to, e.currentTarget.value));
              }}
            >
              <option value="">{t("allClinics")}</option>
              {treeOrder(places.data ?? []).map(({ institution: i, depth }) => (
                <option value={i.code}>
                  {"\u3000".repeat(depth)}
                  {i.name}
                </option>
              ))}
            </select>
          </label>
          {preset === "custom" && (
            <button type="submit" class="primary">
              {t("apply")}
            </button>
          )}
        </form>
      </div>
      {summary ? <Figures summary={summary} /> : null}
      {!summary || error ? <LoadState error={error} /> : null}
    </div>
  );
}

function Figures({ summary }: { summary: Summary }) {
  const clinics = summary.by_clinic;
  const readers = summary.by_reader;
  const clinicNames = clinics.map((c) => c.institution_name);
  const readerNames = readers.map((r) => r.display_name || r.username);
  const days = perDay(summary.volumes);
  const total = clinics.reduce((n, c) => n + c.cases, 0);
  const signed = clinics.reduce((n, c) => n + c.signed, 0);
  const due = summary.compliance.reduce((n, c) => n + c.due, 0);
  const met = summary.compliance.reduce((n, c) => n + c.met, 0);
  const critical = summary.critical;
  const empty = t("noData");
  return (
    <>
      <p class="muted period-shown">
        {t("periodShown", { start: formatDateTime(summary.start), end: formatDateTime(summary.end) })} ·{" "}
        {t("generated", { at: formatDateTime(summary.generated_at) })}
      </p>
      <dl class="tiles">
        <div class="tile" data-figure="cases">
          <dt>{t("totalCases")}</dt>
          <dd>{total}</dd>
        </div>
        <div class="tile" data-figure="signed">
          <dt>{t("signedCases")}</dt>
          <dd>{signed}</dd>
        </div>
        <div class="tile" data-figure="compliance">
          <dt>{t("compliance")}</dt>
          <dd>{percent(due ? met / due : null)}</dd>
        </div>
        <div class="tile" data-figure="ack-rate">
          <dt>{t("ackRate")}</dt>
          <dd>
            {percent(critical.flagged ? critical.acknowledged / critical.flagged : null)}
            <small>
              {" "}
              {critical.acknowledged}/{critical.flagged}
            </small>
          </dd>
        </div>
        <div class="tile" data-figure="ack-time">
          <dt>{t("ackTime")}</dt>
          <dd>
            {minutes(critical.ack_minutes.p50)}
            <small> P90 {minutes(critical.ack_minutes.p90)}</small>
          </dd>
        </div>
      </dl>

      <div class="charts">
        <Figure id="volume-clinic" title={t("volumeByClinic")}>
          <BarChart
            id="chart-volume-clinic"
            title={t("volumeByClinic")}
            categories={clinicNames}
            series={[{ key: "cases", label: t("cases"), values: clinics.map((c) => c.cases) }]}
            integer
            empty={empty}
          />
          <Table
            caption={t("volumeByClinic")}
            head={[t("clinic"), t("cases"), t("signed")]}
            rows={clinics.map((c) => [c.institution_name, c.cases, c.signed])}
            testid="table-volume-clinic"
          />
        </Figure>

        <Figure id="volume-day" title={t("volumeByDay")}>
          <BarChart
            id="chart-volume-day"
            title={t("volumeByDay")}
            categories={days.map(([day]) => day)}
            series={[{ key: "cases", label: t("cases"), values: days.map(([, n]) => n) }]}
            integer
            empty={empty}
          />
          <details>
            <summary>{t("numbers")}</summary>
            <Table caption={t("volumeByDay")} head={[t("day"), t("cases")]} rows={days} testid="table-volume-day" />
          </details>
        </Figure>

        <Figure id="turnaround-clinic" title={t("turnaroundByClinic")}>
          <BarChart
            id="chart-turnaround-clinic"
            title={t("turnaroundByClinic")}
            categories={clinicNames}
            series={[
              { key: "p50", label: "P50", values: clinics.map((c) => c.turnaround.p50) },
              { key: "p90", label: "P90", values: clinics.map((c) => c.turnaround.p90) },
            ]}
            empty={empty}
          />
          <Table
            caption={t("turnaroundByClinic")}
            head={[t("clinic"), t("signed"), t("p50"), t("p90")]}
            rows={clinics.map((c) => [c.institution_name, c.turnaround.count, minutes(c.turnaround.p50), minutes(c.turnaround.p90)])}
            testid="table-turnaround-clinic"
          />
        </Figure>

        <Figure id="turnaround-reader" title={t("turnaroundByReader")}>
          <BarChart
            id="chart-turnaround-reader"
            title={t("turnaroundByReader")}
            categories={readerNames}
            series={[
              { key: "p50", label: "P50", values: readers.map((r) => r.turnaround.p50) },
              { key: "p90", label: "P90", values: readers.map((r) => r.turnaround.p90) },
            ]}
            empty={empty}
          />
          <Table
            caption={t("turnaroundByReader")}
            head={[t("reader"), t("signed"), t("p50"), t("p90")]}
            rows={readers.map((r, i) => [readerNames[i], r.signed, minutes(r.turnaround.p50), minutes(r.turnaround.p90)])}
            testid="table-turnaround-reader"
          />
        </Figure>

        <Figure id="compliance-clinic" title={t("complianceByClinic")}>
          <BarChart
            id="chart-compliance-clinic"
            title={t("complianceByClinic")}
            categories={clinicNames}
            series={[{ key: "rate", label: t("rate"), values: clinics.map((c) => (c.compliance.rate === null ? null : c.compliance.rate * 100)) }]}
            max={100}
            format={pct}
            empty={empty}
          />
          <Table
            caption={t("complianceByClinic")}
            head={[t("clinic"), t("due"), t("met"), t("rate")]}
            rows={clinics.map((c) => [c.institution_name, c.compliance.due, c.compliance.met, percent(c.compliance.rate)])}
            testid="table-compliance-clinic"
          />
        </Figure>

        <Figure id="compliance-reader" title={t("complianceByReader")}>
          <BarChart
            id="chart-compliance-reader"
            title={t("complianceByReader")}
            categories={readerNames}
            series={[{ key: "rate", label: t("rate"), values: readers.map((r) => (r.compliance.rate === null ? null : r.compliance.rate * 100)) }]}
            max={100}
            format={pct}
            empty={empty}
          />
          <Table
            caption={t("complianceByPriority")}
            head={[t("priority"), t("due"), t("met"), t("pending"), t("rate")]}
            rows={PRIORITIES.map((p) => {
              const c = summary.compliance.find((x) => x.priority === p);
              return [word("priority", p), c?.due ?? 0, c?.met ?? 0, c?.pending ?? 0, percent(c?.rate ?? null)];
            })}
            testid="table-compliance-priority"
          />
        </Figure>

        <Figure id="critical-clinic" title={t("criticalByClinic")}>
          <BarChart
            id="chart-critical-time-clinic"
            title={`${t("criticalByClinic")} · ${t("ackMinutes")}`}
            caption={t("ackMinutes")}
            categories={clinicNames}
            series={[
              { key: "p50", label: "P50", values: clinics.map((c) => c.critical.p50) },
              { key: "p90", label: "P90", values: clinics.map((c) => c.critical.p90) },
            ]}
            empty={empty}
          />
          <BarChart
            id="chart-critical-rate-clinic"
            title={`${t("criticalByClinic")} · ${t("ackPercent")}`}
            caption={t("ackPercent")}
            categories={clinicNames}
            series={[{ key: "rate", label: t("ackPercent"), values: clinics.map((c) => (c.critical.rate === null ? null : c.critical.rate * 100)) }]}
            max={100}
            format={pct}
            empty={empty}
          />
          <Table
            caption={t("criticalByClinic")}
            head={[t("clinic"), t("flagged"), t("acknowledged"), t("ackPercent"), t("p50"), t("p90")]}
            rows={clinics.map((c) => [
              c.institution_name,
              c.critical.flagged,
              c.critical.acknowledged,
              percent(c.critical.rate),
              minutes(c.critical.p50),
              minutes(c.critical.p90),
            ])}
            testid="table-critical-clinic"
          />
        </Figure>

        <Figure id="critical-reader" title={t("criticalByReader")}>
          <BarChart
            id="chart-critical-time-reader"
            title={`${t("criticalByReader")} · ${t("ackMinutes")}`}
            caption={t("ackMinutes")}
            categories={readerNames}
            series={[
              { key: "p50", label: "P50", values: readers.map((r) => r.critical.p50) },
              { key: "p90", label: "P90", values: readers.map((r) => r.critical.p90) },
            ]}
            empty={empty}
          />
          <Table
            caption={t("criticalByReader")}
            head={[t("reader"), t("flagged"), t("acknowledged"), t("ackPercent"), t("p50"), t("p90")]}
            rows={readers.map((r, i) => [
              readerNames[i],
              r.critical.flagged,
              r.critical.acknowledged,
              percent(r.critical.rate),
              minutes(r.critical.p50),
              minutes(r.critical.p90),
            ])}
            testid="table-critical-reader"
          />
        </Figure>
      </div>
    </>
  );
}

function Figure(props: { id: string; title: string; children: ComponentChildren }) {
  return (
    <figure class="panel figure" data-figure={props.id} aria-labelledby={`${props.id}-caption`}>
      <figcaption id={`${props.id}-caption`}>{props.title}</figcaption>
      {props.children}
    </figure>
  );
}

function Table(props: { caption: string; head: string[]; rows: (string | number)[][]; testid: string }) {
  if (!props.rows.length) return null;
  return (
    <div class="table-scroll">
      <table class="numbers" data-testid={props.testid}>
        <caption class="visually-hidden">{props.caption}</caption>
        <thead>
          <tr>
            {props.head.map((h, i) => (
              <th scope="col" class={i ? "num" : ""}>
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {props.rows.map(([first, ...rest]) => (
            <tr>
              <th scope="row">{first}</th>
              {rest.map((cell) => (
                <td class="num">{cell}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
