"""The recorder: an aiortc peer run by the hub that joins a consult room, receives everyone's
audio and video, and writes them to WebM (VP8/Opus) with PyAV; when it stops, the file goes
to the object store with its sha256 and the recording's row is completed.

The signalling server decides whether the recorder may be in the room at all (everyone inside
consented) and closes it the moment that stops being true; the recorder only records while
its socket is open. Recorders run on one event loop in a thread of the hub (RecorderPool),
started on first use.

Limits: one WebM stream per remote track (a player shows the first video; all are kept),
and only the tracks present when recording starts: a WebM's streams are fixed once its
header is written, so someone admitted later is not in the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from aiortc import RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from signaling.peer import ConsultPeer
from signaling.protocol import CloseCode, MessageType
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.consults.models import ConsultRecording, RecordingStatus
from telehealth.db import transaction
from telehealth.errors import Conflict, Overloaded
from telehealth.storage import ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)
AUDIO_RATE = 48000
_VP8_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "threads": "1"}
_STOP_REASONS: dict[int | None, str] = {  # by the code the server closed the recorder with
    CloseCode.CONSENT_REVOKED: "consent_revoked",
    CloseCode.NOBODY_LEFT: "nobody_left",
    CloseCode.REMOVED: "removed_by_host",
}


class RecordingRefused(Conflict):
    """The signalling server did not let the recorder in: not everyone inside consented, nobody
    is inside, or a recording already runs."""


class RecorderUnavailable(Overloaded):
    """The recorder could not reach the signalling server."""


class NotRecording(Conflict):
    """No recording runs in this consult (on this hub)."""


class NoMedia(Exception):
    """No track delivered a frame: nothing to write."""


# --- WebM -------------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One remote track → one WebM stream, with timestamps rebased to the recording's start."""

    track: MediaStreamTrack
    stream: Any
    offset: float  # seconds from the recording's start to this track's first frame
    first_pts: int
    time_base: Fraction
    unwrapped: int = 0  # ticks since the first frame, RTP wraparound undone
    last_raw: int = 0
    last_out: int = -1
    samples: int = 0  # audio: samples written
    frames: int = 0

    def _ticks(self, frame: VideoFrame) -> int:
        """Ticks since the first frame; RTP timestamps are 32 bits and wrap."""
        step = (int(frame.pts or 0) - self.last_raw) % (1 << 32)
        if not self.frames:
            return 0
        return self.unwrapped + (step - (1 << 32) if step >= 1 << 31 else step)

    def seconds_of(self, frame: AudioFrame | VideoFrame) -> float:
        """Where this frame falls in the recording, in seconds from its start."""
        if isinstance(frame, VideoFrame):
            return self.offset + float(self._ticks(frame) * self.time_base)
        return self.offset + self.samples / AUDIO_RATE

    def video_pts(self, frame: VideoFrame) -> int:
        self.unwrapped = self._ticks(frame)
        self.last_raw = int(frame.pts or 0)
        seconds = self.offset + float(self.unwrapped * self.time_base)
        pts = max(round(seconds / VIDEO_TIME_BASE), self.last_out + 1)  # strictly increasing
        self.last_out = pts
        return pts

    @property
    def end_seconds(self) -> float:
        if self.stream.type == "audio":
            return self.offset + self.samples / AUDIO_RATE
        return float(max(self.last_out, 0) * VIDEO_TIME_BASE)


