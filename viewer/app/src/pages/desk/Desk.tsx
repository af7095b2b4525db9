// The clinic desk (technician): critical results on top, uploading a study and asking for
// its reading, and the clinic's own requests with their live status, newest first.
import { useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime, formatDicomDate } from "../../i18n";
import { CriticalBanner } from "./Critical";
import { caseChanges, useLive, useRefetch } from "./live";
import { type CaseList, type CaseOut, personName, word } from "./model";
import { UploadPanel } from "./UploadPanel";
import "./desk.css";

const t = defineMessages(
  {
    title: "检查申请",
    requests: "本院的申请",
    empty: "还没有申请",
    created: "申请时间",
    patient: "患者",
    study: "检查",
    priority: "紧急程度",
    status: "状态",
    report: "报告",
    open: "打开",
    reportReady: "查看报告",
    more: "加载更多",
    failed: "无法加载申请列表：{detail}",
    overdue: "已超时",
    critical: "危急值待确认",
    total: "共 {n} 条",
  },
  {
    title: "Clinic desk",
    requests: "Our requests",
    empty: "No requests yet",
    created: "Requested",
    patient: "Patient",
    study: "Study",
    priority: "Priority",
    status: "Status",
    report: "Report",
    open: "Open",
    reportReady: "View report",
    more: "Load more",
    failed: "Could not load the requests: {detail}",
    overdue: "Overdue",
    critical: "Critical: acknowledge",
    total: "{n} in all",
  },
);

const PAGE = 50;

export function StatusBadge({ kase }: { kase: CaseOut }) {
  return (
    <span class={`badge status-${kase.status}`} data-testid="case-status">
      {word("status", kase.status)}
    </span>
  );
}

export function PriorityBadge({ priority }: { priority: string }) {
  return <span class={`badge priority-${priority}`}>{word("priority", priority)}</span>;
}

function CaseRows({ cases, critical }: { cases: CaseOut[]; critical: Set<number> }) {
  return (
    <tbody>
      {cases.map((c) => (
        <tr key={c.id} data-testid="case-row" data-case={c.id} class={critical.has(c.id) ? "has-critical" : undefined}>
          <td class="nowrap">{formatDateTime(c.created_at)}</td>
          <td>
            <span class="patient-name">{personName(c.patient_name)}</span>
            <span class="muted small">{c.patient_id}</span>
          </td>
          <td>
            <span>
              {formatDicomDate(c.study_date)} {c.modalities.join(", ")}
            </span>
            <span class="muted small">{c.study_description}</span>
          </td>
          <td>
            <PriorityBadge priority={c.priority} />
          </td>
          <td>
            <StatusBadge kase={c} />
            {c.overdue && <span class="badge overdue">{t("overdue")}</span>}
            {critical.has(c.id) && <span class="badge critical">{t("critical")}</span>}
          </td>
          <td>
            <a href={`/app/cases/${c.id}`}>{c.status === "signed" || c.status === "reported" ? t("reportReady") : t("open")}</a>
          </td>
        </tr>
      ))}
    </tbody>
  );
}

export function Desk() {
  useLive();
  const [cases, setCases] = useState<CaseOut[]>([]);
  const [total, setTotal] = useState(0);
  const [limit, setLimit] = useState(PAGE);
  const [error, setError] = useState("");
  const [loaded, setLoaded] = useState(false);
  const [critical, setCritical] = useState<Set<number>>(new Set());

  useRefetch(
    caseChanges,
    () => {
      api<CaseList>(`/api/cases?limit=${limit}`)
        .then((page) => {
          setCases(page.items);
          setTotal(page.total);
          setError("");
          setLoaded(true);
        })
        .catch((e) => setError(t("failed", { detail: e instanceof ApiError ? e.detail : String(e) })));
    },
    [limit],
  );

  return (
    <div class="desk">
      <h1 class="visually-hidden">{t("title")}</h1>
      <CriticalBanner cases={cases} onOpen={setCritical} />
      <UploadPanel />
      <section class="requests panel" aria-labelledby="requests-title">
        <h2 id="requests-title">
          {t("requests")} <span class="muted small">{loaded ? t("total", { n: total }) : ""}</span>
        </h2>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        {loaded && !cases.length ? (
          <p class="empty">{t("empty")}</p>
        ) : (
          <div class="table-scroll">
            <table class="case-table">
              <thead>
                <tr>
                  <th>{t("created")}</th>
                  <th>{t("patient")}</th>
                  <th>{t("study")}</th>
                  <th>{t("priority")}</th>
                  <th>{t("status")}</th>
                  <th>{t("report")}</th>
                </tr>
              </thead>
              <CaseRows cases={cases} critical={critical} />
            </table>
          </div>
        )}
        {cases.length < total && (
          <button type="button" onClick={() => setLimit(limit + PAGE)}>
            {t("more")}
          </button>
        )}
      </section>
    </div>
  );
}
