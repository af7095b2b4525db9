"""What the reports service shares: errors, settings, the context, history and scope helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from telehealth.auth import service as auth
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseEventKind, CaseService
from telehealth.cases.service.common import record
from telehealth.errors import Conflict, Forbidden, Invalid, NotFound

if TYPE_CHECKING:
    from telehealth.archive.service import Archive
    from telehealth.config import Settings


class ReportNotFound(NotFound):
    """No report on the case, or none the actor may see yet (a draft, for the clinic)."""


class TemplateNotFound(NotFound): ...


class InvalidReport(Invalid):
    """A field value that does not fit its template (unknown key, wrong type, out of range)."""


class NotTheAuthor(Forbidden):
    """Only the reader who wrote a draft may change it."""


class SameReader(Forbidden):
    """Double reading: the second reader must not be the first."""


class CriticalResultNotFound(NotFound): ...


class AlreadyAcknowledged(Conflict): ...


class DocumentNotReady(NotFound):
    """The report is not signed yet, so there is no PDF."""


@dataclass(frozen=True)
class ReportConfig:
    """TELEHEALTH_REPORT_* settings."""

    # Unacknowledged critical result: clinic admins and the group lead after this …
    critical_first_escalation: timedelta = timedelta(minutes=10)
    # … and the consortium's admins after this (both counted from the flag).
    critical_second_escalation: timedelta = timedelta(minutes=20)
    font_path: str | None = None
    double_reading_services: frozenset[CaseService] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> ReportConfig:
        return cls(
            critical_first_escalation=timedelta(
                minutes=settings.report_critical_escalation_minutes
            ),
            critical_second_escalation=timedelta(
                minutes=settings.report_critical_second_escalation_minutes
            ),
            font_path=settings.report_font,
            double_reading_services=frozenset(
                CaseService(s) for s in settings.report_double_reading_services
            ),
        )


@dataclass(frozen=True)
class ReportContext:
    """The cases' context (clock, bus) plus our settings; `archive` stores documents back."""

    cases: cases.CaseContext = field(default_factory=cases.CaseContext)
    config: ReportConfig = field(default_factory=ReportConfig)
    archive: Archive | None = None

    def now(self) -> datetime:
        return self.cases.now()


def history(
    session: Session, case: Case, actor: auth.Actor | None, at: datetime, event: str, **detail: Any
) -> None:
    """A report or critical-result step in the case's history; `event` names a CaseEventKind
    ("report.signed", "critical.acknowledged" …)."""
    record(session, case, CaseEventKind(event), actor, at, **detail)


def holds_claim(case: Case, actor: auth.Actor, now: datetime, lease_token: int | None) -> bool:
    """The actor holds a live lease on the case (under `lease_token` when given)."""
    return (
        case.claim_holder_id is not None
        and case.claim_holder_id == actor.user_id
        and case.lease_expires_at is not None
        and case.lease_expires_at > now
        and (lease_token is None or lease_token == case.lease_token)
    )
