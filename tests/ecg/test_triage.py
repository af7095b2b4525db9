"""Triage is a pure function of measurements, request flags and configured thresholds."""

from __future__ import annotations

from telehealth.config import Settings
from telehealth.ecg.service import (
    RequestFlag,
    TriageCode,
    TriageThresholds,
    request_flags_from_text,
    triage,
)

NORMAL = {"heart_rate_bpm": 72.0, "qtc_bazett_ms": 420.0, "longest_rr_ms": 900.0}
DEFAULT = TriageThresholds()


def codes(
    values: dict[str, object], flags: tuple[str, ...] = (), t: TriageThresholds = DEFAULT
) -> list[str]:
    return [str(r.code) for r in triage(values, flags, t)]


def test_normal_ecg_raises_nothing() -> None:
    assert triage(NORMAL, (), DEFAULT) == []


def test_each_rule_and_its_priority() -> None:
    slow = triage({**NORMAL, "heart_rate_bpm": 36.0}, (), DEFAULT)
    assert [(r.code, r.priority, r.value, r.threshold) for r in slow] == [
        (TriageCode.BRADYCARDIA, "stat", 36.0, 40.0)
    ]
    assert "36" in slow[0].message
    assert codes({**NORMAL, "heart_rate_bpm": 160.0}) == ["tachycardia"]
    assert codes({**NORMAL, "qtc_bazett_ms": 512.0}) == ["long_qtc"]
    assert codes({**NORMAL, "longest_rr_ms": 3400.0}) == ["pause"]
    # Exactly at a threshold is not past it.
    assert (
        codes({**NORMAL, "heart_rate_bpm": 40.0, "qtc_bazett_ms": 500.0, "longest_rr_ms": 3000.0})
        == []
    )


def test_stat_reasons_come_first() -> None:
    reasons = triage({**NORMAL, "qtc_bazett_ms": 530.0, "longest_rr_ms": 3500.0}, (), DEFAULT)
    assert [r.priority for r in reasons] == ["stat", "urgent"]


def test_request_flags() -> None:
    assert [(r.code, r.priority) for r in triage(NORMAL, ("chest_pain",), DEFAULT)] == [
        (TriageCode.CHEST_PAIN, "stat")
    ]
    assert [(r.code, r.priority) for r in triage(NORMAL, ("syncope", "unheard_of"), DEFAULT)] == [
        (TriageCode.SYNCOPE, "urgent")
    ]
    assert request_flags_from_text("患者胸痛2小时", "") == {RequestFlag.CHEST_PAIN}
    assert request_flags_from_text("syncope; palpitations") == {
        RequestFlag.SYNCOPE,
        RequestFlag.PALPITATIONS,
    }
    assert request_flags_from_text("体检") == set()


def test_missing_or_overruled_values_trigger_nothing() -> None:
    assert triage({"heart_rate_bpm": None, "qtc_bazett_ms": None}, (), DEFAULT) == []
    assert triage({}, (), DEFAULT) == []


def test_thresholds_come_from_configuration() -> None:
    settings = Settings(
        ecg_triage_hr_low_bpm=50,
        ecg_triage_hr_high_bpm=120,
        ecg_triage_qtc_ms=470,
        ecg_triage_pause_s=2.0,
        ecg_triage_stat_requests=["chest_pain", "syncope"],
    )
    t = TriageThresholds.from_settings(settings)
    assert codes({"heart_rate_bpm": 45.0}, t=t) == ["bradycardia"]
    assert codes({"heart_rate_bpm": 130.0}, t=t) == ["tachycardia"]
    assert codes({"qtc_bazett_ms": 480.0}, t=t) == ["long_qtc"]
    assert codes({"longest_rr_ms": 2500.0}, t=t) == ["pause"]
    assert [r.priority for r in triage({}, ("syncope",), t)] == ["stat"]
