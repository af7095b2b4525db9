"""Shared fixtures: one real embedded S3 server per run, a real database per test.

Every domain test runs on SQLite and on PostgreSQL (TELEHEALTH_TEST_POSTGRES_URL, set by
.ci/run); PostgreSQL tests are skipped with the reason when the server cannot be reached.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from telehealth.app import create_app
from telehealth.archive.models import IngestSource
from telehealth.archive.service import Origin
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.clock import FakeClock
from telehealth.config import Settings
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction
from telehealth.hub import Hub
from telehealth.institutions import service as institutions
from telehealth.storage import EmbeddedS3, ObjectStore, S3Endpoint

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEV_DATA = Path(os.environ.get("TELEHEALTH_DEV_DATA", SHARED / "data" / "dev"))
POSTGRES_URL = os.environ.get(
    "TELEHEALTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DCMTK = Path("/usr/bin")  # pynetdicom installs same-named scripts into the venv; use dcmtk's


def dcmtk(tool: str) -> str:
    path = DCMTK / tool
    if not path.exists():
        pytest.skip(f"dcmtk {tool} is not installed (apt-get install dcmtk)")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- object store -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One embedded S3 server for the whole run; starting it per test costs seconds."""
    server = EmbeddedS3(tmp_path_factory.mktemp("s3"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"  # one bucket per test: no cleanup ordering
    ObjectStore(s3, name).ensure_bucket()
    return name


@pytest.fixture
def store(s3: S3Endpoint, bucket: str) -> ObjectStore:
    return ObjectStore(s3, bucket)


# --- databases --------------------------------------------------------------------------------


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"


_PG_SKIP: list[str | None] = []


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'telehealth.db'}"
        return
    if not _PG_SKIP:
        _PG_SKIP.append(_postgres_reachable())
    if _PG_SKIP[0]:
        pytest.skip(_PG_SKIP[0])
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(database_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with transaction(factory) as session:
        yield session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))


# --- a whole hub ------------------------------------------------------------------------------


def hub_settings(
    data_dir: Path, database_url: str, s3: S3Endpoint, bucket: str, **extra: object
) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "s3_endpoint": s3.endpoint,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_bucket": bucket,
        "dicom_port": 0,
        "spool_min_free_bytes": 0,
        "upload_retry_seconds": 0.2,
        "secret_key": "test-secret-" + uuid.uuid4().hex,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def hub_factory(tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str) -> Iterator[object]:
    """Build hubs on this test's database and bucket: `make(**settings)`; all closed at the end."""
    hubs: list[Hub] = []

    def make(
        *, start: bool = True, dicom: bool = True, clock: FakeClock | None = None, **extra: object
    ) -> Hub:
        settings = hub_settings(tmp_path / "data", database_url, s3, bucket, **extra)
        hub = Hub(settings, clock=clock) if clock else Hub(settings)
        hub.open()
        hubs.append(hub)
        if start:
            hub.start(dicom=dicom)
        return hub

    yield make
    for hub in reversed(hubs):
        hub.close()
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.fixture
def hub(hub_factory) -> Hub:  # type: ignore[no-untyped-def]
    return hub_factory()  # type: ignore[no-any-return]


@pytest.fixture
def consortium(hub: Hub) -> dict[str, int]:
    """County hospital with two township clinics; each clinic has a registered modality."""
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
    return ids


def hub_with_users(
    hub_factory: Callable[..., Hub], clock: FakeClock, users: list[tuple[str, Role, str]]
) -> Hub:
    """A hub for tests that speak HTTP only (no DICOM node: it costs start-up time), with the
    seeded consortium and `users` (username, role, institution code), each with
    USER_PASSWORD."""
    hub = hub_factory(dicom=False, clock=clock)
    with transaction(hub.factory) as session:
        seed_consortium(session)
        for username, role, code in users:
            auth.create_user(
                session, username=username, password=USER_PASSWORD, role=role, institution_code=code
            )
    return hub


USER_PASSWORD = "a-long-password"


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    """The hub's HTTP app in process (the module's own `hub` fixture, where it has one)."""
    with TestClient(create_app(hub)) as client:
        yield client


def login_token(client: TestClient, username: str, password: str = USER_PASSWORD) -> str:
    """A bearer token; the login cookie is dropped so each call says who it is."""
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    client.cookies.clear()
    return str(response.json()["access_token"])


def seed_consortium(session: Session) -> dict[str, int]:
    county = institutions.add_institution(session, code="COUNTY", name="县人民医院", level="county")
    a = institutions.add_institution(
        session, code="CLINIC_A", name="城关镇卫生院", level="township", parent_code="COUNTY"
    )
    b = institutions.add_institution(
        session, code="CLINIC_B", name="河口镇卫生院", level="township", parent_code="COUNTY"
    )
    institutions.add_application_entity(
        session, ae_title="CLINIC_A_DR", institution_code="CLINIC_A"
    )
    institutions.add_application_entity(
        session, ae_title="CLINIC_B_CT", institution_code="CLINIC_B"
    )
    return {"COUNTY": county.id, "CLINIC_A": a.id, "CLINIC_B": b.id}


def upload_origin(institution_id: int) -> Origin:
    return Origin(source=IngestSource.UPLOAD, institution_id=institution_id)


def sample_copy(path: Path, **attributes: object) -> bytes:
    """A sample file as a new instance: the given attributes set, and a fresh SOP Instance UID
    unless one is given (kept in the file meta too)."""
    ds = dcmread(path)
    attributes.setdefault("SOPInstanceUID", generate_uid())
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dev_files(*groups: str) -> list[Path]:
    """Sample files under ../shared/data/dev/<group>, recursively, sorted."""
    files: list[Path] = []
    for group in groups:
        files += sorted(p for p in (DEV_DATA / group).rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"no sample data under {DEV_DATA}")
    return files
