"""Instance metadata computed once and kept in the database, so `metadata` is one query.

A viewer opening a 500-slice series asks for its metadata first and shows nothing until it
arrives. Parsing 500 objects fetched from the store takes seconds; reading 500 rows of JSON
text takes milliseconds. The text is computed when a study becomes stable (MetadataWarmer),
or on first request for anything not yet done, and kept with the sha256 of the version it
describes, so a replaced instance is recomputed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series, Study
from telehealth.archive.service import Archive
from telehealth.db import DatabaseUnavailable, transaction
from telehealth.dicomweb.models import InstanceMetadata
from telehealth.dicomweb.service.wado import (
    REF_COLUMNS,
    InstanceRef,
    instance_metadata,
    instance_ref,
    read_each,
)
from telehealth.events import EventBus, Topic

log = logging.getLogger(__name__)

# Stands for the DICOMweb base URL in stored JSON; the base depends on the request's host.
ROOT_PLACEHOLDER = "@@dicomweb-root@@"
_SAVE_BATCH = 64
_LOAD_CHUNK = 500  # rows per IN (...) list: well inside every database's parameter limit


def metadata_text(data: bytes, ref: InstanceRef) -> str:
    """An instance's DICOM JSON as compact text, BulkDataURIs under ROOT_PLACEHOLDER."""
    meta = instance_metadata(data, ROOT_PLACEHOLDER + ref.path())
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False)


def metadata_texts(
    archive: Archive, factory: sessionmaker[Session], refs: list[InstanceRef], root: str
) -> Iterator[str]:
    """The DICOM JSON text of each instance, in order, with `root` as the base URL.

    Instances without kept metadata are read (in parallel, see read_each), computed and
    kept for the next request.
    """
    with transaction(factory) as session:
        kept = _load(session, refs)
    # json.dumps makes the root safe inside a JSON string (a host header is client input).
    root_text = json.dumps(root, ensure_ascii=False)[1:-1]
    computed = _compute(archive, factory, [ref for ref in refs if ref.instance_pk not in kept])
    for ref in refs:
        text = kept.get(ref.instance_pk)
        if text is None:
            text = next(computed)
        yield text.replace(ROOT_PLACEHOLDER, root_text)
    for _ in computed:  # let the generator save its last batch
        pass


def _load(session: Session, refs: list[InstanceRef]) -> dict[int, str]:
    wanted = {ref.instance_pk: ref.sha256 for ref in refs}
    kept: dict[int, str] = {}
    keys = list(wanted)
    for start in range(0, len(keys), _LOAD_CHUNK):
        rows = session.execute(
            select(
                InstanceMetadata.instance_pk, InstanceMetadata.sha256, InstanceMetadata.json
            ).where(InstanceMetadata.instance_pk.in_(keys[start : start + _LOAD_CHUNK]))
        ).all()
        kept.update((pk, text) for pk, digest, text in rows if wanted[pk] == digest)
    return kept


def _compute(
    archive: Archive, factory: sessionmaker[Session], refs: list[InstanceRef]
) -> Iterator[str]:
    """Yield each instance's metadata text, saving them in batches as they are made."""
    batch: list[tuple[InstanceRef, str]] = []
    for ref, data in read_each(archive, refs):
        text = metadata_text(data, ref)
        batch.append((ref, text))
        if len(batch) >= _SAVE_BATCH:
            _save(factory, batch)
            batch = []
        yield text
    if batch:
        _save(factory, batch)


def _save(factory: sessionmaker[Session], batch: Iterable[tuple[InstanceRef, str]]) -> None:
    """Keep computed metadata; best effort, since it can always be computed again."""
    rows = [{"instance_pk": r.instance_pk, "sha256": r.sha256, "json": t} for r, t in batch]
    try:
        with transaction(factory) as session:
            session.execute(
                delete(InstanceMetadata).where(
                    InstanceMetadata.instance_pk.in_([row["instance_pk"] for row in rows])
                )
            )
            session.execute(InstanceMetadata.__table__.insert(), rows)
    except (IntegrityError, DatabaseUnavailable) as exc:
        # Another request kept the same rows meanwhile, or an instance was just deleted.
        log.info("metadata of %d instances not kept: %s", len(rows), type(exc).__name__)


def unwarmed_refs(session: Session, study_uid: str) -> list[InstanceRef]:
    """Instances of a study whose kept metadata is missing or describes an older version."""
    rows = session.execute(
        select(*REF_COLUMNS, InstanceMetadata.sha256)
        .select_from(Study)
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .outerjoin(InstanceMetadata, InstanceMetadata.instance_pk == Instance.id)
        .where(Study.study_instance_uid == study_uid)
    ).all()
    # The last column is the kept metadata's sha256: missing or another version.
    return [instance_ref(study_uid, row) for row in rows if row[-1] != row[3]]


class MetadataWarmer:
    """Computes the metadata of each study once it is stable, off every request's path.

    Waiting for "study stable" keeps this CPU work away from a modality that is still
    sending; a viewer that comes earlier computes what it needs itself (metadata_texts).
    """

    def __init__(self, archive: Archive, factory: sessionmaker[Session], events: EventBus) -> None:
        self.archive = archive
        self.factory = factory
        self._studies: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        events.subscribe(Topic.STUDY_STABLE, self._on_stable)

    def _on_stable(self, payload: dict[str, Any]) -> None:
        if self._thread is not None:
            self._studies.put(payload["study_instance_uid"])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metadata-warmer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._studies.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def warm(self, study_uid: str) -> int:
        """Compute and keep what a study lacks; returns how many instances were done."""
        with transaction(self.factory) as session:
            refs = unwarmed_refs(session, study_uid)
        return sum(1 for _ in _compute(self.archive, self.factory, refs))

    def _run(self) -> None:
        while (study_uid := self._studies.get()) is not None:
            try:
                self.warm(study_uid)
            except Exception:  # a viewer's request computes it later; nothing is lost
                log.exception("metadata of a stable study could not be computed")
