// AE titles of each institution's modalities and PACS, with the host a title is tied to
// (calls from elsewhere are refused) and the port C-MOVE sends to (over TLS when marked).
import { useState } from "preact/hooks";
import { api } from "../../api";
import {
  AdminForm,
  type ApplicationEntity,
  CheckField,
  EditDeleteCell,
  FormError,
  type Institution,
  InstitutionSelect,
  LoadState,
  TableHead,
  TextField,
  deleteConfirmed,
  treeOrder,
  useLoad,
  useSave,
} from "./common";
import { t } from "./messages";

export function AeTitles() {
  const entities = useLoad<ApplicationEntity[]>("/api/application-entities");
  const places = useLoad<Institution[]>("/api/institutions");
  const [editing, setEditing] = useState<ApplicationEntity | null>(null);
  const remove = useSave();
  if (!entities.data || !places.data) return <LoadState error={entities.error ?? places.error} />;

  const all = entities.data;
  return (
    <div class="admin-split">
      <section class="panel">
        <h2>{t("aeTitles")}</h2>
        <FormError error={remove.error} />
        <div class="table-scroll">
          <table class="ae-table">
            <TableHead columns={["aeTitle", "host", "port", "tls", "description", "actions"]} />
            {treeOrder(places.data).map(({ institution, depth }) => {
              const own = all.filter((e) => e.institution_id === institution.id);
              return (
                <tbody data-institution={institution.code}>
                  <tr class="group-row">
                    <th colSpan={6} scope="rowgroup" style={{ paddingLeft: `${0.6 + depth * 1.2}rem` }}>
                      {institution.name} <span class="muted">{institution.code}</span>
                    </th>
                  </tr>
                  {own.map((e) => (
                    <tr data-ae={e.ae_title}>
                      <td class="mono">{e.ae_title}</td>
                      <td class="mono">{e.host ?? <span class="muted">{t("anyHost")}</span>}</td>
                      <td>{e.port ?? ""}</td>
                      <td>{e.tls ? "✓" : ""}</td>
                      <td>{e.description}</td>
                      <EditDeleteCell
                        onEdit={() => setEditing(e)}
                        onDelete={() => void deleteConfirmed(remove, `/api/application-entities/${e.id}`, e.ae_title, entities.reload)}
                      />
                    </tr>
                  ))}
                  {!own.length && (
                    <tr>
                      <td colSpan={6} class="muted">
                        {t("noAe")}
                      </td>
                    </tr>
                  )}
                </tbody>
              );
            })}
          </table>
        </div>
      </section>
      <AeForm
        key={editing ? `e${editing.id}` : "add"}
        entity={editing}
        institutions={places.data}
        done={async () => {
          await entities.reload();
          setEditing(null);
        }}
      />
    </div>
  );
}

function AeForm(props: { entity: ApplicationEntity | null; institutions: Institution[]; done: () => Promise<void> }) {
  const { entity, institutions } = props;
  const [title, setTitle] = useState(entity?.ae_title ?? "");
  const [place, setPlace] = useState(
    (entity && institutions.find((i) => i.id === entity.institution_id)?.code) || institutions[0]?.code || "",
  );
  const [host, setHost] = useState(entity?.host ?? "");
  const [port, setPort] = useState(entity?.port ? String(entity.port) : "");
  const [tls, setTls] = useState(entity?.tls ?? false);
  const [description, setDescription] = useState(entity?.description ?? "");
  const save = useSave();

  async function submit() {
    const body = {
      ae_title: title,
      institution_code: place,
      host: host.trim() || null,
      // Not a number: sent as typed so the hub's refusal names the field.
      port: port.trim() ? (/^\d+$/.test(port.trim()) ? Number(port) : port) : null,
      tls,
      description,
    };
    const ok = await save.run(() =>
      entity
        ? api(`/api/application-entities/${entity.id}`, { method: "PUT", body })
        : api("/api/application-entities", { body }),
    );
    if (ok) await props.done();
  }

  return (
    <AdminForm
      heading={entity ? t("editAe", { name: entity.ae_title }) : t("addAe")}
      save={save}
      submitLabel={entity ? t("save") : t("add")}
      onSubmit={submit}
      cancel={() => void props.done()}
      cancelButton={!!entity}
    >
      <TextField label={t("aeTitle")} name="ae_title" class="mono" value={title} onValue={setTitle} />
      <InstitutionSelect label={t("institution")} name="institution" institutions={institutions} value={place} onChange={setPlace} />
      <TextField label={t("host")} name="host" class="mono" value={host} placeholder={t("hostHint")} onValue={setHost} />
      <TextField label={t("port")} name="port" inputMode="numeric" value={port} onValue={setPort} />
      <CheckField label={t("tlsHint")} name="tls" checked={tls} onChecked={setTls} />
      <TextField label={t("description")} name="description" value={description} onValue={setDescription} />
    </AdminForm>
  );
}
