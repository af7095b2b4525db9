"""STOW-RS (PS3.18 §10.5): instances sent as multipart/related, stored one part at a time.

A study can be gigabytes, so the body is parsed as it arrives: only the part being read is held
in memory (at most the part limit), and each part goes to archive.ingest, the same way in as
C-STORE, as soon as its closing delimiter arrives. A part reported as stored is on disk and
indexed whatever happens to the rest of the request.

Each failed part is reported with a Failure Reason (0008,1197) from the one error table
(errors.WIRE, as C-STORE answers) and, in words, an Error Comment (0000,0902): the attribute
our C-STORE responses use, 64 ASCII characters (LO). The full reason goes to the log.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import IngestSource
from telehealth.archive.service import (
    Archive,
    IndexOutcome,
    Origin,
    StudyOwnedElsewhere,
    origin_for,
    parse_header,
)
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import transaction
from telehealth.dicomweb.service.common import BadDicomwebRequest, check_uid
from telehealth.dicomweb.service.multipart import (
    Event,
    MalformedMultipart,
    MultipartReader,
    PartData,
    PartStart,
)
from telehealth.errors import DomainError, TooLarge, wire_status

log = logging.getLogger(__name__)

# --- STOW-RS ----------------------------------------------------------------------------------

# Failure Reasons (0008,1197) of our own making (PS3.18 §10.5.3, PS3.4 Annex B.2.3); those of
# the archive's errors come from errors.WIRE.
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
# Kept of every part to name its instance in a report when the part itself is dropped (over
# the limit, cut off): the SOP UIDs sit near the start of the header.
_HEAD_BYTES = 64 * 1024


class RequestTooLarge(TooLarge):
    """The request is over the STOW-RS limit before any part could be reported."""


@dataclass(frozen=True)
class StowLimits:
    max_part_bytes: int
    max_request_bytes: int


@dataclass(frozen=True)
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    duplicate: bool  # the identical instance was already stored; nothing changed


@dataclass(frozen=True)
class FailedInstance:
    failure_reason: int  # (0008,1197)
    reason: str  # in words; the response carries its first 64 ASCII characters
    # "" where the part could not be read that far.
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    denied: bool = False  # refused by the study's owner check: audited as a denial


@dataclass
class StowResult:
    study_uid: str | None  # the study named in the request URL
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    cut_short: bool = False  # the request limit stopped reading the body

    def response(self, root: str) -> dict[str, Any]:
        """The Store Instances Response (PS3.18 §10.5.3) as DICOM JSON.

        `root` is the DICOMweb base URL. Retrieve URL (0008,1190) names the study when the
        request named one or everything stored belongs to one.
        """
        body: dict[str, Any] = {}
        studies = {s.study_instance_uid for s in self.stored}
        study = self.study_uid or (next(iter(studies)) if len(studies) == 1 else None)
        if self.stored and study:
            body["00081190"] = _element("UR", f"{root}/studies/{study}")
        if self.failed:
            body["00081198"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00000902": _element("LO", _comment(f)),
                        "00081150": _element("UI", f.sop_class_uid),
                        "00081155": _element("UI", f.sop_instance_uid),
                        "00081197": _element("US", f.failure_reason),
                    }
                    for f in self.failed
                ],
            }
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": _element("UI", s.sop_class_uid),
                        "00081155": _element("UI", s.sop_instance_uid),
                        "00081190": _element(
                            "UR",
                            f"{root}/studies/{s.study_instance_uid}/series/"
                            f"{s.series_instance_uid}/instances/{s.sop_instance_uid}",
                        ),
                    }
                    for s in self.stored
                ],
            }
        return body


def _element(vr: str, value: str | int) -> dict[str, Any]:
    # PS3.18 §F.2.5: an empty value is an element without "Value".
    return {"vr": vr, "Value": [value]} if value != "" else {"vr": vr}


def _comment(failed: FailedInstance) -> str:
    """The reason as an Error Comment: LO, 64 characters, no backslash (the value separator),
    ASCII as our C-STORE comments. The UIDs the item names already are left out of it, so a
    long UID does not crowd out the why."""
    text = failed.reason
    for uid in (failed.sop_instance_uid, failed.study_instance_uid, failed.sop_class_uid):
        if uid:
            text = text.replace(f" {uid}", "")
    return text.replace("\\", "/").encode("ascii", "replace").decode()[:64]


@dataclass
class _Part:
    headers: dict[str, str]
    refusal: str  # why the headers rule the part out, or ""
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    too_large: bool = False

    def add(self, data: bytes, limit: int) -> None:
        self.size += len(data)
        if len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]
        if self.refusal or self.too_large:
            return
        if self.size > limit:
            # Drop what was kept: memory stays within one part limit, the rest is skipped.
            self.too_large = True
            self.chunks.clear()
            return
        self.chunks.append(data)


def _refusal(headers: dict[str, str]) -> str:
    """Why a part's headers rule it out, or ""; no Content-Type means application/dicom."""
    media_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
    if media_type != "application/dicom":
        return f"part is {media_type[:30] or 'untyped'}, not application/dicom"
    encoding = headers.get("content-transfer-encoding", "binary").strip().lower()
    if encoding not in ("binary", "8bit", "7bit"):
        return f"Content-Transfer-Encoding {encoding[:20]} is not supported"
    return ""


