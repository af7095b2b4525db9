"""ECG routes under /api/ecg: uploads, calibrated samples, measurements, paper renderings.

Every route that touches an instance goes through `service.find_instance` (the archive's
study scope check, audited), in a short transaction of its own; the stored bytes are read
after it ends, as WADO-RS does.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from telehealth.auth.service import Actor, Permission
from telehealth.db import transaction
from telehealth.deps import ActorOutsideSession, HubDep
from telehealth.ecg import service
from telehealth.ecg.schemas import (
    LeadSamples,
    MeasurementsOut,
    OriginalOut,
    ReaderValuesIn,
    ReaderValuesOut,
    SamplesOut,
    TriageReasonOut,
    UploadOut,
)
from telehealth.ecg.service.triage import TriageThresholds
from telehealth.errors import Invalid, TooLarge
from telehealth.hub import Hub

router = APIRouter(prefix="/api/ecg", tags=["ecg"])


def _thresholds(hub: Hub) -> TriageThresholds:
    return TriageThresholds.from_settings(hub.settings)


@router.post("/uploads", status_code=201)
async def upload(
    hub: HubDep,
    actor: ActorOutsideSession,
    file: Annotated[
        list[UploadFile],
        File(
            description="aECG / SCP-ECG / Philips or GE XML / DICOM / WFDB ZIP; or the files "
            "of one PhysioNet WFDB record (.hea, .dat, .atr) as several `file` parts"
        ),
    ],
    study_instance_uid: Annotated[str | None, Form()] = None,
) -> UploadOut:
    """Store an ECG file, told apart by its content; non-DICOM files are converted to a DICOM
    ECG waveform and the original kept beside it. 422 names what is wrong with a bad file."""
    limit = hub.settings.ecg_max_upload_bytes
    parts: list[tuple[str, bytes]] = []
    left = limit
    for part in file:
        content = await part.read(left + 1)
        left -= len(content)
        if left < 0:
            raise TooLarge(f"ECG upload is larger than {limit} bytes")
        parts.append((part.filename or "", content))
    if not parts or not any(content for _, content in parts):
        raise Invalid("empty ECG file")
    if len(parts) == 1:
        filename, data = parts[0]
    else:
        # Several files are one WFDB record (header found by content); kept as one ZIP.
        data = await run_in_threadpool(service.bundle_files, parts)
        filename = next((n for n, c in parts if service.looks_like_wfdb_header(c)), "")
    done = await run_in_threadpool(
        service.upload_ecg,
        hub.archive,
        hub.factory,
        hub.store,
        actor,
        data,
        filename=filename,
        study_uid=study_instance_uid or None,
        clock=hub.clock,
    )
    return UploadOut(
        outcome=done.result.outcome.value,
        sop_instance_uid=done.result.sop_instance_uid,
        study_instance_uid=done.result.study_instance_uid,
        series_instance_uid=done.result.series_instance_uid,
        sop_class_uid=done.sop_class_uid,
        format=str(done.format),
        original_key=done.original_key,
        leads=done.record.names,
        sampling_frequency_hz=done.record.sampling_frequency,
        duration_s=round(done.record.duration_s, 3),
    )


def _locate(hub: Hub, actor: Actor, sop_uid: str, action: str) -> service.EcgInstance:
    with transaction(hub.factory) as session:
        return service.find_instance(session, actor, sop_uid, action=action)


@router.get("/{sop_uid}/samples", response_model=None)
def samples(
    sop_uid: str,
    request: Request,
    hub: HubDep,
    actor: ActorOutsideSession,
    format: Annotated[str, Query(pattern="^(json|binary|int16)$")] = "json",
) -> SamplesOut | Response:
    """The rhythm waveform in µV per lead, III/aVR/aVL/aVF derived when the cart sent 8.

    `format=int16` (what the web viewer draws from): little-endian int16, lead after lead
    (num_samples values each); µV = value × that lead's X-ECG-Scale entry. Encoded once per
    instance version and kept; gzip-compressed when accepted; ETag for revalidation.
    `format=binary`: little-endian float32 µV in the same order. Both describe themselves in
    X-ECG-* headers (leads, derived leads, sampling rate, sample count).
    """
    instance = _locate(hub, actor, sop_uid, "ecg.samples")
    if format == "int16":
        return _int16_samples(hub, instance, request)
    record = service.load_record(hub.archive, instance).with_derived_leads()
    if format == "binary":
        body = np.stack([lead.microvolts() for lead in record.leads]).astype("<f4").tobytes()
        return Response(
            body,
            media_type="application/octet-stream",
            headers={
                "X-ECG-Leads": ",".join(record.names),
                "X-ECG-Derived": ",".join(lead.name for lead in record.leads if lead.derived),
                "X-ECG-Sampling-Frequency": f"{record.sampling_frequency:g}",
                "X-ECG-Samples": str(record.num_samples),
                "X-ECG-Units": "uV",
            },
        )
    return SamplesOut(
        sop_instance_uid=sop_uid,
        sampling_frequency_hz=record.sampling_frequency,
        num_samples=record.num_samples,
        leads=[
            LeadSamples(
                name=lead.name,
                derived=lead.derived,
                samples=np.round(lead.microvolts(), 2).tolist(),
            )
            for lead in record.leads
        ],
    )


# Stored instances do not change in place (a replacement has another sha256, so another
# ETag): the browser may keep the answer and only ask whether it still holds.
_SAMPLES_CACHING = "private, no-cache"


def _int16_samples(hub: Hub, instance: service.EcgInstance, request: Request) -> Response:
    etag = service.samples_etag(instance.sha256)
    cached = {"ETag": etag, "Cache-Control": _SAMPLES_CACHING, "Vary": "Accept-Encoding"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=cached)
    encoded = service.SAMPLES_CACHE.get(instance.sha256)
    if encoded is None:
        record = service.load_record(hub.archive, instance)
        encoded = service.SAMPLES_CACHE.remember(instance.sha256, record)
    headers = {**encoded.headers, **cached}
    if "gzip" in request.headers.get("accept-encoding", ""):
        # Content-Encoding set here keeps the app's GZip middleware from compressing again.
        headers["Content-Encoding"] = "gzip"
        return Response(encoded.gzipped, media_type="application/octet-stream", headers=headers)
    return Response(encoded.body, media_type="application/octet-stream", headers=headers)


def _out(view: service.MeasurementView) -> MeasurementsOut:
    kept = view.kept
    reader = None
    if kept.reader_values is not None:
        reader = ReaderValuesOut(
            values=kept.reader_values,
            comment=kept.reader_comment,
            by=view.reader_name,
            at=kept.reader_at,
        )
    original = None
    if view.original is not None:
        o = view.original
        original = OriginalOut(
            format=o.format,
            object_key=o.object_key,
            sha256=o.sha256,
            size_bytes=o.size_bytes,
            filename=o.filename,
        )
    return MeasurementsOut(
        sop_instance_uid=view.instance.sop_instance_uid,
        study_instance_uid=view.instance.study_instance_uid,
        status=str(kept.status),
        error=kept.error,
        algorithm=kept.algorithm,
        computed_at=kept.computed_at,
        automatic=kept.automatic,
        reader=reader,
        effective=view.effective,
        triage=[TriageReasonOut(**r.as_dict()) for r in view.triage],
        original=original,
    )


def _current(hub: Hub, actor: Actor, sop_uid: str, flags: tuple[str, ...]) -> MeasurementsOut:
    thresholds = _thresholds(hub)
    with transaction(hub.factory) as session:
        try:
            return _out(
                service.get_measurements(
                    session, actor, sop_uid, thresholds=thresholds, request_flags=flags
                )
            )
        except service.MeasurementsPending:
            pass
    # Not measured yet (the worker has not come to it): measure now, then answer.
    service.compute(
        hub.archive,
        hub.factory,
        sop_uid,
        clock=hub.clock,
        events=hub.events,
        thresholds=thresholds,
    )
    with transaction(hub.factory) as session:
        return _out(
            service.get_measurements(
                session, actor, sop_uid, thresholds=thresholds, request_flags=flags
            )
        )


@router.get("/{sop_uid}/measurements")
def measurements(
    sop_uid: str,
    hub: HubDep,
    actor: ActorOutsideSession,
    flags: Annotated[list[str], Query(description="request flags for triage: chest_pain, …")] = [],  # noqa: B006
) -> MeasurementsOut:
    """Automatic values, a reader's values beside them, the effective ones, and triage."""
    return _current(hub, actor, sop_uid, tuple(flags))


