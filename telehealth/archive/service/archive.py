"""The one way in (`ingest`) and the one way out (`read_instance`) for instance bytes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, StorageState, Study
from telehealth.archive.service.header import InstanceHeader, parse_header
from telehealth.archive.service.index import (
    IndexOutcome,
    KnownSeriesIndex,
    Origin,
    StoredCopy,
    index_instance,
)
from telehealth.archive.service.read_cache import ReadCache
from telehealth.archive.service.spool import Spool
from telehealth.archive.service.stability import mark_stable_studies
from telehealth.archive.service.uploader import Uploader, UploadJob
from telehealth.clock import Clock
from telehealth.config import DuplicatePolicy
from telehealth.db import DatabaseUnavailable, transaction
from telehealth.errors import NotFound
from telehealth.events import EventBus, Topic
from telehealth.storage import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)


RECONCILE_EVERY_SECONDS = 60.0
RECONCILE_MIN_AGE_SECONDS = 300.0


class InstanceNotFound(NotFound):
    """No instance with that SOP Instance UID is indexed."""


@dataclass(frozen=True)
class InstanceLocation:
    """Where an instance's bytes were when the index was read: spool file or object key."""

    sop_instance_uid: str
    state: StorageState
    spool_name: str | None
    object_key: str


@dataclass(frozen=True)
class IngestResult:
    outcome: IndexOutcome
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str


