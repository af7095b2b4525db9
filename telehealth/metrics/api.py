"""Consortium metrics for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from telehealth.deps import CurrentActor, HubDep, SessionDep
from telehealth.metrics import service
from telehealth.metrics.schemas import SummaryOut

router = APIRouter(prefix="/api/metrics", tags=["metrics"])


@router.get("/summary")
def metrics_summary(
    session: SessionDep,
    actor: CurrentActor,
    hub: HubDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    institution: Annotated[str | None, Query(max_length=64)] = None,
) -> SummaryOut:
    """Volumes, turnaround, deadline compliance, critical results and reader load for the
    cases requested in [from, to) (default: the last 30 days), optionally of one institution
    and those below it (by code)."""
    summary = service.summary(
        session, actor, hub.cases, start=start, end=end, institution=institution
    )
    return SummaryOut.model_validate(summary)
