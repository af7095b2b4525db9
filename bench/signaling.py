"""Signalling figures: relay latency with many rooms on one server process, and call setup
time (join token in hand → first remote video frame) between two aiortc peers on loopback.

    .venv/bin/python bench/signaling.py [--rooms 500] [--seconds 10] [--rate 2] [--clients 2]

The server runs as `telehealth signaling` in a process of its own; the 1000 client sockets
are spread over `--clients` processes (one asyncio loop parsing every frame of 1000 sockets
was itself the bottleneck). The clients' own scheduling delay is still part of the figure (an
upper bound): on a loaded 2-core machine, read it beside `uptime`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    """A host and an admitted guest; the guest sends `rate` ICE candidates a second to the
    host (the point-to-point relay that call setup waits on), each stamped with its send time.
    """
    url = f"{base}/rooms/{room}"
    host, host_welcome = await _join(url, _token(room, 1, ConsultRole.HOST))
    guest, welcome = await _join(url, _token(room, 2, ConsultRole.GUEST))
    await host.send(json.dumps({"v": 1, "type": "admit", "peer": welcome["peer"]}))
    received = 0
    sent = 0
    all_in = asyncio.Event()

    async def receive() -> None:
        nonlocal received
        async for raw in host:
            message = json.loads(raw)
            if message["type"] == "candidate":
                sent_at = float(message["candidate"]["candidate"])
                out.append((time.perf_counter() - sent_at) * 1000)
                received += 1
                if received == sent:
                    all_in.set()

    reader = asyncio.ensure_future(receive())
    while True:  # admitted?
        if json.loads(await guest.recv())["type"] == "admitted":
            break
    await ready.wait()  # every room in before anyone talks: joins are not what we measure
    await ready.wait()  # and every client process (see _clients)
    await asyncio.sleep(room % 100 / 100 / rate)  # spread the rooms over the interval
    end = time.monotonic() + seconds
    to = host_welcome["peer"]
    while time.monotonic() < end:
        candidate = {"candidate": repr(time.perf_counter()), "sdpMid": "0"}
        message = {"v": 1, "type": "candidate", "to": to, "candidate": candidate}
        await guest.send(json.dumps(message))
        sent += 1
        await asyncio.sleep(1 / rate)
    if received < sent:  # every message counts, the slow ones most
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 10)
    reader.cancel()
    await guest.close()
    await host.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


async def _clients(
    base: str, rooms: list[int], seconds: float, rate: float, ready: Any, go: Any
) -> list[float]:
    """One client process: its rooms join, then all talk once every process is ready."""
    samples: list[float] = []
    barrier = asyncio.Barrier(len(rooms) + 1)
    talks = [asyncio.ensure_future(_room(base, r, seconds, rate, samples, barrier)) for r in rooms]
    await barrier.wait()  # all my rooms joined
    ready.put(len(rooms))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    await barrier.wait()  # release them together
    await asyncio.gather(*talks)
    return samples


def _client_process(
    base: str, rooms: list[int], seconds: float, rate: float, ready: Any, go: Any, out: Any
) -> None:
    out.put(asyncio.run(_clients(base, rooms, seconds, rate, ready, go)))


def relay(rooms: int, seconds: float, rate: float, clients: int) -> list[float]:
    port = _free_port()
    server = _start_server(port)
    try:
        deadline = time.monotonic() + 120  # importing the hub takes long on a loaded machine
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        # fork: the children inherit the imports; nothing runs an event loop yet.
        context = multiprocessing.get_context("fork")
        ready, go, out = context.Queue(), context.Event(), context.Queue()
        base = f"ws://127.0.0.1:{port}"
        workers = [
            context.Process(
                target=_client_process,
                args=(base, list(range(1 + i, rooms + 1, clients)), seconds, rate, ready, go, out),
            )
            for i in range(clients)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=300)
        cpu_before = _cpu_seconds(server.pid)
        go.set()
        print(f"relay: {rooms} rooms in, talking for {seconds:.0f} s", file=sys.stderr, flush=True)
        time.sleep(seconds)
        cpu = _cpu_seconds(server.pid) - cpu_before
        samples: list[float] = []
        for _ in workers:
            samples.extend(out.get(timeout=seconds + 120))
        # CPU per relayed message: what the server costs, whatever else loads the machine.
        print(f"server CPU while talking: {cpu:.2f} s, {cpu / max(1, len(samples)) * 1e6:.0f} "
              f"us per message")  # fmt: skip
        for worker in workers:
            worker.join(timeout=30)
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
    parser.add_argument("--rate", type=float, default=2, help="messages/s per room")
    parser.add_argument("--setups", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    args = parser.parse_args()
    samples = relay(args.rooms, args.seconds, args.rate, args.clients)
    p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
    print(
        f"relay: {args.rooms} rooms x 2 peers, {len(samples)} messages "
        f"({args.rooms * args.rate:.0f}/s offered, {args.clients} client processes): "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
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
