// One of the clinic's cases: the request, its status and timeline, the report once issued
// (as text on the page, and the signed PDF), and its critical result until acknowledged.
import { useState } from "preact/hooks";
import { useRoute } from "preact-iso";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime, formatDicomDate, locale } from "../../i18n";
import { CriticalBanner } from "./Critical";
import { PriorityBadge, StatusBadge } from "./Desk";
import { caseChanges, criticalChanges, useLive, useRefetch } from "./live";
import { type CaseEventOut, type CaseOut, type ReportOut, personName, word } from "./model";
import "./desk.css";

const t = defineMessages(
  {
    back: "← 返回检查申请",
    caseTitle: "病例 #{id}",
    patient: "患者",
    patientId: "患者编号",
    sex: "性别",
    studyDate: "检查日期",
    modality: "检查类型",
    description: "检查描述",
    service: "诊断类别",
    priority: "紧急程度",
    status: "状态",
    requested: "申请时间",
    due: "要求完成时间",
    reader: "阅片医生",
    history: "病史摘要",
    question: "申请目的",
    images: "查看影像",
    report: "诊断报告",
    noReport: "报告尚未发出",
    preliminary: "初步报告（尚未签发）",
    findings: "检查所见",
    impression: "诊断意见",
    signedBy: "签发：{name} · {at}",
    author: "报告医生：{name}",
    pdf: "下载 PDF 报告",
    addenda: "补充报告",
    criticalDone: "危急值 {category}：已于 {at} 确认（{method}）",
    timeline: "处理记录",
    notFound: "没有这个病例，或无权查看",
    failed: "无法加载：{detail}",
    yes: "是",
    no: "否",
    "event.created": "创建病例",
    "event.requested": "提交申请",
    "event.updated": "修改申请",
    "event.triaged": "自动分诊提升紧急程度",
    "event.routed": "分配到阅片组",
    "event.claimed": "医生开始阅片",
    "event.released": "医生释放病例",
    "event.lease_expired": "阅片超时释放",
    "event.assigned": "指派医生",
    "event.warned": "临近时限提醒",
    "event.overdue": "已超时",
    "event.escalated": "上转至上级阅片组",
    "event.escalation_exhausted": "无上级可接收",
    "event.completed": "报告已发出",
    "event.cancelled": "已取消",
    "event.report.created": "开始书写报告",
    "event.report.saved": "保存报告草稿",
    "event.report.preliminary": "发出初步报告",
    "event.report.signed": "报告已签发",
    "event.report.second_reading": "需要二次审核",
    "event.report.disagreed": "审核意见不一致",
    "event.report.addendum": "补充报告",
    "event.critical.flagged": "标记危急值",
    "event.critical.notified": "已通知危急值",
    "event.critical.acknowledged": "危急值已确认",
    "event.critical.escalated": "危急值未确认，已上报",
  },
  {
    back: "← Back to the desk",
    caseTitle: "Case #{id}",
    patient: "Patient",
    patientId: "Patient ID",
    sex: "Sex",
    studyDate: "Study date",
    modality: "Modality",
    description: "Description",
    service: "Service",
    priority: "Priority",
    status: "Status",
    requested: "Requested",
    due: "Due",
    reader: "Reader",
    history: "Clinical history",
    question: "Question",
    images: "View images",
    report: "Report",
    noReport: "No report yet",
    preliminary: "Preliminary report (not signed yet)",
    findings: "Findings",
    impression: "Impression",
    signedBy: "Signed by {name} · {at}",
    author: "Reported by {name}",
    pdf: "Download the PDF report",
    addenda: "Addenda",
    criticalDone: "Critical result {category}: acknowledged {at} ({method})",
    timeline: "Timeline",
    notFound: "No such case, or not yours to see",
    failed: "Could not load: {detail}",
    yes: "Yes",
    no: "No",
    "event.created": "Case created",
    "event.requested": "Reading requested",
    "event.updated": "Request changed",
    "event.triaged": "Priority raised by triage",
    "event.routed": "Routed to a reading group",
    "event.claimed": "Reader started",
    "event.released": "Reader released the case",
    "event.lease_expired": "Reader's claim expired",
    "event.assigned": "Assigned",
    "event.warned": "Deadline near",
    "event.overdue": "Overdue",
    "event.escalated": "Escalated to a higher group",
    "event.escalation_exhausted": "Nobody higher could take it",
    "event.completed": "Report issued",
    "event.cancelled": "Cancelled",
    "event.report.created": "Report started",
    "event.report.saved": "Report draft saved",
    "event.report.preliminary": "Preliminary report issued",
    "event.report.signed": "Report signed",
    "event.report.second_reading": "Second reading required",
    "event.report.disagreed": "Second reader disagreed",
    "event.report.addendum": "Addendum",
    "event.critical.flagged": "Critical result flagged",
    "event.critical.notified": "Critical result notified",
    "event.critical.acknowledged": "Critical result acknowledged",
    "event.critical.escalated": "Critical result escalated",
  },
);

type Key = Parameters<typeof t>[0];

function eventLabel(kind: string): string {
  const key = `event.${kind}` as Key;
  const text = t(key);
  return text === key ? kind : text;
}

function fieldValue(value: unknown, unit: string): string {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "boolean") return value ? t("yes") : t("no");
  if (Array.isArray(value)) return value.join(", ");
  return unit ? `${String(value)} ${unit}` : String(value);
}

