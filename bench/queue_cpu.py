#!/usr/bin/env python3
"""CPU cost of one claim cycle: one reader alone claims the next case (`claim_next`, its own
transaction) and completes it (or releases every fifth, as bench/queue.py does), commits
included, through the real cases service.

Not part of the test run. Prints a table and ends with one `name=value` line.

  python bench/queue_cpu.py                    # 300 cycles on SQLite and PostgreSQL
  python bench/queue_cpu.py --cycles 100 --skip-postgresql --profile 25

Why CPU time: SQLite has one writer, so the Python a claim runs while holding the write turn
is what 50 readers queue behind; on a shared, loaded machine process time is steadier than
wall time. The figure is `time.process_time()` of the whole process per cycle (the reader
runs alone, so nothing else in the process adds to it); the claim transaction's share
(`claim_next` alone) and wall time are printed beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/queue_cpu.py`, this folder is first on sys.path and bench/queue.py
# would stand in for the standard library's `queue`.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import cProfile
import importlib.util
import pstats
import statistics
import tempfile
import time
from datetime import UTC, datetime

from telehealth.cases import service as cases
from telehealth.clock import FakeClock
from telehealth.db import create_db_engine, make_session_factory, migrate, transaction


def _queue_bench():  # type: ignore[no-untyped-def]
    """bench/queue.py as a module (its seeding and PostgreSQL schema helpers)."""
    spec = importlib.util.spec_from_file_location(
        "bench_queue", Path(__file__).resolve().parent / "queue.py"
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("bench_queue")
    if module is None:  # registered first: its dataclasses look their module up
        module = sys.modules["bench_queue"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def _cycles(
    url: str, cycles: int, warmup: int, profile: int
) -> tuple[list[float], list[float], list[float]]:
    """CPU ms of each measured cycle and of its claim transaction alone, and wall ms."""
    bench = _queue_bench()
    engine = create_db_engine(url)
    cpu: list[float] = []
    claim_cpu: list[float] = []
    wall: list[float] = []
    try:
        migrate(engine)
        factory = make_session_factory(engine)
        ctx = cases.CaseContext(clock=FakeClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC)))
        # Two readers in the group, as a queue has; one of them claims.
        actor = bench._seed(factory, ctx, 2, warmup + cycles + (warmup + cycles) // 4 + 2)[0]
        profiler = cProfile.Profile() if profile else None
        for n in range(warmup + cycles):
            measured = n >= warmup
            if measured and profiler is not None:
                profiler.enable()
            started_cpu, started = time.process_time(), time.perf_counter()
            with transaction(factory) as session:
                claim = cases.claim_next(session, actor, ctx)
            claimed_cpu = time.process_time()
            assert claim is not None, "ran out of cases"
            with transaction(factory) as session:
                if (n + 1) % 5 == 0:
                    cases.release(session, actor, claim.case_id, claim.lease_token, ctx)
                else:
                    cases.complete(
                        session,
                        actor,
                        claim.case_id,
                        final=True,
                        lease_token=claim.lease_token,
                        ctx=ctx,
                    )
            if measured:
                cpu.append((time.process_time() - started_cpu) * 1000)
                claim_cpu.append((claimed_cpu - started_cpu) * 1000)
                wall.append((time.perf_counter() - started) * 1000)
                if profiler is not None:
                    profiler.disable()
        if profiler is not None:
            print(f"--- profile ({url.split(':')[0]}), {cycles} cycles, by own time")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
            print("--- by cumulative time")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(profile)
    finally:
        engine.dispose()
    return cpu, claim_cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30, help="cycles run before measuring")
    parser.add_argument("--skip-postgresql", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions"
    )
    args = parser.parse_args()
    results: dict[str, tuple[list[float], list[float], list[float]]] = {}
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="bench-queue-cpu-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'telehealth.db'}"
            results["sqlite"] = _cycles(url, args.cycles, args.warmup, args.profile)
    if not args.skip_postgresql:
        bench = _queue_bench()
        schema, url = bench._postgres_schema()
        try:
            results["postgresql"] = _cycles(url, args.cycles, args.warmup, args.profile)
        finally:
            bench._drop_schema(schema)

    print(f"{args.cycles} claim cycles (claim_next + complete, every 5th released), one reader")
    print(
        f"{'database':<12}{'cpu ms med':>11}{'cpu ms mean':>12}{'of it claim':>12}"
        f"{'wall ms med':>12}"
    )
    for name, (cpu, claim_cpu, wall) in results.items():
        print(
            f"{name:<12}{statistics.median(cpu):>11.2f}{statistics.fmean(cpu):>12.2f}"
            f"{statistics.fmean(claim_cpu):>12.2f}{statistics.median(wall):>12.2f}"
        )

    def figure(name: str, column: int) -> str:
        return f"{statistics.fmean(results[name][column]):.2f}" if name in results else "nan"

    print(
        " ".join(
            f"{name}_{what}_cpu_ms={figure(name, column)}"
            for name in ("sqlite", "postgresql")
            for what, column in (("cycle", 0), ("claim", 1))
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
