"""Kept measurements: computing them for a stored instance, reading them in scope, overruling.

Scope follows WADO: an instance is found through `archive.visible_study` (a refusal audited
there), and every read of patient data here is audited under an `ecg.*` action.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from telehealth.archive.models import Instance, Series, Study
from telehealth.archive.service import (
    Archive,
    InstanceLocation,
    InstanceNotFound,
    visible_study,
)
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.clock import SYSTEM_CLOCK, Clock
from telehealth.db import transaction
from telehealth.ecg.models import EcgMeasurement, EcgOriginal, MeasurementStatus
from telehealth.ecg.service.dicom_waveform import ECG_SOP_CLASSES, read_dicom_ecg, rhythm_of
from telehealth.ecg.service.measure import ALGORITHM, SCALARS, Measurements, measure_record
from telehealth.ecg.service.samples import SAMPLES_CACHE
from telehealth.ecg.service.triage import TriageReason, TriageThresholds, triage
from telehealth.ecg.service.waveform import LEAD_NUMBER_BY_NAME, EcgRecord, EcgUnreadable
from telehealth.errors import Forbidden, Invalid, NotFound
from telehealth.events import EventBus, Topic

log = logging.getLogger(__name__)

# Payload: see `_announce`.
ECG_MEASURED = Topic.ECG_MEASURED


class NotAnEcgInstance(NotFound):
    """The instance exists (and is visible) but is not an ECG waveform."""


class MeasurementsPending(NotFound):
    """The ECG has not been measured yet (the worker is on it); ask again shortly."""


class OriginalNotFound(NotFound):
    """The ECG was not converted from an uploaded file."""


class NotAReader(Forbidden):
    """Only readers (specialists) and admins may overrule measurements."""


class BadReaderValue(Invalid):
    """A reader's value is of the wrong kind for its field."""


@dataclass(frozen=True)
class EcgInstance:
    """An ECG instance the actor may see, from one index read."""

    instance_pk: int
    sop_instance_uid: str
    study_instance_uid: str
    institution_id: int
    sha256: str
    location: InstanceLocation  # read with Archive.read_at, outside any transaction


def find_instance(session: Session, actor: auth.Actor, sop_uid: str, *, action: str) -> EcgInstance:
    """Raises InstanceNotFound / StudyNotFound (missing or out of scope, not told apart, the
    refusal audited), NotAnEcgInstance. Audits the access under `action`."""
    auth.require(actor, auth.Permission.VIEW_STUDIES)
    row = session.execute(
        select(
            Instance.id,
            Instance.sop_class_uid,
            Instance.sha256,
            Instance.state,
            Instance.spool_name,
            Instance.object_key,
            Study.study_instance_uid,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Instance.sop_instance_uid == sop_uid)
    ).first()
    if row is None:
        auth.audit(
            session,
            actor,
            action,
            outcome=AuditOutcome.FAILED,
            object_type="instance",
            object_id=sop_uid,
        )
        raise InstanceNotFound(f"no instance {sop_uid}")
    _, institution_id = visible_study(
        session, actor, row.study_instance_uid, action=action, object_id=sop_uid
    )
    if row.sop_class_uid not in ECG_SOP_CLASSES:
        raise NotAnEcgInstance(f"instance {sop_uid} is not an ECG waveform")
    auth.audit(session, actor, action, object_type="instance", object_id=sop_uid)
    location = InstanceLocation(sop_uid, row.state, row.spool_name, row.object_key)
    return EcgInstance(
        row.id, sop_uid, row.study_instance_uid, institution_id, row.sha256, location
    )


def load_record(archive: Archive, instance: EcgInstance) -> EcgRecord:
    """The instance's rhythm group. Raises InstanceNotFound, StoreUnavailable, EcgUnreadable."""
    return rhythm_of(read_dicom_ecg(archive.read_at(instance.location)))


# --- computing --------------------------------------------------------------------------------


