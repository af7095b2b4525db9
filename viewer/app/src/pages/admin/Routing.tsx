// The routing table: reading groups, and the ordered rules that send a case to one of them.
// The hub validates every save; its messages are shown as it words them.
import { useState } from "preact/hooks";
import { api } from "../../api";
import {
  AdminForm,
  CheckField,
  EditDeleteCell,
  FormError,
  type Institution,
  InstitutionSelect,
  LoadState,
  PRIORITIES,
  type Priority,
  SERVICES,
  type Service,
  TableHead,
  TextField,
  deleteConfirmed,
  listOrNull,
  useLoad,
  useSave,
  word,
} from "./common";
import { t } from "./messages";

interface Group {
  id: number;
  code: string;
  name: string;
  institution: string;
  level: number;
  services: Service[];
  lead: string | null;
  members: string[];
  enabled: boolean;
}

interface Conditions {
  modalities: string[] | null;
  sop_classes: string[] | null;
  body_parts: string[] | null;
  services: Service[] | null;
  priorities: Priority[] | null;
  institution: string | null;
  time: string | null;
}

interface Rule {
  id: number;
  position: number;
  name: string;
  enabled: boolean;
  group: string;
  when: Conditions;
}

function toggled<T>(list: T[], value: T, on: boolean): T[] {
  return on ? [...list.filter((v) => v !== value), value] : list.filter((v) => v !== value);
}

function Checks<T extends string>(props: { legend: string; name: string; options: T[]; prefix: string; value: T[]; onChange: (v: T[]) => void }) {
  return (
    <fieldset class="checks">
      <legend>{props.legend}</legend>
      {props.options.map((option) => (
        <label class="check">
          <input
            type="checkbox"
            name={props.name}
            value={option}
            checked={props.value.includes(option)}
            onChange={(e) => props.onChange(toggled(props.value, option, e.currentTarget.checked))}
          />
          {word(props.prefix, option)}
        </label>
      ))}
    </fieldset>
  );
}

function describe(when: Conditions): string {
  const parts: string[] = [];
  if (when.modalities) parts.push(when.modalities.join("/"));
  if (when.body_parts) parts.push(when.body_parts.join("/"));
  if (when.services) parts.push(when.services.map((s) => word("service", s)).join("/"));
  if (when.priorities) parts.push(when.priorities.map((p) => word("priority", p)).join("/"));
  if (when.institution) parts.push(when.institution);
  if (when.time) parts.push(when.time);
  if (when.sop_classes) parts.push(when.sop_classes.join("/"));
  return parts.join(" · ") || t("always");
}

type Editing = { kind: "group"; group: Group | null } | { kind: "rule"; rule: Rule | null };

