// The reader's live queue: every open case of his groups in one fetch, filtered and counted
// in the browser (no per-row requests), refetched when the hub says a case changed.
import { useComputed, useSignal, useSignalEffect } from "@preact/signals";
import { useEffect, useMemo, useRef } from "preact/hooks";
import { useLocation } from "preact-iso";
import { ApiError, api, websocketUrl } from "../../api";
import { defineMessages } from "../../i18n";
import { me } from "../../session";
import {
  type CaseList,
  type CaseOut,
  PRIORITIES,
  type Priority,
  ageLabel,
  byName,
  deadline,
  formatWhen,
  now,
  personName,
  priorityLabel,
  sexLabel,
  startTicking,
  statusLabel,
} from "./cases";
import { WORKLIST_PATH, takePrefetched } from "./prefetch";
import "./worklist.css";

const t = defineMessages(
  {
    title: "阅片工作列表",
    all: "全部",
    priority: "优先级",
    modality: "检查类型",
    clinic: "申请机构",
    scope: "范围",
    scopeAll: "全部病例",
    scopeMine: "我认领的",
    scopeUnclaimed: "未认领",
    search: "搜索",
    searchHint: "姓名、病历号、检查、临床问题",
    patient: "患者",
    requested: "申请时间",
    timeLeft: "报告时限",
    status: "状态",
    actions: "操作",
    claim: "认领",
    release: "释放",
    open: "打开",
    heldBy: "{user} 阅片中",
    mine: "我在阅片",
    priors: "有既往检查 {n}",
    priorsTitle: "该患者有 {n} 项既往检查",
    empty: "没有符合条件的病例",
    loading: "正在加载…",
    live: "实时",
    offline: "实时连接已断开，正在重连…",
    shown: "显示 {shown} / {total} 例",
    truncated: "队列共 {total} 例，仅加载前 {loaded} 例",
    keys: "键盘：↑↓ 或 j/k 选择，Enter 打开，c 认领，r 释放",
    failed: "操作失败：{detail}",
    loadFailed: "加载失败：{detail}",
    triaged: "心电分诊升级：{reason}",
  },
  {
    title: "Worklist",
    all: "All",
    priority: "Priority",
    modality: "Modality",
    clinic: "Clinic",
    scope: "Show",
    scopeAll: "All cases",
    scopeMine: "Claimed by me",
    scopeUnclaimed: "Unclaimed",
    search: "Search",
    searchHint: "Name, patient ID, study, question",
    patient: "Patient",
    requested: "Requested",
    timeLeft: "Deadline",
    status: "Status",
    actions: "Actions",
    claim: "Claim",
    release: "Release",
    open: "Open",
    heldBy: "Being read by {user}",
    mine: "Reading (me)",
    priors: "Priors {n}",
    priorsTitle: "This patient has {n} earlier studies",
    empty: "No cases match",
    loading: "Loading…",
    live: "Live",
    offline: "Live updates lost, reconnecting…",
    shown: "{shown} of {total} cases",
    truncated: "The queue holds {total} cases; the first {loaded} are loaded",
    keys: "Keys: ↑↓ or j/k to move, Enter to open, c to claim, r to release",
    failed: "Failed: {detail}",
    loadFailed: "Could not load: {detail}",
    triaged: "Raised by ECG triage: {reason}",
  },
);

type Scope = "all" | "mine" | "unclaimed";

interface Filters {
  priority: Priority | "";
  modality: string;
  clinic: string; // institution id as text; "" for all
  scope: Scope;
  text: string;
}

function matches(c: CaseOut, f: Filters, user: string, priority: boolean): boolean {
  if (priority && f.priority && c.priority !== f.priority) return false;
  if (f.modality && !c.modalities.includes(f.modality)) return false;
  if (f.clinic && String(c.institution_id) !== f.clinic) return false;
  if (f.scope === "mine" && c.claim_holder !== user) return false;
  if (f.scope === "unclaimed" && c.claim_holder !== null) return false;
  if (f.text) {
    const needle = f.text.toLowerCase();
    const hay = [
      c.patient_name,
      personName(c.patient_name),
      c.patient_id,
      c.study_description,
      c.institution_name,
      c.question,
      c.clinical_history,
      String(c.id),
    ]
      .join("\n")
      .toLowerCase();
    if (!hay.includes(needle)) return false;
  }
  return true;
}

