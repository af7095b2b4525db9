// Reading deadlines per priority and service, edited as one table and saved all at once
// (the hub replaces the whole set, so two rows for one pair are refused together).
import { useEffect, useState } from "preact/hooks";
import { api } from "../../api";
import { FormError, LoadState, PRIORITIES, type Priority, SERVICES, type Service, TableHead, useLoad, useSave, word } from "./common";
import { t } from "./messages";

interface Deadline {
  priority: Priority;
  service: Service | null;
  minutes: number;
  warn_fraction: number;
}

// Inputs keep what was typed; the hub says what is wrong with it.
interface Row {
  priority: Priority;
  service: string;
  minutes: string;
  warn: string;
}

const asRow = (d: Deadline): Row => ({
  priority: d.priority,
  service: d.service ?? "",
  minutes: String(d.minutes),
  warn: String(d.warn_fraction),
});

function asNumber(text: string): number | string {
  const value = Number(text);
  return text.trim() !== "" && Number.isFinite(value) ? value : text;
}

export function Deadlines() {
  const { data, error, reload } = useLoad<Deadline[]>("/api/routing/deadlines");
  const [rows, setRows] = useState<Row[]>([]);
  const [saved, setSaved] = useState(false);
  const save = useSave();
  useEffect(() => setRows((data ?? []).map(asRow)), [data]);
  if (!data) return <LoadState error={error} />;

  const change = (index: number, patch: Partial<Row>) => {
    setSaved(false);
    setRows(rows.map((row, i) => (i === index ? { ...row, ...patch } : row)));
  };

  async function submit(event: Event) {
    event.preventDefault();
    setSaved(false);
    const body = rows.map((r) => ({
      priority: r.priority,
      service: r.service || null,
      minutes: asNumber(r.minutes),
      warn_fraction: asNumber(r.warn),
    }));
    if (await save.run(() => api("/api/routing/deadlines", { method: "PUT", body }))) {
      await reload();
      setSaved(true);
    }
  }

  return (
    <form class="panel deadlines" onSubmit={submit} aria-label={t("deadlines")}>
      <h2>{t("deadlines")}</h2>
      <p class="muted">{t("deadlinesHint")}</p>
      <div class="table-scroll">
        <table>
          <TableHead columns={["priority", "service", "minutes", "warnFraction", "actions"]} />
          <tbody>
            {rows.map((row, i) => (
              <tr data-row={i}>
                <td>
                  <select aria-label={t("priority")} value={row.priority} onChange={(e) => change(i, { priority: e.currentTarget.value as Priority })}>
                    {PRIORITIES.map((p) => (
                      <option value={p}>{word("priority", p)}</option>
                    ))}
                  </select>
                </td>
                <td>
                  <select aria-label={t("service")} value={row.service} onChange={(e) => change(i, { service: e.currentTarget.value })}>
                    <option value="">{t("any")}</option>
                    {SERVICES.map((s) => (
                      <option value={s}>{word("service", s)}</option>
                    ))}
                  </select>
                </td>
                <td>
                  <input aria-label={t("minutes")} name="minutes" inputMode="numeric" value={row.minutes} onInput={(e) => change(i, { minutes: e.currentTarget.value })} />
                </td>
                <td>
                  <input aria-label={t("warnFraction")} name="warn" inputMode="decimal" value={row.warn} onInput={(e) => change(i, { warn: e.currentTarget.value })} />
                </td>
                <td>
                  <button type="button" onClick={() => setRows(rows.filter((_, j) => j !== i))}>
                    {t("remove")}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <FormError error={save.error} />
      {saved && (
        <p class="notice" role="status">
          {t("saved")}
        </p>
      )}
      <div class="form-actions">
        <button type="button" onClick={() => setRows([...rows, { priority: "routine", service: "", minutes: "1440", warn: "0.75" }])}>
          {t("addDeadline")}
        </button>
        <button type="submit" class="primary" disabled={save.busy}>
          {t("saveDeadlines")}
        </button>
      </div>
    </form>
  );
}
