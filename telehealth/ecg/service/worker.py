"""Measuring ECGs as they arrive, on a thread of our own (never the ingest thread).

The INSTANCE_STORED listener only queues the SOP Instance UID: a C-STORE or upload answers
without waiting for anything here. The worker measures queued ECG instances in batches and
also sweeps the index now and then for ECG instances nobody measured — stored by a DICOM
node worker process (whose events stay in that process), or before a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance
from telehealth.archive.service import Archive, InstanceNotFound
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.db import transaction
from telehealth.ecg.models import EcgMeasurement
from telehealth.ecg.service.dicom_waveform import ECG_SOP_CLASSES
from telehealth.ecg.service.results import compute
from telehealth.ecg.service.triage import TriageThresholds
from telehealth.events import EventBus, Topic

log = logging.getLogger(__name__)

_BATCH = 500  # SOP UIDs per lookup: well inside every database's IN-list limit
_REWIND = 200  # ids re-checked behind the high-water mark (commits land out of id order)


class EcgWorker:
    def __init__(
        self,
        archive: Archive,
        factory: sessionmaker[Session],
        events: EventBus,
        *,
        clock: Clock = SYSTEM_CLOCK,
        thresholds: TriageThresholds | None = None,
        sweep_seconds: float = 60.0,
    ) -> None:
        self.archive = archive
        self.factory = factory
        self.events = events
        self.clock = clock
        self.thresholds = thresholds or TriageThresholds()
        self.sweep_seconds = sweep_seconds
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._high_water = 0
        self._retry: set[str] = set()
        self.measured = 0  # instances measured since start (for tests and health)
        events.subscribe(Topic.INSTANCE_STORED, self._on_stored)

    # Runs on the ingest thread: no database, no I/O, just a queue put, and only for ECGs: a
    # CT series would otherwise cost a lookup (on SQLite, a write turn) every batch.
    def _on_stored(self, payload: dict[str, Any]) -> None:
        if self._thread is not None and payload["sop_class_uid"] in ECG_SOP_CLASSES:
            self._queue.put(payload["sop_instance_uid"])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ecg-measure", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=15)
            self._thread = None

    def _run(self) -> None:
        last_sweep = -float("inf")
        while True:
            if time.monotonic() - last_sweep >= self.sweep_seconds:
                last_sweep = time.monotonic()
                self._guarded(self.sweep)
            try:
                first = self._queue.get(timeout=self.sweep_seconds)
            except queue.Empty:
                continue
            # A series arriving sends one event per instance: gather them, then look them
            # up in one query rather than one transaction each.
            time.sleep(0.2)
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            named = [uid for uid in batch if uid is not None]
            if named:
                self._guarded(lambda named=named: self.measure_named(named))
            if None in batch:
                return

    def _guarded(self, work: Any) -> None:
        try:
            work()
        except Exception:  # the next sweep tries again; nothing is lost
            log.exception("ECG measurement pass failed; will try again")

    def measure_named(self, sop_uids: list[str]) -> int:
        """Measure those of the named instances that are ECGs without a current result."""
        with transaction(self.factory) as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.sha256, EcgMeasurement.sha256)
                .outerjoin(EcgMeasurement, EcgMeasurement.instance_pk == Instance.id)
                .where(Instance.sop_instance_uid.in_(sop_uids))
                .where(Instance.sop_class_uid.in_(list(ECG_SOP_CLASSES)))
            ).all()
        due = [sop for sop, current, measured in rows if measured != current]
        return self._measure(due)

    def sweep(self) -> int:
        """Measure ECG instances indexed since the last sweep that have no result."""
        with transaction(self.factory) as session:
            top = session.scalar(select(func.max(Instance.id))) or 0
            rows = session.scalars(
                select(Instance.sop_instance_uid)
                .outerjoin(EcgMeasurement, EcgMeasurement.instance_pk == Instance.id)
                .where(Instance.id > max(0, self._high_water - _REWIND), Instance.id <= top)
                .where(Instance.sop_class_uid.in_(list(ECG_SOP_CLASSES)))
                .where(EcgMeasurement.instance_pk.is_(None))
            ).all()
        self._high_water = top
        due = sorted(set(rows) | self._retry)
        self._retry.clear()
        return self._measure(due)

    def _measure(self, sop_uids: list[str]) -> int:
        done = 0
        for sop in sop_uids:
            try:
                compute(
                    self.archive,
                    self.factory,
                    sop,
                    clock=self.clock,
                    events=self.events,
                    thresholds=self.thresholds,
                )
                done += 1
            except InstanceNotFound:
                continue  # deleted meanwhile
            except Exception:
                log.exception("ECG %s could not be measured; will try again", sop)
                self._retry.add(sop)
        self.measured += done
        return done
