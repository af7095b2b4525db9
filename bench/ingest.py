#!/usr/bin/env python3
"""C-STORE ingest benchmark: the hub against Orthanc, side by side, same data, same run.

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/ingest.py                 # 500-slice CT over 1 association, 4 x 125 over 4
  python bench/ingest.py --four-slices 500 --runs 3
  python bench/ingest.py --quick         # 100 slices, 4 x 25, one run

What is measured, per target (hub: `telehealth serve` with embedded SQLite and embedded S3;
Orthanc: the Debian package, fresh storage in a temp dir, no plugins):

- 1 association: the whole series pushed by one dcmtk `storescu` process (TCP_NODELAY=1);
  wall time from process start to exit, instances/s and MB/s (MB = 10^6 bytes of file size).
- 4 associations: four other series pushed at the same time by four storescu processes;
  wall time from the first start to the last exit.
- hub drain: after each push, the time until GET /api/health says spool_backlog == 0, i.e.
  until every instance is in object storage (uploads run in the background from the spool).
- CPU: user + system seconds of the receiver's process tree while a push runs (the hub's
  includes its S3 server), per acknowledged instance; and of the storescu processes, which
  share the same two cores.
- disk: before each run, instance-sized files written and synced one after another, in the
  same temp dir: the bound on one association for both targets, which sync each instance.
- CPU ratio: Orthanc's CPU per instance over the hub's, storescu's counted in both; with four
  associations both fill the cores, and the rate ratio cannot pass it for long.
- hub peak RSS: the largest sum of VmRSS over the hub process and its descendants, EXCLUDING
  the embedded S3 server (`weed`, ~110 MB of its own), polled every 50 ms from /proc; also the
  hub process's own VmHWM.

Each run uses a fresh hub data folder and a fresh Orthanc storage folder. With --runs N the
figures are medians over N runs; ratios are computed per run, then the median taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import disk  # bench/disk.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MAKE_SERIES = Path("/work/shared/bench/make_series.py")
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"
CALLING_AET = "BENCHSCU"

_children: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)  # type: ignore[call-overload]
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc in _children:
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc, timeout=10)


def http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_until(check, timeout: float, what: str, poll: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


# --- data -----------------------------------------------------------------------------------


def make_series(out: Path, slices: int, studies: int, patient: str) -> None:
    subprocess.run(
        [
            sys.executable,
            str(MAKE_SERIES),
            "--slices",
            str(slices),
            "--studies",
            str(studies),
            "--out",
            str(out),
            "--patient-id",
            patient,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def dir_stats(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def disk_probe(folder: Path, size: int, count: int = 200) -> float:
    """Files of `size` bytes written and synced per second by one writer in `folder`
    (bench/disk.py): the bound on one association for both targets, which sync each instance
    before answering (the hub's spool; Orthanc's SyncStorageArea, on by default since 1.7.4).
    It differs between machines far more than anything either target does."""
    probe = folder / "disk-probe"
    probe.mkdir()
    rate, _ = disk.run(probe, 1, count, os.urandom(size))
    probe.rmdir()
    return rate


# --- memory sampling ------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    result, todo = [], [pid]
    while todo:
        p = todo.pop()
        result.append(p)
        todo.extend(children.get(p, []))
    return result


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process tree (utime + stime in /proc/PID/stat)."""
    ticks = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the storescu pushers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RssSampler(threading.Thread):
    """Peak of the summed RSS of a process tree, skipping processes named in `exclude`."""

    def __init__(self, pid: int, exclude: tuple[str, ...] = ("weed",)) -> None:
        super().__init__(daemon=True)
        self.pid, self.exclude = pid, exclude
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            total = 0
            for pid in _descendants(self.pid):
                try:
                    st = _status(pid)
                except OSError:
                    continue
                if st.get("Name", "") in self.exclude:
                    continue
                total += int(st.get("VmRSS", "0 kB").split()[0])
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak_kb


# --- pushing --------------------------------------------------------------------------------


@dataclass
class Push:
    wall_s: float
    files: int
    bytes: int
    ok: int
    failed: int
    client_cpu_s: float = 0.0  # the storescu processes
    server_cpu_s: float = 0.0  # the receiver's process tree, while the push ran

    @property
    def server_cpu_ms(self) -> float:
        """Receiver CPU per acknowledged instance."""
        return 1000 * self.server_cpu_s / max(self.ok, 1)

    @property
    def client_cpu_ms(self) -> float:
        return 1000 * self.client_cpu_s / max(self.ok, 1)

    @property
    def inst_s(self) -> float:
        return self.ok / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.bytes * self.ok / max(self.files, 1) / 1e6 / self.wall_s


