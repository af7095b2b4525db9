#!/usr/bin/env python3
"""Worklist benchmark: how long a reader waits for a 200-case worklist to be usable.

Not part of the test run. Prints the figures and ends with one `name=value` line.

  python bench/browser_worklist.py              # 200 cases, 5 cold loads
  python bench/browser_worklist.py --cases 500 --repeats 3

A hub runs as `telehealth serve` (embedded SQLite and S3) on a fresh data folder seeded with
a consortium, one reader and --cases open cases of mixed priority from two clinics, made
through the cases service (routing, due times, history) before the hub starts. Studies are
indexed only: the worklist never reads their bytes.

`measure_worklist` opens /app/worklist in Debian's Chromium in a fresh browser context each
time (cold cache, logged in by cookie) and reports the time from navigation start to the
moment every row is rendered and the first row takes the keyboard focus, read from the
page's own clock (`performance.now()` counts from navigation start).
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
from datetime import datetime
from pathlib import Path

# Run as a script, bench/ would come first on sys.path and bench/queue.py would stand in for
# the standard library's queue; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.ingest import VENV_BIN, free_port, spawn, stop_all, wait_until  # noqa: E402
from bench.queue import index_study  # noqa: E402
from telehealth.auth import service as auth  # noqa: E402
from telehealth.auth.models import Role  # noqa: E402
from telehealth.cases import service as cases  # noqa: E402
from telehealth.cases.models import CasePriority  # noqa: E402
from telehealth.config import Settings  # noqa: E402
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction  # noqa: E402
from telehealth.institutions import service as institutions  # noqa: E402
from telehealth.institutions.models import InstitutionLevel  # noqa: E402
from telehealth.webapp import DEFAULT_DIST as WEBAPP_DIST  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PASSWORD = secrets.token_urlsafe(16)  # a fresh hub per run; nothing to keep
READER = "reader"
SURNAMES = ["Zhang", "Wang", "Li", "Zhao", "Chen", "Liu", "Yang", "Huang", "Zhou", "Wu"]
GIVEN = ["Wei", "Fang", "Min", "Jing", "Lei", "Yan", "Jun", "Xia", "Tao", "Hui"]

# Rows rendered and the first one focusable: the reader can press j/k/Enter.
READY = """(expected) => {
  const rows = document.querySelectorAll('tr[data-case-id]');
  if (rows.length < expected) return false;
  rows[0].focus();
  return document.activeElement === rows[0] ? performance.now() : false;
}"""


# When the requests on the critical path had their answers, from navigation start.
BREAKDOWN = """() => {
  const done = {};
  for (const e of performance.getEntriesByType('resource')) {
    const path = new URL(e.name).pathname;
    const key = path.startsWith('/api/worklist') ? 'worklist_api'
      : path === '/api/auth/me' ? 'me_api'
      : /\\/Worklist\\.[0-9a-f]+\\.js$/.test(path) ? 'worklist_js' : null;
    if (key && !(key in done)) done[key] = e.responseEnd;
  }
  const nav = performance.getEntriesByType('navigation')[0];
  done.html = nav ? nav.responseEnd : 0;
  return done;
}"""


def measure_worklist(
    base_url: str,
    username: str,
    password: str,
    *,
    expected: int = 200,
    repeats: int = 1,
    details: list[dict[str, float]] | None = None,
) -> float:
    """Milliseconds from navigation to an interactive worklist of `expected` rows (median of
    `repeats` cold loads, each in a fresh browser context). `details` collects, per load,
    when the page's requests finished (ms from navigation start)."""
    from playwright.sync_api import sync_playwright

    figures: list[float] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for _ in range(repeats):
                context = browser.new_context(viewport={"width": 1440, "height": 900})
                login = context.request.post(
                    f"{base_url}/api/auth/login",
                    data={"username": username, "password": password},
                )
                if not login.ok:
                    raise RuntimeError(f"login failed: {login.status}")
                page = context.new_page()
                page.goto(f"{base_url}/app/worklist", wait_until="commit")
                ready = page.wait_for_function(READY, arg=expected, polling="raf", timeout=60_000)
                figures.append(float(ready.json_value()))
                if details is not None:
                    details.append(page.evaluate(BREAKDOWN))
                context.close()
        finally:
            browser.close()
    return statistics.median(figures)


