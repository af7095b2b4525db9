"""The ECG API on a real hub: uploads of every format, bad files refused with nothing stored,
calibrated samples, measurements a reader can overrule, renderings; scoped and audited."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from telehealth.app import create_app
from telehealth.archive.models import Instance
from telehealth.auth import service as auth
from telehealth.auth.models import AuditEvent, AuditOutcome, Role
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, seed_consortium
from tests.ecg import builders
from tests.ecg.synthetic import synthetic_ecg

PASSWORD = "a-long-password"
SCP = DEV_DATA / "ecg_scp" / "ecg-contec__Example.scp"
AECG = DEV_DATA / "ecg_hl7_aecg" / "liryc-aecg__hl7aecg_example.xml"
AECG_MIN = DEV_DATA / "ecg_hl7_aecg" / "fda-aecg__minimum_aecg.xml"
DICOM_ECG = DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm"


@dataclass
class Site:
    hub: Hub
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            r = self.client.post(
                "/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert r.status_code == 200, r.text
            self.client.cookies.clear()
            self.tokens[username] = r.json()["access_token"]
        return {"authorization": f"Bearer {self.tokens[username]}"}

    def upload(
        self, username: str, data: bytes, name: str = "ecg.bin", **form: str
    ) -> tuple[int, dict]:  # type: ignore[type-arg]
        r = self.client.post(
            "/api/ecg/uploads",
            files={"file": (name, data, "application/octet-stream")},
            data=form,
            headers=self.headers(username),
        )
        return r.status_code, r.json()

    def get(self, username: str, path: str, **params: object):  # type: ignore[no-untyped-def]
        return self.client.get(path, params=params, headers=self.headers(username))

    def stored(self) -> tuple[int, list[str]]:
        with transaction(self.hub.factory) as session:
            count = session.scalar(select(func.count()).select_from(Instance)) or 0
        return count, [o.key for o in self.hub.store.list_objects("originals/")]


@pytest.fixture
def site(hub_factory: Callable[..., Hub]) -> Iterator[Site]:
    hub = hub_factory(dicom=False)
    with transaction(hub.factory) as session:
        seed_consortium(session)
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
        yield Site(hub, client)


def _ints(scale: float = 2.5, **kw: object) -> dict[str, np.ndarray]:
    leads, _ = synthetic_ecg(**kw)  # type: ignore[arg-type]
    return {k: np.rint(v / scale).astype(np.int64) for k, v in leads.items()}


def test_every_format_is_converted_ingested_and_measured(site: Site) -> None:
    eight = {
        k: v
        for k, v in _ints(seed=4).items()
        if k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    }
    uploads = [
        ("scp-ecg", SCP.read_bytes(), ".scp"),
        ("hl7-aecg", AECG.read_bytes(), ".xml"),
        ("hl7-aecg", AECG_MIN.read_bytes(), ".xml"),
        ("philips-xml", builders.philips_xml(_ints(scale=5.0, seed=3)), ".xml"),
        ("ge-muse-xml", builders.muse_xml(eight), ".xml"),
    ]
    for kind, data, ext in uploads:
        status, body = site.upload("tech_a", data, name="named-anything.dat")
        assert status == 201, body
        assert body["format"] == kind and body["outcome"] == "new"
        sop, digest = body["sop_instance_uid"], hashlib.sha256(data).hexdigest()
        assert body["original_key"] == f"originals/{sop}/{digest}{ext}"
        assert site.hub.store.get_bytes(body["original_key"]) == data
        original = site.get("tech_a", f"/api/ecg/{sop}/original")
        assert original.status_code == 200 and original.content == data
        measured = site.get("spec", f"/api/ecg/{sop}/measurements").json()
        assert measured["status"] == "computed" and measured["original"]["sha256"] == digest
        for name in ("heart_rate_bpm", "qt_ms"):
            assert (
                measured["automatic"][name] is not None
                or measured["automatic"]["not_computable"][name]
            )
    # The same file again is the same instance, not a second one.
    status, again = site.upload("tech_a", SCP.read_bytes())
    assert status == 201 and again["outcome"] == "duplicate"
    # A DICOM ECG is ingested as it is, with no other original.
    status, body = site.upload("tech_a", DICOM_ECG.read_bytes())
    assert status == 201 and body["format"] == "dicom" and body["original_key"] is None
    assert site.get("tech_a", f"/api/ecg/{body['sop_instance_uid']}/original").status_code == 404


def test_bad_files_are_refused_naming_the_problem_and_nothing_is_stored(site: Site) -> None:
    ints = _ints(seconds=2.0)
    scp = SCP.read_bytes()
    flipped = bytearray(scp)
    flipped[5000] ^= 0xFF
    aecg = AECG.read_bytes()
    xml = builders.aecg_xml({"I": ints["I"]})
    start, end = (
        xml.index(b'<component><sequence><code code="MDC_ECG_LEAD_I"'),
        xml.index(b"</sequenceSet>"),
    )
    cases = [
        (aecg[: len(aecg) // 2], "truncated"),
        (scp[:20000], "declares 34144 bytes"),
        (bytes(flipped), "CRC"),
        (builders.rewrite_crc(bytes(flipped)), "section 6 CRC"),
        (
            builders.aecg_xml(ints, codes={"V2": "MDC_ECG_LEAD_V2X"}),
            "unknown lead 'MDC_ECG_LEAD_V2X'",
        ),
        (
            builders.scp_file({"I": ints["I"], "II": ints["II"]}, lead_ids={"II": 250}),
            "unknown lead code 250",
        ),
        (xml[:start] + xml[end:], "no lead sequences"),
        (builders.scp_file({"I": ints["I"]}, omit_rhythm=True), "no rhythm data"),
        (b"%PDF-1.4 not an ECG", "not DICOM, HL7 aECG"),
        ((DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm").read_bytes(), "Waveform Sequence"),
    ]
    before = site.stored()
    for data, message in cases:
        status, body = site.upload("tech_a", data)
        assert status in (400, 422), (message, status, body)
        assert message in body["detail"], (message, body)
    assert site.stored() == before


def test_samples_in_microvolts_json_and_binary(site: Site) -> None:
    eight = {
        k: v
        for k, v in _ints(seed=6).items()
        if k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    }
    _, body = site.upload("tech_a", builders.muse_xml(eight, units_per_bit=4.88))
    sop = body["sop_instance_uid"]
    r = site.get("tech_a", f"/api/ecg/{sop}/samples")
    assert r.status_code == 200
    samples = r.json()
    assert samples["sampling_frequency_hz"] == 500.0 and samples["units"] == "uV"
    by_name = {lead["name"]: lead for lead in samples["leads"]}
    assert [n for n, lead in by_name.items() if lead["derived"]] == ["III", "aVR", "aVL", "aVF"]
    np.testing.assert_allclose(by_name["V3"]["samples"], eight["V3"] * 4.88, atol=0.01)
    np.testing.assert_allclose(
        by_name["III"]["samples"], (eight["II"] - eight["I"]) * 4.88, atol=0.01
    )
    binary = site.get("tech_a", f"/api/ecg/{sop}/samples", format="binary")
    leads = binary.headers["x-ecg-leads"].split(",")
    n = int(binary.headers["x-ecg-samples"])
    values = np.frombuffer(binary.content, dtype="<f4").reshape(len(leads), n)
    np.testing.assert_allclose(values[leads.index("V3")], by_name["V3"]["samples"], atol=0.01)


def test_reader_overrules_beside_automatic_values(site: Site) -> None:
    _, body = site.upload("tech_a", SCP.read_bytes())
    sop = body["sop_instance_uid"]
    automatic = site.get("spec", f"/api/ecg/{sop}/measurements").json()["automatic"]
    put = {
        "values": {
            "qt_ms": 520.0,
            "qtc_bazett_ms": 560.0,
            "rhythm_regular": False,
            "leads.V1.r_uv": 150.0,
        },
        "comment": "复核",
    }
    assert (
        site.client.put(
            f"/api/ecg/{sop}/measurements", json=put, headers=site.headers("tech_a")
        ).status_code
        == 403
    )
    bad = {"values": {"qt_ms": 400.0, "mood": 1.0}}
    assert (
        site.client.put(
            f"/api/ecg/{sop}/measurements", json=bad, headers=site.headers("spec")
        ).status_code
        == 422
    )
    r = site.client.put(f"/api/ecg/{sop}/measurements", json=put, headers=site.headers("spec"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["automatic"]["qt_ms"] == automatic["qt_ms"]  # kept beside, not over
    assert out["reader"]["values"]["qt_ms"] == 520.0 and out["reader"]["by"] == "spec"
    assert out["effective"]["qt_ms"] == 520.0 and out["effective"]["pr_ms"] == automatic["pr_ms"]
    assert out["effective"]["leads"]["V1"]["r_uv"] == 150.0  # every number, per lead too
    assert out["effective"]["leads"]["V2"] == automatic["leads"]["V2"]
    assert [t["code"] for t in out["triage"]] == ["long_qtc"]
    flagged = site.get("spec", f"/api/ecg/{sop}/measurements", flags=["chest_pain"]).json()
    assert [t["code"] for t in flagged["triage"]] == ["chest_pain", "long_qtc"]
    again = site.client.post(
        f"/api/ecg/{sop}/measurements/recompute", headers=site.headers("spec")
    ).json()
    assert again["reader"]["values"]["qt_ms"] == 520.0


def test_scoped_and_audited_like_wado(site: Site) -> None:
    _, body = site.upload("tech_a", SCP.read_bytes())
    sop = body["sop_instance_uid"]
    for path in ("samples", "measurements", "rendered.png", "rendered.pdf"):
        assert site.get("tech_b", f"/api/ecg/{sop}/{path}").status_code == 404, path
        assert site.get("tech_a", f"/api/ecg/{sop}/{path}").status_code == 200, path
    assert site.get("tech_a", "/api/ecg/1.2.3.4/samples").status_code == 404
    with transaction(site.hub.factory) as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.action, AuditEvent.outcome).where(
                AuditEvent.object_id == sop
            )
        ).all()
    assert ("tech_b", "ecg.samples", AuditOutcome.DENIED) in events
    assert ("tech_a", "ecg.samples", AuditOutcome.SUCCESS) in events


def test_rendered_paper_ecg(site: Site) -> None:
    _, body = site.upload("tech_a", SCP.read_bytes())
    sop = body["sop_instance_uid"]
    png = site.get("tech_a", f"/api/ecg/{sop}/rendered.png", dpi=100)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png.content))
    assert image.size == (round(297 / 25.4 * 100), round(210 / 25.4 * 100))  # A4 at 100 dpi
    pdf = site.get("tech_a", f"/api/ecg/{sop}/rendered.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF-1.4")
    assert b"/MediaBox [0 0 841.89 595.28]" in pdf.content  # A4 landscape in points