class WebmWriter:
    """Remote tracks to one WebM file: VP8 video, Opus audio (what browsers play)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._container: Any = None
        self._lanes: list[_Lane] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = 0.0  # monotonic: the recording's second 0
        self._cutoff: float | None = None  # set by stop(): seconds of media still wanted

    async def start(self, tracks: list[MediaStreamTrack], *, first_frame_within: float) -> None:
        """Wait for each track's first frame (to size its stream), then record. Raises NoMedia."""
        firsts = await asyncio.gather(*(_first_frame(t, first_frame_within) for t in tracks))
        live = [(t, f, at) for t, (f, at) in zip(tracks, firsts, strict=True) if f is not None]
        if not live:
            raise NoMedia("no track delivered a frame")
        self._container = av.open(str(self.path), mode="w", format="webm")
        start = self._started_at = min(at for _, _, at in live)
        for track, frame, at in live:
            lane = self._lane(track, frame, at - start)
            self._lanes.append(lane)
            self._tasks.append(asyncio.ensure_future(self._pump(lane, frame)))

    def _lane(
        self, track: MediaStreamTrack, frame: AudioFrame | VideoFrame, offset: float
    ) -> _Lane:
        if isinstance(frame, VideoFrame):
            # On the recorder's loop encoding must keep up with the call: realtime, no
            # look-ahead, one thread (libvpx's threads cost ten times more on a busy machine).
            stream = self._container.add_stream("libvpx", rate=30, options=_VP8_OPTIONS)
            stream.width, stream.height = frame.width // 2 * 2, frame.height // 2 * 2
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 1_000_000
            stream.codec_context.time_base = VIDEO_TIME_BASE
        else:
            stream = self._container.add_stream("libopus", rate=AUDIO_RATE)
        time_base = frame.time_base or (
            VIDEO_TIME_BASE if isinstance(frame, VideoFrame) else Fraction(1, AUDIO_RATE)
        )
        return _Lane(track, stream, offset, int(frame.pts or 0), time_base)

    async def _pump(self, lane: _Lane, first: AudioFrame | VideoFrame) -> None:
        frame: Any = first
        try:
            while True:
                if self._cutoff is not None and lane.seconds_of(frame) >= self._cutoff:
                    return
                self._write(lane, frame)
                if self._cutoff is None:
                    frame = await lane.track.recv()
                else:  # draining: what was sent before the stop, if it still comes
                    frame = await asyncio.wait_for(lane.track.recv(), 0.5)
        except (MediaStreamError, TimeoutError):
            return  # the remote track ended (its peer left), or the backlog is written
        except Exception:
            log.exception("recording: a %s track stopped being written", lane.stream.type)

    def _write(self, lane: _Lane, frame: AudioFrame | VideoFrame) -> None:
        stream = lane.stream
        if isinstance(frame, VideoFrame):
            pts = lane.video_pts(frame)
            if (frame.width, frame.height, frame.format.name) != (
                stream.width,
                stream.height,
                "yuv420p",
            ):  # browsers change resolution with bandwidth; the stream's size is fixed
                frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        else:
            # Contiguous sample counts (PyAV's audio FIFO wants them): a lost packet shortens
            # the audio by 20 ms rather than stopping the lane.
            frame.pts = round(lane.offset * AUDIO_RATE) + lane.samples
            frame.time_base = Fraction(1, AUDIO_RATE)
            lane.samples += frame.samples
        lane.frames += 1
        for packet in stream.encode(frame):
            self._container.mux(packet)

    async def stop(self, *, drain_within: float = 10.0) -> float:
        """Write what was sent until now, flush and close the file; its duration in seconds.

        On a busy machine decoding and encoding fall behind the call: the frames queued
        before the stop are still written (up to `drain_within` seconds of work), so the
        file is as long as the recording was.
        """
        self._cutoff = time.monotonic() - self._started_at
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_within)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._container is None:
            return 0.0
        for lane in self._lanes:
            with contextlib.suppress(Exception):  # a lane that failed may not flush
                for packet in lane.stream.encode(None):
                    self._container.mux(packet)
        self._container.close()
        self._container = None
        return max(lane.end_seconds for lane in self._lanes)


async def _first_frame(
    track: MediaStreamTrack, within: float
) -> tuple[AudioFrame | VideoFrame | None, float]:
    try:
        frame = await asyncio.wait_for(track.recv(), within)
    except (TimeoutError, MediaStreamError):
        return None, 0.0
    if not isinstance(frame, AudioFrame | VideoFrame):  # remote tracks give decoded frames
        return None, 0.0
    return frame, time.monotonic()


# --- the peer ---------------------------------------------------------------------------------


