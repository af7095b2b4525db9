"""Several hub processes on one database and one object store (issue 8).

Events cross processes through Redis pub/sub (`RedisRelay`), switched on by
`TELEHEALTH_REDIS_URL`. Why Redis rather than PostgreSQL LISTEN/NOTIFY, which needs nothing
more: NOTIFY payloads sit in one 8 GB queue shared by the whole database and a NOTIFY inside a
transaction takes a database-wide lock at COMMIT, which would serialise every ingest commit
of every process (INSTANCE_STORED fires per instance); LISTEN needs one dedicated connection
per process that PgBouncer in transaction mode cannot carry; and SQLite has neither. Redis
pub/sub costs the database nothing, is one `PUBLISH` per event, and is already in the
compose file for the deployment. Its delivery is at most once: a process whose connection to
Redis drops misses what was published meanwhile. That is fine for what travels (live worklist
messages: a client refetches its worklist on every reconnect, and the database is the truth);
nothing durable depends on an event reaching another process.

Work that must happen once in the cluster never depends on the relay:

- study stable: every process runs the check; `mark_stable_studies` locks rows with
  SKIP LOCKED and sets `stable_at`, so each study is marked by exactly one process, which
  then runs the LOCAL listeners (case creation, metadata warming) for it;
- periodic sweeps with no such per-row claim (escalations, lapsed leases, critical-result
  reminders) run as a `SingletonJob`: only the process holding a PostgreSQL advisory lock
  (a file lock on SQLite) runs them; the lock goes with the holder's connection, so when that
  process dies another takes over on its next tick;
- migrations and first-start seeding take `startup_lock`, so processes started together do
  not run them twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Connection, Engine, text

from telehealth.events import EventBus, Topic

log = logging.getLogger(__name__)


class RedisRelay:
    """Publishes this process's events to one Redis channel and delivers the others' events.

    Each process subscribes once, so an event reaches every other process exactly once while
    Redis stays up; a process skips its own events (it delivered them when they were
    published). Publishing goes through a queue and one sender thread: an ingest never waits
    on the network, and a burst goes out in one pipeline.
    """

    def __init__(
        self,
        url: str,
        bus: EventBus,
        *,
        channel: str = "telehealth:events",
        outbox_size: int = 10_000,
    ) -> None:
        self.bus = bus
        self.channel = channel
        self.origin = uuid.uuid4().hex  # tells this process's own events apart
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=15
        )
        self._outbox: queue.Queue[bytes | None] = queue.Queue(outbox_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.subscribed = threading.Event()  # set while the listener's subscription is live
        self.sent = 0
        self.received = 0
        self.dropped = 0  # events that could not be queued or sent (Redis down too long)

    def start(self, *, wait_seconds: float = 10.0) -> RedisRelay:
        """Subscribe, then attach to the bus; waits (bounded) for the subscription."""
        self._stop.clear()
        for target, name in ((self._send_loop, "events-out"), (self._listen_loop, "events-in")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.subscribed.wait(wait_seconds):
            log.warning("not yet subscribed to Redis; events of other processes will follow")
        self.bus.relay = self
        return self

    def stop(self) -> None:
        self.bus.relay = None
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._outbox.put_nowait(None)  # the sender flushes what is queued, then ends
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        self._client.close()

    @property
    def healthy(self) -> bool:
        return self.subscribed.is_set()

    # --- out ---------------------------------------------------------------------------------

    def send(self, topic: Topic, payload: dict[str, Any]) -> None:
        message = json.dumps({"o": self.origin, "t": str(topic), "p": payload}, default=str)
        try:
            self._outbox.put_nowait(message.encode())
        except queue.Full:
            self.dropped += 1
            log.warning("event outbox full (Redis unreachable?); an event was dropped")

    def _send_loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._outbox.get(timeout=0.5)
            except queue.Empty:
                stopping = self._stop.is_set()  # the outbox was too full for stop()'s marker
                continue
            batch = [] if first is None else [first]
            stopping = first is None
            while len(batch) < 500:
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._publish(batch)

    def _publish(self, batch: list[bytes]) -> None:
        for attempt in range(3):  # the client reconnects by itself on the next command
            try:
                pipe = self._client.pipeline(transaction=False)
                for message in batch:
                    pipe.publish(self.channel, message)
                pipe.execute()
                self.sent += len(batch)
                return
            except redis.RedisError as exc:
                log.warning("publishing %d events to Redis failed: %s", len(batch), exc)
                if self._stop.wait(0.5 * (attempt + 1)):
                    break
        self.dropped += len(batch)

    # --- in ----------------------------------------------------------------------------------

    def _listen_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        backoff = 0.5
                    elif message["type"] == "message":
                        self._deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("lost the Redis event subscription (%s); reconnecting", exc)
                self.subscribed.clear()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
        self.subscribed.clear()

    def _deliver(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message["o"] == self.origin:
                return
            topic = Topic(message["t"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed or unknown event on %s", self.channel)
            return
        self.received += 1
        self.bus.deliver_remote(topic, message["p"])


# --- once in the cluster -----------------------------------------------------------------------


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock from a readable name."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _sqlite_lock_path(engine: Engine, name: str) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None  # one process only: nothing to share a lock with
    return Path(f"{database}-{name}.lock")


class ClusterLock:
    """An exclusive lock named `name`, shared by every process on the database, that goes
    away with the process holding it (even on SIGKILL).

    PostgreSQL: a session-level advisory lock on a connection of its own, which is closed
    (not returned to the pool) when the lock is let go. SQLite: flock on a file beside the
    database, for processes on one machine.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._key = _lock_key(f"telehealth:{name}")
        self._conn: Connection | None = None
        self._fd: int | None = None
        self._postgres = engine.dialect.name == "postgresql"
        self.held = False

    def acquire(self, *, wait: bool) -> bool:
        """Take the lock (blocking when `wait`); True when held. Calling it again while held
        checks the lock is still ours (its connection alive)."""
        if self.held:
            return self._still_held()
        if self._postgres:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                if wait:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                    got = True
                else:
                    got = bool(
                        conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
                    )
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            if not got:
                conn.close()  # holds nothing: back to the pool
                return False
            self._conn = conn
        else:
            path = _sqlite_lock_path(self.engine, self.name)
            if path is not None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                self._fd = fd
        self.held = True
        return True

    def _still_held(self) -> bool:
        if self._conn is None:
            return True  # a file lock stays ours while the process lives
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("lost the connection holding the %s lock: %s", self.name, exc)
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            # Closing the connection is what lets the lock go, even if the unlock fails.
            self._conn.invalidate()
            self._conn.close()
            self._conn = None
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        self.held = False


@contextlib.contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Serialises migrations and first-start seeding between processes started together."""
    lock = ClusterLock(engine, "startup")
    lock.acquire(wait=True)
    try:
        yield
    finally:
        lock.release()


class SingletonJob:
    """Runs `work` every `interval` seconds in exactly one live process of the cluster.

    Every process runs one of these; each tick, the one holding the job's ClusterLock works
    and the others try to take the lock. A holder that dies loses it with its connection, so
    another process carries on at its next tick.
    """

    def __init__(
        self, engine: Engine, name: str, work: Callable[[], object], *, interval: float
    ) -> None:
        self.name = name
        self.work = work
        self.interval = interval
        self.lock = ClusterLock(engine, name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # ticks this process worked (for tests and health)

    @property
    def leading(self) -> bool:
        return self.lock.held

    def start(self) -> SingletonJob:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"singleton-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self.lock.release()

    def tick(self) -> bool:
        """Work once if this process leads; True when it did."""
        try:
            if not self.lock.acquire(wait=False):
                return False
        except Exception as exc:
            log.warning("could not take the %s lock: %s", self.name, exc)
            return False
        try:
            self.work()
        except Exception:
            log.exception("%s failed; will try again", self.name)
        self.runs += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()