@router.put("/{sop_uid}/measurements")
def overrule(
    sop_uid: str, body: ReaderValuesIn, hub: HubDep, actor: ActorOutsideSession
) -> MeasurementsOut:
    """A reader's values, kept beside the automatic ones (which a recomputation replaces)."""
    _current(hub, actor, sop_uid, ())  # measured first, so there is a row to keep them in
    with transaction(hub.factory) as session:
        view = service.set_reader_values(
            session,
            actor,
            sop_uid,
            body.values,
            comment=body.comment,
            thresholds=_thresholds(hub),
            clock=hub.clock,
        )
        return _out(view)


@router.post("/{sop_uid}/measurements/recompute")
def recompute(sop_uid: str, hub: HubDep, actor: ActorOutsideSession) -> MeasurementsOut:
    """Measure again (after an algorithm update); a reader's values stay."""
    if not (actor.can(Permission.READ_CASES) or actor.can(Permission.ADMINISTER)):
        raise service.NotAReader("only readers and admins may recompute ECG measurements")
    _locate(hub, actor, sop_uid, "ecg.measurements.recompute")
    service.compute(
        hub.archive,
        hub.factory,
        sop_uid,
        clock=hub.clock,
        events=hub.events,
        thresholds=_thresholds(hub),
    )
    return _current(hub, actor, sop_uid, ())


