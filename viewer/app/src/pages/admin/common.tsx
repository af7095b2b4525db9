// What the admin sections share: the hub's shapes, loading, and errors shown as the API
// words them (a 422 from FastAPI is a list of {loc, msg}; a domain error is one sentence).
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useState } from "preact/hooks";
import { ApiError, api } from "../../api";
import { type MessageKey, t } from "./messages";

export type Level = "province" | "city" | "county" | "township" | "village" | "other";
export const LEVELS: Level[] = ["province", "city", "county", "township", "village", "other"];
export type Role = "technician" | "specialist" | "consult_doctor" | "admin";
export const ROLES: Role[] = ["technician", "specialist", "consult_doctor", "admin"];
export type Service = "imaging" | "ecg" | "ultrasound" | "other";
export const SERVICES: Service[] = ["imaging", "ecg", "ultrasound", "other"];
export type Priority = "stat" | "urgent" | "routine";
export const PRIORITIES: Priority[] = ["stat", "urgent", "routine"];

export interface Institution {
  id: number;
  code: string;
  name: string;
  level: Level;
  parent_id: number | null;
}

export interface User {
  id: number;
  username: string;
  display_name: string;
  role: Role;
  institution_id: number;
  active: boolean;
}

export interface ApplicationEntity {
  id: number;
  ae_title: string;
  institution_id: number;
  host: string | null;
  port: number | null;
  tls: boolean;
  description: string;
}

/** `t` for a key made of a prefix and a value the hub sends (a role, a level…). */
export function word(prefix: string, value: string): string {
  return t(`${prefix}_${value}` as MessageKey);
}

/** Lines that say what the API refused, field by field when it names fields. */
export function problems(error: unknown): string[] {
  if (!(error instanceof ApiError)) return [String((error as Error)?.message ?? error)];
  try {
    const parsed: unknown = JSON.parse(error.detail);
    if (Array.isArray(parsed)) {
      return parsed.map((item: { loc?: unknown[]; msg?: string }) => {
        const where = (item.loc ?? []).filter((p) => p !== "body").join(".");
        return where ? `${where}: ${item.msg ?? ""}` : String(item.msg ?? "");
      });
    }
  } catch {
    // A plain sentence: the domain error's message.
  }
  return [error.detail || `HTTP ${error.status}`];
}

export function NotAllowed() {
  return (
    <p class="not-allowed" role="alert">
      {t("notAllowed")}
    </p>
  );
}

export function FormError({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <div class="form-error" role="alert">
      <strong>{t("saveFailed")}</strong>
      <ul>
        {problems(error).map((line) => (
          <li>{line}</li>
        ))}
      </ul>
    </div>
  );
}

/** A keydown handler: Escape leaves the form (cancel), as in a dialog. */
export function escapeTo(cancel: () => void): (event: KeyboardEvent) => void {
  return (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      cancel();
    }
  };
}

