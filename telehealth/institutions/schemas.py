"""API shapes for the consortium tree and AE titles."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from telehealth.institutions.models import InstitutionLevel


class InstitutionIn(BaseModel):
    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    level: InstitutionLevel
    parent_code: str | None = None


class InstitutionUpdateIn(BaseModel):
    """Rename or move; the code never changes (routing rules and AE titles name it)."""

    name: str = Field(min_length=1, max_length=200)
    level: InstitutionLevel
    parent_code: str | None = None


class InstitutionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    code: str
    name: str
    level: InstitutionLevel
    parent_id: int | None


class ApplicationEntityIn(BaseModel):
    ae_title: str = Field(min_length=1, max_length=16)
    institution_code: str
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    # C-MOVE to this AE over TLS. Left out of an update: unchanged (clients that predate it).
    tls: bool | None = None
    description: str = ""


class ApplicationEntityOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ae_title: str
    institution_id: int
    host: str | None
    port: int | None
    tls: bool
    description: str
