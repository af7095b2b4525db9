#!/usr/bin/env python3
"""Browser upload benchmark: a technician uploads a 200-file study from the clinic desk over a
link throttled to 4 Mbit/s (Chromium network emulation), and the link drops once in the middle.

Not part of the test run. Prints figures and ends with one `name=value` line:

  python bench/browser_upload.py               # 200 generated CT slices of 256x256
  python bench/browser_upload.py --files 50 --rows 512

The hub runs as `telehealth serve` (embedded SQLite and S3) with a fresh data folder.
`upload_s` is from the click on "start upload" to the desk saying it is done, offline time
included; `upload_resumed` is 1 when every file is on the hub and the hub took each in exactly
once (its audit of STOW-RS: the instances each request stored, duplicates counted).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and bench/queue.py would stand in for
# the standard library's queue; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from bench.ingest import VENV_BIN, free_port, http_json, spawn, stop, stop_all, wait_until  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.webapp.link import Link  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("TELEHEALTH_DEV_DATA", "/work/shared/data/dev")) / "dicom" / "ct"
LINK_BITS_PER_S = 4_000_000
OFFLINE_S = 3.0


def make_study(out: Path, files: int, rows: int) -> list[Path]:
    """`files` CT slices of one new study (the pydicom CT sample with rows x rows pixels)."""
    out.mkdir(parents=True, exist_ok=True)
    template = dcmread(SAMPLE / "pydicom__CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    paths = []
    for number in range(1, files + 1):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.PatientName, ds.PatientID = "Bench^Upload", "UPLOAD1"
        ds.Rows = ds.Columns = rows
        ds.PixelData = rng.integers(0, 2000, (rows, rows), dtype=np.uint16).tobytes()
        path = out / f"slice{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _stored_per_study(base_url: str, token: str, study: str) -> int:
    """Instances the hub took in for `study` by STOW-RS, from its audit (admin only)."""
    total = 0
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for offset in range(0, 100_000, 1000):
            page = http.get(
                "/api/audit",
                params={"limit": 1000, "offset": offset},
                headers={"authorization": f"Bearer {token}"},
            )
            page.raise_for_status()
            rows = page.json()
            for row in rows:
                if row["action"] == "dicomweb.stow" and row["object_id"] == study:
                    found = re.match(r"(\d+) instances stored", row.get("detail") or "")
                    total += int(found.group(1)) if found else 0
            if len(rows) < 1000:
                return total
    return total


def _hub_instances(base_url: str, token: str, study: str) -> int:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        response = http.get(
            f"/dicomweb/studies/{study}/instances",
            params={"limit": 1000},
            headers={"authorization": f"Bearer {token}"},
        )
    return len(response.json()) if response.status_code == 200 else 0


def measure_upload(
    base_url: str,
    username: str,
    password: str,
    files: list[Path],
    *,
    admin_token: str | None = None,
) -> dict[str, float]:
    """Upload `files` (one study) through the desk at 4 Mbit/s, offline once half-way.

    `admin_token` lets the hub's audit prove that nothing arrived twice; without it only
    the arrival of every file is checked.
    """
    from playwright.sync_api import sync_playwright

    study = _study_uid(files[0])
    port = int(base_url.rsplit(":", 1)[1])
    # The page goes through a relay that can drop, as a real link does (requests under way
    # break half-sent); Chromium's emulation throttles and tells the page it is offline.
    with sync_playwright() as playwright, Link(port) as line:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en")
            login = context.request.post(
                f"{line.base}/api/auth/login", data={"username": username, "password": password}
            )
            if not login.ok:
                raise RuntimeError(f"login failed: {login.status}")
            token = str(login.json()["access_token"])
            page = context.new_page()
            page.add_init_script("localStorage.setItem('telehealth.locale', 'en')")
            page.goto(f"{line.base}/app/desk")
            page.get_by_role("heading", name="Upload a study").wait_for()
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            link = {
                "latency": 40,
                "downloadThroughput": LINK_BITS_PER_S / 8,
                "uploadThroughput": LINK_BITS_PER_S / 8,
            }
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **link})
            page.set_input_files("[data-testid=pick-files]", [str(p) for p in files])
            rows = page.locator("[data-testid=file-row][data-state=ready]")
            rows.nth(len(files) - 1).wait_for(state="attached", timeout=120_000)
            stored = page.locator("[data-testid=file-row][data-state=stored]")
            started = time.perf_counter()
            page.get_by_role("button", name="Start upload").click()
            while stored.count() < len(files) // 2:
                page.wait_for_timeout(100)
            line.cut()
            cdp.send("Network.emulateNetworkConditions", {"offline": True, **link})
            page.wait_for_timeout(OFFLINE_S * 1000)
            line.restore()
            cdp.send("Network.emulateNetworkConditions", {"offline": False, **link})
            done = page.locator("[data-testid=upload-phase][data-phase=done]")
            done.wait_for(timeout=3_600_000)
            upload_s = time.perf_counter() - started
            resumed = _hub_instances(base_url, token, study) == len(files)
            if admin_token is not None:
                resumed = resumed and _stored_per_study(base_url, admin_token, study) == len(files)
        finally:
            browser.close()
    return {"upload_s": round(upload_s, 1), "upload_resumed": 1 if resumed else 0}


def start_hub(work: Path, password: str) -> tuple[object, str]:
    """`telehealth serve` on a fresh data folder with an admin and a technician."""
    tele = str(VENV_BIN / "telehealth")
    env = dict(
        os.environ,
        TELEHEALTH_LOG_LEVEL="WARNING",
        TELEHEALTH_DATA_DIR=str(work / "hub-data"),
        TELEHEALTH_SIGNALING_PORT=str(free_port()),
    )
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    subprocess.run(
        [tele, "institution", "add", "BENCH", "--name", "Bench", "--level", "county"], **quiet
    )  # type: ignore[call-overload]
    for user, role in (("bench", "admin"), ("tech", "technician")):
        subprocess.run(
            [tele, "user", "add", user, "--role", role, "--institution", "BENCH"],
            input=password.encode(),
            **quiet,  # type: ignore[arg-type]
        )
    http_port = free_port()
    log = open(work / "hub.log", "wb")  # the child holds it open until it ends
    proc = spawn(
        [tele, "serve", "--http-port", str(http_port), "--dicom-port", str(free_port())],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: http_json(f"{base}/api/health")["dicom_node"]["listening"], 90, "hub")
    return proc, base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rows", type=int, default=256, help="pixels per side of each slice")
    args = ap.parse_args()
    if not CHROMIUM.exists():
        print(f"no {CHROMIUM}", file=sys.stderr)
        return 1
    subprocess.run(["bash", str(REPO / "scripts" / "build_webapp.sh")], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    password = secrets.token_urlsafe(16)
    try:
        files = make_study(tmp / "study", args.files, args.rows)
        size = sum(p.stat().st_size for p in files)
        proc, base = start_hub(tmp, password)
        try:
            admin = httpx.post(
                f"{base}/api/auth/login", json={"username": "bench", "password": password}
            ).json()["access_token"]
            figures = measure_upload(base, "tech", password, files, admin_token=admin)
        finally:
            stop(proc)  # type: ignore[arg-type]
        ideal = size * 8 / LINK_BITS_PER_S
        print(f"{args.files} files, {size / 1e6:.1f} MB; at 4 Mbit/s ideally {ideal:.1f} s")
        print(f"upload with one {OFFLINE_S:.0f} s disconnect: {figures['upload_s']} s")
        print(f"every file arrived exactly once: {bool(figures['upload_resumed'])}")
        print(f"upload_s={figures['upload_s']} upload_resumed={figures['upload_resumed']}")
        return 0 if figures["upload_resumed"] else 1
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
