"""DICOMweb against a real uvicorn server on a real hub: what the tests of QIDO and WADO share."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from telehealth.app import create_app
from telehealth.auth import service as auth
from telehealth.auth.models import Role
from telehealth.db import transaction
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, free_port, sample_copy, seed_consortium, upload_origin

CT = DEV_DATA / "dicom" / "ct" / "pydicom__CT_small.dcm"
US_RLE = DEV_DATA / "dicom" / "us" / "pydicom-data__OBXXXX1A_rle_2frame.dcm"  # 2 frames, RLE
PASSWORD = "a-long-password"


def ct_instance(
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    patient_id: str,
    patient_name: str,
    study_date: str,
    accession: str,
) -> bytes:
    """A copy of the CT sample as a new instance of the given series."""
    return sample_copy(
        CT,
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=series_uid,
        InstanceNumber=number,
        PatientID=patient_id,
        PatientName=patient_name,
        StudyDate=study_date,
        AccessionNumber=accession,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def serve(hub: Hub) -> Iterator[str]:
    """The real app under uvicorn in a thread; yields its base URL."""
    config = uvicorn.Config(
        create_app(hub), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only in the main thread, so run() is safe here.
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class Web:
    """A served hub with a consortium, one user per role, and three studies.

    A: CLINIC_A, three CT instances in one series. US: CLINIC_A, one 2-frame RLE ultrasound.
    B: CLINIC_B, one CT instance.
    """

    hub: Hub
    base: str
    ids: dict[str, int]
    study: dict[str, str] = field(default_factory=dict)  # label → Study Instance UID
    series: dict[str, str] = field(default_factory=dict)  # label → Series Instance UID
    sops: dict[str, list[str]] = field(default_factory=dict)  # label → SOP UIDs in order
    sent: dict[str, bytes] = field(default_factory=dict)  # SOP UID → the bytes ingested
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        # Argon2 makes each login cost tens of milliseconds; log in once per user.
        if username not in self.tokens:
            response = httpx.post(
                f"{self.base}/api/auth/login", json={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = str(response.json()["access_token"])
        return self.tokens[username]

    def client(self, username: str) -> DICOMwebClient:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.token(username)}"
        return DICOMwebClient(url=f"{self.base}/dicomweb", session=session)

    def http(self, username: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base}/dicomweb",
            headers={"authorization": f"Bearer {self.token(username)}"},
            timeout=30,
        )

    def add(self, label: str, code: str, data: bytes) -> None:
        result = self.hub.archive.ingest(data, upload_origin(self.ids[code]))
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        self.study[label] = result.study_instance_uid
        self.series[label] = str(ds.SeriesInstanceUID)
        self.sops.setdefault(label, []).append(result.sop_instance_uid)
        self.sent[result.sop_instance_uid] = data


@contextmanager
def open_web(hub: Hub) -> Iterator[Web]:
    with transaction(hub.factory) as session:
        ids = seed_consortium(session)
        for username, role, code in [
            ("admin", Role.ADMIN, "COUNTY"),
            ("spec", Role.SPECIALIST, "COUNTY"),
            ("tech_a", Role.TECHNICIAN, "CLINIC_A"),
            ("tech_b", Role.TECHNICIAN, "CLINIC_B"),
        ]:
            auth.create_user(
                session, username=username, password=PASSWORD, role=role, institution_code=code
            )
    with serve(hub) as base:
        web = Web(hub, base, ids)
        study_a, series_a = generate_uid(), generate_uid()
        for number in (1, 2, 3):
            web.add(
                "A",
                "CLINIC_A",
                ct_instance(
                    study_uid=study_a,
                    series_uid=series_a,
                    number=number,
                    patient_id="A001",
                    patient_name="Zhang^San",
                    study_date="20240105",
                    accession="ACC1",
                ),
            )
        web.add("US", "CLINIC_A", US_RLE.read_bytes())
        web.add(
            "B",
            "CLINIC_B",
            ct_instance(
                study_uid=generate_uid(),
                series_uid=generate_uid(),
                number=1,
                patient_id="B001",
                patient_name="Zhao^Liu",
                study_date="20240310",
                accession="ACC2",
            ),
        )
        yield web


def multipart_parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related response, split by each part's Content-Length."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    assert 'type="application/dicom"' in content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body, pos = response.content, 0
    parts: list[bytes] = []
    while True:
        start = body.index(b"--" + boundary, pos) + len(boundary) + 2
        if body[start : start + 2] == b"--":
            return parts
        head_end = body.index(b"\r\n\r\n", start)
        headers = dict(
            line.split(": ", 1) for line in body[start:head_end].decode().split("\r\n") if line
        )
        assert headers["Content-Type"] == "application/dicom"
        length = int(headers["Content-Length"])
        parts.append(body[head_end + 4 : head_end + 4 + length])
        pos = head_end + 4 + length


def fresh_copy(path: Path, **attributes: object) -> bytes:
    """A sample as an instance of a new study and series, so samples sharing UIDs coexist."""
    return sample_copy(
        path,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        **attributes,
    )


def related_parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Each part of any multipart/related response as (headers, body), by Content-Length."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    body, pos = response.content, 0
    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        start = body.index(b"--" + boundary, pos) + len(boundary) + 2
        if body[start : start + 2] == b"--":
            return parts
        head_end = body.index(b"\r\n\r\n", start)
        headers = dict(
            line.split(": ", 1) for line in body[start:head_end].decode().split("\r\n") if line
        )
        length = int(headers["Content-Length"])
        parts.append((headers, body[head_end + 4 : head_end + 4 + length]))
        pos = head_end + 4 + length
