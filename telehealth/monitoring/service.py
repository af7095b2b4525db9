"""What Prometheus scrapes: counters the hub keeps as it works, gauges read at scrape time.

Each process has its own registry (tests run several hubs in one process). Counters (ingests
and their latency) are per process: Prometheus adds them up across the cluster's processes.
Gauges read from the database (queue depth, overdue cases) are cluster-wide, the same in
every process; dashboards should take `max` of them, not `sum`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from telehealth.cases.models import OPEN_STATUSES, Case
from telehealth.db import ping

if TYPE_CHECKING:
    from telehealth.hub import Hub

log = logging.getLogger(__name__)

# A C-STORE is acknowledged after the spool sync and the index commit: a few ms to ~1 s.
_INGEST_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Instruments:
    """The counters and histograms of one hub process, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingests = Counter(
            "telehealth_ingest_instances",
            "Instances received, by how they came (dimse, stow, upload) and what became of them.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.ingest_bytes = Counter(
            "telehealth_ingest_bytes",
            "Bytes of instances stored.",
            ["source"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "telehealth_ingest_seconds",
            "Time from an instance's bytes in hand to its acknowledgement (spooled and indexed).",
            ["source"],
            buckets=_INGEST_BUCKETS,
            registry=self.registry,
        )

    def observe_ingest(self, source: str, outcome: str, seconds: float, size: int) -> None:
        self.ingests.labels(source, outcome).inc()
        if outcome != "failed":
            self.ingest_bytes.labels(source).inc(size)
            self.ingest_seconds.labels(source).observe(seconds)


class HubCollector(Collector):
    """Gauges read when Prometheus scrapes: nothing to keep in step as things change."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hub = self.hub
        yield _gauge("telehealth_up_database", "1 when the database answers.", ping(hub.engine))
        yield _gauge("telehealth_up_object_store", "1 when S3 answers.", hub.store.is_up())
        yield _gauge(
            "telehealth_spool_backlog",
            "Instances acknowledged but not yet uploaded to object storage (this process).",
            hub.archive.uploader.backlog,
        )
        connections = GaugeMetricFamily(
            "telehealth_websocket_connections",
            "Open WebSocket connections (this process).",
            labels=["kind"],
        )
        connections.add_metric(["worklist"], hub.case_feed.connections)
        rooms = hub.signaling.server.rooms if hub.signaling is not None else {}
        connections.add_metric(
            ["signaling"], sum(len(room.participants) for room in list(rooms.values()))
        )
        yield connections
        yield _gauge(
            "telehealth_consult_rooms",
            "Consult rooms with someone in them (this process's signalling server).",
            len(rooms),
        )
        try:
            yield from self._queue(hub)
        except Exception:  # the database is down: the up gauge above says so
            log.warning("queue metrics unavailable", exc_info=True)

    def _queue(self, hub: Hub) -> Iterator[GaugeMetricFamily]:
        now = hub.clock.now()
        with hub.factory() as session:
            depth = session.execute(
                select(Case.priority, Case.status, func.count())
                .where(Case.status.in_(OPEN_STATUSES))
                .group_by(Case.priority, Case.status)
            ).all()
            overdue = session.execute(
                select(Case.priority, func.count())
                .where(Case.status.in_(OPEN_STATUSES), Case.due_at < now)
                .group_by(Case.priority)
            ).all()
        queue = GaugeMetricFamily(
            "telehealth_queue_cases",
            "Open reading cases by priority and status (cluster-wide).",
            labels=["priority", "status"],
        )
        for priority, status, count in depth:
            queue.add_metric([str(priority), str(status)], count)
        yield queue
        late = GaugeMetricFamily(
            "telehealth_queue_overdue_cases",
            "Open cases past their deadline, by priority (cluster-wide).",
            labels=["priority"],
        )
        for priority, count in overdue:
            late.add_metric([str(priority)], count)
        yield late


def _gauge(name: str, documentation: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def registry_for(hub: Hub, instruments: Instruments) -> CollectorRegistry:
    """The instruments' registry with the hub's scrape-time gauges added."""
    instruments.registry.register(HubCollector(hub))
    return instruments.registry
