"""`telehealth backup DIR` and `telehealth restore DIR`.

A backup folder holds:
- `database.sqlite` (SQLite's online backup API: a consistent copy while the hub runs) or
  `database.pgdump` (`pg_dump --format=custom`, one consistent snapshot);
- `objects.jsonl.gz`: every object in the bucket (key, size, etag) when the backup was made;
- `backup.json`: when, which schema revision, which database kind, counts.

Restore loads the dump into the configured database (refusing one that already holds data
unless forced), brings the schema up to date, and checks every object of the manifest is in
the store: a missing one is reported, never silently ignored.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect, literal_column, make_url, select, text
from sqlalchemy import table as table_clause

from telehealth.storage import ObjectStore

log = logging.getLogger(__name__)

MANIFEST = "objects.jsonl.gz"
DESCRIPTION = "backup.json"
SQLITE_DUMP = "database.sqlite"
POSTGRES_DUMP = "database.pgdump"
# Tables whose rows mean "this database is in use": restore will not overwrite them.
_IN_USE_TABLES = ("institutions", "users", "studies")


class RestoreRefused(Exception):
    """The target database already holds data, or the backup folder is not a backup."""


@dataclass(frozen=True)
class BackupSummary:
    folder: str
    made_at: str
    database: str  # "sqlite" or "postgresql"
    schema_revision: str
    objects: int
    object_bytes: int


@dataclass(frozen=True)
class RestoreSummary:
    objects_expected: int
    objects_missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.objects_missing


def backup(database_url: str, engine: Engine, store: ObjectStore, folder: Path) -> BackupSummary:
    """Dump the database and list the objects into `folder` (created; must be empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        _sqlite_backup(Path(url.database or ""), folder / SQLITE_DUMP)
    elif url.get_backend_name() == "postgresql":
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={folder / POSTGRES_DUMP}",
              *_libpq_args(database_url)], database_url)  # fmt: skip
    else:
        raise ValueError(f"cannot back up a {url.get_backend_name()} database")
    # Listed after the dump: an object uploaded in between is listed but not indexed, which
    # is harmless; the reverse (indexed, not listed) cannot happen for uploaded objects.
    count = size = 0
    with gzip.open(folder / MANIFEST, "wt", encoding="utf-8") as manifest:
        for info in store.list_objects():
            manifest.write(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))
            manifest.write("\n")
            count += 1
            size += info.size
    summary = BackupSummary(
        folder=str(folder),
        made_at=datetime.now(UTC).isoformat(),
        database=url.get_backend_name(),
        schema_revision=_schema_revision(engine),
        objects=count,
        object_bytes=size,
    )
    (folder / DESCRIPTION).write_text(json.dumps(asdict(summary), indent=2))
    log.info("backup written: %d objects listed, database %s", count, summary.database)
    return summary


def restore_database(folder: Path, database_url: str, *, force: bool = False) -> str:
    """Load the backup's dump into the database at `database_url`; the hub must be stopped.

    Returns the schema revision the backup was made at (the caller migrates from there).
    """
    described = folder / DESCRIPTION
    if not described.is_file():
        raise RestoreRefused(f"{folder} holds no {DESCRIPTION}: not a backup folder")
    description = json.loads(described.read_text())
    url = make_url(database_url)
    if url.get_backend_name() != description["database"]:
        raise RestoreRefused(
            f"the backup is of a {description['database']} database; "
            f"the target is {url.get_backend_name()}"
        )
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(database_url)
    try:
        if not force and _in_use(engine):
            raise RestoreRefused("the target database holds data; use --force to replace it")
    finally:
        engine.dispose()
    if url.get_backend_name() == "sqlite":
        target = Path(url.database or "")
        for stale in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
            stale.unlink(missing_ok=True)
        _sqlite_backup(folder / SQLITE_DUMP, target)
    else:
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
              *_libpq_args(database_url, flag="--dbname"), str(folder / POSTGRES_DUMP)],
             database_url)  # fmt: skip
    return str(description["schema_revision"])


def verify_objects(folder: Path, store: ObjectStore) -> RestoreSummary:
    """Every object of the backup's manifest that the store no longer has."""
    present = {info.key: info.size for info in store.list_objects()}
    expected = 0
    missing: list[str] = []
    with gzip.open(folder / MANIFEST, "rt", encoding="utf-8") as manifest:
        for line in manifest:
            entry = json.loads(line)
            expected += 1
            if present.get(entry["key"]) != entry["size"]:
                missing.append(entry["key"])
    return RestoreSummary(objects_expected=expected, objects_missing=missing)


def _sqlite_backup(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(source)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # page by page, consistent with concurrent writers (WAL)
    finally:
        dst.close()
        src.close()


def _libpq_args(database_url: str, flag: str = "--dbname") -> list[str]:
    """The connection for pg_dump/pg_restore, without the password (it goes in PGPASSWORD,
    not on a command line every user of the machine can read)."""
    url = make_url(database_url).set(drivername="postgresql", password=None)
    return [f"{flag}={url.render_as_string(hide_password=False)}"]


def _run(command: list[str], database_url: str) -> None:
    tool = shutil.which(command[0])
    if tool is None:
        raise FileNotFoundError(f"{command[0]} not found (apt-get install postgresql-client)")
    env = dict(os.environ)
    password = make_url(database_url).password
    if password:
        env["PGPASSWORD"] = str(password)
    done = subprocess.run([tool, *command[1:]], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")


def _schema_revision(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def _in_use(engine: Engine) -> bool:
    tables = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table in _IN_USE_TABLES:
            first_row = select(literal_column("1")).select_from(table_clause(table)).limit(1)
            if table in tables and conn.execute(first_row).first():
                return True
    return False
