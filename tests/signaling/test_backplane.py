"""Two real `telehealth signaling` processes sharing rooms through Redis (the backplane)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from signaling import CloseCode
from telehealth.consults.tokens import ConsultRole
from tests.conftest import free_port
from tests.signaling import Client, run, token

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "test-hub-secret-" + "x" * 32  # tests.signaling.KEY is derived from it
ROOT = Path(__file__).resolve().parents[2]
HOST = ConsultRole.HOST


@dataclass
class Process:
    url: str
    popen: subprocess.Popen[bytes]


@pytest.fixture
def channel() -> Iterator[str]:
    """A channel of its own per test; its keys are removed afterwards."""
    name = f"test-signaling-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def processes(channel: str, tmp_path: Path) -> Iterator[list[Process]]:
    started: list[Process] = []
    env = dict(
        os.environ,
        TELEHEALTH_SECRET_KEY=SECRET,
        TELEHEALTH_REDIS_URL=REDIS_URL,
        TELEHEALTH_REDIS_CHANNEL=channel,
        TELEHEALTH_DATA_DIR=str(tmp_path / "data"),
    )
    try:
        for _ in range(2):
            started.append(_spawn(env))
        for index, process in enumerate(started):
            for _attempt in range(3):  # a free port may be taken before the child binds it
                if _listening(process):
                    break
                process = started[index] = _spawn(env)
            else:
                pytest.fail("a signalling process did not start")
        yield started
    finally:
        for process in started:
            if process.popen.poll() is None:
                process.popen.terminate()
            process.popen.wait(timeout=20)


def _spawn(env: dict[str, str]) -> Process:
    port = free_port()
    popen = subprocess.Popen(
        [sys.executable, "-m", "telehealth.cli", "signaling", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return Process(f"ws://127.0.0.1:{port}", popen)


def _listening(process: Process) -> bool:
    """Waits until the process accepts connections; False when it ended first."""
    port = int(process.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 180  # the CLI imports the whole hub: slow on a busy machine
    while process.popen.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            assert time.monotonic() < deadline, "signalling process did not listen"
            time.sleep(0.1)
    return False


async def _join(process: Process, join_token: str, room: int = 1) -> Client:
    client = Client(await connect(f"{process.url}/rooms/{room}", compression=None))
    await client.send("join", token=join_token)
    client.peer = (await client.expect("welcome", within=10))["peer"]
    return client


async def _admitted_pair(one: Process, two: Process) -> tuple[Client, Client]:
    """The host on `one` (its process owns the room), a guest on `two`, admitted."""
    host = await _join(one, token(user=1, role=HOST))
    guest = await _join(two, token(user=2))
    lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
    assert [p["peer"] for p in lobby["waiting"]] == [guest.peer]
    await host.send("admit", peer=guest.peer)
    admitted = await guest.expect("admitted")
    assert [p["peer"] for p in admitted["peers"]] == [host.peer]
    joined = await host.expect("join")
    assert joined["peer"]["peer"] == guest.peer
    return host, guest


def test_participants_on_two_processes_meet_negotiate_and_chat(
    processes: list[Process],
) -> None:
    one, two = processes

    async def scenario() -> None:
        host, guest = await _admitted_pair(one, two)
        await guest.send("presence", video=False)
        presence = await host.expect("presence")
        assert (presence["peer"]["peer"], presence["peer"]["video"]) == (guest.peer, False)

        await host.send("offer", to=guest.peer, sdp="v=0 host-offer")
        offer = await guest.expect("offer")
        assert (offer["from"], offer["sdp"]) == (host.peer, "v=0 host-offer")
        await guest.send("answer", to=host.peer, sdp="v=0 guest-answer")
        assert (await host.expect("answer"))["sdp"] == "v=0 guest-answer"
        candidate = {"candidate": "candidate:1 1 UDP 1 127.0.0.1 9 typ host", "sdpMid": "0"}
        await guest.send("candidate", to=host.peer, candidate=candidate)
        assert (await host.expect("candidate"))["candidate"] == candidate
        await host.send("candidate", to=guest.peer, candidate=None)
        assert (await guest.expect("candidate"))["candidate"] is None

        await guest.send("chat", text="血压 120/80")
        for side in (host, guest):  # chat goes to everyone inside, the sender too
            heard = await side.expect("chat")
            assert (heard["from"], heard["text"]) == (guest.peer, "血压 120/80")
        await host.send("chat", text="noted")
        assert (await guest.expect("chat"))["text"] == "noted"
        await host.close()
        await guest.close()

    run(scenario())


def test_the_host_admits_and_removes_across_processes(processes: list[Process]) -> None:
    one, two = processes

    async def scenario() -> None:
        host, guest = await _admitted_pair(one, two)
        other = await _join(two, token(user=3))
        await host.expect("lobby", where=lambda m: other.peer in {p["peer"] for p in m["waiting"]})
        await other.send("chat", text="let me in")  # the lobby rule holds on the owner
        assert (await other.expect("error"))["refused"] == "chat"
        await host.send("admit", peer=other.peer)
        await other.expect("admitted")
        assert (await guest.expect("join"))["peer"]["peer"] == other.peer

        await host.send("remove", peer=other.peer)
        assert await other.closed_with(within=10) == CloseCode.REMOVED
        left = await guest.expect("leave")
        assert (left["peer"], left["reason"]) == (other.peer, "removed")
        # Removed on the room's owner: coming back through the first process is refused too.
        again = Client(await connect(f"{one.url}/rooms/1", compression=None))
        await again.send("join", token=token(user=3))
        assert await again.closed_with(within=10) == CloseCode.REMOVED
        await host.close()
        await guest.close()

    run(scenario())


@pytest.mark.parametrize("killed", ["holder", "owner"])
def test_a_killed_process_disconnects_its_clients_and_the_others_see_them_leave(
    processes: list[Process], killed: str
) -> None:
    one, two = processes  # the host joins first, on `one`: that process owns the room

    async def scenario() -> None:
        host, guest = await _admitted_pair(one, two)
        victim, survivor = (guest, host) if killed == "holder" else (host, guest)
        process = two if killed == "holder" else one
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(timeout=10)

        with pytest.raises(ConnectionClosed):  # its socket dies with the process
            await victim.expect("never", within=10)
        left = await survivor.expect("leave", within=30)
        assert (left["peer"], left["reason"]) == (victim.peer, "disconnected")
        # The room goes on in the surviving process: the lost user comes back there, let in
        # without the lobby (he was admitted before), and meets the one who stayed.
        back_token = token(user=1, role=HOST) if victim is host else token(user=2)
        back_to = one if killed == "holder" else two
        back = Client(await connect(f"{back_to.url}/rooms/1", compression=None))
        await back.send("join", token=back_token)
        welcome = await back.expect("welcome", within=10)
        assert welcome["admitted"] is True
        assert [p["peer"] for p in welcome["peers"]] == [survivor.peer]
        assert (await survivor.expect("join"))["peer"]["peer"] == welcome["peer"]
        await back.send("chat", text="back")
        assert (await survivor.expect("chat"))["text"] == "back"
        await back.close()
        await survivor.close()

    run(scenario(), timeout=120)
