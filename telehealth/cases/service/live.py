"""Live case messages: published after commit on the event bus, fanned out to WebSockets.

`publish` is the one place a message leaves the process boundary's reach; moving delivery
across processes (issue 8: PostgreSQL NOTIFY or Redis) replaces that function and
`LiveFeed.deliver`'s subscription, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from telehealth.auth.models import Role
from telehealth.events import EventBus, Topic

log = logging.getLogger(__name__)

# events.Topic has no member for cases yet; the bus keys listeners by any string, so this
# stays a plain value until the topic moves into events.py.
CASE_TOPIC = Topic.CASE_CHANGED

_PENDING = "cases.pending_messages"


def publish(bus: EventBus | None, message: dict[str, Any]) -> None:
    """Hand one case message to whoever listens (in-process today)."""
    if bus is not None:
        bus.publish(CASE_TOPIC, message)


def publish_after_commit(session: Session, bus: EventBus | None, message: dict[str, Any]) -> None:
    """Publish when the session's transaction commits; forget it if it rolls back.

    A client told "claimed" before the commit could refetch and still see the case free.
    """
    if bus is not None:
        session.info.setdefault(_PENDING, []).append((bus, message))


@event.listens_for(Session, "after_commit")
def _publish_pending(session: Session) -> None:
    for bus, message in session.info.pop(_PENDING, []):
        publish(bus, message)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@dataclass(frozen=True)
class Viewer:
    """Who is on the other end of a live connection, and which messages are his."""

    user_id: int
    role: Role
    institution_id: int
    group_ids: frozenset[int]

    def wants(self, message: dict[str, Any]) -> bool:
        if message.get("type") == "notification":
            return bool(message.get("user_id") == self.user_id)
        if self.role == Role.ADMIN:
            return True
        if self.role == Role.TECHNICIAN:
            return bool(message.get("institution_id") == self.institution_id)
        if self.role == Role.SPECIALIST:
            groups = {message.get("group_id"), message.get("previous_group_id")}
            holders = {message.get("claim_holder_id"), message.get("previous_claim_holder_id")}
            return bool(groups & self.group_ids) or self.user_id in holders
        return False


class Subscription:
    """One live connection's queue, filled from any thread, read in its event loop."""

    def __init__(self, viewer: Viewer, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self.viewer = viewer
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        # Set when messages were dropped for a slow client: it must refetch everything.
        self.lagging = False

    def _offer(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.lagging = True


class LiveFeed:
    """Fans case messages out to the live connections that may see them."""

    def __init__(self, *, queue_size: int = 1000) -> None:
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._queue_size = queue_size

    def attach(self, viewer: Viewer, loop: asyncio.AbstractEventLoop) -> Subscription:
        subscription = Subscription(viewer, loop, self._queue_size)
        with self._lock:
            self._subscriptions.add(subscription)
        return subscription

    def detach(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def replace_viewer(self, subscription: Subscription, viewer: Viewer) -> None:
        """Group memberships changed: filter by the fresh ones from now on."""
        subscription.viewer = viewer

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def deliver(self, message: dict[str, Any]) -> None:
        """Event bus listener: runs in the publishing thread, never blocks on a client."""
        with self._lock:
            targets = [s for s in self._subscriptions if s.viewer.wants(message)]
        for subscription in targets:
            # The loop is gone when its connection is closing; nothing left to tell.
            with contextlib.suppress(RuntimeError):
                subscription.loop.call_soon_threadsafe(subscription._offer, message)
