"""QIDO-RS (PS3.18 §10.6): search studies, series and instances in the index, never the objects.

Every attribute returned comes from the index tables, so a search costs one SQL query however
large the studies are. Matching follows PS3.4 §C.2.2.2: single value, wildcard (`*`, `?`),
range (dates and times), UID list; an empty value only asks for the attribute to be returned.

The one matcher of the hub: DIMSE C-FIND, C-MOVE and C-GET (dicom_node.query_retrieve) turn
their identifiers into these parameters, so a query answers the same over HTTP and DIMSE. For
them it also searches PATIENT level and returns every match at once (`paged=False`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from telehealth.archive.models import Instance, Patient, Series, Study
from telehealth.archive.service import visible_study
from telehealth.auth import service as auth
from telehealth.auth.models import AuditOutcome
from telehealth.dicomweb.service.common import BadDicomwebRequest, SeriesNotFound, check_uid

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Parameters of the request itself, not attributes to match (PS3.18 §8.3.4).
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


class Level(IntEnum):
    """Query levels; an attribute of a level is available to every level below it.

    PATIENT serves DIMSE's Patient Root model; QIDO-RS has no patient resource.
    """

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


@dataclass(frozen=True)
class Row:
    patient: Patient
    study: Study | None = None  # None at PATIENT level
    series: Series | None = None
    instance: Instance | None = None


@dataclass(frozen=True)
class Attr:
    keyword: str
    tag: str  # eight upper-case hex digits, the DICOM JSON key
    vr: str
    column: InstrumentedAttribute[Any]
    match: str  # "uid" | "date" | "time" | "str" | "pn" | "int" | "modalities"
    special: Callable[[Row], Any] | None = None  # when the column is not the value as is

    @property
    def level(self) -> Level:
        return _LEVEL_OF[cast(type, self.column.class_)]

    def value(self, row: Row) -> Any:
        if self.special is not None:
            return self.special(row)
        return getattr(getattr(row, _ROW_FIELD[cast(type, self.column.class_)]), self.column.key)


_LEVEL_OF: dict[type, Level] = {
    Study: Level.STUDY,
    Patient: Level.PATIENT,
    Series: Level.SERIES,
    Instance: Level.INSTANCE,
}
_ROW_FIELD: dict[type, str] = {
    Study: "study",
    Patient: "patient",
    Series: "series",
    Instance: "instance",
}


def _patient_id(row: Row) -> str:
    # Instances without a Patient ID are filed under a synthetic "~…" key: not the patient's.
    return "" if row.patient.patient_id.startswith("~") else row.patient.patient_id


def _modalities(row: Row) -> list[str]:
    assert row.study is not None  # a study attribute is only read at study level and below
    return [m for m in row.study.modalities.split("\\") if m]


ATTRIBUTES: tuple[Attr, ...] = (
    Attr("StudyDate", "00080020", "DA", Study.study_date, "date"),
    Attr("StudyTime", "00080030", "TM", Study.study_time, "time"),
    Attr("AccessionNumber", "00080050", "SH", Study.accession_number, "str"),
    Attr("ModalitiesInStudy", "00080061", "CS", Study.modalities, "modalities", _modalities),
    Attr("ReferringPhysicianName", "00080090", "PN", Study.referring_physician, "pn"),
    Attr("StudyDescription", "00081030", "LO", Study.description, "str"),
    Attr("PatientName", "00100010", "PN", Patient.name, "pn"),
    Attr("PatientID", "00100020", "LO", Patient.patient_id, "str", _patient_id),
    Attr("PatientBirthDate", "00100030", "DA", Patient.birth_date, "date"),
    Attr("PatientSex", "00100040", "CS", Patient.sex, "str"),
    Attr("StudyInstanceUID", "0020000D", "UI", Study.study_instance_uid, "uid"),
    Attr("NumberOfStudyRelatedSeries", "00201206", "IS", Study.num_series, "int"),
    Attr("NumberOfStudyRelatedInstances", "00201208", "IS", Study.num_instances, "int"),
    Attr("Modality", "00080060", "CS", Series.modality, "str"),
    Attr("SeriesDescription", "0008103E", "LO", Series.description, "str"),
    Attr("BodyPartExamined", "00180015", "CS", Series.body_part, "str"),
    Attr("SeriesInstanceUID", "0020000E", "UI", Series.series_instance_uid, "uid"),
    Attr("SeriesNumber", "00200011", "IS", Series.series_number, "int"),
    Attr("NumberOfSeriesRelatedInstances", "00201209", "IS", Series.num_instances, "int"),
    Attr("SOPClassUID", "00080016", "UI", Instance.sop_class_uid, "uid"),
    Attr("SOPInstanceUID", "00080018", "UI", Instance.sop_instance_uid, "uid"),
    # The stored transfer syntax: we send what we hold and do not transcode (yet).
    Attr("AvailableTransferSyntaxUID", "00083002", "UI", Instance.transfer_syntax_uid, "uid"),
    Attr("InstanceNumber", "00200013", "IS", Instance.instance_number, "int"),
    Attr("NumberOfFrames", "00280008", "IS", Instance.number_of_frames, "int"),
)
P, S, R, I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE  # noqa: E741
_BY_NAME: dict[str, Attr] = {a.keyword.lower(): a for a in ATTRIBUTES} | {
    a.tag.lower(): a for a in ATTRIBUTES
}
# Returned whatever was asked (PS3.18 Table 10.6.3-3..5, as far as the index holds them); a
# lower level also names its parents so a client can address what it found.
_DEFAULT: dict[Level, tuple[Attr, ...]] = {
    P: tuple(a for a in ATTRIBUTES if a.level == P),
    S: tuple(a for a in ATTRIBUTES if a.level in (P, S)),
    R: tuple(a for a in ATTRIBUTES if a.level == R or a.keyword == "StudyInstanceUID"),
    I: tuple(
        a
        for a in ATTRIBUTES
        if a.level == I or a.keyword in ("StudyInstanceUID", "SeriesInstanceUID")
    ),
}


@dataclass(frozen=True)
class Query:
    level: Level
    conditions: list[ColumnElement[bool]]
    returned: list[Attr]
    limit: int
    offset: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    matches: list[dict[str, Any]]  # DICOM JSON objects (PS3.18 Annex F)
    warnings: list[str]  # for a Warning header: what was changed in the request


def _lookup(name: str) -> Attr | None:
    return _BY_NAME.get(name.strip().lower())


def attribute(name: str) -> Attr | None:
    """The searchable attribute with this keyword or tag (eight hex digits), if the index
    holds it; what a DIMSE identifier may match on and get back."""
    return _lookup(name)


def _like(value: str) -> str:
    """DICOM wildcards to a LIKE pattern; `!` escapes the SQL wildcards and itself."""
    lit = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return lit.replace("*", "%").replace("?", "_")


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _check_date(keyword: str, value: str) -> str:
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        datetime.strptime(value, "%Y%m%d")  # a calendar check: 20240230 fails
    except ValueError:
        raise BadDicomwebRequest(
            f"{keyword}: {value!r} is not a date (YYYYMMDD or a range YYYYMMDD-YYYYMMDD)"
        ) from None
    return value


def _check_time(keyword: str, value: str) -> str:
    if not _TIME.match(value):
        raise BadDicomwebRequest(f"{keyword}: {value!r} is not a time (HHMMSS.FFFFFF)")
    return value


def _range(attr: Attr, value: str, check: Callable[[str, str], str]) -> ColumnElement[bool]:
    col = attr.column
    if "-" not in value:
        return col == check(attr.keyword, value)
    low, _, high = value.partition("-")
    if not low and not high:
        raise BadDicomwebRequest(f"{attr.keyword}: a range needs at least one end")
    # An unknown date is stored as "": it must not fall into an open-ended range.
    parts: list[ColumnElement[bool]] = [col != ""]
    if low:
        parts.append(col >= check(attr.keyword, low))
    if high:
        # Times compare as text; pad the upper end so 1200 includes 120059.999999.
        bound = check(attr.keyword, high)
        parts.append(col <= (bound + "~" if attr.match == "time" else bound))
    return and_(*parts)


def _condition(attr: Attr, value: str) -> ColumnElement[bool] | None:
    """The SQL for one matching key; None when the value matches everything."""
    col = attr.column
    if attr.match == "uid":
        uids = [u for u in re.split(r"[,\\]", value) if u]
        return col.in_([check_uid(u, attr.keyword) for u in uids])
    if attr.match == "date":
        return _range(attr, value, _check_date)
    if attr.match == "time":
        return _range(attr, value, _check_time)
    if attr.match == "int":
        try:
            return col == int(value)
        except ValueError:
            raise BadDicomwebRequest(f"{attr.keyword}: {value!r} is not a number") from None
    if attr.match == "modalities":
        # Stored "CT\SR": match whole codes. PostgreSQL's LIKE treats a backslash as its
        # default escape, so the separator is made literal with an explicit ESCAPE.
        alternatives: list[ColumnElement[bool]] = []
        for code in (c.strip().upper() for c in re.split(r"[,\\]", value) if c.strip()):
            lit = _like(code)
            alternatives += [
                col == code,
                col.like(f"{lit}\\%", escape="!"),
                col.like(f"%\\{lit}", escape="!"),
                col.like(f"%\\{lit}\\%", escape="!"),
            ]
        return or_(*alternatives) if alternatives else None
    if value.strip("*") == "":
        return None  # "*" is universal matching
    if attr.match == "pn":
        return _person_name(col, value)
    wild = "*" in value or "?" in value
    return col.like(_like(value), escape="!") if wild else col == value


def _person_name(col: InstrumentedAttribute[Any], value: str) -> ColumnElement[bool]:
    """Person names match case-insensitively: clinics type "zhang*" for "Zhang^San".

    A value of one component group also matches any one group of a stored name, so "张*"
    finds "Zhang^San=张^三" (alphabetic=ideographic): a clinic searches in the script it
    types in, whichever group the modality put it in. A value that names groups itself
    ("Zhang^San=张^三") matches the whole name.
    """
    pattern = _like(value)
    if "=" in value:
        return col.ilike(pattern, escape="!")
    return or_(
        col.ilike(pattern, escape="!"),
        col.ilike(f"{pattern}=%", escape="!"),
        col.ilike(f"%={pattern}", escape="!"),
        col.ilike(f"%={pattern}=%", escape="!"),
    )


def parse_query(level: Level, params: list[tuple[str, str]]) -> Query:
    """Turn QIDO-RS query parameters into SQL conditions and the attributes to return.

    Raises BadDicomwebRequest for an unknown or unsearchable attribute, a malformed value or
    limit/offset. Unknown `includefield` tags are ignored (PS3.18 §8.3.4.3 lets us).
    """
    conditions: list[ColumnElement[bool]] = []
    returned: dict[str, Attr] = {a.tag: a for a in _DEFAULT[level]}
    limit, offset, warnings = DEFAULT_LIMIT, 0, []
    for name, value in params:
        key = name.strip()
        if key.lower() == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    returned |= {a.tag: a for a in ATTRIBUTES if a.level <= level}
                elif (attr := _lookup(item)) is not None and attr.level <= level:
                    returned[attr.tag] = attr
        elif key.lower() == "limit":
            if not value.strip().isdigit() or int(value) < 1:
                raise BadDicomwebRequest(f"limit: {value!r} is not a number from 1 to {MAX_LIMIT}")
            limit = int(value)
            if limit > MAX_LIMIT:
                # Clamped rather than refused, as PS3.18 §8.3.4.4 allows: say so in a Warning.
                warnings.append(f"limit {limit} reduced to {MAX_LIMIT}")
                limit = MAX_LIMIT
        elif key.lower() == "offset":
            if not value.strip().isdigit():
                raise BadDicomwebRequest(f"offset: {value!r} is not a non-negative number")
            offset = int(value)
        elif key.lower() == "fuzzymatching":
            pass  # accepted; person names already match case-insensitively
        else:
            attr = _lookup(key)
            if attr is None:
                raise BadDicomwebRequest(f"unknown or unsearchable attribute: {key[:80]!r}")
            if attr.level > level:
                raise BadDicomwebRequest(f"{attr.keyword} cannot be matched at {level.name} level")
            returned[attr.tag] = attr
            if value and (cond := _condition(attr, value)) is not None:
                conditions.append(cond)
    ordered = sorted(returned.values(), key=lambda a: a.tag)
    return Query(level, conditions, ordered, limit, offset, warnings)


_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_name_json(name: str) -> dict[str, str]:
    """A PN value as DICOM JSON: one member per component group (PS3.18 §F.2.2)."""
    groups = zip(_PN_GROUPS, name.split("=")[:3], strict=False)
    return {group: text for group, text in groups if text}


def _element(attr: Attr, value: Any) -> dict[str, Any]:
    """One DICOM JSON element (PS3.18 §F.2.2); an empty value is present without "Value"."""
    if value is None or value == "" or value == []:
        return {"vr": attr.vr}
    values = value if isinstance(value, list) else [value]
    if attr.vr == "PN":
        values = [_person_name_json(v) for v in values]
    return {"vr": attr.vr, "Value": values}


# What each result row holds, in the order _select returns it.
_ROW_FIELDS: dict[Level, tuple[str, ...]] = {
    P: ("patient",),
    S: ("study", "patient"),
    R: ("study", "patient", "series"),
    I: ("study", "patient", "series", "instance"),
}


def _select(level: Level) -> Select[Any]:
    if level == Level.PATIENT:
        return cast("Select[Any]", select(Patient))
    # Typed loosely: the columns grow with the level.
    query = cast(
        "Select[Any]", select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
    )
    if level >= Level.SERIES:
        query = query.add_columns(Series).join(Series, Series.study_pk == Study.id)
    if level >= Level.INSTANCE:
        query = query.add_columns(Instance).join(Instance, Instance.series_pk == Series.id)
    return query


def _order(query: Select[Any], level: Level) -> Select[Any]:
    if level == Level.PATIENT:
        return query.order_by(Patient.patient_id, Patient.id)
    if level == Level.STUDY:
        return query.order_by(Study.study_date.desc(), Study.study_time.desc(), Study.id.desc())
    if level == Level.SERIES:
        return query.order_by(Series.series_number, Series.id)
    return query.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)


def _check_parent(
    session: Session,
    actor: auth.Actor,
    study_uid: str,
    series_uid: str | None,
    action: str,
) -> None:
    """A study (and series) named in the path must exist and be visible, else not found."""
    study_pk, _ = visible_study(session, actor, study_uid, action=action)
    if series_uid is None or session.scalar(
        select(func.count())
        .select_from(Series)
        .where(Series.series_instance_uid == series_uid, Series.study_pk == study_pk)
    ):
        return
    auth.audit(
        session,
        actor,
        action,
        outcome=AuditOutcome.FAILED,
        object_type="study",
        object_id=study_uid,
    )
    raise SeriesNotFound(f"no series {series_uid} in study {study_uid}")


def _scope(sql: Select[Any], level: Level, visible: set[int] | None) -> Select[Any]:
    """Only what the actor may see. A patient exists for the actor through a study it may
    see; one whose studies are all elsewhere is not found."""
    if level != Level.PATIENT:
        return sql if visible is None else sql.where(Study.institution_id.in_(visible))
    studies = select(Study.id).where(Study.patient_pk == Patient.id)
    if visible is not None:
        studies = studies.where(Study.institution_id.in_(visible))
    return sql.where(studies.exists())


def search(
    session: Session,
    actor: auth.Actor,
    level: Level,
    params: list[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    paged: bool = True,
    action: str = "dicomweb.qido",
) -> SearchResult:
    """QIDO-RS search within what the actor may see; audited under `action`.

    `paged=False` returns every match, ignoring limit and offset: DIMSE has no paging, and
    a retrieve must find every instance it sends.
    Raises BadDicomwebRequest, StudyNotFound / SeriesNotFound for a parent named in the path
    that does not exist or is not visible (the two are not told apart).
    """
    auth.require(actor, auth.Permission.VIEW_STUDIES)
    if study_uid is not None:
        check_uid(study_uid, "Study Instance UID")
    if series_uid is not None:
        check_uid(series_uid, "Series Instance UID")
    query = parse_query(level, params)
    visible = auth.visible_institutions(session, actor)
    if study_uid is not None:
        _check_parent(session, actor, study_uid, series_uid, action)
    sql = _scope(_select(level), level, visible)
    if study_uid is not None:
        sql = sql.where(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        sql = sql.where(Series.series_instance_uid == series_uid)
    for cond in query.conditions:
        sql = sql.where(cond)
    sql = _order(sql, level)
    if paged:
        sql = sql.limit(query.limit).offset(query.offset)
    matches = []
    for found in session.execute(sql).all():
        row = Row(**dict(zip(_ROW_FIELDS[level], found, strict=True)))
        matches.append({a.tag: _element(a, a.value(row)) for a in query.returned})
    detail = "&".join(f"{k}={v}" for k, v in params)
    auth.audit(
        session,
        actor,
        action,
        object_type=level.name.lower(),
        object_id=series_uid or study_uid or "",
        detail=f"{len(matches)} matches; {detail}",
    )
    return SearchResult(matches, query.warnings)
