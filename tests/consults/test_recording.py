"""Recording with the consent of everyone in the room.

The rules on the real signalling server (raw protocol clients, a recorder token); then the
whole path: two aiortc peers in a room of the hub's own signalling server, ICE pinned to
loopback; the hub's recorder joins through the API once everyone consented, and what lands in
the real object store is a WebM that PyAV opens, of the right length, whose video decodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import av
import httpx
import pytest
from aiortc import AudioStreamTrack, RTCPeerConnection, VideoStreamTrack
from fastapi.testclient import TestClient
from sqlalchemy import select

from signaling.peer import ConsultPeer, ice_pinned_to_loopback
from signaling.protocol import CloseCode
from telehealth.app import create_app
from telehealth.auth.models import AuditEvent, AuditOutcome
from telehealth.clock import FakeClock
from telehealth.consults.models import ConsultRecording
from telehealth.consults.tokens import ConsultRole
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.cases import build_world
from tests.consults.test_api import Site
from tests.signaling import Client, run, running, token

# --- the rules, on the signalling server ------------------------------------------------------


def _recorder_token() -> str:
    return token(user=0, role=ConsultRole.RECORDER)


async def _room_of_two(server: Any) -> tuple[Client, Client]:
    host = await Client.join(server, token(user=1, role=ConsultRole.HOST))
    guest = await Client.join(server, token(user=2))
    await host.send("admit", peer=guest.peer)
    await guest.expect("admitted")
    return host, guest


async def _recorder_refused(server: Any) -> int | None:
    recorder = await Client.open(server)
    await recorder.send("join", token=_recorder_token())
    return await recorder.closed_with()


def test_the_recorder_is_let_in_only_while_everyone_inside_consents() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _room_of_two(server)
            assert await _recorder_refused(server) == CloseCode.CONSENT_MISSING
            await host.send("consent", granted=True)
            state = await guest.expect("recording", where=lambda m: m["consented"] == [1])
            assert state["on"] is False and state["missing"] == [2]
            assert await _recorder_refused(server) == CloseCode.CONSENT_MISSING
            await guest.send("consent", granted=True)
            await host.expect("recording", where=lambda m: m["consented"] == [1, 2])

            recorder = await Client.join(server, _recorder_token())
            shown = await guest.expect("recording", where=lambda m: m["on"])
            assert shown["recorder"] == recorder.peer and shown["missing"] == []
            joined = await host.expect("join")
            assert joined["peer"]["role"] == "recorder"
            assert await _recorder_refused(server) == CloseCode.ROOM_FULL  # one at a time

            # Someone let in without consent: the recorder is sent away at once, all see it.
            late = await Client.open(server)
            await late.send("join", token=token(user=3))
            welcome = await late.expect("welcome")
            assert welcome["recording"]["on"] is True  # told in the lobby, not yet recorded
            late.peer = welcome["peer"]
            await host.send("admit", peer=late.peer)
            assert await recorder.closed_with() == CloseCode.CONSENT_REVOKED
            off = await guest.expect("recording", where=lambda m: not m["on"])
            assert off["reason"] == "consent_revoked" and off["missing"] == [3]
            for client in (late, guest, host):
                await client.close()

    run(scenario())


def test_revoking_consent_or_an_empty_room_stops_the_recorder() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _room_of_two(server)
            for client in (host, guest):
                await client.send("consent", granted=True)
            await host.expect("recording", where=lambda m: m["consented"] == [1, 2])
            recorder = await Client.join(server, _recorder_token())
            await guest.send("consent", granted=False)
            assert await recorder.closed_with() == CloseCode.CONSENT_REVOKED
            off = await host.expect("recording", where=lambda m: not m["on"])
            assert off["reason"] == "consent_revoked" and off["missing"] == [2]

            # Consent is kept per user while the room lives: a dropped link does not lose it.
            await guest.send("consent", granted=True)
            await guest.close()
            again = await Client.join(server, token(user=2))
            assert (await again.expect("recording"))["consented"] == [1, 2]
            recorder = await Client.join(server, _recorder_token())
            await again.close()
            await host.close()
            assert await recorder.closed_with() == CloseCode.NOBODY_LEFT

    run(scenario())


def test_the_recorder_cannot_consent_for_anyone() -> None:
    async def scenario() -> None:
        async with running() as server:
            host, guest = await _room_of_two(server)
            for client in (host, guest):
                await client.send("consent", granted=True)
            recorder = await Client.join(server, _recorder_token())
            await recorder.send("consent", granted=True)
            error = await recorder.expect("error")
            assert error["refused"] == "consent"
            for client in (recorder, guest, host):
                await client.close()

    run(scenario())


# --- the whole path: API, recorder, object store ----------------------------------------------


@pytest.fixture
def site(hub_factory: Callable[..., Hub], clock: FakeClock) -> Iterator[Site]:
    hub = hub_factory(start=False, clock=clock, signaling_port=0)
    hub.start(dicom=False, background=False, signaling=True)
    with transaction(hub.factory) as session:
        world = build_world(session, clock)
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, world)


async def _api(site: Site, method: str, user: str, path: str) -> httpx.Response:
    # Off the peers' loop: a call blocks its thread while the recorder joins.
    return await asyncio.to_thread(site.call, method, user, path)


async def _poll_until(check: Callable[[], Any], within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.3)
    raise TimeoutError("condition not met in time")


class AudioVideoPeer(ConsultPeer):
    """Sends audio (silence) besides its video, so the recording gets Opus as well as VP8."""

    def _connection(self, remote: str) -> RTCPeerConnection:
        pc = super()._connection(remote)
        pc.addTrack(AudioStreamTrack())
        return pc


def _probe(data: bytes) -> tuple[float, int, list[str]]:
    """Duration in seconds, video frames decoded, codec names: read back with PyAV."""
    with av.open(io.BytesIO(data), mode="r", format="webm") as container:
        duration = (container.duration or 0) / av.time_base
        codecs = sorted(s.codec_context.name for s in container.streams)
        frames = len(list(container.decode(video=0)))
    return duration, frames, codecs


def test_a_consented_recording_is_a_playable_webm_and_revoking_consent_stops_it(
    site: Site,
) -> None:
    consult = site.consult()  # host img1; tech_a requested it; ecg1 invited
    cid = consult["id"]
    base = f"/api/consults/{cid}/recordings"
    tickets = {
        u: site.call("POST", u, f"/api/consults/{cid}/join").json() for u in ("img1", "tech_a")
    }
    ids = {u: site.world.users[u].id for u in ("img1", "tech_a")}
    results: dict[str, Any] = {}

    async def scenario() -> None:
        host = AudioVideoPeer(
            tickets["img1"]["signaling_url"],
            tickets["img1"]["token"],
            track_factory=VideoStreamTrack,
        )
        guest = AudioVideoPeer(
            tickets["tech_a"]["signaling_url"],
            tickets["tech_a"]["token"],
            track_factory=VideoStreamTrack,
        )
        try:
            await host.join()
            await guest.join()
            lobby = await host.expect("lobby", where=lambda m: bool(m["waiting"]))
            await host.send("admit", peer=lobby["waiting"][0]["peer"])
            await asyncio.wait_for(guest.first_frame.wait(), 20)

            assert (await _api(site, "POST", "img1", base)).status_code == 409  # nobody consented
            await host.send("consent", granted=True)
            await guest.expect("recording", where=lambda m: m["consented"] == [ids["img1"]])
            refused = await _api(site, "POST", "img1", base)
            assert refused.status_code == 409 and "consented" in refused.text
            await guest.send("consent", granted=True)
            await host.expect("recording", where=lambda m: not m["missing"])
            assert (await _api(site, "POST", "tech_a", base)).status_code == 403  # host only

            started = await _api(site, "POST", "img1", base)
            assert started.status_code == 201, started.text
            assert started.json()["status"] == "recording"
            assert sorted(started.json()["consented"]) == ["img1", "tech_a"]
            await guest.expect("recording", where=lambda m: m["on"])
            await asyncio.sleep(3)
            stopped = await _api(site, "POST", "tech_a", f"{base}/stop")  # any participant
            assert stopped.status_code == 200, stopped.text
            results["stopped"] = stopped.json()
            off = await host.expect("recording", where=lambda m: not m["on"])
            assert off["reason"] == "left"

            # Again, and the guest withdraws: the recorder leaves and stores what it has.
            again = await _api(site, "POST", "img1", base)
            assert again.status_code == 201, again.text
            await host.expect("recording", where=lambda m: m["on"])
            await asyncio.sleep(1.5)
            await guest.send("consent", granted=False)
            off = await host.expect("recording", where=lambda m: not m["on"])
            assert off["reason"] == "consent_revoked"

            def revoked() -> Any:
                rows = site.call("GET", "img1", base).json()
                return rows if rows[-1]["status"] == "stored" else None

            results["rows"] = await _poll_until(revoked, within=30)
            assert (await _api(site, "POST", "img1", f"{base}/stop")).status_code == 409
        finally:
            await guest.close()
            await host.close()

    with ice_pinned_to_loopback():
        run(scenario(), timeout=150)

    stopped = results["stopped"]
    assert stopped["status"] == "stored" and stopped["stop_reason"] == "stopped"
    first, second = results["rows"]
    assert first["id"] == stopped["id"] and first["sha256"] == stopped["sha256"]
    assert second["stop_reason"] == "consent_revoked" and second["sha256"]

    # The object in S3: its sha256 is the one filed, and it is a WebM of about 3 s.
    with transaction(site.hub.factory) as session:
        key = session.scalar(
            select(ConsultRecording.object_key).where(ConsultRecording.id == stopped["id"])
        )
    assert key is not None
    stored = site.hub.store.get_bytes(key)
    assert hashlib.sha256(stored).hexdigest() == stopped["sha256"]
    assert len(stored) == stopped["size_bytes"]
    duration, frames, codecs = _probe(stored)
    assert 2.0 <= duration <= 5.0, duration
    assert abs(duration - stopped["duration_seconds"]) < 0.5
    assert set(codecs) == {"opus", "vp8"}  # a stream per remote track
    assert frames >= 20  # VideoStreamTrack sends 30 frames a second

    # Downloads go to participants only, and are audited.
    path = f"{base}/{stopped['id']}/file"
    download = site.call("GET", "ecg1", path)
    assert download.status_code == 200 and download.headers["content-type"] == "video/webm"
    assert download.content == stored
    assert site.call("GET", "tech_b", path).status_code == 404  # another clinic
    assert site.call("GET", "tech_b", base).status_code == 404
    assert site.client.get(path).status_code == 401
    with transaction(site.hub.factory) as session:
        actions = {
            (e.action, e.outcome)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action.like("consult.recording.%"))
            )
        }
    assert ("consult.recording.start", AuditOutcome.DENIED) in actions
    assert ("consult.recording.start", AuditOutcome.SUCCESS) in actions
    assert ("consult.recording.read", AuditOutcome.SUCCESS) in actions
    assert ("consult.recording.read", AuditOutcome.DENIED) in actions
