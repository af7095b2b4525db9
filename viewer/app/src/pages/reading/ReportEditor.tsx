// The report beside the images: a template's structured fields, findings and impression,
// the critical-result flag, save (Ctrl+S) and sign (Ctrl+Enter, confirmed). A signed report
// is shown, never edited. With double reading the second reader sees the first report and
// says whether he agrees.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime, locale } from "../../i18n";
import type { CaseOut } from "../worklist/cases";

const t = defineMessages(
  {
    report: "诊断报告",
    template: "报告模板",
    findings: "检查所见",
    impression: "诊断意见",
    save: "保存草稿",
    saving: "正在保存…",
    saved: "已保存 {time}",
    unsaved: "有未保存的修改",
    sign: "签发报告",
    signing: "正在签发…",
    confirmTitle: "确认签发",
    confirmText: "签发后报告不可修改，只能追加补充说明。确定签发吗？",
    confirmCritical: "同时将危急值通知申请机构：{category}",
    confirm: "确认签发",
    cancel: "取消",
    critical: "危急值",
    criticalCategory: "危急值类别",
    criticalNote: "危急值说明",
    flagNow: "立即通知危急值",
    flagged: "已通知危急值：{category}（{time}）",
    signedBy: "已由 {user} 于 {time} 签发",
    readOnly: "未认领此病例，报告只读",
    none: "尚无报告",
    keys: "Ctrl+S 保存，Ctrl+Enter 签发",
    failed: "失败：{detail}",
    first: "第一次阅片报告",
    verdict: "是否同意第一次阅片",
    agree: "同意",
    disagree: "不同意",
    disagreeNote: "不同意的理由",
    choose: "请选择",
    needImpression: "签发前请填写诊断意见",
    pdf: "查看 PDF",
  },
  {
    report: "Report",
    template: "Template",
    findings: "Findings",
    impression: "Impression",
    save: "Save draft",
    saving: "Saving…",
    saved: "Saved {time}",
    unsaved: "Unsaved changes",
    sign: "Sign report",
    signing: "Signing…",
    confirmTitle: "Sign this report?",
    confirmText: "A signed report cannot be changed; corrections are addenda. Sign now?",
    confirmCritical: "The clinic is also told of a critical result: {category}",
    confirm: "Sign",
    cancel: "Cancel",
    critical: "Critical result",
    criticalCategory: "Category",
    criticalNote: "Note",
    flagNow: "Notify critical result now",
    flagged: "Critical result sent: {category} ({time})",
    signedBy: "Signed by {user} at {time}",
    readOnly: "You do not hold this case; the report is read-only",
    none: "No report yet",
    keys: "Ctrl+S save, Ctrl+Enter sign",
    failed: "Failed: {detail}",
    first: "First reading",
    verdict: "Do you agree with the first reading?",
    agree: "Agree",
    disagree: "Disagree",
    disagreeNote: "Why you disagree",
    choose: "Choose…",
    needImpression: "Write an impression before signing",
    pdf: "Open PDF",
  },
);

const CATEGORIES = {
  intracranial_hemorrhage: ["颅内出血", "Intracranial haemorrhage"],
  cerebral_herniation: ["脑疝", "Cerebral herniation"],
  tension_pneumothorax: ["张力性气胸", "Tension pneumothorax"],
  pulmonary_embolism: ["肺栓塞", "Pulmonary embolism"],
  aortic_dissection: ["主动脉夹层", "Aortic dissection"],
  visceral_perforation: ["空腔脏器穿孔", "Visceral perforation"],
  organ_rupture: ["实质脏器破裂出血", "Solid organ rupture"],
  ectopic_pregnancy: ["异位妊娠破裂", "Ruptured ectopic pregnancy"],
  acute_mi: ["急性心肌梗死", "Acute myocardial infarction"],
  malignant_arrhythmia: ["恶性心律失常", "Malignant arrhythmia"],
  severe_bradycardia: ["严重心动过缓", "Severe bradycardia"],
  other: ["其他", "Other"],
} as const;
type Category = keyof typeof CATEGORIES;
const categoryLabel = (c: string): string =>
  (CATEGORIES[c as Category] ?? [c, c])[locale.value === "en" ? 1 : 0];

interface Field {
  key: string;
  label: string;
  label_en: string;
  type: "text" | "choice" | "number";
  choices: string[];
  unit: string;
  min: number | null;
  max: number | null;
  default: unknown;
}

