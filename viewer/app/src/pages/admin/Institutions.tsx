// The consortium tree (county → township → village): add below any node, rename, move.
import { useState } from "preact/hooks";
import { api } from "../../api";
import {
  AdminForm,
  type Institution,
  InstitutionSelect,
  LEVELS,
  type Level,
  LoadState,
  TextField,
  useLoad,
  useSave,
  word,
} from "./common";
import { t } from "./messages";

// The level a new child usually has.
const CHILD_LEVEL: Record<Level, Level> = {
  province: "city",
  city: "county",
  county: "township",
  township: "village",
  village: "other",
  other: "other",
};

type Editing = { kind: "add"; parent: Institution | null } | { kind: "edit"; institution: Institution };

export function Institutions() {
  const { data, error, reload } = useLoad<Institution[]>("/api/institutions");
  const [editing, setEditing] = useState<Editing>({ kind: "add", parent: null });
  if (!data) return <LoadState error={error} />;
  const children = new Map<number | null, Institution[]>();
  for (const inst of data) children.set(inst.parent_id, [...(children.get(inst.parent_id) ?? []), inst]);

  const renderNodes = (parent: number | null, seen: Set<number>) => {
    const nodes = (children.get(parent) ?? []).filter((i) => !seen.has(i.id));
    if (!nodes.length) return null;
    return (
      <ul aria-label={parent === null ? t("tree") : undefined} class={parent === null ? "tree-root" : undefined}>
        {nodes.map((inst) => {
          const below = new Set(seen).add(inst.id);
          return (
            <li data-code={inst.code}>
              <div class="tree-node">
                <span class="badge level">{word("level", inst.level)}</span>
                <span class="node-name">{inst.name}</span>
                <span class="muted node-code">{inst.code}</span>
                <span class="node-actions">
                  <button type="button" onClick={() => setEditing({ kind: "add", parent: inst })}>
                    {t("addBelow")}
                  </button>
                  <button type="button" onClick={() => setEditing({ kind: "edit", institution: inst })}>
                    {t("edit")}
                  </button>
                </span>
              </div>
              {renderNodes(inst.id, below)}
            </li>
          );
        })}
      </ul>
    );
  };

  return (
    <div class="admin-split">
      <section class="panel tree">
        <h2>{t("tree")}</h2>
        {renderNodes(null, new Set())}
      </section>
      <InstitutionForm
        key={editing.kind === "edit" ? `e${editing.institution.id}` : `a${editing.parent?.id ?? "root"}`}
        editing={editing}
        institutions={data}
        done={async () => {
          await reload();
          setEditing({ kind: "add", parent: null });
        }}
      />
    </div>
  );
}

function InstitutionForm(props: { editing: Editing; institutions: Institution[]; done: () => Promise<void> }) {
  const { editing, institutions } = props;
  const current = editing.kind === "edit" ? editing.institution : null;
  const parentOf = (inst: Institution | null) =>
    inst?.parent_id != null ? institutions.find((i) => i.id === inst.parent_id)?.code ?? "" : "";
  const [code, setCode] = useState("");
  const [name, setName] = useState(current?.name ?? "");
  const [level, setLevel] = useState<Level>(
    current?.level ?? (editing.kind === "add" && editing.parent ? CHILD_LEVEL[editing.parent.level] : "county"),
  );
  const [parent, setParent] = useState(
    current ? parentOf(current) : editing.kind === "add" ? editing.parent?.code ?? "" : "",
  );
  const save = useSave();

  // A node cannot move below itself or its descendants.
  const exclude = new Set<number>();
  if (current) {
    const stack = [current.id];
    while (stack.length) {
      const id = stack.pop()!;
      exclude.add(id);
      for (const inst of institutions) if (inst.parent_id === id && !exclude.has(inst.id)) stack.push(inst.id);
    }
  }

  async function submit() {
    const ok = await save.run(() =>
      current
        ? api(`/api/institutions/${current.id}`, {
            method: "PUT",
            body: { name, level, parent_code: parent || null },
          })
        : api("/api/institutions", { body: { code, name, level, parent_code: parent || null } }),
    );
    if (ok) await props.done();
  }

  const heading = current
    ? t("editInstitution", { name: current.name })
    : editing.kind === "add" && editing.parent
      ? t("newBelow", { name: editing.parent.name })
      : t("addInstitution");
  return (
    <AdminForm
      heading={heading}
      save={save}
      submitLabel={current ? t("save") : t("add")}
      onSubmit={submit}
      cancel={() => void props.done()}
      cancelButton={!!(current || (editing.kind === "add" && editing.parent))}
    >
      {!current && <TextField label={t("code")} name="code" value={code} onValue={setCode} required maxLength={64} />}
      <TextField label={t("name")} name="name" value={name} onValue={setName} required maxLength={200} />
      <label>
        {t("level")}
        <select name="level" value={level} onChange={(e) => setLevel(e.currentTarget.value as Level)}>
          {LEVELS.map((l) => (
            <option value={l}>{word("level", l)}</option>
          ))}
        </select>
      </label>
      <InstitutionSelect
        label={t("parent")}
        name="parent"
        institutions={institutions}
        value={parent}
        onChange={setParent}
        emptyLabel={t("noParent")}
        exclude={exclude}
      />
    </AdminForm>
  );
}
