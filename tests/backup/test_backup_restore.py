"""`telehealth backup` then `telehealth restore` into an empty database: the index comes back
whole and the store is checked against the manifest, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from telehealth.archive.models import Instance, Study
from telehealth.archive.service import fsck
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.storage import ObjectStore, S3Endpoint
from tests.conftest import (
    POSTGRES_URL,
    _postgres_reachable,
    hub_settings,
    seed_consortium,
    upload_origin,
)
from tests.deploy.processes import fresh_database
from tests.dicomweb import CT, fresh_copy
from tests.test_crash_recovery import _cli, _env


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own: pg_dump takes a whole database, not a test's schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'telehealth.db'}"
        return
    reason = _postgres_reachable()
    if reason:
        pytest.skip(reason)
    with fresh_database(POSTGRES_URL) as url:
        yield url


def open_hub(tmp_path: Path, database: str, s3: S3Endpoint, bucket: str) -> Hub:
    hub = Hub(hub_settings(tmp_path / "data", database, s3, bucket)).open()
    hub.start(dicom=False)
    return hub


def counts(hub: Hub) -> tuple[int, int]:
    with hub.factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Study)) or 0,
            session.scalar(select(func.count()).select_from(Instance)) or 0,
        )


def test_backup_then_restore_into_an_empty_database(
    tmp_path: Path, database: str, s3: S3Endpoint, bucket: str, store: ObjectStore
) -> None:
    hub = open_hub(tmp_path, database, s3, bucket)
    try:
        with transaction(hub.factory) as session:
            ids = seed_consortium(session)
        for _ in range(3):
            hub.archive.ingest(fresh_copy(CT), upload_origin(ids["CLINIC_A"]))
        assert hub.archive.uploader.wait_idle(timeout=60)
        before = counts(hub)
    finally:
        hub.close()
    env = _env(tmp_path / "data", database, s3, bucket)
    folder = tmp_path / "backup"

    made = _cli(env, "backup", str(folder))
    assert made.returncode == 0, made.stderr
    description = json.loads((folder / "backup.json").read_text())
    assert description["objects"] == 3
    assert "objects=3" in made.stdout
    # A second backup into the same folder would mix two: refused.
    assert _cli(env, "backup", str(folder)).returncode == 1

    # The hub is in use: restore will not overwrite it unless forced.
    refused = _cli(env, "restore", str(folder))
    assert refused.returncode == 1 and "--force" in refused.stderr

    with fresh_empty(database) as target:
        env_target = _env(tmp_path / "data", target, s3, bucket)
        restored = _cli(env_target, "restore", str(folder))
        assert restored.returncode == 0, restored.stderr
        assert "objects_missing=0" in restored.stdout
        hub = Hub(hub_settings(tmp_path / "data", target, s3, bucket)).open()
        try:
            assert counts(hub) == before == (3, 3)  # fresh_copy: a study per copy
            with transaction(hub.factory) as session:
                assert fsck(session, hub.spool, hub.store).clean
        finally:
            hub.close()

        # An object lost from the store since the backup is reported, and restore fails.
        lost = next(iter(store.list_objects()))
        store.remove(lost.key)
        again = _cli(env_target, "restore", "--force", str(folder))
        assert again.returncode == 1
        assert "objects_missing=1" in again.stdout
        assert lost.key in again.stderr


def test_restore_refuses_a_folder_that_is_not_a_backup(
    tmp_path: Path, s3: S3Endpoint, bucket: str
) -> None:
    database = f"sqlite:///{tmp_path / 'data' / 'telehealth.db'}"
    (tmp_path / "not-a-backup").mkdir()
    done = _cli(
        _env(tmp_path / "data", database, s3, bucket), "restore", str(tmp_path / "not-a-backup")
    )
    assert done.returncode == 1
    assert "not a backup folder" in done.stderr


@contextmanager
def fresh_empty(database: str) -> Iterator[str]:
    """An empty database of the same kind as `database`, for the restore to fill."""
    if database.startswith("sqlite"):
        path = Path(database.removeprefix("sqlite:///"))
        yield f"sqlite:///{path.parent.parent / 'restored' / 'telehealth.db'}"
        return
    with fresh_database(POSTGRES_URL) as url:
        yield url
