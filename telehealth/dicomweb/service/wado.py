"""WADO-RS (PS3.18 §10.4): instances as stored, and their headers as DICOM JSON.

A study can be gigabytes. Nothing here holds more than one instance in memory, and no database
session lives across a whole retrieve: on SQLite every transaction takes the write lock, so a
session held while a slow client downloads would stall every ingest.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series
from telehealth.archive.service import Archive, InstanceNotFound, visible_study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import transaction
from telehealth.dicomweb.service.common import SeriesNotFound, check_uid

log = logging.getLogger(__name__)

# Values longer than this become BulkDataURIs instead of inline base64 in metadata: a viewer
# wants the header fast and fetches pixels separately.
BULK_DATA_THRESHOLD = 1024
_PIXEL_TAGS = ("7FE00008", "7FE00009", "7FE00010")  # Float, Double Float, Pixel Data


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str

    def path(self) -> str:
        """The instance's resource path under the DICOMweb root (PS3.18 §10.4.1)."""
        return f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


def retrieve_targets(
    session: Session,
    actor: auth.Actor,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[InstanceRef]:
    """The instances a retrieve addresses, in series and instance number order; audited.

    Only the index is read, so the caller can end this transaction before streaming.
    Raises BadDicomwebRequest for a malformed UID, StudyNotFound / SeriesNotFound /
    InstanceNotFound for anything missing or outside the actor's scope (not told apart).
    """
    auth.require(actor, auth.Permission.VIEW_STUDIES)
    check_uid(study_uid, "Study Instance UID")
    if series_uid is not None:
        check_uid(series_uid, "Series Instance UID")
    if sop_uid is not None:
        check_uid(sop_uid, "SOP Instance UID")
    target = sop_uid or series_uid or study_uid
    study_pk, _ = visible_study(session, actor, study_uid, action="dicomweb.wado", object_id=target)
    query = (
        select(Series.series_instance_uid, Instance.sop_instance_uid)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk == study_pk)
    )
    if series_uid is not None:
        query = query.where(Series.series_instance_uid == series_uid)
    if sop_uid is not None:
        query = query.where(Instance.sop_instance_uid == sop_uid)
    rows = session.execute(
        query.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    if not rows:
        auth.audit(
            session,
            actor,
            "dicomweb.wado",
            outcome=AuditOutcome.FAILED,
            object_type="instance" if sop_uid else "series",
            object_id=target,
        )
        if sop_uid is not None:
            raise InstanceNotFound(f"no instance {sop_uid} in series {series_uid}")
        raise SeriesNotFound(f"no series {series_uid} in study {study_uid}")
    auth.audit(
        session,
        actor,
        "dicomweb.wado",
        object_type="instance" if sop_uid else "series" if series_uid else "study",
        object_id=target,
        detail=f"{len(rows)} instances",
    )
    return [InstanceRef(study_uid, series, sop) for series, sop in rows]


def read_each(
    archive: Archive, factory: sessionmaker[Session], refs: list[InstanceRef]
) -> Iterator[tuple[InstanceRef, bytes]]:
    """Each instance's bytes exactly as stored, one at a time, each in a short transaction.

    Raises InstanceNotFound or StoreUnavailable part-way through; by then the response has
    started, so the caller can only cut the stream short (the client sees it truncated).
    """
    for ref in refs:
        with transaction(factory) as session:
            data = archive.read_instance(session, ref.sop_uid)
        yield ref, data


def instance_metadata(data: bytes, bulk_base: str) -> dict[str, Any]:
    """One instance's header as DICOM JSON (PS3.18 Annex F), large values as BulkDataURIs.

    `bulk_base` is the instance's absolute URL; a bulk value is `{bulk_base}/bulk/{tag}`.
    Kept apart from any request so it can be computed at ingest and cached later.
    """
    ds = dcmread(io.BytesIO(data), force=True)

    def bulk_uri(element: DataElement) -> str:
        return f"{bulk_base}/bulk/{element.tag:08X}"

    meta: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk_uri
    )
    # Pixel data is always fetched apart, however small: viewers expect a URI, not base64.
    for tag in _PIXEL_TAGS:
        element = meta.get(tag)
        if element is not None and "InlineBinary" in element:
            meta[tag] = {"vr": element["vr"], "BulkDataURI": f"{bulk_base}/bulk/{tag}"}
    return meta


def metadata_for_each(
    archive: Archive, factory: sessionmaker[Session], refs: list[InstanceRef], root: str
) -> Iterator[dict[str, Any]]:
    """DICOM JSON of each instance, read one at a time; `root` is the DICOMweb base URL."""
    for ref, data in read_each(archive, factory, refs):
        yield instance_metadata(data, root + ref.path())
