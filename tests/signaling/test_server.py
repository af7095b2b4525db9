"""The signalling server against raw sockets: refusals, lobby, limits, presence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from signaling import CloseCode, Limits, SignalingServer
from telehealth.consults.tokens import ConsultRole, derive_join_key
from tests.signaling import Client, run, running, token

HOST = ConsultRole.HOST


async def _host_and_guest(server: SignalingServer) -> tuple[Client, Client]:
    """A host and an admitted guest in room 1."""
    host = await Client.join(server, token(user=1, role=HOST))
    guest = await Client.join(server, token(user=2))
    await host.send("admit", peer=guest.peer)
    await guest.expect("admitted")
    await host.expect("join")
    return host, guest


def _nobody_in(server: SignalingServer, room: int = 1) -> bool:
    found = server.rooms.get(room)
    return found is None or not found.participants


@pytest.mark.parametrize(
    ("make_join", "code"),
    # Made when the test runs, not when it is collected: a token made at collection could
    # expire before a long run reaches this test.
    [
        (lambda: {"type": "join"}, CloseCode.TOKEN_MISSING),
        (
            lambda: {"type": "join", "token": "eyJhbGciOiJIUzI1NiJ9.e30.bad"},
            CloseCode.TOKEN_INVALID,
        ),
        (
            lambda: {"type": "join", "token": token(key=derive_join_key("another hub"))},
            CloseCode.TOKEN_INVALID,
        ),
        (
            lambda: {
                "type": "join",
                "token": token(issued=datetime.now(UTC) - timedelta(minutes=3)),
            },
            CloseCode.TOKEN_EXPIRED,
        ),
        (lambda: {"type": "join", "token": token(consult=2)}, CloseCode.WRONG_ROOM),
        (lambda: {"type": "chat", "text": "hi"}, CloseCode.BAD_MESSAGE),
        (lambda: {"type": "join", "token": 12}, CloseCode.BAD_MESSAGE),
    ],
    ids=["missing", "garbage", "forged", "expired", "other-room", "not-join", "bad-type"],
)
def test_a_socket_without_a_good_token_is_closed_before_it_joins(
    make_join: Callable[[], dict[str, object]], code: CloseCode
) -> None:
    join = make_join()

    async def scenario() -> None:
        async with running() as server:
            host = await Client.join(server, token(user=1, role=HOST))
            intruder = await Client.open(server)
            await intruder.ws.send(json.dumps({"v": 1, **join}))
            assert await intruder.closed_with() == code
            with pytest.raises(TimeoutError):  # the host heard of nobody
                await host.expect("lobby", within=0.3)
            assert next(iter(server.rooms[1].participants.values())).peer == host.peer

    run(scenario())


def test_malformed_first_frame_bad_path_and_silence_are_refused() -> None:
    async def scenario() -> None:
        limits = Limits(join_timeout_seconds=0.3)
        async with running(limits) as server:
            bad_json = await Client.open(server)
            await bad_json.ws.send("{not json")
            assert await bad_json.closed_with() == CloseCode.BAD_MESSAGE
            wrong_path = await Client.open(server, path="/lobby")
            assert await wrong_path.closed_with() == CloseCode.BAD_PATH
            silent = await Client.open(server)
            assert await silent.closed_with() == CloseCode.JOIN_TIMEOUT
            assert _nobody_in(server)

    run(scenario())


def test_guests_wait_in_the_lobby_until_the_host_admits_them() -> None:
    async def scenario() -> None:
        async with running() as server:
            host = await Client.join(server, token(user=1, role=HOST))
            guest_ws = await Client.open(server)
            await guest_ws.send("join", token=token(user=2))
            welcome = await guest_ws.expect("welcome")
            assert welcome["admitted"] is False and welcome["peers"] == []
            guest_ws.peer = welcome["peer"]
            lobby = await host.expect("lobby")
            assert [p["user"] for p in lobby["waiting"]] == [2]
            await guest_ws.send("chat", text="may I come in?")
            refused = await guest_ws.expect("error")
            assert refused["reason"] == "waiting in the lobby"
            await guest_ws.send("admit", peer=guest_ws.peer)  # only the host admits
            await guest_ws.expect("error")
            await host.send("admit", peer=guest_ws.peer)
            admitted = await guest_ws.expect("admitted")
            assert [p["peer"] for p in admitted["peers"]] == [host.peer]
            joined = await host.expect("join")
            assert joined["peer"]["user"] == 2 and joined["peer"]["role"] == "guest"
            assert (await host.expect("lobby"))["waiting"] == []
            await guest_ws.send("chat", text="你好")
            chat = await host.expect("chat")
            assert chat["text"] == "你好" and chat["from"] == guest_ws.peer

    run(scenario())


def test_the_host_removes_a_guest_who_cannot_come_back() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _host_and_guest(server)
            await guest.send("remove", peer=host.peer)  # a guest cannot
            assert (await guest.expect("error"))["reason"] == "only the host may do this"
            await host.send("remove", peer=guest.peer)
            assert await guest.closed_with() == CloseCode.REMOVED
            left = await host.expect("leave")
            assert left["peer"] == guest.peer and left["reason"] == "removed"
            again = await Client.open(server)
            await again.send("join", token=token(user=2))
            assert await again.closed_with() == CloseCode.REMOVED

    run(scenario())


def test_offers_answers_candidates_and_viewer_state_are_relayed() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _host_and_guest(server)
            await guest.send("offer", to=host.peer, sdp="v=0 offer")
            offer = await host.expect("offer")
            assert offer == {"v": 1, "type": "offer", "from": guest.peer, "sdp": "v=0 offer"}
            candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
            await host.send("candidate", to=guest.peer, candidate=candidate)
            assert (await guest.expect("candidate"))["candidate"] == candidate
            await host.send("candidate", to=guest.peer, candidate=None)  # end of candidates
            assert (await guest.expect("candidate"))["candidate"] is None
            await guest.send("answer", to="nobody", sdp="x")
            assert (await guest.expect("error"))["reason"] == "no such peer"
            state = {"study": "1.2.3", "series": "1.2.3.4", "slice": 42, "window": [400, 40]}
            await host.send("viewer-sync", state=state)
            assert (await guest.expect("viewer-sync"))["state"] == state
            await guest.send("viewer-sync", state=state)
            await guest.expect("error")

    run(scenario())


def test_presence_changes_and_a_dropped_socket_are_seen_by_the_others() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _host_and_guest(server)
            await guest.send("presence", audio=False, screen=True)
            peer = (await host.expect("presence"))["peer"]
            assert (peer["audio"], peer["video"], peer["screen"]) == (False, True, True)
            guest.ws.transport.abort()  # the link dies: no closing handshake
            left = await host.expect("leave")
            assert left["peer"] == guest.peer and left["reason"] == "disconnected"

    run(scenario())


def test_the_same_user_joining_again_replaces_his_old_socket() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _host_and_guest(server)
            again = await Client.join(server, token(user=2))
            assert await guest.closed_with() == CloseCode.REPLACED
            left = await host.expect("leave")
            joined = await host.expect("join")
            assert left["peer"] == guest.peer and joined["peer"]["peer"] == again.peer
            # Admitted before, so no second trip through the lobby.
            await again.send("ping", id=1)
            assert (await again.expect("pong"))["id"] == 1

    run(scenario())


def test_oversized_malformed_and_flooding_senders_do_not_disturb_the_others() -> None:
    async def scenario() -> None:
        limits = Limits(max_message_bytes=8192, rate_per_second=20, rate_burst=40)
        async with running(limits) as server:
            host, guest = await _host_and_guest(server)
            # Malformed: answered with an error, the socket stays.
            for bad in ("[1,2]", '{"v":2,"type":"ping"}', '{"v":1,"type":"dance"}', "{"):
                await guest.ws.send(bad)
                await guest.expect("error")
            await guest.send("chat", text="x" * 5000)  # over the chat limit, under frame limit
            await guest.expect("error")
            await guest.send("ping", id="still here")
            assert (await guest.expect("pong"))["id"] == "still here"
            # Oversized frame: the sender is disconnected (RFC 6455 1009).
            await guest.send("chat", text="x" * 5000 * 2)
            assert await guest.closed_with() == CloseCode.TOO_BIG
            await host.expect("leave")
            # Flood: the sender is disconnected, the host keeps working.
            flooder = await Client.join(server, token(user=3))
            await host.send("admit", peer=flooder.peer)
            await flooder.expect("admitted")
            for i in range(500):
                try:
                    await flooder.send("ping", id=i)
                except Exception:
                    break
            assert await flooder.closed_with() == CloseCode.RATE_LIMITED
            left = await host.expect("leave", where=lambda m: m["peer"] == flooder.peer)
            assert left["reason"] == "rate_limited"
            await host.send("ping", id="ok")
            assert (await host.expect("pong"))["id"] == "ok"

    run(scenario())


def test_a_room_holds_a_host_and_three_guests() -> None:
    async def scenario() -> None:
        async with running(Limits(max_participants=4)) as server:
            guests = [await Client.join(server, token(user=u)) for u in (2, 3, 4)]
            fourth = await Client.open(server)
            await fourth.send("join", token=token(user=5))
            assert await fourth.closed_with() == CloseCode.ROOM_FULL
            # The host's seat stays free.
            host = await Client.join(server, token(user=1, role=HOST))
            assert len(server.rooms[1].participants) == 4
            for guest in guests:
                await guest.close()
            await host.close()

    run(scenario())


def test_heartbeat_pings_keep_a_quiet_socket_open() -> None:
    async def scenario() -> None:
        async with running(Limits(heartbeat_seconds=0.2)) as server:
            host = await Client.join(server, token(user=1, role=HOST))
            await asyncio.sleep(0.7)  # several server pings, answered by the client library
            await host.send("ping", id=2)
            assert (await host.expect("pong"))["id"] == 2

    run(scenario())
