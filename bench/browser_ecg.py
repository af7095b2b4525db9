#!/usr/bin/env python3
"""ECG viewer benchmark: how long from opening /app/ecg/{sop} to the 12 leads drawn on paper.

Not part of the test run. Prints the figures and ends with one `name=value` line.

  python bench/browser_ecg.py               # 1 cold + 10 warm opens
  python bench/browser_ecg.py --repeats 20

A hub runs as `telehealth serve` (embedded SQLite and S3) on a fresh data folder with a
county, a clinic and its technician, who uploads the 12-lead DICOM ECG of the dev samples
(10 s at 1000 Hz) through /api/ecg/uploads. Each open is a fresh browser context (cold
browser cache, logged in by cookie) in Debian's Chromium, 1440×900 at devicePixelRatio 1.

- first_ecg_ms: median over --repeats opens of the time from navigation start to the end of
  the first full paint of grid, calibration pulses and traces, read from the page's own clock
  (`window.__ecgStats.firstDrawMs`, performance.now() counts from navigation start).
- first_ecg_cold_ms: the very first open after the hub started (the hub reads the ECG from
  the object store and measures it while the page loads).
- draw_ms: the canvas paint alone (3×4 + rhythm strip), median.
- samples_endpoint_ms: the viewer's samples request (format=int16, gzip) alone over
  keep-alive, median of 10; samples_float32_ms: the same for format=binary (float32).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and bench/queue.py would stand in for
# the standard library's queue; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402

from bench.ingest import VENV_BIN, free_port, spawn, stop_all, wait_until  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ECG = ROOT.parent / "shared" / "data" / "dev" / "ecg_dicom" / "pydicom__waveform_ecg.dcm"
PASSWORD = secrets.token_urlsafe(16)  # a fresh hub per run; nothing to keep
USER = "tech"
DRAWN = "() => window.__ecgStats && window.__ecgStats.firstDrawMs ? window.__ecgStats : false"


def measure_opens(base: str, sop: str, repeats: int) -> list[dict[str, float]]:
    """`window.__ecgStats` of `repeats` opens of the viewer, each in a fresh context."""
    from playwright.sync_api import sync_playwright

    stats: list[dict[str, float]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(repeats):
                context = browser.new_context(
                    viewport={"width": 1440, "height": 900}, device_scale_factor=1
                )
                login = context.request.post(
                    f"{base}/api/auth/login", data={"username": USER, "password": PASSWORD}
                )
                if not login.ok:
                    raise RuntimeError(f"login failed: {login.status}")
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))  # noqa: B023
                page.goto(f"{base}/app/ecg/{sop}", wait_until="commit")
                try:
                    done = page.wait_for_function(DRAWN, polling="raf", timeout=60_000)
                except Exception:
                    print(f"not drawn at {page.url}: {errors}", file=sys.stderr)
                    print(page.inner_text("body")[:500], file=sys.stderr)
                    raise
                stats.append({k: float(v) for k, v in done.json_value().items()})
                context.close()
        finally:
            browser.close()
    return stats


def start_hub(work: Path) -> str:
    data = work / "hub-data"
    env = dict(
        os.environ,
        TELEHEALTH_LOG_LEVEL="WARNING",
        TELEHEALTH_DATA_DIR=str(data),
        TELEHEALTH_SIGNALING_PORT=str(free_port()),
    )
    tele = str(VENV_BIN / "telehealth")
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    subprocess.run(
        [tele, "institution", "add", "COUNTY", "--name", "县人民医院", "--level", "county"], **quiet
    )  # type: ignore[arg-type]
    subprocess.run(
        [tele, "institution", "add", "CLINIC", "--name", "城关镇卫生院", "--parent", "COUNTY"],
        **quiet,
    )  # type: ignore[arg-type]
    subprocess.run(
        [tele, "user", "add", USER, "--role", "technician", "--institution", "CLINIC"],
        input=PASSWORD.encode(),
        stdout=subprocess.DEVNULL,
        env=env,
        check=True,
    )
    http_port = free_port()
    log = open(work / "hub.log", "wb")
    spawn(
        [tele, "serve", "--http-port", str(http_port), "--dicom-port", str(free_port())],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: httpx.get(f"{base}/api/health").status_code == 200, 90, "hub")
    return base


def upload(base: str) -> str:
    with httpx.Client(base_url=base, timeout=60) as http:
        token = http.post("/api/auth/login", json={"username": USER, "password": PASSWORD}).json()[
            "access_token"
        ]
        response = http.post(
            "/api/ecg/uploads",
            files={"file": (ECG.name, ECG.read_bytes(), "application/dicom")},
            headers={"authorization": f"Bearer {token}"},
        )
    response.raise_for_status()
    return str(response.json()["sop_instance_uid"])


def samples_endpoint_ms(base: str, sop: str, fmt: str, repeats: int = 10) -> float:
    """One samples request alone over keep-alive, gzip accepted, median (the server's share)."""
    with httpx.Client(base_url=base, timeout=60) as http:
        token = http.post("/api/auth/login", json={"username": USER, "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"authorization": f"Bearer {token}", "accept-encoding": "gzip"}
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            http.get(f"/api/ecg/{sop}/samples", params={"format": fmt}, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build_webapp.sh")], check=False)
    if build.returncode != 0:
        print("web app build failed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-ecg-") as work:
        try:
            base = start_hub(Path(work))
            sop = upload(base)
            [cold] = measure_opens(base, sop, 1)
            warm = measure_opens(base, sop, args.repeats)
            endpoint = samples_endpoint_ms(base, sop, "int16")
            float32 = samples_endpoint_ms(base, sop, "binary")
        finally:
            stop_all()
    first = statistics.median(s["firstDrawMs"] for s in warm)
    samples = statistics.median(s["samplesMs"] for s in warm)
    draw = statistics.median(s["drawMs"] for s in warm)
    opened = statistics.median(s["openedMs"] for s in warm)
    print(f"ECG: {ECG.name} (12 leads, 10 s, 1000 Hz); opens: 1 cold + {args.repeats} warm")
    print(f"navigation → viewer mounted (app, session, page code loaded): median {opened:.0f} ms")
    print(f"navigation → samples received: median {samples:.0f} ms")
    print(
        f"navigation → traces drawn: median {first:.0f} ms (cold hub: {cold['firstDrawMs']:.0f} ms)"
    )
    print(f"canvas paint alone: median {draw:.1f} ms")
    print(f"GET /api/ecg/{{sop}}/samples?format=int16 (viewer) alone: median {endpoint:.0f} ms")
    print(f"GET /api/ecg/{{sop}}/samples?format=binary (float32) alone: median {float32:.0f} ms")
    print(
        f"first_ecg_ms={first:.0f} first_ecg_cold_ms={cold['firstDrawMs']:.0f} "
        f"opened_ms={opened:.0f} samples_ms={samples:.0f} draw_ms={draw:.1f} "
        f"samples_endpoint_ms={endpoint:.0f} samples_float32_ms={float32:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
