"""Relay-only through a real coturn with the hub's ephemeral credentials (TURN REST API
shared-secret scheme): video flows over relay candidates; a credential signed with another
secret gets no allocation, so the peers never connect.

coturn comes from Debian (`apt-get install coturn`, scripts/bootstrap.sh). It is skipped with
the reason when turnserver is missing or cannot bind; in CI (CI set) that fails instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiortc import RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection, VideoStreamTrack

from signaling.peer import ConsultPeer, ice_pinned_to_loopback
from telehealth.consults.service import ConsultConfig, ice_servers
from telehealth.consults.tokens import ConsultRole
from tests.browser import require
from tests.signaling import KEY, run, running, token

TURNSERVER = Path("/usr/bin/turnserver")
SECRET = "coturn-static-auth-secret-" + os.urandom(8).hex()


@dataclass(frozen=True)
class Turn:
    url: str
    log: Path


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int) -> bool:
    """A STUN Binding request (RFC 5389 §6) answered: the server listens."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(request, ("127.0.0.1", port))
            reply, _ = s.recvfrom(2048)
        except OSError:
            return False
    return reply[:2] == b"\x01\x01" and reply[8:20] == request[8:20]


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    require(TURNSERVER.exists(), f"no {TURNSERVER}: apt-get install coturn (bootstrap.sh does)")
    port = _udp_port()
    relay_low = random.randrange(50000, 59000, 100)
    log = tmp_path / "turn.log"
    process = subprocess.Popen(
        [
            str(TURNSERVER),
            "-n",  # no config file: everything is here
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            f"--min-port={relay_low}",
            f"--max-port={relay_low + 99}",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=telehealth.test",
            "--allow-loopback-peers",  # both peers' relays are on 127.0.0.1
            "--no-tcp",  # UDP only: the port was picked free for UDP, not TCP
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-rfc5780",
            f"--db={tmp_path / 'turndb'}",
            f"--pidfile={tmp_path / 'turn.pid'}",
            f"--log-file={log}",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if _answers_stun(port):
                break
        else:
            tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
            require(False, f"turnserver did not listen on 127.0.0.1:{port}: {tail}")
        yield Turn(f"turn:127.0.0.1:{port}?transport=udp", log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _relay_servers(turn: Turn, user: int, secret: str) -> list[RTCIceServer]:
    """What the hub hands out with a join ticket, as aiortc takes it."""
    config = ConsultConfig(join_key=KEY, turn_urls=(turn.url,), turn_secret=secret)
    return [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in ice_servers(config, str(user), now=datetime.now(UTC))
    ]


def _local_candidate_type(pc: RTCPeerConnection) -> str | None:
    """The type of the local candidate ICE nominated (aiortc keeps it inside aioice)."""
    transport = pc.getTransceivers()[0].receiver.transport.transport
    nominated = transport.iceGatherer._connection._nominated  # no public getStats field
    pair = nominated.get(1)
    return pair.local_candidate.type if pair is not None else None


def _pair(url: str, turn: Turn, secret: str) -> tuple[ConsultPeer, ConsultPeer]:
    relay = RTCIceTransportPolicy.RELAY
    host = ConsultPeer(
        url,
        token(user=1, role=ConsultRole.HOST),
        track_factory=VideoStreamTrack,
        ice_servers=_relay_servers(turn, 1, secret),
        ice_policy=relay,
    )
    guest = ConsultPeer(
        url,
        token(user=2),
        track_factory=VideoStreamTrack,
        ice_servers=_relay_servers(turn, 2, secret),
        ice_policy=relay,
    )
    return host, guest


async def _meet(host: ConsultPeer, guest: ConsultPeer) -> None:
    await host.join()
    await guest.join()
    lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
    await host.send("admit", peer=lobby["waiting"][0]["peer"])


def test_relay_only_peers_exchange_video_through_coturn_with_hub_credentials(
    turn: Turn,
) -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = _pair(f"{server.url}/rooms/1", turn, SECRET)
            try:
                await _meet(host, guest)
                await asyncio.wait_for(host.first_frame.wait(), 20)
                await asyncio.wait_for(guest.first_frame.wait(), 20)
                for peer in (host, guest):
                    (pc,) = peer.pcs.values()
                    assert _local_candidate_type(pc) == "relay"
            finally:
                await guest.close()
                await host.close()

    with ice_pinned_to_loopback():
        run(scenario(), timeout=60)


def test_a_credential_signed_with_another_secret_does_not_connect(turn: Turn) -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = _pair(f"{server.url}/rooms/1", turn, "not-the-coturn-secret")
            try:
                await _meet(host, guest)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(guest.first_frame.wait(), 8)
                assert host.frames_received == 0 and guest.frames_received == 0
                for peer in (host, guest):
                    for pc in peer.pcs.values():
                        assert pc.connectionState != "connected"
            finally:
                await guest.close()
                await host.close()

    with ice_pinned_to_loopback():
        run(scenario(), timeout=60)
