"""The `telehealth` command as an admin runs it: a real process, a real database and S3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from telehealth.archive.models import Instance
from telehealth.auth import service as auth
from telehealth.db import create_db_engine, make_session_factory, transaction
from telehealth.hub import Hub
from telehealth.storage import ObjectStore, S3Endpoint
from tests.conftest import DEV_DATA, hub_settings, seed_consortium, upload_origin

TELEHEALTH = Path(sys.executable).parent / "telehealth"
CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
COMMANDS = [
    [],
    ["serve"],
    ["migrate"],
    ["fsck"],
    ["institution"],
    ["institution", "add"],
    ["institution", "list"],
    ["user"],
    ["user", "add"],
    ["ae"],
    ["ae", "add"],
    ["ae", "list"],
    ["routing"],
    ["routing", "load"],
    ["routing", "show"],
    ["dicom-node"],
    ["signaling"],
    ["backup"],
    ["restore"],
    ["retention"],
    ["retention", "apply"],
]


class Cli:
    """Runs `telehealth … --data-dir D` with only this test's TELEHEALTH_* settings."""

    def __init__(self, tmp_path: Path, s3: S3Endpoint, bucket: str) -> None:
        self.data_dir = tmp_path / "data"
        self.database_url = f"sqlite:///{tmp_path / 'cli.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEHEALTH_")}
        env.update(
            TELEHEALTH_DATABASE_URL=self.database_url,
            # An S3 endpoint given, so fsck uses the test server rather than starting its own.
            TELEHEALTH_S3_ENDPOINT=s3.endpoint,
            TELEHEALTH_S3_ACCESS_KEY=s3.access_key,
            TELEHEALTH_S3_SECRET_KEY=s3.secret_key,
            TELEHEALTH_S3_BUCKET=bucket,
            COLUMNS="200",  # rich cuts table cells to 80 columns when not at a terminal
            NO_COLOR="1",
        )
        self.env = env

    def __call__(
        self, *args: str, stdin: str = "", data_dir: bool = True
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--data-dir", str(self.data_dir)] if data_dir else []
        return subprocess.run(
            [str(TELEHEALTH), *args, *extra],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )


@pytest.fixture
def cli(tmp_path: Path, s3: S3Endpoint, bucket: str) -> Cli:
    if not TELEHEALTH.exists():
        pytest.skip(f"{TELEHEALTH} is not installed (pip install -e .)")
    return Cli(tmp_path, s3, bucket)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _fails(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout  # a clear error, not a crash


def test_every_command_has_help(cli: Cli) -> None:
    # A few at a time: each is a Python start-up of a second or more, and all at once would
    # time out on a loaded two-core machine.
    def help_of(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TELEHEALTH), *command, "--help"],
            capture_output=True,
            text=True,
            env=cli.env,
            timeout=120,
            check=False,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        for command, done in zip(COMMANDS, pool.map(help_of, COMMANDS), strict=True):
            assert done.returncode == 0, (command, done.stderr)
            assert "Usage:" in done.stdout, command
    # --help must not have touched a database or a data folder.
    assert not cli.data_dir.exists()


def test_admin_builds_the_consortium(cli: Cli) -> None:
    assert "up to date" in _ok(cli("migrate"))
    _ok(cli("institution", "add", "COUNTY", "--name", "县人民医院", "--level", "county"))
    out = _ok(
        cli(
            "institution",
            "add",
            "CHENGGUAN",
            "--name",
            "城关镇卫生院",
            "--level",
            "township",
            "--parent",
            "COUNTY",
        )
    )
    assert "CHENGGUAN added" in out
    _fails(cli("institution", "add", "COUNTY", "--name", "重复", "--level", "county"), "COUNTY")
    _fails(cli("institution", "add", "LOST", "--name", "孤儿", "--parent", "NOWHERE"), "NOWHERE")
    listing = _ok(cli("institution", "list"))
    assert "县人民医院" in listing
    assert "城关镇卫生院" in listing
    row = next(line for line in listing.splitlines() if "CHENGGUAN" in line)
    assert "township" in row
    assert "COUNTY" in row  # the parent column

    out = _ok(
        cli(
            "user",
            "add",
            "tech1",
            "--role",
            "technician",
            "--institution",
            "CHENGGUAN",
            stdin="another-password\n",
        )
    )
    assert "tech1 added" in out
    _fails(
        cli(
            "user",
            "add",
            "tech2",
            "--role",
            "technician",
            "--institution",
            "CHENGGUAN",
            stdin="short\n",
        ),
        "at least 8",
    )
    _fails(
        cli(
            "user",
            "add",
            "tech1",
            "--role",
            "admin",
            "--institution",
            "COUNTY",
            stdin="a-long-password\n",
        ),
        "already exists",
    )
    _fails(
        cli(
            "user",
            "add",
            "tech3",
            "--role",
            "admin",
            "--institution",
            "NOWHERE",
            stdin="a-long-password\n",
        ),
        "NOWHERE",
    )
    assert cli("user", "add", "x", "--role", "emperor", "--institution", "COUNTY").returncode == 2

    _ok(cli("ae", "add", "CG_DR01", "--institution", "CHENGGUAN", "--host", "10.1.2.3"))
    _fails(cli("ae", "add", "CG_DR01", "--institution", "COUNTY"), "already registered")
    _fails(cli("ae", "add", "BAD\\TITLE", "--institution", "COUNTY"), "invalid AE title")
    _ok(cli("ae", "add", "CITY_PACS", "--institution", "COUNTY", "--port", "11112", "--tls"))
    rows = _ok(cli("ae", "list")).splitlines()
    row = next(line for line in rows if "CG_DR01" in line)
    assert "10.1.2.3" in row and "yes" not in row
    assert "yes" in next(line for line in rows if "CITY_PACS" in line)  # the TLS column

    # What the commands wrote is what the hub reads: the password from stdin logs in.
    engine = create_db_engine(cli.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            user = auth.authenticate(session, "tech1", "another-password")
            assert user.role == "technician"
            with pytest.raises(auth.BadCredentials):
                auth.authenticate(session, "tech2", "short")
    finally:
        engine.dispose()


def test_fsck_finds_an_object_missing_behind_the_index(
    cli: Cli, s3: S3Endpoint, bucket: str
) -> None:
    hub = Hub(hub_settings(cli.data_dir, cli.database_url, s3, bucket)).open()
    try:
        hub.start(dicom=False)
        with transaction(hub.factory) as session:
            ids = seed_consortium(session)
        result = hub.archive.ingest(CT.read_bytes(), upload_origin(ids["CLINIC_A"]))
        assert hub.archive.uploader.wait_idle(30)
        with transaction(hub.factory) as session:
            instance = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == result.sop_instance_uid)
            )
            assert instance is not None and instance.object_key
            key = instance.object_key
    finally:
        hub.close()

    out = _ok(cli("fsck"))
    assert "instances=1" in out
    assert "problems=0" in out

    ObjectStore(s3, bucket).remove(key)
    broken = cli("fsck")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "problems=1" in broken.stdout
    assert result.sop_instance_uid in broken.stdout or key in broken.stdout


# A long-running command's wait, as `serve`'s DICOM workers and `dicom-node` use it.
WAIT_FOR_STOP = """
from telehealth.cli import _stop_signals
with _stop_signals() as wait_for_stop:
    print("waiting", flush=True)
    wait_for_stop()
"""


def test_a_stream_of_sigterms_stops_a_waiting_command() -> None:
    """`serve` stopping sends each DICOM worker two SIGTERMs at once (the parent-death signal
    and its own). A handler that set a threading.Event deadlocked when the second landed
    inside the first, and the worker lived on as an orphan; a stream of SIGTERMs makes such a
    landing all but certain (9 runs in 10 hung that way)."""
    for _ in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", WAIT_FOR_STOP], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "waiting\n"
        until = time.monotonic() + 0.3
        while time.monotonic() < until and process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("the command hung on its SIGTERMs") from None
