"""Rooms in memory: who is in, who waits in the lobby, who was removed; rate limits."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from telehealth.consults.tokens import ConsultRole, JoinClaims

if TYPE_CHECKING:
    from signaling.backplane import RemoteConn


class TokenBucket:
    """`rate` messages a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(eq=False)
class Participant:
    peer: str  # one per socket: a user who rejoins gets a new one
    claims: JoinClaims
    conn: ServerConnection | RemoteConn  # RemoteConn: the socket is in another process
    admitted: bool = False
    audio: bool = True
    video: bool = True
    screen: bool = False

    @property
    def is_host(self) -> bool:
        return self.claims.role == ConsultRole.HOST

    @property
    def is_recorder(self) -> bool:
        return self.claims.role == ConsultRole.RECORDER

    def info(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "user": self.claims.user_id,
            "name": self.claims.name,
            "role": str(self.claims.role),
            "audio": self.audio,
            "video": self.video,
            "screen": self.screen,
        }


@dataclass(eq=False)
class Room:
    consult_id: int
    participants: dict[str, Participant] = field(default_factory=dict)  # by peer
    # Kept while the room exists, so a dropped socket comes back without the lobby, and a
    # removed user cannot come back with a token that has not expired yet.
    admitted_users: set[int] = field(default_factory=set)
    removed_users: set[int] = field(default_factory=set)
    # Consent to recording, per user: survives a dropped socket, revoked only by the user.
    consented_users: set[int] = field(default_factory=set)
    emptied_at: float | None = None

    def by_user(self, user_id: int) -> Participant | None:
        return next(
            (
                p
                for p in self.participants.values()
                if p.claims.user_id == user_id and not p.is_recorder
            ),
            None,
        )

    def recorder(self) -> Participant | None:
        return next((p for p in self.participants.values() if p.is_recorder), None)

    def people_inside(self) -> list[Participant]:
        """Admitted humans: the ones whose consent recording needs."""
        return [p for p in self.inside() if not p.is_recorder]

    def without_consent(self) -> list[Participant]:
        return [p for p in self.people_inside() if p.claims.user_id not in self.consented_users]

    def recording_state(self, reason: str = "") -> dict[str, Any]:
        recorder = self.recorder()
        people = self.people_inside()
        return {
            "on": recorder is not None,
            "recorder": recorder.peer if recorder else None,
            "consented": sorted(
                p.claims.user_id for p in people if p.claims.user_id in self.consented_users
            ),
            "missing": sorted(p.claims.user_id for p in self.without_consent()),
            "reason": reason,
        }

    def host(self) -> Participant | None:
        return next((p for p in self.participants.values() if p.is_host), None)

    def inside(self, *, besides: Participant | None = None) -> list[Participant]:
        return [p for p in self.participants.values() if p.admitted and p is not besides]

    def waiting(self) -> list[Participant]:
        return [p for p in self.participants.values() if not p.admitted]

    def guests(self) -> int:
        # The recorder takes no seat: recording must not lock a participant out.
        return sum(not (p.is_host or p.is_recorder) for p in self.participants.values())