def _rendered(hub: Hub, actor: Actor, sop_uid: str, dpi: float) -> Image.Image:
    instance = _locate(hub, actor, sop_uid, "ecg.rendered")
    record = service.load_record(hub.archive, instance)
    values = _current(hub, actor, sop_uid, ()).effective
    page = service.render_page(
        record,
        values=values,
        title="心电图 ECG",
        dpi=dpi,
        font_path=str(hub.settings.ecg_font) if hub.settings.ecg_font else None,
    )
    return page


@router.get("/{sop_uid}/rendered.png")
def rendered_png(
    sop_uid: str,
    hub: HubDep,
    actor: ActorOutsideSession,
    dpi: Annotated[float, Query(ge=72, le=300)] = 150,
) -> Response:
    """The paper ECG (A4 landscape, 3×4 + II rhythm strip, 25 mm/s, 10 mm/mV) as PNG."""
    page = _rendered(hub, actor, sop_uid, dpi)
    return Response(service.to_png(page), media_type="image/png")


@router.get("/{sop_uid}/rendered.pdf")
def rendered_pdf(sop_uid: str, hub: HubDep, actor: ActorOutsideSession) -> Response:
    """The paper ECG as a one-page A4 PDF that prints at 25 mm/s and 10 mm/mV."""
    page = _rendered(hub, actor, sop_uid, 300)
    return Response(
        service.to_pdf(page, title=f"ECG {sop_uid}"),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="ecg-{sop_uid}.pdf"'},
    )


@router.get("/{sop_uid}/original")
def original(sop_uid: str, hub: HubDep, actor: ActorOutsideSession) -> Response:
    """The file the clinic uploaded, as sent (404 for an ECG that arrived as DICOM)."""
    with transaction(hub.factory) as session:
        view = service.original_of(session, actor, sop_uid)
    data = hub.store.get_bytes(view.object_key)
    media = service.MEDIA_TYPES.get(service.EcgFormat(view.format), "application/octet-stream")
    name = view.filename or view.object_key.rsplit("/", 1)[-1]
    disposition = f"attachment; filename*=UTF-8''{quote(name)}"
    return Response(data, media_type=media, headers={"Content-Disposition": disposition})
