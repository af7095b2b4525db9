"""A consortium with readers and reading groups, and studies indexed straight into the
database: what the tests of routing, the queue and escalation share.

    CITY (city)          CITY_IMG: city1 (lead)
      └ COUNTY (county)  COUNTY_ECG: ecg1 (lead), ecg2   COUNTY_IMG: img1 (lead)
          ├ CLINIC_A     tech_a
          └ CLINIC_B     tech_b
    OTHER (county, another consortium)
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy.orm import Session

from telehealth.archive.models import (
    IngestSource,
    Instance,
    Patient,
    Series,
    StorageState,
    Study,
)
from telehealth.auth import service as auth
from telehealth.auth.models import Role, User
from telehealth.cases import service as cases
from telehealth.cases.models import Case, CaseService
from telehealth.clock import FakeClock
from telehealth.events import EventBus
from telehealth.institutions import service as institutions
from telehealth.institutions.models import Institution, InstitutionLevel
from tests.conftest import seed_consortium

PASSWORD = "a-long-password"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"

USERS = [
    ("admin", Role.ADMIN, "COUNTY"),
    ("tech_a", Role.TECHNICIAN, "CLINIC_A"),
    ("tech_b", Role.TECHNICIAN, "CLINIC_B"),
    ("ecg1", Role.SPECIALIST, "COUNTY"),
    ("ecg2", Role.SPECIALIST, "COUNTY"),
    ("img1", Role.SPECIALIST, "COUNTY"),
    ("city1", Role.SPECIALIST, "CITY"),
]


class Recorder:
    """An event bus listener that keeps every case message."""

    def __init__(self, bus: EventBus) -> None:
        self.messages: list[dict[str, object]] = []
        bus.subscribe(cases.CASE_TOPIC, self.messages.append)

    def types(self) -> list[object]:
        return [m["type"] for m in self.messages]


@dataclass
class World:
    session: Session
    clock: FakeClock
    ids: dict[str, int]  # institution code → id
    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # group code → id
    bus: EventBus = field(default_factory=EventBus)

    @property
    def ctx(self) -> cases.CaseContext:
        return cases.CaseContext(clock=self.clock, bus=self.bus)

    def actor(self, username: str) -> auth.Actor:
        return auth.actor_for(self.users[username])

    def study(
        self,
        code: str = "CLINIC_A",
        *,
        modality: str = "CT",
        sop_class: str = CT_IMAGE,
        body_part: str = "",
        patient_name: str = "Zhang^San",
    ) -> Study:
        """A study of one instance, indexed directly (no bytes: these tests never read them)."""
        return add_study(
            self.session,
            self.ids[code],
            self.clock.now(),
            modality=modality,
            sop_class=sop_class,
            body_part=body_part,
            patient_name=patient_name,
        )

    def request(self, study: Study, username: str = "tech_a", **fields: Any) -> Case:
        request = cases.ReadingRequest(study_instance_uid=study.study_instance_uid, **fields)
        return cases.request_reading(self.session, self.actor(username), request, self.ctx)

    def group(self, code: str, institution: str, members: list[str], **extra: Any) -> int:
        spec = cases.GroupSpec(
            code=code, name=code, institution=institution, members=members, **extra
        )
        group = cases.save_group(self.session, None, spec, self.ctx)
        self.groups[code] = group.id
        return group.id

    def rule(self, group: str, name: str = "", position: int | None = None, **when: Any) -> int:
        spec = cases.RuleSpec(
            name=name or group, group=group, position=position, when=cases.Conditions(**when)
        )
        return cases.save_rule(self.session, None, spec, self.ctx).id


def add_study(
    session: Session,
    institution_id: int,
    now: datetime,
    *,
    modality: str = "CT",
    sop_class: str = CT_IMAGE,
    body_part: str = "",
    patient_name: str = "Zhang^San",
) -> Study:
    patient = Patient(
        issuer_id=institution_id,
        patient_id=f"P{uuid.uuid4().hex[:8]}",
        name=patient_name,
        birth_date="",
        sex="",
    )
    session.add(patient)
    session.flush()
    study = Study(
        study_instance_uid=generate_uid(),
        patient_pk=patient.id,
        institution_id=institution_id,
        study_date="20260302",
        study_time="",
        accession_number="",
        description=f"{modality} study",
        referring_physician="",
        modalities=modality,
        num_series=1,
        num_instances=1,
        size_bytes=1,
        first_received_at=now,
        last_received_at=now,
    )
    session.add(study)
    session.flush()
    series = Series(
        series_instance_uid=generate_uid(),
        study_pk=study.id,
        modality=modality,
        description="",
        body_part=body_part,
        num_instances=1,
    )
    session.add(series)
    session.flush()
    session.add(
        Instance(
            sop_instance_uid=generate_uid(),
            series_pk=series.id,
            sop_class_uid=sop_class,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            number_of_frames=1,
            size_bytes=1,
            sha256="0" * 64,
            object_key=f"k/{uuid.uuid4().hex}",
            state=StorageState.STORED,
            source=IngestSource.UPLOAD,
            received_at=now,
        )
    )
    session.flush()
    return study


@functools.cache
def password_hash() -> str:
    """Argon2 costs a third of a second here; seven users per test would dominate the run."""
    return auth.hash_password(PASSWORD)


def add_user(
    session: Session, username: str, role: Role, institution_id: int, now: datetime
) -> User:
    user = User(
        username=username,
        display_name=username,
        password_hash=password_hash(),
        role=role,
        institution_id=institution_id,
        active=True,
        created_at=now,
    )
    session.add(user)
    session.flush()
    return user


def build_world(session: Session, clock: FakeClock, *, groups: bool = True) -> World:
    """The consortium above; with `groups`, its three reading groups (no routing rules)."""
    ids = seed_consortium(session)
    city = institutions.add_institution(
        session, code="CITY", name="市人民医院", level=InstitutionLevel.CITY
    )
    county = session.get(Institution, ids["COUNTY"])
    assert county is not None
    county.parent_id = city.id
    ids["CITY"] = city.id
    ids["OTHER"] = institutions.add_institution(
        session, code="OTHER", name="邻县医院", level=InstitutionLevel.COUNTY
    ).id
    world = World(session, clock, ids)
    for username, role, code in USERS:
        world.users[username] = add_user(session, username, role, ids[code], clock.now())
    if groups:
        world.group(
            "COUNTY_ECG", "COUNTY", ["ecg1", "ecg2"], lead="ecg1", services=[CaseService.ECG]
        )
        world.group(
            "COUNTY_IMG",
            "COUNTY",
            ["img1"],
            lead="img1",
            services=[CaseService.IMAGING, CaseService.ULTRASOUND],
        )
        world.group("CITY_IMG", "CITY", ["city1"], lead="city1")
    return world
