import { defineMessages } from "../i18n";

const t = defineMessages({ missing: "页面不存在" }, { missing: "Page not found" });

export function NotFound() {
  return <p class="empty">{t("missing")}</p>;
}
