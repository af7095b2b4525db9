"""Signalling figures: relay latency with many rooms on one server process, and call setup
time (join token in hand → first remote video frame) between two aiortc peers on loopback.

    .venv/bin/python bench/signaling.py [--rooms 500] [--seconds 10] [--rate 2]

The server runs as `telehealth signaling` in a process of its own; the clients share this
one, so the client side's own scheduling delay is part of the figure (an upper bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `signaling` package; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from aiortc import VideoStreamTrack  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from signaling import SignalingServer  # noqa: E402
from signaling.peer import ConsultPeer, ice_pinned_to_loopback  # noqa: E402
from telehealth.consults.tokens import ConsultRole, derive_join_key, issue_join_token  # noqa: E402

SECRET = "bench-hub-secret-" + "b" * 32
KEY = derive_join_key(SECRET)


def _token(room: int, user: int, role: ConsultRole) -> str:
    value, _ = issue_join_token(
        KEY, user_id=user, consult_id=room, role=role, name=f"u{user}",
        now=datetime.now(UTC), ttl=timedelta(minutes=10),
    )  # fmt: skip
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _join(url: str, token: str) -> tuple[ClientConnection, dict[str, object]]:
    ws = await connect(url, compression=None, max_queue=None)
    await ws.send(json.dumps({"v": 1, "type": "join", "token": token}))
    return ws, json.loads(await ws.recv())


async def _room(
    base: str, room: int, seconds: float, rate: float, out: list[float], ready: asyncio.Barrier
) -> None:
    url = f"{base}/rooms/{room}"
    host, _ = await _join(url, _token(room, 1, ConsultRole.HOST))
    guest, welcome = await _join(url, _token(room, 2, ConsultRole.GUEST))
    await host.send(json.dumps({"v": 1, "type": "admit", "peer": welcome["peer"]}))

    async def receive() -> None:
        async for raw in host:
            message = json.loads(raw)
            if message["type"] == "chat" and message["text"].startswith("t="):
                out.append((time.perf_counter() - float(message["text"][2:])) * 1000)

    reader = asyncio.ensure_future(receive())
    while True:  # admitted?
        if json.loads(await guest.recv())["type"] == "admitted":
            break
    await ready.wait()  # every room in before anyone talks: joins are not what we measure
    await asyncio.sleep(room % 100 / 100 / rate)  # spread the rooms over the interval
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        text = f"t={time.perf_counter()}"
        await guest.send(json.dumps({"v": 1, "type": "chat", "text": text}))
        await asyncio.sleep(1 / rate)
    await asyncio.sleep(0.5)
    reader.cancel()
    await guest.close()
    await host.close()


def _start_server(port: int) -> subprocess.Popen[bytes]:
    # The burst is raised: the figure is relay latency, not how the limiter treats a bench.
    env = dict(
        os.environ,
        TELEHEALTH_SECRET_KEY=SECRET,
        TELEHEALTH_SIGNALING_RATE_BURST="1000",
        TELEHEALTH_LOG_LEVEL="WARNING",  # a log line per connection is not what we measure
    )
    return subprocess.Popen(
        [sys.executable, "-m", "telehealth.cli", "signaling", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )


async def relay(rooms: int, seconds: float, rate: float) -> list[float]:
    port = _free_port()
    server = _start_server(port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        samples: list[float] = []
        ready = asyncio.Barrier(rooms)
        base = f"ws://127.0.0.1:{port}"
        await asyncio.gather(
            *(_room(base, r + 1, seconds, rate, samples, ready) for r in range(rooms))
        )
        return samples
    finally:
        server.terminate()
        server.wait(timeout=10)


async def setup_time() -> float:
    """Join token in hand → first remote frame at the guest, host already in the room."""
    server = SignalingServer(KEY)
    await server.start()
    try:
        url = f"{server.url}/rooms/9"
        host = ConsultPeer(url, _token(9, 1, ConsultRole.HOST), track_factory=VideoStreamTrack)
        await host.join()
        started = time.monotonic()
        guest = ConsultPeer(url, _token(9, 2, ConsultRole.GUEST), track_factory=VideoStreamTrack)
        await guest.join()
        lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
        await host.send("admit", peer=lobby["waiting"][0]["peer"])
        await asyncio.wait_for(guest.first_frame.wait(), 20)
        assert guest.first_frame_at is not None
        elapsed = (guest.first_frame_at - started) * 1000
        await guest.close()
        await host.close()
        return elapsed
    finally:
        await server.stop()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=2, help="chat messages/s per room")
    parser.add_argument("--setups", type=int, default=3)
    args = parser.parse_args()
    samples = asyncio.run(relay(args.rooms, args.seconds, args.rate))
    p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
    print(
        f"relay: {args.rooms} rooms x 2 peers, {len(samples)} messages "
        f"({args.rooms * args.rate:.0f}/s offered): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    with ice_pinned_to_loopback():
        setups = [asyncio.run(setup_time()) for _ in range(args.setups)]
    setup = statistics.median(setups)
    print(
        f"setup: token -> first remote frame, {args.setups} calls: {[round(s) for s in setups]} ms"
    )
    print(f"relay_p50_ms={p50:.2f} relay_p99_ms={p99:.2f} setup_ms={setup:.0f}")


if __name__ == "__main__":
    main()
