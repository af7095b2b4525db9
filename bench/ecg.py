#!/usr/bin/env python3
"""ECG measurement benchmark: speed on a 10 s 12-lead ECG at 500 Hz, accuracy on synthetic
ECGs with known timings, and R-peak detection on MIT-BIH record 100.

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/ecg.py               # 30 timed runs, the whole synthetic set, MIT-BIH 100
  python bench/ecg.py --runs 5

- measure_ms: median wall time of `telehealth.ecg.service.measure` (R peaks, median beat,
  delineation, amplitudes) on a 10 s, 12-lead, 500 Hz synthetic ECG, after one warm-up call
  (the first call imports neurokit2).
- *_mae: mean absolute error against the known values over tests/ecg/synthetic.py's set
  (HR 40–180, PR 110–280, QRS 70–160, QT 220–520 ms, each with noise and baseline wander).
- rpeak_sensitivity / rpeak_ppv: R peaks of MIT-BIH 100 (both leads, 30 min) against its
  reference beat annotations, one match per beat within 150 ms (ANSI/AAMI EC57).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ would come first on sys.path and bench/queue.py would stand in for
# the standard library's queue; the repository root goes there instead.
sys.path[0] = str(ROOT)

from telehealth.ecg.service.measure import detect_r_peaks, measure  # noqa: E402
from tests.ecg.synthetic import synthetic_ecg, synthetic_set  # noqa: E402

MITDB = ROOT.parent / "shared" / "data" / "dev" / "ecg_wfdb" / "mitdb_100" / "100"
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


def match(reference: np.ndarray, detected: np.ndarray, window: int) -> tuple[float, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    leads, _ = synthetic_ecg(hr=72, seconds=10.0, fs=500.0, seed=99)
    measure(leads, 500.0)  # warm-up: imports neurokit2, builds filters
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        measure(leads, 500.0)
        times.append((time.perf_counter() - start) * 1000.0)
    measure_ms = statistics.median(times)
    print(
        f"measure 10 s x 12 leads @ 500 Hz: median {measure_ms:.1f} ms, "
        f"p90 {sorted(times)[int(0.9 * (len(times) - 1))]:.1f} ms over {args.runs} runs"
    )

    errors: dict[str, list[float]] = {"hr": [], "pr": [], "qrs": [], "qt": []}
    missing = 0
    print(
        f"{'HR':>5} {'PR':>5} {'QRS':>5} {'QT':>5} | {'dHR':>6} {'dPR':>6} {'dQRS':>6} {'dQT':>6}"
    )
    for case in synthetic_set():
        signals, truth = synthetic_ecg(**case)
        m = measure(signals, 500.0)
        pairs = {
            "hr": (m.heart_rate_bpm, truth.hr_bpm),
            "pr": (m.pr_ms, truth.pr_ms),
            "qrs": (m.qrs_ms, truth.qrs_ms),
            "qt": (m.qt_ms, truth.qt_ms),
        }
        row = []
        for key, (value, true) in pairs.items():
            if value is None:
                missing += 1
                row.append("   n/a")
                continue
            errors[key].append(abs(value - true))
            row.append(f"{value - true:+6.1f}")
        print(
            f"{truth.hr_bpm:5.0f} {truth.pr_ms:5.0f} {truth.qrs_ms:5.0f} {truth.qt_ms:5.0f} | "
            + " ".join(row)
        )
    mae = {k: float(np.mean(v)) if v else float("nan") for k, v in errors.items()}
    worst = {k: float(np.max(v)) if v else float("nan") for k, v in errors.items()}
    print(
        "max abs error: "
        + ", ".join(f"{k} {v:.1f}" for k, v in worst.items())
        + f"; not measured: {missing}"
    )

    sensitivity = ppv = float("nan")
    try:
        import wfdb

        record = wfdb.rdrecord(str(MITDB))
        annotation = wfdb.rdann(str(MITDB), "atr")
        reference = np.array(
            [
                s
                for s, sym in zip(annotation.sample, annotation.symbol, strict=True)
                if sym in BEAT_SYMBOLS
            ]
        )
        start = time.perf_counter()
        detected = detect_r_peaks(record.p_signal.T * 1000.0, float(record.fs))
        took = time.perf_counter() - start
        sensitivity, ppv = match(reference, detected, int(0.15 * record.fs))
        print(
            f"MIT-BIH 100: {reference.size} reference beats, {detected.size} detected "
            f"in {took:.2f} s"
        )
    except (ImportError, FileNotFoundError) as exc:
        print(f"MIT-BIH 100 not measured: {exc}")

    print(
        f"measure_ms={measure_ms:.1f} hr_mae_bpm={mae['hr']:.2f} pr_mae_ms={mae['pr']:.2f} "
        f"qrs_mae_ms={mae['qrs']:.2f} qt_mae_ms={mae['qt']:.2f} "
        f"rpeak_sensitivity={sensitivity:.4f} rpeak_ppv={ppv:.4f}"
    )


if __name__ == "__main__":
    main()
