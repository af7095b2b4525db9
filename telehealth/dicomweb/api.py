"""DICOMweb routes under /dicomweb: QIDO-RS search, WADO-RS retrieve and metadata."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

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
_CHUNK_BYTES = 1024 * 1024


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


async def _logged(pieces: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    try:
        async for piece in pieces:
            yield piece
    except Exception:
        # The status line is long gone; cutting the stream is the only way left to say so.
        log.exception("WADO-RS stream of %d instances failed part-way", count)
        raise


def _retrieve(hub: HubDep, refs: list[InstanceRef]) -> Response:
    body = service.multipart_retrieve(hub.archive, refs, uuid.uuid4().hex)
    media_type = f'multipart/related; type="application/dicom"; boundary={body.boundary}'
    headers = {**_NO_GZIP, "Content-Length": str(body.length)}
    return StreamingResponse(
        _logged(body.pieces, len(refs)), media_type=media_type, headers=headers
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


# --- STOW-RS ----------------------------------------------------------------------------------

_STOW_PART = "application/dicom"
_STOW_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}


def _content_type(request: Request) -> tuple[str, dict[str, str]]:
    """The Content-Type as (type, parameters); values keep their case (a boundary needs it)."""
    kind, *params = (p.strip() for p in request.headers.get("content-type", "").split(";"))
    values = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    return kind.lower(), values


def _stow_status(result: service.StowResult) -> int:
    # PS3.18 §10.5.3: 200 all stored, 202 some failed, 409 none stored; 413 when the request
    # limit cut the body before anything was stored.
    if not result.failed:
        return 200
    if result.stored:
        return 202
    return 413 if result.cut_short else 409


async def _stow(
    request: Request, hub: HubDep, actor: ActorOutsideSession, study: str | None
) -> Response:
    kind, params = _content_type(request)
    # Only the application/dicom flavour; the metadata + bulk data one (dicom+json) is not taken.
    if kind != "multipart/related" or params.get("type", _STOW_PART).lower() != _STOW_PART:
        return JSONResponse(
            {
                "detail": f'STOW-RS takes multipart/related; type="{_STOW_PART}"',
                "error": "UnsupportedMediaType",
            },
            status_code=415,
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise service.BadDicomwebRequest("multipart/related without a boundary parameter")
    declared = request.headers.get("content-length", "")
    limits = service.StowLimits(hub.settings.stow_max_part_bytes, hub.settings.stow_max_bytes)
    try:
        result = await service.store_instances(
            hub.archive,
            hub.factory,
            actor,
            request.stream(),
            boundary,
            limits,
            study_uid=study,
            declared_length=int(declared) if declared.isdigit() else None,
        )
    except ClientDisconnect:
        # Nobody is left to answer; the parts stored so far stay stored (the service logs it).
        return Response(status_code=400)
    root = str(request.base_url).rstrip("/") + router.prefix
    return Response(
        json.dumps(result.response(root)),
        status_code=_stow_status(result),
        media_type=DICOM_JSON,
    )


@router.post("/studies", openapi_extra=_STOW_BODY)
async def store_instances(request: Request, hub: HubDep, actor: ActorOutsideSession) -> Response:
    """Store instances (PS3.18 §10.5), each part of the body one DICOM instance."""
    return await _stow(request, hub, actor, None)


@router.post("/studies/{study}", openapi_extra=_STOW_BODY)
async def store_study_instances(
    study: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    """Store instances of one study (PS3.18 §10.5); an instance of another study fails."""
    return await _stow(request, hub, actor, study)


# --- frames, bulk data, rendered --------------------------------------------------------------

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


def _instance_bytes(
    hub: HubDep, actor: ActorOutsideSession, study: str, series: str, instance: str
) -> bytes:
    # Scoped and audited like every retrieve; the read needs no transaction (see service.wado).
    [ref] = _targets(hub, actor, study, series, instance)
    return service.read_instance_bytes(hub.archive, ref)


def _parts_response(result: service.Parts) -> Response:
    if not result.multipart:
        [part] = result.parts
        return Response(part.data, media_type=part.content_type, headers=_NO_GZIP)
    boundary = uuid.uuid4().hex
    pieces = []
    for part in result.parts:
        pieces.append(
            f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
            f"Content-Length: {len(part.data)}\r\n\r\n".encode()
        )
        pieces += [part.data, b"\r\n"]
    pieces.append(f"--{boundary}--\r\n".encode())
    media_type = (
        f'multipart/related; type="{result.media_type}"; '
        f"transfer-syntax={result.transfer_syntax}; boundary={boundary}"
    )
    return Response(b"".join(pieces), media_type=media_type, headers=_NO_GZIP)


def _image_response(image: service.Rendered) -> Response:
    return Response(image.body, media_type=image.media_type, headers=_NO_GZIP)


@router.get(_INSTANCE + "/frames/{frames}")
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    """Frames (PS3.18 §10.4.1.1.3), `1` or `1,3,5`: as stored with `transfer-syntax=*`,
    else uncompressed little endian."""
    numbers = service.parse_frame_numbers(frames)  # a malformed list costs no store read
    data = _instance_bytes(hub, actor, study, series, instance)
    result = service.retrieve_frames(data, numbers, request.headers.get("accept"))
    return _parts_response(result)


@router.get(_INSTANCE + "/bulk/{path:path}")
def retrieve_bulk_data(
    study: str,
    series: str,
    instance: str,
    path: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    """Bulk data named by metadata's BulkDataURIs: a tag, or sequence/item/tag when nested.

    Multipart unless the client asks for exactly application/octet-stream."""
    service.check_bulk_path(path)
    data = _instance_bytes(hub, actor, study, series, instance)
    result = service.retrieve_bulk_data(data, path, request.headers.get("accept"))
    return _parts_response(result)


def _rendered(
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
    ids: tuple[str, str, str],
    frame: str | None = None,
    *,
    thumbnail: bool = False,
) -> Response:
    options = service.parse_render_options(request.query_params.multi_items(), thumbnail=thumbnail)
    number = service.parse_rendered_frame(frame) if frame is not None else None
    data = _instance_bytes(hub, actor, *ids)
    image = service.render_instance(
        data, request.headers.get("accept"), options, frame=number, thumbnail=thumbnail
    )
    return _image_response(image)


@router.get(_INSTANCE + "/rendered")
def render_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    """The first frame as image/jpeg (or png, gif), PS3.18 §10.4.1.1.5: window=c,w,function,
    viewport=w,h, quality=1..100."""
    return _rendered(request, hub, actor, (study, series, instance))


@router.get(_INSTANCE + "/frames/{frame}/rendered")
def render_frame(
    study: str,
    series: str,
    instance: str,
    frame: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    return _rendered(request, hub, actor, (study, series, instance), frame)


@router.get(_INSTANCE + "/thumbnail")
def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    """A small rendering (PS3.18 §10.4.1.1.6), 128 pixels unless viewport=w,h says."""
    return _rendered(request, hub, actor, (study, series, instance), thumbnail=True)


@router.get(_INSTANCE + "/frames/{frame}/thumbnail")
def frame_thumbnail(
    study: str,
    series: str,
    instance: str,
    frame: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
) -> Response:
    return _rendered(request, hub, actor, (study, series, instance), frame, thumbnail=True)


def _group_thumbnail(
    request: Request, hub: HubDep, actor: ActorOutsideSession, refs: list[InstanceRef]
) -> Response:
    options = service.parse_render_options(request.query_params.multi_items(), thumbnail=True)
    image = service.render_thumbnail(hub.archive, refs, request.headers.get("accept"), options)
    return _image_response(image)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(
    study: str, series: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    """The series' middle image as a thumbnail."""
    return _group_thumbnail(request, hub, actor, _targets(hub, actor, study, series))


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(
    study: str, request: Request, hub: HubDep, actor: ActorOutsideSession
) -> Response:
    """The middle image of the study's first series that has images, as a thumbnail."""
    return _group_thumbnail(request, hub, actor, _targets(hub, actor, study))
