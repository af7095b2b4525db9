"""STOW-RS: instances stored over HTTP through the one ingest path, part by part as they arrive."""

from __future__ import annotations

import io
import itertools
import random
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from telehealth.archive.models import Instance, Study
from telehealth.auth.models import AuditEvent
from telehealth.db import transaction
from telehealth.dicomweb.service import (
    MalformedMultipart,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)
from telehealth.hub import Hub
from tests.conftest import DEV_DATA, sample_copy
from tests.dicomweb import CT, Web, multipart_parts, open_web, sha256

BOUNDARY = "stow-test-7d3f0a"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
FAILED, REFERENCED, RETRIEVE_URL = "00081198", "00081199", "00081190"
SOP_CLASS, SOP_INSTANCE, FAILURE_REASON, ERROR_COMMENT = (
    "00081150",
    "00081155",
    "00081197",
    "00000902",
)

# Compressed pixel data of several kinds, a 1 MB instance and an ECG: each SOP Instance UID once.
SAMPLES = [
    DEV_DATA / "dicom" / "ct" / "pydicom__693_J2KI.dcm",  # JPEG 2000
    DEV_DATA / "dicom" / "ct" / "pydicom-data__693_J2KR.dcm",  # JPEG 2000 lossless
    DEV_DATA / "dicom" / "mr" / "pydicom-data__emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_rgb_rle_2frame.dcm",  # RLE, 2 frames
    DEV_DATA / "dicom" / "sc_ot_other" / "pydicom__SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    DEV_DATA / "dicom" / "us" / "pydicom-data__JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
    DEV_DATA / "dicom" / "nm_pt" / "pydicom__JPGExtended.dcm",  # JPEG extended
    DEV_DATA / "dicom" / "ct" / "pydicom-data__eCT_Supplemental.dcm",  # 1 MB, enhanced CT
    DEV_DATA / "ecg_dicom" / "pydicom__waveform_ecg.dcm",  # 12-lead ECG
]


# --- the multipart parser, alone ---------------------------------------------------------------


def parse(
    body: bytes, chunk: int | list[int] | None = None, boundary: str = BOUNDARY
) -> list[tuple[dict[str, str], bytes, bool]]:
    """(headers, data, complete) of each part, fed in chunks of a size or at split points."""
    if chunk is None:
        pieces = [body]
    elif isinstance(chunk, int):
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    else:
        cuts = [0, *chunk, len(body)]
        pieces = [body[a:b] for a, b in itertools.pairwise(cuts)]
    reader = MultipartReader(boundary)
    events = [e for piece in pieces for e in reader.feed(piece)] + reader.close()
    parts: list[tuple[dict[str, str], bytes, bool]] = []
    headers: dict[str, str] | None = None
    data = b""
    for event in events:
        if isinstance(event, PartStart):
            assert headers is None, "a part started inside another"
            headers, data = event.headers, b""
        elif isinstance(event, PartData):
            assert headers is not None and event.data
            data += event.data
        else:
            assert isinstance(event, PartEnd) and headers is not None
            parts.append((headers, data, event.complete))
            headers = None
    assert headers is None
    return parts


def part(data: bytes, content_type: str = "application/dicom") -> bytes:
    """One part, delimiter first, as dicomweb-client and most senders write it."""
    return f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"


