"""The retention file (TELEHEALTH_RETENTION_FILE), YAML:

    rules:
      - name: ecg-raw-10y          # shown in logs and the audit trail
        modalities: [ECG]          # any of the series' modalities (empty: any)
        sop_classes: []            # any of these SOP classes (empty: any)
        institutions: []           # sending institution codes (empty: all)
        keep_days: 3650            # from when the hub received each instance
      - name: us-cine-5y
        modalities: [US]
        keep_days: 1825
    audit_keep_days: 5475          # at least the longest rule; unset: audit kept for ever

What expires is the instance's object in the store (its pixel data or waveform); its index
rows, the study, cases and signed reports stay, so the record shows what was there and when
it was removed. No rule: nothing is ever removed.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, model_validator


class RetentionRule(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    modalities: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    institutions: list[str] = Field(default_factory=list)
    # A year at least: a typo must not wipe last week's studies.
    keep_days: int = Field(ge=365)


class RetentionPolicy(BaseModel):
    rules: list[RetentionRule] = Field(default_factory=list)
    audit_keep_days: int | None = Field(default=None, ge=365)

    @model_validator(mode="after")
    def audit_outlives_the_data(self) -> RetentionPolicy:
        """The audit trail must cover every removal it records, for as long as any rule."""
        longest = max((rule.keep_days for rule in self.rules), default=0)
        if self.audit_keep_days is not None and self.audit_keep_days < longest:
            raise ValueError(
                f"audit_keep_days ({self.audit_keep_days}) is shorter than the longest rule "
                f"({longest} days)"
            )
        return self


def load_policy(path: Path | None) -> RetentionPolicy:
    if path is None:
        return RetentionPolicy()
    return RetentionPolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
