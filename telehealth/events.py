"""In-process notifications ("study stable", …): many listeners, none can fail the publisher.

Following pynetdicom's split: a notification may have many listeners, and one that raises is
logged and ignored. Cross-process delivery comes later through the database or Redis.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Topic(StrEnum):
    INSTANCE_STORED = "instance.stored"
    STUDY_STABLE = "study.stable"
    CASE_CHANGED = "case.changed"  # a case was created, routed, claimed, escalated, …
    ECG_MEASURED = "ecg.measured"  # an ECG instance was measured (payload: ecg results)


Listener = Callable[[dict[str, Any]], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[Topic, list[Listener]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, topic: Topic, listener: Listener) -> None:
        with self._lock:
            self._listeners[topic].append(listener)

    def publish(self, topic: Topic, payload: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners[topic])
        for listener in listeners:
            try:
                listener(payload)
            except Exception:
                log.exception("listener %r failed on %s", listener, topic)
