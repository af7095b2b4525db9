"""WADO-RS streaming: the body's length is announced up front and kept, or the stream is cut."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import update

from telehealth.archive.models import Instance
from telehealth.db import transaction
from telehealth.dicomweb.service.multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    close_delimiter,
    part_head,
)
from telehealth.hub import Hub
from tests.dicomweb import Web, open_web

DICOM = {"accept": 'multipart/related; type="application/dicom"'}


@pytest.fixture
def web(hub_factory: Callable[..., Hub]) -> Iterator[Web]:
    with open_web(hub_factory(dicom=False)) as web:
        yield web


def parse(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts as (headers, data) by our own multipart reader; every part must end complete."""
    reader = MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    events = reader.feed(body)
    assert reader.finished, "no close delimiter"
    for event in events:
        if isinstance(event, PartStart):
            parts.append((event.headers, b""))
        elif isinstance(event, PartData):
            parts[-1] = (parts[-1][0], parts[-1][1] + event.data)
        else:
            assert isinstance(event, PartEnd) and event.complete
    return parts


@pytest.mark.parametrize("payloads", [[], [b""], [b"one"], [b"\r\n--x\r\n", b"two" * 1000, b"3"]])
def test_part_framing_round_trips(payloads: list[bytes]) -> None:
    boundary = "b0undary"
    pieces = []
    for i, data in enumerate(payloads):
        pieces += [part_head(boundary, "application/dicom", len(data), first=i == 0), data]
    pieces.append(close_delimiter(boundary, after_part=bool(payloads)))
    parts = parse(b"".join(pieces), boundary)
    assert [data for _, data in parts] == payloads
    for headers, data in parts:
        assert headers == {"content-type": "application/dicom", "content-length": str(len(data))}


def test_a_retrieve_announces_its_exact_length(web: Web) -> None:
    a, series = web.study["A"], web.series["A"]
    with web.http("spec") as http:
        response = http.get(f"/studies/{a}/series/{series}", headers=DICOM)
    assert response.status_code == 200
    # A length, not chunks: the parts go to the socket without being copied into chunk framing.
    assert "chunked" not in response.headers.get("transfer-encoding", "")
    assert int(response.headers["content-length"]) == len(response.content)
    boundary = response.headers["content-type"].split("boundary=")[1]
    assert [data for _, data in parse(response.content, boundary)] == [
        web.sent[sop] for sop in web.sops["A"]
    ]


def test_an_instance_whose_size_changed_cuts_the_stream(web: Web) -> None:
    """The length was announced from the index; bytes of another size cannot be sent under it
    (an instance replaced after the lookup): the stream is cut, never padded or overrun."""
    a, series = web.study["A"], web.series["A"]
    middle = web.sops["A"][1]
    with transaction(web.hub.factory) as session:
        session.execute(
            update(Instance)
            .where(Instance.sop_instance_uid == middle)
            .values(size_bytes=Instance.size_bytes + 10)
        )
    with web.http("spec") as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/studies/{a}/series/{series}", headers=DICOM)
        # The server goes on serving: an instance of the same series comes back whole.
        first = http.get(
            f"/studies/{a}/series/{series}/instances/{web.sops['A'][0]}", headers=DICOM
        )
    assert first.status_code == 200
    assert int(first.headers["content-length"]) == len(first.content)
