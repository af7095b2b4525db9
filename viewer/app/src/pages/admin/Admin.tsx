// Consortium administration (admins only): institutions, users, AE titles, routing, deadlines.
// Each section is its own component; the tab bar is plain links so the URL names the section.
import { useRoute } from "preact-iso";
import { can } from "../../session";
import { AeTitles } from "./AeTitles";
import { Deadlines } from "./Deadlines";
import { NotAllowed } from "./common";
import { Institutions } from "./Institutions";
import { t } from "./messages";
import { Routing } from "./Routing";
import { Users } from "./Users";
import "./admin.css";

const SECTIONS = {
  institutions: { label: "institutions", view: Institutions },
  users: { label: "users", view: Users },
  "ae-titles": { label: "aeTitles", view: AeTitles },
  routing: { label: "routing", view: Routing },
  deadlines: { label: "deadlines", view: Deadlines },
} as const;
type Section = keyof typeof SECTIONS;

export function Admin() {
  const { params } = useRoute();
  if (!can("administer")) return <NotAllowed />;
  const section: Section = params.section in SECTIONS ? (params.section as Section) : "institutions";
  const View = SECTIONS[section].view;
  return (
    <div class="admin">
      <h1>{t("title")}</h1>
      <nav class="admin-tabs" aria-label={t("title")}>
        {(Object.keys(SECTIONS) as Section[]).map((key) => (
          <a href={`/app/admin/${key}`} aria-current={key === section ? "page" : undefined}>
            {t(SECTIONS[key].label)}
          </a>
        ))}
      </nav>
      <View />
    </div>
  );
}
