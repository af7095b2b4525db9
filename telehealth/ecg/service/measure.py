"""Standard ECG measurements: rate, rhythm regularity, PR, QRS, QT, QTc, frontal axis, amplitudes.

R peaks come from neurokit2's detector run on the leads' root mean square. Intervals are NOT
taken from neurokit2's delineation (unreliable on test signals): they are measured here on
a median beat built from the aligned beats of every lead —

- QRS onset and offset: where the spatial velocity (the root of the summed squared slopes of
  all leads) leaves and returns to its resting level, so the earliest lead sets the onset
  and the latest the offset (global QRS, as IEC 60601-2-25 measures it);
- T end: tangent at the steepest point of the T wave's last limb, crossed with the
  isoelectric (PR segment) level, in the leads whose T wave is large enough; the latest wins;
- P onset: tangent at the steepest point of the P wave's first limb, the earliest of the
  leads whose P wave is large and present in every beat (an averaged-away P means none).

Nothing is reported that could not be measured: a flat line, noise, or too short a strip
gives None with the reason in `not_computable`. Validated against synthetic ECGs with known
timings (tests/ecg/test_measure.py) and MIT-BIH record 100's beat annotations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from telehealth.ecg.service.waveform import STANDARD_12, EcgRecord

ALGORITHM = "telehealth-ecg 1"
ANALYSIS_FS = 500.0  # every recording is measured at this rate (2 ms resolution)
MIN_DURATION_S = 5.0
MIN_BEATS = 3
FLAT_UV = 40.0  # a lead whose robust peak-to-peak stays under this carries no ECG
PRE_S, POST_S = 0.5, 0.8  # median-beat window around the QRS fiducial

# Fields a reader can overrule (and the ones triage and the report template read).
SCALARS = (
    "heart_rate_bpm",
    "rr_mean_ms",
    "rr_sdnn_ms",
    "rr_rmssd_ms",
    "longest_rr_ms",
    "rhythm_regular",
    "pr_ms",
    "qrs_ms",
    "qt_ms",
    "qtc_bazett_ms",
    "qtc_fridericia_ms",
    "frontal_axis_deg",
)


@dataclass(frozen=True)
class LeadAmplitudes:
    """Median-beat amplitudes of one lead in µV, against its PR-segment level."""

    p_uv: float | None = None
    q_uv: float | None = None
    r_uv: float | None = None
    s_uv: float | None = None
    t_uv: float | None = None
    st_uv: float | None = None  # ST level at J + 60 ms


@dataclass(frozen=True)
class Measurements:
    heart_rate_bpm: float | None = None
    rr_mean_ms: float | None = None
    rr_sdnn_ms: float | None = None
    rr_rmssd_ms: float | None = None
    longest_rr_ms: float | None = None
    rhythm_regular: bool | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_bazett_ms: float | None = None
    qtc_fridericia_ms: float | None = None
    frontal_axis_deg: float | None = None
    beats: int = 0
    leads: dict[str, LeadAmplitudes] = field(default_factory=dict)
    # field → why it is None ("no P wave found", "recording is 2.0 s; …")
    not_computable: dict[str, str] = field(default_factory=dict)
    r_peaks_s: tuple[float, ...] = ()
    # Median-beat fiducials in ms from QRS onset (p_onset negative).
    fiducials_ms: dict[str, float] = field(default_factory=dict)
    sampling_frequency_hz: float = 0.0
    duration_s: float = 0.0
    algorithm: str = ALGORITHM

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["r_peaks_s"] = list(self.r_peaks_s)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurements:
        values = dict(data)
        values["leads"] = {k: LeadAmplitudes(**v) for k, v in (values.get("leads") or {}).items()}
        values["r_peaks_s"] = tuple(values.get("r_peaks_s") or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def _none_of_everything(reason: str, **extra: Any) -> Measurements:
    return Measurements(not_computable={name: reason for name in SCALARS}, **extra)


# --- signal helpers ---------------------------------------------------------------------------


def _resample(x: np.ndarray, fs: float) -> np.ndarray:
    from scipy import signal as sp  # here, not at the top: ~1 s to import, for every CLI call

    if abs(fs - ANALYSIS_FS) < 1e-6:
        return x
    ratio = Fraction(ANALYSIS_FS / fs).limit_denominator(1000)
    return sp.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def _band(x: np.ndarray, low: float | None, high: float | None, fs: float) -> np.ndarray:
    """Zero-phase Butterworth filtering (no shift of onsets and ends)."""
    from scipy import signal as sp

    if low and high:
        sos = sp.butter(2, [low, high], btype="bandpass", fs=fs, output="sos")
    elif low:
        sos = sp.butter(2, low, btype="highpass", fs=fs, output="sos")
    else:
        sos = sp.butter(2, high, btype="lowpass", fs=fs, output="sos")
    return np.asarray(sp.sosfiltfilt(sos, x, axis=-1))


def _ptp(x: np.ndarray) -> float:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return float(hi - lo)


def detect_r_peaks(leads: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices in (leads × samples) µV signals sampled at `fs`.

    neurokit2's gradient detector runs on the root mean square of the band-passed leads,
    so no single lead's polarity or amplitude decides; each peak is then placed at the
    largest RMS value within ±50 ms.
    """
    import neurokit2 as nk  # heavy import (pandas, scikit-learn): only when measuring

    x = np.atleast_2d(leads)
    band = _band(x, 5.0, min(40.0, fs / 2.5), fs)
    rms = np.sqrt(np.mean(band * band, axis=0))
    with warnings.catch_warnings():  # its mean of no QRS at all warns; we check below
        warnings.simplefilter("ignore", RuntimeWarning)
        info = nk.ecg_findpeaks(rms, sampling_rate=round(fs), method="neurokit")
    peaks = np.asarray(info.get("ECG_R_Peaks", []), dtype=np.int64)
    half = int(0.05 * fs)
    refined = []
    for p in peaks:
        lo, hi = max(0, p - half), min(rms.size, p + half + 1)
        refined.append(lo + int(np.argmax(rms[lo:hi])))
    found = np.unique(np.asarray(refined, dtype=np.int64))
    if found.size < 3:
        return found
    # The detector's threshold follows the mean slope over 0.75 s; in a slow rhythm a steep
    # T wave can pass it. A QRS stands far above a T wave in the 5–40 Hz band.
    heights = rms[found]
    return found[heights >= 0.3 * float(np.percentile(heights, 90))]