/** GET `path` once and again on `reload()`; `error` holds a failed load. */
export function useLoad<T>(path: string): {
  data: T | undefined;
  error: unknown;
  reload: () => Promise<void>;
} {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const reload = useCallback(async () => {
    try {
      setData(await api<T>(path));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [path]);
  useEffect(() => {
    void reload();
  }, [reload]);
  return { data, error, reload };
}

export function LoadState({ error }: { error: unknown }) {
  if (error) {
    return (
      <p class="error" role="alert">
        {t("loadFailed", { detail: problems(error).join("; ") })}
      </p>
    );
  }
  return (
    <p class="muted" aria-busy="true">
      {t("loading")}
    </p>
  );
}

export interface Save {
  error: unknown;
  busy: boolean;
  run: (work: () => Promise<unknown>) => Promise<boolean>;
  clear: () => void;
}

/** Run a save; keeps the API's refusal for <FormError> and says whether it worked. */
export function useSave(): Save {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const run = async (work: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await work();
      return true;
    } catch (e) {
      setError(e);
      return false;
    } finally {
      setBusy(false);
    }
  };
  return { error, busy, run, clear: () => setError(null) };
}

/** Institutions in tree order (parents before children), with their depth. */
export function treeOrder(institutions: Institution[]): { institution: Institution; depth: number }[] {
  const children = new Map<number | null, Institution[]>();
  const known = new Set(institutions.map((i) => i.id));
  for (const inst of institutions) {
    const parent = inst.parent_id !== null && known.has(inst.parent_id) ? inst.parent_id : null;
    children.set(parent, [...(children.get(parent) ?? []), inst]);
  }
  const ordered: { institution: Institution; depth: number }[] = [];
  const seen = new Set<number>();
  const walk = (parent: number | null, depth: number) => {
    for (const inst of children.get(parent) ?? []) {
      if (seen.has(inst.id)) continue; // a cycle in bad data must not hang the page
      seen.add(inst.id);
      ordered.push({ institution: inst, depth });
      walk(inst.id, depth + 1);
    }
  };
  walk(null, 0);
  return ordered;
}

/** An institution picker in tree order (indented), by code. */
export function InstitutionSelect(props: {
  institutions: Institution[];
  value: string;
  onChange: (code: string) => void;
  label: string;
  emptyLabel?: string;
  exclude?: Set<number>;
  name?: string;
}) {
  return (
    <label>
      {props.label}
      <select
        name={props.name}
        value={props.value}
        onChange={(e) => props.onChange(e.currentTarget.value)}
      >
        {props.emptyLabel !== undefined && <option value="">{props.emptyLabel}</option>}
        {treeOrder(props.institutions)
          .filter(({ institution }) => !props.exclude?.has(institution.id))
          .map(({ institution, depth }) => (
            <option value={institution.code}>
              {"\u3000".repeat(depth)}
              {institution.name} ({institution.code})
            </option>
          ))}
      </select>
    </label>
  );
}

/** "a, b ,c" → ["a", "b", "c"]; empty → null (no condition). */
export function listOrNull(text: string): string[] | null {
  const items = text
    .split(/[,，\s]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  return items.length ? items : null;
}

/** Ask, then DELETE `path` through `save` (its error box shows a refusal) and reload. */
export async function deleteConfirmed(save: Save, path: string, name: string, reload: () => Promise<void>) {
  if (!confirm(t("confirmDelete", { name }))) return;
  if (await save.run(() => api(path, { method: "DELETE" }))) await reload();
}

/** A labelled text input (passwords keep their own markup); the other attributes pass through. */
export function TextField(props: {
  label: string;
  value: string;
  onValue: (value: string) => void;
  name: string;
  class?: string;
  inputMode?: "numeric" | "decimal";
  placeholder?: string;
  required?: boolean;
  maxLength?: number;
  autoComplete?: string;
}) {
  const { label, value, onValue, ...input } = props;
  return (
    <label>
      {label}
      <input {...input} value={value} onInput={(e) => onValue(e.currentTarget.value)} />
    </label>
  );
}

/** A labelled checkbox on one line. */
export function CheckField(props: { label: string; name: string; checked: boolean; onChecked: (on: boolean) => void }) {
  return (
    <label class="check">
      <input type="checkbox" name={props.name} checked={props.checked} onChange={(e) => props.onChecked(e.currentTarget.checked)} />
      {props.label}
    </label>
  );
}

/** A table head of translated column titles. */
export function TableHead(props: { columns: MessageKey[] }) {
  return (
    <thead>
      <tr>
        {props.columns.map((key) => (
          <th>{t(key)}</th>
        ))}
      </tr>
    </thead>
  );
}

/** The last cell of an editable row: edit, and delete (marked dangerous). */
export function EditDeleteCell(props: { onEdit: () => void; onDelete: () => void }) {
  return (
    <td class="row-actions">
      <button type="button" onClick={props.onEdit}>
        {t("edit")}
      </button>
      <button type="button" class="danger" onClick={props.onDelete}>
        {t("delete")}
      </button>
    </td>
  );
}

/**
 * The side form every section uses: heading, fields, the API's refusal, submit and cancel.
 * Escape cancels, as in a dialog; `cancelButton` says whether cancel also shows as a button.
 */
export function AdminForm(props: {
  heading: string;
  save: Save;
  submitLabel: string;
  onSubmit: () => Promise<void>;
  cancel: () => void;
  cancelButton: boolean;
  children: ComponentChildren;
}) {
  const submit = (event: Event) => {
    event.preventDefault();
    void props.onSubmit();
  };
  return (
    <form class="panel admin-form" onSubmit={submit} aria-label={props.heading} onKeyDown={escapeTo(props.cancel)}>
      <h2>{props.heading}</h2>
      {props.children}
      <FormError error={props.save.error} />
      <div class="form-actions">
        <button type="submit" class="primary" disabled={props.save.busy}>
          {props.submitLabel}
        </button>
        {props.cancelButton && (
          <button type="button" onClick={props.cancel}>
            {t("cancel")}
          </button>
        )}
      </div>
    </form>
  );
}
