"""DICOMweb routes under /dicomweb: QIDO-RS search, WADO-RS retrieve and metadata."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from telehealth.db import transaction
from telehealth.deps import ActorOutsideSession, CurrentActor, HubDep, SessionDep
from telehealth.dicomweb import service
from telehealth.dicomweb.service import InstanceRef, Level

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
# Stored DICOM is mostly pixels: gzip costs the CPU the stream needs and gains little.
# Starlette's GZipMiddleware leaves a response alone once it names its own encoding.
_NO_GZIP = {"Content-Encoding": "identity"}
_CHUNK_BYTES = 256 * 1024


def _qido(
    request: Request,
    session: SessionDep,
    actor: CurrentActor,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    result = service.search(
        session,
        actor,
        level,
        list(request.query_params.multi_items()),
        study_uid=study,
        series_uid=series,
    )
    # PS3.18 §8.3.4.4: say what was changed in the request (a clamped limit).
    headers = {"Warning": f'299 telehealth "{result.warnings[0]}"'} if result.warnings else None
    return Response(json.dumps(result.matches), media_type=DICOM_JSON, headers=headers)


# --- QIDO-RS ----------------------------------------------------------------------------------


@router.get("/studies")
def search_studies(request: Request, session: SessionDep, actor: CurrentActor) -> Response:
    return _qido(request, session, actor, Level.STUDY)


@router.get("/series")
def search_all_series(request: Request, session: SessionDep, actor: CurrentActor) -> Response:
    return _qido(request, session, actor, Level.SERIES)


@router.get("/instances")
def search_all_instances(request: Request, session: SessionDep, actor: CurrentActor) -> Response:
    return _qido(request, session, actor, Level.INSTANCE)


@router.get("/studies/{study}/series")
def search_series(
    study: str, request: Request, session: SessionDep, actor: CurrentActor
) -> Response:
    return _qido(request, session, actor, Level.SERIES, study)


@router.get("/studies/{study}/instances")
def search_study_instances(
    study: str, request: Request, session: SessionDep, actor: CurrentActor
) -> Response:
    return _qido(request, session, actor, Level.INSTANCE, study)


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(
    study: str, series: str, request: Request, session: SessionDep, actor: CurrentActor
) -> Response:
    return _qido(request, session, actor, Level.INSTANCE, study, series)


# --- WADO-RS ----------------------------------------------------------------------------------


def _media_ranges(request: Request) -> list[tuple[str, dict[str, str]]]:
    """The Accept header as (type, parameters); a missing header accepts anything."""
    ranges = []
    for item in request.headers.get("accept", "*/*").split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        values = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"').lower()
        ranges.append((kind.lower(), values))
    return ranges


def _accepts_dicom(request: Request) -> bool:
    # We send the bytes as stored and do not transcode: a transfer-syntax parameter is not
    # checked (PS3.18 §8.7.3.5 would have us transcode to it; a later step).
    for kind, params in _media_ranges(request):
        if kind in ("*/*", "multipart/*"):
            return True
        if kind == "multipart/related" and params.get("type", "application/dicom") in (
            "application/dicom",
            "*/*",
        ):
            return True
    return False


def _accepts_json(request: Request) -> bool:
    kinds = {kind for kind, _ in _media_ranges(request)}
    return bool(kinds & {"*/*", "application/*", DICOM_JSON, "application/json"})


def _not_acceptable(offered: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"this resource is available as {offered}", "error": "NotAcceptable"},
        status_code=406,
    )


def _targets(
    hub: HubDep,
    actor: ActorOutsideSession,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[InstanceRef]:
    # A transaction of its own that ends before the stream starts (see service.wado).
    with transaction(hub.factory) as session:
        return service.retrieve_targets(session, actor, study, series, instance)


def _in_chunks(pieces: Iterable[bytes], size: int = _CHUNK_BYTES) -> Iterator[bytes]:
    """Join small pieces into chunks of at least `size` bytes.

    A sync body is iterated in a thread pool, one hand-off per item it yields: 500 pieces
    of metadata or three per instance cost more than the data itself.
    """
    pending: list[bytes] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def _multipart(hub: HubDep, refs: list[InstanceRef], boundary: str) -> Iterator[bytes]:
    try:
        for _, data in service.read_each(hub.archive, refs):
            yield (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            yield data
            yield b"\r\n"
    except Exception:
        # The status line is long gone; cutting the stream is the only way left to say so.
        log.exception("WADO-RS stream of %d instances failed part-way", len(refs))
        raise
    yield f"--{boundary}--\r\n".encode()


def _retrieve(hub: HubDep, refs: list[InstanceRef]) -> Response:
    boundary = uuid.uuid4().hex
    media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(
        _in_chunks(_multipart(hub, refs, boundary)), media_type=media_type, headers=_NO_GZIP
    )


def _metadata(request: Request, hub: HubDep, refs: list[InstanceRef]) -> Response:
    root = str(request.base_url).rstrip("/") + router.prefix

    def body() -> Iterator[bytes]:
        yield b"["
        for i, text in enumerate(service.metadata_texts(hub.archive, hub.factory, refs, root)):
            yield (b"," if i else b"") + text.encode()
        yield b"]"

    return StreamingResponse(_in_chunks(body()), media_type=DICOM_JSON)


@router.get("/studies/{study}")
def retrieve_study(
    study: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    if not _accepts_dicom(request):
        return _not_acceptable('multipart/related; type="application/dicom"')
    return _retrieve(hub, _targets(hub, actor, study))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(
    study: str, series: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    if not _accepts_dicom(request):
        return _not_acceptable('multipart/related; type="application/dicom"')
    return _retrieve(hub, _targets(hub, actor, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    if not _accepts_dicom(request):
        return _not_acceptable('multipart/related; type="application/dicom"')
    return _retrieve(hub, _targets(hub, actor, study, series, instance))


@router.get("/studies/{study}/metadata")
def study_metadata(
    study: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    if not _accepts_json(request):
        return _not_acceptable(DICOM_JSON)
    return _metadata(request, hub, _targets(hub, actor, study))


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(
    study: str, series: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    if not _accepts_json(request):
        return _not_acceptable(DICOM_JSON)
    return _metadata(request, hub, _targets(hub, actor, study, series))