export interface Template {
  code: string;
  service: string;
  title: string;
  title_en: string;
  modalities: string[];
  fields: Field[];
  findings: string;
  impression: string;
}

interface Critical {
  id: number;
  category: string;
  note: string;
  status: string;
  flagged_at: string;
}

export interface Report {
  id: number;
  reading: number;
  status: "draft" | "preliminary" | "signed";
  template_code: string;
  title: string;
  title_en: string;
  fields: Field[];
  values: Record<string, unknown>;
  findings: string;
  impression: string;
  author: string | null;
  updated_at: string;
  signed_by: string | null;
  signed_at: string | null;
  agrees: boolean | null;
  critical_results: Critical[];
}

type Values = Record<string, unknown>;

function defaultsOf(template: Template): Values {
  const values: Values = {};
  for (const f of template.fields) if (f.default !== null && f.default !== undefined) values[f.key] = f.default;
  return values;
}

/** The template a new report starts from: the case's service, preferring its modality. */
export function defaultTemplate(templates: Template[], c: CaseOut): Template | undefined {
  const ofService = templates.filter((x) => x.service === c.service);
  return (
    ofService.find((x) => x.modalities.some((m) => c.modalities.includes(m))) ??
    templates.find((x) => x.modalities.some((m) => c.modalities.includes(m))) ??
    ofService[0] ??
    templates.find((x) => x.code === "general") ??
    templates[0]
  );
}

const fieldLabel = (f: Field): string => (locale.value === "en" ? f.label_en : f.label) || f.key;
const errorText = (e: unknown): string => t("failed", { detail: e instanceof ApiError ? e.detail : String(e) });

function SignedReport({ report }: { report: Report }) {
  return (
    <div class="signed-report" data-testid={`report-reading-${report.reading}`}>
      <h3>{locale.value === "en" ? report.title_en : report.title}</h3>
      <dl class="report-values">
        {report.fields.map((f) =>
          report.values[f.key] === undefined || report.values[f.key] === null ? null : (
            <>
              <dt>{fieldLabel(f)}</dt>
              <dd>
                {String(report.values[f.key])} {f.unit}
              </dd>
            </>
          ),
        )}
      </dl>
      <h4>{t("findings")}</h4>
      <p class="report-text">{report.findings}</p>
      <h4>{t("impression")}</h4>
      <p class="report-text">{report.impression}</p>
      {report.signed_at && (
        <p class="muted">
          {t("signedBy", { user: report.signed_by ?? "", time: formatDateTime(report.signed_at) })}
        </p>
      )}
    </div>
  );
}

export interface ReportEditorProps {
  item: CaseOut;
  leaseToken: number | null; // null: not held by this reader, read-only
  onDirty: (dirty: boolean) => void;
  onSigned: () => void;
}

