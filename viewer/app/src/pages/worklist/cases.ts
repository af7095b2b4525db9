// What the worklist and the reading workspace share: the case shape of /api/cases and
// /api/worklist, and how a case's patient, priority and deadline are shown.
import { signal } from "@preact/signals";
import { defineMessages, locale } from "../../i18n";

export type Priority = "stat" | "urgent" | "routine";
export const PRIORITIES: Priority[] = ["stat", "urgent", "routine"];
export type CaseStatus = "new" | "queued" | "claimed" | "reported" | "signed" | "cancelled";

export interface CaseOut {
  id: number;
  status: CaseStatus;
  priority: Priority;
  triage_reason: string | null;
  service: "imaging" | "ecg" | "ultrasound" | "other";
  origin: string;
  study_instance_uid: string;
  patient_id: string;
  patient_name: string;
  patient_sex: string;
  patient_birth_date: string;
  prior_studies: number;
  study_date: string;
  study_description: string;
  modalities: string[];
  institution_id: number;
  institution_code: string;
  institution_name: string;
  clinical_history: string;
  question: string;
  group_id: number | null;
  group_code: string | null;
  claim_holder: string | null;
  lease_expires_at: string | null;
  due_at: string;
  overdue: boolean;
  escalation_level: number;
  created_at: string;
  updated_at: string;
  closed_at: string | null;
}

export interface CaseList {
  total: number;
  limit: number;
  offset: number;
  counts: Record<Priority, number>;
  items: CaseOut[];
}

export interface ClaimOut {
  case_id: number;
  holder: string;
  claimed_at: string;
  lease_expires_at: string;
  lease_token: number;
}

const t = defineMessages(
  {
    stat: "急诊", // the desk's and the admin's word for it
    urgent: "加急",
    routine: "常规",
    M: "男",
    F: "女",
    O: "其他",
    years: "{n}岁",
    months: "{n}个月",
    days: "{n}天",
    overdue: "超时 {time}",
    left: "剩余 {time}",
    dayHours: "{d}天{h}小时",
    new: "未分配",
    queued: "待认领",
    claimed: "阅片中",
    reported: "初步报告",
    signed: "已签发",
    cancelled: "已取消",
  },
  {
    stat: "STAT",
    urgent: "Urgent",
    routine: "Routine",
    M: "M",
    F: "F",
    O: "Other",
    years: "{n} y",
    months: "{n} mo",
    days: "{n} d",
    overdue: "Overdue {time}",
    left: "{time} left",
    dayHours: "{d} d {h} h",
    new: "Unrouted",
    queued: "Waiting",
    claimed: "Being read",
    reported: "Preliminary",
    signed: "Signed",
    cancelled: "Cancelled",
  },
);

export const priorityLabel = (p: Priority): string => t(p);
export const statusLabel = (s: CaseStatus): string => t(s);

/** A DICOM PN ("Zhang^San=张^三") as people write it; ideographic groups without spaces. */
export function personName(pn: string): string {
  return pn
    .split("=")
    .map((group, i) =>
      group
        .split("^")
        .map((part) => part.trim())
        .filter(Boolean)
        .join(i === 0 ? " " : ""),
    )
    .filter(Boolean)
    .join(" ");
}

export function sexLabel(sex: string): string {
  const s = sex.trim().toUpperCase();
  return s === "M" || s === "F" || s === "O" ? t(s) : s;
}

function parseDa(da: string): Date | null {
  if (!/^\d{8}$/.test(da)) return null;
  return new Date(Date.UTC(+da.slice(0, 4), +da.slice(4, 6) - 1, +da.slice(6, 8)));
}

/** Age at the study (or today when the study has no date), as a reader writes it. */
export function ageLabel(birthDate: string, studyDate: string): string {
  const born = parseDa(birthDate);
  if (!born) return "";
  const at = parseDa(studyDate) ?? new Date();
  let months =
    (at.getUTCFullYear() - born.getUTCFullYear()) * 12 + (at.getUTCMonth() - born.getUTCMonth());
  if (at.getUTCDate() < born.getUTCDate()) months -= 1;
  if (months < 0) return "";
  if (months >= 24) return t("years", { n: Math.floor(months / 12) });
  if (months >= 1) return t("months", { n: months });
  return t("days", { n: Math.max(0, Math.round((at.getTime() - born.getTime()) / 86_400_000)) });
}

/** The wall clock, ticking once a second for every countdown on the page. */
export const now = signal(Date.now());
let tickers = 0;
let timer: number | undefined;
export function startTicking(): () => void {
  tickers += 1;
  if (timer === undefined) timer = window.setInterval(() => (now.value = Date.now()), 1000);
  return () => {
    tickers -= 1;
    if (tickers === 0 && timer !== undefined) {
      window.clearInterval(timer);
      timer = undefined;
    }
  };
}

export type DeadlineState = "ok" | "warn" | "overdue";

export interface Deadline {
  state: DeadlineState;
  text: string;
  fraction: number; // of the time allowed that is left (negative: overdue)
}

function clock(ms: number): string {
  const total = Math.floor(Math.abs(ms) / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h >= 24) return t("dayHours", { d: Math.floor(h / 24), h: h % 24 });
  return `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}`;
}

/** Time left to the deadline: green while more than half is left, amber, then red. */
export function deadline(c: Pick<CaseOut, "created_at" | "due_at">, at: number): Deadline {
  const due = Date.parse(c.due_at);
  const allowed = Math.max(1, due - Date.parse(c.created_at));
  const left = due - at;
  const fraction = left / allowed;
  if (left <= 0) return { state: "overdue", text: t("overdue", { time: clock(left) }), fraction };
  return { state: fraction > 0.5 ? "ok" : "warn", text: t("left", { time: clock(left) }), fraction };
}

// One formatter per locale: building an Intl.DateTimeFormat per row costs more than the row.
const whenFormats = new Map<string, Intl.DateTimeFormat>();

/** A hub timestamp (UTC) in the reader's locale and time zone, as formatDateTime shows it. */
export function formatWhen(iso: string | null | undefined): string {
  if (!iso) return "";
  let format = whenFormats.get(locale.value);
  if (!format) {
    format = new Intl.DateTimeFormat(locale.value, {
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      hour12: false,
    });
    whenFormats.set(locale.value, format);
  }
  return format.format(new Date(iso));
}

/** Compare-by-locale for sorting clinic names in filters. */
export function byName(a: string, b: string): number {
  return a.localeCompare(b, locale.value);
}

/** ECG cases are read on the ECG viewer; everything else on the image viewer. */
export function isEcgCase(c: Pick<CaseOut, "service" | "modalities">): boolean {
  return c.service === "ecg" || c.modalities.includes("ECG");
}
