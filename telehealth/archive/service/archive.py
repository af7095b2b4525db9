"""The one way in (`ingest`) and the one way out (`read_instance`) for instance bytes."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
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
from telehealth.archive.service.spool import Spool, SpoolFile
from telehealth.archive.service.stability import mark_stable_studies
from telehealth.archive.service.uploader import Uploader, UploadJob
from telehealth.clock import Clock
from telehealth.config import DuplicatePolicy
from telehealth.db import DatabaseUnavailable, raw_transaction, transaction
from telehealth.errors import Gone, NotFound
from telehealth.events import EventBus, Topic
from telehealth.storage import ObjectMissing, ObjectStore

log = logging.getLogger(__name__)


RECONCILE_EVERY_SECONDS = 60.0
RECONCILE_MIN_AGE_SECONDS = 300.0


class InstancePurged(Gone):
    """A retention rule removed the instance's bytes; its rows remain as the record."""


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
        self._engine: Engine = factory.kw["bind"]
        self._sync_before_index = self._engine.dialect.name == "sqlite"
        self._known_series = KnownSeriesIndex(self._engine)
        self.observe_ingest: Callable[[str, str, float, int], None] = _ignore

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
        error nothing is left behind. Each call is told to `observe_ingest` (the hub's
        Prometheus counters): source, outcome ("failed" on an error), seconds, bytes.
        """
        incoming = self.receive(origin)
        incoming.add(data)
        return incoming.keep(data)

    def receive(self, origin: Origin) -> IncomingInstance:
        """Start keeping an instance whose bytes arrive in parts (IncomingInstance.add), so
        that spooling and hashing go on while the rest is still on its way."""
        self.spool.mark_activity()  # uploads in every process step aside (Uploader)
        return IncomingInstance(self, origin)

    def _keep(
        self, file: SpoolFile, data: bytes | bytearray, sha256: str, origin: Origin
    ) -> IngestResult:
        """Parse, sync, index and queue the upload of a spooled instance (IncomingInstance.keep).

        On any error the spool file is gone when this raises, unless a lost COMMIT may have
        made a row point at it.
        """
        try:
            header = parse_header(data)
            file.keep(self.spool.new_name(origin.institution_id))
        except BaseException:
            file.discard()
            raise
        name = file.name
        # The index transaction commits only after the spool file is synced, so Success means
        # "on disk and indexed", and a failed sync leaves no row. On SQLite the sync comes
        # first, here: the transaction holds the one write lock (its turn, telehealth.db) from
        # BEGIN, and holding it across a sync stalls every other writer. On PostgreSQL, which
        # locks rows and costs a round trip per statement, the sync runs on another thread
        # while the statements go out.
        writing: futures.Future[None]
        if self._sync_before_index:
            writing = futures.Future()
            file.sync()  # raises SpoolUnavailable, the file removed
            writing.set_result(None)
        else:
            try:
                writing = self._writer.submit(file.sync)
            except BaseException:  # shutting down
                file.discard()
                raise
        committing: list[bool] = []
        try:
            copy = StoredCopy(name, sha256, len(data))
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
                    "sop_class_uid": header.sop_class_uid,
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
        (KnownSeriesIndex, raw_transaction); the object key, or None when index_instance must
        decide.

        Raises DatabaseUnavailable as transaction() does, IntegrityError, StudyOwnedElsewhere.
        """
        with raw_transaction(self._engine) as cursor:
            key = self._known_series.add(cursor, header, origin, copy, self.clock.now())
            if key is None:
                return None  # nothing was written
            synced()  # raises the spool write's error: the transaction rolls back
            committing.append(True)  # leaving the block commits
        return key

    # --- the one way out ---------------------------------------------------------------------

    def read_at(self, location: InstanceLocation) -> bytes:
        """The bytes at a location looked up earlier (for many instances in one query).

        Needs no transaction, so a long retrieve does not open one per instance (on SQLite
        each takes the write lock). Falls back to read_instance when the uploader moved
        the file or a replace changed the object since the lookup.
        Raises InstanceNotFound, StoreUnavailable.
        """
        if location.state == StorageState.PURGED:
            raise InstancePurged(f"instance {location.sop_instance_uid} was removed by retention")
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
            if state == StorageState.PURGED:
                raise InstancePurged(f"instance {sop_instance_uid} was removed by retention")
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


class IncomingInstance:
    """An instance whose bytes arrive in parts (a C-STORE's PDVs): each part is hashed and
    written to the spool as it comes (`add`), and `keep` does the rest of Archive.ingest
    once the last has come; `discard` drops it (the association ended mid-dataset).

    A spool error during `add` is kept and raised by `keep`, so the sender still gets its
    failure status when the dataset is complete; nothing more is written after it.
    """

    def __init__(self, archive: Archive, origin: Origin) -> None:
        self.archive = archive
        self.origin = origin
        self._hash = hashlib.sha256()
        self._file: SpoolFile | None = None
        self._error: BaseException | None = None
        self._size = 0
        self._seconds = 0.0  # spent here, not waiting for the sender's bytes

    def add(self, part: bytes | bytearray | memoryview) -> None:
        """The next bytes of the Part 10 instance, from its preamble on."""
        if self._error is not None:
            return
        started = time.perf_counter()
        try:
            if self._file is None:
                self._file = self.archive.spool.create()
            # Both release the GIL: other associations go on meanwhile.
            self._hash.update(part)
            self._file.write(part)
            self._size += len(part)
        except Exception as exc:  # SpoolFull, SpoolUnavailable
            # Kept without its frames: they hold `part`, a view that pins the sender's buffer.
            cause: BaseException | None = exc
            while cause is not None:
                cause.__traceback__ = None
                cause = cause.__cause__ or cause.__context__
            self._error = exc
            self.discard()
        self._seconds += time.perf_counter() - started

    def keep(self, data: bytes | bytearray) -> IngestResult:
        """Keep the instance, `data` being all its bytes as added; raises as Archive.ingest."""
        archive, started = self.archive, time.perf_counter()
        try:
            if self._error is not None:
                raise self._error
            if self._file is None or self._size != len(data):
                self.discard()
                raise ValueError("the bytes kept are not the bytes added")
            file, self._file = self._file, None
            result = archive._keep(file, data, self._hash.hexdigest(), self.origin)
        except BaseException:
            seconds = self._seconds + time.perf_counter() - started
            archive.observe_ingest(self.origin.source, "failed", seconds, 0)
            raise
        seconds = self._seconds + time.perf_counter() - started
        archive.observe_ingest(self.origin.source, result.outcome, seconds, len(data))
        return result

    def discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.discard()


def _ignore(source: str, outcome: str, seconds: float, size: int) -> None:
    """No one counts ingests (tests and tools that build an Archive alone)."""
