// Consults (远程会诊): upcoming and past, request one for a case, invite participants.
import { useEffect, useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { defineMessages, formatDateTime } from "../../i18n";
import { me } from "../../session";
import type { Consult } from "./types";
import "./consult.css";

const t = defineMessages(
  {
    title: "远程会诊",
    upcoming: "即将进行",
    past: "已结束",
    none: "暂无会诊",
    request: "申请会诊",
    case: "病例",
    choose_case: "选择病例",
    host: "主持专家（用户名）",
    participants: "其他参与者（用户名，逗号分隔）",
    when: "时间（留空为立即）",
    reason: "会诊目的",
    submit: "提交申请",
    requested: "已申请会诊 #{id}",
    join: "进入会诊室",
    invite: "邀请",
    invite_placeholder: "用户名，逗号分隔",
    invited: "已邀请",
    cancel: "取消会诊",
    status_scheduled: "已预约",
    status_completed: "已完成",
    status_cancelled: "已取消",
    col_time: "时间",
    col_case: "病例",
    col_host: "主持",
    col_people: "参与者",
    col_status: "状态",
    col_reason: "目的",
    col_actions: "操作",
    referral_up: "上转：{dest}",
    referral_down: "下转随访：{dest}",
    error: "出错：{detail}",
  },
  {
    title: "Video consultations",
    upcoming: "Upcoming",
    past: "Past",
    none: "No consults",
    request: "Request a consult",
    case: "Case",
    choose_case: "Choose a case",
    host: "Host specialist (username)",
    participants: "Other participants (usernames, comma separated)",
    when: "Time (empty: now)",
    reason: "Purpose",
    submit: "Request",
    requested: "Consult #{id} requested",
    join: "Enter the room",
    invite: "Invite",
    invite_placeholder: "usernames, comma separated",
    invited: "Invited",
    cancel: "Cancel consult",
    status_scheduled: "Scheduled",
    status_completed: "Completed",
    status_cancelled: "Cancelled",
    col_time: "Time",
    col_case: "Case",
    col_host: "Host",
    col_people: "Participants",
    col_status: "Status",
    col_reason: "Purpose",
    col_actions: "Actions",
    referral_up: "Referred up: {dest}",
    referral_down: "Back down for follow-up: {dest}",
    error: "Error: {detail}",
  },
);

interface CaseItem {
  id: number;
  patient_name: string;
  patient_id: string;
  study_date: string;
}

function usernames(text: string): string[] {
  return text
    .split(/[,，\s]+/)
    .map((s) => s.trim())
    .filter(Boolean);
}

function errorText(error: unknown): string {
  return t("error", { detail: error instanceof ApiError ? error.detail : String(error) });
}

export function Consults() {
  const [upcoming, setUpcoming] = useState<Consult[] | null>(null);
  const [past, setPast] = useState<Consult[]>([]);
  const [cases, setCases] = useState<CaseItem[]>([]);
  const [error, setError] = useState("");
  const [notice, setNotice] = useState("");
  const caseFromUrl = new URLSearchParams(location.search).get("case") ?? "";
  const [caseId, setCaseId] = useState(caseFromUrl);
  const [host, setHost] = useState(me.value?.role === "specialist" ? (me.value?.username ?? "") : "");
  const [others, setOthers] = useState("");
  const [when, setWhen] = useState("");
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);

  async function load() {
    try {
      const [next, done] = await Promise.all([
        api<Consult[]>("/api/consults"),
        api<Consult[]>("/api/consults?past=true"),
      ]);
      setUpcoming(next);
      setPast(done);
    } catch (e) {
      setError(errorText(e));
    }
  }

  useEffect(() => {
    void load();
    api<{ items: CaseItem[] }>("/api/cases?limit=100")
      .then((list) => setCases(list.items))
      .catch(() => setCases([]));
  }, []);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      const created = await api<Consult>("/api/consults", {
        body: {
          case_id: Number(caseId),
          host: host.trim(),
          participants: usernames(others),
          scheduled_at: when ? new Date(when).toISOString() : null,
          reason,
        },
      });
      setNotice(t("requested", { id: created.id }));
      setReason("");
      setOthers("");
      await load();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main class="consults">
      <h1>{t("title")}</h1>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {notice && <p class="notice">{notice}</p>}
      <section class="panel">
        <h2>{t("upcoming")}</h2>
        <ConsultTable rows={upcoming} onChange={load} onError={(e) => setError(errorText(e))} live />
      </section>
      <section class="panel">
        <h2>{t("request")}</h2>
        <form class="consult-form" onSubmit={submit}>
          <label>
            {t("case")}
            <select
              name="case"
              value={caseId}
              required
              onChange={(e) => setCaseId((e.target as HTMLSelectElement).value)}
            >
              <option value="">{t("choose_case")}</option>
              {caseFromUrl && !cases.some((c) => String(c.id) === caseFromUrl) && (
                <option value={caseFromUrl}>#{caseFromUrl}</option>
              )}
              {cases.map((c) => (
                <option key={c.id} value={String(c.id)}>
                  #{c.id} {c.patient_name.replace(/\^/g, " ")} {c.patient_id}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t("host")}
            <input name="host" value={host} required onInput={(e) => setHost((e.target as HTMLInputElement).value)} />
          </label>
          <label>
            {t("participants")}
            <input name="participants" value={others} onInput={(e) => setOthers((e.target as HTMLInputElement).value)} />
          </label>
          <label>
            {t("when")}
            <input
              name="when"
              type="datetime-local"
              value={when}
              onInput={(e) => setWhen((e.target as HTMLInputElement).value)}
            />
          </label>
          <label class="wide">
            {t("reason")}
            <textarea name="reason" maxLength={2000} value={reason} onInput={(e) => setReason((e.target as HTMLTextAreaElement).value)} />
          </label>
          <button class="primary" type="submit" disabled={busy}>
            {t("submit")}
          </button>
        </form>
      </section>
      <section class="panel">
        <h2>{t("past")}</h2>
        <ConsultTable rows={past} onChange={load} onError={(e) => setError(errorText(e))} />
      </section>
    </main>
  );
}

function ConsultTable(props: {
  rows: Consult[] | null;
  live?: boolean;
  onChange: () => Promise<void>;
  onError: (error: unknown) => void;
}) {
  if (props.rows === null) return <p class="loading" />;
  if (props.rows.length === 0) return <p class="empty">{t("none")}</p>;
  return (
    <table class="consult-table">
      <thead>
        <tr>
          <th>{t("col_time")}</th>
          <th>{t("col_case")}</th>
          <th>{t("col_host")}</th>
          <th>{t("col_people")}</th>
          <th>{t("col_status")}</th>
          <th>{t("col_reason")}</th>
          <th>{t("col_actions")}</th>
        </tr>
      </thead>
      <tbody>
        {props.rows.map((c) => (
          <ConsultRow key={c.id} consult={c} live={!!props.live} onChange={props.onChange} onError={props.onError} />
        ))}
      </tbody>
    </table>
  );
}

function ConsultRow(props: {
  consult: Consult;
  live: boolean;
  onChange: () => Promise<void>;
  onError: (error: unknown) => void;
}) {
  const c = props.consult;
  const [invitees, setInvitees] = useState("");
  const user = me.value?.username;
  const organiser = user === c.host || user === c.requested_by || me.value?.role === "admin";

  async function invite(event: Event) {
    event.preventDefault();
    try {
      await api(`/api/consults/${c.id}/invite`, { body: { participants: usernames(invitees) } });
      setInvitees("");
      await props.onChange();
    } catch (e) {
      props.onError(e);
    }
  }

  async function cancel() {
    try {
      await api(`/api/consults/${c.id}/cancel`, { body: {} });
      await props.onChange();
    } catch (e) {
      props.onError(e);
    }
  }

  const status = t(`status_${c.status}` as "status_scheduled");
  return (
    <tr data-consult={c.id}>
      <td>{formatDateTime(c.scheduled_at)}</td>
      <td>
        <a href={`/app/cases/${c.case_id}`}>#{c.case_id}</a>
      </td>
      <td>{c.host}</td>
      <td class="people">
        {c.participants.map((p) => (
          <span key={p.username} class="badge" title={p.institution_code}>
            {p.display_name || p.username}
          </span>
        ))}
      </td>
      <td>
        <span class={`badge status-${c.status}`}>{status}</span>
        {c.referral !== "none" && (
          <div class="muted">
            {t(c.referral === "up" ? "referral_up" : "referral_down", { dest: c.referral_institution ?? "" })}
          </div>
        )}
      </td>
      <td class="reason">{c.reason}</td>
      <td class="actions">
        {props.live && c.status === "scheduled" && (
          <>
            <a class="button primary" href={`/app/consults/${c.id}`}>
              {t("join")}
            </a>
            {organiser && (
              <form class="invite" onSubmit={invite}>
                <input
                  aria-label={t("invite")}
                  placeholder={t("invite_placeholder")}
                  value={invitees}
                  onInput={(e) => setInvitees((e.target as HTMLInputElement).value)}
                />
                <button type="submit" disabled={!invitees.trim()}>
                  {t("invite")}
                </button>
              </form>
            )}
            {organiser && (
              <button class="danger" type="button" onClick={cancel}>
                {t("cancel")}
              </button>
            )}
          </>
        )}
      </td>
    </tr>
  );
}