def _uid(value: object) -> str:
    text = str(value or "").strip().rstrip("\x00")
    try:
        return check_uid(text, "UID")
    except BadDicomwebRequest:
        return ""  # never echo junk from a damaged part into the response


def _identify(data: bytes) -> tuple[str, str, str]:
    """Best-effort (SOP Class, SOP Instance, Study) UIDs of a failed part, for its report.

    A damaged or cut-off header gives what could be read; none of it is used for storage.
    """
    try:
        ds = dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            force=True,
            defer_size=256,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        meta = getattr(ds, "file_meta", None)
        return (
            _uid(ds.get("SOPClassUID") or (meta and meta.get("MediaStorageSOPClassUID"))),
            _uid(ds.get("SOPInstanceUID") or (meta and meta.get("MediaStorageSOPInstanceUID"))),
            _uid(ds.get("StudyInstanceUID")),
        )
    except Exception:  # pydicom raises many kinds on junk; all mean "unknown" here
        return "", "", ""


def _failure(code: int, reason: str, data: bytes, *, denied: bool = False) -> FailedInstance:
    sop_class, sop, study = _identify(data)
    return FailedInstance(code, reason, sop_class, sop, study, denied)


def _store_part(
    archive: Archive, chunks: list[bytes], origin: Origin, study_uid: str | None
) -> StoredInstance | FailedInstance:
    """Ingest one whole part; runs in a worker thread (ingest blocks on fsync and SQL)."""
    data = b"".join(chunks)
    chunks.clear()
    try:
        if study_uid is not None:
            # PS3.18 §10.5.1: with a study in the URL, an instance of another is refused.
            # The archive's own header parser, so the check sees the UID ingest would.
            header = parse_header(data)
            if header.study_instance_uid != study_uid:
                return FailedInstance(
                    DATA_SET_DOES_NOT_MATCH,
                    "instance of another study than the one in the request URL",
                    header.sop_class_uid,
                    header.sop_instance_uid,
                    header.study_instance_uid,
                )
        result = archive.ingest(data, origin)
    except DomainError as exc:
        return _failure(
            wire_status(exc)[1], str(exc), data, denied=isinstance(exc, StudyOwnedElsewhere)
        )
    except Exception:
        # A bug, not the sender's fault; ingest leaves nothing behind, so the others go on.
        log.exception("STOW-RS: ingest of a part failed unexpectedly")
        return _failure(PROCESSING_FAILURE, "processing failure", data)
    return StoredInstance(
        sop_class_uid=result.sop_class_uid,
        sop_instance_uid=result.sop_instance_uid,
        study_instance_uid=result.study_instance_uid,
        series_instance_uid=result.series_instance_uid,
        duplicate=result.outcome == IndexOutcome.DUPLICATE,
    )


class _Receiver:
    """Turns parser events into stored and failed instances, one part at a time."""

    def __init__(
        self, archive: Archive, origin: Origin, limits: StowLimits, result: StowResult
    ) -> None:
        self.archive = archive
        self.origin = origin
        self.limits = limits
        self.result = result
        self.part: _Part | None = None
        self.parts = 0

    async def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, PartStart):
                self.parts += 1
                self.part = _Part(event.headers, _refusal(event.headers))
            elif isinstance(event, PartData):
                assert self.part is not None
                self.part.add(event.data, self.limits.max_part_bytes)
            else:
                part, self.part = self.part, None
                assert part is not None
                await self._finish(part, complete=event.complete)

    async def _finish(self, part: _Part, *, complete: bool) -> None:
        if not complete:
            self._fail(CANNOT_UNDERSTAND, "the body ended inside this part", part)
        elif part.too_large:
            limit = self.limits.max_part_bytes
            self._fail(OUT_OF_RESOURCES, f"part larger than the limit of {limit} bytes", part)
        elif part.refusal:
            self._fail(CANNOT_UNDERSTAND, part.refusal, part)
        elif not part.size:
            self._fail(CANNOT_UNDERSTAND, "empty part", part)
        else:
            outcome = await anyio.to_thread.run_sync(
                _store_part, self.archive, part.chunks, self.origin, self.result.study_uid
            )
            self._record(outcome)

    def abandon(self, code: int, reason: str) -> None:
        """Reading stopped: the part being read fails, or the unread rest does."""
        part, self.part = self.part, None
        self._fail(code, reason, part)

    def _fail(self, code: int, reason: str, part: _Part | None) -> None:
        self._record(_failure(code, reason, bytes(part.head) if part else b""))

    def _record(self, outcome: StoredInstance | FailedInstance) -> None:
        if isinstance(outcome, StoredInstance):
            self.result.stored.append(outcome)
            return
        self.result.failed.append(outcome)
        log.info(
            "STOW-RS part %d from %s failed (0x%04X, SOP Instance %s): %s",
            self.parts,
            self.origin.address or "?",
            outcome.failure_reason,
            outcome.sop_instance_uid or "unknown",
            outcome.reason,
        )


