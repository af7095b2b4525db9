"""The viewer's int16 samples: the same µV as the JSON answer, encoded once per instance
version (by the measurement or the first request), gzip when asked, revalidated by ETag,
and scoped and audited like every other ECG route."""

from __future__ import annotations

import gzip
import time

import numpy as np
from sqlalchemy import select

from telehealth.archive.models import Instance
from telehealth.auth.models import AuditEvent, AuditOutcome
from telehealth.db import transaction
from telehealth.ecg import service
from telehealth.ecg.service.samples import SAMPLES_CACHE, SamplesCache, encode_int16
from tests.ecg import builders, test_api
from tests.ecg.test_api import DICOM_ECG, Site, _ints

site = test_api.site  # the API tests' hub with the consortium's users, as a fixture here


def _sha256(site: Site, sop: str) -> str:
    with transaction(site.hub.factory) as session:
        return session.scalars(
            select(Instance.sha256).where(Instance.sop_instance_uid == sop)
        ).one()


def _decode(headers: dict[str, str] | object, body: bytes) -> dict[str, np.ndarray]:
    leads = headers["x-ecg-leads"].split(",")  # type: ignore[index]
    scale = np.array([float(s) for s in headers["x-ecg-scale"].split(",")])  # type: ignore[index]
    n = int(headers["x-ecg-samples"])  # type: ignore[index]
    counts = np.frombuffer(body, dtype="<i2").reshape(len(leads), n)
    return {name: counts[i] * scale[i] for i, name in enumerate(leads)}


def test_int16_samples_match_the_microvolts_and_are_kept(site: Site) -> None:
    eight = {
        k: v
        for k, v in _ints(seed=7).items()
        if k in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    }
    _, body = site.upload("tech_a", builders.muse_xml(eight, units_per_bit=4.88))
    sop = body["sop_instance_uid"]
    _measured_by_worker(site, sop)
    exact = {
        lead["name"]: np.array(lead["samples"])
        for lead in site.get("tech_a", f"/api/ecg/{sop}/samples").json()["leads"]
    }
    SAMPLES_CACHE._entries.pop(_sha256(site, sop), None)  # the worker may have prepared it
    r = site.client.get(
        f"/api/ecg/{sop}/samples",
        params={"format": "int16"},
        headers={**site.headers("tech_a"), "accept-encoding": "identity"},
    )
    assert r.status_code == 200 and "content-encoding" not in r.headers
    assert r.headers["x-ecg-derived"] == "III,aVR,aVL,aVF"
    assert r.headers["x-ecg-sampling-frequency"] == "500" and r.headers["x-ecg-units"] == "uV"
    assert len(r.content) == 2 * 12 * int(r.headers["x-ecg-samples"])  # half of float32
    decoded = _decode(r.headers, r.content)
    assert list(decoded) == list(exact)
    for name, values in exact.items():
        # Rounding to the lead's own scale: below 0.05 µV for these (peaks under 3 mV).
        np.testing.assert_allclose(decoded[name], values, atol=0.05, err_msg=name)
    # The encoded answer is now kept: a second request is served from it (gzip when asked).
    kept = SAMPLES_CACHE.get(_sha256(site, sop))
    assert kept is not None and kept.body == r.content
    zipped = site.client.get(
        f"/api/ecg/{sop}/samples",
        params={"format": "int16"},
        headers={**site.headers("tech_a"), "accept-encoding": "gzip"},
    )
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) == len(kept.gzipped) < len(r.content)
    assert zipped.content == r.content  # httpx undid the gzip; the bytes are the same
    assert gzip.decompress(kept.gzipped) == kept.body
    # Revalidation: the same ETag answers 304 without a body, still after the scope check.
    etag = r.headers["etag"]
    assert zipped.headers["etag"] == etag and "no-cache" in r.headers["cache-control"]
    again = site.client.get(
        f"/api/ecg/{sop}/samples",
        params={"format": "int16"},
        headers={**site.headers("tech_a"), "if-none-match": etag},
    )
    assert again.status_code == 304 and again.content == b""
    other = site.client.get(
        f"/api/ecg/{sop}/samples",
        params={"format": "int16"},
        headers={**site.headers("tech_b"), "if-none-match": etag},
    )
    assert other.status_code == 404
    with transaction(site.hub.factory) as session:
        events = session.execute(
            select(AuditEvent.actor, AuditEvent.outcome).where(
                AuditEvent.object_id == sop, AuditEvent.action == "ecg.samples"
            )
        ).all()
    assert ("tech_b", AuditOutcome.DENIED) in events
    assert events.count(("tech_a", AuditOutcome.SUCCESS)) == 4  # json, int16 ×2, 304


def _poisoned() -> service.EncodedSamples:
    return service.EncodedSamples(b"\0\0", gzip.compress(b"\0\0"), {"X-ECG-Leads": "I"}, '"poison"')


def _measured_by_worker(site: Site, sop: str) -> None:
    """Wait for the hub's worker to measure the upload, so it does not race the test."""
    deadline = time.monotonic() + 60
    while site.hub.ecg_worker.measured == 0:
        assert time.monotonic() < deadline, "the ECG worker never measured the upload"
        time.sleep(0.05)


def test_measuring_prepares_the_samples_from_the_same_read(site: Site) -> None:
    _, body = site.upload("tech_a", DICOM_ECG.read_bytes())
    sop = body["sop_instance_uid"]
    sha = _sha256(site, sop)
    _measured_by_worker(site, sop)
    SAMPLES_CACHE._entries.pop(sha, None)
    service.compute(site.hub.archive, site.hub.factory, sop)
    kept = SAMPLES_CACHE.get(sha)
    assert kept is not None and kept.headers["X-ECG-Samples"] == "10000"
    # What the request then serves is what the measurement prepared, not a new encoding.
    SAMPLES_CACHE.put(sha, _poisoned())
    served = site.get("tech_a", f"/api/ecg/{sop}/samples", format="int16")
    assert served.content == b"\0\0" and served.headers["x-ecg-leads"] == "I"
    SAMPLES_CACHE._entries.pop(sha)


def test_cache_drops_the_least_recently_used_beyond_its_size() -> None:
    rhythm = service.rhythm_of(service.read_dicom_ecg(DICOM_ECG.read_bytes()))
    one = encode_int16(rhythm, "a" * 64)
    cache = SamplesCache(max_bytes=2 * one.size + 10)
    cache.put("a", one)
    cache.put("b", one)
    assert cache.get("a") is one  # "a" now the most recently used
    cache.put("c", one)
    assert cache.get("b") is None and cache.get("a") is one and cache.get("c") is one
    assert len(cache) == 2
    cache.put("huge", service.EncodedSamples(b"x" * (3 * one.size), b"", {}, '"h"'))
    assert cache.get("huge") is None and len(cache) == 2