def _runs_below(
    values: np.ndarray, threshold: float, start: int, step: int, run: int
) -> int | None:
    """From `start` moving by `step`, the first index where `values` stays below the
    threshold for `run` samples; None when it never does."""
    i = start
    n = values.size
    while 0 <= i < n:
        j_end = i + step * run
        if not (0 <= j_end - step < n):
            return None
        if all(values[i + step * k] < threshold for k in range(run)):
            return i
        i += step
    return None


# --- the measurement --------------------------------------------------------------------------


def measure_record(record: EcgRecord, *, min_duration_s: float = MIN_DURATION_S) -> Measurements:
    """Measurements of a record, with III/aVR/aVL/aVF derived from I and II when missing."""
    full = record.with_derived_leads()
    return measure(full.microvolts(), full.sampling_frequency, min_duration_s=min_duration_s)


def measure(
    signals: Mapping[str, np.ndarray], fs: float, *, min_duration_s: float = MIN_DURATION_S
) -> Measurements:
    """Measurements from leads in µV (name → samples) sampled at `fs` Hz."""
    names = [n for n in STANDARD_12 if n in signals] + [n for n in signals if n not in STANDARD_12]
    if not names:
        return _none_of_everything("no ECG leads")
    raw = np.vstack([np.nan_to_num(np.asarray(signals[n], dtype=np.float64)) for n in names])
    duration = raw.shape[1] / fs
    info = {"sampling_frequency_hz": float(fs), "duration_s": round(duration, 3)}
    if duration < min_duration_s:
        return _none_of_everything(
            f"recording is {duration:.1f} s; at least {min_duration_s:g} s is needed", **info
        )
    x = _resample(raw, fs)
    rate = ANALYSIS_FS
    flat_check = _band(x, 0.5, None, rate)
    usable = [i for i in range(len(names)) if _ptp(flat_check[i]) >= FLAT_UV]
    if not usable:
        return _none_of_everything("no signal: every lead is a flat line", **info)
    # 0.05 Hz keeps the waves' shape (a 0.5 Hz high-pass bends long P–R and T–P stretches
    # by several ms); the remaining wander is taken out below through the PR segments.
    kept = _band(x, 0.05, None, rate)
    wide = _band(kept, None, 100.0, rate)

    peaks = detect_r_peaks(wide[usable], rate)
    if peaks.size < MIN_BEATS:
        return _none_of_everything(f"only {peaks.size} beats found", **info)
    rr_ms = np.diff(peaks) / rate * 1000.0
    if not (200.0 <= float(np.median(rr_ms)) <= 3000.0):
        return _none_of_everything("no plausible heart rhythm found (noise?)", **info)
    no_beat = {
        "beats": int(peaks.size),
        "r_peaks_s": tuple(round(float(p) / rate, 4) for p in peaks),
    }
    noise = "no consistent heartbeat found: the beats do not resemble each other (noise?)"

    first = _median_beat(wide, wide, peaks, usable, rate)
    if first is None:
        return _none_of_everything(noise, **info, **no_beat)
    bounds = _qrs_bounds(first.wide, usable, first.center, rate)
    if bounds is not None:
        # Baseline through each beat's PR segment (10 ms before QRS onset), a cubic
        # spline between them: wander goes, the waves stay as they were.
        knot_offset = bounds[0] - first.center - int(0.01 * rate)
        kept = kept - _pr_spline(_band(kept, None, 40.0, rate), first.fiducials, knot_offset)
        wide = _band(kept, None, 100.0, rate)
    smooth = _band(kept, None, 40.0, rate)
    median = _median_beat(wide, smooth, peaks, usable, rate)
    if median is None:
        return _none_of_everything(noise, **info, **no_beat)
    return _delineate(names, usable, median, peaks, rr_ms, rate, info)


