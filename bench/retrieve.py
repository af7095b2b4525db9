#!/usr/bin/env python3
"""Query/retrieve benchmark: the hub against Orthanc + its DICOMweb plugin, same data, same run.

Not part of the test run. Prints a table and ends with one `name=value` line (medians).

  python bench/retrieve.py                # 500-slice CT + 1,000 small studies
  python bench/retrieve.py --quick        # 100-slice CT + 200 studies, fewer repeats

Data: one CT series of --slices 512x512 slices and --studies one-instance studies (12-lead
ECGs, so that QIDO has a realistic index to search), pushed to each target with storescu.
The hub runs as `telehealth serve` (embedded SQLite and S3, everything uploaded to the object
store before timing starts); Orthanc is the Debian package with the Debian DICOMweb plugin.

Measured over HTTP keep-alive (httpx), each after one untimed warm-up request, once the
target's work after loading is done (its processes idle; the hub measures every new ECG and
warms metadata), except `metadata_first_ms`:
- qido: `/studies?limit=101&offset=0&includefield=00081030,00080060` (OHIF's study list) and
  `/studies?PatientID=…` (one patient), median latency;
- metadata: series `/metadata` of the CT; for the hub also the very first request
  (`metadata_first_ms`: computed from the objects, before the study is warmed);
- series_wado: the whole CT series as multipart/related, body read to the end; beside the
  wall time, the CPU seconds the target's processes spent per retrieve (`series_wado_cpu_s`):
  client and server share two cores here, so a server that burns less leaves more to the
  client, and this figure moves far less than wall time when other work loads the machine;
- frames: `/frames/1` of every slice with `transfer-syntax=*`, one client, frames/s;
- cfind: a STUDY level C-FIND by PatientID over one open association (pynetdicom SCU).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and bench/queue.py would stand in for
# the standard library's queue; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # noqa: E402

from bench.ingest import (  # noqa: E402  (after the sys.path fix above)
    CALLING_AET,
    VENV_BIN,
    free_port,
    http_json,
    make_series,
    push,
    spawn,
    start_orthanc,
    stop,
    stop_all,
    tree_cpu_s,
    wait_until,
)

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PASSWORD = secrets.token_urlsafe(16)  # a fresh hub per run; nothing to keep
# The hub's quiet period before a study is stable and its metadata warmed (its default).
STUDY_STABLE_S = 60
OHIF_STUDY_LIST = {"limit": "101", "offset": "0", "includefield": "00081030,00080060"}


@dataclass
class Target:
    name: str
    dicomweb: str  # base URL
    dicom_port: int
    called_aet: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int = 0  # the server process; its CPU time (and its children's) is measured


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `call` after one untimed warm-up."""
    call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def settle(target: Target, not_before: float, timeout: float = 300) -> None:
    """Wait until `not_before` (time.monotonic) and then until the target's processes idle.

    The hub warms the metadata of each study once it has been quiet for a minute; counted in
    a retrieve, that background work would make its CPU figure meaningless.
    """
    time.sleep(max(0.0, not_before - time.monotonic()))
    deadline = time.monotonic() + timeout
    before = tree_cpu_s(target.pid)
    while time.monotonic() < deadline:
        time.sleep(2)
        now = tree_cpu_s(target.pid)
        if now - before < 0.1:  # under 5% of a core
            return
        before = now
    print(f"{target.name}: still busy after {timeout:.0f} s; measuring anyway", file=sys.stderr)


def load(target_port: int, aec: str, folders: list[Path], work: Path, tag: str) -> None:
    result = push(target_port, aec, folders, work, tag)
    if result.ok < result.files:
        raise RuntimeError(f"{tag}: only {result.ok} of {result.files} stored")


# --- targets --------------------------------------------------------------------------------


