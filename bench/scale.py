#!/usr/bin/env python3
"""Scale-out benchmark: C-STORE ingest and case claims with one and with two processes.

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/scale.py                      # 4 associations x 150 instances, 400 cases
  python bench/scale.py --instances 50 --cases 100   # quicker

The processes are the production ones (tests/deploy/processes.py): `telehealth dicom-node`
and `telehealth serve --no-dicom`, sharing a fresh PostgreSQL database (created on
TELEHEALTH_BENCH_POSTGRES_URL's server, else TELEHEALTH_TEST_POSTGRES_URL's, and dropped
afterwards), one embedded S3 server, and Redis (TELEHEALTH_BENCH_REDIS_URL, default
redis://127.0.0.1:6379/0) on a channel of their own.

What is measured:
- ingest: the same number of dcmtk `storescu` associations (TCP_NODELAY=1) pushing CT
  slices of 256x256 (128 kB), all to one node process, then spread over two; instances
  answered Success per second of wall time, from the first start to the last exit.
- claims: cases requested beforehand (routing, due time, history), then claimed through
  POST /api/worklist/next by 4 readers x 2 client threads, against one API process, then
  alternating between two; claims per second from the first request to the last claim.

On a 2-core machine the second process mostly competes with the first (and with the S3
server, PostgreSQL and the senders) for the same cores; the figures say what one more
process buys there, not what it buys on a machine with cores to spare.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as `python bench/scale.py`, this folder is first on sys.path; the helpers live in tests/.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from telehealth.archive.models import Instance  # noqa: E402
from telehealth.auth import service as auth  # noqa: E402
from telehealth.auth.models import User  # noqa: E402
from telehealth.cases import service as cases  # noqa: E402
from telehealth.clock import SYSTEM_CLOCK  # noqa: E402
from telehealth.db import create_db_engine, make_session_factory, transaction  # noqa: E402
from telehealth.storage import EmbeddedS3, ObjectStore  # noqa: E402
from tests.cases import add_study  # noqa: E402
from tests.deploy.processes import (  # noqa: E402
    READERS,
    Cluster,
    Process,
    fresh_database,
    login,
    seed,
)
from tests.faults import make_series, write_files  # noqa: E402

STORESCU = "/usr/bin/storescu"
POSTGRES_URL = os.environ.get(
    "TELEHEALTH_BENCH_POSTGRES_URL",
    os.environ.get(
        "TELEHEALTH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
)
REDIS_URL = os.environ.get("TELEHEALTH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CALLERS = ["CLINIC_A_DR", "CLINIC_B_CT"]


def count_instances(factory: object) -> int:
    with transaction(factory) as session:  # type: ignore[arg-type]
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def ingest(
    cluster: Cluster, nodes: list[Process], folders: list[Path], factory: object
) -> tuple[float, int]:
    """Push every folder over its own association, spread round-robin over the nodes."""
    before = count_instances(factory)

    def target(i: int) -> list[str]:
        return [str(nodes[i % len(nodes)].port), "+sd", str(folders[i])]

    started = time.perf_counter()
    pushes = [
        subprocess.Popen(
            [STORESCU, "-aet", CALLERS[i % 2], "-aec", "TELEHEALTH", "127.0.0.1", *target(i)],
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(len(folders))
    ]
    for push in pushes:
        push.wait(timeout=600)
    elapsed = time.perf_counter() - started
    return elapsed, count_instances(factory) - before


def request_cases(factory: object, institution_id: int, count: int) -> None:
    """Cases waiting in the imaging group's queue, requested as a technician would."""
    with transaction(factory) as session:  # type: ignore[arg-type]
        technician = session.scalars(select(User).where(User.username == "tech_a")).one()
        actor = auth.actor_for(technician)
        ctx = cases.CaseContext()
        for _ in range(count):
            study = add_study(session, institution_id, SYSTEM_CLOCK.now())
            request = cases.ReadingRequest(study_instance_uid=study.study_instance_uid)
            cases.request_reading(session, actor, request, ctx)