def _pr_spline(smooth: np.ndarray, fiducials: list[int], offset: int) -> np.ndarray:
    """Per lead, a cubic spline through the PR-segment levels (held flat beyond the ends)."""
    from scipy.interpolate import CubicSpline

    n = smooth.shape[1]
    half = 3
    knots = sorted({f + offset for f in fiducials if half <= f + offset < n - half})
    if len(knots) < 2:
        return np.zeros_like(smooth)
    positions = np.asarray(knots)
    levels = np.stack([smooth[:, k - half : k + half + 1].mean(axis=1) for k in knots], axis=1)
    grid = np.arange(n)
    inside = (grid >= positions[0]) & (grid <= positions[-1])
    baseline = np.empty_like(smooth)
    for lead in range(smooth.shape[0]):
        baseline[lead] = np.interp(grid, positions, levels[lead])
        if len(knots) >= 3:
            baseline[lead, inside] = CubicSpline(positions, levels[lead])(grid[inside])
    return baseline


@dataclass
class _Median:
    wide: np.ndarray  # leads × window, the median beat (≤100 Hz)
    smooth: np.ndarray  # leads × window (≤40 Hz)
    beats_smooth: np.ndarray  # beats × leads × window (≤40 Hz), the aligned beats kept
    center: int  # index of the QRS fiducial in the window
    fiducials: list[int]  # every beat's aligned QRS fiducial in the record


def _spatial_velocity(beat: np.ndarray, usable: list[int]) -> np.ndarray:
    slopes = np.gradient(beat[usable], axis=-1)
    return np.sqrt(np.sum(slopes * slopes, axis=0))


