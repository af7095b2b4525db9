"""GET /metrics in Prometheus' text format, for a scraper holding the metrics token or an
admin's login; never public (queue sizes and clinic activity are the consortium's business)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from telehealth.auth import service as auth
from telehealth.db import transaction
from telehealth.deps import HubDep, get_actor

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, hub: HubDep) -> Response:
    if not _scraper(request, hub):
        await run_in_threadpool(_require_admin, request, hub)
    body = await run_in_threadpool(generate_latest, hub.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def _scraper(request: Request, hub: HubDep) -> bool:
    """Prometheus' `authorization: {credentials_file: …}` with TELEHEALTH_METRICS_TOKEN."""
    expected = hub.settings.metrics_token
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (
        bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), expected.encode())
    )


def _require_admin(request: Request, hub: HubDep) -> None:
    with transaction(hub.factory) as session:
        actor = get_actor(request, hub, session)  # raises BadToken → 401
        auth.require(actor, auth.Permission.ADMINISTER)  # NotPermitted → 403
