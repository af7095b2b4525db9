"""Study lists scoped to who asks, and the plain upload: the real app on a real hub."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from telehealth.app import create_app
from telehealth.archive.models import Instance
from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent, AuditOutcome, Role
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions import service as institutions
from tests.conftest import DEV_DATA, sample_copy, seed_consortium, upload_origin

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
PASSWORD = "a-long-password"
DICOM = {"content-type": "application/dicom"}


def make_instance(
    *,
    patient_id: str,
    patient_name: str,
    study_date: str = "20240105",
    modality: str = "CT",
    accession: str = "",
    study_uid: str | None = None,
) -> bytes:
    """A copy of the CT sample as a new instance (in a new study unless one is given)."""
    return sample_copy(
        CT,
        StudyInstanceUID=study_uid or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientID=patient_id,
        PatientName=patient_name,
        StudyDate=study_date,
        Modality=modality,
        AccessionNumber=accession,
    )


@dataclass
class Site:
    """A hub with a consortium, users of every kind and a known set of studies."""

    hub: Hub
    client: TestClient
    ids: dict[str, int]
    studies: dict[str, str]  # label → Study Instance UID
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        # Argon2 makes each login cost tens of milliseconds; log in once per user.
        if username in self.tokens:
            return self.tokens[username]
        response = self.client.post(
            "/api/auth/login", json={"username": username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        self.client.cookies.clear()  # each call below says who it is
        self.tokens[username] = str(response.json()["access_token"])
        return self.tokens[username]

    def get(self, username: str, path: str, **params: object) -> tuple[int, dict]:  # type: ignore[type-arg]
        response = self.client.get(
            path, params=params, headers={"authorization": f"Bearer {self.token(username)}"}
        )
        assert response.headers["content-type"] == "application/json"
        return response.status_code, response.json()

    def listed(self, username: str, **params: object) -> list[str]:
        """Labels of the studies the user gets back, in the order returned."""
        status, body = self.get(username, "/api/studies", **params)
        assert status == 200, body
        by_uid = {uid: label for label, uid in self.studies.items()}
        return [by_uid[s["study_instance_uid"]] for s in body["items"]]

    def upload(self, username: str, data: bytes, **headers: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        response = self.client.post(
            "/api/instances",
            content=data,
            headers={**DICOM, **headers, "authorization": f"Bearer {self.token(username)}"},
        )
        return response.status_code, response.json()


@contextmanager
def open_site(hub: Hub) -> Iterator[Site]:
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
        # A second consortium: a county specialist must not see it, an admin does.
        ids["OTHER"] = institutions.add_institution(
            session, code="OTHER", name="邻县医院", level="county"
        ).id
        for username, role, code in [
            ("admin", Role.ADMIN, "COUNTY"),
            ("spec", Role.SPECIALIST, "COUNTY"),
            ("tech_a", Role.TECHNICIAN, "CLINIC_A"),
            ("tech_b", Role.TECHNICIAN, "CLINIC_B"),
        ]:
            auth.create_user(
                session, username=username, password=PASSWORD, role=role, institution_code=code
            )
    with TestClient(create_app(hub)) as client:
        yield Site(hub, client, ids, {})


@pytest.fixture
def site(hub_factory: Callable[..., Hub]) -> Iterator[Site]:
    with open_site(hub_factory(dicom=False)) as site:
        yield site


@pytest.fixture
def studies(site: Site) -> Site:
    """Five studies in three institutions, ingested the way every source does it."""
    plan = [
        ("A1", "CLINIC_A", "A001", "Zhang^San", "20240105", "CT", "ACC1"),
        ("A2", "CLINIC_A", "A002", "Li^Si", "20240210", "MR", "ACC2"),
        ("A3", "CLINIC_A", "A003", "Zhangsun^Wu", "20240315", "CT", "ACC3"),
        ("B1", "CLINIC_B", "B001", "Zhao^Liu", "20240105", "CT", "ACC4"),
        ("O1", "OTHER", "O001", "Zhang^Qi", "20231231", "CR", "ACC5"),
    ]
    for label, code, patient_id, name, date, modality, accession in plan:
        data = make_instance(
            patient_id=patient_id,
            patient_name=name,
            study_date=date,
            modality=modality,
            accession=accession,
        )
        result = site.hub.archive.ingest(data, upload_origin(site.ids[code]))
        site.studies[label] = result.study_instance_uid
    # A3 also holds a structured report: its modalities become CT\SR.
    sr = make_instance(
        patient_id="A003",
        patient_name="Zhangsun^Wu",
        study_date="20240315",
        modality="SR",
        accession="ACC3",
        study_uid=site.studies["A3"],
    )
    site.hub.archive.ingest(sr, upload_origin(site.ids["CLINIC_A"]))
    return site


# --- who sees what ----------------------------------------------------------------------------


def test_technician_sees_only_own_clinic(studies: Site) -> None:
    assert sorted(studies.listed("tech_a")) == ["A1", "A2", "A3"]
    assert studies.listed("tech_b") == ["B1"]
    # Asking for another clinic's studies by filter gives nothing, not a way around the scope.
    assert studies.listed("tech_a", institution_id=studies.ids["CLINIC_B"]) == []
    _, body = studies.get("tech_a", "/api/studies")
    assert body["total"] == 3


def test_county_specialist_sees_the_clinics_below_but_not_another_county(studies: Site) -> None:
    assert sorted(studies.listed("spec")) == ["A1", "A2", "A3", "B1"]
    status, body = studies.get("spec", f"/api/studies/{studies.studies['B1']}")
    assert status == 200
    assert body["patient_name"] == "Zhao^Liu"
    status, _ = studies.get("spec", f"/api/studies/{studies.studies['O1']}")
    assert status == 404


def test_admin_sees_every_institution(studies: Site) -> None:
    assert sorted(studies.listed("admin")) == ["A1", "A2", "A3", "B1", "O1"]


def test_study_details_of_own_clinic(studies: Site) -> None:
    status, body = studies.get("tech_a", f"/api/studies/{studies.studies['A3']}")
    assert status == 200
    assert body["patient_id"] == "A003"
    assert body["patient_name"] == "Zhangsun^Wu"
    assert body["accession_number"] == "ACC3"
    assert body["study_date"] == "20240315"
    assert sorted(body["modalities"]) == ["CT", "SR"]
    assert (body["num_series"], body["num_instances"]) == (2, 2)
    assert body["institution_id"] == studies.ids["CLINIC_A"]


def test_other_clinics_study_is_404_like_a_missing_one_and_audited(studies: Site) -> None:
    foreign = studies.studies["B1"]
    missing = generate_uid()
    status_foreign, body_foreign = studies.get("tech_a", f"/api/studies/{foreign}")
    status_missing, body_missing = studies.get("tech_a", f"/api/studies/{missing}")
    # Same status and same kind of answer: a clinic cannot probe which UIDs exist elsewhere.
    assert status_foreign == status_missing == 404
    assert body_foreign["error"] == body_missing["error"] == "StudyNotFound"
    assert body_foreign["detail"].replace(foreign, "UID") == body_missing["detail"].replace(
        missing, "UID"
    )
    assert "Zhao" not in str(body_foreign)
    with transaction(studies.hub.factory) as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "study.read", AuditEvent.object_id == foreign
            )
        ).all()
        # Kept although the request ended in an error and its transaction rolled back.
        assert [(e.outcome, e.actor) for e in denied] == [(AuditOutcome.DENIED, "tech_a")]
        assert denied[0].institution_id == studies.ids["CLINIC_A"]


def test_reads_and_lists_are_audited(studies: Site) -> None:
    studies.listed("tech_a")
    studies.get("tech_a", f"/api/studies/{studies.studies['A1']}")
    with transaction(studies.hub.factory) as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(["study.list", "study.read"]))
        ).all()
        assert {(e.action, e.outcome, e.actor) for e in rows} == {
            ("study.list", AuditOutcome.SUCCESS, "tech_a"),
            ("study.read", AuditOutcome.SUCCESS, "tech_a"),
        }


# --- paging and filters -----------------------------------------------------------------------


def test_paging_covers_every_study_once(studies: Site) -> None:
    seen: list[str] = []
    for offset in range(0, 6, 2):
        status, body = studies.get("admin", "/api/studies", limit=2, offset=offset)
        assert status == 200
        assert (body["total"], body["limit"], body["offset"]) == (5, 2, offset)
        assert len(body["items"]) == (2 if offset < 4 else 1)
        seen += [s["study_instance_uid"] for s in body["items"]]
    assert sorted(seen) == sorted(studies.studies.values())
    status, body = studies.get("admin", "/api/studies", offset=50)
    assert (body["total"], body["items"]) == (5, [])


# One hub for all cases: each hub with its studies costs a second or two to build.
FILTER_CASES: list[tuple[dict[str, object], list[str]]] = [
    ({"patient_id": "A001"}, ["A1"]),
    ({"patient_id": "A00"}, []),  # an ID is matched whole, never as a prefix
    ({"patient_name": "zhang"}, ["A1", "A3", "O1"]),  # substring, any case
    ({"patient_name": "SUN^"}, ["A3"]),
    ({"patient_name": "%"}, []),  # LIKE wildcards are literal
    ({"patient_name": "_"}, []),
    ({"date_from": "20240201"}, ["A2", "A3"]),
    ({"date_to": "20240105"}, ["A1", "B1", "O1"]),
    ({"date_from": "20240105", "date_to": "20240210"}, ["A1", "A2", "B1"]),
    ({"modality": "CT"}, ["A1", "A3", "B1"]),
    ({"modality": "sr"}, ["A3"]),
    ({"modality": "T"}, []),  # a whole code, not part of "CT"
    ({"modality": "S"}, []),
    ({"modality": "C%"}, []),  # LIKE wildcards in a code are literal
    ({"modality": "_T"}, []),
    ({"accession_number": "ACC2"}, ["A2"]),
    ({"institution_id": -1}, []),
    ({"patient_name": "zhang", "date_from": "20240101", "modality": "CT"}, ["A1", "A3"]),
]


def test_filters(studies: Site) -> None:
    for params, expected in FILTER_CASES:
        assert sorted(studies.listed("admin", **params)) == expected, params


BAD_PARAMS: list[dict[str, object]] = [
    {"date_from": "2024-01-01"},
    {"date_to": "20240101; DROP TABLE studies"},
    {"limit": 100000},
    {"limit": 0},
    {"offset": -1},
    {"limit": "ten"},
    {"institution_id": "CLINIC_A"},
    {"patient_id": "x" * 65},
]


def test_bad_query_parameters_are_422_not_500(studies: Site) -> None:
    for params in BAD_PARAMS:
        status, body = studies.get("admin", "/api/studies", **params)
        assert status == 422, (params, body)
        assert body["detail"]


# --- upload -----------------------------------------------------------------------------------


def test_technician_uploads_an_instance(site: Site) -> None:
    data = make_instance(patient_id="U001", patient_name="Upload^Test")
    status, body = site.upload("tech_a", data)
    assert status == 201, body
    assert body["outcome"] == "new"
    with transaction(site.hub.factory) as session:
        instance = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == body["sop_instance_uid"])
        )
        assert instance is not None
        assert instance.size_bytes == len(data)
        assert site.hub.archive.read_instance(session, body["sop_instance_uid"]) == data
    site.studies["U"] = body["study_instance_uid"]
    assert site.listed("tech_a") == ["U"]  # owned by the uploader's clinic
    assert site.listed("tech_b") == []
    status, again = site.upload("tech_a", data)
    assert (status, again["outcome"]) == (201, "duplicate")


def test_clinic_cannot_add_to_another_clinics_study(studies: Site) -> None:
    intruder = make_instance(
        patient_id="B001", patient_name="Zhao^Liu", study_uid=studies.studies["A1"]
    )
    status, body = studies.upload("tech_b", intruder)
    assert status == 403, body
    status, study = studies.get("admin", f"/api/studies/{studies.studies['A1']}")
    assert study["num_instances"] == 1


def test_specialist_cannot_upload(site: Site) -> None:
    status, body = site.upload("spec", make_instance(patient_id="S1", patient_name="No^Upload"))
    assert status == 403, body
    with transaction(site.hub.factory) as session:
        assert session.scalar(select(Instance)) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a DICOM file at all" * 10, "not a readable DICOM instance"),
        (b"", "empty upload"),
        (b"\0" * 128 + b"DICM", "no Transfer Syntax UID"),  # a preamble and nothing else
    ],
)
def test_garbage_upload_is_422_with_a_reason(site: Site, data: bytes, message: str) -> None:
    status, body = site.upload("tech_a", data)
    assert status == 422, body
    assert message in body["detail"]
    with transaction(site.hub.factory) as session:
        assert session.scalar(select(Instance)) is None
    assert list(site.hub.spool.names()) == []


def test_truncated_upload_is_422(site: Site) -> None:
    data = make_instance(patient_id="T1", patient_name="Cut^Off")
    status, body = site.upload("tech_a", data[: len(data) - 1000])
    assert status == 422, body
    assert "truncated" in body["detail"]


def test_oversized_upload_is_413(hub_factory: Callable[..., Hub]) -> None:
    with open_site(hub_factory(dicom=False, max_upload_bytes=1000)) as site:
        _check_oversized(site)


def _check_oversized(site: Site) -> None:
    data = make_instance(patient_id="L1", patient_name="Too^Large")
    status, body = site.upload("tech_a", data)
    assert status == 413, body
    assert "1000" in body["detail"]
    # Without Content-Length (chunked), the limit is enforced while reading.
    response = site.client.post(
        "/api/instances",
        content=iter([data[:800], data[800:]]),
        headers={**DICOM, "authorization": f"Bearer {site.token('tech_a')}"},
    )
    assert response.status_code == 413, response.text
    with transaction(site.hub.factory) as session:
        assert session.scalar(select(Instance)) is None