def multipart(*parts: bytes, close: bool = True) -> bytes:
    """A body of application/dicom parts; without `close`, no close delimiter."""
    return b"".join(part(p) for p in parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


DICOM_HEADERS = {"content-type": "application/dicom"}
TRICKY = [
    b"\r\n--stow-test-7d3f0\r\n",  # a near miss of the boundary
    b"\r\n--" + BOUNDARY.encode() + b"X and more\r\n",  # the boundary, then not a delimiter
    bytes(range(256)) * 3 + b"\r\n\r\n--\r-\n",
]


def test_every_split_of_the_body_gives_the_same_parts() -> None:
    body = (
        b"a preamble to ignore\r\n"
        + multipart(*TRICKY).replace(b"\r\nContent-Type", b"\r\nContent-Length: 9\r\nContent-Type")
        + b"an epilogue to ignore\r\n--"
        + BOUNDARY.encode()
        + b"\r\n"
    )
    expected = [({"content-length": "9", **DICOM_HEADERS}, data, True) for data in TRICKY]
    assert parse(body) == expected
    for size in range(1, 80):
        assert parse(body, size) == expected, size
    for cut in range(len(body) + 1):  # the boundary split at every place across two chunks
        assert parse(body, [cut]) == expected, cut


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\n\r\nONE\r\n--B\r\n\r\nTWO\r\n--B--",  # no preamble, no final CRLF
        b"\r\n--B\r\n\r\nONE\r\n--B\r\n\r\nTWO\r\n--B--\r\n",  # dicomweb-client's leading CRLF
        b"--B\n\nONE\n--B\n\nTWO\n--B--\n",  # bare LF throughout
        b"--B\r\n\nONE\n--B\n\r\nTWO\r\n--B--",  # mixed
        b"--B \t\r\n\r\nONE\r\n--B  \r\n\r\nTWO\r\n--B--  \r\n",  # transport padding
        b"--B\r\n\r\nONE\r\n--B\r\n\r\nTWO\r\n--B",  # close delimiter without its "--"
        b"--B\r\n\r\nONE\r\n--B\r\n\r\nTWO\r\n--B\r\n",  # ... or followed by a line break
    ],
)
def test_line_break_variants(body: bytes) -> None:
    assert parse(body, boundary="B") == [({}, b"ONE", True), ({}, b"TWO", True)]
    assert parse(body, 1, boundary="B") == [({}, b"ONE", True), ({}, b"TWO", True)]


def test_part_headers() -> None:
    body = (
        b"--B\r\nCONTENT-type:  application/dicom ;transfer-syntax=1.2.840.10008.1.2.1 \r\n"
        b"X-Folded: one\r\n\ttwo\r\nContent-Location: /x:y\r\n\r\nDATA\r\n--B--"
    )
    [(headers, data, complete)] = parse(body, 5, boundary="B")
    assert headers == {
        "content-type": "application/dicom ;transfer-syntax=1.2.840.10008.1.2.1",
        "x-folded": "one two",
        "content-location": "/x:y",
    }
    assert (data, complete) == (b"DATA", True)


def test_empty_parts_and_no_parts() -> None:
    assert parse(b"--B\r\n\r\n\r\n--B--", boundary="B") == [({}, b"", True)]
    assert parse(b"--B--\r\n", boundary="B") == []


def test_truncated_bodies() -> None:
    whole = multipart(b"FIRST", b"SECOND-PART")
    cut_in_data = whole[: whole.index(b"SECOND") + 3]
    assert parse(cut_in_data, 4) == [
        (DICOM_HEADERS, b"FIRST", True),
        (DICOM_HEADERS, b"SEC", False),
    ]
    cut_in_headers = whole[: whole.index(b"SECOND") - 10]
    assert parse(cut_in_headers, 4) == [(DICOM_HEADERS, b"FIRST", True), ({}, b"", False)]
    # Cut inside the delimiter that would end the part: the part is not known to be whole.
    cut_in_delimiter = whole[: whole.rindex(b"--" + BOUNDARY.encode()) + 5]
    _, data, complete = parse(cut_in_delimiter)[-1]
    assert (data.startswith(b"SECOND-PART"), complete) == (True, False)


