"""Measurement accuracy on synthetic ECGs with known timings, and R peaks on MIT-BIH 100.

Tolerances as device standards ask (IEC 60601-2-25 style): heart rate ±2 bpm, intervals
±10 ms on clean signals. Anything that cannot be measured must say so, not guess.
"""

from __future__ import annotations

import numpy as np
import pytest

from telehealth.ecg.service.measure import SCALARS, detect_r_peaks, measure
from tests.conftest import DEV_DATA
from tests.ecg.synthetic import synthetic_ecg, synthetic_set

MITDB = DEV_DATA / "ecg_wfdb" / "mitdb_100" / "100"
# MIT-BIH beat annotation codes (wfdb's "beat" symbols).
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


def _check(measured: object, truth: object) -> None:
    m, t = measured, truth
    assert m.heart_rate_bpm is not None and abs(m.heart_rate_bpm - t.hr_bpm) <= 2.0, (m, t)
    for name, true in (("pr_ms", t.pr_ms), ("qrs_ms", t.qrs_ms), ("qt_ms", t.qt_ms)):
        value = getattr(m, name)
        assert value is not None, (name, m.not_computable)
        assert abs(value - true) <= 10.0, (name, value, true)
    assert m.frontal_axis_deg is not None and abs(m.frontal_axis_deg - t.axis_deg) <= 5.0
    rr_s = 60.0 / t.hr_bpm
    assert m.qtc_bazett_ms == pytest.approx(m.qt_ms / rr_s**0.5, abs=1.0)
    assert m.qtc_fridericia_ms == pytest.approx(m.qt_ms / rr_s ** (1 / 3), abs=1.0)
    assert m.rhythm_regular is True


@pytest.mark.parametrize(
    "case",
    synthetic_set(),
    ids=lambda c: f"hr{c['hr']}-pr{c['pr_ms']}-qrs{c['qrs_ms']}-qt{c['qt_ms']}",
)
def test_synthetic_intervals_within_tolerance(case: dict[str, float]) -> None:
    leads, truth = synthetic_ecg(**case)
    _check(measure(leads, 500.0), truth)


@pytest.mark.parametrize("fs", [250.0, 360.0, 1000.0])
@pytest.mark.parametrize("case", synthetic_set()[::5], ids=lambda c: f"hr{c['hr']}")
def test_other_sampling_rates(fs: float, case: dict[str, float]) -> None:
    leads, truth = synthetic_ecg(**case, fs=fs)
    _check(measure(leads, fs), truth)


def test_eight_lead_cart_gets_limb_leads_derived() -> None:
    """I, II, V1–V6 only: III, aVR, aVL, aVF come from I and II, and aVF gives the axis."""
    from telehealth.ecg.service.measure import measure_record
    from telehealth.ecg.service.waveform import EcgRecord, Lead

    leads, truth = synthetic_ecg(hr=75, axis_deg=70, only_8_leads=True, seed=5)
    assert set(leads) == {"I", "II", "V1", "V2", "V3", "V4", "V5", "V6"}
    record = EcgRecord(
        tuple(Lead(n, np.rint(v / 2.5).astype(np.int64), 2.5) for n, v in leads.items()), 500.0
    )
    full = record.with_derived_leads()
    assert [lead.name for lead in full.leads if lead.derived] == ["III", "aVR", "aVL", "aVF"]
    i, ii = full.lead("I").microvolts(), full.lead("II").microvolts()
    np.testing.assert_allclose(full.lead("aVF").microvolts(), ii - i / 2)
    _check(measure_record(record), truth)


def test_moderate_noise_still_measured() -> None:
    leads, truth = synthetic_ecg(hr=80, pr_ms=170, qrs_ms=95, qt_ms=390, noise_uv=25, seed=11)
    m = measure(leads, 500.0)
    assert abs(m.heart_rate_bpm - truth.hr_bpm) <= 2
    assert abs(m.qt_ms - truth.qt_ms) <= 15 and abs(m.qrs_ms - truth.qrs_ms) <= 15


def test_irregular_rhythm_and_pause_reported() -> None:
    leads, _ = synthetic_ecg(hr=70, seed=2)
    # A 3.4 s pause: blank out two beats between 4.0 and 6.9 s in every lead.
    n = len(leads["I"])
    t = np.arange(n) / 500.0
    gap = (t > 3.75) & (t < 6.85)
    paused = {k: np.where(gap, np.median(v), v) for k, v in leads.items()}
    m = measure(paused, 500.0)
    assert m.rhythm_regular is False
    assert m.longest_rr_ms is not None and m.longest_rr_ms > 3000


def _all_none(m: object, reason: str) -> None:
    for name in SCALARS:
        assert getattr(m, name) is None, name
        assert reason in m.not_computable[name]


def test_flat_line_is_not_computable() -> None:
    rng = np.random.default_rng(0)
    flat = {n: rng.normal(0.0, 2.0, 5000) for n in ("I", "II", "V1", "V2")}
    _all_none(measure(flat, 500.0), "flat line")


def test_pure_noise_is_not_computable() -> None:
    rng = np.random.default_rng(1)
    for sigma in (50.0, 300.0, 1000.0):
        noise = {n: rng.normal(0.0, sigma, 5000) for n in ("I", "II", "V1", "V2", "V3", "V4")}
        m = measure(noise, 500.0)
        for name in SCALARS:
            assert getattr(m, name) is None, (sigma, name, getattr(m, name))
            assert m.not_computable[name]


def test_two_second_strip_is_not_computable() -> None:
    leads, _ = synthetic_ecg(seconds=2.0)
    _all_none(measure(leads, 500.0), "2.0 s")


def test_mitdb_100_r_peaks_sensitivity_and_ppv() -> None:
    wfdb = pytest.importorskip("wfdb")
    if not MITDB.with_suffix(".dat").exists():
        pytest.skip(f"no MIT-BIH record at {MITDB}")
    record = wfdb.rdrecord(str(MITDB))
    annotation = wfdb.rdann(str(MITDB), "atr")
    reference = np.array(
        [
            s
            for s, sym in zip(annotation.sample, annotation.symbol, strict=True)
            if sym in BEAT_SYMBOLS
        ]
    )
    detected = detect_r_peaks(record.p_signal.T * 1000.0, float(record.fs))
    sensitivity, ppv = match_beats(reference, detected, window=int(0.15 * record.fs))
    assert sensitivity >= 0.995 and ppv >= 0.995, (sensitivity, ppv)


def match_beats(reference: np.ndarray, detected: np.ndarray, *, window: int) -> tuple[float, float]:
    """Sensitivity and positive predictive value, one detection per reference beat within
    ±window samples (the 150 ms of ANSI/AAMI EC57)."""
    used: set[int] = set()
    hits = 0
    for beat in reference:
        k = int(np.searchsorted(detected, beat))
        near = [c for c in (k - 1, k) if 0 <= c < detected.size and c not in used]
        near = [c for c in near if abs(int(detected[c]) - int(beat)) <= window]
        if near:
            used.add(min(near, key=lambda c: abs(int(detected[c]) - int(beat))))
            hits += 1
    return hits / max(1, reference.size), hits / max(1, detected.size)
