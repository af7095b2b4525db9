"""Rooms across several signalling processes, through Redis pub/sub (issue 7).

One process owns each room: the first to claim it in Redis (`owner:<room>`). The owner runs
the room exactly as a lone server does; a participant whose socket landed on another process
(its *holder*) is a `RemoteConn` there, and the holder is a pipe: it checks the token, then
forwards the socket's frames to the owner and writes back what the owner sends. So lobby,
admit/remove, consent, limits and relay rules live in one place, whatever the process count.

Each process listens on its own channel (`node:<id>`) and keeps `alive:<id>` fresh. When a
holder dies, the owner sees its key lapse and lets its participants leave. When an owner dies,
a holder takes the room over (a compare-and-set on `owner:<room>`): it rebuilds the room from
its own sockets (who they are, who was admitted, as the owner told them) and tells them who
left; what only the dead owner knew (the removed list, recording consent, people in the
lobby elsewhere) is lost, so consent must be given again. With three or more processes, a
holder that loses the takeover race closes its sockets with 1012 and they reconnect.

Delivery is ordered (one sender task per process, one subscription) and at most once, like
the hub's event relay (telehealth.cluster.RedisRelay, whose reconnect and batching pattern
this follows); it is not reused as is because that one is thread-based and speaks hub topics
to every process, while this is asyncio and addresses one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from signaling.protocol import CloseCode, MessageType
from signaling.rooms import Participant, Room, TokenBucket
from telehealth.consults.tokens import JoinClaims, JoinTokenError, verify_join_token

if TYPE_CHECKING:
    from signaling.server import SignalingServer

log = logging.getLogger(__name__)

SERVICE_RESTART = 1012  # RFC 6455 (IANA registry): reconnect, the room moved

# Whoever owns the room while alive stays owner; otherwise the caller becomes it.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. current) == 1 then
  return current
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_KIND_AT = len('{"v":1,"type":"')  # protocol.encode() always starts so


class RemoteConn:
    """Stands for a socket held by another process: sends and closes go there via Redis."""

    __slots__ = ("backplane", "closed", "node", "sid")

    def __init__(self, backplane: Backplane, node: str, sid: str) -> None:
        self.backplane = backplane
        self.node = node
        self.sid = sid
        self.closed = False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.backplane.post(self.node, f"close {self.sid} {int(code)}", reason)


@dataclass(eq=False)
class _Seat:
    """Owner side: a participant held elsewhere."""

    room: Room
    me: Participant
    bucket: TokenBucket


@dataclass(eq=False)
class _Proxy:
    """Holder side: one of my sockets in a room another process owns."""

    sid: str
    ws: ServerConnection
    room_id: int
    claims: JoinClaims
    owner: str
    peer: str | None = None
    admitted: bool = False
    others: dict[str, int] = field(default_factory=dict)  # peers inside, as told: peer → user
    # Set when this process took the room over: from then on the socket is served here.
    room: Room | None = None
    me: Participant | None = None
    bucket: TokenBucket | None = None


class Backplane:
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        beat_seconds: float = 1.0,
        alive_seconds: float = 4.0,
    ) -> None:
        self.node = uuid.uuid4().hex[:12]
        self.prefix = prefix
        self.beat_seconds = beat_seconds
        self.alive_seconds = alive_seconds
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._outbox: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._sids = itertools.count(1)
        self._seats: dict[tuple[str, str], _Seat] = {}
        self._proxies: dict[str, _Proxy] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: SignalingServer | None = None
        self.subscribed = asyncio.Event()

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, server: SignalingServer) -> None:
        self._server = server
        await self._redis.set(self._key("alive", self.node), "1", px=int(self.alive_seconds * 1000))
        for work in (self._listen(), self._send_loop(), self._watch()):
            self._tasks.append(asyncio.ensure_future(work))
        await asyncio.wait_for(self.subscribed.wait(), 10)

    async def stop(self) -> None:
        """Flush what is queued (goodbyes of closed sockets), then leave: others take over."""
        self._outbox.put_nowait(None)
        sender = self._tasks[1] if len(self._tasks) > 1 else None
        if sender is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(sender), 3)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(redis.RedisError, OSError):
            await self._redis.delete(self._key("alive", self.node))
            if self._server is not None:
                for room_id in list(self._server.rooms):
                    await self.release(room_id)
        self._tasks.clear()
        await self._redis.aclose()

    async def owner_of(self, room_id: int) -> str:
        """The live process owning the room; this one when nobody alive did."""
        owner = await self._claim(
            keys=[self._key("owner", room_id)], args=[self.node, self._key("alive", "")]
        )
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def release(self, room_id: int) -> None:
        await self._release(keys=[self._key("owner", room_id)], args=[self.node])

    # --- out ----------------------------------------------------------------------------------

    def post(self, node: str, header: str, body: str = "") -> None:
        """Queue one message for a process; one sender keeps them in order."""
        self._outbox.put_nowait((self._key("node", node), f"{header}\n{body}".encode()))

    def send_remote(self, conns: Iterable[RemoteConn], text: str) -> None:
        by_node: dict[str, list[str]] = {}
        for conn in conns:
            if not conn.closed:
                by_node.setdefault(conn.node, []).append(conn.sid)
        for node, sids in by_node.items():
            self.post(node, f"out {','.join(sids)}", text)

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            batch = [item]
            while not self._outbox.empty() and len(batch) < 500:
                batch.append(self._outbox.get_nowait())
            stopping = None in batch
            messages = [m for m in batch if m is not None]
            for attempt in range(3):
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for channel, data in messages:
                            pipe.publish(channel, data)
                        await pipe.execute()
                    break
                except (redis.RedisError, OSError) as exc:
                    log.warning("publishing %d signalling messages failed: %s", len(batch), exc)
                    await asyncio.sleep(0.2 * (attempt + 1))
            if stopping:
                return

    # --- holder side --------------------------------------------------------------------------

    async def proxy(self, ws: ServerConnection, room_id: int, token: str, claims: JoinClaims,
                    owner: str) -> None:  # fmt: skip
        """Pipe one socket to the room's owner until it closes (or serve it here after a
        takeover)."""
        assert self._server is not None
        proxy = _Proxy(f"{self.node}.{next(self._sids)}", ws, room_id, claims, owner)
        self._proxies[proxy.sid] = proxy
        self.post(owner, f"open {self.node} {proxy.sid} {room_id}", token)
        reason = "disconnected"
        try:
            async for raw in ws:
                if proxy.me is None:
                    text = raw if isinstance(raw, str) else "\x00binary"  # owner refuses it
                    self.post(proxy.owner, f"in {self.node} {proxy.sid}", text)
                    continue
                assert proxy.room is not None and proxy.bucket is not None
                left = await self._server._on_message(
                    proxy.room, proxy.me, raw, bucket=proxy.bucket
                )
                if left is not None:
                    reason = left
                    break
        except ConnectionClosed:
            pass
        finally:
            del self._proxies[proxy.sid]
            if proxy.me is None:
                self.post(proxy.owner, f"gone {self.node} {proxy.sid}")
            else:
                assert proxy.room is not None
                self._server._depart(proxy.room, proxy.me, reason)

    def _to_holder(self, header: list[str], body: str) -> None:
        kind = header[0]
        if kind == "out":
            proxies = [p for sid in header[1].split(",") if (p := self._proxies.get(sid))]
            if not proxies:
                return
            told = body[_KIND_AT : body.find('"', _KIND_AT)]
            if told in ("welcome", "admitted", "join", "leave"):
                for proxy in proxies:
                    _track(proxy, told, json.loads(body))
            broadcast([p.ws for p in proxies], body)
        elif kind == "close":
            closing = self._proxies.get(header[1])
            if closing is not None:
                self._spawn(closing.ws.close(int(header[2]), body))

    def _take_over(self, dead: str) -> None:
        """The owner of some of my rooms died: claim them, serve my sockets here."""
        rooms: dict[int, list[_Proxy]] = {}
        for proxy in self._proxies.values():
            if proxy.owner == dead:
                proxy.owner = self.node  # once: the next heartbeat must not start it again
                rooms.setdefault(proxy.room_id, []).append(proxy)
        for room_id, mine in rooms.items():
            self._spawn(self._take_over_room(room_id, mine))

    async def _take_over_room(self, room_id: int, mine: list[_Proxy]) -> None:
        from signaling.server import _conns, _send

        assert self._server is not None
        server = self._server
        owner = await self.owner_of(room_id)
        if owner != self.node:  # another survivor won: its room, our sockets reconnect there
            for proxy in mine:
                self._spawn(proxy.ws.close(SERVICE_RESTART, "the room moved; join again"))
            return
        room = Room(room_id)
        for proxy in mine:
            if proxy.peer is None:  # the dead owner never seated it
                self._spawn(proxy.ws.close(SERVICE_RESTART, "join again"))
                continue
            me = Participant(proxy.peer, proxy.claims, proxy.ws, admitted=proxy.admitted)
            room.participants[me.peer] = me
            if me.admitted:
                room.admitted_users.add(proxy.claims.user_id)
            proxy.room, proxy.me, proxy.bucket = room, me, server._bucket()
        server.rooms[room_id] = room
        log.warning("took over consult room %s from a signalling process that died", room_id)
        gone: dict[str, int] = {}
        for proxy in mine:
            gone.update(proxy.others)
        for peer, user in gone.items():
            if peer not in room.participants:
                _send(_conns(room.inside()), MessageType.LEAVE, peer=peer, user=user,
                      reason="disconnected")  # fmt: skip
        server._lobby_changed(room)

    # --- owner side ---------------------------------------------------------------------------

    async def _to_owner(self, header: list[str], body: str) -> None:
        assert self._server is not None
        kind, node, sid = header[0], header[1], header[2]
        if kind == "in":
            seat = self._seats.get((node, sid))
            if seat is None:
                return
            left = await self._server._on_message(seat.room, seat.me, body, bucket=seat.bucket)
            if left is not None:
                del self._seats[(node, sid)]
                self._server._depart(seat.room, seat.me, left)
        elif kind == "open":
            await self._open(node, sid, int(header[3]), body)
        elif kind == "gone":
            seat = self._seats.pop((node, sid), None)
            if seat is not None:
                self._server._depart(seat.room, seat.me, "disconnected")

    async def _open(self, node: str, sid: str, room_id: int, token: str) -> None:
        assert self._server is not None
        server = self._server
        conn = RemoteConn(self, node, sid)
        # The holder checked the token; so does the owner: Redis is no authority on who joins.
        try:
            claims = verify_join_token(server.join_key, token, now=server.now())
        except JoinTokenError as exc:
            await conn.close(CloseCode.TOKEN_INVALID, str(exc))
            return
        if claims.consult_id != room_id:
            await conn.close(CloseCode.WRONG_ROOM, "the token is for another consult")
            return
        seated = await server._seat(conn, room_id, claims)
        if seated is not None:
            room, me = seated
            self._seats[(node, sid)] = _Seat(room, me, server._bucket())

    def _holder_died(self, dead: str) -> None:
        assert self._server is not None
        for key, seat in list(self._seats.items()):
            if key[0] == dead:
                del self._seats[key]
                self._server._depart(seat.room, seat.me, "disconnected")

    # --- in -----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._key("node", self.node))
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        backoff = 0.5
                    elif message["type"] == "message":
                        await self._deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning("lost the signalling backplane subscription (%s); reconnecting", exc)
                self.subscribed.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _deliver(self, data: bytes) -> None:
        head, _, body = data.decode().partition("\n")
        header = head.split(" ")
        try:
            if header[0] in ("out", "close"):
                self._to_holder(header, body)
            else:
                await self._to_owner(header, body)
        except Exception:  # one bad message must not end the subscription
            log.exception("signalling backplane message %r failed", header[0])

    async def _watch(self) -> None:
        """Keep this process marked alive; notice the processes it depends on dying."""
        alive = self._key("alive", "")
        while True:
            await asyncio.sleep(self.beat_seconds)
            try:
                await self._redis.set(alive + self.node, "1", px=int(self.alive_seconds * 1000))
                owners = {p.owner for p in self._proxies.values() if p.me is None}
                holders = {node for node, _ in self._seats}
                nodes = sorted((owners | holders) - {self.node})
                if not nodes:
                    continue
                found = await self._redis.mget([alive + n for n in nodes])
            except (redis.RedisError, OSError) as exc:
                log.warning("signalling backplane heartbeat failed: %s", exc)
                continue
            for node, value in zip(nodes, found, strict=True):
                if value is None:
                    log.warning("signalling process %s is gone", node)
                    self._holder_died(node)
                    self._take_over(node)

    def _spawn(self, coro: Any) -> None:
        assert self._server is not None
        self._server._spawn(coro)


def _track(proxy: _Proxy, kind: str, message: dict[str, Any]) -> None:
    """What the owner told my socket about the room: enough to rebuild it after a takeover."""
    if kind == "welcome":
        proxy.peer, proxy.admitted = message["peer"], message["admitted"]
        proxy.others = {p["peer"]: p["user"] for p in message.get("peers", [])}
    elif kind == "admitted":
        proxy.admitted = True
        proxy.others = {p["peer"]: p["user"] for p in message.get("peers", [])}
    elif kind == "join":
        proxy.others[message["peer"]["peer"]] = message["peer"]["user"]
    elif kind == "leave":
        proxy.others.pop(message["peer"], None)
