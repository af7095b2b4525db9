import { useState } from "preact/hooks";
import { ApiError } from "../api";
import { LocaleSwitch } from "../components/Header";
import { defineMessages } from "../i18n";
import { login } from "../session";

const t = defineMessages(
  {
    title: "医共体远程医疗平台",
    subtitle: "基层检查 · 上级诊断",
    username: "用户名",
    password: "密码",
    submit: "登录",
    busy: "正在登录…",
    bad: "用户名或密码不正确",
    failed: "登录失败：{detail}",
  },
  {
    title: "County Consortium Telehealth",
    subtitle: "Examined locally, read by the county",
    username: "Username",
    password: "Password",
    submit: "Log in",
    busy: "Logging in…",
    bad: "Wrong username or password",
    failed: "Login failed: {detail}",
  },
);

export function LoginPage() {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      await login(username.trim(), password);
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401 ? t("bad") : t("failed", { detail: String((e as Error).message) }));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div class="login">
      <form class="login-card" onSubmit={submit} aria-labelledby="login-title">
        <div class="login-locale">
          <LocaleSwitch />
        </div>
        <h1 id="login-title">{t("title")}</h1>
        <p class="muted">{t("subtitle")}</p>
        <label>
          {t("username")}
          <input
            name="username"
            autoComplete="username"
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
            required
            autoFocus
          />
        </label>
        <label>
          {t("password")}
          <input
            name="password"
            type="password"
            autoComplete="current-password"
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
            required
          />
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? t("busy") : t("submit")}
        </button>
      </form>
    </div>
  );
}
