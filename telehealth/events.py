"""Notifications ("study stable", "case changed", …): many listeners, none can fail the publisher.

Following pynetdicom's split: a notification may have many listeners, and one that raises is
logged and ignored.

Each listener says which events it hears (`Scope`):

- `LOCAL`: events published in this process only. For work that must happen once per event
  in the whole cluster: creating a case when a study is stable, measuring an ECG, warming
  metadata. The process that published the event (the one that stored the instance, or
  marked the study stable under a row lock) is the one that does the work.
- `CLUSTER`: events published in any process of the cluster, each delivered once per process.
  For state each process keeps for itself: its own live WebSocket connections.

With no relay attached (one process, the default) both scopes hear the same events, exactly as
a plain in-process bus would. `telehealth.cluster.RedisRelay` carries events between processes.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Topic(StrEnum):
    INSTANCE_STORED = "instance.stored"
    STUDY_STABLE = "study.stable"
    CASE_CHANGED = "case.changed"  # a case was created, routed, claimed, escalated, …
    ECG_MEASURED = "ecg.measured"  # an ECG instance was measured (payload: ecg results)


class Scope(StrEnum):
    LOCAL = "local"  # events of this process: work done once per event cluster-wide
    CLUSTER = "cluster"  # events of every process, once per process: per-process state


Listener = Callable[[dict[str, Any]], None]


class Relay(Protocol):
    """Carries this process's events to the other processes (telehealth.cluster)."""

    def send(self, topic: Topic, payload: dict[str, Any]) -> None:
        """Queue one event for the others; never blocks the publisher on the network."""
        ...


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[tuple[Topic, Scope], list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()
        self.relay: Relay | None = None

    def subscribe(self, topic: Topic, listener: Listener, *, scope: Scope = Scope.LOCAL) -> None:
        with self._lock:
            self._listeners[(topic, scope)].append(listener)

    def publish(self, topic: Topic, payload: dict[str, Any]) -> None:
        """Deliver to this process's listeners (in this thread), then to the other processes."""
        self._deliver(topic, payload, (Scope.LOCAL, Scope.CLUSTER))
        relay = self.relay
        if relay is not None:
            relay.send(topic, payload)

    def deliver_remote(self, topic: Topic, payload: dict[str, Any]) -> None:
        """An event another process published: only CLUSTER listeners hear it."""
        self._deliver(topic, payload, (Scope.CLUSTER,))

    def _deliver(self, topic: Topic, payload: dict[str, Any], scopes: tuple[Scope, ...]) -> None:
        with self._lock:
            listeners = [x for scope in scopes for x in self._listeners[(topic, scope)]]
        for listener in listeners:
            try:
                listener(payload)
            except Exception:
                log.exception("listener %r failed on %s", listener, topic)