async def _chunks(body: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, AsyncIterable):
        async for chunk in body:
            if chunk:
                yield chunk
    else:
        for chunk in body:
            if chunk:
                yield chunk


async def store_instances(
    archive: Archive,
    factory: sessionmaker[Session],
    actor: auth.Actor,
    body: AsyncIterable[bytes] | Iterable[bytes],
    boundary: str,
    limits: StowLimits,
    *,
    study_uid: str | None = None,
    declared_length: int | None = None,
) -> StowResult:
    """Store each application/dicom part of a multipart/related body as it arrives; audited.

    Parts are ingested in order, each in a worker thread, while the body is read no further;
    a part over the part limit, cut off, unreadable or refused by the archive is a failed
    instance and the others go on. The request limit stops reading: the part being read and
    the unread rest fail. Raises NotPermitted (before reading anything), BadDicomwebRequest
    for a malformed study UID, RequestTooLarge when `declared_length` or the body is over the
    request limit before any part could be reported, MalformedMultipart when the body is not
    multipart or holds no part. An error of the body itself (the client went away) is raised
    as is; the parts stored by then stay stored.
    """
    auth.require(actor, auth.Permission.SEND_STUDIES)
    if study_uid is not None:
        check_uid(study_uid, "Study Instance UID")
    limit = limits.max_request_bytes
    if declared_length is not None and declared_length > limit:
        # Refused before reading: the sender learns at once rather than after sending it all.
        raise RequestTooLarge(f"request of {declared_length} bytes is over the limit of {limit}")
    reader = MultipartReader(boundary)
    result = StowResult(study_uid)
    receiver = _Receiver(archive, origin_for(actor, IngestSource.STOW), limits, result)
    received = 0
    try:
        async for chunk in _chunks(body):
            room = limit - received
            received += len(chunk)
            if len(chunk) <= room:
                await receiver.handle(reader.feed(chunk))
                continue
            await receiver.handle(reader.feed(chunk[:room]))
            if not reader.finished:  # over the limit in the epilogue is no one's loss
                if not receiver.parts:
                    raise RequestTooLarge(f"request over the limit of {limit} bytes")
                result.cut_short = True
                receiver.abandon(
                    OUT_OF_RESOURCES, f"request over the limit of {limit} bytes; rest not read"
                )
            break
        else:
            await receiver.handle(reader.close())
    except MalformedMultipart as exc:
        if not receiver.parts:
            raise
        # Stored parts stay reported; past a broken delimiter nothing can be trusted.
        receiver.abandon(CANNOT_UNDERSTAND, str(exc))
    except DomainError:
        raise
    except Exception:
        log.warning(
            "STOW-RS body from %s broke off after %d parts (%d stored)",
            actor.name,
            receiver.parts,
            len(result.stored),
        )
        raise
    finally:
        if result.stored or result.failed:
            await anyio.to_thread.run_sync(_audit, factory, actor, result)
    if not result.stored and not result.failed:
        raise MalformedMultipart("the body holds no parts")
    return result


def _audit(factory: sessionmaker[Session], actor: auth.Actor, result: StowResult) -> None:
    """One event per study stored into, one denial per study refused, one for other failures."""
    stored: dict[str, int] = {}
    for s in result.stored:
        stored[s.study_instance_uid] = stored.get(s.study_instance_uid, 0) + 1
    denied = {f.study_instance_uid for f in result.failed if f.denied}
    others = sum(1 for f in result.failed if not f.denied)
    try:
        with transaction(factory) as session:
            for study, count in stored.items():
                auth.audit(
                    session,
                    actor,
                    "dicomweb.stow",
                    object_type="study",
                    object_id=study,
                    detail=f"{count} instances stored",
                )
            for study in sorted(denied):
                auth.audit(
                    session,
                    actor,
                    "dicomweb.stow",
                    outcome=AuditOutcome.DENIED,
                    object_type="study",
                    object_id=study,
                    detail="study belongs to another institution",
                )
            if others:
                auth.audit(
                    session,
                    actor,
                    "dicomweb.stow",
                    outcome=AuditOutcome.FAILED,
                    object_type="request",
                    detail=f"{others} parts failed",
                )
    except Exception:
        # What is stored stays stored; failing the response now would only make the sender
        # resend it. The log keeps the trace the audit table could not.
        log.exception(
            "STOW-RS audit by %s not recorded: %d stored, %d failed",
            actor.name,
            len(result.stored),
            len(result.failed),
        )