def claim_all(apis: list[Process], tokens: dict[str, str], threads_per_reader: int) -> tuple:
    """Readers claim until the queue is empty; (seconds to the last claim, claims, dupes)."""
    claimed: list[int] = []
    lock = threading.Lock()
    last = [0.0]
    started = time.perf_counter()

    def reader(username: str, turn: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[username]}"}
        empty = 0
        with httpx.Client(timeout=30) as client:
            while empty < 2:
                api = apis[turn % len(apis)]
                turn += 1
                answer = client.post(f"{api.url}/api/worklist/next", headers=headers)
                if answer.status_code == 204:
                    empty += 1
                    continue
                answer.raise_for_status()
                empty = 0
                with lock:
                    claimed.append(int(answer.json()["case_id"]))
                    last[0] = time.perf_counter()

    threads = [
        threading.Thread(target=reader, args=(name, i * threads_per_reader + k))
        for i, name in enumerate(READERS)
        for k in range(threads_per_reader)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return last[0] - started, len(claimed), len(claimed) - len(set(claimed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--instances", type=int, default=150, help="per association")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--threads-per-reader", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="scale-") as tmp, fresh_database(POSTGRES_URL) as db:
        root = Path(tmp)
        ids = seed(db)
        s3_server = EmbeddedS3(root / "s3")
        s3 = s3_server.start()
        bucket = f"scale-{uuid.uuid4().hex[:8]}"
        ObjectStore(s3, bucket).ensure_bucket()
        cluster = Cluster(
            db,
            s3,
            bucket,
            REDIS_URL,
            f"telehealth-bench:{uuid.uuid4().hex[:8]}",
            root,
            extra={"TELEHEALTH_STUDY_STABLE_SECONDS": "3600"},  # no cases from the pushes
        )
        engine = create_db_engine(db)
        factory = make_session_factory(engine)
        started: list[Process] = []
        try:
            rates: dict[str, float] = {}
            for processes in (1, 2):
                folders = [
                    write_files(
                        root / f"push{processes}-{i}",
                        make_series(args.instances, patient_id=f"S{processes}{i}", size=256),
                    )[0].parent
                    for i in range(args.associations)
                ]
                nodes = [cluster.node(f"node{processes}-{k}").start() for k in range(processes)]
                started += nodes
                for node in nodes:
                    node.wait_ready()
                seconds, stored = ingest(cluster, nodes, folders, factory)
                expected = args.associations * args.instances
                rates[f"ingest_{processes}proc_inst_s"] = stored / seconds
                print(
                    f"ingest  {processes} node process(es): {stored}/{expected} instances over "
                    f"{args.associations} associations in {seconds:.2f} s = "
                    f"{stored / seconds:.0f} instances/s"
                )
                for node in nodes:
                    node.stop()

            for processes in (1, 2):
                request_cases(factory, ids["CLINIC_A"], args.cases)
                apis = [cluster.api(f"api{processes}-{k}").start() for k in range(processes)]
                started += apis
                for api in apis:
                    api.wait_ready()
                tokens = {name: login(apis[0].url, name) for name in READERS}
                seconds, claims, dupes = claim_all(apis, tokens, args.threads_per_reader)
                rates[f"claims_{processes}proc_s"] = claims / seconds
                print(
                    f"claims  {processes} API process(es): {claims}/{args.cases} cases by "
                    f"{len(READERS) * args.threads_per_reader} clients in {seconds:.2f} s = "
                    f"{claims / seconds:.0f} claims/s; claimed twice: {dupes}"
                )
                for api in apis:
                    api.stop()
        finally:
            for process in started:
                process.kill()
            engine.dispose()
            s3_server.stop()
    print(" ".join(f"{name}={value:.1f}" for name, value in rates.items()))


if __name__ == "__main__":
    main()
