"""Uploads of ECG files: non-DICOM formats converted to a DICOM ECG and ingested, the
original kept beside it in the object store.

Nothing is half-stored: the file is read and converted completely before anything is
written; the original goes to the store before the instance is ingested and is removed if
the ingest fails. UIDs derive from the uploading institution and the file's SHA-256, so
the same file sent twice is the same instance (the archive keeps it once) and a retry after
a failure lands on the same rows.

A recording longer than SEGMENT_S is stored as consecutive Ambulatory ECG instances of one
series (see dicom_writer); the upload answers with the first and lists them all in `parts`.
The parts are all written before any is ingested; should an ingest fail midway, the parts
already stored stay, and a retry (same UIDs) completes the series.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import IngestSource, Instance
from telehealth.archive.service import Archive, IngestResult, origin_for
from telehealth.auth import service as auth
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.db import transaction
from telehealth.ecg.models import EcgOriginal
from telehealth.ecg.service.dicom_waveform import read_dicom_ecg, rhythm_of
from telehealth.ecg.service.dicom_writer import (
    AMBULATORY_ECG,
    SEGMENT_S,
    Written,
    split,
    uid_from,
    write_dicom_ecg,
)
from telehealth.ecg.service.formats import EXTENSIONS, EcgFormat, detect_format, read_ecg
from telehealth.ecg.service.results import digest
from telehealth.ecg.service.waveform import EcgRecord, check_known_leads
from telehealth.errors import BadRequest
from telehealth.storage import ObjectStore

log = logging.getLogger(__name__)

FORMAT_NAMES = {
    EcgFormat.DICOM: "DICOM",
    EcgFormat.HL7_AECG: "HL7 aECG",
    EcgFormat.SCP_ECG: "SCP-ECG",
    EcgFormat.PHILIPS_XML: "Philips XML",
    EcgFormat.GE_MUSE_XML: "GE MUSE XML",
    EcgFormat.WFDB: "PhysioNet WFDB",
}


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class BadStudyUid(BadRequest):
    """The study an upload should join is not named by a valid UID."""


@dataclass(frozen=True)
class EcgUpload:
    result: IngestResult
    format: EcgFormat
    record: EcgRecord
    original_key: str | None
    sop_class_uid: str
    parts: tuple[IngestResult, ...] = ()  # every instance, in time order (first = result)


def original_key(sop_uid: str, sha256: str, kind: EcgFormat) -> str:
    return f"originals/{sop_uid}/{sha256}{EXTENSIONS[kind]}"


def upload_ecg(
    archive: Archive,
    factory: sessionmaker[Session],
    store: ObjectStore,
    actor: auth.Actor,
    data: bytes,
    *,
    filename: str = "",
    study_uid: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> EcgUpload:
    """Store an uploaded ECG file. Raises NotPermitted, the EcgUnreadable family (nothing
    stored), BadStudyUid, and what Archive.ingest raises (StudyOwnedElsewhere, …)."""
    auth.require(actor, auth.Permission.SEND_STUDIES)
    if study_uid is not None and (len(study_uid) > 64 or not _UID.match(study_uid)):
        raise BadStudyUid(f"Study Instance UID is not a valid UID: {study_uid[:80]!r}")
    kind = detect_format(data)
    if kind == EcgFormat.DICOM:
        record = rhythm_of(read_dicom_ecg(data))  # an ECG, or NotAnEcg before anything
        result = archive.ingest(data, origin_for(actor, IngestSource.UPLOAD))
        return EcgUpload(result, kind, record, None, result.sop_class_uid)
    _, record = read_ecg(data)
    check_known_leads(record.names, FORMAT_NAMES[kind])
    sha256 = digest(data)
    owner = str(actor.institution_id)
    study = study_uid or uid_from("ecg-study", owner, sha256)
    series = uid_from("ecg-series", owner, sha256, study)
    sop = uid_from("ecg-instance", owner, sha256, study)
    # One instance for a resting ECG; consecutive parts for a long recording.
    pieces = split(record) if record.duration_s > SEGMENT_S * 1.5 else [(0.0, record)]
    prefer = AMBULATORY_ECG if len(pieces) > 1 else None
    written: list[tuple[str, Written]] = []
    for number, (offset_ms, piece) in enumerate(pieces, start=1):
        # Part 1 keeps the UID a single-instance upload always had.
        part_sop = (
            sop if number == 1 else uid_from("ecg-instance", owner, sha256, study, str(number))
        )
        out = write_dicom_ecg(
            piece,
            study_uid=study,
            series_uid=series,
            sop_uid=part_sop,
            series_description=f"ECG converted from {FORMAT_NAMES[kind]}",
            instance_number=number,
            time_offset_ms=offset_ms,
            prefer=prefer,
        )
        if out.max_divisor > 1:
            log.warning("ECG %s: samples beyond 16 bits divided by %d", part_sop, out.max_divisor)
        written.append((part_sop, out))
    key = original_key(sop, sha256, kind)
    store.put_bytes(key, data)
    results: list[IngestResult] = []
    try:
        for _, out in written:
            results.append(archive.ingest(out.data, origin_for(actor, IngestSource.INTERNAL)))
    except BaseException:
        if not results:  # parts already stored refer to the original: it stays with them
            try:
                store.remove(key)
            except Exception:
                log.exception("original %s left in the store after a failed ingest", key)
        raise
    with transaction(factory) as session:
        part_uids = [part_sop for part_sop, _ in written]
        for instance_pk in session.scalars(
            select(Instance.id).where(Instance.sop_instance_uid.in_(part_uids))
        ):
            link = session.get(EcgOriginal, instance_pk) or EcgOriginal(instance_pk=instance_pk)
            link.format = str(kind)
            link.object_key = key
            link.sha256 = sha256
            link.size_bytes = len(data)
            link.filename = filename[:255]
            link.uploaded_by = actor.user_id
            link.uploaded_at = clock.now()
            session.add(link)
    return EcgUpload(results[0], kind, record, key, written[0][1].sop_class_uid, tuple(results))
