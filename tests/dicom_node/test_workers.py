"""Several DICOM node processes on one port: every association lands somewhere, nothing is lost,
and parallel associations are spread evenly over the processes."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from telehealth.archive.models import Instance, StorageState
from telehealth.db import create_db_engine, make_session_factory, transaction
from telehealth.storage import S3Endpoint
from tests.conftest import dcmtk
from tests.faults import make_series, send, storescu, wait_for, write_files
from tests.test_crash_recovery import _cli, _env, _register_clinic, served

ASSOCIATIONS = 4
PER_ASSOCIATION = 15


def _children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def _dicom_workers(hub_pid: int) -> list[int]:
    return [
        p for p in _children(hub_pid) if "dicom-worker" in Path(f"/proc/{p}/cmdline").read_text()
    ]


def _two_process_hub(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> tuple[Path, dict[str, str]]:
    """The data folder and environment of a `serve` with two DICOM node processes, one
    clinic registered."""
    data_dir = tmp_path / "data"
    env = _env(data_dir, database_url, s3, bucket)
    env["TELEHEALTH_DICOM_WORKERS"] = "2"
    _register_clinic(env, data_dir)
    return data_dir, env


def _established_by_process(port: int, pids: list[int]) -> Counter[int]:
    """How many established connections to local `port` each process holds (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    held: Counter[int] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] += 1
    return held


def test_parallel_associations_across_worker_processes_are_all_kept(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> None:
    tool = dcmtk("storescu")
    data_dir, env = _two_process_hub(tmp_path, database_url, s3, bucket)
    folders = []
    for n in range(ASSOCIATIONS):
        folder = tmp_path / f"series{n}"
        folder.mkdir()
        write_files(folder, make_series(PER_ASSOCIATION, patient_id=f"W{n}-{uuid.uuid4().hex[:6]}"))
        folders.append(folder)

    with served(env, data_dir, tmp_path / "hub.log") as hub:
        workers = _dicom_workers(hub.process.pid)
        assert len(workers) == 1, "one DICOM worker beside the main process"
        with ThreadPoolExecutor(ASSOCIATIONS) as pool:
            results = list(
                pool.map(lambda f: storescu(tool, hub.dicom_port, sorted(f.iterdir())), folders)
            )
        for result in results:
            assert result.returncode == 0, result.stderr[-2000:]
            assert result.stderr.count("Received Store Response (Success)") == PER_ASSOCIATION

        # Uploads of what the worker spooled are done by the main process's sweep.
        engine = create_db_engine(database_url)
        factory = make_session_factory(engine)

        def all_stored() -> bool:
            with transaction(factory) as session:
                states = session.execute(
                    select(Instance.state, func.count()).group_by(Instance.state)
                ).all()
            return dict(states) == {StorageState.STORED: ASSOCIATIONS * PER_ASSOCIATION}

        wait_for(all_stored, timeout=60, what="every instance in the object store", interval=0.2)
        engine.dispose()
        fsck = _cli(env, "fsck", "--deep", "--data-dir", str(data_dir))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr

        assert hub.terminate(timeout=20) == 0
        wait_for(
            lambda: not any(Path(f"/proc/{p}").exists() for p in workers),
            timeout=20,
            what="the DICOM worker to stop with the hub",
        )


def test_parallel_associations_are_spread_evenly_over_worker_processes(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> None:
    """The least busy process accepts: four open associations sit two and two, where the
    kernel's SO_REUSEPORT hash put them 3/1 or 4/0 more often than not."""
    data_dir, env = _two_process_hub(tmp_path, database_url, s3, bucket)

    with served(env, data_dir, tmp_path / "hub.log") as hub:
        wait_for(
            lambda: hub.health()["dicom_node"]["processes"] == 2,  # type: ignore[index]
            timeout=60,
            what="both DICOM node processes to listen",
            interval=0.2,
        )
        processes = [hub.process.pid, *_dicom_workers(hub.process.pid)]
        ae = AE("CLINIC_A_DR")
        ae.add_requested_context(CTImageStorage)
        associations = []
        try:
            for _ in range(ASSOCIATIONS):
                assoc = ae.associate("127.0.0.1", hub.dicom_port, ae_title="TELEHEALTH")
                assert assoc.is_established
                associations.append(assoc)

            def all_held() -> Counter[int] | None:
                held = _established_by_process(hub.dicom_port, processes)
                return held if held.total() == ASSOCIATIONS else None

            held = wait_for(all_held, timeout=10, what="every association held by a process")
            assert sorted(held.values()) == [2, 2], held
        finally:
            for assoc in associations:
                assoc.release()


def test_a_dicom_worker_that_dies_is_started_again(
    tmp_path: Path, database_url: str, s3: S3Endpoint, bucket: str
) -> None:
    data_dir, env = _two_process_hub(tmp_path, database_url, s3, bucket)

    def listening() -> int:
        return int(hub.health()["dicom_node"]["processes"])  # type: ignore[index]

    with served(env, data_dir, tmp_path / "hub.log") as hub:
        wait_for(lambda: listening() == 2, timeout=60, what="both DICOM node processes")
        [worker] = _dicom_workers(hub.process.pid)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: listening() == 1, timeout=10, what="the dead worker to be counted out")

        def replaced() -> bool:
            workers = _dicom_workers(hub.process.pid)
            return len(workers) == 1 and workers != [worker] and listening() == 2

        wait_for(replaced, timeout=60, what="another worker listening in its place", interval=0.2)
        for n in range(ASSOCIATIONS):
            series = make_series(3, patient_id=f"R{n}-{uuid.uuid4().hex[:6]}")
            assert len(send(hub.dicom_port, "CLINIC_A_DR", series)) == 3
        assert "starting another" in hub.log.read_text()
