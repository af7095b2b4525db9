"""ECG triage: which measurements and request reasons make an ECG urgent, and why.

A pure function of the (reader-corrected) measurements, the request's flags and configured
thresholds; it touches no case. The cases domain calls it when it creates or updates an ECG
case and raises the case's priority to the highest returned (see README, "ECG").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

TriagePriority = Literal["stat", "urgent"]


class TriageCode(StrEnum):
    BRADYCARDIA = "bradycardia"
    TACHYCARDIA = "tachycardia"
    LONG_QTC = "long_qtc"
    PAUSE = "pause"
    CHEST_PAIN = "chest_pain"
    SYNCOPE = "syncope"
    PALPITATIONS = "palpitations"


class RequestFlag(StrEnum):
    """What the requesting clinic said about the patient (from the request form or text)."""

    CHEST_PAIN = "chest_pain"  # 胸痛: first ECG to diagnosis within 10 minutes
    SYNCOPE = "syncope"  # 晕厥
    PALPITATIONS = "palpitations"  # 心悸


@dataclass(frozen=True)
class TriageThresholds:
    hr_low_bpm: float = 40.0
    hr_high_bpm: float = 150.0
    qtc_high_ms: float = 500.0  # Bazett
    pause_s: float = 3.0
    # Request flags that make the ECG STAT; others listed in _FLAG_PRIORITY are URGENT.
    stat_flags: frozenset[str] = frozenset({RequestFlag.CHEST_PAIN})

    @classmethod
    def from_settings(cls, settings: Any) -> TriageThresholds:
        return cls(
            hr_low_bpm=settings.ecg_triage_hr_low_bpm,
            hr_high_bpm=settings.ecg_triage_hr_high_bpm,
            qtc_high_ms=settings.ecg_triage_qtc_ms,
            pause_s=settings.ecg_triage_pause_s,
            stat_flags=frozenset(settings.ecg_triage_stat_requests),
        )


@dataclass(frozen=True)
class TriageReason:
    code: TriageCode
    priority: TriagePriority
    message: str  # shown in the queue
    value: float | None = None
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["code"] = str(self.code)
        return out


_FLAG_CODES = {
    RequestFlag.CHEST_PAIN: (TriageCode.CHEST_PAIN, "胸痛 chest pain on the request"),
    RequestFlag.SYNCOPE: (TriageCode.SYNCOPE, "晕厥 syncope on the request"),
    RequestFlag.PALPITATIONS: (TriageCode.PALPITATIONS, "心悸 palpitations on the request"),
}
_TEXT_FLAGS = (
    (RequestFlag.CHEST_PAIN, re.compile(r"胸痛|胸闷|chest\s*pain|ACS|STEMI|心梗", re.IGNORECASE)),
    (RequestFlag.SYNCOPE, re.compile(r"晕厥|昏厥|syncope", re.IGNORECASE)),
    (RequestFlag.PALPITATIONS, re.compile(r"心悸|palpitation", re.IGNORECASE)),
)


def request_flags_from_text(*texts: str) -> set[RequestFlag]:
    """Flags named in free text (clinical history, question): 胸痛 → chest_pain, …"""
    joined = "\n".join(t for t in texts if t)
    return {flag for flag, pattern in _TEXT_FLAGS if pattern.search(joined)}


def _number(values: Mapping[str, Any], key: str) -> float | None:
    value = values.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def triage(
    measurements: Mapping[str, Any],
    request_flags: Iterable[str],
    thresholds: TriageThresholds,
) -> list[TriageReason]:
    """The reasons this ECG is urgent, most urgent first; empty when nothing is.

    `measurements` maps the measurement names (heart_rate_bpm, qtc_bazett_ms,
    longest_rr_ms, …) to values, as `effective_values` gives them; a value that is None
    (not computable, or overruled as not measurable) triggers nothing.
    """
    reasons: list[TriageReason] = []
    hr = _number(measurements, "heart_rate_bpm")
    if hr is not None and hr < thresholds.hr_low_bpm:
        reasons.append(
            TriageReason(
                TriageCode.BRADYCARDIA,
                "stat",
                f"心动过缓 heart rate {hr:.0f}/min < {thresholds.hr_low_bpm:g}",
                hr,
                thresholds.hr_low_bpm,
            )
        )
    if hr is not None and hr > thresholds.hr_high_bpm:
        reasons.append(
            TriageReason(
                TriageCode.TACHYCARDIA,
                "stat",
                f"心动过速 heart rate {hr:.0f}/min > {thresholds.hr_high_bpm:g}",
                hr,
                thresholds.hr_high_bpm,
            )
        )
    longest = _number(measurements, "longest_rr_ms")
    if longest is not None and longest > thresholds.pause_s * 1000.0:
        reasons.append(
            TriageReason(
                TriageCode.PAUSE,
                "stat",
                f"长间歇 pause of {longest / 1000:.1f} s > {thresholds.pause_s:g} s",
                longest / 1000.0,
                thresholds.pause_s,
            )
        )
    qtc = _number(measurements, "qtc_bazett_ms")
    if qtc is not None and qtc > thresholds.qtc_high_ms:
        reasons.append(
            TriageReason(
                TriageCode.LONG_QTC,
                "urgent",
                f"QTc 延长 QTc {qtc:.0f} ms > {thresholds.qtc_high_ms:g} ms",
                qtc,
                thresholds.qtc_high_ms,
            )
        )
    for flag in sorted({str(f) for f in request_flags}):
        if flag not in RequestFlag.__members__.values():
            continue
        code, message = _FLAG_CODES[RequestFlag(flag)]
        priority: TriagePriority = "stat" if flag in thresholds.stat_flags else "urgent"
        reasons.append(TriageReason(code, priority, message))
    reasons.sort(key=lambda r: 0 if r.priority == "stat" else 1)
    return reasons