class RecorderPeer(ConsultPeer):
    """Receive-only: offers every participant recvonly audio and video, and sends nothing."""

    def __init__(self, url: str, token: str, ice_servers: list[RTCIceServer]) -> None:
        super().__init__(url, token, ice_servers=ice_servers)
        self.tracks: list[MediaStreamTrack] = []
        self.accepting_tracks = True

    def _connection(self, remote: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(self.configuration)
        self.pcs[remote] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if self.accepting_tracks:
                self.tracks.append(track)
            else:
                log.info("recording: a %s track arrived after the start; not recorded", track.kind)

        return pc

    async def _call_everyone(self, peers: list[dict[str, Any]]) -> None:
        for info in peers:
            pc = self._connection(info["peer"])
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            await self.send(MessageType.OFFER, to=info["peer"], sdp=pc.localDescription.sdp)

    async def close(self) -> None:
        # Say goodbye, so the room hears "left" (a stop) rather than "disconnected" (a fault).
        with contextlib.suppress(Exception):
            await self.send(MessageType.LEAVE)
        await super().close()

    async def negotiated(self, within: float) -> None:
        """Every connection has its answer (so its tracks are known), or time is up."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(pc.remoteDescription is not None for pc in self.pcs.values()):
                return
            await asyncio.sleep(0.05)


# --- jobs and the pool ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingStarted:
    consult_id: int
    object_key: str
    consented_user_ids: list[int]


@dataclass(frozen=True)
class RecordingResult:
    status: RecordingStatus
    stop_reason: str
    sha256: str | None = None
    size_bytes: int | None = None
    duration_seconds: float | None = None
    ended_at: datetime | None = None


@dataclass
class _Job:
    consult_id: int
    object_key: str
    path: Path
    accepted: concurrent.futures.Future[RecordingStarted] = field(
        default_factory=concurrent.futures.Future
    )
    result: concurrent.futures.Future[RecordingResult] = field(
        default_factory=concurrent.futures.Future
    )
    recording_id: int | None = None
    attached: threading.Event = field(default_factory=threading.Event)
    stop_requested: asyncio.Event | None = None
    stopped_by_caller: bool = False
    abandoned: bool = False  # the start timed out: the file is deleted, not stored


class RecorderPool:
    """Recorders of this hub, one per consult at most, on an event loop of their own."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        store: ObjectStore,
        work_dir: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_seconds: float = 4 * 3600,
        first_media_seconds: float = 10.0,
    ) -> None:
        self.factory = factory
        self.store = store
        self.work_dir = work_dir
        self.clock = clock
        self.max_seconds = max_seconds
        self.first_media_seconds = first_media_seconds
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="consult-recorders", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def start(
        self,
        consult_id: int,
        url: str,
        token: str,
        ice_servers: list[RTCIceServer],
        *,
        within: float = 40.0,
    ) -> RecordingStarted:
        """Send a recorder into the room; returns once it writes media (the signalling server
        let it in, ICE and DTLS are up, a first frame of every track came).

        Raises RecordingRefused, RecorderUnavailable.
        """
        with self._lock:
            if consult_id in self._jobs:
                raise RecordingRefused("a recording already runs in this consult")
            key = f"consults/{consult_id}/recordings/{uuid.uuid4().hex}.webm"
            self.work_dir.mkdir(parents=True, exist_ok=True)
            job = _Job(consult_id, key, self.work_dir / key.replace("/", "_"))
            self._jobs[consult_id] = job
        loop = self._ensure_loop()
        asyncio.run_coroutine_threadsafe(self._run(job, url, token, ice_servers), loop)
        try:
            return job.accepted.result(within)
        except concurrent.futures.TimeoutError as exc:
            # Nobody will file this recording: call it off, and keep nothing of it.
            job.abandoned = job.stopped_by_caller = True
            if job.stop_requested is not None:
                loop.call_soon_threadsafe(job.stop_requested.set)
            raise RecorderUnavailable("the recorder did not start in time") from exc

    def attach(self, consult_id: int, recording_id: int) -> None:
        """The caller's row for the running recording; the recorder completes it at the end."""
        job = self._jobs.get(consult_id)
        if job is not None:
            job.recording_id = recording_id
            job.attached.set()

    def stop(self, consult_id: int, *, within: float = 120.0) -> RecordingResult:
        """Stop and store; the caller writes the result into its row. Raises NotRecording."""
        job = self._jobs.get(consult_id)
        if job is None or job.stop_requested is None or self._loop is None:
            raise NotRecording("no recording runs in this consult")
        job.stopped_by_caller = True
        self._loop.call_soon_threadsafe(job.stop_requested.set)
        return job.result.result(within)

    def close(self) -> None:
        """Stop every recording (each is stored) and the loop."""
        for consult_id in list(self._jobs):
            with contextlib.suppress(Exception):
                self.stop(consult_id, within=60)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop = None

    # --- on the loop --------------------------------------------------------------------------

    async def _run(self, job: _Job, url: str, token: str, ice: list[RTCIceServer]) -> None:
        peer = RecorderPeer(url, token, ice)
        job.stop_requested = asyncio.Event()
        try:
            try:
                welcome = await peer.join()
            except ConnectionClosed as exc:
                reason = exc.rcvd.reason if exc.rcvd else "closed"
                job.accepted.set_exception(RecordingRefused(f"recording refused: {reason}"))
                return
            except (OSError, InvalidHandshake, RuntimeError) as exc:
                job.accepted.set_exception(RecorderUnavailable(f"signalling: {exc}"))
                return
            consented = list(welcome["recording"]["consented"])
            result = await self._record(job, peer, consented)
        except Exception as exc:
            log.exception("recording of consult %s failed", job.consult_id)
            if not job.accepted.done():
                job.accepted.set_exception(RecorderUnavailable(str(exc)))
            result = RecordingResult(RecordingStatus.FAILED, "failed", ended_at=self.clock.now())
        finally:
            await peer.close()
            with self._lock:
                self._jobs.pop(job.consult_id, None)
        if result is not None and job.accepted.exception() is None:
            job.result.set_result(result)
            if not job.stopped_by_caller:  # the caller writes its own row
                await asyncio.to_thread(self._complete_row, job, result)

    async def _record(
        self, job: _Job, peer: RecorderPeer, consented: list[int]
    ) -> RecordingResult | None:
        """Record until stopped; None when no media came at all (the start then fails)."""
        assert job.stop_requested is not None
        await peer.negotiated(within=self.first_media_seconds)
        peer.accepting_tracks = False
        writer = WebmWriter(job.path)
        closed = asyncio.ensure_future(peer.expect("closed", within=self.max_seconds + 60))
        stop = asyncio.ensure_future(job.stop_requested.wait())
        try:
            try:
                await writer.start(peer.tracks, first_frame_within=self.first_media_seconds)
            except NoMedia:
                job.accepted.set_exception(RecorderUnavailable("no media came from the room"))
                return None
            # The caller hears only now: what it times from here is in the file.
            job.accepted.set_result(RecordingStarted(job.consult_id, job.object_key, consented))
            done, _ = await asyncio.wait(
                {closed, stop}, timeout=self.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if stop in done:
                reason = "stopped"
            elif closed in done and not closed.exception():
                reason = _STOP_REASONS.get(closed.result().get("code"), "disconnected")
            else:
                reason = "max_duration"
            duration = await writer.stop()
        finally:
            closed.cancel()
            stop.cancel()
        ended = self.clock.now()
        if job.abandoned:
            job.path.unlink(missing_ok=True)
            return None
        try:
            digest, size = await asyncio.to_thread(self._upload, job)
        except (StoreUnavailable, OSError):
            log.exception("recording of consult %s: upload failed", job.consult_id)
            return RecordingResult(RecordingStatus.FAILED, reason, ended_at=ended)
        return RecordingResult(RecordingStatus.STORED, reason, digest, size, duration, ended)

    def _upload(self, job: _Job) -> tuple[str, int]:
        digest = hashlib.sha256()
        with job.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        info = self.store.put_file(job.object_key, job.path)  # verified against its MD5
        job.path.unlink(missing_ok=True)
        return digest.hexdigest(), info.size

    def _complete_row(self, job: _Job, result: RecordingResult) -> None:
        """Write the result into the row the caller made (it may still be committing)."""
        if not job.attached.wait(30):
            log.error("recording of consult %s ended without a row", job.consult_id)
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with transaction(self.factory) as session:
                row = session.scalar(
                    select(ConsultRecording)
                    .where(ConsultRecording.id == job.recording_id)
                    .with_for_update()
                )
                if row is not None:
                    if row.status == RecordingStatus.RECORDING:
                        apply_result(row, result)
                    return
            time.sleep(0.2)  # the starting request has not committed yet
        log.error("recording %s: its row never appeared", job.recording_id)


def apply_result(row: ConsultRecording, result: RecordingResult) -> None:
    row.status = result.status
    row.stop_reason = result.stop_reason
    row.sha256 = result.sha256
    row.size_bytes = result.size_bytes
    row.duration_seconds = result.duration_seconds
    row.ended_at = result.ended_at
