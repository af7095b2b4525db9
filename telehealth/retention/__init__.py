"""Retention: how long raw data is kept, and the job that removes what has expired."""

from telehealth.retention.schemas import RetentionPolicy, RetentionRule, load_policy
from telehealth.retention.service import PurgeReport, apply_policy, trim_audit

__all__ = [
    "PurgeReport",
    "RetentionPolicy",
    "RetentionRule",
    "apply_policy",
    "load_policy",
    "trim_audit",
]
