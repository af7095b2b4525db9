#!/usr/bin/env python3
"""Reading-queue benchmark: 50 readers draining 500 queued cases at once, on SQLite and on
PostgreSQL, through the real cases service (claim_next, complete, release).

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/queue.py                   # 50 readers x 500 cases on both databases
  python bench/queue.py --readers 20 --cases 200 --skip-postgresql
  python bench/queue.py --read-ms 500     # readers that read before claiming again

Little's law bounds the default run: with no reading time, 50 readers always have about 50
transactions waiting, so a claim waits for about 50 others whatever the locking; what the
locking decides is how evenly that wait is shared (p99 against p50). --read-ms gives the
latency at a load below saturation.

Each database is fresh: a SQLite file in a temp dir, and a PostgreSQL schema of its own
(TELEHEALTH_BENCH_POSTGRES_URL, else TELEHEALTH_TEST_POSTGRES_URL, else the local default)
that is dropped afterwards. The cases are requested through `request_reading` (routing, due
time, history) before the clock starts.

What is measured:
- claim latency: one `claim_next` transaction, commit included, as the reader's client sees
  it (waiting for a pooled connection and for SQLite's single writer included);
- throughput: cases signed per second of wall time, from the first claim to the last;
- anomalies: a case held by two readers at once (the bench marks a case after its claim
  commits and unmarks it before the release or completion commits, so its window lies
  inside the database's), a case completed twice (both count as double claims), a case
  never completed (unread). Every fifth claim of a reader is released unread, so released
  cases are raced for again.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/queue.py`, this folder is first on sys.path and this file would stand
# in for the standard library's `queue`, which urllib3 and SQLAlchemy's pool import.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import IngestSource, Instance, Patient, Series, StorageState, Study
from telehealth.auth import service as auth
from telehealth.auth.models import Role, User
from telehealth.cases import service as cases
from telehealth.clock import FakeClock
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction
from telehealth.institutions import service as institutions
from telehealth.institutions.models import InstitutionLevel

POSTGRES_URL = os.environ.get(
    "TELEHEALTH_BENCH_POSTGRES_URL",
    os.environ.get(
        "TELEHEALTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Run:
    database: str
    readers: int
    cases: int
    wall_s: float = 0.0
    claim_ms: list[float] = field(default_factory=list)
    double_claims: int = 0
    unread: int = 0
    errors: list[str] = field(default_factory=list)

    def pct(self, q: float) -> float:
        """Nearest-rank percentile of the claim latencies, in ms."""
        ordered = sorted(self.claim_ms)
        return ordered[max(int(-(-q * len(ordered) // 1)), 1) - 1] if ordered else float("nan")

    @property
    def throughput(self) -> float:
        return (self.cases - self.unread) / self.wall_s if self.wall_s else 0.0


def index_study(
    session: Session,
    institution_id: int,
    now: datetime,
    *,
    patient_id: str | None = None,
    patient_name: str = "Bench^Patient",
    birth_date: str = "",
    sex: str = "",
    accession: str = "",
    description: str = "CT",
    body_part: str = "",
) -> str:
    """A one-instance CT study indexed directly (benches never read its bytes); its UID.

    The keywords fill what a page shows (browser_worklist.py); the queue needs none.
    """
    patient = Patient(
        issuer_id=institution_id,
        patient_id=patient_id or f"P{uuid.uuid4().hex[:8]}",
        name=patient_name,
        birth_date=birth_date,
        sex=sex,
    )
    session.add(patient)
    session.flush()
    study = Study(
        study_instance_uid=generate_uid(),
        patient_pk=patient.id,
        institution_id=institution_id,
        study_date="20260302",
        study_time="",
        accession_number=accession,
        description=description,
        referring_physician="",
        modalities="CT",
        num_series=1,
        num_instances=1,
        size_bytes=1,
        first_received_at=now,
        last_received_at=now,
    )
    session.add(study)
    session.flush()
    series = Series(
        series_instance_uid=generate_uid(),
        study_pk=study.id,
        modality="CT",
        description="",
        body_part=body_part,
        num_instances=1,
    )
    session.add(series)
    session.flush()
    session.add(
        Instance(
            sop_instance_uid=generate_uid(),
            series_pk=series.id,
            sop_class_uid=CT_IMAGE,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            number_of_frames=1,
            size_bytes=1,
            sha256="0" * 64,
            object_key=f"k/{uuid.uuid4().hex}",
            state=StorageState.STORED,
            source=IngestSource.UPLOAD,
            received_at=now,
        )
    )
    session.flush()
    return study.study_instance_uid


def _seed(
    factory: sessionmaker[Session], ctx: cases.CaseContext, readers: int, total: int
) -> list[auth.Actor]:
    now = ctx.now()
    password_hash = auth.hash_password("a-long-password")  # once: Argon2 is slow by design
    with transaction(factory) as session:
        county = institutions.add_institution(
            session, code="COUNTY", name="县人民医院", level=InstitutionLevel.COUNTY
        )
        clinic = institutions.add_institution(
            session,
            code="CLINIC_A",
            name="城关镇卫生院",
            level=InstitutionLevel.TOWNSHIP,
            parent_code="COUNTY",
        )
        users = []
        for name, role, institution in [("tech_a", Role.TECHNICIAN, clinic.id)] + [
            (f"reader{n:02d}", Role.SPECIALIST, county.id) for n in range(readers)
        ]:
            user = User(
                username=name,
                display_name=name,
                password_hash=password_hash,
                role=role,
                institution_id=institution,
                active=True,
                created_at=now,
            )
            session.add(user)
            users.append(user)
        session.flush()
        cases.save_group(
            session,
            None,
            cases.GroupSpec(
                code="COUNTY_IMG",
                name="县医院影像组",
                institution="COUNTY",
                members=[u.username for u in users[1:]],
            ),
            ctx,
        )
        tech = auth.actor_for(users[0])
        for _ in range(total):
            uid = index_study(session, clinic.id, now)
            cases.request_reading(session, tech, cases.ReadingRequest(study_instance_uid=uid), ctx)
        return [auth.actor_for(u) for u in users[1:]]


def _drain(url: str, name: str, readers: int, total: int, read_s: float = 0.0) -> Run:
    run = Run(name, readers, total)
    engine = create_db_engine(url)
    try:
        migrate(engine)
        factory = make_session_factory(engine)
        # A still clock: no lease lapses mid-run, so every anomaly is the claim's own.
        ctx = cases.CaseContext(clock=FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC)))
        actors = _seed(factory, ctx, readers, total)
        lock = threading.Lock()
        holders: dict[int, int] = {}
        completed: Counter[int] = Counter()
        barrier = threading.Barrier(readers + 1)

        def work(actor: auth.Actor) -> None:
            assert actor.user_id is not None
            barrier.wait()
            claims = 0
            pace = random.Random(actor.user_id)
            if read_s:  # readers come in over a while, not all in the same millisecond
                time.sleep(pace.uniform(0, 2 * read_s))
            try:
                while True:
                    started = time.perf_counter()
                    with transaction(factory) as session:
                        claim = cases.claim_next(session, actor, ctx)
                    elapsed = (time.perf_counter() - started) * 1000
                    if claim is None:
                        return
                    claims += 1
                    with lock:
                        run.claim_ms.append(elapsed)
                        if holders.setdefault(claim.case_id, actor.user_id) != actor.user_id:
                            run.double_claims += 1
                    if read_s:  # the reader reads, holding no transaction; readers drift apart
                        time.sleep(pace.uniform(0, 2 * read_s))
                    with transaction(factory) as session:
                        with lock:
                            if holders.get(claim.case_id) == actor.user_id:
                                del holders[claim.case_id]
                        if claims % 5 == 0:
                            cases.release(session, actor, claim.case_id, claim.lease_token, ctx)
                            continue
                        cases.complete(
                            session,
                            actor,
                            claim.case_id,
                            final=True,
                            lease_token=claim.lease_token,
                            ctx=ctx,
                        )
                    with lock:
                        completed[claim.case_id] += 1
            except Exception as exc:  # reported, and the unread count shows what it cost
                with lock:
                    run.errors.append(f"{actor.name}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(a,)) for a in actors]
        for t in threads:
            t.start()
        barrier.wait()
        started = time.perf_counter()
        for t in threads:
            t.join()
        run.wall_s = time.perf_counter() - started
        run.double_claims += sum(n - 1 for n in completed.values() if n > 1)
        run.unread = total - len(completed)
    finally:
        engine.dispose()
    return run


def _postgres_schema() -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in POSTGRES_URL else "?"
    return schema, f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--skip-postgresql", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--read-ms",
        type=float,
        default=0.0,
        help="mean time a reader spends on a case between claim and completion, drawn "
        "uniformly from 0 to twice this (default 0: every reader claims again at once, the "
        "database saturated)",
    )
    args = parser.parse_args()
    read_s = args.read_ms / 1000

    runs: list[Run] = []
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'telehealth.db'}"
            runs.append(_drain(url, "sqlite", args.readers, args.cases, read_s))
    if not args.skip_postgresql:
        schema, url = _postgres_schema()
        try:
            runs.append(_drain(url, "postgresql", args.readers, args.cases, read_s))
        finally:
            _drop_schema(schema)

    print(
        f"{args.readers} readers x {args.cases} queued cases (every 5th claim released unread), "
        f"{args.read_ms:g} ms reading each"
    )
    header = f"{'database':<12}{'claims':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
    print(header + f"{'max ms':>9}{'wall s':>8}{'cases/s':>9}{'double':>8}{'unread':>8}")
    for r in runs:
        print(
            f"{r.database:<12}{len(r.claim_ms):>8}{r.pct(0.5):>9.1f}{r.pct(0.9):>9.1f}"
            f"{r.pct(0.99):>9.1f}{max(r.claim_ms, default=float('nan')):>9.1f}{r.wall_s:>8.2f}"
            f"{r.throughput:>9.1f}{r.double_claims:>8}{r.unread:>8}"
        )
        if r.claim_ms:
            print(f"  {r.database} mean claim {statistics.fmean(r.claim_ms):.1f} ms")
        for error in r.errors[:5]:
            print(f"  {r.database} error: {error}")
    by_name = {r.database: r for r in runs}
    nan = float("nan")

    def figure(name: str, q: float) -> str:
        return f"{by_name[name].pct(q):.1f}" if name in by_name else f"{nan}"

    print(
        f"sqlite_claim_p50_ms={figure('sqlite', 0.5)} sqlite_claim_p99_ms={figure('sqlite', 0.99)} "
        f"postgresql_claim_p50_ms={figure('postgresql', 0.5)} "
        f"postgresql_claim_p99_ms={figure('postgresql', 0.99)} "
        f"double_claims={sum(r.double_claims for r in runs)} "
        f"unread_cases={sum(r.unread for r in runs)} read_ms={args.read_ms:g}"
    )
    return 1 if any(r.double_claims or r.unread or r.errors for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
