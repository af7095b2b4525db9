"""The signalling server: a `websockets` server that relays protocol v1 between the people in
a consult room. It trusts only join tokens signed with the key derived from the hub's secret;
it has no database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from signaling.backplane import Backplane, RemoteConn
from signaling.protocol import FEATURES, CloseCode, MessageType, ProtocolError, encode, parse
from signaling.rooms import Participant, Room, TokenBucket
from telehealth.consults.tokens import ConsultRole, JoinClaims, JoinTokenError, verify_join_token

if TYPE_CHECKING:
    from telehealth.config import Settings

log = logging.getLogger(__name__)
Conn = ServerConnection | RemoteConn  # a socket here, or one another process holds

_ROOM_PATH = re.compile(r"^/rooms/(\d{1,12})/?$")
_TOKEN_CLOSE = {
    "missing": CloseCode.TOKEN_MISSING,
    "invalid": CloseCode.TOKEN_INVALID,
    "expired": CloseCode.TOKEN_EXPIRED,
}
_RELAYED = (MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE)
_LOBBY_ALLOWED = (MessageType.PING, MessageType.PRESENCE, MessageType.LEAVE, MessageType.CONSENT)


@dataclass(frozen=True)
class Limits:
    max_participants: int = 4
    max_message_bytes: int = 64 * 1024
    rate_per_second: float = 50.0
    rate_burst: int = 200
    heartbeat_seconds: float = 20.0
    join_timeout_seconds: float = 5.0
    # An empty room keeps its admitted/removed lists this long, for a participant who rejoins.
    empty_room_seconds: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_participants=settings.signaling_max_participants,
            max_message_bytes=settings.signaling_max_message_bytes,
            rate_per_second=settings.signaling_rate_per_second,
            rate_burst=settings.signaling_rate_burst,
            heartbeat_seconds=settings.signaling_heartbeat_seconds,
        )


class SignalingServer:
    def __init__(
        self,
        join_key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        now: Callable[[], float] = time.time,
        backplane: Backplane | None = None,
    ) -> None:
        self.join_key = join_key
        self.host = host
        self.requested_port = port
        self.limits = limits or Limits()
        self.now = now  # wall-clock seconds: join tokens expire by it
        self.rooms: dict[int, Room] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Several processes: rooms shared through Redis (signaling.backplane); None: alone.
        self.backplane = backplane

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        limits = self.limits
        self._server = await serve(
            self._handle,
            self.host,
            self.requested_port,
            max_size=limits.max_message_bytes,  # larger frames: closed with 1009
            # Heartbeats: a peer whose link died is noticed within two intervals.
            ping_interval=limits.heartbeat_seconds,
            ping_timeout=limits.heartbeat_seconds,
            compression=None,  # small JSON; deflate costs latency and memory per socket
            close_timeout=2.0,  # a peer that never answers our close frame is cut off
        )
        if self.backplane is not None:
            await self.backplane.start(self)
        self._spawn(self._sweep_rooms())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self.backplane is not None:  # after the sockets: their goodbyes go out first
            await self.backplane.stop()

    async def serve_forever(self) -> None:
        """Serve until cancelled: the process is the server (`telehealth signaling`)."""
        await self.start()
        assert self._server is not None
        # The CLI imports the whole hub: ~240k objects that every full collection walks, with
        # every room's messages waiting (0.3-0.9 s measured here on a busy machine, ~0.15 s
        # left with them frozen). Frozen, they are never walked again, nor ever freed: they
        # live as long as the process anyway.
        gc.collect()
        gc.freeze()
        try:
            await self._server.serve_forever()
        finally:
            await self.stop()

    # --- one socket ---------------------------------------------------------------------------

    async def _handle(self, conn: ServerConnection) -> None:
        try:
            joined = await self._admit_socket(conn)
            if joined is None:
                return
            room, me = joined
            reason = "left"
            try:
                reason = await self._serve(room, me)
            except ConnectionClosed:
                reason = "disconnected"
            finally:
                self._depart(room, me, reason)
        except ConnectionClosed:
            return

    async def _admit_socket(self, conn: ServerConnection) -> tuple[Room, Participant] | None:
        """Check the path and the join token before the socket enters a room."""
        path = conn.request.path.split("?", 1)[0] if conn.request else ""
        match = _ROOM_PATH.match(path)
        if match is None:
            await conn.close(CloseCode.BAD_PATH, "connect to /rooms/<consult id>")
            return None
        room_id = int(match.group(1))
        try:
            raw = await asyncio.wait_for(conn.recv(), self.limits.join_timeout_seconds)
            message = parse(raw)
        except TimeoutError:
            await conn.close(CloseCode.JOIN_TIMEOUT, "no join message")
            return None
        except ProtocolError as exc:
            await conn.close(CloseCode.BAD_MESSAGE, str(exc)[:120])
            return None
        if message["type"] != MessageType.JOIN:
            await conn.close(CloseCode.BAD_MESSAGE, "join first")
            return None
        try:
            claims = verify_join_token(self.join_key, message.get("token"), now=self.now())
        except JoinTokenError as exc:
            await conn.close(_TOKEN_CLOSE[exc.reason], str(exc))
            return None
        if claims.consult_id != room_id:
            await conn.close(CloseCode.WRONG_ROOM, "the token is for another consult")
            return None
        if self.backplane is not None:
            owner = await self.backplane.owner_of(room_id)
            if owner != self.backplane.node:  # the room lives in another process
                await self.backplane.proxy(conn, room_id, message["token"], claims, owner)
                return None
        return await self._seat(conn, room_id, claims)

    async def _seat(
        self, conn: Conn, room_id: int, claims: JoinClaims
    ) -> tuple[Room, Participant] | None:
        """A checked token's holder into the room, or refused (closed) by the room's rules."""
        room = self.rooms.setdefault(room_id, Room(room_id))
        if claims.role == ConsultRole.RECORDER:
            refusal = _recorder_refusal(room)
            if refusal is not None:
                await conn.close(*refusal)
                return None
        elif claims.user_id in room.removed_users:
            await conn.close(CloseCode.REMOVED, "removed by the host")
            return None
        if not self._has_seat(room, claims):
            await conn.close(CloseCode.ROOM_FULL, "room full")
            return None
        return self._enter(conn, room, claims)

    def _has_seat(self, room: Room, claims: JoinClaims) -> bool:
        """One seat stays free for the host, so early guests cannot lock him out."""
        if claims.role == ConsultRole.RECORDER:
            return True  # no seat taken; one recorder at most (_recorder_refusal)
        previous = room.by_user(claims.user_id)
        if claims.role == ConsultRole.HOST:
            host = room.host()
            return host is None or host is previous
        guests = room.guests() - (previous is not None)
        return guests < self.limits.max_participants - 1

    def _enter(self, conn: Conn, room: Room, claims: JoinClaims) -> tuple[Room, Participant]:
        previous = room.by_user(claims.user_id)
        if previous is not None:
            # The same user again: his old socket is likely dead and not yet noticed.
            self._depart(room, previous, "replaced")
            self._close_later(previous.conn, CloseCode.REPLACED, "joined from another socket")
        me = Participant(uuid.uuid4().hex[:12], claims, conn)
        me.admitted = me.is_host or me.is_recorder or claims.user_id in room.admitted_users
        room.participants[me.peer] = me
        room.emptied_at = None
        welcome: dict[str, Any] = {
            "peer": me.peer,
            "room": room.consult_id,
            "role": str(claims.role),
            "admitted": me.admitted,
            "peers": [p.info() for p in room.inside(besides=me)] if me.admitted else [],
            "features": list(FEATURES),
            "recording": room.recording_state(),
        }
        if me.is_host:
            welcome["waiting"] = [p.info() for p in room.waiting()]
        _send([conn], MessageType.WELCOME, **welcome)
        if me.is_recorder:
            _send(_conns(room.inside(besides=me)), MessageType.JOIN, peer=me.info())
            self._recording_changed(room, "started")
        elif me.admitted:
            room.admitted_users.add(claims.user_id)
            _send(_conns(room.inside(besides=me)), MessageType.JOIN, peer=me.info())
            self._enforce_consent(room, "joined")  # back without consent: recording stops
        else:
            self._lobby_changed(room)
        return room, me

    async def _serve(self, room: Room, me: Participant) -> str:
        """Relay my messages until I leave; returns why I left."""
        assert isinstance(me.conn, ServerConnection)
        bucket = self._bucket()
        async for raw in me.conn:
            left = await self._on_message(room, me, raw, bucket=bucket)
            if left is not None:
                return left
        return "disconnected"

    def _bucket(self) -> TokenBucket:
        return TokenBucket(self.limits.rate_per_second, self.limits.rate_burst)

    async def _on_message(
        self, room: Room, me: Participant, raw: str | bytes, *, bucket: TokenBucket
    ) -> str | None:
        """One frame from me (my socket here, or held by another process); why I left, or
        None while I stay."""
        if room.participants.get(me.peer) is not me:
            return "removed"  # removed or replaced while this message was in flight
        if not bucket.take():
            # A flood costs everyone in the room; only the sender pays for it. The others
            # hear at once; then the backlog is read and dropped, or the sender's reply to
            # our close frame would wait behind it until close_timeout.
            self._depart(room, me, "rate_limited")
            self._close_later(me.conn, CloseCode.RATE_LIMITED, "too many messages")
            if isinstance(me.conn, ServerConnection):  # a holder elsewhere drains its own
                async for _ in me.conn:
                    pass
            return "rate_limited"
        try:
            message = parse(raw)
        except ProtocolError as exc:
            _send([me.conn], MessageType.ERROR, reason=str(exc))
            return None
        kind = message["type"]
        if kind == MessageType.LEAVE:
            await me.conn.close()
            return "left"
        if not me.admitted and kind not in _LOBBY_ALLOWED:
            _send([me.conn], MessageType.ERROR, reason="waiting in the lobby", refused=kind)
            return None
        self._dispatch(room, me, kind, message)
        return None

    def _dispatch(
        self, room: Room, me: Participant, kind: MessageType, message: dict[str, Any]
    ) -> None:
        if kind in _RELAYED:
            target = room.participants.get(message["to"])
            if target is None or not target.admitted:
                _send([me.conn], MessageType.ERROR, reason="no such peer", refused=kind)
                return
            body = "sdp" if kind != MessageType.CANDIDATE else "candidate"
            _send([target.conn], kind, **{"from": me.peer, body: message[body]})
        elif kind == MessageType.CHAT:
            # Relayed only; the client stores it with the consult over HTTP (for now).
            at = datetime.now(UTC).isoformat()
            sender = {"from": me.peer, "user": me.claims.user_id, "name": me.claims.name}
            _send(_conns(room.inside()), kind, **sender, text=message["text"], at=at)
        elif kind == MessageType.PRESENCE:
            for flag in ("audio", "video", "screen"):
                if flag in message:
                    setattr(me, flag, message[flag])
            if me.admitted:
                _send(_conns(room.inside(besides=me)), kind, peer=me.info())
        elif kind == MessageType.PING:
            _send([me.conn], MessageType.PONG, id=message.get("id"))
        elif kind == MessageType.CONSENT:
            if me.is_recorder:
                _send([me.conn], MessageType.ERROR, reason="the recorder has no say", refused=kind)
                return
            if message["granted"]:
                room.consented_users.add(me.claims.user_id)
                self._recording_changed(room, "consent given")
            else:
                room.consented_users.discard(me.claims.user_id)
                self._enforce_consent(room, "consent revoked")
        elif kind in (MessageType.ADMIT, MessageType.REMOVE, MessageType.VIEWER_SYNC):
            self._host_command(room, me, kind, message)
        else:  # JOIN again
            _send([me.conn], MessageType.ERROR, reason="already joined", refused=kind)

    def _host_command(
        self, room: Room, me: Participant, kind: MessageType, message: dict[str, Any]
    ) -> None:
        if not me.is_host:
            _send([me.conn], MessageType.ERROR, reason="only the host may do this", refused=kind)
            return
        if kind == MessageType.VIEWER_SYNC:
            _send(
                _conns(room.inside(besides=me)), kind, state=message["state"], **{"from": me.peer}
            )
            return
        target = room.participants.get(message["peer"])
        if target is None or target is me:
            _send([me.conn], MessageType.ERROR, reason="no such peer", refused=kind)
            return
        if kind == MessageType.ADMIT:
            if target.admitted:
                return
            target.admitted = True
            room.admitted_users.add(target.claims.user_id)
            _send(
                [target.conn],
                MessageType.ADMITTED,
                peers=[p.info() for p in room.inside(besides=target)],
            )
            _send(_conns(room.inside(besides=target)), MessageType.JOIN, peer=target.info())
            self._lobby_changed(room)
            self._enforce_consent(room, "admitted")
        elif target.is_recorder:  # the host stops the recording; a later one may still come
            self._depart(room, target, "removed")
            self._close_later(target.conn, CloseCode.REMOVED, "removed by the host")
        else:
            room.removed_users.add(target.claims.user_id)
            room.admitted_users.discard(target.claims.user_id)
            self._depart(room, target, "removed")
            self._close_later(target.conn, CloseCode.REMOVED, "removed by the host")

    def _depart(self, room: Room, me: Participant, reason: str) -> None:
        """Take me out of the room once (a replaced or removed socket departs early)."""
        if room.participants.get(me.peer) is not me:
            return
        del room.participants[me.peer]
        if me.admitted:
            _send(
                _conns(room.inside()),
                MessageType.LEAVE,
                peer=me.peer,
                user=me.claims.user_id,
                reason=reason,
            )
        else:
            self._lobby_changed(room)
        recorder = room.recorder()
        if me.is_recorder:
            self._recording_changed(room, reason)
        elif recorder is not None and not room.people_inside():
            self._depart(room, recorder, "nobody_left")
            self._close_later(recorder.conn, CloseCode.NOBODY_LEFT, "nobody left to record")
        if not room.participants:
            room.emptied_at = time.monotonic()

    def _enforce_consent(self, room: Room, reason: str) -> None:
        """Stop the recorder when someone inside has not consented; tell everyone the state."""
        recorder = room.recorder()
        if recorder is not None and room.without_consent():
            self._close_later(recorder.conn, CloseCode.CONSENT_REVOKED, "consent withdrawn")
            self._depart(room, recorder, "consent_revoked")  # tells the state
            return
        self._recording_changed(room, reason)

    def _recording_changed(self, room: Room, reason: str) -> None:
        # The lobby hears it too: who waits should know before being let in.
        people = [p for p in room.participants.values() if not p.is_recorder]
        _send(_conns(people), MessageType.RECORDING, **room.recording_state(reason))

    def _lobby_changed(self, room: Room) -> None:
        host = room.host()
        if host is not None:
            _send([host.conn], MessageType.LOBBY, waiting=[p.info() for p in room.waiting()])

    # --- housekeeping -------------------------------------------------------------------------

    def _close_later(self, conn: Conn, code: int, reason: str) -> None:
        self._spawn(conn.close(code, reason))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _sweep_rooms(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.limits.empty_room_seconds))
            cutoff = time.monotonic() - self.limits.empty_room_seconds
            for room_id, room in list(self.rooms.items()):
                if room.emptied_at is not None and room.emptied_at < cutoff:
                    del self.rooms[room_id]
                    if self.backplane is not None:
                        await self.backplane.release(room_id)


def _recorder_refusal(room: Room) -> tuple[CloseCode, str] | None:
    """Why a recorder may not enter now, or None."""
    if room.recorder() is not None:
        return CloseCode.ROOM_FULL, "a recorder is already in the room"
    if not room.people_inside():
        return CloseCode.CONSENT_MISSING, "nobody in the room to record"
    if room.without_consent():
        return CloseCode.CONSENT_MISSING, "not everyone in the room consented to recording"
    return None


def _conns(people: Iterable[Participant]) -> list[Conn]:
    return [p.conn for p in people]


def _send(conns: list[Conn], kind: MessageType, **fields: Any) -> None:
    # broadcast() writes without awaiting the drain: one slow peer never stalls the sender's
    # loop; its buffer grows until the heartbeat gives up on it.
    if not conns:
        return
    text = encode(kind, **fields)
    local = [c for c in conns if not isinstance(c, RemoteConn)]
    if len(local) < len(conns):  # some are held by other processes (backplane)
        remote = [c for c in conns if isinstance(c, RemoteConn)]
        remote[0].backplane.send_remote(remote, text)
    broadcast(local, text)


class SignalingThread:
    """The server on an event loop of its own, for `telehealth serve` and tests."""

    def __init__(self, server: SignalingServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="signaling", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> SignalingThread:
        """Raises OSError when the port is taken."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("signalling server did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def server_from_settings(
    settings: Settings, hub_secret: str, *, now: Callable[[], float] = time.time
) -> SignalingServer:
    from telehealth.consults.tokens import derive_join_key

    backplane = None
    if settings.redis_url:  # several processes share rooms through Redis
        backplane = Backplane(settings.redis_url, f"{settings.redis_channel}:signaling")
    return SignalingServer(
        derive_join_key(hub_secret),
        host=settings.signaling_host,
        port=settings.signaling_port,
        limits=Limits.from_settings(settings),
        now=now,
        backplane=backplane,
    )
