"""'Study stable': no instance arrived for the quiet period, so the study can become a case."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import Study


def mark_stable_studies(session: Session, *, now: datetime, quiet_seconds: float) -> list[Study]:
    """Mark every study quiet since `now - quiet_seconds` as stable and return them.

    Row locks with SKIP LOCKED let several hub processes run this without announcing a
    study twice (ignored on SQLite, where one writer runs at a time anyway).
    """
    cutoff = now - timedelta(seconds=quiet_seconds)
    studies = list(
        session.scalars(
            select(Study)
            .where(Study.stable_at.is_(None), Study.last_received_at <= cutoff)
            .order_by(Study.last_received_at)
            .limit(500)
            .with_for_update(skip_locked=True)
        )
    )
    for study in studies:
        study.stable_at = now
    return studies