function Facts({ kase }: { kase: CaseOut }) {
  const rows: [string, string | preact.JSX.Element][] = [
    [t("patient"), personName(kase.patient_name)],
    [t("patientId"), kase.patient_id],
    [t("sex"), kase.patient_sex],
    [t("studyDate"), formatDicomDate(kase.study_date)],
    [t("modality"), kase.modalities.join(", ")],
    [t("description"), kase.study_description],
    [t("service"), word("service", kase.service)],
    [t("priority"), <PriorityBadge priority={kase.priority} />],
    [t("status"), <StatusBadge kase={kase} />],
    [t("requested"), formatDateTime(kase.created_at)],
    [t("due"), formatDateTime(kase.due_at)],
    [t("reader"), kase.claim_holder ?? ""],
  ];
  return (
    <dl class="case-facts">
      {rows
        .filter(([, v]) => v !== "")
        .map(([label, value]) => (
          <div>
            <dt>{label}</dt>
            <dd>{value}</dd>
          </div>
        ))}
    </dl>
  );
}

function Report({ report, caseId }: { report: ReportOut; caseId: number }) {
  const en = locale.value === "en";
  const signed = report.status === "signed";
  return (
    <article class="report" data-testid="report">
      <h3>{(en && report.title_en) || report.title}</h3>
      {!signed && <p class="report-preliminary">{t("preliminary")}</p>}
      {report.fields.length > 0 && (
        <dl class="report-fields">
          {report.fields.map((f) => (
            <div>
              <dt>{(en && f.label_en) || f.label}</dt>
              <dd>{fieldValue(report.values[f.key], f.unit)}</dd>
            </div>
          ))}
        </dl>
      )}
      <h4>{t("findings")}</h4>
      <p class="report-text" data-testid="report-findings">
        {report.findings}
      </p>
      <h4>{t("impression")}</h4>
      <p class="report-text report-impression" data-testid="report-impression">
        {report.impression}
      </p>
      {report.addenda.length > 0 && (
        <>
          <h4>{t("addenda")}</h4>
          {report.addenda.map((a) => (
            <div class="addendum">
              <p class="report-text">{a.text}</p>
              <p class="muted small">{t("signedBy", { name: a.signed_by ?? "", at: formatDateTime(a.signed_at) })}</p>
            </div>
          ))}
        </>
      )}
      {report.critical_results
        .filter((c) => c.status === "acknowledged")
        .map((c) => (
          <p class="critical-done">
            {t("criticalDone", {
              category: word("critical", c.category),
              at: formatDateTime(c.acknowledged_at),
              method: word("ack", c.acknowledge_method ?? ""),
            })}
          </p>
        ))}
      <p class="muted small">
        {report.author && t("author", { name: report.author })}
        {signed && report.signed_by && <> · {t("signedBy", { name: report.signed_by, at: formatDateTime(report.signed_at) })}</>}
      </p>
      {signed && (
        <a class="pdf-link" href={`/api/cases/${caseId}/report.pdf`} target="_blank" rel="noopener">
          {t("pdf")}
        </a>
      )}
    </article>
  );
}

export function CaseView() {
  useLive();
  const id = Number(useRoute().params.caseId);
  const [kase, setKase] = useState<CaseOut | null>(null);
  const [events, setEvents] = useState<CaseEventOut[]>([]);
  const [report, setReport] = useState<ReportOut | null>(null);
  const [error, setError] = useState("");

  function load() {
    if (!Number.isInteger(id)) {
      setError(t("notFound"));
      return;
    }
    Promise.all([
      api<CaseOut>(`/api/cases/${id}`),
      api<CaseEventOut[]>(`/api/cases/${id}/events`),
      // 404 until a report is issued to the clinic.
      api<ReportOut>(`/api/cases/${id}/report`).catch((e) => {
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }),
    ])
      .then(([c, ev, r]) => {
        setKase(c);
        setEvents(ev);
        setReport(r);
        setError("");
      })
      .catch((e) => {
        const notFound = e instanceof ApiError && (e.status === 404 || e.status === 403);
        setError(notFound ? t("notFound") : t("failed", { detail: e instanceof ApiError ? e.detail : String(e) }));
      });
  }
  useRefetch(caseChanges, load, [id]);
  // An acknowledgement is a change too: the report shows it, the timeline records it.
  useRefetch(criticalChanges, load, [id]);

  return (
    <div class="case-view">
      <p>
        <a href="/app/desk">{t("back")}</a>
      </p>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {kase && (
        <>
          <CriticalBanner caseId={id} cases={[kase]} />
          <div class="case-grid">
            <section class="panel case-request">
              <h1>{t("caseTitle", { id: kase.id })}</h1>
              <Facts kase={kase} />
              {kase.clinical_history && (
                <>
                  <h4>{t("history")}</h4>
                  <p class="report-text">{kase.clinical_history}</p>
                </>
              )}
              {kase.question && (
                <>
                  <h4>{t("question")}</h4>
                  <p class="report-text">{kase.question}</p>
                </>
              )}
              <a href={`/app/studies/${encodeURIComponent(kase.study_instance_uid)}`}>{t("images")}</a>
            </section>
            <section class="panel case-report" aria-label={t("report")}>
              <h2>{t("report")}</h2>
              {report ? <Report report={report} caseId={kase.id} /> : <p class="muted">{t("noReport")}</p>}
            </section>
            <section class="panel case-timeline">
              <h2>{t("timeline")}</h2>
              <ol class="timeline">
                {events.map((e) => (
                  <li key={e.id}>
                    <time>{formatDateTime(e.at)}</time>
                    <span class="timeline-kind">{eventLabel(e.kind)}</span>
                    <span class="muted small">{e.actor}</span>
                  </li>
                ))}
              </ol>
            </section>
          </div>
        </>
      )}
    </div>
  );
}
