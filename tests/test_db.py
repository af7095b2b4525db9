"""SQLite transactions take turns at the write lock first come, first served (telehealth.db
WriteTurns), and every way a transaction ends hands the turn on. Claims, leases and escalations
are all plain transactions: this is what keeps a claim's wait short and fair under load."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from telehealth import db
from telehealth.db import (
    STARVING_AFTER,
    DatabaseUnavailable,
    WriteTurns,
    create_db_engine,
    make_session_factory,
    migrate,
    transaction,
)


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'telehealth.db'}")
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def turns_of(factory: sessionmaker[Session]) -> WriteTurns:
    engine: Engine = factory.kw["bind"]
    database = engine.url.database
    assert database is not None
    return WriteTurns.for_file(database)


def waiting(turns: WriteTurns) -> int:
    return len(turns._line)


def wait_until(probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_waiting_transactions_go_in_the_order_they_came(
    sqlite_factory: sessionmaker[Session],
) -> None:
    turns = turns_of(sqlite_factory)
    entered: list[int] = []
    holding = threading.Event()
    let_go = threading.Event()

    def first() -> None:
        with transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            holding.set()
            let_go.wait(10)

    def later(n: int) -> None:
        with transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            entered.append(n)

    threads = [start(first)]
    assert holding.wait(10)
    for n in range(6):
        threads.append(start(lambda n=n: later(n)))
        wait_until(lambda n=n: waiting(turns) == n + 1, f"writer {n} in line")
    time.sleep(STARVING_AFTER * 2)  # long enough that each turn goes to the first in line
    let_go.set()
    for thread in threads:
        thread.join(10)
    # SQLite's busy handler lets whichever sleeper wakes first in; the line keeps the order.
    assert entered == list(range(6))
    assert waiting(turns) == 0


@pytest.mark.parametrize("ending", ["commit", "error", "connection closed"])
def test_every_way_a_transaction_ends_hands_the_turn_on(
    sqlite_factory: sessionmaker[Session], ending: str
) -> None:
    turns = turns_of(sqlite_factory)
    holding = threading.Event()
    let_go = threading.Event()

    def holder() -> None:
        if ending == "connection closed":
            engine: Engine = sqlite_factory.kw["bind"]
            conn = engine.connect()
            conn.execute(text("SELECT 1"))
            holding.set()
            let_go.wait(10)
            conn.invalidate()  # the DBAPI connection is closed inside its transaction
            conn.close()
            return
        expected = pytest.raises(RuntimeError) if ending == "error" else contextlib.nullcontext()
        with expected, transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            holding.set()
            let_go.wait(10)
            if ending == "error":
                raise RuntimeError("the unit of work failed")

    got_in = threading.Event()

    def next_writer() -> None:
        with transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            got_in.set()

    first = start(holder)
    assert holding.wait(10)
    second = start(next_writer)
    wait_until(lambda: waiting(turns) == 1, "the next writer in line")
    let_go.set()
    first.join(10)
    assert got_in.wait(5), f"the turn was not handed on after {ending}"
    second.join(10)
    assert turns._holder is None and waiting(turns) == 0


def test_a_writer_kept_waiting_too_long_is_told_the_database_is_unavailable(
    sqlite_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    holding = threading.Event()
    let_go = threading.Event()

    def holder() -> None:
        with transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            holding.set()
            let_go.wait(10)

    first = start(holder)
    assert holding.wait(10)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(DatabaseUnavailable), transaction(sqlite_factory) as session:
        session.execute(text("SELECT 1"))
    let_go.set()
    first.join(10)
    with transaction(sqlite_factory) as session:  # the line is as it was
        assert session.execute(text("SELECT 1")).scalar() == 1
    assert waiting(turns_of(sqlite_factory)) == 0


def test_a_thread_holding_the_turn_does_not_queue_behind_itself(tmp_path: Path) -> None:
    turns = WriteTurns.for_file(str(tmp_path / "telehealth.db"))
    assert turns.acquire(timeout=5)
    started = time.monotonic()
    assert not turns.acquire(timeout=5)  # left to SQLite's busy handling, at once
    assert time.monotonic() - started < 1
    turns.release()
    assert turns.acquire(timeout=5)
    turns.release()


def test_a_waiter_that_gives_up_leaves_the_line(tmp_path: Path) -> None:
    turns = WriteTurns.for_file(str(tmp_path / "telehealth.db"))
    assert turns.acquire(timeout=5)
    outcome: list[object] = []

    def wait_briefly() -> None:
        try:
            outcome.append(turns.acquire(timeout=0.2))
        except TimeoutError as exc:
            outcome.append(exc)

    waiter = start(wait_briefly)
    waiter.join(5)
    assert [type(o) for o in outcome] == [TimeoutError] and waiting(turns) == 0
    turns.release()
    assert turns._holder is None


def test_a_turn_held_too_long_is_logged_with_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every other writer waits while one holds the lock: the log says who, and so does the
    error of a writer that gave up."""
    monkeypatch.setattr(db, "SLOW_TURN_SECONDS", 0.05)
    turns = WriteTurns.for_file(str(tmp_path / "telehealth.db"))
    holding, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        assert turns.acquire(timeout=5)
        holding.set()
        let_go.wait(10)
        turns.release()

    holder = threading.Thread(target=hold, name="slow-writer", daemon=True)
    holder.start()
    assert holding.wait(10)
    with pytest.raises(TimeoutError, match="thread 'slow-writer' has held it for"):
        turns.acquire(timeout=0.1)
    with caplog.at_level("WARNING", logger="telehealth.db"):
        let_go.set()
        holder.join(10)
    assert "held the lock for" in caplog.text and "'slow-writer'" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="telehealth.db"):
        assert turns.acquire(timeout=5)
        turns.release()  # a short turn says nothing
    assert caplog.text == ""


def test_a_raw_transaction_takes_its_turn_commits_and_rolls_back(
    sqlite_factory: sessionmaker[Session],
) -> None:
    """raw_transaction (the ingest's hot path) waits its turn like any transaction, commits on
    leaving, rolls back on an error, and hands the turn on either way."""
    engine: Engine = sqlite_factory.kw["bind"]
    turns = turns_of(sqlite_factory)
    with db.raw_transaction(engine) as cursor:
        cursor.execute("CREATE TABLE t (x INTEGER)")
        cursor.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), db.raw_transaction(engine) as cursor:
        cursor.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("after the statement, before the commit")

    holding, let_go, entered = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with transaction(sqlite_factory) as session:
            session.execute(text("SELECT 1"))
            holding.set()
            let_go.wait(10)

    def raw_writer() -> None:
        with db.raw_transaction(engine) as cursor:
            cursor.execute("INSERT INTO t VALUES (3)")
        entered.set()

    threads = [start(holder)]
    assert holding.wait(10)
    threads.append(start(raw_writer))
    wait_until(lambda: waiting(turns) == 1, "the raw transaction to wait in line")
    assert not entered.is_set()
    let_go.set()
    for thread in threads:
        thread.join(10)
    assert entered.is_set()
    with transaction(sqlite_factory) as session:
        assert [x for (x,) in session.execute(text("SELECT x FROM t ORDER BY x"))] == [1, 3]
    assert turns._holder is None and waiting(turns) == 0
