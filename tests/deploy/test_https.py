"""`telehealth serve` over HTTPS with certificates from configuration, and forwarded headers
believed only from the proxy addresses the admin lists (TELEHEALTH_FORWARDED_ALLOW_IPS)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from telehealth.storage import S3Endpoint
from tests.conftest import free_port
from tests.dicom_node.test_tls import self_signed
from tests.faults import wait_for
from tests.test_crash_recovery import TELEHEALTH, _cli, _env

PASSWORD = "a-long-password"
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextmanager
def serving(env: dict[str, str], data_dir: Path, log: Path, scheme: str, **verify: object):  # type: ignore[no-untyped-def]
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [TELEHEALTH, "serve", "--no-dicom", "--data-dir", str(data_dir), "--http-port",
             str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    base = f"{scheme}://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"{base}/api/health", timeout=2, **verify).status_code == 200  # type: ignore[arg-type]
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60, what="the hub to answer", interval=0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def env(tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str) -> Iterator[dict[str, str]]:
    env = _env(tmp_path / "data", database_url, s3, bucket)
    d = ("--data-dir", str(tmp_path / "data"))
    for args in (
        ("institution", "add", "COUNTY", "--name", "县人民医院", "--level", "county", *d),
    ):
        assert _cli(env, *args).returncode == 0
    added = subprocess.run(
        [TELEHEALTH, "user", "add", "admin", "--role", "admin", "--institution", "COUNTY", *d],
        env=env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    yield env


def login_address(base: str, forwarded_for: str, **verify: object) -> str:
    """Log in with an X-Forwarded-For header; the address the audit trail recorded."""
    headers = {"x-forwarded-for": forwarded_for}
    with httpx.Client(base_url=base, **verify) as http:  # type: ignore[arg-type]
        answer = http.post(
            "/api/auth/login", json={"username": "admin", "password": PASSWORD}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        trail = http.get("/api/audit", headers={"authorization": f"Bearer {token}"}).json()
    return str(next(e for e in trail if e["action"] == "auth.login")["source_address"])


def test_https_with_configured_certificate_and_plain_http_refused(
    env: dict[str, str], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path, "hub")
    env |= {"TELEHEALTH_HTTP_TLS_CERT": str(cert), "TELEHEALTH_HTTP_TLS_KEY": str(key)}
    trust = ssl.create_default_context(cafile=str(cert))
    with serving(env, tmp_path / "data", tmp_path / "hub.log", "https", verify=trust) as base:
        assert httpx.get(f"{base}/api/health", verify=trust).json()["database"] is True
        with pytest.raises(httpx.ConnectError):  # a client that does not trust it stops
            httpx.get(f"{base}/api/health")
        plain = base.replace("https://", "http://")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{plain}/api/health", timeout=5)
        # The client's own address: from loopback, the proxy the default trusts.
        assert login_address(base, "10.20.30.40", verify=trust) == "10.20.30.40"


def test_forwarded_for_is_ignored_from_an_address_not_listed(
    env: dict[str, str], tmp_path: Path
) -> None:
    env |= {"TELEHEALTH_FORWARDED_ALLOW_IPS": "10.0.0.1"}  # the proxy is elsewhere
    with serving(env, tmp_path / "data", tmp_path / "hub.log", "http") as base:
        # A client that forges the header gets its real address recorded.
        assert login_address(base, "10.20.30.40") == "127.0.0.1"
