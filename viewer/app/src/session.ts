// Who is logged in. Loaded once from /api/auth/me; pages read `me.value`.
import { signal } from "@preact/signals";
import { api, sessionExpired } from "./api";

export type Role = "technician" | "specialist" | "consult_doctor" | "admin";

export interface Me {
  id: number;
  username: string;
  display_name: string;
  role: Role;
  institution_id: number;
  institution_code: string;
  institution_name: string;
  permissions: string[];
  active: boolean;
}

/** undefined: not known yet; null: nobody logged in. */
export const me = signal<Me | null | undefined>(undefined);

export async function loadMe(): Promise<void> {
  try {
    me.value = await api<Me>("/api/auth/me");
    sessionExpired.value = false;
  } catch {
    me.value = null;
  }
}

export async function login(username: string, password: string): Promise<void> {
  await api("/api/auth/login", { body: { username, password } });
  await loadMe();
}

export async function logout(): Promise<void> {
  try {
    await api("/api/auth/logout", { method: "POST" });
  } finally {
    me.value = null;
  }
}

export function can(permission: string): boolean {
  return me.value?.permissions.includes(permission) ?? false;
}

/** Where each role starts. */
export function homePath(role: Role): string {
  switch (role) {
    case "technician":
      return "/app/desk";
    case "specialist":
      return "/app/worklist";
    case "admin":
      return "/app/admin";
    default:
      return "/app/worklist";
  }
}
