"""API shapes for login, users and audit."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from telehealth.auth.models import AuditOutcome, Role


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
    role: Role
    institution_code: str
    display_name: str = ""


class UserUpdateIn(BaseModel):
    """Only the fields given change."""

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    institution_code: str | None = Field(default=None, min_length=1, max_length=64)
    active: bool | None = None


class PasswordResetIn(BaseModel):
    password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    display_name: str
    role: Role
    institution_id: int
    active: bool


class MeOut(UserOut):
    """Who is logged in, for the web app's header and menus."""

    institution_code: str
    institution_name: str
    permissions: list[str]


class LoginOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (OAuth2 token type, not a secret)
    expires_in: int
    user: UserOut


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: datetime
    actor: str
    action: str
    outcome: AuditOutcome
    object_type: str
    object_id: str
    source_address: str
    detail: str
