"""Readers racing in threads, each in its own transaction: a case has one holder at a time,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseEvent, CaseEventKind, CaseStatus
from telehealth.clock import FakeClock
from telehealth.db import transaction
from tests.cases import World, add_user, build_world

READERS = 8


@pytest.fixture
def world(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    """The consortium with eight more readers in the county imaging group, committed."""
    session = factory()
    try:
        world = build_world(session, clock)
        for n in range(READERS):
            name = f"reader{n}"
            world.users[name] = add_user(
                session, name, Role.SPECIALIST, world.ids["COUNTY"], clock.now()
            )
        cases.save_group(
            session,
            None,
            cases.GroupSpec(
                code="COUNTY_IMG",
                name="COUNTY_IMG",
                institution="COUNTY",
                members=[f"reader{n}" for n in range(READERS)],
            ),
            world.ctx,
            group_id=world.groups["COUNTY_IMG"],
        )
        session.commit()
        yield world
    finally:
        session.close()


def race(actors: list[auth.Actor], attempt: Callable[[auth.Actor], object]) -> list[object]:
    """Run `attempt` for every actor at once (a barrier lines the threads up)."""
    barrier = threading.Barrier(len(actors))
    results: list[object] = [None] * len(actors)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(actors[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_readers_racing_for_one_case_exactly_one_wins(
    world: World, factory: sessionmaker[Session]
) -> None:
    study_ids = [world.request(world.study()).id for _ in range(5)]
    world.session.commit()
    actors = [world.actor(f"reader{n}") for n in range(READERS)]
    for case_id in study_ids:

        def attempt(actor: auth.Actor, case_id: int = case_id) -> cases.Claim:
            with transaction(factory) as session:
                return cases.claim(session, actor, case_id, world.ctx)

        results = race(actors, attempt)
        winners = [r for r in results if isinstance(r, cases.Claim)]
        losers = [r for r in results if isinstance(r, cases.ClaimHeld)]
        assert len(winners) == 1, results
        assert len(losers) == READERS - 1, results
        assert winners[0].lease_token == 1


def test_readers_taking_the_next_case_never_share_one(
    world: World, factory: sessionmaker[Session]
) -> None:
    total = 40
    for _ in range(total):
        world.request(world.study())
    world.session.commit()
    actors = [world.actor(f"reader{n}") for n in range(READERS)]

    def drain(actor: auth.Actor) -> list[int]:
        taken: list[int] = []
        while True:
            with transaction(factory) as session:
                claim = cases.claim_next(session, actor, world.ctx)
            if claim is None:
                return taken
            taken.append(claim.case_id)

    results = race(actors, drain)
    assert not [r for r in results if isinstance(r, Exception)], results
    claimed = Counter(case_id for taken in results for case_id in taken)  # type: ignore[attr-defined]
    assert len(claimed) == total  # every case read …
    assert set(claimed.values()) == {1}  # … exactly once


# --- issue 4's fault test: 50 readers, 500 queued cases -----------------------------------------

CROWD = 50
QUEUED = 500


@pytest.fixture
def crowd(factory: sessionmaker[Session], clock: FakeClock) -> Iterator[World]:
    """The consortium with 50 readers in the county imaging group and 500 queued cases."""
    session = factory()
    try:
        world = build_world(session, clock)
        names = [f"crowd{n:02d}" for n in range(CROWD)]
        for name in names:
            world.users[name] = add_user(
                session, name, Role.SPECIALIST, world.ids["COUNTY"], clock.now()
            )
        cases.save_group(
            session,
            None,
            cases.GroupSpec(
                code="COUNTY_IMG", name="COUNTY_IMG", institution="COUNTY", members=names
            ),
            world.ctx,
            group_id=world.groups["COUNTY_IMG"],
        )
        # Through the real request path (routing, due time, history), one commit for all.
        for _ in range(QUEUED):
            world.request(world.study())
        session.commit()
        yield world
    finally:
        session.close()


def test_fifty_readers_read_five_hundred_cases_each_exactly_once(
    crowd: World, factory: sessionmaker[Session]
) -> None:
    """Every reader drains the queue with claim_next; every fifth claim is released unread
    first, so released cases go back and are raced for again. A case held by two readers at
    once, read twice, or never read fails the test."""
    actors = [crowd.actor(f"crowd{n:02d}") for n in range(CROWD)]
    lock = threading.Lock()
    # case → reader holding it, as far as the test knows. Set after the claim commits and
    # cleared before the release/completion commits, so our window lies inside the
    # database's: two readers in it at once means the database let both hold the case.
    holders: dict[int, int] = {}
    double_claims: list[tuple[int, int, int]] = []

    def work(actor: auth.Actor) -> list[int]:
        assert actor.user_id is not None
        read: list[int] = []
        claims = 0
        while True:
            with transaction(factory) as session:
                claim = cases.claim_next(session, actor, crowd.ctx)
            if claim is None:
                return read
            claims += 1
            with lock:
                other = holders.setdefault(claim.case_id, actor.user_id)
                if other != actor.user_id:
                    double_claims.append((claim.case_id, other, actor.user_id))
            with transaction(factory) as session:
                with lock:
                    holders.pop(claim.case_id, None)
                if claims % 5 == 0:
                    cases.release(session, actor, claim.case_id, claim.lease_token, crowd.ctx)
                    continue
                cases.complete(
                    session,
                    actor,
                    claim.case_id,
                    final=True,
                    lease_token=claim.lease_token,
                    ctx=crowd.ctx,
                )
            read.append(claim.case_id)

    results = race(actors, work)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert double_claims == []
    read = Counter(case_id for taken in results for case_id in taken)  # type: ignore[attr-defined]
    assert len(read) == QUEUED  # every case read …
    assert set(read.values()) == {1}  # … exactly once
    assert sum(1 for taken in results if taken) > 1  # the readers really shared the work
    with transaction(factory) as session:
        statuses = Counter(session.scalars(select(Case.status)))
        assert statuses == {CaseStatus.SIGNED: QUEUED}
        # The history agrees: one completion per case, and claims never overlap (every claim
        # after the first follows a release).
        events = session.execute(
            select(CaseEvent.case_id, CaseEvent.kind)
            .where(
                CaseEvent.kind.in_(
                    (CaseEventKind.CLAIMED, CaseEventKind.RELEASED, CaseEventKind.COMPLETED)
                )
            )
            .order_by(CaseEvent.case_id, CaseEvent.id)
        ).all()
    per_case: dict[int, list[str]] = {}
    for case_id, kind in events:
        per_case.setdefault(case_id, []).append(kind)
    for kinds in per_case.values():
        assert kinds[-1] == CaseEventKind.COMPLETED and kinds.count(CaseEventKind.COMPLETED) == 1
        assert kinds[0::2] == [CaseEventKind.CLAIMED] * len(kinds[0::2])