@pytest.mark.parametrize(
    ("body", "boundary", "message"),
    [
        (b"not multipart at all", "B", "no multipart delimiter"),
        (b"", "B", "no multipart delimiter"),
        (b"x" * 70_000 + b"\r\n--B\r\n\r\nDATA\r\n--B--", "B", "in the first 65536 bytes"),
        (b"--B\r\nno colon here\r\n\r\nDATA\r\n--B--", "B", "not a part header line"),
        (b"--B\r\n" + b"X-Long: " + b"y" * 20_000 + b"\r\n\r\n--B--", "B", "headers longer"),
        (b"--\r\n\r\n--", "", "invalid multipart boundary"),
        (b"", "B" * 71, "invalid multipart boundary"),
        (b"", "grenze\u00e4", "invalid multipart boundary"),
    ],
)
def test_not_multipart(body: bytes, boundary: str, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        parse(body, 1000, boundary=boundary)


def test_a_body_that_is_not_multipart_fails_before_it_ends() -> None:
    reader = MultipartReader("B")
    with pytest.raises(MalformedMultipart):
        for _ in range(100):  # 100 × 64 KiB would be read if nothing stopped it
            reader.feed(b"\0" * 65536)


def test_random_parts_in_random_chunks() -> None:
    rng = random.Random(20260302)
    alphabet = b"\r\n-" + BOUNDARY.encode()[:6] + b"\x00\xff"
    for _ in range(200):
        parts = [
            bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
            for _ in range(rng.randrange(1, 5))
        ]
        body = multipart(*parts)
        cuts = sorted(rng.sample(range(len(body)), min(len(body), rng.randrange(0, 12))))
        assert parse(body, cuts) == [(DICOM_HEADERS, p, True) for p in parts]


# --- STOW-RS against the real server ------------------------------------------------------------


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def stow(
    web: Web,
    username: str | None,
    body: bytes | Iterator[bytes],
    *,
    study: str | None = None,
    content_type: str = CONTENT_TYPE,
) -> httpx.Response:
    headers = {"content-type": content_type}
    if username is not None:
        headers["authorization"] = f"Bearer {web.token(username)}"
    with httpx.Client(base_url=f"{web.base}/dicomweb", timeout=60) as http:
        return http.post(
            f"/studies/{study}" if study else "/studies", content=body, headers=headers
        )


def referenced(response: httpx.Response) -> list[str]:
    """SOP Instance UIDs reported as stored, in order."""
    assert response.headers["content-type"] == "application/dicom+json"
    items = response.json().get(REFERENCED, {}).get("Value", [])
    return [item[SOP_INSTANCE]["Value"][0] for item in items]


def failures(response: httpx.Response) -> list[tuple[str, int, str]]:
    """(SOP Instance UID or "", Failure Reason, Error Comment) of each failed part, in order."""
    assert response.headers["content-type"] == "application/dicom+json"
    items = response.json().get(FAILED, {}).get("Value", [])
    return [
        (
            item[SOP_INSTANCE].get("Value", [""])[0],
            item[FAILURE_REASON]["Value"][0],
            item[ERROR_COMMENT]["Value"][0],
        )
        for item in items
    ]


def new_ct(study_uid: str | None = None, **attributes: Any) -> bytes:
    """The CT sample as a new instance of a new series (of a new study unless one is given)."""
    attributes.setdefault("PatientID", "S001")
    attributes.setdefault("PatientName", "Sun^Wukong")
    return sample_copy(
        CT,
        StudyInstanceUID=study_uid or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        **attributes,
    )


def sop_uid(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def instance_count(web: Web) -> int:
    with transaction(web.hub.factory) as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def retrieve(web: Web, url: str) -> bytes:
    """The one instance at a RetrieveURL, as WADO-RS sends it."""
    with web.http("tech_a") as http:
        response = http.get(url)
    assert response.status_code == 200, response.text
    [data] = multipart_parts(response)
    return data


def test_dicomweb_client_stores_compressed_images_and_an_ecg(web: Web) -> None:
    datasets = [dcmread(path) for path in SAMPLES]
    # What dicomweb-client sends: each dataset written again by pydicom.
    sent = {}
    for ds in datasets:
        out = io.BytesIO()
        ds.save_as(out)
        sent[str(ds.SOPInstanceUID)] = out.getvalue()
    assert len(sent) == len(SAMPLES)
    assert sum(len(d) for d in sent.values()) > 1_000_000  # the client then sends it chunked
    result = web.client("tech_a").store_instances(datasets)
    stored = [str(item.ReferencedSOPInstanceUID) for item in result.ReferencedSOPSequence]
    assert stored == [str(ds.SOPInstanceUID) for ds in datasets]
    assert "FailedSOPSequence" not in result
    for item in result.ReferencedSOPSequence:
        data = retrieve(web, item.RetrieveURL)
        assert sha256(data) == sha256(sent[item.ReferencedSOPInstanceUID])
    ecg = web.client("spec").retrieve_instance(
        datasets[-1].StudyInstanceUID,
        datasets[-1].SeriesInstanceUID,
        datasets[-1].SOPInstanceUID,
    )
    assert ecg.WaveformSequence[0].WaveformData == datasets[-1].WaveformSequence[0].WaveformData


def test_round_trip_is_byte_exact(web: Web) -> None:
    files = [path.read_bytes() for path in SAMPLES]
    response = stow(web, "tech_a", multipart(*files))
    assert response.status_code == 200, response.text
    body = response.json()
    assert RETRIEVE_URL not in body  # the instances belong to several studies
    assert FAILED not in body
    items = body[REFERENCED]["Value"]
    assert [i[SOP_INSTANCE]["Value"][0] for i in items] == [sop_uid(f) for f in files]
    for item, data in zip(items, files, strict=True):
        assert item[SOP_CLASS]["Value"][0] == str(dcmread(io.BytesIO(data)).SOPClassUID)
        url = item[RETRIEVE_URL]["Value"][0]
        assert url.startswith(f"{web.base}/dicomweb/studies/")
        assert sha256(retrieve(web, url)) == sha256(data)
    # The uploader's clinic owns what it sent; another clinic does not see it.
    with web.http("tech_b") as http:
        assert http.get(items[0][RETRIEVE_URL]["Value"][0]).status_code == 404


def test_store_into_the_study_named_in_the_url(web: Web) -> None:
    a = web.study["A"]
    mine = [new_ct(a, PatientID="A001", PatientName="Zhang^San") for _ in range(2)]
    stranger = new_ct()
    response = stow(web, "tech_a", multipart(mine[0], stranger, mine[1]), study=a)
    assert response.status_code == 202, response.text
    assert referenced(response) == [sop_uid(mine[0]), sop_uid(mine[1])]
    assert failures(response) == [
        (sop_uid(stranger), 0xA900, "instance of another study than the one in the request URL")
    ]
    assert response.json()[RETRIEVE_URL]["Value"] == [f"{web.base}/dicomweb/studies/{a}"]
    with transaction(web.hub.factory) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == a))
        assert study is not None and study.num_instances == 3 + 2
    assert instance_count(web) == 5 + 2  # the stranger was never ingested
    # Only other studies: nothing stored is a conflict, with each reason.
    response = stow(web, "tech_a", multipart(new_ct(), new_ct()), study=a)
    assert response.status_code == 409
    assert [f[1] for f in failures(response)] == [0xA900, 0xA900]
    assert RETRIEVE_URL not in response.json()
    assert stow(web, "tech_a", multipart(mine[0]), study="1.2.3.abc").status_code == 400


