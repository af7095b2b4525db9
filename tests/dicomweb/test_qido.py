"""QIDO-RS: search the index with dicomweb-client and plain HTTP, scoped to who asks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
from sqlalchemy import select

from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.dicomweb import Web, open_web

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def value(item: dict[str, Any], tag: str) -> Any:
    values = item[tag].get("Value", [])
    return values[0] if len(values) == 1 else values


def uids(items: list[dict[str, Any]], tag: str = STUDY_UID) -> set[str]:
    return {value(i, tag) for i in items}


def test_studies_are_found_by_every_kind_of_matching(web: Web) -> None:
    client = web.client("spec")
    a, us, b = web.study["A"], web.study["US"], web.study["B"]
    assert uids(client.search_for_studies()) == {a, us, b}
    f = client.search_for_studies
    assert uids(f(search_filters={"PatientID": "A001"})) == {a}
    assert uids(f(search_filters={"00100020": "B001"})) == {b}  # by tag
    assert uids(f(search_filters={"PatientName": "zhang*"})) == {a}  # case-insensitive PN
    assert uids(f(search_filters={"AccessionNumber": "ACC?"})) == {a, b}
    assert uids(f(search_filters={"AccessionNumber": "ACC_"})) == set()  # `_` is literal
    assert uids(f(search_filters={"StudyDate": "20240101-20240131"})) == {a}
    assert uids(f(search_filters={"StudyDate": "20240201-"})) == {b}
    assert uids(f(search_filters={"StudyDate": "-20231231"})) == {us}
    assert uids(f(search_filters={"StudyDate": "20240310"})) == {b}
    assert uids(f(search_filters={"ModalitiesInStudy": "US"})) == {us}
    assert uids(f(search_filters={"StudyInstanceUID": f"{a},{b}"})) == {a, b}
    assert uids(f(search_filters={"StudyInstanceUID": f"{a}\\{us}"})) == {a, us}
    assert uids(f(fuzzymatching=True, search_filters={"PatientName": "Zhao*"})) == {b}


def test_study_attributes_come_from_the_index(web: Web) -> None:
    [item] = web.client("tech_a").search_for_studies(
        search_filters={"PatientID": "A001"}, fields=["all"]
    )
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Zhang^San"}]}
    assert item["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert value(item, "00201206") == 1
    assert value(item, "00201208") == 3
    assert value(item, "00080050") == "ACC1"
    assert value(item, "00080020") == "20240105"
    assert "00080080" not in item  # Institution Name is not given out
    assert list(item) == sorted(item)  # DICOM JSON lists attributes in tag order


def test_series_and_instances(web: Web) -> None:
    client = web.client("spec")
    [series] = client.search_for_series(web.study["A"])
    assert value(series, SERIES_UID) == web.series["A"]
    assert value(series, STUDY_UID) == web.study["A"]
    assert value(series, "00080060") == "CT"
    assert value(series, "00201209") == 3
    [us] = client.search_for_series(search_filters={"Modality": "US"})
    assert value(us, STUDY_UID) == web.study["US"]

    found = client.search_for_instances(web.study["A"], web.series["A"])
    assert [value(i, SOP_UID) for i in found] == web.sops["A"]  # in instance number order
    assert [value(i, "00200013") for i in found] == [1, 2, 3]
    assert {value(i, "00083002") for i in found} == {"1.2.840.10008.1.2.1"}
    assert {value(i, SERIES_UID) for i in found} == {web.series["A"]}
    [frames] = client.search_for_instances(web.study["US"])
    assert value(frames, "00280008") == 2
    assert value(frames, "00083002") == "1.2.840.10008.1.2.5"
    two = client.search_for_instances(web.study["A"], search_filters={"InstanceNumber": "2"})
    assert [value(i, SOP_UID) for i in two] == [web.sops["A"][1]]


def test_limit_offset_and_includefield(web: Web) -> None:
    with web.http("spec") as http:
        first = http.get("/studies", params={"limit": 1})
        second = http.get("/studies", params={"limit": 1, "offset": 1})
        everything = http.get("/studies", params={"limit": 5000})
        assert first.status_code == second.status_code == everything.status_code == 200
        assert first.headers["content-type"] == "application/dicom+json"
        assert len(first.json()) == len(second.json()) == 1
        assert first.json() != second.json()
        assert "limit 5000 reduced to 1000" in everything.headers["warning"]
        assert len(everything.json()) == 3
        series = http.get(
            "/series",
            params=[("includefield", "PatientID,00081030,NoSuchThing"), ("includefield", "x")],
        )
        assert series.status_code == 200, series.text
        assert {value(s, "00100020") for s in series.json()} == {"A001", "B001", "11-05-25-142825"}


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/studies", {"NoSuchKeyword": "1"}),
        ("/studies", {"StudyDate": "2024-01-01"}),
        ("/studies", {"StudyDate": "20241301"}),
        ("/studies", {"StudyDate": "-"}),
        ("/studies", {"StudyTime": "noon"}),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}),
        ("/studies", {"SOPInstanceUID": "1.2.3"}),  # not a study-level attribute
        ("/studies", {"limit": "ten"}),
        ("/studies", {"limit": "0"}),
        ("/studies", {"offset": "-1"}),
        ("/instances", {"InstanceNumber": "x"}),
        ("/studies/not-a-uid/series", {}),
        ("/studies/1.2.3/series/1.2.x/instances", {}),
    ],
)
def test_bad_input_is_400_with_a_reason(web: Web, path: str, params: dict[str, str]) -> None:
    with web.http("spec") as http:
        response = http.get(path, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["detail"]


def test_scope_is_that_of_the_study_list(web: Web) -> None:
    a = web.study["A"]
    tech_b = web.client("tech_b")
    assert tech_b.search_for_studies(search_filters={"StudyInstanceUID": a}) == []
    assert uids(tech_b.search_for_studies()) == {web.study["B"]}
    assert tech_b.search_for_series(search_filters={"PatientID": "A001"}) == []
    assert uids(web.client("tech_a").search_for_studies()) == {a, web.study["US"]}
    with web.http("tech_b") as http:
        hidden = http.get(f"/studies/{a}/series")
        missing = http.get("/studies/1.2.3.4/series")
        wrong_series = http.get(f"/studies/{web.study['B']}/series/1.2.3/instances")
    # Another clinic's study looks exactly like one that does not exist.
    assert hidden.status_code == missing.status_code == wrong_series.status_code == 404
    with pytest.raises(requests.HTTPError):
        tech_b.search_for_instances(a, web.series["A"])
    assert httpx.get(f"{web.base}/dicomweb/studies").status_code == 401


def test_each_query_is_audited(web: Web) -> None:
    web.client("tech_b").search_for_studies(search_filters={"PatientID": "A001"})
    with web.http("tech_b") as http:
        http.get(f"/studies/{web.study['A']}/series")
    with transaction(web.hub.factory) as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "dicomweb.qido").order_by(AuditEvent.id)
        ).all()
        rows = [(e.actor, str(e.outcome), e.object_id, e.detail) for e in events]
    assert rows[0][:2] == ("tech_b", "success")
    assert "PatientID=A001" in rows[0][3]
    assert rows[1][:3] == ("tech_b", "denied", web.study["A"])