/** The countdown of one row: only it re-renders each second, not the table. */
function TimeLeft({ item }: { item: CaseOut }) {
  const d = deadline(item, now.value);
  return (
    <span class={`deadline deadline-${d.state}`} data-state={d.state}>
      {d.text}
    </span>
  );
}

export function Worklist() {
  const { route } = useLocation();
  const items = useSignal<CaseOut[] | null>(null);
  const total = useSignal(0);
  const error = useSignal("");
  const notice = useSignal("");
  const live = useSignal(true);
  const busy = useSignal<number | null>(null);
  const filters = useSignal<Filters>({
    priority: "",
    modality: "",
    clinic: "",
    scope: "all",
    text: "",
  });
  const focused = useSignal(0);
  const tableRef = useRef<HTMLTableSectionElement>(null);
  const user = me.value?.username ?? "";

  async function load(): Promise<void> {
    try {
      const prefetched = (await takePrefetched()) as CaseList | null;
      const page = prefetched ?? (await api<CaseList>(WORKLIST_PATH));
      items.value = page.items;
      total.value = page.total;
      error.value = "";
    } catch (e) {
      error.value = t("loadFailed", { detail: e instanceof ApiError ? e.detail : String(e) });
    }
  }

  useEffect(() => startTicking(), []);

  // The live feed says *that* something changed (never patient data): refetch, coalescing
  // bursts; reconnect with a growing pause when the connection drops.
  useEffect(() => {
    let socket: WebSocket | null = null;
    let refetch: number | undefined;
    let retry: number | undefined;
    let pause = 1000;
    let closed = false;
    const schedule = () => {
      if (refetch === undefined)
        refetch = window.setTimeout(() => {
          refetch = undefined;
          void load();
        }, 150);
    };
    const connect = () => {
      socket = new WebSocket(websocketUrl("/api/worklist/live"));
      socket.onopen = () => {
        live.value = true;
        pause = 1000;
      };
      socket.onmessage = (event) => {
        try {
          const message = JSON.parse(String(event.data)) as { type?: string };
          if (message.type === "hello") {
            // Changes made before the feed attached are not announced: fetch once more,
            // after the first page is on screen so the two never compete.
            void first.then(load);
          } else if (message.type?.startsWith("case.") || message.type === "resync") {
            schedule();
          }
        } catch {
          /* not JSON: ignore */
        }
      };
      socket.onclose = () => {
        if (closed) return;
        live.value = false;
        retry = window.setTimeout(connect, pause);
        pause = Math.min(pause * 2, 30_000);
      };
    };
    const first = load();
    connect();
    return () => {
      closed = true;
      window.clearTimeout(refetch);
      window.clearTimeout(retry);
      socket?.close();
    };
  }, []);

  const visible = useComputed(() =>
    (items.value ?? []).filter((c) => matches(c, filters.value, user, true)),
  );
  const counts = useComputed(() => {
    const result: Record<Priority, number> = { stat: 0, urgent: 0, routine: 0 };
    for (const c of items.value ?? []) if (matches(c, filters.value, user, false)) result[c.priority]++;
    return result;
  });
  const modalities = useMemo(
    () => [...new Set((items.value ?? []).flatMap((c) => c.modalities))].sort(),
    [items.value],
  );
  const clinics = useMemo(() => {
    const names = new Map<number, string>();
    for (const c of items.value ?? []) names.set(c.institution_id, c.institution_name);
    return [...names.entries()].sort((a, b) => byName(a[1], b[1]));
  }, [items.value]);

  // Keep the roving focus inside the list as it shrinks.
  useSignalEffect(() => {
    const n = visible.value.length;
    if (focused.peek() >= n) focused.value = Math.max(0, n - 1);
  });

  function setFilter<K extends keyof Filters>(key: K, value: Filters[K]): void {
    filters.value = { ...filters.value, [key]: value };
  }

  async function act(c: CaseOut, action: "claim" | "release"): Promise<void> {
    busy.value = c.id;
    notice.value = "";
    try {
      await api(`/api/cases/${c.id}/${action}`, { method: "POST" });
      // Show it at once; the live message brings the hub's truth right after.
      items.value = (items.value ?? []).map((x) =>
        x.id === c.id ? { ...x, claim_holder: action === "claim" ? user : null } : x,
      );
      void load();
    } catch (e) {
      notice.value = t("failed", { detail: e instanceof ApiError ? e.detail : String(e) });
      void load();
    } finally {
      busy.value = null;
    }
  }

  function focusRow(index: number): void {
    focused.value = index;
    tableRef.current?.querySelector<HTMLElement>(`tr[data-index="${index}"]`)?.focus();
  }

  function onKey(event: KeyboardEvent): void {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if ((event.target as HTMLElement).closest("button, a, input, select")) {
      if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    }
    const list = visible.value;
    if (list.length === 0) return;
    const current = list[focused.value];
    switch (event.key) {
      case "ArrowDown":
      case "j":
        focusRow(Math.min(list.length - 1, focused.value + 1));
        break;
      case "ArrowUp":
      case "k":
        focusRow(Math.max(0, focused.value - 1));
        break;
      case "Home":
        focusRow(0);
        break;
      case "End":
        focusRow(list.length - 1);
        break;
      case "Enter":
        if (current) route(`/app/read/${current.id}`);
        break;
      case "c":
        if (current && current.claim_holder === null) void act(current, "claim");
        break;
      case "r":
        if (current && current.claim_holder === user) void act(current, "release");
        break;
      default:
        return;
    }
    event.preventDefault();
  }

  const f = filters.value;
  const list = visible.value;
  const loaded = items.value;
  return (
    <section class="worklist">
      <header class="worklist-head">
        <h1>{t("title")}</h1>
        <span
          class={`live-state ${live.value ? "on" : "off"}`}
          role="status"
          data-testid="live-state"
        >
          {live.value ? t("live") : t("offline")}
        </span>
      </header>

      <div class="counters" role="group" aria-label={t("priority")}>
        <button
          type="button"
          class="counter"
          aria-pressed={f.priority === ""}
          onClick={() => setFilter("priority", "")}
        >
          {t("all")} <strong>{counts.value.stat + counts.value.urgent + counts.value.routine}</strong>
        </button>
        {PRIORITIES.map((p) => (
          <button
            type="button"
            class={`counter counter-${p}`}
            data-priority={p}
            data-testid={`count-${p}`}
            aria-pressed={f.priority === p}
            onClick={() => setFilter("priority", f.priority === p ? "" : p)}
          >
            {priorityLabel(p)} <strong>{counts.value[p]}</strong>
          </button>
        ))}
      </div>

      <div class="filters">
        <label>
          {t("modality")}
          <select value={f.modality} onChange={(e) => setFilter("modality", e.currentTarget.value)}>
            <option value="">{t("all")}</option>
            {modalities.map((m) => (
              <option value={m}>{m}</option>
            ))}
          </select>
        </label>
        <label>
          {t("clinic")}
          <select value={f.clinic} onChange={(e) => setFilter("clinic", e.currentTarget.value)}>
            <option value="">{t("all")}</option>
            {clinics.map(([id, name]) => (
              <option value={String(id)}>{name}</option>
            ))}
          </select>
        </label>
        <label>
          {t("scope")}
          <select
            value={f.scope}
            onChange={(e) => setFilter("scope", e.currentTarget.value as Scope)}
          >
            <option value="all">{t("scopeAll")}</option>
            <option value="mine">{t("scopeMine")}</option>
            <option value="unclaimed">{t("scopeUnclaimed")}</option>
          </select>
        </label>
        <label class="search">
          {t("search")}
          <input
            type="search"
            value={f.text}
            placeholder={t("searchHint")}
            onInput={(e) => setFilter("text", e.currentTarget.value.trim())}
          />
        </label>
      </div>

      {error.value && (
        <p class="error" role="alert">
          {error.value}
        </p>
      )}
      {notice.value && (
        <p class="error" role="alert" data-testid="worklist-notice">
          {notice.value}
        </p>
      )}

      {loaded === null ? (
        <p class="loading-text" aria-busy="true">
          {t("loading")}
        </p>
      ) : (
        <>
          <p class="muted summary">
            {t("shown", { shown: list.length, total: loaded.length })}
            {total.value > loaded.length && ` · ${t("truncated", { total: total.value, loaded: loaded.length })}`}
            <span class="keys"> · {t("keys")}</span>
          </p>
          <div class="table-wrap">
            <table class="cases" data-testid="worklist-table">
              <thead>
                <tr>
                  <th>{t("priority")}</th>
                  <th>{t("patient")}</th>
                  <th>{t("modality")}</th>
                  <th>{t("clinic")}</th>
                  <th>{t("requested")}</th>
                  <th>{t("timeLeft")}</th>
                  <th>{t("status")}</th>
                  <th>{t("actions")}</th>
                </tr>
              </thead>
              <tbody ref={tableRef} onKeyDown={onKey}>
                {list.map((c, i) => (
                  <Row
                    key={c.id}
                    item={c}
                    index={i}
                    focused={i === focused.value}
                    user={user}
                    busy={busy.value === c.id}
                    onFocus={() => (focused.value = i)}
                    onAct={act}
                  />
                ))}
              </tbody>
            </table>
            {list.length === 0 && <p class="empty">{t("empty")}</p>}
          </div>
        </>
      )}
    </section>
  );
}