NOT_STOW: list[tuple[str, bytes, int]] = [
    ("application/dicom", CT.read_bytes(), 415),
    ('multipart/related; type="application/dicom+json"; boundary=x', b"--x--", 415),
    ("multipart/form-data; boundary=x", b"--x--", 415),
    ("application/json", b"{}", 415),
    ("", b"", 415),
    ('multipart/related; type="application/dicom"', b"--x--", 400),  # no boundary
    ("multipart/related; boundary=" + "x" * 71, b"--x--", 400),  # longer than RFC 2046 allows
    (CONTENT_TYPE, CT.read_bytes(), 400),  # the body is not multipart
    (CONTENT_TYPE, b"", 400),
    (CONTENT_TYPE, b"--" + BOUNDARY.encode() + b"--\r\n", 400),  # no parts
    (CONTENT_TYPE, b"--" + BOUNDARY.encode() + b"\r\nbroken header\r\n\r\n", 400),
]


def test_bodies_that_are_not_a_stow_request(web: Web) -> None:
    # One hub for all cases: each costs a second or two to build.
    for content_type, body, status in NOT_STOW:
        response = stow(web, "tech_a", body, content_type=content_type)
        assert response.status_code == status, (content_type, body[:40], response.text)
        assert response.json()["detail"]
    assert instance_count(web) == 5


