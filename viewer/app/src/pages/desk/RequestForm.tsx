// The reading request for an uploaded study: clinical history, the question for the reader,
// priority and service (POST /api/cases).
import { signal } from "@preact/signals";
import { useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages } from "../../i18n";
import { caseChanges } from "./live";
import { type CaseOut, PRIORITIES, type Priority, SERVICES, type Service, word } from "./model";

const t = defineMessages(
  {
    title: "申请远程诊断",
    history: "病史摘要",
    historyHint: "主诉、现病史、相关检查结果",
    question: "申请目的 / 需要回答的问题",
    priority: "紧急程度",
    service: "诊断类别",
    submit: "提交申请",
    busy: "正在提交…",
    sent: "已提交申请：病例 #{id}",
    open: "查看病例",
    failed: "提交失败：{detail}",
  },
  {
    title: "Request a reading",
    history: "Clinical history",
    historyHint: "Complaint, history, relevant results",
    question: "Question for the reader",
    priority: "Priority",
    service: "Service",
    submit: "Submit request",
    busy: "Submitting…",
    sent: "Request submitted: case #{id}",
    open: "Open the case",
    failed: "Could not submit: {detail}",
  },
);

/** Study Instance UID → case number, for the page's lifetime (the form is not shown twice). */
const requested = signal<Record<string, number>>({});

function serviceFor(modalities: string): Service {
  if (/\bECG\b/.test(modalities)) return "ecg";
  if (/\bUS\b/.test(modalities)) return "ultrasound";
  return "imaging";
}

export function RequestForm({ studyUid, modalities }: { studyUid: string; modalities: string }) {
  const [history, setHistory] = useState("");
  const [question, setQuestion] = useState("");
  const [priority, setPriority] = useState<Priority>("routine");
  const [service, setService] = useState<Service>(serviceFor(modalities));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const caseId = requested.value[studyUid];

  if (caseId) {
    return (
      <p class="request-done" role="status" data-testid="request-done">
        {t("sent", { id: caseId })} <a href={`/app/cases/${caseId}`}>{t("open")}</a>
      </p>
    );
  }

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      const created = await api<CaseOut>("/api/cases", {
        body: {
          study_instance_uid: studyUid,
          clinical_history: history.trim(),
          question: question.trim(),
          priority,
          service,
        },
      });
      requested.value = { ...requested.value, [studyUid]: created.id };
      caseChanges.value++;
    } catch (e) {
      setError(t("failed", { detail: e instanceof ApiError ? e.detail : String(e) }));
    } finally {
      setBusy(false);
    }
  }

  const id = (name: string) => `${name}-${studyUid}`;
  return (
    <form class="request-form" onSubmit={submit} aria-label={t("title")}>
      <h3>{t("title")}</h3>
      <label for={id("history")}>{t("history")}</label>
      <textarea
        id={id("history")}
        rows={3}
        maxLength={10000}
        placeholder={t("historyHint")}
        value={history}
        onInput={(e) => setHistory(e.currentTarget.value)}
      />
      <label for={id("question")}>{t("question")}</label>
      <textarea
        id={id("question")}
        rows={2}
        maxLength={2000}
        value={question}
        onInput={(e) => setQuestion(e.currentTarget.value)}
      />
      <div class="request-row">
        <fieldset class="priority-choice">
          <legend>{t("priority")}</legend>
          {PRIORITIES.map((p) => (
            <label class={`choice priority-${p}`}>
              <input
                type="radio"
                name={id("priority")}
                value={p}
                checked={priority === p}
                onChange={() => setPriority(p)}
              />
              {word("priority", p)}
            </label>
          ))}
        </fieldset>
        <label class="service-choice">
          {t("service")}
          <select value={service} onChange={(e) => setService(e.currentTarget.value as Service)}>
            {SERVICES.map((s) => (
              <option value={s}>{word("service", s)}</option>
            ))}
          </select>
        </label>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <button type="submit" class="primary" disabled={busy}>
        {busy ? t("busy") : t("submit")}
      </button>
    </form>
  );
}
