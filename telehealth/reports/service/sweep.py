"""The reports' part of the hub's periodic escalation check (cases.Escalator.hooks)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from telehealth.db import transaction
from telehealth.reports.service.common import ReportContext
from telehealth.reports.service.critical import CriticalStep, check_critical_escalations
from telehealth.reports.service.document import store_pending_documents


def sweeper(
    factory: sessionmaker[Session], rctx: ReportContext
) -> Callable[[], list[CriticalStep]]:
    """Escalate due critical results, then retry documents that did not reach the archive."""

    def sweep() -> list[CriticalStep]:
        with transaction(factory) as session:
            steps = check_critical_escalations(session, rctx)
        store_pending_documents(rctx)  # after the commit: ingest takes its own transaction
        return steps

    return sweep