class Archive:
    """Receives instances from every source, keeps them durable, and reads them back."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        spool: Spool,
        store: ObjectStore,
        *,
        clock: Clock,
        events: EventBus,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE,
        upload_workers: int = 4,
        upload_retry_seconds: float = 2.0,
        study_stable_seconds: float = 60.0,
        read_cache: ReadCache | None = None,
    ) -> None:
        self.factory = factory
        self.spool = spool
        self.store = store
        self.clock = clock
        self.events = events
        self.duplicate_policy = duplicate_policy
        self.study_stable_seconds = study_stable_seconds
        self.read_cache = read_cache
        self.uploader = Uploader(
            factory,
            spool,
            store,
            clock,
            read_cache=read_cache,
            workers=upload_workers,
            retry_seconds=upload_retry_seconds,
        )
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Spool writes of concurrent ingests (one per association at a time); threads are
        # created on demand.
        self._writer = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="spool")
        self._index_turn = _IndexTurns.for_database(factory)
        self._engine: Engine = factory.kw["bind"]
        self._known_series = KnownSeriesIndex(self._engine)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the spool, start uploads and the study-stable watcher."""
        from telehealth.archive.service.recovery import recover_spool

        recover_spool(self)
        self.uploader.start()
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="study-stable", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.uploader.stop()

    # --- the one way in ----------------------------------------------------------------------

    def ingest(self, data: bytes | bytearray, origin: Origin) -> IngestResult:
        """Keep a received Part 10 instance: spool (synced), index, queue its upload.

        Returns only once the bytes are on disk and indexed, so the caller may answer
        Success. Raises MalformedInstance/MissingIdentifier (Invalid), SpoolFull/
        DatabaseUnavailable (Overloaded), StudyOwnedElsewhere, DuplicateRejected; on any
        error nothing is left behind.
        """
        self.spool.mark_activity()  # uploads in every process step aside (Uploader)
        header = parse_header(data)
        # The spool file's sync (fsync, which releases the GIL) runs on another thread while
        # we hash and index; the index transaction commits only after it, so Success still
        # means "on disk and indexed", and a failed sync rolls the index back.
        name = self.spool.new_name(origin.institution_id)
        fd = self.spool.start_write(data, name)
        try:
            writing = self._writer.submit(self.spool.sync, fd, name)
        except BaseException:  # shutting down
            os.close(fd)
            self.spool.remove(name)
            raise
        committing: list[bool] = []
        try:
            copy = StoredCopy(name, hashlib.sha256(data).hexdigest(), len(data))
            outcome, key = self._index(
                header, origin, copy, synced=writing.result, committing=committing
            )
        except DatabaseUnavailable:
            futures.wait([writing])
            # Lost at COMMIT, the database may have applied it and its row would point at
            # this file: keep it; reconciliation indexes or drops it later. Earlier, drop it.
            if not committing or writing.exception() is not None:
                self.spool.remove(name)
            raise
        except BaseException:
            futures.wait([writing])
            self.spool.remove(name)
            raise
        if self.spool.spares_low:  # made while the answer goes out, not while it waits
            self._writer.submit(self.spool.make_spares)
        if outcome == IndexOutcome.DUPLICATE:
            self.spool.remove(copy.spool_name)
        else:
            if self.uploader.running:  # a DICOM node worker leaves uploads to the main hub
                self.uploader.enqueue(UploadJob(copy.spool_name, key))
            self.events.publish(
                Topic.INSTANCE_STORED,
                {
                    "sop_instance_uid": header.sop_instance_uid,
                    "study_instance_uid": header.study_instance_uid,
                    "institution_id": origin.institution_id,
                },
            )
        return IngestResult(
            outcome=outcome,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
        )

    def _index(
        self,
        header: InstanceHeader,
        origin: Origin,
        copy: StoredCopy,
        *,
        synced: Callable[[], object] = lambda: None,
        committing: list[bool] | None = None,
    ) -> tuple[IndexOutcome, str]:
        committing = committing if committing is not None else []
        # Two associations may create the same new study at once; on PostgreSQL one of them
        # then hits a unique constraint and simply tries again, finding the other's rows.
        for attempt in range(3):
            try:
                with self._index_turn(synced):
                    key = self._index_in_known_series(header, origin, copy, synced, committing)
                    if key is not None:
                        return IndexOutcome.NEW, key
                    with transaction(self.factory) as session:
                        outcome, key = index_instance(
                            session,
                            header,
                            origin,
                            copy,
                            now=self.clock.now(),
                            policy=self.duplicate_policy,
                        )
                        synced()  # raises the spool write's error: the transaction rolls back
                        committing.append(True)  # leaving the block commits
                return outcome, key
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _index_in_known_series(
        self,
        header: InstanceHeader,
        origin: Origin,
        copy: StoredCopy,
        synced: Callable[[], object],
        committing: list[bool],
    ) -> str | None:
        """The common case, in a transaction of its own on the driver's cursor
        (KnownSeriesIndex); the object key, or None when index_instance must decide.

        Raises DatabaseUnavailable as transaction() does, IntegrityError, StudyOwnedElsewhere.
        """
        try:
            with self._engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    key = self._known_series.add(cursor, header, origin, copy, self.clock.now())
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        conn.invalidate()  # what SQLAlchemy does for its own statements
                    raise
                finally:
                    cursor.close()
                if key is None:
                    return None  # nothing was written
                synced()  # raises the spool write's error: the transaction rolls back
                committing.append(True)  # leaving the block commits
            return key
        except DBAPIError as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise DatabaseUnavailable("database unavailable") from exc
            raise

    # --- the one way out ---------------------------------------------------------------------

    def read_at(self, location: InstanceLocation) -> bytes:
        """The bytes at a location looked up earlier (for many instances in one query).

        Needs no transaction, so a long retrieve does not open one per instance (on SQLite
        each takes the write lock). Falls back to read_instance when the uploader moved
        the file or a replace changed the object since the lookup.
        Raises InstanceNotFound, StoreUnavailable.
        """
        try:
            if location.state == StorageState.SPOOLED and location.spool_name:
                return self.spool.read(location.spool_name)
            return self._read_stored(location.object_key)
        except (FileNotFoundError, ObjectMissing):
            with transaction(self.factory) as session:
                return self.read_instance(session, location.sop_instance_uid)

    def read_instance(self, session: Session, sop_instance_uid: str) -> bytes:
        """The bytes of an instance, from the spool or the object store, wherever they are.

        Raises InstanceNotFound, StoreUnavailable.
        """
        for _ in range(3):
            row = session.execute(
                select(Instance.state, Instance.spool_name, Instance.object_key).where(
                    Instance.sop_instance_uid == sop_instance_uid
                )
            ).first()
            if row is None:
                raise InstanceNotFound(f"no instance {sop_instance_uid}")
            state, spool_name, key = row
            if state == StorageState.SPOOLED and spool_name:
                try:
                    return self.spool.read(spool_name)
                except FileNotFoundError:
                    # The uploader moved it meanwhile: look again (each statement sees the
                    # latest commits under READ COMMITTED; rolling back here would end the
                    # caller's transaction).
                    continue
            try:
                return self._read_stored(key)
            except ObjectMissing:
                continue  # replaced meanwhile: the row now names another object
        raise InstanceNotFound(f"instance {sop_instance_uid} is indexed but its bytes are missing")

    def _read_stored(self, key: str) -> bytes:
        if self.read_cache is None:
            return self.store.get_bytes(key)
        data = self.read_cache.get(key)
        if data is None:
            data = self.store.get_bytes(key)
            # A viewer asks for one instance again and again (a frame at a time).
            self._writer.submit(self.read_cache.put, key, data)
        return data

    # --- study stable ------------------------------------------------------------------------

    def check_stable_studies(self) -> list[Study]:
        """Mark and announce studies that received nothing for the quiet period."""
        with transaction(self.factory) as session:
            studies = mark_stable_studies(
                session, now=self.clock.now(), quiet_seconds=self.study_stable_seconds
            )
        for study in studies:
            self.events.publish(
                Topic.STUDY_STABLE,
                {
                    "study_instance_uid": study.study_instance_uid,
                    "institution_id": study.institution_id,
                    "num_instances": study.num_instances,
                },
            )
        return studies

    def _watch(self) -> None:
        from telehealth.archive.service.recovery import recover_spool

        interval = max(0.5, min(5.0, self.study_stable_seconds / 4))
        last_reconcile = 0.0
        while not self._stop.wait(interval):
            try:
                self.check_stable_studies()
            except Exception:
                log.exception("study-stable check failed; will try again")
            if time.monotonic() - last_reconcile > RECONCILE_EVERY_SECONDS:
                last_reconcile = time.monotonic()
                try:
                    # Spool files no row names (a commit whose answer was lost) are indexed
                    # or dropped; old enough that no ingest is still working on them.
                    recover_spool(self, min_age_seconds=RECONCILE_MIN_AGE_SECONDS)
                except Exception:
                    log.exception("spool reconciliation failed; will try again")


