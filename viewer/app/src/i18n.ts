// Chinese first, English switchable. Each module keeps its own messages next to its code
// (`defineMessages`), so a page and its words change together; `t` re-renders on a switch
// because it reads the `locale` signal.
import { signal } from "@preact/signals";

export type Locale = "zh-CN" | "en";
export const LOCALES: Locale[] = ["zh-CN", "en"];
const STORAGE_KEY = "telehealth.locale";

function initialLocale(): Locale {
  const saved = localStorage.getItem(STORAGE_KEY);
  return saved === "en" || saved === "zh-CN" ? saved : "zh-CN";
}

export const locale = signal<Locale>(initialLocale());

export function setLocale(next: Locale): void {
  locale.value = next;
  localStorage.setItem(STORAGE_KEY, next);
  document.documentElement.lang = next;
}
document.documentElement.lang = locale.value;

type Vars = Record<string, string | number>;

/** Messages of one module: the zh-CN table defines the keys, English must have the same. */
export function defineMessages<K extends string>(
  zh: Record<K, string>,
  en: Record<K, string>,
): (key: K, vars?: Vars) => string {
  const tables: Record<Locale, Record<K, string>> = { "zh-CN": zh, en };
  return (key, vars) => {
    const text = tables[locale.value][key] ?? zh[key] ?? key;
    return vars ? text.replace(/\{(\w+)\}/g, (_, name: string) => String(vars[name] ?? "")) : text;
  };
}

/** Dates and times as the reader expects them in the current locale (the hub sends UTC). */
export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) return "";
  const date = new Date(iso);
  return new Intl.DateTimeFormat(locale.value, {
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    hour12: false,
  }).format(date);
}

/** A DICOM DA value (YYYYMMDD) as a date. */
export function formatDicomDate(da: string | null | undefined): string {
  if (!da || da.length < 8) return da ?? "";
  return `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}`;
}
