"""Readers racing in threads, each in its own transaction: a case has one holder at a time,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.cases import service as cases
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
