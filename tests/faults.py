"""Helpers for fault-injection tests: small synthetic instances, a TCP proxy, polling.

The proxy stands between the hub and PostgreSQL so a test can take the database "down"
(refuse new connections, cut open ones) and bring it back on the same port, without
touching the server other tests share.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from dicom_node.retrieve import sender_only

T = TypeVar("T")


# --- synthetic instances ----------------------------------------------------------------------


def make_series(count: int, *, patient_id: str = "FAULT1", size: int = 32) -> list[bytes]:
    """One CT study/series of `count` small slices as Part 10 bytes; fresh UIDs every call.

    Small images keep hundreds of instances cheap; nothing in the paths under test depends
    on pixel size.
    """
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(count)
    out: list[bytes] = []
    for k in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = "Fault^Test"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyDate = "20260302"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def sop_uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of the dataset after the file meta group.

    A DICOM node writes its own file meta (implementation UID, source AE) in front of the
    received dataset, so only the dataset part is comparable with what the sender had.
    """
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert ds.file_meta.FileMetaInformationGroupLength is not None
    start = 128 + 4 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return hashlib.sha256(data[start:]).hexdigest()


def write_files(folder: Path, instances: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(instances):
        path = folder / f"{i:04d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


# --- waiting without bare sleeps --------------------------------------------------------------


def wait_for(probe: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except Exception as exc:  # the thing polled may be down for a while: keep polling
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}")
        time.sleep(interval)


# --- dcmtk storescu ---------------------------------------------------------------------------


def storescu(
    tool: str,
    port: int,
    files: list[Path],
    *,
    calling: str = "CLINIC_A_DR",
    options: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Send files over one association with dcmtk's storescu, verbose (statuses in stderr)."""
    return subprocess.run(
        [tool, "-v", *options, "-aet", calling, "-aec", "TELEHEALTH", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


# --- a TCP proxy that can be taken down and brought back on the same port ---------------------


class TcpProxy:
    """Forward 127.0.0.1:port to a target; `stop()` refuses and cuts, `start()` restores.

    Threads, not asyncio: the hub under test is synchronous and a few connections suffice.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # the same port again after a stop
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener (new connections are refused) and cut every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(source)
            source.close()


def _nodelay(event: evt.Event) -> None:
    # pynetdicom leaves Nagle on; each C-STORE would then stall on a delayed ACK (~40 ms).
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send(
    port: int,
    calling: str,
    instances: list[bytes],
    *,
    on_success: Callable[[int], object] | None = None,
    timeout: float | None = 120,
) -> list[str]:
    """C-STORE over one association; the SOP Instance UIDs answered Success, in order.

    Stops quietly when the node goes away mid-association (tests kill nodes).
    `on_success(count)` is called after each Success (to kill something mid-way). `timeout`
    (ACSE, DIMSE and network) is generous by default: a spool fsync can stall for seconds on
    a disk other work keeps busy; None keeps pynetdicom's own.
    """
    ae = AE(calling)
    # The syntax make_series writes: each dataset goes out as encoded, never re-encoded.
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    if timeout is not None:
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    datasets = [dcmread(io.BytesIO(data)) for data in instances]
    assoc = sender_only(
        ae.associate(
            "127.0.0.1", port, ae_title="TELEHEALTH", evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
        )
    )
    acknowledged: list[str] = []
    if not assoc.is_established:
        return acknowledged
    try:
        for ds in datasets:
            if not assoc.is_established:
                break
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, OSError):
                break  # the peer vanished mid-request
            if getattr(status, "Status", None) == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
                if on_success is not None:
                    on_success(len(acknowledged))
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged
