// Users: filter by text, role, institution, status; add, edit, deactivate/reactivate, reset a
// password. The hub voids a user's sessions when his role, institution or status changes.
import { useMemo, useState } from "preact/hooks";
import { api } from "../../api";
import { me } from "../../session";
import {
  AdminForm,
  FormError,
  type Institution,
  InstitutionSelect,
  LoadState,
  ROLES,
  type Role,
  TableHead,
  TextField,
  type User,
  useLoad,
  useSave,
  word,
} from "./common";
import { t } from "./messages";

type Editing = { kind: "add" } | { kind: "edit"; user: User } | { kind: "password"; user: User };

export function Users() {
  const users = useLoad<User[]>("/api/users");
  const places = useLoad<Institution[]>("/api/institutions");
  const [query, setQuery] = useState("");
  const [role, setRole] = useState("");
  const [place, setPlace] = useState("");
  const [status, setStatus] = useState("");
  const [editing, setEditing] = useState<Editing>({ kind: "add" });
  const [notice, setNotice] = useState("");
  const toggle = useSave();

  const byId = useMemo(() => new Map((places.data ?? []).map((i) => [i.id, i])), [places.data]);
  if (!users.data || !places.data) return <LoadState error={users.error ?? places.error} />;

  const needle = query.trim().toLowerCase();
  const shown = users.data.filter(
    (u) =>
      (!needle || u.username.toLowerCase().includes(needle) || u.display_name.toLowerCase().includes(needle)) &&
      (!role || u.role === role) &&
      (!place || byId.get(u.institution_id)?.code === place) &&
      (!status || String(u.active) === status),
  );

  async function setActive(user: User, active: boolean) {
    setNotice("");
    const ok = await toggle.run(() => api(`/api/users/${user.id}`, { method: "PATCH", body: { active } }));
    if (ok) await users.reload();
  }

  return (
    <div class="admin-split">
      <section class="panel">
        <h2>{t("users")}</h2>
        <div class="filters" role="search">
          <label>
            {t("search")}
            <input type="search" name="q" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
          </label>
          <label>
            {t("role")}
            <select name="role-filter" value={role} onChange={(e) => setRole(e.currentTarget.value)}>
              <option value="">{t("allRoles")}</option>
              {ROLES.map((r) => (
                <option value={r}>{word("role", r)}</option>
              ))}
            </select>
          </label>
          <InstitutionSelect
            label={t("institution")}
            name="institution-filter"
            institutions={places.data}
            value={place}
            onChange={setPlace}
            emptyLabel={t("allInstitutions")}
          />
          <label>
            {t("status")}
            <select name="status-filter" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
              <option value="">{t("allStatuses")}</option>
              <option value="true">{t("active")}</option>
              <option value="false">{t("inactive")}</option>
            </select>
          </label>
        </div>
        <p class="muted" aria-live="polite">
          {t("usersShown", { n: shown.length, total: users.data.length })}
        </p>
        {notice && (
          <p class="notice" role="status">
            {notice}
          </p>
        )}
        <FormError error={toggle.error} />
        <div class="table-scroll">
          <table class="users-table">
            <TableHead columns={["username", "displayName", "role", "institution", "status", "actions"]} />
            <tbody>
              {shown.map((u) => (
                <tr data-username={u.username} class={u.active ? "" : "inactive"}>
                  <td>{u.username}</td>
                  <td>{u.display_name}</td>
                  <td>{word("role", u.role)}</td>
                  <td>{byId.get(u.institution_id)?.name ?? u.institution_id}</td>
                  <td>
                    <span class={`badge ${u.active ? "ok" : "off"}`}>{u.active ? t("active") : t("inactive")}</span>
                  </td>
                  <td class="row-actions">
                    <button type="button" onClick={() => setEditing({ kind: "edit", user: u })}>
                      {t("edit")}
                    </button>
                    {u.id !== me.value?.id &&
                      (u.active ? (
                        <button type="button" class="danger" onClick={() => void setActive(u, false)}>
                          {t("deactivate")}
                        </button>
                      ) : (
                        <button type="button" onClick={() => void setActive(u, true)}>
                          {t("reactivate")}
                        </button>
                      ))}
                    <button type="button" onClick={() => setEditing({ kind: "password", user: u })}>
                      {t("resetPassword")}
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {!shown.length && <p class="empty">{t("noUsers")}</p>}
      </section>
      {editing.kind === "password" ? (
        <PasswordForm
          key={`p${editing.user.id}`}
          user={editing.user}
          done={(message) => {
            setNotice(message);
            setEditing({ kind: "add" });
          }}
        />
      ) : (
        <UserForm
          key={editing.kind === "edit" ? `e${editing.user.id}` : "add"}
          user={editing.kind === "edit" ? editing.user : null}
          institutions={places.data}
          done={async () => {
            await users.reload();
            setEditing({ kind: "add" });
          }}
        />
      )}
    </div>
  );
}

function UserForm(props: { user: User | null; institutions: Institution[]; done: () => Promise<void> }) {
  const { user, institutions } = props;
  const codeOf = (id: number) => institutions.find((i) => i.id === id)?.code ?? "";
  const [username, setUsername] = useState("");
  const [displayName, setDisplayName] = useState(user?.display_name ?? "");
  const [password, setPassword] = useState("");
  const [role, setRole] = useState<Role>(user?.role ?? "technician");
  const [place, setPlace] = useState(user ? codeOf(user.institution_id) : (institutions[0]?.code ?? ""));
  const save = useSave();

  async function submit() {
    const ok = await save.run(() =>
      user
        ? api(`/api/users/${user.id}`, {
            method: "PATCH",
            body: { display_name: displayName, role, institution_code: place },
          })
        : api("/api/users", {
            body: { username, password, role, institution_code: place, display_name: displayName },
          }),
    );
    if (ok) await props.done();
  }

  return (
    <AdminForm
      heading={user ? t("editUser", { name: user.username }) : t("addUser")}
      save={save}
      submitLabel={user ? t("save") : t("add")}
      onSubmit={submit}
      cancel={() => void props.done()}
      cancelButton={!!user}
    >
      {!user && <TextField label={t("username")} name="username" value={username} onValue={setUsername} required autoComplete="off" />}
      <TextField label={t("displayName")} name="display_name" value={displayName} onValue={setDisplayName} />
      {!user && (
        <label>
          {t("password")}
          <input type="password" name="password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} autoComplete="new-password" required />
        </label>
      )}
      <label>
        {t("role")}
        <select name="role" value={role} onChange={(e) => setRole(e.currentTarget.value as Role)} disabled={user?.id === me.value?.id}>
          {ROLES.map((r) => (
            <option value={r}>{word("role", r)}</option>
          ))}
        </select>
      </label>
      <InstitutionSelect label={t("institution")} name="institution" institutions={institutions} value={place} onChange={setPlace} />
    </AdminForm>
  );
}

function PasswordForm(props: { user: User; done: (message: string) => void }) {
  const [password, setPassword] = useState("");
  const save = useSave();
  async function submit() {
    const ok = await save.run(() => api(`/api/users/${props.user.id}/password`, { body: { password } }));
    if (ok) props.done(t("passwordReset", { name: props.user.username }));
  }
  return (
    <AdminForm
      heading={t("resetFor", { name: props.user.username })}
      save={save}
      submitLabel={t("resetPassword")}
      onSubmit={submit}
      cancel={() => props.done("")}
      cancelButton
    >
      <label>
        {t("newPassword")}
        <input type="password" name="new_password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} autoComplete="new-password" />
      </label>
    </AdminForm>
  );
}