def test_a_client_that_goes_away_keeps_what_was_stored(web: Web) -> None:
    """The connection drops mid-part: the parts before it are stored, nothing half of one."""
    first, second, third = new_ct(), new_ct(), new_ct()
    body = multipart(first, second, third)
    sent = body[: len(body) - len(third) // 2]
    host, port = web.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            (
                f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {web.token('tech_a')}\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + sent
        )
    deadline = time.monotonic() + 15
    while instance_count(web) < 5 + 2:
        assert time.monotonic() < deadline, "the parts before the drop were not stored"
        time.sleep(0.05)
    with transaction(web.hub.factory) as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert {sop_uid(first), sop_uid(second)} <= stored
    assert sop_uid(third) not in stored
    assert stow(web, "tech_a", multipart(third)).status_code == 200  # the server is fine


def test_a_truncated_body_keeps_the_parts_before_the_cut(web: Web) -> None:
    first, second, third = new_ct(), new_ct(), new_ct()
    body = multipart(first, second, third, close=False)
    body = body[: len(body) - len(third) // 2]  # the stream ends inside the third part
    response = stow(web, "tech_a", body)
    assert response.status_code == 202, response.text
    assert referenced(response) == [sop_uid(first), sop_uid(second)]
    # The cut-off part is named from its header, which arrived.
    assert failures(response) == [(sop_uid(third), 0xC000, "the body ended inside this part")]
    assert instance_count(web) == 5 + 2
    for uid, url in zip(referenced(response), _urls(response), strict=True):
        assert sha256(retrieve(web, url)) == sha256(
            {sop_uid(first): first, sop_uid(second): second}[uid]
        )


def _urls(response: httpx.Response) -> list[str]:
    return [i[RETRIEVE_URL]["Value"][0] for i in response.json()[REFERENCED]["Value"]]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_parts_among_good_ones(web: Web) -> None:
    good = [new_ct() for _ in range(3)]
    cut = new_ct()
    no_uid = sample_copy(CT, StudyInstanceUID="not-a-uid")
    parts = [
        good[0],
        b"this is not a DICOM file at all" * 10,
        cut[: len(cut) - 1000],  # a dataset cut short, in a part that is whole
        good[1],
        no_uid,
        b"",
        good[2],
    ]
    # Last, a part that says it is something else: refused by its headers, its bytes skipped.
    body = multipart(*parts, close=False) + part(b"\xff\xd8\xff", "image/jpeg") + multipart()
    response = stow(web, "tech_a", body)
    assert response.status_code == 202, response.text
    assert referenced(response) == [sop_uid(d) for d in good]
    got = failures(response)
    assert [(uid, code) for uid, code, _ in got] == [
        ("", 0xC000),
        (sop_uid(cut), 0xC000),
        (sop_uid(no_uid), 0xC000),
        ("", 0xC000),
        ("", 0xC000),
    ]
    comments = [comment for _, _, comment in got]
    assert comments[0].startswith("not a readable DICOM instance")
    assert "truncated" in comments[1]
    assert comments[2] == "StudyInstanceUID is not a valid UID"
    assert comments[3:] == ["empty part", "part is image/jpeg, not application/dicom"]
    assert all(len(c) <= 64 and c.isascii() for c in comments)  # LO, as our C-STORE comments
    assert instance_count(web) == 5 + 3
    assert len(list(web.hub.spool.names())) <= 5 + 3  # nothing of the bad parts left behind


def test_a_part_over_the_limit_fails_and_the_others_are_stored(
    hub_factory: Callable[..., Hub],
) -> None:
    with open_web(hub_factory(dicom=False, stow_max_part_bytes=100_000)) as web:
        big = SAMPLES[-2].read_bytes()  # 1 MB
        assert len(big) > 10 * 100_000
        small = [new_ct(), new_ct()]
        response = stow(web, "tech_a", multipart(small[0], big, small[1]))
        assert response.status_code == 202, response.text
        assert referenced(response) == [sop_uid(s) for s in small]
        assert failures(response) == [
            (sop_uid(big), 0xA700, "part larger than the limit of 100000 bytes")
        ]


def chunks_of(body: bytes, size: int) -> Iterator[bytes]:
    """A body sent as a generator: chunked transfer encoding, no Content-Length."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_a_request_over_the_limit(hub_factory: Callable[..., Hub]) -> None:
    hub = hub_factory(dicom=False, stow_max_part_bytes=100_000, stow_max_bytes=200_000)
    with open_web(hub) as web:
        parts = [new_ct() for _ in range(8)]  # ~39 kB each: about five fit
        body = multipart(*parts)
        # Sent chunked, the limit is found while reading: what fit is stored and listed.
        response = stow(web, "tech_a", chunks_of(body, 16_384))
        assert response.status_code == 202, response.text
        stored = referenced(response)
        fit = sum(1 for i in range(1, 9) if len(multipart(*parts[:i])) - 20 <= 200_000)
        assert stored == [sop_uid(p) for p in parts[: len(stored)]]
        assert len(stored) in (fit - 1, fit)
        [(uid, code, comment)] = failures(response)
        assert (uid, code) == (sop_uid(parts[len(stored)]), 0xA700)
        assert comment == "request over the limit of 200000 bytes; rest not read"
        assert instance_count(web) == 5 + len(stored)
        # A declared length over the limit is refused before anything is read.
        response = stow(web, "tech_a", body)
        assert response.status_code == 413, response.text
        assert "200000" in response.json()["detail"]
        # One part over both limits: nothing stored, nothing else to say than 413.
        response = stow(web, "tech_a", chunks_of(multipart(b"\0" * 300_000), 16_384))
        assert response.status_code == 413, response.text
        assert [f[1] for f in failures(response)] == [0xA700]
        assert instance_count(web) == 5 + len(stored)


def test_duplicates_are_stored_once(web: Web) -> None:
    data = new_ct()
    first = stow(web, "tech_a", multipart(data, data))
    again = stow(web, "tech_a", multipart(data))
    assert (first.status_code, again.status_code) == (200, 200)
    assert referenced(first) == [sop_uid(data)] * 2
    assert referenced(again) == [sop_uid(data)]
    assert instance_count(web) == 5 + 1


def test_duplicate_with_other_bytes_is_rejected_under_the_reject_policy(
    hub_factory: Callable[..., Hub],
) -> None:
    with open_web(hub_factory(dicom=False, duplicate_policy="reject")) as web:
        data = new_ct()
        changed = sample_copy(CT, SOPInstanceUID=sop_uid(data), PatientName="Changed^Name")
        assert stow(web, "tech_a", multipart(data)).status_code == 200
        response = stow(web, "tech_a", multipart(changed))
        assert response.status_code == 409, response.text
        [(uid, code, comment)] = failures(response)
        assert (uid, code) == (sop_uid(data), 0x0110)
        assert comment == "SOP Instance is already stored with different content"
        assert sha256(retrieve(web, _urls(stow(web, "tech_a", multipart(data)))[0])) == sha256(data)


def test_who_may_store(web: Web) -> None:
    body = multipart(new_ct())
    response = stow(web, "spec", body)  # a specialist reads; he does not send
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "NotPermitted"
    response = stow(web, None, body)
    assert response.status_code == 401, response.text
    assert instance_count(web) == 5


def test_another_institutions_study_is_a_failed_part(web: Web) -> None:
    a = web.study["A"]
    intruder = new_ct(a, PatientID="B999", PatientName="Qian^Qi")
    own = new_ct()
    response = stow(web, "tech_b", multipart(intruder, own))
    assert response.status_code == 202, response.text
    assert referenced(response) == [sop_uid(own)]
    [(uid, code, comment)] = failures(response)
    # Refused: Not Authorised, as C-STORE and the upload answer; the sender learns no more
    # than that the study is not his: nothing of what it holds.
    assert (uid, code) == (sop_uid(intruder), 0x0124)
    assert comment == "study belongs to another institution"  # its UID is in the item
    text = response.text
    assert "Zhang" not in text and "A001" not in text
    assert not any(sop in text for sop in web.sops["A"])
    with web.http("tech_b") as http:
        upload = http.post(
            f"{web.base}/api/instances",
            content=intruder,
            headers={"content-type": "application/dicom"},
        )
    assert upload.status_code == 403
    assert upload.json()["detail"] == f"study {a} belongs to another institution"
    with transaction(web.hub.factory) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == a))
        assert study is not None and study.num_instances == 3
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "dicomweb.stow").order_by(AuditEvent.id)
        ).all()
        rows = [(e.actor, str(e.outcome), e.object_id, e.detail) for e in events]
    own_study = str(dcmread(io.BytesIO(own)).StudyInstanceUID)
    assert rows == [
        ("tech_b", "success", own_study, "1 instances stored"),
        ("tech_b", "denied", a, "study belongs to another institution"),
    ]


HOSTILE_NAMES = [
    ("GB18030", "张三^李四"),
    ("ISO_IR 192", "<script>alert(1)</script>"),
    ("ISO_IR 192", "Robert'); DROP TABLE studies;--"),
    ("ISO_IR 192", '--stow-test-7d3f0a\r\nContent-Type: text/html\r\n\r\n"'),
    ("ISO_IR 100", "Müller^José"),
]


def test_hostile_patient_names_are_stored_faithfully(web: Web) -> None:
    sent = []
    for charset, name in HOSTILE_NAMES:
        sent.append(
            new_ct(SpecificCharacterSet=charset, PatientName=name, PatientID=generate_uid()[-10:])
        )
    response = stow(web, "tech_a", multipart(*sent))
    assert response.status_code == 200, response.text
    client = web.client("tech_a")
    for data, (_, name), url in zip(sent, HOSTILE_NAMES, _urls(response), strict=True):
        assert sha256(retrieve(web, url)) == sha256(data)
        study = str(dcmread(io.BytesIO(data)).StudyInstanceUID)
        [match] = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert match["00100010"]["Value"] == [{"Alphabetic": name}]


def big_ct(number: int, pixels: bytes) -> bytes:
    return sample_copy(
        CT,
        StudyInstanceUID="1.2.826.0.1.3680043.10.999.1",
        SeriesInstanceUID="1.2.826.0.1.3680043.10.999.1.1",
        SOPInstanceUID=f"1.2.826.0.1.3680043.10.999.1.1.{number}",
        InstanceNumber=number,
        Rows=512,
        Columns=512,
        PixelData=pixels,
    )


def test_a_large_upload_streams_part_by_part(hub_factory: Callable[..., Hub]) -> None:
    """Memory holds about one part, however large the request: 96 × 512 kB in 64 kB chunks."""
    count, pixels = 96, bytes(512 * 512 * 2)
    with open_web(hub_factory(dicom=False, stow_max_part_bytes=1024 * 1024)) as web:
        first = big_ct(1, pixels)
        size = len(multipart(first)) * count

        def body() -> Iterator[bytes]:
            for number in range(1, count + 1):
                yield from chunks_of(part(big_ct(number, pixels)), 65536)
            yield multipart()  # the close delimiter

        tracemalloc.start()
        try:
            response = stow(web, "tech_a", body())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 200, response.text[:500]
        assert len(referenced(response)) == count
        assert size > 48_000_000
        # The body is ~48 MB; buffering it would show here. One part is ~0.5 MB.
        assert peak < size / 6, (peak, size)
        assert sha256(retrieve(web, _urls(response)[-1])) == sha256(big_ct(count, pixels))
