// Who is logged in and at which institution, the pages this role uses, the language switch.
import { useLocation } from "preact-iso";
import { LOCALES, defineMessages, locale, setLocale } from "../i18n";
import { can, logout, me } from "../session";

const t = defineMessages(
  {
    brand: "医共体远程医疗",
    desk: "检查申请",
    worklist: "阅片工作列表",
    consults: "远程会诊",
    admin: "系统管理",
    dashboard: "运行统计",
    logout: "退出",
    language: "语言",
  },
  {
    brand: "Consortium Telehealth",
    desk: "Clinic desk",
    worklist: "Worklist",
    consults: "Consults",
    admin: "Administration",
    dashboard: "Dashboard",
    logout: "Log out",
    language: "Language",
  },
);

const LOCALE_NAMES = { "zh-CN": "中文", en: "English" } as const;

export function LocaleSwitch() {
  return (
    <select
      aria-label={t("language")}
      value={locale.value}
      onChange={(e) => setLocale(e.currentTarget.value as (typeof LOCALES)[number])}
    >
      {LOCALES.map((l) => (
        <option value={l}>{LOCALE_NAMES[l]}</option>
      ))}
    </select>
  );
}

export function Header() {
  const user = me.value;
  const { path } = useLocation();
  if (!user) return null;
  const links: [string, string, boolean][] = [
    ["/app/desk", t("desk"), can("request_reading")],
    ["/app/worklist", t("worklist"), can("read_cases")],
    ["/app/consults", t("consults"), true], // anyone may be invited to a consult
    ["/app/dashboard", t("dashboard"), can("view_metrics")],
    ["/app/admin", t("admin"), can("administer")],
  ];
  return (
    <header class="topbar">
      <a class="brand" href="/app/">
        {t("brand")}
      </a>
      <nav>
        {links
          .filter(([, , shown]) => shown)
          .map(([href, label]) => (
            <a href={href} aria-current={path.startsWith(href) ? "page" : undefined}>
              {label}
            </a>
          ))}
      </nav>
      <div class="who" data-testid="who">
        <span class="user-name">{user.display_name || user.username}</span>
        <span class="institution">{user.institution_name}</span>
      </div>
      <LocaleSwitch />
      <button type="button" onClick={() => void logout()}>
        {t("logout")}
      </button>
    </header>
  );
}