def compute(
    archive: Archive,
    factory: sessionmaker[Session],
    sop_uid: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    events: EventBus | None = None,
    thresholds: TriageThresholds | None = None,
) -> EcgMeasurement:
    """Measure a stored ECG instance and keep the result (replacing the automatic values,
    keeping a reader's). An unreadable ECG is kept as FAILED with the reason.

    Reads and writes in two short transactions: measuring (≈ 0.1 s) holds none, so it
    never holds SQLite's write lock. Raises InstanceNotFound.
    """
    with transaction(factory) as session:
        row = session.execute(
            select(
                Instance.id,
                Instance.sha256,
                Instance.state,
                Instance.spool_name,
                Instance.object_key,
            ).where(Instance.sop_instance_uid == sop_uid)
        ).first()
    if row is None:
        raise InstanceNotFound(f"no instance {sop_uid}")
    instance_pk, sha256, state, spool_name, key = row
    # Read outside the transaction: on SQLite it holds the write lock every ingest needs.
    data = archive.read_at(InstanceLocation(sop_uid, state, spool_name, key))
    error = ""
    try:
        record = rhythm_of(read_dicom_ecg(data))
        _prepare_samples(sha256, record)
        automatic = measure_record(record).as_dict()
        status = MeasurementStatus.COMPUTED
    except EcgUnreadable as exc:
        automatic, status, error = {}, MeasurementStatus.FAILED, str(exc)
    except (ValueError, IndexError, FloatingPointError) as exc:
        # A signal the pipeline has not met before: keep the failure instead of retrying
        # forever; the reader measures by hand and recompute runs again after a fix.
        log.exception("ECG measurement failed on instance %s", instance_pk)
        automatic, status, error = {}, MeasurementStatus.FAILED, f"measurement failed: {exc}"
    # The worker and a reader's request may measure the same instance at once; on PostgreSQL
    # the second insert then meets the first's row, and simply updates it on a second try.
    for attempt in range(2):
        try:
            with transaction(factory) as session:
                kept = session.get(EcgMeasurement, instance_pk)
                if kept is None:
                    kept = EcgMeasurement(
                        instance_pk=instance_pk, reader_values=None, reader_comment=""
                    )
                    session.add(kept)
                kept.sha256 = sha256
                kept.status = status
                kept.automatic = automatic
                kept.error = error
                kept.algorithm = ALGORITHM
                kept.computed_at = clock.now()
                session.flush()
            break
        except IntegrityError:
            if attempt:
                raise
    if events is not None:
        _announce(factory, events, kept, sop_uid, thresholds or TriageThresholds())
    return kept


def _prepare_samples(sha256: str, record: EcgRecord) -> None:
    """The viewer's samples from the same parse, so its first open finds them ready; a
    failure here is the samples request's to report, never the measurement's."""
    try:
        SAMPLES_CACHE.remember(sha256, record)
    except Exception:
        log.exception("ECG samples of an instance could not be prepared")


def _announce(
    factory: sessionmaker[Session],
    events: EventBus,
    kept: EcgMeasurement,
    sop_uid: str,
    thresholds: TriageThresholds,
) -> None:
    """Publish ECG_MEASURED: {sop_instance_uid, study_instance_uid, institution_id, status,
    values (the effective ones), triage (reasons without request flags)}."""
    with transaction(factory) as session:
        study = session.execute(
            select(Study.study_instance_uid, Study.institution_id)
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Instance.id == kept.instance_pk)
        ).first()
    if study is None:
        return
    values = effective_values(kept.automatic, kept.reader_values)
    events.publish(
        ECG_MEASURED,
        {
            "sop_instance_uid": sop_uid,
            "study_instance_uid": study.study_instance_uid,
            "institution_id": study.institution_id,
            "status": str(kept.status),
            "values": values,
            "triage": [r.as_dict() for r in triage(values, (), thresholds)],
        },
    )


# --- reading and overruling -------------------------------------------------------------------


