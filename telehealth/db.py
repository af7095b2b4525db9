"""Database plumbing: engine, sessions, migrations. SQLite (WAL) embedded, PostgreSQL in prod."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import DateTime, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from telehealth.clock import as_utc
from telehealth.errors import Overloaded

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value) if value is not None else None


class Base(DeclarativeBase):
    pass


class DatabaseUnavailable(Overloaded):
    """The database did not answer; nothing was committed."""


def create_db_engine(url: str) -> Engine:
    """Create an engine; on SQLite turn on WAL and make every transaction take the write lock.

    SQLite cannot upgrade a read transaction to a write one when another connection wrote in
    between (SQLITE_BUSY_SNAPSHOT, not retried by busy_timeout). Beginning every transaction
    IMMEDIATE avoids that; and every transaction of a database file waits for its turn at the
    lock in one queue (WriteTurns) rather than in SQLite's busy handler.
    """
    if url.startswith("sqlite"):
        database = make_url(url).database
        on_file = bool(database) and database != ":memory:"
        turns = WriteTurns.for_file(database) if on_file and database else None
        # A connection to a file costs a few file descriptors. Threads short of one wait in
        # the pool, where whoever returns one may take it straight back: enough for every
        # thread keeps all waiting in WriteTurns' line. (In memory: one connection a thread.)
        pool: dict[str, int] = {"pool_size": 50, "max_overflow": 50} if on_file else {}
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": BUSY_TIMEOUT_SECONDS,
                "factory": TurnTakingConnection,
            },
            **pool,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            dbapi_conn.turns = turns
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode may lose the last commits on power loss, never corrupt: the
            # fsynced spool is the journal that rebuilds them (archive.recover_spool).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            _begin_sqlite(conn.connection.dbapi_connection)

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


# SQLite's busy_timeout, and how long a transaction waits for its turn before failing as
# SQLite would ("database is locked").
BUSY_TIMEOUT_SECONDS = 30.0


class WriteTurns:
    """Transactions on one SQLite file take turns at its write lock, across the threads of a
    process and the processes (DICOM node workers) that share it, and none waits for long.

    Left to itself, a SQLite writer that finds the lock taken sleeps 1, 2, 5, 10 ... 100 ms
    before trying again (its busy handler): the lock lies idle while sleepers sleep, and an
    unlucky writer loses every race for seconds while others go in at once. Here waiting
    threads stand in line and the first is woken as soon as the turn is free. A thread that
    is running takes a free turn at once even with others in line (waking a thread costs a
    trip through the scheduler, long on a busy machine), unless the first in line has waited
    STARVING_AFTER: then each turn is handed to the first in line. A blocking flock on a file
    beside the database queues the processes.
    """

    _by_file: ClassVar[weakref.WeakValueDictionary[str, WriteTurns]] = weakref.WeakValueDictionary()
    _by_file_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, lock_path: Path) -> None:
        self._lock_path = lock_path
        self._mutex = threading.Lock()  # guards the fields below, held only for a moment
        self._holder: int | None = None  # thread ident
        self._holder_name = ""  # its thread's name, and since when it holds the turn: for
        self._held_since = 0.0  # the log line of a turn held too long
        self._line: collections.deque[_Waiter] = collections.deque()
        self._pid = os.getpid()
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @classmethod
    def for_file(cls, database: str) -> WriteTurns:
        """The one line of this process for a database file (engines on one file share it)."""
        path = str(Path(database).resolve())
        with cls._by_file_lock:
            turns = cls._by_file.get(path)
            if turns is None:
                turns = cls._by_file[path] = cls(Path(f"{path}-turns.lock"))
            return turns

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the turn. False (not taken) when this thread already holds it through
        another connection: SQLite's own busy handling then decides, as it would have.
        Raises TimeoutError after `timeout`."""
        timeout = BUSY_TIMEOUT_SECONDS if timeout is None else timeout
        me = threading.get_ident()
        with self._mutex:
            if self._holder == me:
                return False
            if self._holder is None and not self._starving():
                self._holder = me
                waiter = None
            else:
                waiter = _Waiter(me)
                self._line.append(waiter)
        if waiter is not None and not self._wait(waiter, time.monotonic() + timeout):
            held = time.monotonic() - self._held_since
            raise TimeoutError(
                f"no turn at the write lock in {timeout:g} s"
                f" (thread {self._holder_name!r} has held it for {held:.1f} s)"
            )
        try:
            self._lock_file()
        except BaseException:
            self.release()
            raise
        self._holder_name = threading.current_thread().name
        self._held_since = time.monotonic()
        return True

    def _wait(self, waiter: _Waiter, deadline: float) -> bool:
        while True:
            woken = waiter.wake.acquire(timeout=max(deadline - time.monotonic(), 0))
            with self._mutex:
                if self._holder == waiter.ident:  # handed over, out of the line already
                    return True
                if self._holder is None:
                    self._line.remove(waiter)
                    self._holder = waiter.ident
                    return True
                if not woken:
                    self._line.remove(waiter)
                    return False
                waiter.woken = False  # a running thread was quicker: keep our place, wait on

    def release(self) -> None:
        held = time.monotonic() - self._held_since
        if held > SLOW_TURN_SECONDS:
            # Every other writer (a modality's C-STORE among them) waited this long.
            log.warning(
                "a SQLite write transaction held the lock for %.1f s (thread %r)",
                held,
                self._holder_name,
            )
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        with self._mutex:
            self._holder = None
            if not self._line:
                return
            first = self._line[0]
            if self._starving():
                self._line.popleft()
                self._holder = first.ident
            if not first.woken:
                first.woken = True
                first.wake.release()

    def _starving(self) -> bool:
        return bool(self._line) and time.monotonic() - self._line[0].since > STARVING_AFTER

    def _lock_file(self) -> None:
        if self._pid != os.getpid():  # forked: the inherited fd shares its lock with the parent
            self._pid = os.getpid()
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self._fd)


