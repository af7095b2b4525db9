"""GET /metrics: Prometheus text of the queue, the spool, live connections; never public."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from telehealth.cases.models import CasePriority
from telehealth.clock import FakeClock
from telehealth.db import transaction
from telehealth.errors import DomainError
from telehealth.hub import Hub
from tests.cases import PASSWORD, build_world
from tests.conftest import upload_origin
from tests.dicomweb import CT, fresh_copy, serve

SCRAPE_TOKEN = "scrape-" + "x" * 24


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def login(base: str, username: str) -> str:
    answer = httpx.post(f"{base}/api/auth/login", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def test_metrics_report_queue_overdue_and_connections_to_scrapers_and_admins_only(
    hub_factory: Callable[..., Hub], clock: FakeClock
) -> None:
    hub = hub_factory(dicom=False, clock=clock, metrics_token=SCRAPE_TOKEN)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
        world.rule("COUNTY_IMG", modalities=["CT"])
        world.request(world.study(), priority=CasePriority.STAT)
        world.request(world.study(), priority=CasePriority.ROUTINE)
        world.request(world.study("CLINIC_B"), "tech_b", priority=CasePriority.ROUTINE)
    clock.advance(hours=2)  # past the stat deadline, not the routine ones
    origin = upload_origin(world.ids["CLINIC_A"])
    instance = fresh_copy(CT)
    hub.archive.ingest(instance, origin)
    with pytest.raises(DomainError):
        hub.archive.ingest(b"not DICOM at all", origin)

    with serve(hub) as base:
        assert httpx.get(f"{base}/metrics").status_code == 401
        tech = {"authorization": f"Bearer {login(base, 'tech_a')}"}
        assert httpx.get(f"{base}/metrics", headers=tech).status_code == 403
        wrong = {"authorization": "Bearer scrape-" + "y" * 24}
        assert httpx.get(f"{base}/metrics", headers=wrong).status_code == 401

        async def scrape_with_a_live_worklist_open() -> str:
            token = login(base, "img1")
            url = base.replace("http", "ws") + f"/api/worklist/live?token={token}"
            async with websockets.connect(url) as live:
                assert "hello" in await live.recv()
                async with httpx.AsyncClient() as client:
                    answer = await client.get(
                        f"{base}/metrics", headers={"authorization": f"Bearer {SCRAPE_TOKEN}"}
                    )
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            return answer.text

        seen = samples(asyncio.run(scrape_with_a_live_worklist_open()))
        admin = {"authorization": f"Bearer {login(base, 'admin')}"}
        assert httpx.get(f"{base}/metrics", headers=admin).status_code == 200

    queued = "telehealth_queue_cases"
    assert seen[(queued, (("priority", "stat"), ("status", "queued")))] == 1
    assert seen[(queued, (("priority", "routine"), ("status", "queued")))] == 2
    assert seen[("telehealth_queue_overdue_cases", (("priority", "stat"),))] == 1
    assert ("telehealth_queue_overdue_cases", (("priority", "routine"),)) not in seen
    assert seen[("telehealth_websocket_connections", (("kind", "worklist"),))] == 1
    assert seen[("telehealth_up_database", ())] == 1
    assert seen[("telehealth_up_object_store", ())] == 1
    assert seen[("telehealth_spool_backlog", ())] in (0, 1)  # the upload may be under way
    ingests = "telehealth_ingest_instances_total"
    assert seen[(ingests, (("outcome", "new"), ("source", "upload")))] == 1
    assert seen[(ingests, (("outcome", "failed"), ("source", "upload")))] == 1
    assert seen[("telehealth_ingest_seconds_count", (("source", "upload"),))] == 1
    assert seen[("telehealth_ingest_bytes_total", (("source", "upload"),))] == len(instance)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_process_without_http_serves_metrics_on_its_own_loopback_port(
    hub_factory: Callable[..., Hub],
) -> None:
    from tests.conftest import free_port

    port = free_port()
    hub = hub_factory(dicom=False, metrics_port=port)
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    assert "telehealth_spool_backlog" in answer.text
    assert hub.settings.metrics_host == "127.0.0.1"
