"""Index one received instance: patient, study, series and instance rows in one transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from telehealth.archive.models import (
    IngestSource,
    Instance,
    Patient,
    Series,
    StorageState,
    Study,
    SupersededObject,
)
from telehealth.archive.service.header import InstanceHeader
from telehealth.config import DuplicatePolicy
from telehealth.errors import Conflict, Forbidden


class StudyOwnedElsewhere(Forbidden):
    """The study belongs to another institution; one clinic cannot add to another's study."""


class DuplicateRejected(Conflict):
    """The SOP Instance UID is already stored with other bytes and the policy is `reject`."""


class IndexOutcome(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same UID, same bytes: nothing changes
    REPLACED = "replaced"  # same UID, new bytes: the old version is kept as superseded


@dataclass(frozen=True)
class Origin:
    """Who sent an instance and over what path; the institution owns what it sends."""

    source: IngestSource
    institution_id: int
    ae_title: str = ""
    address: str = ""


@dataclass(frozen=True)
class StoredCopy:
    """Where the bytes of a received instance are right now."""

    spool_name: str
    sha256: str
    size: int


def object_key(sop_instance_uid: str, sha256: str) -> str:
    """Keys are per version, so a replace never overwrites the bytes it supersedes."""
    return f"dicom/{sop_instance_uid}/{sha256}.dcm"


def index_instance(
    session: Session,
    header: InstanceHeader,
    origin: Origin,
    copy: StoredCopy,
    *,
    now: datetime,
    policy: DuplicatePolicy,
) -> tuple[IndexOutcome, str]:
    """Record a spooled instance in the index; return the outcome and the version's object key.

    Raises StudyOwnedElsewhere, DuplicateRejected.
    """
    found = session.connection().execute(_FIND_VERSION, {"uid": header.sop_instance_uid}).first()
    if found is not None and found.sha256 == copy.sha256:
        return IndexOutcome.DUPLICATE, found.object_key
    if found is not None and policy == DuplicatePolicy.REJECT:
        raise DuplicateRejected(
            f"SOP Instance {header.sop_instance_uid} is already stored with different content"
        )
    if found is None and _add_to_known_series(session, header, origin, copy, now):
        return IndexOutcome.NEW, object_key(header.sop_instance_uid, copy.sha256)

    study = _study_for(session, header, origin, now)
    series, new_series = _series_for(session, header, study)
    if found is None:
        instance = Instance(sop_instance_uid=header.sop_instance_uid, series_pk=series.id)
        session.add(instance)
        _fill(instance, header, origin, copy, now)
        series.num_instances += 1
        study.num_instances += 1
        study.num_series += int(new_series)
        study.size_bytes += copy.size
        session.flush()
        return IndexOutcome.NEW, instance.object_key

    existing = session.get_one(Instance, found.id)
    session.add(
        SupersededObject(
            sop_instance_uid=existing.sop_instance_uid,
            sha256=existing.sha256,
            object_key=existing.object_key,
            size_bytes=existing.size_bytes,
            state=existing.state,
            spool_name=existing.spool_name,
            superseded_at=now,
        )
    )
    old_series_pk = existing.series_pk
    existing.series_pk = series.id
    _fill(existing, header, origin, copy, now)
    session.flush()
    old_study_pk = session.scalar(select(Series.study_pk).where(Series.id == old_series_pk))
    _recount(session, {study.id, old_study_pk} - {None})
    return IndexOutcome.REPLACED, existing.object_key


# Built once: composing a statement costs SQLAlchemy more than the database takes to run it,
# and these run for every instance received.
# FOR UPDATE: the upload marker may be moving this row to STORED right now; without the lock a
# replace copies the stale state into SupersededObject (left "spooled" with its file gone)
# (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers).
_FIND_VERSION = (
    select(Instance.id, Instance.sha256, Instance.object_key)
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_FIND_SERIES = (
    select(Series.id, Series.study_pk, Study.institution_id, Study.modalities)
    .join(Study, Series.study_pk == Study.id)
    .where(
        Series.series_instance_uid == bindparam("series_uid"),
        Study.study_instance_uid == bindparam("study_uid"),
    )
)
_INSERT_INSTANCE = insert(Instance)
_BUMP_SERIES = (
    update(Series)
    .where(Series.id == bindparam("series_pk"))
    .values(num_instances=Series.num_instances + 1)
)
_BUMP_STUDY = (
    update(Study)
    .where(Study.id == bindparam("study_pk"))
    .values(
        num_instances=Study.num_instances + 1,
        size_bytes=Study.size_bytes + bindparam("size"),
        last_received_at=bindparam("now"),
        stable_at=None,
    )
)
_SET_MODALITIES = (
    update(Study)
    .where(Study.id == bindparam("study_pk"))
    .values(modalities=bindparam("modalities"))
)
# Every column _instance_values gives, plus the two the caller adds.
_INSTANCE_COLUMNS = [
    "sop_instance_uid",
    "series_pk",
    "sop_class_uid",
    "transfer_syntax_uid",
    "instance_number",
    "number_of_frames",
    "size_bytes",
    "sha256",
    "object_key",
    "state",
    "spool_name",
    "source",
    "source_ae",
    "source_address",
    "received_at",
    "stored_at",
]


def _add_to_known_series(
    session: Session, header: InstanceHeader, origin: Origin, copy: StoredCopy, now: datetime
) -> bool:
    """The common case, a new instance of a series already indexed, in a few plain statements.

    Most instances of a study arrive after its first; ORM loading and flushing of the study
    and series rows cost more than the whole C-STORE round trip. Returns False when the
    series is not known yet (the caller takes the general path). Raises StudyOwnedElsewhere.
    """
    conn = session.connection()
    row = conn.execute(
        _FIND_SERIES,
        {"series_uid": header.series_instance_uid, "study_uid": header.study_instance_uid},
    ).first()
    if row is None:
        return False
    _check_owner(row.institution_id, header, origin)
    values = _instance_values(header, origin, copy, now)
    values.update(sop_instance_uid=header.sop_instance_uid, series_pk=row.id)
    conn.execute(_INSERT_INSTANCE, values)
    conn.execute(_BUMP_SERIES, {"series_pk": row.id})
    conn.execute(_BUMP_STUDY, {"study_pk": row.study_pk, "size": copy.size, "now": now})
    modalities = _with_modality(row.modalities, header.modality)
    if modalities != row.modalities:
        conn.execute(_SET_MODALITIES, {"study_pk": row.study_pk, "modalities": modalities})
    return True


class KnownSeriesIndex:
    """index_instance's common case, a new instance of a series already indexed, run as plain
    statements on the database driver's cursor.

    The statements are the ones above, compiled once by SQLAlchemy for the engine's dialect
    with their bind processing (enums, UTC datetimes), so the rows are the same; what is left
    out is SQLAlchemy's per-execution machinery, ~0.1 ms a statement against ~0.01 ms for
    SQLite to run it, five times for every instance received.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self._find_version = _Prepared(_FIND_VERSION, dialect)
        self._find_series = _Prepared(_FIND_SERIES, dialect)
        self._insert = _Prepared(_INSERT_INSTANCE, dialect, _INSTANCE_COLUMNS)
        self._bump_series = _Prepared(_BUMP_SERIES, dialect)
        self._bump_study = _Prepared(_BUMP_STUDY, dialect)
        self._set_modalities = _Prepared(_SET_MODALITIES, dialect)

    def add(
        self, cursor: Any, header: InstanceHeader, origin: Origin, copy: StoredCopy, now: datetime
    ) -> str | None:
        """Index a new instance of a known series; return its object key, or None (nothing
        written) when the instance or its series is not that case: index_instance then
        decides. Raises StudyOwnedElsewhere, sqlalchemy DBAPIError."""
        if self._find_version.first(cursor, {"uid": header.sop_instance_uid}) is not None:
            return None
        row = self._find_series.first(
            cursor,
            {"series_uid": header.series_instance_uid, "study_uid": header.study_instance_uid},
        )
        if row is None:
            return None
        series_pk, study_pk, owner_id, old_modalities = row
        _check_owner(owner_id, header, origin)
        values = _instance_values(header, origin, copy, now)
        values.update(sop_instance_uid=header.sop_instance_uid, series_pk=series_pk)
        self._insert.run(cursor, values)
        self._bump_series.run(cursor, {"series_pk": series_pk})
        self._bump_study.run(cursor, {"study_pk": study_pk, "size": copy.size, "now": now})
        modalities = _with_modality(old_modalities, header.modality)
        if modalities != old_modalities:
            self._set_modalities.run(cursor, {"study_pk": study_pk, "modalities": modalities})
        return str(values["object_key"])


class _Prepared:
    """A Core statement compiled once for a dialect, run on a DBAPI cursor with SQLAlchemy's
    bind processing; driver errors come out as SQLAlchemy's (OperationalError, ...)."""

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, keys: list[str] | None = None
    ) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=keys))
        self.sql = compiled.string
        self._dialect = dialect
        self._positional = compiled.positional
        binds = {name: bind for bind, name in compiled.bind_names.items()}  # as rendered
        self._names = list(compiled.positiontup or []) if compiled.positional else list(binds)
        self._fixed = compiled.construct_params(_check=False)  # values given in the statement
        self._processors = {name: binds[name].type.bind_processor(dialect) for name in self._names}

    def run(self, cursor: Any, params: dict[str, Any]) -> None:
        values = []
        for name in self._names:
            value = params[name] if name in params else self._fixed[name]
            process = self._processors[name]
            values.append(process(value) if process is not None else value)
        driver_params = (
            tuple(values) if self._positional else dict(zip(self._names, values, strict=True))
        )
        try:
            cursor.execute(self.sql, driver_params)
        except self._dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                self.sql,
                driver_params,
                exc,
                self._dialect.loaded_dbapi.Error,
                connection_invalidated=self._dialect.is_disconnect(
                    exc, getattr(cursor, "connection", None), cursor
                ),
                dialect=self._dialect,
            ) from exc

    def first(self, cursor: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        self.run(cursor, params)
        row = cursor.fetchone()
        cursor.fetchall()  # leave the cursor clean for the next statement
        return tuple(row) if row is not None else None


def _check_owner(owner_id: int, header: InstanceHeader, origin: Origin) -> None:
    if owner_id != origin.institution_id and origin.source not in (
        IngestSource.INTERNAL,
        IngestSource.RECOVERY,
    ):
        raise StudyOwnedElsewhere(
            f"study {header.study_instance_uid} belongs to another institution"
        )


def _with_modality(modalities: str, modality: str) -> str:
    if not modality or modality in modalities.split("\\"):
        return modalities
    return "\\".join(filter(None, [modalities, modality]))[:64]


def _instance_values(
    header: InstanceHeader, origin: Origin, copy: StoredCopy, now: datetime
) -> dict[str, object]:
    """Every column of an instance row that comes from the received version."""
    return {
        "sop_class_uid": header.sop_class_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "instance_number": header.instance_number,
        "number_of_frames": header.number_of_frames,
        "size_bytes": copy.size,
        "sha256": copy.sha256,
        "object_key": object_key(header.sop_instance_uid, copy.sha256),
        "state": StorageState.SPOOLED,
        "spool_name": copy.spool_name,
        "source": origin.source,
        "source_ae": origin.ae_title,
        "source_address": origin.address,
        "received_at": now,
        "stored_at": None,
    }


def _fill(
    instance: Instance, header: InstanceHeader, origin: Origin, copy: StoredCopy, now: datetime
) -> None:
    for column, value in _instance_values(header, origin, copy, now).items():
        setattr(instance, column, value)


def _study_for(session: Session, header: InstanceHeader, origin: Origin, now: datetime) -> Study:
    study = session.scalar(
        select(Study).where(Study.study_instance_uid == header.study_instance_uid)
    )
    if study is not None:
        _check_owner(study.institution_id, header, origin)
        study.last_received_at = now
        study.stable_at = None
        study.modalities = _with_modality(study.modalities, header.modality)
        return study
    patient = _patient_for(session, header, origin)
    study = Study(
        study_instance_uid=header.study_instance_uid,
        patient_pk=patient.id,
        institution_id=origin.institution_id,
        study_date=header.study_date,
        study_time=header.study_time,
        accession_number=header.accession_number,
        description=header.study_description,
        referring_physician=header.referring_physician,
        modalities=header.modality,
        num_series=0,
        num_instances=0,
        size_bytes=0,
        first_received_at=now,
        last_received_at=now,
    )
    session.add(study)
    session.flush()
    return study


def _study_patient_id(study_instance_uid: str) -> str:
    """The stand-in ID ("~" + study UID) for a patient sent without one, kept within the
    64-character column: a 64-character study UID is replaced by a digest of it."""
    patient_id = f"~{study_instance_uid}"
    if len(patient_id) <= 64:
        return patient_id
    return "~" + hashlib.sha256(study_instance_uid.encode()).hexdigest()[:63]


def _patient_for(session: Session, header: InstanceHeader, origin: Origin) -> Patient:
    # Patient IDs are local to the issuer. An empty ID must not merge strangers into one
    # record, so such a patient is kept per study.
    patient_id = header.patient_id or _study_patient_id(header.study_instance_uid)
    patient = session.scalar(
        select(Patient).where(
            Patient.issuer_id == origin.institution_id, Patient.patient_id == patient_id
        )
    )
    if patient is None:
        patient = Patient(
            issuer_id=origin.institution_id,
            patient_id=patient_id,
            name=header.patient_name,
            birth_date=header.patient_birth_date,
            sex=header.patient_sex,
        )
        session.add(patient)
        session.flush()
    elif header.patient_name and header.patient_name != patient.name:
        patient.name = header.patient_name  # the newest demographics win, as in a PACS
    return patient


def _series_for(session: Session, header: InstanceHeader, study: Study) -> tuple[Series, bool]:
    series = session.scalar(
        select(Series).where(Series.series_instance_uid == header.series_instance_uid)
    )
    if series is not None:
        return series, False
    series = Series(
        series_instance_uid=header.series_instance_uid,
        study_pk=study.id,
        modality=header.modality,
        series_number=header.series_number,
        description=header.series_description,
        body_part=header.body_part,
        num_instances=0,
    )
    session.add(series)
    session.flush()
    return series, True


def _recount(session: Session, study_pks: set[int]) -> None:
    """Recompute counters after an instance moved between series or studies (rare)."""
    for study_pk in study_pks:
        series_pks = list(session.scalars(select(Series.id).where(Series.study_pk == study_pk)))
        for series_pk in series_pks:
            count = session.scalar(
                select(func.count()).select_from(Instance).where(Instance.series_pk == series_pk)
            )
            session.execute(
                update(Series).where(Series.id == series_pk).values(num_instances=count)
            )
        totals = session.execute(
            select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0))
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == study_pk)
        ).one()
        nonempty = session.scalar(
            select(func.count())
            .select_from(Series)
            .where(Series.study_pk == study_pk, Series.num_instances > 0)
        )
        session.execute(
            update(Study)
            .where(Study.id == study_pk)
            .values(num_instances=totals[0], size_bytes=totals[1], num_series=nonempty)
        )
