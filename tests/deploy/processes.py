"""The hub as several real processes: `telehealth serve --no-dicom` API processes and
`telehealth dicom-node` processes on one PostgreSQL database, one S3 bucket and one Redis.

Plain helpers (no pytest fixtures), so bench/scale.py starts the same cluster the
multi-process test does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, make_url, text

from telehealth.auth.models import Role
from telehealth.cases import service as cases
from telehealth.cases.models import CaseService
from telehealth.clock import FakeClock
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction
from telehealth.storage import S3Endpoint
from tests.cases import PASSWORD, add_user, build_world

TELEHEALTH = str(Path(sys.executable).parent / "telehealth")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own on the server of `server_url`, dropped afterwards."""
    name = f"th_cluster_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a killed process's connection may linger
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


READERS = ["img1", "img2", "img3", "img4"]


def seed(database_url: str) -> dict[str, int]:
    """Migrate and seed: the consortium of tests.cases, one imaging group of four readers.

    Done before any process starts; they then find the routing tables filled and seed nothing.
    """
    engine = create_db_engine(database_url)
    try:
        migrate(engine)
        factory = make_session_factory(engine)
        cases.seed_on_first_start(factory, cases.CaseContext())  # the default deadlines
        clock = FakeClock(datetime.now(UTC))
        with transaction(factory) as session:
            world = build_world(session, clock, groups=False)
            for reader in READERS[1:]:
                world.users[reader] = add_user(
                    session, reader, Role.SPECIALIST, world.ids["COUNTY"], clock.now()
                )
            world.group(
                "COUNTY_IMG", "COUNTY", READERS, lead="img1", services=[CaseService.IMAGING]
            )
            return dict(world.ids)
    finally:
        engine.dispose()


@dataclass
class Cluster:
    """What every process shares: database, bucket, secret, Redis channel."""

    database_url: str
    s3: S3Endpoint
    bucket: str
    redis_url: str
    channel: str
    root: Path
    secret: str = field(default_factory=lambda: "cluster-" + uuid.uuid4().hex)
    extra: dict[str, str] = field(default_factory=dict)

    def env(self, data_dir: Path) -> dict[str, str]:
        # A TELEHEALTH_* variable of the developer's shell must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEHEALTH_")}
        env.update(
            TELEHEALTH_DATA_DIR=str(data_dir),
            TELEHEALTH_DATABASE_URL=self.database_url,
            TELEHEALTH_S3_ENDPOINT=self.s3.endpoint,
            TELEHEALTH_S3_ACCESS_KEY=self.s3.access_key,
            TELEHEALTH_S3_SECRET_KEY=self.s3.secret_key,
            TELEHEALTH_S3_BUCKET=self.bucket,
            TELEHEALTH_SECRET_KEY=self.secret,
            TELEHEALTH_REDIS_URL=self.redis_url,
            TELEHEALTH_REDIS_CHANNEL=self.channel,
            TELEHEALTH_SPOOL_MIN_FREE_BYTES="0",
            TELEHEALTH_UPLOAD_RETRY_SECONDS="0.2",
            TELEHEALTH_LOG_LEVEL="WARNING",
            TELEHEALTH_SIGNALING_PORT=str(free_port()),
        )
        env.update(self.extra)
        return env

    def api(self, name: str) -> Process:
        port = free_port()
        return Process(self, name, ["serve", "--no-dicom", "--http-port", str(port)], port)

    def node(self, name: str, port: int | None = None) -> Process:
        port = port or free_port()
        return Process(self, name, ["dicom-node", "--dicom-port", str(port)], port)


class Process:
    """One hub process with a data folder (spool) of its own; its output goes to a log file.

    Starting it again with the same name reuses the folder: a node restarted after a crash
    finds its spool.
    """

    def __init__(self, cluster: Cluster, name: str, args: list[str], port: int) -> None:
        self.cluster = cluster
        self.name = name
        self.args = args
        self.port = port
        self.is_api = args[0] == "serve"
        self.data_dir = cluster.root / name
        self.log = cluster.root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [TELEHEALTH, *self.args, "--data-dir", str(self.data_dir)],
                env=self.cluster.env(self.data_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited; log:\n{self.log.read_text()[-3000:]}")
        if self.is_api:
            health = httpx.get(f"{self.url}/api/health", timeout=5).json()
            return bool(health["status"] == "ok" and health.get("cluster_events"))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2):
            return True

    def wait_ready(self, timeout: float = 180) -> Process:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, httpx.HTTPError):
                if self.ready():
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when the machine or the OOM killer takes it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def login(api_url: str, username: str) -> str:
    answer = httpx.post(
        f"{api_url}/api/auth/login", json={"username": username, "password": PASSWORD}, timeout=10
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])