def effective_values(
    automatic: Mapping[str, Any], reader: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The values that count: a reader's where given (even None), the automatic ones else.

    Per-lead amplitudes are overruled as "leads.V1.r_uv" and come back under "leads".
    """
    values: dict[str, Any] = {name: automatic.get(name) for name in SCALARS}
    leads = {name: dict(amplitudes) for name, amplitudes in (automatic.get("leads") or {}).items()}
    for key, value in (reader or {}).items():
        if key in SCALARS:
            values[key] = value
        elif _lead_field(key) is not None:
            lead, amplitude = key.split(".")[1:]
            leads.setdefault(lead, {})[amplitude] = value
    values["leads"] = leads
    return values


_AMPLITUDES = {"p_uv", "q_uv", "r_uv", "s_uv", "t_uv", "st_uv"}


def _lead_field(key: str) -> tuple[str, str] | None:
    """("V1", "r_uv") for "leads.V1.r_uv"; None for anything else."""
    parts = key.split(".")
    if (
        len(parts) == 3
        and parts[0] == "leads"
        and parts[2] in _AMPLITUDES
        and parts[1].upper() in LEAD_NUMBER_BY_NAME
    ):
        return parts[1], parts[2]
    return None


@dataclass(frozen=True)
class MeasurementView:
    instance: EcgInstance
    kept: EcgMeasurement
    original: EcgOriginal | None
    effective: dict[str, Any]
    triage: list[TriageReason]
    reader_name: str | None


def get_measurements(
    session: Session,
    actor: auth.Actor,
    sop_uid: str,
    *,
    thresholds: TriageThresholds,
    request_flags: tuple[str, ...] = (),
) -> MeasurementView:
    """Raises InstanceNotFound/StudyNotFound, NotAnEcgInstance, MeasurementsPending."""
    instance = find_instance(session, actor, sop_uid, action="ecg.measurements.read")
    kept = session.get(EcgMeasurement, instance.instance_pk)
    if kept is None:
        raise MeasurementsPending(f"ECG {sop_uid} has not been measured yet")
    return _view(session, instance, kept, thresholds, request_flags)


def _view(
    session: Session,
    instance: EcgInstance,
    kept: EcgMeasurement,
    thresholds: TriageThresholds,
    request_flags: tuple[str, ...],
) -> MeasurementView:
    from telehealth.auth.models import User

    values = effective_values(kept.automatic, kept.reader_values)
    reader = session.get(User, kept.reader_user_id) if kept.reader_user_id else None
    return MeasurementView(
        instance=instance,
        kept=kept,
        original=session.get(EcgOriginal, instance.instance_pk),
        effective=values,
        triage=triage(values, request_flags, thresholds),
        reader_name=reader.username if reader else None,
    )


_BOOLEAN = {"rhythm_regular"}


def set_reader_values(
    session: Session,
    actor: auth.Actor,
    sop_uid: str,
    values: Mapping[str, Any],
    *,
    comment: str = "",
    thresholds: TriageThresholds,
    clock: Clock = SYSTEM_CLOCK,
) -> MeasurementView:
    """Replace the reader's values (kept beside the automatic ones, which stay as they are).

    An empty mapping withdraws the reader's values. Raises NotAReader, BadReaderValue,
    InstanceNotFound/StudyNotFound, NotAnEcgInstance, MeasurementsPending.
    """
    if not (actor.can(auth.Permission.READ_CASES) or actor.can(auth.Permission.ADMINISTER)):
        raise NotAReader("only readers and admins may overrule ECG measurements")
    for name, value in values.items():
        amplitude = _lead_field(name)
        if name not in SCALARS and amplitude is None:
            raise BadReaderValue(f"{name} is not a measurement a reader can set")
        if value is None:
            continue
        if name in _BOOLEAN:
            if not isinstance(value, bool):
                raise BadReaderValue(f"{name} must be true, false or null")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise BadReaderValue(f"{name} must be a number or null")
        elif amplitude is None and name != "frontal_axis_deg" and not (0 <= value <= 100_000):
            raise BadReaderValue(f"{name} = {value} is out of range")
    instance = find_instance(session, actor, sop_uid, action="ecg.measurements.overrule")
    kept = session.get(EcgMeasurement, instance.instance_pk)
    if kept is None:
        raise MeasurementsPending(f"ECG {sop_uid} has not been measured yet")
    kept.reader_values = dict(values) if values else None
    kept.reader_comment = comment if values else ""
    kept.reader_user_id = actor.user_id if values else None
    kept.reader_at = clock.now() if values else None
    auth.audit(
        session,
        actor,
        "ecg.measurements.overrule",
        object_type="instance",
        object_id=sop_uid,
        detail=", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "withdrawn",
    )
    session.flush()
    return _view(session, instance, kept, thresholds, ())


def original_of(session: Session, actor: auth.Actor, sop_uid: str) -> EcgOriginal:
    """The uploaded original of a converted ECG. Raises OriginalNotFound and what
    find_instance raises."""
    instance = find_instance(session, actor, sop_uid, action="ecg.original")
    original = session.get(EcgOriginal, instance.instance_pk)
    if original is None:
        raise OriginalNotFound(f"ECG {sop_uid} arrived as DICOM: there is no other original")
    return original


def measurements_of(kept: EcgMeasurement) -> Measurements | None:
    return Measurements.from_dict(kept.automatic) if kept.automatic else None


def triage_for_study(
    session: Session,
    study_instance_uid: str,
    request_flags: tuple[str, ...] | set[str],
    thresholds: TriageThresholds,
) -> list[TriageReason]:
    """Triage over every measured ECG of a study (the hook the cases domain calls when it
    creates or updates an ECG case). No actor: the caller has its own authority."""
    rows = session.execute(
        select(EcgMeasurement.automatic, EcgMeasurement.reader_values)
        .join(Instance, Instance.id == EcgMeasurement.instance_pk)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_instance_uid)
    ).all()
    reasons: dict[str, TriageReason] = {}
    for reason in triage({}, tuple(request_flags), thresholds):
        reasons[str(reason.code)] = reason
    for automatic, reader in rows:
        for reason in triage(effective_values(automatic or {}, reader), (), thresholds):
            reasons.setdefault(str(reason.code), reason)
    return sorted(reasons.values(), key=lambda r: 0 if r.priority == "stat" else 1)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
