"""The web app in headless Chromium against a real hub: issue 6's figures in one run.

Runs the four page benchmarks, each of which starts its own hub with its own data, and
gathers their last lines:
- bench/browser_worklist.py: 200 cases, navigation → rows rendered and interactive (cold).
- bench/browser_image.py: 500-slice CT, navigation → first slice drawn; scrolling once loaded.
- bench/browser_ecg.py: a 12-lead ECG, navigation → traces drawn.
- bench/browser_upload.py: 200 files at 4 Mbit/s with one disconnect; every file once.

There is no peer to compare with here (OHIF's figures depend on its own study list and
loaders; bench/retrieve.py compares the DICOMweb underneath with Orthanc's).

    python bench/browser.py            # last line:
    worklist_ms=… first_image_ms=… scroll_slices_s=… first_ecg_ms=… upload_resumed=1|0
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PARTS = [
    ("browser_worklist.py", ["worklist_ms"]),
    ("browser_image.py", ["first_image_ms", "scroll_slices_s"]),
    ("browser_ecg.py", ["first_ecg_ms"]),
    ("browser_upload.py", ["upload_resumed", "upload_s"]),
]


def figures_of(line: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in line.split() if "=" in pair)


def main() -> int:
    gathered: dict[str, str] = {}
    failed = False
    for script, names in PARTS:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(BENCH / script)], capture_output=True, text=True, check=False
        )
        lines = done.stdout.strip().splitlines()
        print(f"--- {script} ({time.monotonic() - started:.0f} s)")
        print("\n".join(lines[:-1]))
        if done.returncode != 0 or not lines:
            print(done.stderr[-2000:], file=sys.stderr)
            failed = True
            continue
        found = figures_of(lines[-1])
        for name in names:
            gathered[name] = found.get(name, "nan")
    order = ["worklist_ms", "first_image_ms", "scroll_slices_s", "first_ecg_ms",
             "upload_resumed", "upload_s"]  # fmt: skip
    print(" ".join(f"{name}={gathered.get(name, 'nan')}" for name in order))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
