"""Database plumbing: engine, sessions, migrations. SQLite (WAL) embedded, PostgreSQL in prod."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from telehealth.clock import as_utc
from telehealth.errors import Overloaded

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


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
    IMMEDIATE avoids that: writers queue on busy_timeout instead of failing.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode may lose the last commits on power loss, never corrupt: the
            # fsynced spool is the journal that rebuilds them (archive.recover_spool).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


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


def _is_unavailable(exc: SQLAlchemyError) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

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
