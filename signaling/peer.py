"""An aiortc participant: joins a room through the signalling server and meets the others on
video, one RTCPeerConnection per remote peer (mesh). The test peer, and the base of the
recorder to come.

Modelled on aiortc's contrib/signaling.py and examples: aiortc gathers every candidate before
it answers `setLocalDescription`, so its SDP carries them all and it sends no `candidate`
messages; candidates trickled by browsers are added as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection, connect

from signaling.protocol import PROTOCOL_VERSION, MessageType

TrackFactory = Callable[[], MediaStreamTrack]


@contextlib.contextmanager
def ice_pinned_to_loopback() -> Iterator[None]:
    """aioice leaves 127.0.0.1 out of its host candidates; loopback tests need only it."""
    with mock.patch.object(aioice.ice, "get_host_addresses", lambda **_: ["127.0.0.1"]):
        yield


class ConsultPeer:
    """One participant. Messages other than WebRTC negotiation land in `inbox`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        track_factory: TrackFactory | None = None,
        ice_servers: list[RTCIceServer] | None = None,
        ice_policy: RTCIceTransportPolicy = RTCIceTransportPolicy.ALL,
    ) -> None:
        self.url = url
        self.token = token
        self.track_factory = track_factory
        self.configuration = RTCConfiguration(
            iceServers=ice_servers or [], iceTransportPolicy=ice_policy
        )
        self.peer: str | None = None
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames_received = 0
        self.first_frame = asyncio.Event()
        self.first_frame_at: float | None = None
        self._ws: ClientConnection | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def join(self) -> dict[str, Any]:
        """Open the socket and send `join`; returns `welcome`. Raises ConnectionClosed when
        the server refuses the token."""
        self._ws = await connect(self.url, compression=None)
        await self.send(MessageType.JOIN, token=self.token)
        welcome = json.loads(await self._ws.recv())
        if welcome.get("type") != MessageType.WELCOME:
            raise RuntimeError(f"expected welcome, got {welcome}")
        self.peer = welcome["peer"]
        self._spawn(self._read())
        if welcome["admitted"]:
            await self._call_everyone(welcome["peers"])
        return dict(welcome)

    async def send(self, kind: MessageType | str, **fields: Any) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps({"v": PROTOCOL_VERSION, "type": str(kind), **fields}))

    async def chat(self, text: str) -> None:
        await self.send(MessageType.CHAT, text=text)

    async def expect(
        self, kind: str, within: float = 10.0, where: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any]:
        """The next message of this kind (others before it are dropped). Raises TimeoutError."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} message within {within} s")
            message = await asyncio.wait_for(self.inbox.get(), remaining)
            if message.get("type") == kind and where(message):
                return message

    async def _read(self) -> None:
        assert self._ws is not None
        with contextlib.suppress(Exception):
            async for raw in self._ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == MessageType.OFFER:
                    await self._answer(message["from"], message["sdp"])
                elif kind == MessageType.ANSWER:
                    pc = self.pcs.get(message["from"])
                    if pc is not None:
                        await pc.setRemoteDescription(
                            RTCSessionDescription(sdp=message["sdp"], type="answer")
                        )
                elif kind == MessageType.CANDIDATE:
                    await self._add_candidate(message["from"], message.get("candidate"))
                else:
                    if kind == MessageType.ADMITTED:
                        self._spawn(self._call_everyone(message["peers"]))
                    elif kind == MessageType.LEAVE:
                        pc = self.pcs.pop(message["peer"], None)
                        if pc is not None:
                            await pc.close()
                    await self.inbox.put(message)
        await self.inbox.put({"type": "closed", "code": self.close_code})

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code if self._ws is not None else None

    # --- WebRTC -------------------------------------------------------------------------------

    def _connection(self, remote: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(self.configuration)
        self.pcs[remote] = pc
        if self.track_factory is not None:
            pc.addTrack(self.track_factory())

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._spawn(self._consume(track))

        return pc

    async def _call_everyone(self, peers: list[dict[str, Any]]) -> None:
        """Whoever enters offers to everyone already inside (protocol v1)."""
        for info in peers:
            pc = self._connection(info["peer"])
            await pc.setLocalDescription(await pc.createOffer())
            await self.send(MessageType.OFFER, to=info["peer"], sdp=pc.localDescription.sdp)

    async def _answer(self, remote: str, sdp: str) -> None:
        old = self.pcs.pop(remote, None)
        if old is not None:
            # No ICE restart in aiortc: a fresh offer replaces the connection.
            await old.close()
        pc = self._connection(remote)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send(MessageType.ANSWER, to=remote, sdp=pc.localDescription.sdp)

    async def _add_candidate(self, remote: str, init: dict[str, Any] | None) -> None:
        pc = self.pcs.get(remote)
        if pc is None:
            return
        if not init or not init.get("candidate"):
            await pc.addIceCandidate(None)  # end of candidates
            return
        candidate = candidate_from_sdp(str(init["candidate"]).removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        await pc.addIceCandidate(candidate)

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames_received += 1
                if not self.first_frame.is_set():
                    self.first_frame_at = time.monotonic()
                    self.first_frame.set()

    # --- ending -------------------------------------------------------------------------------

    def drop(self) -> None:
        """Kill the socket without a closing handshake, as a lost link would."""
        assert self._ws is not None
        self._ws.transport.abort()

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        for pc in list(self.pcs.values()):
            await pc.close()
        self.pcs.clear()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
