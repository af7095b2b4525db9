"""The signed report back into its study: a DICOM Encapsulated PDF instance (PS3.3 A.45.1)
ingested through the archive's one path, owned by the case's clinic so its PACS retrieves it.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import IngestSource, Patient, Study
from telehealth.archive.service.index import Origin
from telehealth.cases.models import Case, CaseService
from telehealth.db import transaction
from telehealth.reports.models import Report, ReportDocument
from telehealth.reports.service.common import ReportContext

log = logging.getLogger(__name__)

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Report titles (ConceptNameCodeSequence), LOINC as PS3.16 CID 7001 suggests.
_TITLES: dict[CaseService, tuple[str, str]] = {
    CaseService.ECG: ("11524-6", "EKG study"),
    CaseService.ULTRASOUND: ("18748-4", "Diagnostic imaging report"),
    CaseService.IMAGING: ("18748-4", "Diagnostic imaging report"),
    CaseService.OTHER: ("18748-4", "Diagnostic imaging report"),
}
SERIES_NUMBER = 9901  # out of the way of the modality's own series numbers


def encapsulated_pdf(
    *,
    pdf: bytes,
    patient: Patient,
    study: Study,
    service: CaseService,
    document_title: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    created: datetime,
    manufacturer: str = "telehealth hub",
) -> bytes:
    """A Part 10 Encapsulated PDF instance, patient and study attributes from the study."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese names and titles
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S")
    # Patient and General Study modules: the study's, so the document files under it.
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = ""
    ds.StudyDescription = study.description
    # Encapsulated Document Series, General and SC Equipment.
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "Report 报告"
    ds.Manufacturer = manufacturer
    ds.ConversionType = "WSD"  # workstation
    # Encapsulated Document module.
    ds.InstanceNumber = instance_number
    ds.ContentDate = created.strftime("%Y%m%d")
    ds.ContentTime = created.strftime("%H%M%S")
    ds.AcquisitionDateTime = created.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the PDF names the patient
    ds.DocumentTitle = document_title[:64]
    code_value, meaning = _TITLES[service]
    concept = Dataset()
    concept.CodeValue = code_value
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = meaning
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB must be even; the true length lets a reader drop the pad byte (PS3.3 C.24.2.1).
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def store_pending_documents(rctx: ReportContext, *, limit: int = 20) -> list[str]:
    """Hand every signed document not yet in the archive to `archive.ingest`.

    Runs after the signing transaction has committed (and again from the escalation sweep if
    that failed): on SQLite a transaction holds the write lock, so ingesting from inside the
    signing transaction would wait on itself. Ingest is idempotent per SOP Instance UID.
    Returns the SOP Instance UIDs stored.
    """
    archive = rctx.archive
    if archive is None:
        return []
    with transaction(archive.factory) as session:
        pending = [
            (doc.id, doc.sop_instance_uid, institution_id, data)
            for doc, institution_id, data in _pending(session, limit, rctx)
        ]
    stored: list[str] = []
    for doc_id, sop_uid, institution_id, data in pending:
        try:
            archive.ingest(data, Origin(IngestSource.INTERNAL, institution_id))
        except Exception:
            log.exception("storing report document %s failed; will try again", sop_uid)
            continue
        with transaction(archive.factory) as session:
            doc = session.get(ReportDocument, doc_id)
            if doc is not None and doc.stored_at is None:
                doc.stored_at = rctx.now()
        stored.append(sop_uid)
    return stored


def _pending(
    session: Session, limit: int, rctx: ReportContext
) -> list[tuple[ReportDocument, int, bytes]]:
    rows = session.execute(
        select(ReportDocument, Report, Case)
        .join(Report, Report.id == ReportDocument.report_id)
        .join(Case, Case.id == Report.case_id)
        .where(ReportDocument.stored_at.is_(None))
        .order_by(ReportDocument.id)
        .limit(limit)
    ).all()
    out: list[tuple[ReportDocument, int, bytes]] = []
    for doc, report, case in rows:
        study = session.get(Study, case.study_pk)
        assert study is not None  # a case's study is never deleted under it
        patient = session.get(Patient, study.patient_pk)
        assert patient is not None
        data = encapsulated_pdf(
            pdf=doc.pdf,
            patient=patient,
            study=study,
            service=case.service,
            document_title=report.title,
            series_instance_uid=doc.series_instance_uid,
            sop_instance_uid=doc.sop_instance_uid,
            instance_number=doc.instance_number,
            # DICOM dates and times are local: the consortium's zone, as on the PDF.
            created=doc.created_at.astimezone(rctx.cases.config.timezone),
        )
        out.append((doc, case.institution_id, data))
    return out
