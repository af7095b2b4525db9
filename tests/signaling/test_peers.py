"""Two real aiortc peers meet through the real signalling server, ICE pinned to loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiortc import VideoStreamTrack

from signaling.peer import ConsultPeer, ice_pinned_to_loopback
from telehealth.consults.tokens import ConsultRole
from tests.signaling import run, running, token


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    with ice_pinned_to_loopback():
        yield


async def _frames(peer: ConsultPeer, within: float = 15) -> None:
    await asyncio.wait_for(peer.first_frame.wait(), within)


def test_two_aiortc_peers_exchange_video_and_chat_through_the_server() -> None:
    async def scenario() -> None:
        async with running() as server:
            url = f"{server.url}/rooms/1"
            host = ConsultPeer(
                url, token(user=1, role=ConsultRole.HOST), track_factory=VideoStreamTrack
            )
            guest = ConsultPeer(url, token(user=2), track_factory=VideoStreamTrack)
            try:
                await host.join()
                welcome = await guest.join()
                assert welcome["admitted"] is False
                lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
                await host.send("admit", peer=lobby["waiting"][0]["peer"])
                await _frames(host)
                await _frames(guest)
                await guest.chat("请看第 42 层")
                chat = await host.expect("chat")
                assert chat["text"] == "请看第 42 层" and chat["from"] == guest.peer
                assert host.frames_received >= 1 and guest.frames_received >= 1
            finally:
                await guest.close()
                await host.close()

    run(scenario())


def test_a_peer_whose_socket_dies_rejoins_and_media_resumes() -> None:
    async def scenario() -> None:
        async with running() as server:
            url = f"{server.url}/rooms/1"
            host = ConsultPeer(
                url, token(user=1, role=ConsultRole.HOST), track_factory=VideoStreamTrack
            )
            guest = ConsultPeer(url, token(user=2), track_factory=VideoStreamTrack)
            again: ConsultPeer | None = None
            try:
                await host.join()
                await guest.join()
                lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
                await host.send("admit", peer=lobby["waiting"][0]["peer"])
                await _frames(host)
                old_peer = guest.peer
                guest.drop()  # the link dies without a closing handshake
                left = await host.expect("leave")
                assert left["peer"] == old_peer and left["reason"] == "disconnected"
                await guest.close()
                # The same user comes back: admitted before, so straight in; he offers anew
                # (aiortc has no ICE restart) and the host answers on a fresh connection.
                host.first_frame.clear()
                again = ConsultPeer(url, token(user=2), track_factory=VideoStreamTrack)
                welcome = await again.join()
                assert welcome["admitted"] is True
                joined = await host.expect("join")
                assert joined["peer"]["peer"] == again.peer and joined["peer"]["user"] == 2
                await _frames(host)
                await _frames(again)
            finally:
                if again is not None:
                    await again.close()
                await guest.close()
                await host.close()

    run(scenario(), timeout=90)
