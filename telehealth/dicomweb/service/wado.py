"""WADO-RS (PS3.18 §10.4): instances as stored, and their headers as DICOM JSON.

A study can be gigabytes. Nothing here holds more than one instance in memory, and no database
session lives across a whole retrieve: on SQLite every transaction takes the write lock, so a
session held while a slow client downloads would stall every ingest.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from telehealth.archive.models import Instance, Series
from telehealth.archive.service import (
    Archive,
    InstanceLocation,
    InstanceNotFound,
    visible_study,
)
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.db import transaction
from telehealth.dicomweb.service.common import SeriesNotFound, check_uid
from telehealth.dicomweb.service.multipart import close_delimiter, part_head

log = logging.getLogger(__name__)

# Values longer than this become BulkDataURIs instead of inline base64 in metadata: a viewer
# wants the header fast and fetches pixels separately.
BULK_DATA_THRESHOLD = 1024
_PIXEL_TAGS = ("7FE00008", "7FE00009", "7FE00010")  # Float, Double Float, Pixel Data
# Parallel object reads per retrieve; shared by all requests so load stays bounded.
READ_AHEAD = 4
_READERS = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="wado-read")


@dataclass(frozen=True)
class InstanceRef:
    study_uid: str
    series_uid: str
    sop_uid: str
    # From the same index read, so a retrieve needs no further query per instance.
    instance_pk: int = 0
    sha256: str = ""
    location: InstanceLocation | None = None
    size_bytes: int = 0  # as indexed; a retrieve announces its length from these

    def path(self) -> str:
        """The instance's resource path under the DICOMweb root (PS3.18 §10.4.1)."""
        return f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


# What an InstanceRef needs from the index, in instance_ref's order.
REF_COLUMNS = (
    Series.series_instance_uid,
    Instance.sop_instance_uid,
    Instance.id,
    Instance.sha256,
    Instance.state,
    Instance.spool_name,
    Instance.object_key,
    Instance.size_bytes,
)


def instance_ref(study_uid: str, row: Sequence[Any]) -> InstanceRef:
    """An InstanceRef from a row that starts with REF_COLUMNS."""
    series, sop, pk, digest, state, spool_name, key, size = row[: len(REF_COLUMNS)]
    return InstanceRef(
        study_uid,
        series,
        sop,
        instance_pk=pk,
        sha256=digest,
        location=InstanceLocation(sop, state, spool_name, key),
        size_bytes=size,
    )


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
        select(*REF_COLUMNS)
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
    return [instance_ref(study_uid, row) for row in rows]


def read_instance_bytes(archive: Archive, ref: InstanceRef) -> bytes:
    """One instance's bytes as stored, at the location the index gave (no transaction), else
    through read_instance in a short transaction. Raises InstanceNotFound, StoreUnavailable.
    """
    if ref.location is None:
        with transaction(archive.factory) as session:
            return archive.read_instance(session, ref.sop_uid)
    return archive.read_at(ref.location)


def read_each(
    archive: Archive, refs: list[InstanceRef], *, ahead: int = READ_AHEAD
) -> Iterator[tuple[InstanceRef, bytes]]:
    """Each instance's bytes exactly as stored, in order, with up to `ahead` reads in flight.

    An object store answers one GET at a time far slower than a client can take a stream;
    reading ahead in parallel keeps the stream full while holding at most `ahead` instances.
    Raises InstanceNotFound or StoreUnavailable part-way through; by then the response has
    started, so the caller can only cut the stream short (the client sees it truncated).
    """

    def read(ref: InstanceRef) -> bytes:
        return read_instance_bytes(archive, ref)

    pending: deque[tuple[InstanceRef, futures.Future[bytes]]] = deque()
    queued = iter(refs)
    try:
        for ref in itertools.islice(queued, ahead):
            pending.append((ref, _READERS.submit(read, ref)))
        while pending:
            ref, reading = pending.popleft()
            data = reading.result()
            for following in itertools.islice(queued, 1):
                pending.append((following, _READERS.submit(read, following)))
            yield ref, data
    finally:
        for _, reading in pending:  # the client went away: do not read the rest
            reading.cancel()