def _median_beat(
    wide: np.ndarray, smooth: np.ndarray, peaks: np.ndarray, usable: list[int], rate: float
) -> _Median | None:
    pre, post = int(PRE_S * rate), int(POST_S * rate)
    n = wide.shape[1]
    velocity = _spatial_velocity(wide, usable)
    half = int(0.05 * rate)
    fiducials = []
    for p in peaks:
        lo, hi = max(0, p - half), min(n, p + half + 1)
        fiducials.append(lo + int(np.argmax(velocity[lo:hi])))
    inside = [f for f in fiducials if f - pre - 12 >= 0 and f + post + 12 <= n]
    if len(inside) < 2:
        # Slow rhythm in a short strip: a narrower window still catches P and T.
        pre, post = int(0.35 * rate), int(0.6 * rate)
        inside = [f for f in fiducials if f - pre - 12 >= 0 and f + post + 12 <= n]
    if len(inside) < 2:
        return None
    # Align each beat on the QRS template (±20 ms) before taking the median: a beat
    # misplaced by a few samples would widen the median QRS.
    qrs = slice(pre - int(0.08 * rate), pre + int(0.12 * rate))
    template = np.median([wide[usable, f - pre : f + post] for f in inside], axis=0)
    aligned = []
    scores = []
    for f in inside:
        best, best_score = f, -np.inf
        for lag in range(-10, 11):
            seg = wide[usable, f + lag - pre : f + lag + post]
            if seg.shape[1] != pre + post:
                continue
            score = float(np.sum(seg[:, qrs] * template[:, qrs]))
            if score > best_score:
                best, best_score = f + lag, score
        aligned.append(best)
    # Each beat against the median of the others: with few beats, a beat's likeness to a
    # median that contains it says nothing (three noise stretches would pass).
    segments = np.stack([wide[usable, f - pre : f + post] for f in aligned])
    for k in range(len(aligned)):
        others = np.median(np.delete(segments, k, axis=0), axis=0)
        scores.append(_correlation(segments[k][:, qrs], others[:, qrs]))
    keep = [f for f, r in zip(aligned, scores, strict=True) if r >= 0.8]
    if len(keep) < 2 or len(keep) < 0.5 * len(aligned):
        return None
    wide_beats = np.stack([wide[:, f - pre : f + post] for f in keep])
    smooth_beats = np.stack([smooth[:, f - pre : f + post] for f in keep])
    # Whole-beat consistency: noise that happens to line up at the QRS does not repeat
    # its T wave.
    median_wide = np.median(wide_beats, axis=0)
    whole = [
        _correlation(
            wide_beats[k][usable], np.median(np.delete(wide_beats, k, axis=0), axis=0)[usable]
        )
        for k in range(len(keep))
    ]
    if float(np.median(whole)) < 0.6:
        return None
    return _Median(median_wide, np.median(smooth_beats, axis=0), smooth_beats, pre, aligned)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denominator if denominator > 0 else 0.0


def _qrs_bounds(
    wide: np.ndarray, usable: list[int], center: int, rate: float
) -> tuple[int, int] | None:
    """QRS onset and end (indices in the median beat) from the spatial velocity."""
    velocity = _spatial_velocity(wide, usable)
    lo = center - int(0.03 * rate)
    peak = lo + int(np.argmax(velocity[lo : lo + int(0.06 * rate)]))
    resting = float(np.percentile(velocity, 20))
    threshold = max(0.06 * float(velocity[peak]), 3.0 * resting)
    run = max(2, int(0.008 * rate))
    onset_i = _runs_below(velocity, threshold, peak, -1, run)
    offset_i = _runs_below(velocity, threshold, peak, +1, run)
    if onset_i is None or offset_i is None:
        return None
    qrs_on, qrs_off = onset_i + 1, offset_i - 1
    if not (40.0 <= (qrs_off - qrs_on) * 1000.0 / rate <= 250.0):
        return None
    return qrs_on, qrs_off


def _tangent_crossing(y: np.ndarray, index: int, slope: float, level: float) -> float:
    """Where the tangent at `index` (slope per sample) crosses `level`, in samples."""
    return index + (level - float(y[index])) / slope