def push(
    port: int, aec: str, folders: list[Path], logdir: Path, tag: str, server_pid: int = 0
) -> Push:
    """One storescu process (one association) per folder, all started at once; CPU is
    counted for the pushers and, given `server_pid`, for the receiver's process tree."""
    env = dict(os.environ, TCP_NODELAY="1")
    files = size = 0
    for folder in folders:
        n, b = dir_stats(folder)
        files, size = files + n, size + b
    logs = [logdir / f"{tag}-{i}.log" for i in range(len(folders))]
    client_cpu0 = children_cpu_s()
    server_cpu0 = tree_cpu_s(server_pid) if server_pid else 0.0
    t0 = time.perf_counter()
    procs = []
    for folder, log in zip(folders, logs, strict=False):
        with open(log, "wb") as out:
            procs.append(
                spawn(
                    [
                        STORESCU,
                        "-v",
                        "-aet",
                        CALLING_AET,
                        "-aec",
                        aec,
                        "+sd",
                        "+r",
                        "-nh",
                        "127.0.0.1",
                        str(port),
                        str(folder),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
    for proc in procs:
        proc.wait()
        _children.remove(proc)
    wall = time.perf_counter() - t0
    server_cpu = tree_cpu_s(server_pid) - server_cpu0 if server_pid else 0.0
    client_cpu = children_cpu_s() - client_cpu0
    ok = failed = 0
    for log in logs:
        text = log.read_text(errors="replace")
        ok += text.count("Received Store Response (Success)")
        failed += text.count("Store Failed") + sum(
            text.count(f"Received Store Response ({w}") for w in ("Error", "Failure", "Refused")
        )
    if ok < files:
        print(
            f"WARNING: {tag}: {files - ok} of {files} not acknowledged (logs in {logdir})",
            file=sys.stderr,
        )
    return Push(wall, files, size, ok, failed, client_cpu, server_cpu)


# --- targets --------------------------------------------------------------------------------


@dataclass
class Result:
    one: Push | None = None
    four: Push | None = None
    drain_one_s: float = 0.0
    drain_four_s: float = 0.0
    peak_rss_mb: float = 0.0
    hwm_mb: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def run_hub(work: Path, one: Path, fours: list[Path], env_extra: dict[str, str]) -> Result:
    data = work / "hub-data"
    tele = str(VENV_BIN / "telehealth")
    env = dict(os.environ, TELEHEALTH_LOG_LEVEL="WARNING", **env_extra)
    env.setdefault("TELEHEALTH_SIGNALING_PORT", str(free_port()))
    env.pop("TELEHEALTH_DATA_DIR", None)
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    subprocess.run(
        [
            tele,
            "institution",
            "add",
            "BENCH",
            "--name",
            "Bench County",
            "--level",
            "county",
            "--data-dir",
            str(data),
        ],
        **quiet,
    )  # type: ignore[arg-type]
    subprocess.run(
        [
            tele,
            "ae",
            "add",
            CALLING_AET,
            "--institution",
            "BENCH",
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(data),
        ],
        **quiet,
    )  # type: ignore[arg-type]
    http_port, dicom_port = free_port(), free_port()
    log = open(work / "hub.log", "wb")
    hub = spawn(
        [
            tele,
            "serve",
            "--data-dir",
            str(data),
            "--http-port",
            str(http_port),
            "--dicom-port",
            str(dicom_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    health_url = f"http://127.0.0.1:{http_port}/api/health"
    try:
        wait_until(lambda: http_json(health_url)["dicom_node"]["listening"], 90, "hub health")
        # The main process answers health first; its DICOM worker processes start after it,
        # and importing the hub costs them seconds of CPU. Pushing before they listen
        # measures their start-up, not ingest.
        workers = int(env.get("TELEHEALTH_DICOM_WORKERS", "1"))
        wait_until(
            lambda: http_json(health_url)["dicom_node"]["processes"] >= workers,
            120,
            "DICOM worker processes",
        )
        sampler = RssSampler(hub.pid)
        sampler.start()
        result = Result()

        def drain(t_end: float) -> float:
            wait_until(
                lambda: http_json(health_url, 10)["spool_backlog"] == 0,
                600,
                "spool drain",
                poll=0.05,
            )
            return time.perf_counter() - t_end

        result.one = push(dicom_port, "TELEHEALTH", [one], work, "hub1", hub.pid)
        result.drain_one_s = drain(time.perf_counter())
        result.four = push(dicom_port, "TELEHEALTH", fours, work, "hub4", hub.pid)
        result.drain_four_s = drain(time.perf_counter())
        result.peak_rss_mb = sampler.stop() / 1024
        result.hwm_mb = int(_status(hub.pid)["VmHWM"].split()[0]) / 1024
        return result
    finally:
        stop(hub)
        log.close()


def start_orthanc(work: Path, **extra: object) -> tuple[subprocess.Popen[bytes], int, int]:
    """Orthanc on fresh storage in `work`, TCP_NODELAY on; `extra` adds configuration.

    Returns the process, its HTTP port and its DICOM port once it answers. The caller stops
    it (stop()); its log is work/orthanc.log.
    """
    root = work / "orthanc"
    root.mkdir()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        **extra,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    with open(work / "orthanc.log", "wb") as log:
        proc = spawn(
            [ORTHANC, str(root / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
    try:
        wait_until(lambda: http_json(f"http://127.0.0.1:{http_port}/system"), 60, "Orthanc")
    except BaseException:
        stop(proc)
        raise
    return proc, http_port, dicom_port


def run_orthanc(work: Path, one: Path, fours: list[Path]) -> Result:
    proc, _, dicom_port = start_orthanc(work)
    try:
        sampler = RssSampler(proc.pid, exclude=())
        sampler.start()
        result = Result()
        result.one = push(dicom_port, "ORTHANC", [one], work, "orthanc1", proc.pid)
        result.four = push(dicom_port, "ORTHANC", fours, work, "orthanc4", proc.pid)
        result.peak_rss_mb = sampler.stop() / 1024
        return result
    finally:
        stop(proc)


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slices", type=int, default=500, help="slices of the 1-association series")
    ap.add_argument(
        "--four-slices",
        type=int,
        default=None,
        help="slices of each of the 4 series (default slices/4)",
    )
    ap.add_argument("--runs", type=int, default=1, help="repeat; medians are reported")
    ap.add_argument(
        "--dicom-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DICOM node processes of the hub (TELEHEALTH_DICOM_WORKERS; default: one per core,"
        " as the README advises)",
    )
    ap.add_argument("--quick", action="store_true", help="100 slices, 4 x 25, one run")
    ap.add_argument("--skip-orthanc", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument(
        "--hub-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for the hub, e.g. TELEHEALTH_MAX_PDU_BYTES=65536",
    )
    args = ap.parse_args()
    if args.quick:
        args.slices, args.runs = 100, 1
    four = args.four_slices or max(1, args.slices // 4)
    hub_env = {"TELEHEALTH_DICOM_WORKERS": str(args.dicom_workers)}
    hub_env.update(kv.split("=", 1) for kv in args.hub_env)

    def on_signal(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        print(
            f"generating data in {tmp}: 1 x {args.slices} slices, 4 x {four} slices "
            f"(fresh UIDs per run, {args.runs} run(s))",
            file=sys.stderr,
        )
        hubs: list[Result] = []
        orthancs: list[Result] = []
        disk_rates: list[float] = []
        for run in range(args.runs):
            work = tmp / f"run{run}"
            work.mkdir()
            # Separate copies for hub and Orthanc are not needed: each has its own storage.
            make_series(work / "one", args.slices, 1, f"ONE{run}")
            fours = [work / f"four{k}" for k in range(4)]
            for k, folder in enumerate(fours):
                make_series(folder, four, 1, f"FOUR{run}{k}")
            files, size = dir_stats(work / "one")
            disk_rates.append(disk_probe(work, size // files))
            print(f"run {run + 1}: hub", file=sys.stderr)
            hubs.append(run_hub(work, work / "one", fours, hub_env))
            if not args.skip_orthanc:
                print(f"run {run + 1}: Orthanc", file=sys.stderr)
                orthancs.append(run_orthanc(work, work / "one", fours))
        report(hubs, orthancs, args.slices, four, args.dicom_workers, disk_rates)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    hubs: list[Result],
    orthancs: list[Result],
    slices: int,
    four: int,
    dicom_workers: int,
    disk_rates: list[float],
) -> None:
    rows = []

    def row(name: str, results: list[Result], attr: str) -> None:
        pushes = [getattr(r, attr) for r in results]
        if not pushes:
            return
        rows.append(
            (
                name,
                med([p.wall_s for p in pushes]),
                med([p.inst_s for p in pushes]),
                med([p.mb_s for p in pushes]),
                sum(p.ok for p in pushes),
                sum(p.files for p in pushes),
                med([p.server_cpu_ms for p in pushes]),
                med([p.client_cpu_ms for p in pushes]),
            )
        )

    row(f"hub 1 assoc ({slices})", hubs, "one")
    row(f"orthanc 1 assoc ({slices})", orthancs, "one")
    row(f"hub 4 assoc (4x{four})", hubs, "four")
    row(f"orthanc 4 assoc (4x{four})", orthancs, "four")
    # CPU: milliseconds per acknowledged instance, of the receiver's processes (the hub's
    # include the idle S3 server) and of the storescu pushers, which share the same cores.
    print(
        f"{'target':<28}{'wall s':>9}{'inst/s':>9}{'MB/s':>8}{'acked':>12}"
        f"{'cpu ms/inst':>13}{'storescu':>10}"
    )
    for name, wall, ips, mbs, ok, files, server_ms, client_ms in rows:
        print(
            f"{name:<28}{wall:>9.2f}{ips:>9.1f}{mbs:>8.1f}{f'{ok}/{files}':>12}"
            f"{server_ms:>13.2f}{client_ms:>10.2f}"
        )
    print(
        f"hub drain to object store after 1 assoc push: {med([h.drain_one_s for h in hubs]):.2f} s;"
        f" after 4 assoc push: {med([h.drain_four_s for h in hubs]):.2f} s"
    )
    print(
        f"hub peak RSS (process tree, excluding weed S3 server): "
        f"{med([h.peak_rss_mb for h in hubs]):.0f} MB; hub process VmHWM "
        f"{med([h.hwm_mb for h in hubs]):.0f} MB"
    )
    if orthancs:
        print(f"orthanc peak RSS: {med([o.peak_rss_mb for o in orthancs]):.0f} MB")
    disk_rate = med(disk_rates)
    print(
        f"this disk: {disk_rate:.0f} instance-sized files written and synced per second, one writer"
    )
    # With four associations both targets keep the two cores busy, storescu included; the
    # ratio of rates then approaches the ratio of CPU per instance, pushers counted.
    cpu_ratio = (
        med(
            [
                (o.four.server_cpu_ms + o.four.client_cpu_ms)
                / (h.four.server_cpu_ms + h.four.client_cpu_ms)
                for h, o in zip(hubs, orthancs, strict=False)
            ]
        )
        if orthancs
        else float("nan")
    )
    print(f"4 assoc: orthanc/hub CPU per instance, storescu included: {cpu_ratio:.2f}")
    if len(hubs) > 1:
        print(
            "per run hub/orthanc inst/s (1 assoc; 4 assoc): "
            + "; ".join(
                f"{h.one.inst_s:.0f}/{o.one.inst_s:.0f}, {h.four.inst_s:.0f}/{o.four.inst_s:.0f}"
                for h, o in zip(hubs, orthancs, strict=False)
            )
        )
    h1, h4 = med([h.one.inst_s for h in hubs]), med([h.four.inst_s for h in hubs])
    o1 = med([o.one.inst_s for o in orthancs]) if orthancs else float("nan")
    o4 = med([o.four.inst_s for o in orthancs]) if orthancs else float("nan")
    r1 = (
        med([h.one.inst_s / o.one.inst_s for h, o in zip(hubs, orthancs, strict=False)])
        if orthancs
        else float("nan")
    )
    r4 = (
        med([h.four.inst_s / o.four.inst_s for h, o in zip(hubs, orthancs, strict=False)])
        if orthancs
        else float("nan")
    )
    print(
        f"hub_1assoc_inst_s={h1:.1f} orthanc_1assoc_inst_s={o1:.1f} ratio_1assoc={r1:.2f} "
        f"hub_4assoc_inst_s={h4:.1f} orthanc_4assoc_inst_s={o4:.1f} ratio_4assoc={r4:.2f} "
        f"hub_peak_rss_mb={med([h.peak_rss_mb for h in hubs]):.0f} "
        f"hub_drain_1assoc_s={med([h.drain_one_s for h in hubs]):.2f} "
        f"hub_drain_4assoc_s={med([h.drain_four_s for h in hubs]):.2f} "
        f"hub_cpu_ms_1assoc={med([h.one.server_cpu_ms for h in hubs]):.2f} "
        f"orthanc_cpu_ms_1assoc={med([o.one.server_cpu_ms for o in orthancs]):.2f} "
        f"hub_cpu_ms_4assoc={med([h.four.server_cpu_ms for h in hubs]):.2f} "
        f"orthanc_cpu_ms_4assoc={med([o.four.server_cpu_ms for o in orthancs]):.2f} "
        f"cpu_ratio_4assoc={cpu_ratio:.2f} disk_synced_files_s={disk_rate:.0f} "
        f"hub_dicom_workers={dicom_workers} runs={len(hubs)}"
    )


if __name__ == "__main__":
    sys.exit(main())