async def stream_each(
    archive: Archive, refs: list[InstanceRef], *, ahead: int = READ_AHEAD
) -> AsyncIterator[tuple[InstanceRef, bytes]]:
    """read_each for an event loop: the same reads ahead, awaited instead of waited for.

    A sync iterator under a streaming response costs a thread hand-off per item; here the
    loop only wakes when a read is done.
    """

    def read(ref: InstanceRef) -> bytes:
        return read_instance_bytes(archive, ref)

    pending: deque[tuple[InstanceRef, asyncio.Future[bytes]]] = deque()
    queued = iter(refs)
    try:
        for ref in itertools.islice(queued, ahead):
            pending.append((ref, asyncio.wrap_future(_READERS.submit(read, ref))))
        while pending:
            ref, reading = pending.popleft()
            data = await reading
            for following in itertools.islice(queued, 1):
                pending.append((following, asyncio.wrap_future(_READERS.submit(read, following))))
            yield ref, data
    finally:
        for _, reading in pending:  # the client went away: do not read the rest
            reading.cancel()


class SizeChanged(Exception):
    """An instance's bytes are not the size indexed when its retrieve began (replaced since):
    the announced length can no longer be kept, so the stream has to be cut."""


@dataclass(frozen=True)
class MultipartRetrieve:
    """A retrieve's multipart/related body, its exact length known before the first byte.

    Announcing the length lets the server pass each instance's bytes to the socket as they
    are; a chunked body would be copied once more into chunk framing.
    """

    boundary: str
    length: int
    pieces: AsyncIterator[bytes]


def multipart_retrieve(
    archive: Archive, refs: list[InstanceRef], boundary: str
) -> MultipartRetrieve:
    """The instances as parts of type application/dicom, bytes exactly as stored.

    The pieces raise InstanceNotFound, StoreUnavailable or SizeChanged part-way through.
    """
    heads = [
        part_head(boundary, "application/dicom", ref.size_bytes, first=i == 0)
        for i, ref in enumerate(refs)
    ]
    tail = close_delimiter(boundary, after_part=bool(refs))
    length = sum(map(len, heads)) + sum(ref.size_bytes for ref in refs) + len(tail)

    async def pieces() -> AsyncIterator[bytes]:
        # The framing goes as its own small piece: joining it to the data would copy the data.
        number = 0
        async for ref, data in stream_each(archive, refs):
            if len(data) != ref.size_bytes:
                raise SizeChanged(f"instance {ref.sop_uid} changed size during a retrieve")
            yield heads[number]
            yield data
            number += 1
        yield tail

    return MultipartRetrieve(boundary, length, pieces())


def instance_metadata(data: bytes, bulk_base: str) -> dict[str, Any]:
    """One instance's header as DICOM JSON (PS3.18 Annex F), large values as BulkDataURIs.

    `bulk_base` is the instance's absolute URL; a bulk value is `{bulk_base}/bulk/{tag}`.
    Kept apart from any request so it can be computed at ingest and cached later.
    """
    ds = dcmread(io.BytesIO(data), force=True)
    meta: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_element_handler=bulk_data_uri_handler(ds, bulk_base),
    )
    # Pixel data is always fetched apart, however small: viewers expect a URI, not base64.
    for tag in _PIXEL_TAGS:
        element = meta.get(tag)
        if element is not None and "InlineBinary" in element:
            meta[tag] = {"vr": element["vr"], "BulkDataURI": f"{bulk_base}/bulk/{tag}"}
    return meta


def bulk_data_uri_handler(ds: Dataset, bulk_base: str) -> Callable[[DataElement], str]:
    """A `bulk_data_element_handler` for `ds.to_json_dict` naming each element by its path.

    pydicom hands the handler only the element, so nested elements would all get their bare
    tag and two waveforms the same URI. Walking the dataset first maps each element object to
    its path; to_json_dict then meets the same objects (a dataset keeps the elements it
    converted), so `retrieve_bulk_data` finds exactly the value the metadata described.
    """
    paths: dict[int, str] = {}

    def walk(dataset: Dataset, prefix: str) -> None:
        for element in dataset:
            path = f"{prefix}{element.tag:08X}"
            paths[id(element)] = path
            if element.VR == "SQ":
                for number, item in enumerate(element.value):
                    walk(item, f"{path}/{number}/")

    walk(ds, "")
    return lambda element: f"{bulk_base}/bulk/{paths.get(id(element), f'{element.tag:08X}')}"