export function Routing() {
  const groups = useLoad<Group[]>("/api/routing/groups");
  const rules = useLoad<Rule[]>("/api/routing/rules");
  const places = useLoad<Institution[]>("/api/institutions");
  const [editing, setEditing] = useState<Editing>({ kind: "rule", rule: null });
  const remove = useSave();
  if (!groups.data || !rules.data || !places.data) {
    return <LoadState error={groups.error ?? rules.error ?? places.error} />;
  }

  const nameOf = (code: string) => groups.data?.find((g) => g.code === code)?.name ?? code;
  const done = async () => {
    await Promise.all([groups.reload(), rules.reload()]);
    setEditing({ kind: "rule", rule: null });
  };

  return (
    <div class="admin-split">
      <div class="stack">
        <FormError error={remove.error} />
        <section class="panel">
          <div class="section-head">
            <h2>{t("rules")}</h2>
            <button type="button" onClick={() => setEditing({ kind: "rule", rule: null })}>
              {t("addRule")}
            </button>
          </div>
          <div class="table-scroll">
            <table class="rules-table">
              <TableHead columns={["position", "name", "when", "group", "status", "actions"]} />
              <tbody>
                {rules.data.map((rule) => (
                  <tr data-rule={rule.id} class={rule.enabled ? "" : "inactive"}>
                    <td>{rule.position}</td>
                    <td>{rule.name}</td>
                    <td>{describe(rule.when)}</td>
                    <td>{nameOf(rule.group)}</td>
                    <td>{rule.enabled ? t("enabled") : t("disabled")}</td>
                    <EditDeleteCell
                      onEdit={() => setEditing({ kind: "rule", rule })}
                      onDelete={() => void deleteConfirmed(remove, `/api/routing/rules/${rule.id}`, rule.name || String(rule.id), rules.reload)}
                    />
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
        <section class="panel">
          <div class="section-head">
            <h2>{t("groups")}</h2>
            <button type="button" onClick={() => setEditing({ kind: "group", group: null })}>
              {t("addGroup")}
            </button>
          </div>
          <div class="table-scroll">
            <table class="groups-table">
              <TableHead columns={["code", "name", "institution", "services", "lead", "membersShort", "actions"]} />
              <tbody>
                {groups.data.map((group) => (
                  <tr data-group={group.code} class={group.enabled ? "" : "inactive"}>
                    <td class="mono">{group.code}</td>
                    <td>{group.name}</td>
                    <td>{group.institution}</td>
                    <td>{group.services.length ? group.services.map((s) => word("service", s)).join("、") : t("any")}</td>
                    <td>{group.lead ?? ""}</td>
                    <td>{group.members.join(", ")}</td>
                    <EditDeleteCell
                      onEdit={() => setEditing({ kind: "group", group })}
                      onDelete={() => void deleteConfirmed(remove, `/api/routing/groups/${group.id}`, group.name, groups.reload)}
                    />
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
      </div>
      {editing.kind === "rule" ? (
        <RuleForm key={`r${editing.rule?.id ?? "new"}`} rule={editing.rule} groups={groups.data} institutions={places.data} done={done} />
      ) : (
        <GroupForm key={`g${editing.group?.id ?? "new"}`} group={editing.group} institutions={places.data} done={done} />
      )}
    </div>
  );
}

function RuleForm(props: { rule: Rule | null; groups: Group[]; institutions: Institution[]; done: () => Promise<void> }) {
  const { rule } = props;
  const [name, setName] = useState(rule?.name ?? "");
  const [group, setGroup] = useState(rule?.group ?? props.groups[0]?.code ?? "");
  const [position, setPosition] = useState(rule ? String(rule.position) : "");
  const [enabled, setEnabled] = useState(rule?.enabled ?? true);
  const [modalities, setModalities] = useState(rule?.when.modalities?.join(", ") ?? "");
  const [bodyParts, setBodyParts] = useState(rule?.when.body_parts?.join(", ") ?? "");
  const [services, setServices] = useState<Service[]>(rule?.when.services ?? []);
  const [priorities, setPriorities] = useState<Priority[]>(rule?.when.priorities ?? []);
  const [institution, setInstitution] = useState(rule?.when.institution ?? "");
  const [time, setTime] = useState(rule?.when.time ?? "");
  const save = useSave();

  async function submit() {
    const body = {
      name,
      group,
      enabled,
      position: position.trim() ? (/^-?\d+$/.test(position.trim()) ? Number(position) : position) : null,
      when: {
        modalities: listOrNull(modalities)?.map((m) => m.toUpperCase()) ?? null,
        sop_classes: rule?.when.sop_classes ?? null, // kept as loaded; not edited here
        body_parts: listOrNull(bodyParts)?.map((b) => b.toUpperCase()) ?? null,
        services: services.length ? services : null,
        priorities: priorities.length ? priorities : null,
        institution: institution || null,
        time: time.trim() || null,
      },
    };
    const ok = await save.run(() =>
      rule ? api(`/api/routing/rules/${rule.id}`, { method: "PUT", body }) : api("/api/routing/rules", { body }),
    );
    if (ok) await props.done();
  }

  return (
    <AdminForm
      heading={rule ? t("editRule", { name: rule.name || String(rule.id) }) : t("addRule")}
      save={save}
      submitLabel={rule ? t("save") : t("add")}
      onSubmit={submit}
      cancel={() => void props.done()}
      cancelButton={!!rule}
    >
      <TextField label={t("name")} name="name" value={name} onValue={setName} />
      <label>
        {t("group")}
        <select name="group" value={group} onChange={(e) => setGroup(e.currentTarget.value)}>
          {props.groups.map((g) => (
            <option value={g.code}>
              {g.name} ({g.code})
            </option>
          ))}
        </select>
      </label>
      <TextField label={t("position")} name="position" inputMode="numeric" value={position} onValue={setPosition} />
      <TextField label={t("modalities")} name="modalities" value={modalities} onValue={setModalities} />
      <TextField label={t("bodyParts")} name="body_parts" value={bodyParts} onValue={setBodyParts} />
      <Checks legend={t("services")} name="services" options={SERVICES} prefix="service" value={services} onChange={setServices} />
      <Checks legend={t("priorities")} name="priorities" options={PRIORITIES} prefix="priority" value={priorities} onChange={setPriorities} />
      <InstitutionSelect label={t("sendingInstitution")} name="institution" institutions={props.institutions} value={institution} onChange={setInstitution} emptyLabel={t("any")} />
      <TextField label={t("timeWindow")} name="time" value={time} placeholder="08:00-17:30" onValue={setTime} />
      <CheckField label={t("enabled")} name="enabled" checked={enabled} onChecked={setEnabled} />
    </AdminForm>
  );
}

function GroupForm(props: { group: Group | null; institutions: Institution[]; done: () => Promise<void> }) {
  const { group } = props;
  const [code, setCode] = useState(group?.code ?? "");
  const [name, setName] = useState(group?.name ?? "");
  const [institution, setInstitution] = useState(group?.institution ?? props.institutions[0]?.code ?? "");
  const [level, setLevel] = useState(String(group?.level ?? 0));
  const [services, setServices] = useState<Service[]>(group?.services ?? []);
  const [lead, setLead] = useState(group?.lead ?? "");
  const [members, setMembers] = useState(group?.members.join(", ") ?? "");
  const [enabled, setEnabled] = useState(group?.enabled ?? true);
  const save = useSave();

  async function submit() {
    const body = {
      code,
      name,
      institution,
      level: /^-?\d+$/.test(level.trim()) ? Number(level) : level,
      services,
      lead: lead.trim() || null,
      members: listOrNull(members) ?? [],
      enabled,
    };
    const ok = await save.run(() =>
      group ? api(`/api/routing/groups/${group.id}`, { method: "PUT", body }) : api("/api/routing/groups", { body }),
    );
    if (ok) await props.done();
  }

  return (
    <AdminForm
      heading={group ? t("editGroup", { name: group.name }) : t("addGroup")}
      save={save}
      submitLabel={group ? t("save") : t("add")}
      onSubmit={submit}
      cancel={() => void props.done()}
      cancelButton={!!group}
    >
      <TextField label={t("code")} name="code" class="mono" value={code} onValue={setCode} />
      <TextField label={t("name")} name="name" value={name} onValue={setName} />
      <InstitutionSelect label={t("institution")} name="institution" institutions={props.institutions} value={institution} onChange={setInstitution} />
      <TextField label={t("groupLevel")} name="level" inputMode="numeric" value={level} onValue={setLevel} />
      <Checks legend={t("services")} name="services" options={SERVICES} prefix="service" value={services} onChange={setServices} />
      <TextField label={t("lead")} name="lead" value={lead} onValue={setLead} />
      <TextField label={t("members")} name="members" value={members} onValue={setMembers} />
      <CheckField label={t("enabled")} name="enabled" checked={enabled} onChecked={setEnabled} />
    </AdminForm>
  );
}
