// Critical results (危急值) of the clinic's cases: a red banner that stays at the top of the
// desk and of the case until someone at the clinic acknowledges it.
import { useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime } from "../../i18n";
import { criticalChanges, useRefetch } from "./live";
import { type CaseOut, type CriticalOut, personName, word } from "./model";

const t = defineMessages(
  {
    title: "危急值",
    caseLink: "病例 #{id}",
    flagged: "上报时间 {at}",
    acknowledge: "确认收到",
    method: "确认方式",
    note: "回读记录（谁在何时听到了什么）",
    confirm: "确认",
    cancel: "取消",
    failed: "确认失败：{detail}",
    count: "{n} 条危急值待确认",
  },
  {
    title: "Critical result",
    caseLink: "Case #{id}",
    flagged: "flagged {at}",
    acknowledge: "Acknowledge",
    method: "How it was received",
    note: "Readback (who heard what, when)",
    confirm: "Confirm",
    cancel: "Cancel",
    failed: "Could not acknowledge: {detail}",
    count: "{n} critical results to acknowledge",
  },
);

const METHODS = ["system", "phone", "in_person"] as const;

/**
 * Open critical results; only those of `caseId` when given. `cases` names the patients
 * (the desk's list); a result of a case not in it shows its number only.
 */
export function CriticalBanner({
  caseId,
  cases = [],
  onChange,
  onOpen,
}: {
  caseId?: number;
  cases?: CaseOut[];
  onChange?: () => void;
  /** Told which cases have an open critical result, after each load. */
  onOpen?: (caseIds: Set<number>) => void;
}) {
  const [open, setOpen] = useState<CriticalOut[]>([]);
  useRefetch(
    criticalChanges,
    () => {
      api<CriticalOut[]>("/api/critical?status=open")
        .then((rows) => {
          const mine = rows.filter((r) => caseId === undefined || r.case_id === caseId);
          setOpen(mine);
          onOpen?.(new Set(mine.map((r) => r.case_id)));
        })
        .catch(() => undefined); // the next change or poll tries again
    },
    [caseId],
  );
  if (!open.length) return null;
  const byId = new Map(cases.map((c) => [c.id, c]));
  return (
    <section class="critical-banner" role="alert" aria-label={t("count", { n: open.length })}>
      {open.map((result) => (
        <CriticalRow
          key={result.id}
          result={result}
          kase={byId.get(result.case_id)}
          linked={caseId === undefined}
          onDone={() => {
            const rest = open.filter((r) => r.id !== result.id);
            setOpen(rest);
            onOpen?.(new Set(rest.map((r) => r.case_id)));
            criticalChanges.value++;
            onChange?.();
          }}
        />
      ))}
    </section>
  );
}

function CriticalRow({
  result,
  kase,
  linked,
  onDone,
}: {
  result: CriticalOut;
  kase: CaseOut | undefined;
  linked: boolean;
  onDone: () => void;
}) {
  const [asking, setAsking] = useState(false);
  const [method, setMethod] = useState<(typeof METHODS)[number]>("system");
  const [note, setNote] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function confirm(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      await api(`/api/critical/${result.id}/acknowledge`, { body: { method, note: note.trim() } });
      onDone();
    } catch (e) {
      setError(t("failed", { detail: e instanceof ApiError ? e.detail : String(e) }));
    } finally {
      setBusy(false);
    }
  }

  const caseLabel = t("caseLink", { id: result.case_id });
  return (
    <div class="critical-item" data-testid="critical">
      <div class="critical-text">
        <strong class="critical-title">
          {t("title")}：{word("critical", result.category)}
        </strong>
        {linked ? <a href={`/app/cases/${result.case_id}`}>{caseLabel}</a> : <span>{caseLabel}</span>}
        {kase && <span class="critical-patient">{personName(kase.patient_name)}</span>}
        {result.note && <span class="critical-note">{result.note}</span>}
        <span class="critical-when">{t("flagged", { at: formatDateTime(result.flagged_at) })}</span>
      </div>
      {!asking ? (
        <button type="button" class="critical-ack" onClick={() => setAsking(true)}>
          {t("acknowledge")}
        </button>
      ) : (
        <form
          class="critical-form"
          onSubmit={confirm}
          onKeyDown={(e) => {
            if (e.key === "Escape") setAsking(false);
          }}
        >
          <label>
            {t("method")}
            <select value={method} onChange={(e) => setMethod(e.currentTarget.value as typeof method)} autoFocus>
              {METHODS.map((m) => (
                <option value={m}>{word("ack", m)}</option>
              ))}
            </select>
          </label>
          <label class="critical-note-input">
            {t("note")}
            <input value={note} maxLength={2000} onInput={(e) => setNote(e.currentTarget.value)} />
          </label>
          <div class="critical-buttons">
            <button type="submit" class="primary" disabled={busy}>
              {t("confirm")}
            </button>
            <button type="button" onClick={() => setAsking(false)}>
              {t("cancel")}
            </button>
          </div>
          {error && <p class="critical-error">{error}</p>}
        </form>
      )}
    </div>
  );
}
