"""Two API processes and two DICOM node processes on one PostgreSQL, one S3 bucket, one Redis.

Clinics send to both nodes while four readers claim through both APIs; a live worklist on
API 1 hears of cases that node 2's process created; one node and one API process are killed
with SIGKILL mid-way. Nothing answered Success is lost (the killed node uploads its spool when
it comes back) and no case is claimed twice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from telehealth.archive.models import Instance, Series, StorageState, Study
from telehealth.cases.models import Case, CaseEvent, CaseEventKind
from telehealth.db import create_db_engine, make_session_factory, transaction
from telehealth.storage import ObjectStore, S3Endpoint
from tests.conftest import POSTGRES_URL, _postgres_reachable
from tests.deploy.processes import READERS, Cluster, Process, fresh_database, login, seed
from tests.faults import make_series, send, sop_uid, wait_for

# Under 1 min on an idle 2-core machine; generous for a loaded CI run.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def database() -> Iterator[str]:
    reason = _postgres_reachable()
    if reason:
        pytest.skip(reason)
    with fresh_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
def cluster(
    database: str, s3: S3Endpoint, bucket: str, redis_url: str, channel: str, tmp_path: Path
) -> Iterator[Cluster]:
    seed(database)
    made = Cluster(
        database,
        s3,
        bucket,
        redis_url,
        channel,
        tmp_path,
        # Quick stable studies and sweeps, so the test sees cases within seconds.
        extra={
            "TELEHEALTH_STUDY_STABLE_SECONDS": "2",
            "TELEHEALTH_CASE_ESCALATION_CHECK_SECONDS": "1",
        },
    )
    yield made


class Reader(threading.Thread):
    """A specialist claiming the next case again and again, alternating between the APIs
    and moving to the other one when his request finds an API gone."""

    def __init__(self, username: str, apis: list[Process], token: str, stop: threading.Event):
        super().__init__(name=f"reader-{username}", daemon=True)
        self.username = username
        self.apis = apis
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stop = stop
        self.claimed: list[int] = []  # case ids answered 200
        self.unanswered = 0  # requests whose answer was lost (the API was killed)

    def run(self) -> None:
        turn = READERS.index(self.username)
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                api = self.apis[turn % len(self.apis)]
                turn += 1
                try:
                    answer = client.post(f"{api.url}/api/worklist/next", headers=self.headers)
                except httpx.TransportError:
                    self.unanswered += 1
                    continue
                if answer.status_code == 200:
                    self.claimed.append(int(answer.json()["case_id"]))
                elif answer.status_code == 204:
                    self.stop.wait(0.2)  # nothing free right now
                else:
                    raise AssertionError(f"{answer.status_code}: {answer.text}")


class LiveWorklist(threading.Thread):
    """An admin's live worklist WebSocket on one API: keeps every message."""

    def __init__(self, api: Process, token: str) -> None:
        super().__init__(name="live-worklist", daemon=True)
        self.url = f"ws://127.0.0.1:{api.port}/api/worklist/live?token={token}"
        self.messages: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self.closing = threading.Event()

    def run(self) -> None:
        with connect(self.url) as socket:
            while not self.closing.is_set():
                try:
                    raw = socket.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return
                message = json.loads(raw)
                if message["type"] == "hello":
                    self.connected.set()
                self.messages.append(message)

    def open(self) -> LiveWorklist:
        self.start()
        assert self.connected.wait(10), "the live worklist did not say hello"
        return self

    def close(self) -> None:
        self.closing.set()
        self.join(timeout=10)

    def case_ids(self, kind: str) -> set[int]:
        return {int(m["case_id"]) for m in list(self.messages) if m.get("type") == kind}


def by_study(factory: Any, study_uid: str) -> Callable[[], list[tuple[int, str]]]:
    def probe() -> list[tuple[int, str]]:
        with transaction(factory) as session:
            rows = session.execute(
                select(Case.id, Case.status)
                .join(Study)
                .where(Study.study_instance_uid == study_uid)
            ).all()
            return [(case_id, status) for case_id, status in rows]

    return probe


