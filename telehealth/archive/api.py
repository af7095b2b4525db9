"""Study lists for people, and a plain upload of one DICOM file."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from telehealth.archive import service
from telehealth.archive.models import IngestSource, Patient, Study
from telehealth.archive.schemas import StudyList, StudyOut
from telehealth.auth import service as auth
from telehealth.deps import ActorOutsideSession, CurrentActor, HubDep, SessionDep
from telehealth.errors import Invalid, TooLarge

router = APIRouter(prefix="/api", tags=["archive"])


def _study_out(study: Study, patient: Patient) -> StudyOut:
    return StudyOut(
        study_instance_uid=study.study_instance_uid,
        patient_id="" if patient.patient_id.startswith("~") else patient.patient_id,
        patient_name=patient.name,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        description=study.description,
        modalities=[m for m in study.modalities.split("\\") if m],
        institution_id=study.institution_id,
        num_series=study.num_series,
        num_instances=study.num_instances,
        size_bytes=study.size_bytes,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        stable=study.stable_at is not None,
    )


_DATE = r"^\d{8}$"


@router.get("/studies")
def list_studies(
    actor: CurrentActor,
    session: SessionDep,
    patient_id: str | None = Query(None, max_length=64),
    patient_name: str | None = Query(None, max_length=324),
    date_from: str | None = Query(None, pattern=_DATE, description="YYYYMMDD, inclusive"),
    date_to: str | None = Query(None, pattern=_DATE, description="YYYYMMDD, inclusive"),
    modality: str | None = Query(None, max_length=16),
    institution_id: int | None = None,
    accession_number: str | None = Query(None, max_length=64),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> StudyList:
    filters = service.StudyFilter(
        patient_id=patient_id,
        patient_name=patient_name,
        date_from=date_from,
        date_to=date_to,
        modality=modality,
        institution_id=institution_id,
        accession_number=accession_number,
    )
    page = service.list_studies(session, actor, filters, limit=limit, offset=offset)
    return StudyList(
        total=page.total,
        limit=limit,
        offset=offset,
        items=[_study_out(s, p) for s, p in page.rows],
    )


@router.get("/studies/{study_instance_uid}")
def get_study(study_instance_uid: str, actor: CurrentActor, session: SessionDep) -> StudyOut:
    return _study_out(*service.get_study(session, actor, study_instance_uid))


@router.post("/instances", status_code=201)
async def upload_instance(
    request: Request, actor: ActorOutsideSession, hub: HubDep
) -> dict[str, str]:
    """Store one DICOM Part 10 file sent as the request body (application/dicom)."""
    auth.require(actor, auth.Permission.SEND_STUDIES)
    limit = hub.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"upload is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"upload is larger than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise Invalid("empty upload")
    origin = service.origin_for(actor, IngestSource.UPLOAD)
    from starlette.concurrency import run_in_threadpool

    result = await run_in_threadpool(hub.archive.ingest, b"".join(chunks), origin)
    return {
        "outcome": result.outcome.value,
        "sop_instance_uid": result.sop_instance_uid,
        "study_instance_uid": result.study_instance_uid,
    }