export function ReportEditor({ item, leaseToken, onDirty, onSigned }: ReportEditorProps) {
  const [templates, setTemplates] = useState<Template[]>([]);
  const [reports, setReports] = useState<Report[] | null>(null);
  const [code, setCode] = useState("");
  const [values, setValues] = useState<Values>({});
  const [touched, setTouched] = useState<Set<string>>(new Set());
  const [findings, setFindings] = useState("");
  const [impression, setImpression] = useState("");
  const [dirty, setDirtyState] = useState(false);
  const [busy, setBusy] = useState<"" | "save" | "sign" | "flag">("");
  const [savedAt, setSavedAt] = useState("");
  const [message, setMessage] = useState("");
  const [critical, setCritical] = useState(false);
  const [category, setCategory] = useState<Category | "">("");
  const [criticalNote, setCriticalNote] = useState("");
  const [agrees, setAgrees] = useState<"" | "yes" | "no">("");
  const [opinionNote, setOpinionNote] = useState("");
  const [confirming, setConfirming] = useState(false);
  // Flagged before any report exists: the reports' lists cannot show them yet.
  const [sent, setSent] = useState<Critical[]>([]);
  const root = useRef<HTMLElement>(null);

  const caseOpen = item.status !== "signed" && item.status !== "cancelled";
  const current = reports && reports.length ? reports[reports.length - 1] : undefined;
  // Double reading: the first report is signed and the case still open, or a second is begun.
  const first = caseOpen ? reports?.find((r) => r.reading === 1 && r.status === "signed") : undefined;
  const secondReading = first !== undefined && caseOpen;
  const editing = secondReading ? (current && current.reading > 1 ? current : undefined) : current;
  const editable = caseOpen && leaseToken !== null && editing?.status !== "signed";
  const template = templates.find((x) => x.code === code);
  const flagged = [...(reports?.flatMap((r) => r.critical_results) ?? []), ...sent];
  const uniqueFlagged = [...new Map(flagged.map((c) => [c.id, c])).values()];

  function setDirty(value: boolean): void {
    setDirtyState(value);
    onDirty(value);
  }

  function show(report: Report | undefined, list: Template[]): void {
    if (report) {
      setCode(report.template_code);
      setValues(report.values);
      setFindings(report.findings);
      setImpression(report.impression);
    } else {
      const start = defaultTemplate(list, item);
      setCode(start?.code ?? "");
      setValues(start ? defaultsOf(start) : {});
      setFindings(start?.findings ?? "");
      setImpression(start?.impression ?? "");
    }
    setTouched(new Set());
    setDirty(false);
  }

  async function loadReports(list: Template[]): Promise<void> {
    const found = await api<Report[]>(`/api/cases/${item.id}/reports`);
    found.sort((a, b) => a.reading - b.reading);
    setReports(found);
    const last = found[found.length - 1];
    const awaitingSecond = caseOpen && last?.status === "signed" && last.reading === 1;
    show(awaitingSecond ? undefined : last, list);
  }

  useEffect(() => {
    let live = true;
    void (async () => {
      try {
        const list = await api<Template[]>("/api/report-templates");
        if (!live) return;
        setTemplates(list);
        await loadReports(list);
      } catch (e) {
        if (live) setMessage(errorText(e));
      }
    })();
    return () => {
      live = false;
    };
  }, [item.id]);

  function chooseTemplate(next: string): void {
    const to = templates.find((x) => x.code === next);
    if (!to) return;
    const old = template;
    // Keep what still fits; text the reader has not changed follows the new template.
    const keys = new Set(to.fields.map((f) => f.key));
    const kept = Object.fromEntries(Object.entries(values).filter(([k]) => keys.has(k) && touched.has(k)));
    setValues({ ...defaultsOf(to), ...kept });
    setTouched(new Set(Object.keys(kept)));
    if (!old || findings === old.findings || !findings.trim()) setFindings(to.findings);
    if (!old || impression === old.impression || !impression.trim()) setImpression(to.impression);
    setCode(next);
    setDirty(true);
  }

  function setValue(key: string, value: unknown): void {
    setValues({ ...values, [key]: value });
    setTouched(new Set(touched).add(key));
    setDirty(true);
  }

  async function save(): Promise<boolean> {
    if (!editable || busy) return false;
    setBusy("save");
    setMessage("");
    try {
      const changed = Object.fromEntries([...touched].map((k) => [k, values[k] ?? null]));
      const saved = await api<Report>(`/api/cases/${item.id}/report`, {
        method: "PUT",
        body: { template: code, values: changed, findings, impression, lease_token: leaseToken },
      });
      const list = (reports ?? []).filter((r) => r.reading !== saved.reading).concat(saved);
      list.sort((a, b) => a.reading - b.reading);
      setReports(list);
      show(saved, templates);
      setSavedAt(formatDateTime(saved.updated_at));
      return true;
    } catch (e) {
      setMessage(errorText(e));
      return false;
    } finally {
      setBusy("");
    }
  }

  async function flagNow(): Promise<void> {
    if (!category || busy) return;
    setBusy("flag");
    setMessage("");
    try {
      const result = await api<Critical>(`/api/cases/${item.id}/critical`, {
        body: { category, note: criticalNote },
      });
      setSent([...sent, result]);
      setCritical(false);
      setCategory("");
      setCriticalNote("");
    } catch (e) {
      setMessage(errorText(e));
    } finally {
      setBusy("");
    }
  }

  function askToSign(): void {
    if (!editable || busy) return;
    if (!impression.trim()) {
      setMessage(t("needImpression"));
      return;
    }
    setConfirming(true);
  }

  async function sign(): Promise<void> {
    setConfirming(false);
    if (dirty || !editing) {
      if (!(await save())) return;
    }
    setBusy("sign");
    setMessage("");
    try {
      const body: Record<string, unknown> = { lease_token: leaseToken };
      if (critical && category) body.critical = { category, note: criticalNote };
      if (secondReading) {
        body.agrees = agrees === "yes";
        body.note = opinionNote;
      }
      await api(`/api/cases/${item.id}/report/sign`, { body });
      setCritical(false);
      setDirty(false);
      onSigned();
    } catch (e) {
      setMessage(errorText(e));
    } finally {
      setBusy("");
    }
  }

  // Ctrl+S and Ctrl+Enter wherever the focus is on the page (the viewer too).
  useEffect(() => {
    function onKey(event: KeyboardEvent): void {
      if (!(event.ctrlKey || event.metaKey) || confirming) return;
      if (event.key === "s" || event.key === "S") {
        event.preventDefault();
        void save();
      } else if (event.key === "Enter") {
        event.preventDefault();
        askToSign();
      }
    }
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  });

  if (reports === null) {
    return (
      <section class="report-editor panel" aria-busy="true" ref={root}>
        <h2>{t("report")}</h2>
        {message && <p class="error" role="alert">{message}</p>}
      </section>
    );
  }

  const signedView = !caseOpen && current;
  return (
    <section class="report-editor panel" ref={root} data-testid="report-editor">
      <div class="report-head">
        <h2>{t("report")}</h2>
        {editable && <span class="muted keys">{t("keys")}</span>}
      </div>

      {first && secondReading && (
        <details class="first-reading" open>
          <summary>{t("first")}</summary>
          <SignedReport report={first} />
        </details>
      )}

      {signedView ? (
        <>
          {reports.map((r) => (
            <SignedReport report={r} />
          ))}
          <a href={`/api/cases/${item.id}/report.pdf`} target="_blank" rel="noopener">
            {t("pdf")}
          </a>
        </>
      ) : (
        <form
          class="report-form"
          onSubmit={(e) => {
            e.preventDefault();
            void save();
          }}
        >
          {!editable && <p class="muted">{caseOpen ? t("readOnly") : t("none")}</p>}
          <label>
            {t("template")}
            <select
              value={code}
              disabled={!editable}
              onChange={(e) => chooseTemplate(e.currentTarget.value)}
            >
              {templates.map((x) => (
                <option value={x.code}>{locale.value === "en" ? x.title_en : x.title}</option>
              ))}
            </select>
          </label>

          {template && template.fields.length > 0 && (
            <fieldset class="fields" disabled={!editable}>
              {template.fields.map((f) => (
                <label class={`field field-${f.type}`}>
                  <span>
                    {fieldLabel(f)}
                    {f.unit && <span class="muted"> ({f.unit})</span>}
                  </span>
                  {f.type === "choice" ? (
                    <select
                      name={f.key}
                      value={values[f.key] === undefined || values[f.key] === null ? "" : String(values[f.key])}
                      onChange={(e) => setValue(f.key, e.currentTarget.value || null)}
                    >
                      <option value="">—</option>
                      {f.choices.map((choice) => (
                        <option value={choice}>{choice}</option>
                      ))}
                    </select>
                  ) : f.type === "number" ? (
                    <input
                      name={f.key}
                      type="number"
                      step="any"
                      min={f.min ?? undefined}
                      max={f.max ?? undefined}
                      value={values[f.key] === undefined || values[f.key] === null ? "" : String(values[f.key])}
                      onInput={(e) => {
                        const raw = e.currentTarget.value;
                        const n = Number(raw);
                        setValue(f.key, raw === "" || !Number.isFinite(n) ? null : n);
                      }}
                    />
                  ) : (
                    <input
                      name={f.key}
                      type="text"
                      value={values[f.key] === undefined || values[f.key] === null ? "" : String(values[f.key])}
                      onInput={(e) => setValue(f.key, e.currentTarget.value)}
                    />
                  )}
                </label>
              ))}
            </fieldset>
          )}

          <label>
            {t("findings")}
            <textarea
              name="findings"
              rows={7}
              value={findings}
              readOnly={!editable}
              onInput={(e) => {
                setFindings(e.currentTarget.value);
                setDirty(true);
              }}
            />
          </label>
          <label>
            {t("impression")}
            <textarea
              name="impression"
              rows={4}
              value={impression}
              readOnly={!editable}
              onInput={(e) => {
                setImpression(e.currentTarget.value);
                setDirty(true);
              }}
            />
          </label>

          {secondReading && editable && (
            <fieldset class="verdict">
              <legend>{t("verdict")}</legend>
              <label class="inline">
                <input
                  type="radio"
                  name="agrees"
                  checked={agrees === "yes"}
                  onChange={() => setAgrees("yes")}
                />
                {t("agree")}
              </label>
              <label class="inline">
                <input
                  type="radio"
                  name="agrees"
                  checked={agrees === "no"}
                  onChange={() => setAgrees("no")}
                />
                {t("disagree")}
              </label>
              {agrees === "no" && (
                <label>
                  {t("disagreeNote")}
                  <textarea rows={2} value={opinionNote} onInput={(e) => setOpinionNote(e.currentTarget.value)} />
                </label>
              )}
            </fieldset>
          )}

          <fieldset class={`critical ${critical ? "on" : ""}`} disabled={!editable}>
            <label class="inline">
              <input
                type="checkbox"
                checked={critical}
                onChange={(e) => setCritical(e.currentTarget.checked)}
              />
              <strong>{t("critical")}</strong>
            </label>
            {critical && (
              <div class="critical-details">
                <label>
                  {t("criticalCategory")}
                  <select value={category} onChange={(e) => setCategory(e.currentTarget.value as Category)}>
                    <option value="">{t("choose")}</option>
                    {(Object.keys(CATEGORIES) as Category[]).map((c) => (
                      <option value={c}>{categoryLabel(c)}</option>
                    ))}
                  </select>
                </label>
                <label>
                  {t("criticalNote")}
                  <input type="text" value={criticalNote} onInput={(e) => setCriticalNote(e.currentTarget.value)} />
                </label>
                <button type="button" class="danger" disabled={!category || busy !== ""} onClick={() => void flagNow()}>
                  {t("flagNow")}
                </button>
              </div>
            )}
          </fieldset>
          {uniqueFlagged.length > 0 && (
            <ul class="flagged" data-testid="critical-flagged">
              {uniqueFlagged.map((c) => (
                <li>
                  {t("flagged", { category: categoryLabel(c.category), time: formatDateTime(c.flagged_at) })}
                  {c.note && <span class="muted"> — {c.note}</span>}
                </li>
              ))}
            </ul>
          )}

          <div class="report-actions">
            <button type="submit" disabled={!editable || busy !== ""}>
              {busy === "save" ? t("saving") : t("save")}
            </button>
            <button
              type="button"
              class="primary"
              disabled={!editable || busy !== "" || (secondReading && (agrees === "" || (agrees === "no" && !opinionNote.trim())))}
              onClick={askToSign}
            >
              {busy === "sign" ? t("signing") : t("sign")}
            </button>
            <span class="muted save-state" role="status">
              {dirty ? t("unsaved") : savedAt ? t("saved", { time: savedAt }) : ""}
            </span>
          </div>
        </form>
      )}
      {message && (
        <p class="error" role="alert">
          {message}
        </p>
      )}
      {confirming && (
        <ConfirmSign
          critical={critical && category ? categoryLabel(category) : ""}
          onConfirm={() => void sign()}
          onCancel={() => setConfirming(false)}
        />
      )}
    </section>
  );
}

function ConfirmSign(props: { critical: string; onConfirm: () => void; onCancel: () => void }) {
  const confirmRef = useRef<HTMLButtonElement>(null);
  useEffect(() => confirmRef.current?.focus(), []);
  return (
    <div
      class="modal-backdrop"
      onKeyDown={(e) => {
        if (e.key === "Escape") {
          e.preventDefault();
          props.onCancel();
        }
      }}
    >
      <div class="modal panel" role="dialog" aria-modal="true" aria-labelledby="confirm-sign-title">
        <h3 id="confirm-sign-title">{t("confirmTitle")}</h3>
        <p>{t("confirmText")}</p>
        {props.critical && <p class="error">{t("confirmCritical", { category: props.critical })}</p>}
        <div class="report-actions">
          <button type="button" onClick={props.onCancel}>
            {t("cancel")}
          </button>
          <button type="button" class="primary" ref={confirmRef} onClick={props.onConfirm}>
            {t("confirm")}
          </button>
        </div>
      </div>
    </div>
  );
}