def test_two_apis_and_two_nodes_lose_nothing_and_claim_each_case_once(
    cluster: Cluster, s3: S3Endpoint, bucket: str
) -> None:
    api1, api2 = cluster.api("api1").start(), cluster.api("api2").start()
    node1, node2 = cluster.node("node1").start(), cluster.node("node2").start()
    processes = [api1, api2, node1, node2]
    engine = create_db_engine(cluster.database_url)
    factory = make_session_factory(engine)
    stop = threading.Event()
    readers: list[Reader] = []
    live: LiveWorklist | None = None
    try:
        for process in processes:
            process.wait_ready()
        live = LiveWorklist(api1, login(api1.url, "admin")).open()
        readers = [Reader(name, [api1, api2], login(api2.url, name), stop) for name in READERS]
        for reader in readers:
            reader.start()

        # Phase 1: clinic A sends four studies to node 1, clinic B four to node 2, at once.
        # When node 1 has answered Success 25 times, node 1 and API 2 are killed (SIGKILL).
        studies = {
            "node1": [make_series(15, patient_id=f"A{k}") for k in range(4)],
            "node2": [make_series(15, patient_id=f"B{k}") for k in range(4)],
        }
        acknowledged: dict[str, list[str]] = {"node1": [], "node2": []}
        killed = threading.Event()

        def kill_when(count: int) -> None:
            if count >= 25 and not killed.is_set():
                killed.set()
                node1.kill()
                api2.kill()

        def clinic(node: Process, calling: str, batch: list[list[bytes]]) -> None:
            done = 0
            for study in batch:
                if node is node1 and killed.is_set():
                    break
                # Node 2 stays up: like a modality, resend what a slow moment left unanswered.
                for _ in range(1 if node is node1 else 3):
                    answered = set(acknowledged[node.name])
                    left = [data for data in study if sop_uid(data) not in answered]
                    if not left:
                        break
                    sent = send(
                        node.port,
                        calling,
                        left,
                        on_success=(lambda n, before=done: kill_when(before + n))
                        if node is node1
                        else None,
                    )
                    acknowledged[node.name] += sent
                    done += len(sent)

        senders = [
            threading.Thread(target=clinic, args=(node1, "CLINIC_A_DR", studies["node1"])),
            threading.Thread(target=clinic, args=(node2, "CLINIC_B_CT", studies["node2"])),
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=300)
        assert killed.is_set() and not node1.alive() and not api2.alive()
        assert len(acknowledged["node2"]) == 60
        assert 25 <= len(acknowledged["node1"]) < 60

        # Node 1 died with acknowledged instances in its spool: indexed, not uploaded.
        acked = acknowledged["node1"] + acknowledged["node2"]
        with transaction(factory) as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.state).where(
                    Instance.sop_instance_uid.in_(acked)
                )
            ).all()
            states = {uid: state for uid, state in rows}
        assert set(states) == set(acked)  # every Success is indexed
        stranded = {uid for uid in acknowledged["node1"] if states[uid] == StorageState.SPOOLED}
        assert stranded, "node 1 uploaded everything before it died; nothing was tested"
        spool_files = list((node1.data_dir / "spool").rglob("*.dcm"))
        assert len(spool_files) >= len(stranded)

        # A live worklist on API 1 heard of cases created in node 2's process.
        node2_studies = _study_uids(factory, acknowledged["node2"])
        node2_cases = set()
        for study_uid in node2_studies:
            found = wait_for(by_study(factory, study_uid), timeout=90, what="a case per study")
            node2_cases |= {case_id for case_id, _ in found}
        wait_for(
            lambda: node2_cases <= live.case_ids("case.created"),  # type: ignore[union-attr]
            timeout=60,
            what="API 1's live worklist to hear of node 2's cases",
        )

        # Node 1 comes back on the same spool and port: it uploads what it had acknowledged.
        node1 = cluster.node("node1", port=node1.port).start().wait_ready()
        processes.append(node1)

        def all_stored() -> bool:
            with transaction(factory) as session:
                left = session.scalar(
                    select(func.count())
                    .select_from(Instance)
                    .where(Instance.sop_instance_uid.in_(acked))
                    .where(Instance.state != StorageState.STORED)
                )
            return left == 0

        wait_for(all_stored, timeout=120, what="every acknowledged instance in the object store")
        store = ObjectStore(s3, bucket)
        with transaction(factory) as session:
            keys = list(
                session.scalars(
                    select(Instance.object_key).where(Instance.sop_instance_uid.in_(stranded))
                )
            )
        assert all(store.stat(key) is not None for key in keys)

        # Phase 2: both nodes take more after the crash.
        more = {
            node1.name: make_series(10, patient_id="A9"),
            node2.name: make_series(10, patient_id="B9"),
        }
        assert len(send(node1.port, "CLINIC_A_DR", more["node1"])) == 10
        assert len(send(node2.port, "CLINIC_B_CT", more["node2"])) == 10

        # Every study that got anything becomes exactly one case, and the readers (through
        # API 1 now) claim them all.
        with transaction(factory) as session:
            study_count = session.scalar(select(func.count()).select_from(Study))
        assert study_count is not None and study_count >= 6

        def all_claimed() -> bool:
            with transaction(factory) as session:
                total = session.scalar(select(func.count()).select_from(Case))
                claimed = session.scalar(
                    select(func.count(func.distinct(CaseEvent.case_id))).where(
                        CaseEvent.kind == CaseEventKind.CLAIMED
                    )
                )
            return total == study_count and claimed == study_count

        wait_for(all_claimed, timeout=120, what="a case per study, each claimed")
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=15)
        if live is not None:
            live.close()
        for process in processes:
            process.stop()
        engine.dispose()

    # No case was claimed twice: not in the answers, not in any case's history.
    answered = [case_id for reader in readers for case_id in reader.claimed]
    assert len(answered) == len(set(answered))
    factory = make_session_factory(engine := create_db_engine(cluster.database_url))
    try:
        with transaction(factory) as session:
            per_case = session.execute(
                select(CaseEvent.case_id, func.count())
                .where(CaseEvent.kind == CaseEventKind.CLAIMED)
                .group_by(CaseEvent.case_id)
            ).all()
            created = session.scalars(
                select(func.count())
                .select_from(CaseEvent)
                .where(CaseEvent.kind == CaseEventKind.CREATED)
            ).one()
    finally:
        engine.dispose()
    assert per_case and all(count == 1 for _, count in per_case)
    assert created == len(per_case)  # one case per stable study: none made twice
    assert set(answered) <= {case_id for case_id, _ in per_case}


def _study_uids(factory: Any, sop_uids: list[str]) -> set[str]:
    with transaction(factory) as session:
        return set(
            session.scalars(
                select(Study.study_instance_uid)
                .join(Series, Series.study_pk == Study.id)
                .join(Instance, Instance.series_pk == Series.id)
                .where(Instance.sop_instance_uid.in_(sop_uids))
            )
        )
