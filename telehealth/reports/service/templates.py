"""Report templates from the package's YAML file, field validation, ECG prefill."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import Instance, Series
from telehealth.cases.models import Case, CaseService
from telehealth.reports.service.common import InvalidReport, TemplateNotFound

TEMPLATES_FILE = Path(__file__).resolve().parent.parent / "templates.yaml"


class FieldType(StrEnum):
    TEXT = "text"
    CHOICE = "choice"
    NUMBER = "number"


@dataclass(frozen=True)
class TemplateField:
    key: str
    label: str
    label_en: str
    type: FieldType
    choices: tuple[str, ...] = ()
    unit: str = ""
    min: float | None = None
    max: float | None = None
    default: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "label_en": self.label_en,
            "type": str(self.type),
            "choices": list(self.choices),
            "unit": self.unit,
            "min": self.min,
            "max": self.max,
            "default": self.default,
        }


@dataclass(frozen=True)
class Template:
    code: str
    service: CaseService
    title: str
    title_en: str
    modalities: tuple[str, ...] = ()
    fields: tuple[TemplateField, ...] = field(default_factory=tuple)
    findings: str = ""
    impression: str = ""


def parse_templates(text: str) -> dict[str, Template]:
    """Raises InvalidReport for a malformed file (it ships in the package: a test loads it)."""
    try:
        raw = yaml.safe_load(text) or {}
        templates: dict[str, Template] = {}
        for item in raw["templates"]:
            fields = tuple(
                TemplateField(
                    key=f["key"],
                    label=str(f["label"]),
                    label_en=str(f.get("label_en", "")),
                    type=FieldType(f["type"]),
                    choices=tuple(str(c) for c in f.get("choices") or ()),
                    unit=str(f.get("unit") or ""),
                    min=f.get("min"),
                    max=f.get("max"),
                    default=f.get("default"),
                )
                for f in item.get("fields") or ()
            )
            template = Template(
                code=item["code"],
                service=CaseService(item["service"]),
                title=item["title"],
                title_en=item.get("title_en", ""),
                modalities=tuple(m.upper() for m in item.get("modalities") or ()),
                fields=fields,
                findings=item.get("findings") or "",
                impression=item.get("impression") or "",
            )
            templates[template.code] = template
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise InvalidReport(f"bad report template file: {exc}") from exc
    return templates


@functools.lru_cache(maxsize=1)
def _packaged() -> dict[str, Template]:
    return parse_templates(TEMPLATES_FILE.read_text(encoding="utf-8"))


def list_templates(service: CaseService | None = None) -> list[Template]:
    return [t for t in _packaged().values() if service is None or t.service == service]


def get_template(code: str) -> Template:
    try:
        return _packaged()[code]
    except KeyError:
        raise TemplateNotFound(f"no report template {code!r}") from None


def validate_values(defs: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """The values checked against the field definitions; None clears a field.

    Raises InvalidReport for an unknown key, a choice not offered, a non-number or a number
    out of range.
    """
    by_key = {d["key"]: d for d in defs}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        spec = by_key.get(key)
        if spec is None:
            raise InvalidReport(f"unknown field {key!r}")
        if value is None:
            clean[key] = None
            continue
        kind = FieldType(spec["type"])
        if kind == FieldType.NUMBER:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidReport(f"{key} must be a number")
            if not math.isfinite(value):
                raise InvalidReport(f"{key} must be finite")
            low, high = spec.get("min"), spec.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                raise InvalidReport(f"{key} must be within [{low}, {high}]")
        elif kind == FieldType.CHOICE:
            if value not in spec.get("choices", []):
                raise InvalidReport(f"{key} must be one of {spec.get('choices')}")
        elif not isinstance(value, str):
            raise InvalidReport(f"{key} must be text")
        clean[key] = value
    return clean


def initial_values(session: Session, template: Template, case: Case) -> dict[str, Any]:
    """Defaults, and for ECG templates the ECG measurements of the study where present."""
    values = {f.key: f.default for f in template.fields if f.default is not None}
    if template.service == CaseService.ECG:
        numbers = {f.key for f in template.fields if f.type == FieldType.NUMBER}
        for key, value in ecg_measurements(session, case.study_pk).items():
            if key in numbers and isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = round(float(value), 1)
    return values


def ecg_measurements(session: Session, study_pk: int) -> dict[str, Any]:
    """The values that count (a reader's over the automatic) of the study's first measured ECG.

    Read-only use of the ECG domain; a hub without it, or an ECG not measured yet, gives {}.
    """
    try:
        from telehealth.ecg.models import EcgMeasurement
        from telehealth.ecg.service.results import effective_values
    except ImportError:  # the ECG domain is optional for reports
        return {}
    kept = session.scalars(
        select(EcgMeasurement)
        .join(Instance, Instance.id == EcgMeasurement.instance_pk)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study_pk)
        .order_by(Instance.id)
        .limit(1)
    ).first()
    if kept is None:
        return {}
    return effective_values(kept.automatic or {}, kept.reader_values)
