#!/usr/bin/env python3
"""Spool disk ceiling: how many instance-sized files per second this disk takes when each
is synced before the next, as the DICOM node does before answering Success.

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/disk.py                       # 526 kB files (a 512×512 CT slice), 1 and 4 writers
  python bench/disk.py --folder /data/spool  # the disk the hub's data folder is on
  python bench/disk.py --kb 60 --files 2000  # ECG-sized instances

Each writer creates, writes, fsyncs and closes its own files one after the other (what one
association does); several writers run at once (several associations). No receiver can answer
Success faster than this: it is the ceiling `bench/ingest.py`'s figures are read against, the
hub's and Orthanc's alike (Orthanc syncs each file too: SyncStorageArea, on by default since
1.7.4). `bench/ingest.py` measures one writer before each of its runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def write_synced(folder: Path, tag: str, count: int, data: bytes, times: list[float]) -> None:
    for i in range(count):
        started = time.perf_counter()
        fd = os.open(folder / f"{tag}-{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - started)


def run(folder: Path, writers: int, files: int, data: bytes) -> tuple[float, float]:
    """(files per second, median ms per file) with `writers` writers sharing `files`."""
    each = files // writers
    times: list[float] = []
    threads = [
        threading.Thread(target=write_synced, args=(folder, f"w{w}", each, data, times))
        for w in range(writers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for path in folder.iterdir():
        path.unlink()
    return each * writers / wall, statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="default: a temp dir in /tmp")
    ap.add_argument("--kb", type=int, default=526, help="file size in kB (1000 bytes)")
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = os.urandom(args.kb * 1000)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.folder, prefix="disk-bench-") as tmp:
        folder = Path(tmp)
        print(f"{args.files} files of {args.kb} kB, each synced, in {folder}")
        print(f"{'writers':>8} {'files/s':>9} {'MB/s':>8} {'ms/file':>8}")
        for writers in (1, 4):
            rates, latencies = [], []
            for _ in range(args.runs):
                rate, latency = run(folder, writers, args.files, data)
                rates.append(rate)
                latencies.append(latency)
            rate = statistics.median(rates)
            mb_s = rate * args.kb / 1000
            print(f"{writers:>8} {rate:>9.0f} {mb_s:>8.0f} {statistics.median(latencies):>8.2f}")
            figures[f"synced_files_s_{writers}w"] = round(rate, 1)
            figures[f"synced_mb_s_{writers}w"] = round(mb_s, 1)
    print(" ".join(f"{k}={v}" for k, v in figures.items()) + f" kb={args.kb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