def _delineate(
    names: list[str],
    usable: list[int],
    median: _Median,
    peaks: np.ndarray,
    rr_ms: np.ndarray,
    rate: float,
    info: dict[str, Any],
) -> Measurements:
    ms = 1000.0 / rate
    missing: dict[str, str] = {}
    rr_mean = float(np.mean(rr_ms))
    rr_median = float(np.median(rr_ms))
    heart_rate = 60000.0 / rr_mean
    diffs = np.diff(rr_ms)
    regular = bool(np.max(np.abs(rr_ms - rr_median)) <= max(120.0, 0.15 * rr_median))

    wide, smooth, center = median.wide, median.smooth, median.center
    window = wide.shape[1]

    # --- QRS onset and offset from the spatial velocity ------------------------------------
    bounds = _qrs_bounds(wide, usable, center, rate)
    qrs_on, qrs_off = bounds if bounds is not None else (None, None)
    if qrs_on is None or qrs_off is None:
        # Beats that line up but have no QRS one can bound are not beats one can count.
        return _none_of_everything(
            "no QRS complex could be delimited in the median beat (noise?)",
            beats=int(peaks.size),
            r_peaks_s=tuple(round(float(p) / rate, 4) for p in peaks),
            **info,
        )

    # Isoelectric level of each lead: the PR segment just before the QRS.
    pr_segment = slice(max(0, qrs_on - int(0.016 * rate)), max(1, qrs_on - int(0.004 * rate)))
    level_wide = np.median(wide[:, pr_segment], axis=1)
    level_smooth = np.median(smooth[:, pr_segment], axis=1)
    wide_c = wide - level_wide[:, None]
    smooth_c = smooth - level_smooth[:, None]

    # --- T end by the tangent method -------------------------------------------------------
    rr_samples = rr_median / ms
    t_lo = qrs_off + int(0.04 * rate)
    t_hi = min(window - 2, qrs_on + int(0.65 * rate), int(qrs_on + rr_samples - 0.10 * rate))
    t_end = None
    t_amplitudes: dict[int, float] = {}
    if t_hi - t_lo > int(0.06 * rate):
        for i in usable:
            seg = smooth_c[i, t_lo:t_hi]
            k = int(np.argmax(np.abs(seg)))
            t_amplitudes[i] = float(seg[k])
        biggest = max(abs(a) for a in t_amplitudes.values()) if t_amplitudes else 0.0
        ends = []
        for i, amplitude in t_amplitudes.items():
            if abs(amplitude) < max(50.0, 0.4 * biggest):
                continue
            y = smooth_c[i]
            sign = 1.0 if amplitude > 0 else -1.0
            seg = sign * y[t_lo:t_hi]
            t_peak = t_lo + int(np.argmax(seg))
            # The last limb: from the peak until the wave has come back to 10 % of it.
            tail = t_peak
            while tail < t_hi - 1 and sign * y[tail] > 0.1 * abs(amplitude):
                tail += 1
            if tail - t_peak < 2:  # np.gradient needs two samples; a limb needs three
                continue
            limb = np.gradient(sign * y[t_peak : tail + 1])
            k = int(np.argmin(limb))
            if limb[k] >= 0:
                continue
            end = _tangent_crossing(sign * y, t_peak + k, float(limb[k]), 0.0)
            if t_peak < end <= t_hi + 0.05 * rate:
                ends.append(end)
        if ends:
            t_end = max(ends)
    if t_end is None:
        missing["qt_ms"] = "T wave end not found"

    # --- P onset by the tangent method -----------------------------------------------------
    p_hi = qrs_on - int(0.03 * rate)
    p_lo = max(2, qrs_on - int(0.40 * rate))
    if t_end is not None:
        p_lo = max(p_lo, int(t_end - rr_samples))  # the previous beat's T end
    p_on = None
    p_amplitudes: dict[int, float] = {}
    p_peak_at: dict[int, int] = {}
    if p_hi - p_lo > int(0.04 * rate):
        beats = median.beats_smooth
        for i in usable:
            seg = smooth_c[i, p_lo:p_hi]
            k = int(np.argmax(np.abs(seg)))
            amplitude = float(seg[k])
            # Present in every beat, not an average of fibrillation or noise: the beats'
            # values at the P peak must agree in sign and size (a t statistic).
            at = p_lo + k
            per_beat = beats[:, i, at] - np.median(beats[:, i, pr_segment], axis=1)
            spread = float(np.std(per_beat, ddof=1)) if per_beat.size > 1 else 0.0
            t_stat = abs(float(np.mean(per_beat))) / (spread / math.sqrt(per_beat.size) + 1e-9)
            if abs(amplitude) >= 20.0 and t_stat >= 4.0:
                p_amplitudes[i] = amplitude
                p_peak_at[i] = at
        biggest = max((abs(a) for a in p_amplitudes.values()), default=0.0)
        onsets = []
        for i, amplitude in p_amplitudes.items():
            if abs(amplitude) < 0.5 * biggest:
                continue
            y = smooth_c[i]
            sign = 1.0 if amplitude > 0 else -1.0
            p_peak = p_peak_at[i]
            head = p_peak
            while head > p_lo and sign * y[head] > 0.1 * abs(amplitude):
                head -= 1
            if p_peak - head < 2:  # np.gradient needs two samples; a limb needs three
                continue
            limb = np.gradient(sign * y[head : p_peak + 1])
            k = int(np.argmax(limb))
            if limb[k] <= 0:
                continue
            start = _tangent_crossing(sign * y, head + k, float(limb[k]), 0.0)
            if p_lo - 0.02 * rate <= start < p_peak:
                onsets.append(start)
        if onsets:
            p_on = min(onsets)
    if p_on is None:
        missing["pr_ms"] = "no P wave found before the QRS"

    qrs_ms = (qrs_off - qrs_on) * ms
    pr = (qrs_on - p_on) * ms if p_on is not None else None
    if pr is not None and not (50.0 <= pr <= 450.0):
        pr = None
        missing["pr_ms"] = "P wave onset outside the plausible range"
    qt = (t_end - qrs_on) * ms if t_end is not None else None
    if qt is not None and not (200.0 <= qt <= 700.0):
        qt = None
        missing["qt_ms"] = "T wave end outside the plausible range"
    rr_s = rr_mean / 1000.0
    qtc_b = qt / math.sqrt(rr_s) if qt is not None else None
    qtc_f = qt / rr_s ** (1.0 / 3.0) if qt is not None else None
    if qt is None:
        missing["qtc_bazett_ms"] = missing["qtc_fridericia_ms"] = missing["qt_ms"]

    # --- frontal axis from the net QRS areas of I and aVF ------------------------------------
    axis = None
    index = {name: i for i, name in enumerate(names)}
    if "I" in index and "aVF" in index and index["I"] in usable and index["aVF"] in usable:
        span = slice(qrs_on, qrs_off + 1)
        area_i = float(np.sum(wide_c[index["I"], span]))
        area_avf = float(np.sum(wide_c[index["aVF"], span]))
        if abs(area_i) + abs(area_avf) > 0:
            # aVF's lead vector is √3/2 as long as lead I's (hexaxial reference system).
            axis = math.degrees(math.atan2(area_avf * 2.0 / math.sqrt(3.0), area_i))
    else:
        missing["frontal_axis_deg"] = "leads I and aVF (or II) are needed"

    # --- amplitudes per lead -----------------------------------------------------------------
    leads: dict[str, LeadAmplitudes] = {}
    st_at = qrs_off + int(0.06 * rate)
    p_at = None
    if p_amplitudes:
        strongest = max(p_amplitudes, key=lambda i: abs(p_amplitudes[i]))
        p_at = p_peak_at[strongest]
    t_at = None
    if t_amplitudes:
        strongest_t = max(t_amplitudes, key=lambda i: abs(t_amplitudes[i]))
        seg = np.abs(smooth_c[strongest_t, t_lo:t_hi])
        t_at = t_lo + int(np.argmax(seg))
    for i, name in enumerate(names):
        if i not in usable:
            continue
        qrs = wide_c[i, qrs_on : qrs_off + 1]
        r_k = int(np.argmax(qrs))
        r = max(0.0, float(qrs[r_k]))
        q = min(0.0, float(np.min(qrs[: r_k + 1]))) if r > 0 else 0.0
        s = min(0.0, float(np.min(qrs[r_k:]))) if r > 0 else float(np.min(qrs))
        leads[name] = LeadAmplitudes(
            p_uv=round(float(smooth_c[i, p_at]), 1) if p_at is not None else None,
            q_uv=round(q, 1),
            r_uv=round(r, 1),
            s_uv=round(s, 1),
            t_uv=round(float(smooth_c[i, t_at]), 1) if t_at is not None else None,
            st_uv=round(float(smooth_c[i, st_at]), 1) if st_at < window else None,
        )

    fiducials = {"qrs_onset": 0.0, "qrs_end": round(qrs_ms, 1)}
    if p_on is not None:
        fiducials["p_onset"] = round((p_on - qrs_on) * ms, 1)
    if t_end is not None:
        fiducials["t_end"] = round((t_end - qrs_on) * ms, 1)

    def r1(value: float | None) -> float | None:
        return round(value, 1) if value is not None else None

    return Measurements(
        heart_rate_bpm=r1(heart_rate),
        rr_mean_ms=r1(rr_mean),
        rr_sdnn_ms=r1(float(np.std(rr_ms))),
        rr_rmssd_ms=r1(float(np.sqrt(np.mean(diffs**2)))) if diffs.size else None,
        longest_rr_ms=r1(float(np.max(rr_ms))),
        rhythm_regular=regular,
        pr_ms=r1(pr),
        qrs_ms=r1(qrs_ms),
        qt_ms=r1(qt),
        qtc_bazett_ms=r1(qtc_b),
        qtc_fridericia_ms=r1(qtc_f),
        frontal_axis_deg=r1(axis),
        beats=int(peaks.size),
        leads=leads,
        not_computable=missing,
        r_peaks_s=tuple(round(float(p) / rate, 4) for p in peaks),
        fiducials_ms=fiducials,
        **info,
    )