class _IndexTurns:
    """Ingests take turns at SQLite's single write lock, across threads and DICOM node worker
    processes, and the next one goes in as soon as the last commits.

    Left to itself, a SQLite writer that finds the lock taken sleeps 1, 2, 5, 10... ms before
    trying again (its busy handler); with a few associations storing at once, those sleeps set
    the pace. A blocking flock on a file beside the database queues them instead. PostgreSQL
    locks rows, so there ingests need no turns.
    """

    def __init__(self, *, queue: bool, lock_path: Path | None = None) -> None:
        self._queue = queue
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if lock_path is not None:
            self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @classmethod
    def for_database(cls, factory: sessionmaker[Session]) -> _IndexTurns:
        url = getattr(factory.kw.get("bind"), "url", None)
        if url is None or url.get_backend_name() != "sqlite":
            return cls(queue=False)
        database = url.database
        if not database or database == ":memory:":
            return cls(queue=True)
        return cls(queue=True, lock_path=Path(f"{database}-ingest.lock"))

    @contextlib.contextmanager
    def __call__(self, ready: Callable[[], object]) -> Iterator[None]:
        """Hold the turn. An ingest that finds another writing first waits for `ready()` (its
        own spool write): a turn is then held only for the statements, not for a sync; alone,
        it goes straight in and its statements overlap its sync."""
        if not self._queue:
            yield
            return
        if not self._thread_lock.acquire(blocking=False):
            ready()
            self._thread_lock.acquire()
        try:  # threads share one fd, and flock does not tell them apart: the lock above does
            if self._fd is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a DICOM node worker process is writing
                    ready()
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()