# A transaction holding the write lock longer than this is logged: others waited for it.
SLOW_TURN_SECONDS = 2.0

# How long the first in line may wait before turns are handed to it rather than taken by
# whichever thread runs; about the time of ten short transactions.
STARVING_AFTER = 0.02


class _Waiter:
    __slots__ = ("ident", "since", "wake", "woken")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.since = time.monotonic()
        self.wake = threading.Lock()
        self.wake.acquire()  # released (once per wake-up) by WriteTurns.release
        self.woken = False


class TurnTakingConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's turn (WriteTurns) from BEGIN until the
    transaction ends, whichever way it ends (commit, rollback, close)."""

    turns: WriteTurns | None = None
    _holds_turn = False

    def take_turn(self) -> None:
        if self.turns is not None and not self._holds_turn:
            self._holds_turn = self.turns.acquire()

    def end_turn(self) -> None:
        if self._holds_turn:
            self._holds_turn = False
            assert self.turns is not None
            self.turns.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if self._transaction_over():  # a failed COMMIT leaves it open until the rollback
                self.end_turn()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if self._transaction_over():
                self.end_turn()

    def _transaction_over(self) -> bool:
        try:
            return not self.in_transaction
        except sqlite3.ProgrammingError:  # closed
            return True

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()

    def __del__(self) -> None:
        self.end_turn()  # a connection dropped without close still lets the others go on


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# session.info key: rows that must be written even when the unit of work rolls back
# (the audit record of a refused access is the case in point).
KEEP_ON_ROLLBACK = "keep_on_rollback"


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error.

    Rows listed in `session.info[KEEP_ON_ROLLBACK]` are written in a transaction of their own
    when the unit of work fails. Raises DatabaseUnavailable when the database cannot be
    reached, so callers answer "retry later" rather than a generic failure.
    """
    session = factory()
    try:
        with session.begin():
            yield session
    except SQLAlchemyError as exc:
        if _is_unavailable(exc):
            raise DatabaseUnavailable("database unavailable") from exc
        raise
    except BaseException:
        keep = session.info.pop(KEEP_ON_ROLLBACK, None)
        if keep:
            with factory() as again, again.begin():
                again.add_all(make() for make in keep)
        raise
    finally:
        session.close()


def _begin_sqlite(dbapi_conn: TurnTakingConnection) -> None:
    """Take the database's turn (WriteTurns), then its write lock (BEGIN IMMEDIATE)."""
    try:
        dbapi_conn.take_turn()
    except TimeoutError as exc:  # what SQLite itself answers after busy_timeout
        locked = sqlite3.OperationalError("database is locked")
        raise OperationalError("BEGIN IMMEDIATE", None, locked) from exc
    try:
        dbapi_conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        dbapi_conn.end_turn()
        raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
    except BaseException:
        dbapi_conn.end_turn()
        raise


@contextmanager
def raw_transaction(engine: Engine) -> Iterator[Any]:
    """A transaction on a pooled driver connection, yielding its DBAPI cursor: commit on
    leaving, roll back on error, turns and BEGIN IMMEDIATE on SQLite as for every transaction.

    For a hot path whose statements are prepared already (archive KnownSeriesIndex): the
    Connection and Transaction objects of SQLAlchemy and their events cost a C-STORE more
    than its statements. Driver errors come out as SQLAlchemy's; raises DatabaseUnavailable
    as transaction() does (a connection found dead is dropped from the pool).
    """
    dialect = engine.dialect
    try:
        pooled = engine.raw_connection()
    except (SQLAlchemyError, dialect.loaded_dbapi.Error) as exc:  # the pool lets driver's out
        raise DatabaseUnavailable("database unavailable") from exc
    try:
        connection = pooled.driver_connection
        try:
            if dialect.name == "sqlite":
                _begin_sqlite(connection)  # type: ignore[arg-type]
            cursor = connection.cursor()  # type: ignore[union-attr]
            try:
                yield cursor
            finally:
                cursor.close()
            try:
                connection.commit()  # type: ignore[union-attr]
            except dialect.loaded_dbapi.Error as exc:
                raise DBAPIError.instance(
                    "COMMIT",
                    None,
                    exc,
                    dialect.loaded_dbapi.Error,
                    connection_invalidated=dialect.is_disconnect(exc, connection, None),
                    dialect=dialect,
                ) from exc
        except BaseException as exc:
            with contextlib.suppress(Exception):
                connection.rollback()  # type: ignore[union-attr]
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                pooled.invalidate()
            if isinstance(exc, SQLAlchemyError) and _is_unavailable(exc):
                raise DatabaseUnavailable("database unavailable") from exc
            raise
    finally:
        pooled.close()  # back to the pool


def _is_unavailable(exc: SQLAlchemyError) -> bool:
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
