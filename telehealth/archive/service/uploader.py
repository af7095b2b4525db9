"""Background upload of spool files to the object store, with retries and verification.

Workers upload in parallel because one S3 PUT is slower than one local write; a single
marker thread records the results in batches so the database sees few, short transactions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, StorageState, SupersededObject
from telehealth.archive.service.read_cache import ReadCache
from telehealth.archive.service.spool import Spool
from telehealth.clock import Clock
from telehealth.db import transaction
from telehealth.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadJob:
    spool_name: str
    object_key: str


class Uploader:
    def __init__(
        self,
        factory: sessionmaker[Session],
        spool: Spool,
        store: ObjectStore,
        clock: Clock,
        *,
        read_cache: ReadCache | None = None,
        workers: int = 4,
        retry_seconds: float = 2.0,
        yield_seconds: float = 0.5,
        yield_below: int = 2000,
        sweep_seconds: float = 1.0,
    ) -> None:
        self.factory = factory
        self.spool = spool
        self.store = store
        self.clock = clock
        self.read_cache = read_cache
        self.workers = workers
        self.retry_seconds = retry_seconds
        self._jobs: queue.Queue[UploadJob | None] = queue.Queue()
        self._done: queue.Queue[tuple[UploadJob, datetime] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sweeper: threading.Thread | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._idle = threading.Condition(self._pending_lock)
        self.store_healthy = True
        self.last_error = ""
        self.yield_seconds = yield_seconds
        self.yield_below = yield_below
        self.sweep_seconds = sweep_seconds
        self._queued: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"uploader-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        marker = threading.Thread(target=self._mark, name="upload-marker", daemon=True)
        marker.start()
        self._threads.append(marker)
        self.enqueue_pending()
        if self.sweep_seconds > 0:
            self._sweeper = threading.Thread(target=self._sweep, name="upload-sweep", daemon=True)
            self._sweeper.start()

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
            self._sweeper = None
        for _ in range(self.workers):
            self._jobs.put(None)
        for thread in self._threads[: self.workers]:
            thread.join(timeout=30)
        self._done.put(None)
        for thread in self._threads[self.workers :]:
            thread.join(timeout=30)
        self._threads.clear()

    def enqueue(self, job: UploadJob) -> None:
        with self._pending_lock:
            if job.spool_name in self._queued:
                return
            self._queued.add(job.spool_name)
            self._pending += 1
        self._jobs.put(job)

    def _sweep(self) -> None:
        """Pick up what other processes (DICOM node workers) spooled and indexed."""
        while not self._stop.wait(self.sweep_seconds):
            try:
                self.enqueue_pending()
            except Exception as exc:
                log.warning("could not look for pending uploads: %s", exc)

    def enqueue_pending(self) -> int:
        """Queue every spooled instance and superseded version the index knows of."""
        with transaction(self.factory) as session:
            rows = list(
                session.execute(
                    select(Instance.spool_name, Instance.object_key).where(
                        Instance.state == StorageState.SPOOLED
                    )
                )
            ) + list(
                session.execute(
                    select(SupersededObject.spool_name, SupersededObject.object_key).where(
                        SupersededObject.state == StorageState.SPOOLED
                    )
                )
            )
        for spool_name, key in rows:
            if spool_name:
                self.enqueue(UploadJob(spool_name, key))
        return len(rows)

    @property
    def backlog(self) -> int:
        with self._pending_lock:
            return self._pending

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued upload is recorded; for tests and orderly shutdown."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    # --- workers -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not self.spool.exists(job.spool_name):
                self._finish(job, uploaded=False)  # already uploaded and cleaned up
                continue
            self._yield_to_ingest()
            try:
                self.store.put_file(job.object_key, self.spool.path(job.spool_name))
            except Exception as exc:
                self.store_healthy = False
                self.last_error = str(exc)[:200]
                log.warning("upload of %s failed, will retry: %s", job.object_key, exc)
                if self._stop.wait(self.retry_seconds):
                    self._finish(job, uploaded=False)
                    return
                self._jobs.put(job)
                continue
            self.store_healthy = True
            self._done.put((job, self.clock.now()))

    def _yield_to_ingest(self) -> None:
        """Wait while instances are arriving, unless the backlog passes the high-water mark.

        On two cores, uploading (hashing, HTTP, the S3 server itself) while a modality sends
        cut the C-STORE rate by a third. The spool already keeps what was answered Success,
        so uploads can follow a burst (a study) a few seconds later; a sustained stream still
        drains once the backlog reaches `yield_below`.
        """
        while (
            self.yield_seconds > 0
            and time.time() - self.spool.last_activity() < self.yield_seconds
            and self.backlog < self.yield_below
            and not self._stop.is_set()
        ):
            self._stop.wait(self.yield_seconds / 4)

    def _mark(self) -> None:
        stopping = False
        while not stopping:
            item = self._done.get()
            batch: list[tuple[UploadJob, datetime]] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
            while len(batch) < 200:
                try:
                    more = self._done.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            if batch:
                self._record(batch)

    def _record(self, batch: list[tuple[UploadJob, datetime]]) -> None:
        while True:
            try:
                with transaction(self.factory) as session:
                    for job, at in batch:
                        mark_stored(session, job.spool_name, at)
                break
            except Exception as exc:
                # The database is down: the objects are safe in both places; try again.
                log.warning("could not record %d uploads, will retry: %s", len(batch), exc)
                if self._stop.wait(self.retry_seconds):
                    return
        for job, _ in batch:
            if self.read_cache is not None:
                self.read_cache.adopt(self.spool.path(job.spool_name), job.object_key)
            else:
                self.spool.remove(job.spool_name)
            self._finish(job, uploaded=True)

    def _finish(self, job: UploadJob, *, uploaded: bool) -> None:
        with self._idle:
            self._queued.discard(job.spool_name)
            self._pending -= 1
            if self._pending <= 0:
                self._pending = 0
                self._idle.notify_all()


def mark_stored(session: Session, spool_name: str, at: datetime) -> None:
    """Point the index at the object store for the version that was in this spool file.

    Matching on the spool name, not the UID, fences a replace that raced the upload: the
    new version has another spool file and stays spooled until its own upload.
    """
    updated = session.execute(
        update(Instance)
        .where(Instance.spool_name == spool_name)
        .values(state=StorageState.STORED, spool_name=None, stored_at=at)
    )
    if updated.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(
            update(SupersededObject)
            .where(SupersededObject.spool_name == spool_name)
            .values(state=StorageState.STORED, spool_name=None)
        )
