"""Events across processes (Redis) and work done once in the cluster (advisory/file locks)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from telehealth.cluster import ClusterLock, RedisRelay, SingletonJob
from telehealth.db import create_db_engine
from telehealth.events import EventBus, Scope, Topic
from tests.faults import wait_for


def listen(bus: EventBus, scope: Scope, topic: Topic = Topic.CASE_CHANGED) -> list[Any]:
    heard: list[Any] = []
    bus.subscribe(topic, heard.append, scope=scope)
    return heard


def test_without_a_relay_both_scopes_hear_local_events_and_only_cluster_hears_remote() -> None:
    bus = EventBus()
    local, cluster = listen(bus, Scope.LOCAL), listen(bus, Scope.CLUSTER)
    bus.publish(Topic.CASE_CHANGED, {"n": 1})
    bus.deliver_remote(Topic.CASE_CHANGED, {"n": 2})
    assert local == [{"n": 1}]
    assert cluster == [{"n": 1}, {"n": 2}]


def test_a_failing_listener_does_not_fail_the_publisher_or_the_others() -> None:
    bus = EventBus()

    def broken(_payload: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    bus.subscribe(Topic.STUDY_STABLE, broken)
    heard = listen(bus, Scope.LOCAL, Topic.STUDY_STABLE)
    bus.publish(Topic.STUDY_STABLE, {"study_instance_uid": "1.2"})
    assert heard == [{"study_instance_uid": "1.2"}]


def test_events_reach_every_process_once_and_local_work_stays_with_the_publisher(
    redis_url: str, channel: str
) -> None:
    buses = [EventBus() for _ in range(3)]
    relays = [RedisRelay(redis_url, bus, channel=channel).start() for bus in buses]
    try:
        assert all(relay.healthy for relay in relays)
        local = [listen(bus, Scope.LOCAL) for bus in buses]
        cluster = [listen(bus, Scope.CLUSTER) for bus in buses]
        for n in range(20):
            buses[n % 2].publish(Topic.CASE_CHANGED, {"n": n})
        # Wait until every process heard all 20, then for a marker sent after them: whatever
        # was to be delivered twice would have arrived before it.
        for heard in cluster:
            wait_for(lambda heard=heard: len(heard) >= 20, timeout=10, what="20 events")
        buses[2].publish(Topic.CASE_CHANGED, {"n": "end"})
        for heard in cluster[:2]:
            wait_for(lambda heard=heard: {"n": "end"} in heard, timeout=10, what="the marker")
        expected = [{"n": n} for n in range(20)] + [{"n": "end"}]
        for heard in cluster:
            assert sorted(map(str, heard)) == sorted(map(str, expected))
        # LOCAL listeners hear their own process's events only (once-in-the-cluster work).
        assert local[0] == [{"n": n} for n in range(0, 20, 2)]
        assert local[1] == [{"n": n} for n in range(1, 20, 2)]
        assert local[2] == [{"n": "end"}]
    finally:
        for relay in relays:
            relay.stop()


def test_a_relay_ignores_malformed_and_unknown_events(redis_url: str, channel: str) -> None:
    import redis

    bus = EventBus()
    relay = RedisRelay(redis_url, bus, channel=channel).start()
    heard = listen(bus, Scope.CLUSTER)
    client = redis.Redis.from_url(redis_url)
    try:
        client.publish(channel, b"not json")
        client.publish(channel, b'{"o": "x", "t": "no.such.topic", "p": {}}')
        client.publish(channel, b'{"o": "x", "t": "case.changed", "p": {"ok": true}}')
        wait_for(lambda: heard, timeout=10, what="the well-formed event")
        assert heard == [{"ok": True}] and relay.received == 1
    finally:
        client.close()
        relay.stop()


@pytest.fixture
def engines(database_url: str) -> Iterator[list[Engine]]:
    made = [create_db_engine(database_url) for _ in range(2)]
    yield made
    for engine in made:
        engine.dispose()


def test_a_singleton_job_runs_in_one_process_and_moves_when_it_stops(
    engines: list[Engine],
) -> None:
    runs: list[str] = []
    first = SingletonJob(engines[0], "sweep", lambda: runs.append("first"), interval=60)
    second = SingletonJob(engines[1], "sweep", lambda: runs.append("second"), interval=60)
    assert first.tick() and not second.tick() and first.tick()
    assert runs == ["first", "first"] and first.leading and not second.leading
    first.stop()  # releases the lock
    assert second.tick() and not first.lock.acquire(wait=False)
    assert runs == ["first", "first", "second"]
    second.stop()


HOLD_LOCK = """
import sys, time
from telehealth.cluster import ClusterLock
from telehealth.db import create_db_engine
lock = ClusterLock(create_db_engine(sys.argv[1]), "sweep")
assert lock.acquire(wait=False)
print("held", flush=True)
time.sleep(120)
"""


def test_the_lock_of_a_process_killed_by_sigkill_goes_to_another(
    engines: list[Engine], database_url: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, database_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = ClusterLock(engines[0], "sweep")
        assert not lock.acquire(wait=False)
        holder.kill()
        holder.wait(timeout=10)
        wait_for(lambda: lock.acquire(wait=False), timeout=20, what="the lock to be free")
        lock.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_hubs_with_redis_relay_case_messages_and_sweep_in_one_process(
    hub_factory: Any, redis_url: str, channel: str
) -> None:
    from telehealth.cases import service as cases

    hubs = [hub_factory(dicom=False, redis_url=redis_url, redis_channel=channel) for _ in range(2)]
    for hub in hubs:
        assert hub.relay is not None and hub.relay.healthy and hub.health()["cluster_events"]
        assert hub.escalation_job is not None and hub.escalator._thread is None
    heard = listen(hubs[1].events, Scope.CLUSTER, cases.CASE_TOPIC)
    cases.publish(hubs[0].events, {"type": "case.created", "case_id": 7})
    wait_for(lambda: heard, timeout=10, what="the other hub to hear the case message")
    assert heard == [{"type": "case.created", "case_id": 7}]
    # The escalation sweep: whichever hub took the lock first keeps it; the other never runs.
    leader = wait_for(
        lambda: next((h for h in hubs if h.escalation_job.tick()), None),  # type: ignore[union-attr]
        timeout=10,
        what="a hub to lead the escalation sweep",
    )
    follower = hubs[1] if leader is hubs[0] else hubs[0]
    assert not follower.escalation_job.tick()  # type: ignore[union-attr]
    assert leader.escalation_job.tick()  # type: ignore[union-attr]
