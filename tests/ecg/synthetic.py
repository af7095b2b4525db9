"""Synthetic 12-lead ECGs with known heart rate, PR, QRS, QT and frontal axis.

Built like the calibration ECGs of IEC 60601-2-25 (CAL/ANE): waves with exactly defined
starts and ends, so the truth is not a matter of opinion —

- P wave: a half sine from P onset to P end;
- QRS: a piecewise-linear heart vector (0 → Q → R → S → 0) projected on every lead, so all
  leads start and end together and their areas give a known frontal axis;
- T wave: a quarter sine up to the peak and a quarter cosine down to T end.

Leads are projections of one 3-D vector (x left, y inferior, z anterior); III, aVR, aVL
and aVF are derived from I and II as a cart does. White noise and baseline wander are added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Lead directions: frontal leads in the x–y plane (angle from lead I toward inferior),
# precordial leads in the x–z plane (angle from V6 toward anterior).
_PRECORDIAL = {"V1": 115.0, "V2": 90.0, "V3": 70.0, "V4": 50.0, "V5": 25.0, "V6": 0.0}
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@dataclass(frozen=True)
class Truth:
    hr_bpm: float
    pr_ms: float
    qrs_ms: float
    qt_ms: float
    axis_deg: float  # frontal axis of the net QRS vector


def _unit(angle_deg: float, plane: str) -> np.ndarray:
    a = math.radians(angle_deg)
    if plane == "frontal":
        return np.array([math.cos(a), math.sin(a), 0.0])
    return np.array([math.cos(a), 0.0, math.sin(a)])


def _vector(axis_deg: float, magnitude: float, anterior: float = 0.0) -> np.ndarray:
    a = math.radians(axis_deg)
    return magnitude * np.array([math.cos(a), math.sin(a), anterior])


def synthetic_ecg(
    *,
    hr: float = 70.0,
    pr_ms: float = 160.0,
    qrs_ms: float = 90.0,
    qt_ms: float = 400.0,
    axis_deg: float = 50.0,
    seconds: float = 10.0,
    fs: float = 500.0,
    noise_uv: float = 10.0,
    wander_uv: float = 80.0,
    p_mv: float = 0.15,
    t_mv: float = 0.35,
    seed: int = 0,
    rr_jitter_ms: float = 0.0,
    only_8_leads: bool = False,
) -> tuple[dict[str, np.ndarray], Truth]:
    """Leads in µV (name → samples) and the truth they were built from."""
    rng = np.random.default_rng(seed)
    n = round(seconds * fs)
    t = np.arange(n) / fs
    rr = 60.0 / hr
    onsets = []
    at = 0.45 + pr_ms / 1000.0
    while at < seconds + rr:
        onsets.append(at)
        at += rr + (rng.normal(0.0, rr_jitter_ms / 1000.0) if rr_jitter_ms else 0.0)

    # QRS knots: fractions of the QRS duration and vectors (mV) at them.
    r_vec = _vector(axis_deg, 1.4, anterior=0.3)
    q_vec = _vector(axis_deg + 150.0, 0.18, anterior=-0.1)
    s_vec = _vector(axis_deg - 140.0, 0.35, anterior=-0.9)
    knots_f = np.array([0.0, 0.15, 0.45, 0.75, 1.0])
    knots_v = np.stack([np.zeros(3), q_vec, r_vec, s_vec, np.zeros(3)])
    # Net QRS area ∝ 0.225 Q + 0.30 R + 0.275 S (trapezoids between the knots).
    net = 0.225 * q_vec + 0.30 * r_vec + 0.275 * s_vec
    true_axis = math.degrees(math.atan2(net[1], net[0]))

    p_vec = _vector(55.0, p_mv, anterior=0.2)
    t_vec = _vector(axis_deg - 10.0, t_mv, anterior=0.6)
    p_ms = min(110.0, pr_ms - 30.0)
    t_total = qt_ms - qrs_ms
    st_ms = min(120.0, max(30.0, 0.25 * t_total))
    t_ms = t_total - st_ms

    vec = np.zeros((3, n))
    for onset in onsets:
        # P: half sine over [onset - PR, onset - PR + P].
        u = (t - (onset - pr_ms / 1000.0)) / (p_ms / 1000.0)
        m = (u >= 0) & (u <= 1)
        vec[:, m] += np.outer(p_vec, np.sin(math.pi * u[m]))
        # QRS: piecewise linear between the knots.
        u = (t - onset) / (qrs_ms / 1000.0)
        m = (u >= 0) & (u <= 1)
        for axis in range(3):
            vec[axis, m] += np.interp(u[m], knots_f, knots_v[:, axis])
        # T: quarter sine up over 60 %, quarter cosine down over 40 %.
        u = (t - (onset + (qrs_ms + st_ms) / 1000.0)) / (t_ms / 1000.0)
        up = (u >= 0) & (u < 0.6)
        down = (u >= 0.6) & (u <= 1.0)
        shape = np.zeros(n)
        shape[up] = np.sin(0.5 * math.pi * u[up] / 0.6)
        shape[down] = np.cos(0.5 * math.pi * (u[down] - 0.6) / 0.4)
        vec += np.outer(t_vec, shape)

    leads: dict[str, np.ndarray] = {}
    leads["I"] = _unit(0.0, "frontal") @ vec
    leads["II"] = _unit(60.0, "frontal") @ vec
    for name, angle in _PRECORDIAL.items():
        leads[name] = 1.2 * (_unit(angle, "precordial") @ vec)
    for name in list(leads):
        leads[name] = leads[name] * 1000.0  # mV → µV
        leads[name] += rng.normal(0.0, noise_uv, n)
        leads[name] += wander_uv * np.sin(2 * math.pi * 0.2 * t + rng.uniform(0, 6.28))
    lead_i, lead_ii = leads["I"], leads["II"]
    if not only_8_leads:
        leads["III"] = lead_ii - lead_i
        leads["aVR"] = -(lead_i + lead_ii) / 2
        leads["aVL"] = lead_i - lead_ii / 2
        leads["aVF"] = lead_ii - lead_i / 2
    ordered = {name: leads[name] for name in LEADS if name in leads}
    mean_hr = 60.0 / float(np.mean(np.diff(onsets))) if rr_jitter_ms else hr
    return ordered, Truth(mean_hr, pr_ms, qrs_ms, qt_ms, true_axis)


def synthetic_set() -> list[dict[str, float]]:
    """The accuracy set: HR 40–180, PR 120–280, QRS 70–160, QT 300–520 ms.

    Each case keeps T end before the next P wave (an ECG whose P sits on the previous T has
    no measurable PR), so at the fastest rates the QT is shorter than 300 ms.
    """
    cases = []
    grid = [
        (40, 200, 100, 520),
        (45, 280, 160, 500),
        (50, 240, 120, 480),
        (55, 120, 70, 440),
        (60, 160, 90, 420),
        (60, 280, 140, 460),
        (70, 140, 80, 400),
        (75, 200, 110, 380),
        (80, 180, 160, 420),
        (90, 160, 100, 360),
        (100, 140, 90, 340),
        (110, 120, 120, 320),
        (120, 150, 80, 300),
        (130, 120, 70, 300),
        (150, 120, 90, 260),
        (165, 120, 80, 240),
        (180, 110, 70, 220),
    ]
    for k, (hr, pr, qrs, qt) in enumerate(grid):
        cases.append(
            {
                "hr": hr,
                "pr_ms": pr,
                "qrs_ms": qrs,
                "qt_ms": qt,
                "axis_deg": -30 + 10 * (k % 12),
                "seed": k,
            }
        )
    return cases
