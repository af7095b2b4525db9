"""The assembled hub: settings → database, object store, spool, archive, DICOM node.

`telehealth serve` opens one Hub and runs the HTTP app around it; tests open one per test
against a real S3 server and a real database.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.service import Archive, ReadCache, Spool
from telehealth.auth import service as auth
from telehealth.cases import service as cases
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.cluster import RedisRelay, SingletonJob, startup_lock
from telehealth.config import Settings
from telehealth.consults.service import ConsultConfig
from telehealth.db import create_db_engine, make_session_factory, migrate, ping
from telehealth.dicomweb.service import MetadataWarmer
from telehealth.ecg.service.triage import TriageThresholds
from telehealth.ecg.service.worker import EcgWorker
from telehealth.events import EventBus, Scope, Topic
from telehealth.monitoring.service import Instruments, registry_for
from telehealth.reports import service as reports
from telehealth.retention import apply_policy, load_policy
from telehealth.storage import EmbeddedS3, ObjectStore, S3Endpoint

if TYPE_CHECKING:
    from dicom_node.listener import SharedListener
    from dicom_node.server import DicomNode
    from signaling.server import SignalingThread
    from telehealth.consults.recorder import RecorderPool

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.events = EventBus()
        self.embedded_s3: EmbeddedS3 | None = None
        self.engine: Engine
        self.factory: sessionmaker[Session]
        self.store: ObjectStore
        self.spool: Spool
        self.archive: Archive
        self.metadata_warmer: MetadataWarmer
        self.ecg_worker: EcgWorker
        self.cases: cases.CaseContext
        self.case_feed = cases.LiveFeed()
        self.escalator: cases.Escalator
        self.reports: reports.ReportContext
        self.dicom_node: DicomNode | None = None
        self.consults: ConsultConfig
        self.signaling: SignalingThread | None = None
        self._recorders: RecorderPool | None = None  # consult recordings: recorder_pool()
        # Several processes (TELEHEALTH_REDIS_URL): events relayed, sweeps run by one of them.
        self.relay: RedisRelay | None = None
        self.escalation_job: SingletonJob | None = None
        self.retention_job: SingletonJob | None = None
        # Read at open, so a bad retention file stops the start with a clear error.
        self.retention_policy = load_policy(settings.retention_file)
        self.secret: str
        self.token_ttl = timedelta(minutes=settings.token_ttl_minutes)
        # Prometheus: this process's counters plus gauges read at scrape time (/metrics).
        self.instruments = Instruments()
        self.metrics_registry = registry_for(self, self.instruments)
        self._metrics_server: WSGIServer | None = None

    def open(self, *, run_migrations: bool = True) -> Hub:
        """Connect to (or start) everything the hub needs; no background work yet."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.secret = settings.secret_key or auth.load_or_create_secret(settings.data_dir)
        self.engine = create_db_engine(settings.resolved_database_url())
        if run_migrations:
            with startup_lock(self.engine):  # processes started together migrate once
                migrate(self.engine)
        self.factory = make_session_factory(self.engine)
        self.store = ObjectStore(
            self._s3_endpoint(), settings.s3_bucket, timeout=settings.s3_timeout_seconds
        )
        self.store.ensure_bucket()
        self.spool = Spool(settings.spool_dir, min_free_bytes=settings.spool_min_free_bytes)
        self.archive = Archive(
            self.factory,
            self.spool,
            self.store,
            clock=self.clock,
            events=self.events,
            duplicate_policy=settings.duplicate_policy,
            upload_workers=settings.upload_workers,
            upload_retry_seconds=settings.upload_retry_seconds,
            study_stable_seconds=settings.study_stable_seconds,
            read_cache=ReadCache(settings.read_cache_dir, max_bytes=settings.read_cache_bytes),
        )
        self.archive.observe_ingest = self.instruments.observe_ingest
        self.metadata_warmer = MetadataWarmer(self.archive, self.factory, self.events)
        self.ecg_worker = EcgWorker(
            self.archive,
            self.factory,
            self.events,
            clock=self.clock,
            thresholds=TriageThresholds.from_settings(settings),
        )
        self._open_cases(seed=run_migrations)
        self.reports = reports.ReportContext(
            self.cases, reports.ReportConfig.from_settings(settings), self.archive
        )
        self.escalator.hooks.append(reports.sweeper(self.factory, self.reports))
        self.consults = ConsultConfig.from_settings(settings, self.secret)
        return self

    def _open_cases(self, *, seed: bool) -> None:
        """Cases from stable studies, ECG triage, live worklist messages, the escalation check."""
        settings = self.settings
        self.cases = cases.CaseContext(
            clock=self.clock, bus=self.events, config=cases.CaseConfig.from_settings(settings)
        )
        # Every process tells its own live connections about every process's case changes.
        self.events.subscribe(cases.CASE_TOPIC, self.case_feed.deliver, scope=Scope.CLUSTER)
        self.events.subscribe(
            Topic.STUDY_STABLE, cases.stable_study_listener(self.factory, self.cases)
        )
        self.events.subscribe(
            Topic.ECG_MEASURED, cases.ecg_measured_listener(self.factory, self.cases)
        )
        self.escalator = cases.Escalator(
            self.factory, self.cases, interval=settings.case_escalation_check_seconds
        )
        if seed:
            with startup_lock(self.engine):
                cases.seed_on_first_start(self.factory, self.cases, settings.routing_file)

    def _s3_endpoint(self) -> S3Endpoint:
        settings = self.settings
        if settings.s3_endpoint:
            if not (settings.s3_access_key and settings.s3_secret_key):
                raise ValueError("TELEHEALTH_S3_ACCESS_KEY and TELEHEALTH_S3_SECRET_KEY are needed")
            return S3Endpoint(
                settings.s3_endpoint,
                settings.s3_access_key,
                settings.s3_secret_key,
                secure=settings.s3_secure,
                region=settings.s3_region,
            )
        # Another hub command (serve) may already run the embedded server on this folder.
        running = self._running_embedded_endpoint()
        if running is not None:
            return running
        self.embedded_s3 = EmbeddedS3(settings.s3_dir)
        endpoint = self.embedded_s3.start()
        (settings.s3_dir / "endpoint.json").write_text(json.dumps({"endpoint": endpoint.endpoint}))
        return endpoint

    def _running_embedded_endpoint(self) -> S3Endpoint | None:
        path = self.settings.s3_dir / "endpoint.json"
        creds = self.settings.s3_dir / "credentials.json"
        if not (path.exists() and creds.exists()):
            return None
        endpoint = json.loads(path.read_text())["endpoint"]
        keys = json.loads(creds.read_text())
        candidate = S3Endpoint(endpoint, keys["access_key"], keys["secret_key"])
        probe = ObjectStore(candidate, self.settings.s3_bucket, timeout=2.0, retries=0)
        return candidate if probe.is_up() else None

    def start(
        self,
        *,
        dicom: bool = True,
        background: bool = True,
        signaling: bool = False,
        dicom_listener: SharedListener | None = None,
    ) -> None:
        """Start background work: spool recovery, uploads, study-stable watcher, DICOM node.

        `signaling`: the consult signalling server too (`telehealth serve`; off in tests).
        `dicom_listener`: the DICOM port shared with the hub's other node processes.
        A DICOM node worker process starts the node only (`background=False`): the main hub
        recovers the spool, uploads and watches for stable studies for all processes.
        With TELEHEALTH_REDIS_URL, events reach the other processes of the cluster and the
        escalation sweep runs in one of them at a time (telehealth.cluster).
        """
        if self.settings.redis_url and self.relay is None:
            self.relay = RedisRelay(
                self.settings.redis_url, self.events, channel=self.settings.redis_channel
            ).start()
        if background:
            self.archive.start()
            self.metadata_warmer.start()
            self.ecg_worker.start()
            if self.relay is not None:  # one process of the cluster sweeps at a time
                self.escalation_job = SingletonJob(
                    self.engine,
                    "case-escalation",
                    self.escalator.run_once,
                    interval=self.settings.case_escalation_check_seconds,
                ).start()
            else:
                self.escalator.start()
            if self.retention_policy.rules or self.retention_policy.audit_keep_days:
                # One process of the cluster at a time (a lock file on SQLite).
                self.retention_job = SingletonJob(
                    self.engine,
                    "retention",
                    self.apply_retention,
                    interval=self.settings.retention_check_hours * 3600,
                ).start()
        if dicom:
            from dicom_node.server import DicomNode

            self.dicom_node = DicomNode(self, dicom_listener)
            self.dicom_node.start()
        if signaling:
            self._start_signaling()
        if self.settings.metrics_port is not None and self._metrics_server is None:
            # A process without HTTP (`telehealth dicom-node`) is scraped here instead.
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port,
                addr=self.settings.metrics_host,
                registry=self.metrics_registry,
            )

    def _start_signaling(self) -> None:
        """The signalling server on its own port and loop (`telehealth serve`)."""
        from signaling.server import SignalingThread, server_from_settings

        # Tokens expire by the hub's clock, which issued them (a fake one in tests).
        server = server_from_settings(
            self.settings, self.secret, now=lambda: self.clock.now().timestamp()
        )
        self.signaling = SignalingThread(server).start()
        if not self.settings.signaling_public_url:  # port 0 means "any": tell clients which
            url = f"ws://{self.settings.signaling_host}:{self.signaling.port}"
            self.consults = self.consults.with_signaling_url(url)

    def apply_retention(self) -> None:
        apply_policy(self.factory, self.store, self.retention_policy, self.clock.now())

    def recorder_pool(self) -> RecorderPool:
        """Consult recorders (aiortc, PyAV): loaded and started with the first recording."""
        if self._recorders is None:
            from telehealth.consults.recorder import RecorderPool

            self._recorders = RecorderPool(
                self.factory, self.store, self.settings.data_dir / "recordings", clock=self.clock
            )
        return self._recorders

    def close(self) -> None:
        if self._recorders is not None:  # first: each running recording is stored
            self._recorders.close()
            self._recorders = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self.signaling is not None:
            self.signaling.stop()
            self.signaling = None
        if self.dicom_node is not None:
            self.dicom_node.stop()
            self.dicom_node = None
        if hasattr(self, "escalator"):
            self.escalator.stop()
        if self.retention_job is not None:
            self.retention_job.stop()
            self.retention_job = None
        if self.escalation_job is not None:
            self.escalation_job.stop()
            self.escalation_job = None
        if hasattr(self, "ecg_worker"):
            self.ecg_worker.stop()
        if hasattr(self, "metadata_warmer"):
            self.metadata_warmer.stop()
        if hasattr(self, "archive"):
            self.archive.stop()
        if self.relay is not None:  # after the workers: their last events still go out
            self.relay.stop()
            self.relay = None
        if hasattr(self, "engine"):
            self.engine.dispose()
        if self.embedded_s3 is not None:
            self.embedded_s3.stop()
            (self.settings.s3_dir / "endpoint.json").unlink(missing_ok=True)
            self.embedded_s3 = None

    def health(self) -> dict[str, object]:
        database = ping(self.engine)
        store = self.store.is_up()
        node = self.dicom_node
        answer: dict[str, object] = {
            "status": "ok" if database and store else "degraded",
            "database": database,
            "object_store": store,
            "spool_backlog": self.archive.uploader.backlog,
            "dicom_node": {
                "listening": bool(node and node.is_listening),
                "ae_title": self.settings.ae_title,
                "port": node.port if node else None,
                # Fewer than TELEHEALTH_DICOM_WORKERS: a worker process has not started or died.
                "processes": node.listening_processes if node else 0,
            },
        }
        if self.relay is not None:
            answer["cluster_events"] = self.relay.healthy
        return answer
