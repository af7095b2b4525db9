"""Patient names in every character set, and hostile ones, come back exact and as JSON."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import inspect

from telehealth.app import create_app
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.db import transaction
from telehealth.hub import Hub
from telehealth.institutions.service import get_institution
from tests.conftest import DEV_DATA, seed_consortium, upload_origin

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
PASSWORD = "a-long-password"

# (SpecificCharacterSet, patient name). pydicom encodes the name in the given set on save.
NAMES: list[tuple[str | None, str]] = [
    ("GB18030", "张三^李四"),
    ("GB18030", "𠀀^龘"),  # U+20000 takes GB18030's four-byte form; GBK cannot encode it
    ("GBK", "王五^赵六"),
    ("ISO_IR 192", "欧阳^娜娜=Ouyang^Nana"),
    ("ISO_IR 192", "<script>alert(1)</script>"),
    ("ISO_IR 192", "Robert'); DROP TABLE studies;--"),
    ("ISO_IR 100", "Müller^José"),
    (None, 'O\'Brien^"Tim" & <b>Co</b>'),  # default repertoire, markup and quotes
]


def _instance(charset: str | None, name: str) -> bytes:
    ds = dcmread(CT)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = generate_uid()[-12:]  # one patient per name: names are not merged
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _sample_files() -> list[Path]:
    """pydicom's character set samples that are whole instances (some are bare datasets)."""
    files = sorted((DEV_DATA / "dicom").rglob("pydicom__chr*.dcm"))
    usable = [f for f in files if "StudyInstanceUID" in dcmread(f, stop_before_pixels=True)]
    if not usable:
        pytest.skip(f"no pydicom chr*.dcm samples under {DEV_DATA}")
    return usable


@pytest.fixture
def hub(hub_factory: Callable[..., Hub]) -> Hub:
    hub = hub_factory(dicom=False)
    with transaction(hub.factory) as session:
        seed_consortium(session)
        auth.create_user(
            session,
            username="admin",
            password=PASSWORD,
            role=Role.ADMIN,
            institution_code="COUNTY",
        )
    return hub


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub)) as client:
        response = client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert response.status_code == 200
        yield client  # logged in through the cookie


def _names_by_study(client: TestClient, **params: str) -> dict[str, str]:
    response = client.get("/api/studies", params={"limit": "500", **params})
    assert response.status_code == 200
    # JSON, never HTML: a browser must not render a name as markup.
    assert response.headers["content-type"] == "application/json"
    return {s["study_instance_uid"]: s["patient_name"] for s in response.json()["items"]}


def test_names_in_every_character_set_come_back_exact(hub: Hub, client: TestClient) -> None:
    clinic = hub_clinic(hub)
    expected = {}
    for charset, name in NAMES:
        result = hub.archive.ingest(_instance(charset, name), upload_origin(clinic))
        expected[result.study_instance_uid] = name
    assert _names_by_study(client) == expected
    for uid, name in expected.items():
        response = client.get(f"/api/studies/{uid}")
        assert response.headers["content-type"] == "application/json"
        assert response.json()["patient_name"] == name, uid
    # Searching in the patient's own script finds the study.
    assert list(_names_by_study(client, patient_name="张三").values()) == ["张三^李四"]
    assert list(_names_by_study(client, patient_name="𠀀").values()) == ["𠀀^龘"]
    assert list(_names_by_study(client, patient_name="Müller").values()) == ["Müller^José"]
    assert list(_names_by_study(client, patient_name="'); DROP").values()) == [
        "Robert'); DROP TABLE studies;--"
    ]


def test_sql_in_a_name_is_only_data(hub: Hub, client: TestClient) -> None:
    name = "Robert'); DROP TABLE studies;--"
    hub.archive.ingest(_instance("ISO_IR 192", name), upload_origin(hub_clinic(hub)))
    _names_by_study(client, patient_name=name)
    tables = set(inspect(hub.engine).get_table_names())
    assert {"studies", "patients", "series", "instances", "users"} <= tables
    assert list(_names_by_study(client).values()) == [name]


def test_markup_in_a_path_is_answered_as_json(client: TestClient) -> None:
    for uid in ("<script>alert(1)</script>", "1.2.3'--", "%3Cb%3E"):
        response = client.get(f"/api/studies/{quote(uid, safe='')}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"


def test_sample_files_names_match_pydicom(hub: Hub, client: TestClient) -> None:
    """Japanese, Korean, Chinese, Arabic, Hebrew, Greek... with ISO 2022 code extensions."""
    clinic = hub_clinic(hub)
    expected: dict[str, str] = {}
    for path in _sample_files():
        hub.archive.ingest(path.read_bytes(), upload_origin(clinic))
        ds = dcmread(path)
        # Some samples share a study (the same exam in two encodings): the newest name wins.
        expected[str(ds.StudyInstanceUID)] = str(ds.PatientName)
    names = _names_by_study(client)
    assert names == expected
    assert "やまだ^たろう" in names.values()  # really decoded, not left as escape sequences
    assert "김희중" in names.values()


def hub_clinic(hub: Hub) -> int:
    with transaction(hub.factory) as session:
        return get_institution(session, "CLINIC_A").id
