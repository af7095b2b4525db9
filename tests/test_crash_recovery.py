"""The real `telehealth serve` process killed mid-association: nothing answered Success is lost.

The hub runs as a child process against the session S3 server (so killing the hub does not
kill the store) and the test's database; a pynetdicom SCU sends, another thread SIGKILLs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from telehealth.archive.models import Instance, StorageState
from telehealth.db import create_db_engine
from telehealth.storage import ObjectStore, S3Endpoint
from tests.conftest import free_port
from tests.faults import dataset_sha256, make_series, send, sop_uid, wait_for

TELEHEALTH = str(Path(sys.executable).parent / "telehealth")
SLICES = 200
KILL_AFTER = 80


def _env(data_dir: Path, database_url: str, s3: S3Endpoint, bucket: str) -> dict[str, str]:
    # Start from a clean slate: a TELEHEALTH_* variable of the developer's shell must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEHEALTH_")}
    env.update(
        TELEHEALTH_DATA_DIR=str(data_dir),
        TELEHEALTH_DATABASE_URL=database_url,
        TELEHEALTH_S3_ENDPOINT=s3.endpoint,
        TELEHEALTH_S3_ACCESS_KEY=s3.access_key,
        TELEHEALTH_S3_SECRET_KEY=s3.secret_key,
        TELEHEALTH_S3_BUCKET=bucket,
        TELEHEALTH_SPOOL_MIN_FREE_BYTES="0",
        TELEHEALTH_UPLOAD_RETRY_SECONDS="0.2",
        TELEHEALTH_SECRET_KEY="crash-test-" + uuid.uuid4().hex,
        TELEHEALTH_LOG_LEVEL="WARNING",
        # serve also runs the signalling server; another test's hub may hold the default port.
        TELEHEALTH_SIGNALING_PORT=str(free_port()),
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TELEHEALTH, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _register_clinic(env: dict[str, str], data_dir: Path) -> None:
    d = ("--data-dir", str(data_dir))
    for args in (
        ("institution", "add", "COUNTY", "--name", "县人民医院", "--level", "county", *d),
        ("institution", "add", "CLINIC_A", "--name", "城关镇卫生院", "--parent", "COUNTY", *d),
        ("ae", "add", "CLINIC_A_DR", "--institution", "CLINIC_A", *d),
    ):
        done = _cli(env, *args)
        assert done.returncode == 0, done.stdout + done.stderr


class ServedHub:
    """One `telehealth serve` child process with its own ports; output goes to a log file."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    TELEHEALTH,
                    "serve",
                    "--data-dir",
                    str(data_dir),
                    "--http-port",
                    str(self.http_port),
                    "--dicom-port",
                    str(self.dicom_port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def health(self) -> dict[str, object]:
        answer: dict[str, object] = httpx.get(
            f"http://127.0.0.1:{self.http_port}/api/health", timeout=5
        ).json()
        return answer

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"hub exited; see {self.log.read_text()[-3000:]}"
            health = self.health()
            node = health["dicom_node"]
            return health["status"] == "ok" and isinstance(node, dict) and node["listening"]

        wait_for(ready, timeout=60, what="the hub to answer /api/health ok", interval=0.2)

    def wait_drained(self) -> None:
        wait_for(
            lambda: self.health()["spool_backlog"] == 0,
            timeout=60,
            what="the upload backlog to drain",
            interval=0.1,
        )

    def terminate(self, *, timeout: float = 10) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def served(env: dict[str, str], data_dir: Path, log: Path) -> Iterator[ServedHub]:
    hub = ServedHub(env, data_dir, log)
    try:
        hub.wait_ready()
        yield hub
    finally:
        hub.kill()  # a no-op when the test already stopped it


def _send(
    port: int, instances: list[bytes], *, kill_after: int | None = None, victim: ServedHub | None
) -> set[str]:
    """C-STORE over one association (pynetdicom's own timeouts: a C-STORE unanswered for
    30 s fails the test); the SOP Instance UIDs answered Success.

    With `kill_after`, another thread SIGKILLs the hub once that many were answered, while
    the sender keeps going, so the kill lands with a C-STORE in flight.
    """
    enough = threading.Event()
    killer: threading.Thread | None = None
    if kill_after is not None and victim is not None:

        def kill() -> None:
            enough.wait(60)
            victim.process.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()

    def counted(count: int) -> None:
        if kill_after is not None and count >= kill_after:
            enough.set()

    try:
        return set(send(port, "CLINIC_A_DR", instances, on_success=counted, timeout=None))
    finally:
        enough.set()
        if killer is not None:
            killer.join(timeout=10)


def _index(database_url: str) -> dict[str, tuple[StorageState, str]]:
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(Instance.sop_instance_uid, Instance.state, Instance.object_key)
            )
            return {uid: (state, key) for uid, state, key in rows}
    finally:
        engine.dispose()


def test_sigkill_mid_association_loses_nothing_answered_success(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> None:
    data_dir = tmp_path / "hub"
    env = _env(data_dir, database_url, s3, bucket)
    _register_clinic(env, data_dir)
    instances = make_series(SLICES, patient_id="CRASH1")
    sent = {sop_uid(data): data for data in instances}

    with served(env, data_dir, tmp_path / "serve-1.log") as hub:
        succeeded = _send(hub.dicom_port, instances, kill_after=KILL_AFTER, victim=hub)
        assert hub.process.wait(timeout=10) == -signal.SIGKILL
    # The kill landed mid-association (on failure: what the hub logged, the first suspect).
    hub_log = (tmp_path / "serve-1.log").read_text(errors="replace")[-3000:]
    assert KILL_AFTER <= len(succeeded) < SLICES, hub_log

    with served(env, data_dir, tmp_path / "serve-2.log") as hub:
        # Recovery ran before the node listened: every Success is indexed.
        assert succeeded <= set(_index(database_url))
        hub.wait_drained()
        checked = _cli(env, "fsck", "--data-dir", str(data_dir))
        assert checked.returncode == 0, checked.stdout + checked.stderr

        rest = [data for uid, data in sent.items() if uid not in succeeded]
        assert _send(hub.dicom_port, rest, victim=None) == set(sent) - succeeded
        hub.wait_drained()
        checked = _cli(env, "fsck", "--deep", "--data-dir", str(data_dir))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"instances={SLICES} stored={SLICES} spooled=0" in checked.stdout
        # SIGTERM is how a service manager stops the hub: a clean, prompt exit with status 0.
        assert hub.terminate(timeout=10) == 0

    index = _index(database_url)
    assert set(index) == set(sent)
    assert {state for state, _ in index.values()} == {StorageState.STORED}
    assert list((data_dir / "spool").glob("*.dcm")) == []  # no spooled instance left behind
    store = ObjectStore(s3, bucket)
    for uid, (_, key) in index.items():
        # The node writes its own file meta; the dataset after it is what the sender sent.
        assert dataset_sha256(store.get_bytes(key)) == dataset_sha256(sent[uid]), uid