def start_hub(work: Path) -> tuple[subprocess.Popen[bytes], Target, str]:
    data = work / "hub-data"
    tele = str(VENV_BIN / "telehealth")
    env = dict(
        os.environ,
        TELEHEALTH_LOG_LEVEL="WARNING",
        TELEHEALTH_DATA_DIR=str(data),
        TELEHEALTH_SIGNALING_PORT=str(free_port()),
        TELEHEALTH_STUDY_STABLE_SECONDS=str(STUDY_STABLE_S),
    )
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    subprocess.run(
        [tele, "institution", "add", "BENCH", "--name", "Bench", "--level", "county"], **quiet
    )  # type: ignore[arg-type]
    subprocess.run(
        [tele, "ae", "add", CALLING_AET, "--institution", "BENCH", "--host", "127.0.0.1"], **quiet
    )  # type: ignore[arg-type]
    subprocess.run(
        [tele, "user", "add", "bench", "--role", "admin", "--institution", "BENCH"],
        input=PASSWORD.encode(),
        stdout=subprocess.DEVNULL,
        env=env,
        check=True,
    )
    http_port, dicom_port = free_port(), free_port()
    log = open(work / "hub.log", "wb")
    proc = spawn(
        [tele, "serve", "--http-port", str(http_port), "--dicom-port", str(dicom_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: http_json(f"{base}/api/health")["dicom_node"]["listening"], 90, "hub")
    token = httpx.post(
        f"{base}/api/auth/login", json={"username": "bench", "password": PASSWORD}
    ).json()["access_token"]
    target = Target(
        "hub",
        f"{base}/dicomweb",
        dicom_port,
        "TELEHEALTH",
        {"authorization": f"Bearer {token}"},
        pid=proc.pid,
    )
    return proc, target, f"{base}/api/health"


def start_peer(work: Path) -> tuple[subprocess.Popen[bytes], Target]:
    proc, http_port, dicom_port = start_orthanc(
        work,
        DicomAlwaysAllowFind=True,
        DicomAlwaysAllowMove=True,
        Plugins=[DICOMWEB_PLUGIN],
        DicomWeb={"Enable": True, "Root": "/dicom-web/"},
    )
    url = f"http://127.0.0.1:{http_port}/dicom-web"
    return proc, Target("orthanc", url, dicom_port, "ORTHANC", pid=proc.pid)


# --- measurements ---------------------------------------------------------------------------


def measure(
    target: Target, ct: dict[str, object], patient_id: str, repeats: int, quiet_at: float
) -> Figures:
    """All figures; `quiet_at` (time.monotonic) is when background work after loading may
    start to idle, waited for after the first (cold) metadata request and before the rest."""
    figures = Figures()
    study, series = ct["study"], ct["series"]
    sops: list[str] = ct["sops"]  # type: ignore[assignment]
    series_url = f"/studies/{study}/series/{series}"
    with httpx.Client(base_url=target.dicomweb, headers=target.headers, timeout=120) as http:

        def get(path: str, **kw: object) -> httpx.Response:
            response = http.get(path, **kw)  # type: ignore[arg-type]
            response.raise_for_status()
            return response

        accept_json = {"accept": "application/dicom+json"}
        t0 = time.perf_counter()
        first = get(f"{series_url}/metadata", headers=accept_json).json()
        figures.values["metadata_first_ms"] = (time.perf_counter() - t0) * 1000
        if len(first) != len(sops):
            raise RuntimeError(f"{target.name}: metadata has {len(first)} of {len(sops)}")
        # The rest is steady state: after loading, the hub measures each new ECG (1,000 of
        # them here, ~0.1 s of CPU each) and warms metadata; timed meanwhile, every figure
        # would measure that one-off work instead.
        settle(target, quiet_at)
        figures.values["metadata_ms"] = timed(
            lambda: get(f"{series_url}/metadata", headers=accept_json).content, repeats
        )
        figures.values["qido_ms"] = timed(
            lambda: get("/studies", params=OHIF_STUDY_LIST, headers=accept_json).content,
            repeats * 2,
        )
        figures.values["qido_patient_ms"] = timed(
            lambda: get("/studies", params={"PatientID": patient_id}, headers=accept_json),
            repeats * 2,
        )
        multipart = {"accept": 'multipart/related; type="application/dicom"'}

        def whole_series() -> None:
            size = 0
            with http.stream("GET", series_url, headers=multipart) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    size += len(chunk)
            if size < 500_000 * len(sops) * 0.9:
                raise RuntimeError(f"{target.name}: series body only {size} bytes")

        wado_repeats = max(5, repeats // 2)
        cpu_before = tree_cpu_s(target.pid)
        figures.values["series_wado_s"] = timed(whole_series, wado_repeats) / 1000
        figures.values["series_wado_cpu_s"] = (tree_cpu_s(target.pid) - cpu_before) / (
            wado_repeats + 1  # the warm-up too
        )
        frames = {"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        try:
            get(f"{series_url}/instances/{sops[0]}/frames/1", headers=frames)
            t0 = time.perf_counter()
            for sop in sops:
                get(f"{series_url}/instances/{sop}/frames/1", headers=frames)
            figures.values["frames_s"] = len(sops) / (time.perf_counter() - t0)
        except httpx.HTTPStatusError as exc:
            print(f"{target.name}: frames not measured ({exc})", file=sys.stderr)
            figures.values["frames_s"] = float("nan")
    figures.values["cfind_ms"] = cfind_ms(target, patient_id, repeats * 2)
    return figures


def cfind_ms(target: Target, patient_id: str, repeats: int) -> float:
    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", target.dicom_port, ae_title=target.called_aet)
    if not assoc.is_established:
        print(f"{target.name}: C-FIND association refused", file=sys.stderr)
        return float("nan")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.StudyDate = ""
    query.PatientName = ""

    def find() -> None:
        statuses = [
            s.Status
            for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if s
        ]
        if not statuses or statuses[-1] != 0:
            raise RuntimeError(f"C-FIND ended with {statuses[-1:]}")

    try:
        return timed(find, repeats)
    except RuntimeError as exc:
        print(f"{target.name}: C-FIND not measured ({exc})", file=sys.stderr)
        return float("nan")
    finally:
        assoc.release()


# --- main -----------------------------------------------------------------------------------


def describe(folder: Path) -> dict[str, object]:
    files = sorted(folder.rglob("*.dcm")) or sorted(p for p in folder.rglob("*") if p.is_file())
    headers = [dcmread(p, stop_before_pixels=True) for p in files]
    headers.sort(key=lambda ds: int(ds.InstanceNumber))
    return {
        "study": headers[0].StudyInstanceUID,
        "series": headers[0].SeriesInstanceUID,
        "sops": [str(ds.SOPInstanceUID) for ds in headers],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slices", type=int, default=500)
    ap.add_argument("--studies", type=int, default=1000, help="one-instance studies for QIDO")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-orthanc", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.slices, args.studies, args.repeats = 100, 200, 5
    tmp = Path(tempfile.mkdtemp(prefix="retrieve-bench-"))
    results: dict[str, Figures] = {}
    try:
        print(f"generating data in {tmp}", file=sys.stderr)
        make_series(tmp / "ct", args.slices, 1, "CTPAT")
        subprocess.run(
            [
                sys.executable,
                "/work/shared/bench/make_series.py",
                "--ecg",
                "--studies",
                str(args.studies),
                "--out",
                str(tmp / "many"),
                "--patient-id",
                "Q",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ct = describe(tmp / "ct")
        folders = [tmp / "ct", tmp / "many"]

        print("hub: loading", file=sys.stderr)
        proc, hub, health = start_hub(tmp)
        try:
            load(hub.dicom_port, hub.called_aet, folders, tmp, "hub")
            wait_until(lambda: http_json(health, 10)["spool_backlog"] == 0, 600, "hub uploads")
            # Every study is stable (its metadata being warmed) a quiet period after loading.
            quiet_at = time.monotonic() + STUDY_STABLE_S + 5
            print("hub: measuring", file=sys.stderr)
            results["hub"] = measure(hub, ct, "CTPAT", args.repeats, quiet_at)
        finally:
            stop(proc)
        if not args.skip_orthanc:
            print("orthanc: loading", file=sys.stderr)
            proc, orthanc = start_peer(tmp)
            try:
                load(orthanc.dicom_port, orthanc.called_aet, folders, tmp, "orthanc")
                print("orthanc: measuring", file=sys.stderr)
                results["orthanc"] = measure(orthanc, ct, "CTPAT", args.repeats, time.monotonic())
            finally:
                stop(proc)
        report(results, args.slices, args.studies)
        return 0
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def cell(value: float) -> str:
    """Seconds keep three decimals; milliseconds and rates one."""
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def report(results: dict[str, Figures], slices: int, studies: int) -> None:
    hub = results["hub"].values
    orthanc = results.get("orthanc", Figures()).values
    nan = float("nan")
    print(f"{slices}-slice CT series, {studies + 1} studies indexed; medians")
    print(f"{'figure':<22}{'hub':>12}{'orthanc':>12}{'orthanc/hub':>13}")
    for name in (
        "qido_ms",
        "qido_patient_ms",
        "metadata_first_ms",
        "metadata_ms",
        "series_wado_s",
        "series_wado_cpu_s",
        "frames_s",
        "cfind_ms",
    ):
        h, o = hub.get(name, nan), orthanc.get(name, nan)
        ratio = h / o if name == "frames_s" else o / h  # >1: the hub is faster
        print(f"{name:<22}{cell(h):>12}{cell(o):>12}{ratio:>13.2f}")
    keys = ["metadata_ms", "qido_ms", "series_wado_s", "cfind_ms", "series_wado_cpu_s"]
    line = []
    for name in keys:
        line.append(f"{name}={hub.get(name, nan):.3g}")
        line.append(f"orthanc_{name}={orthanc.get(name, nan):.3g}")
    line.append(f"metadata_first_ms={hub.get('metadata_first_ms', nan):.3g}")
    line.append(f"frames_s={hub.get('frames_s', nan):.3g}")
    line.append(f"orthanc_frames_s={orthanc.get('frames_s', nan):.3g}")
    print(" ".join(line))


if __name__ == "__main__":
    sys.exit(main())