interface RowProps {
  item: CaseOut;
  index: number;
  focused: boolean;
  user: string;
  busy: boolean;
  onFocus: () => void;
  onAct: (c: CaseOut, action: "claim" | "release") => Promise<void>;
}

function Row({ item: c, index, focused, user, busy, onFocus, onAct }: RowProps) {
  const mine = c.claim_holder === user;
  const sexAge = [sexLabel(c.patient_sex), ageLabel(c.patient_birth_date, c.study_date)]
    .filter(Boolean)
    .join(" · ");
  const name = personName(c.patient_name) || c.patient_id || "—";
  return (
    <tr
      data-case-id={c.id}
      data-index={index}
      tabIndex={focused ? 0 : -1}
      class={`${mine ? "mine" : ""} priority-${c.priority}`}
      aria-current={focused ? "true" : undefined}
      onFocus={onFocus}
    >
      <td>
        <span class={`badge priority priority-${c.priority}`}>{priorityLabel(c.priority)}</span>
        {c.triage_reason && (
          <span class="triage" title={t("triaged", { reason: c.triage_reason })}>
            ⚡
          </span>
        )}
      </td>
      <td class="patient">
        <a href={`/app/read/${c.id}`} tabIndex={focused ? 0 : -1} class="patient-name">
          {name}
        </a>
        <span class="muted patient-meta">
          {sexAge}
          {c.patient_id && <span class="pid"> {c.patient_id}</span>}
        </span>
        {c.prior_studies > 0 && (
          <span
            class="badge priors"
            data-testid="priors-marker"
            title={t("priorsTitle", { n: c.prior_studies })}
          >
            {t("priors", { n: c.prior_studies })}
          </span>
        )}
      </td>
      <td>
        <span class="modality">{c.modalities.join(" / ")}</span>
        <span class="muted study-desc">{c.study_description}</span>
      </td>
      <td>{c.institution_name}</td>
      <td class="nowrap">{formatWhen(c.created_at)}</td>
      <td class="nowrap">
        <TimeLeft item={c} />
      </td>
      <td class="holder">
        {c.claim_holder === null
          ? statusLabel(c.status)
          : mine
            ? t("mine")
            : t("heldBy", { user: c.claim_holder })}
      </td>
      <td class="actions">
        {c.claim_holder === null && (
          <button type="button" tabIndex={focused ? 0 : -1} disabled={busy} onClick={() => void onAct(c, "claim")}>
            {t("claim")}
          </button>
        )}
        {mine && (
          <button
            type="button"
            tabIndex={focused ? 0 : -1}
            disabled={busy}
            onClick={() => void onAct(c, "release")}
          >
            {t("release")}
          </button>
        )}
        <a class="open" tabIndex={focused ? 0 : -1} href={`/app/read/${c.id}`}>
          {t("open")}
        </a>
      </td>
    </tr>
  );
}