def _study(session: Session, institution_id: int, now: datetime, n: int) -> str:
    """Study `n` with a patient name, birth date and accession the worklist shows."""
    return index_study(
        session,
        institution_id,
        now,
        patient_id=f"P{n:05d}",
        patient_name=f"{SURNAMES[n % 10]}^{GIVEN[(n // 10) % 10]}",
        birth_date=f"{1940 + n % 60}0{1 + n % 9}15",
        sex="MF"[n % 2],
        accession=f"ACC{n:05d}",
        description="CT 头颅平扫",
        body_part="HEAD",
    )


def seed(settings: Settings, total: int) -> None:
    """A county with two clinics, a reader in a reading group, `total` requested cases."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.resolved_database_url())
    migrate(engine)
    ctx = cases.CaseContext()
    try:
        with transaction(make_session_factory(engine)) as session:
            institutions.add_institution(
                session, code="COUNTY", name="县人民医院", level=InstitutionLevel.COUNTY
            )
            clinics = [
                institutions.add_institution(
                    session,
                    code=code,
                    name=name,
                    level=InstitutionLevel.TOWNSHIP,
                    parent_code="COUNTY",
                )
                for code, name in [("CLINIC_A", "城关镇卫生院"), ("CLINIC_B", "河口镇卫生院")]
            ]
            auth.create_user(
                session,
                username=READER,
                password=PASSWORD,
                role=Role.SPECIALIST,
                institution_code="COUNTY",
            )
            techs = []
            for clinic in clinics:
                user = auth.create_user(
                    session,
                    username=f"tech_{clinic.code.lower()}",
                    password=PASSWORD,
                    role=Role.TECHNICIAN,
                    institution_code=clinic.code,
                )
                techs.append(auth.actor_for(user))
            cases.save_group(
                session,
                None,
                cases.GroupSpec(
                    code="COUNTY_IMG", name="县医院影像组", institution="COUNTY", members=[READER]
                ),
                ctx,
            )
            priorities = (
                [CasePriority.ROUTINE] * 7 + [CasePriority.URGENT] * 2 + [CasePriority.STAT]
            )
            now = ctx.now()
            for n in range(total):
                clinic = clinics[n % 2]
                uid = _study(session, clinic.id, now, n)
                request = cases.ReadingRequest(
                    study_instance_uid=uid,
                    priority=priorities[n % len(priorities)],
                    question="头痛、呕吐，排除颅内出血",
                    clinical_history="高血压病史十年。",
                )
                cases.request_reading(session, techs[n % 2], request, ctx)
    finally:
        engine.dispose()


def private_build(work: Path) -> Path:
    """A copy of the current build: other work rebuilding viewer/app/dist meanwhile must not
    swap the assets under the page being timed. A build that fails (sources mid-edit) is
    retried for a while; the last good build is used after that."""
    for _ in range(10):
        build = subprocess.run(
            ["bash", str(REPO / "scripts" / "build_webapp.sh")], capture_output=True, check=False
        )
        if build.returncode == 0:
            break
        time.sleep(5)
    dist = work / "dist"
    shutil.copytree(WEBAPP_DIST, dist)
    return dist


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-worklist-") as work:
        data = Path(work) / "hub-data"
        seed(Settings(data_dir=data), args.cases)
        dist = private_build(Path(work))
        http_port = free_port()
        env = dict(
            os.environ,
            TELEHEALTH_LOG_LEVEL="WARNING",
            TELEHEALTH_DATA_DIR=str(data),
            TELEHEALTH_SIGNALING_PORT=str(free_port()),
            TELEHEALTH_WEB_DIST=str(dist),
        )
        log = open(Path(work) / "hub.log", "wb")
        spawn(
            [
                str(VENV_BIN / "telehealth"),
                "serve",
                "--http-port",
                str(http_port),
                "--dicom-port",
                str(free_port()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_until(lambda: httpx.get(f"{base}/api/health").status_code == 200, 90, "hub")
            started = time.perf_counter()
            details: list[dict[str, float]] = []
            ms = measure_worklist(
                base,
                READER,
                PASSWORD,
                expected=args.cases,
                repeats=args.repeats,
                details=details,
            )
            wall = time.perf_counter() - started
        finally:
            stop_all()
            log.close()
    print(f"cases: {args.cases}, cold loads: {args.repeats} ({wall:.1f} s in all)")
    for key in ("html", "me_api", "worklist_js", "worklist_api"):
        values = [d[key] for d in details if key in d]
        if values:
            print(f"  {key} answered at: median {statistics.median(values):.0f} ms")
    print(f"navigation → rows rendered and first row focused: median {ms:.0f} ms")
    print(f"worklist_ms={ms:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
