"""Every benchmark in one run, summarised in one table: what ``make bench`` runs.

Runs, one after the other and with their defaults: throughput (bench/throughput.py), memory and start
(bench/memory_and_start.py), pacing (bench/pacing.py), idle cost (bench/idle.py), exposition parsing
(bench/exposition_parsing.py), wire format v1 against v2 (bench/wire_size.py, bytes and µs per row, about
20 s), live scraping at cluster scale (bench/scraping.py, about 1 minute of the total), several cores
(bench/workers.py: ``--workers 2`` against 1, about 1.5 minutes), original cadence (bench/cadence.py: the
real export at speed 1 and 10 and a 1-minute looped replay, about 1.5 minutes), where a row's microseconds go
(bench/row_costs.py, about 1 minute), batching (bench/batching.py: ``batch`` against ``buffer_with_count``) and
NATS JetStream against the reference broker (bench/nats_throughput.py, about 4 minutes; it needs
``nats-server`` from `make tools` and the ``nats`` extra, and reports itself skipped without them). Each prints
its progress on stderr and its detailed tables as it finishes; at the end comes one combined table, which is
also written, with the machine and the detailed tables, to bench/out/results.md. About 16 minutes on 2 cores;
``--quick`` runs smaller sizes and one round each (about a minute), as a smoke test.

    .venv/bin/python bench/run_all.py [--quick] [--output FILE]
        [--only throughput,memory,pacing,idle,exposition,wire,scraping,workers,cadence,rowcosts,batching,nats]

Every figure is printed, none is asserted. See docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import batching
import cadence
import exposition_parsing
import idle
import memory_and_start
import nats_throughput
import pacing
import row_costs
import scraping
import throughput
import wire_size
import workers
from _common import OUT, Report, figures_table, machine_description, source_revision

BENCHMARKS: dict[str, tuple[Callable[[], Report], Callable[[], Report]]] = {
    # name: (full run, --quick run)
    "throughput": (
        lambda: throughput.run(rows=200_000, batch_sizes=(10, 100, 1000), rounds=3),
        lambda: throughput.run(rows=20_000, batch_sizes=(10, 100, 1000), rounds=1),
    ),
    "memory": (
        lambda: memory_and_start.run(sizes=(10_000, 1_000_000), batch_size=1000, rounds=3),
        lambda: memory_and_start.run(sizes=(10_000, 100_000), batch_size=1000, rounds=1),
    ),
    "pacing": (
        lambda: pacing.run(batches=250, interval_ms=20, batch_size=10, rounds=3),
        lambda: pacing.run(batches=100, interval_ms=20, batch_size=10, rounds=1),
    ),
    "idle": (
        lambda: idle.run(seconds=20, rounds=3),
        lambda: idle.run(seconds=5, rounds=1),
    ),
    "exposition": (
        lambda: exposition_parsing.run(hosts=64, gpus=8, rounds=5),
        lambda: exposition_parsing.run(hosts=8, gpus=8, rounds=1),
    ),
    "wire": (  # about 20 s
        lambda: wire_size.run(batch_sizes=(10, 100, 1000), rounds=7),
        lambda: wire_size.run(batch_sizes=(10, 100, 1000), rounds=1),
    ),
    "scraping": (  # about 1 minute: 10 s intervals are waited out
        lambda: scraping.run(exporters=200, gpus=8, interval=10, rounds=3, capacity_rounds=5),
        lambda: scraping.run(exporters=20, gpus=8, interval=2, rounds=1, capacity_rounds=1),
    ),
    "workers": (  # about 1.5 minutes: --workers 2 against --workers 1, 300,000 rows
        lambda: workers.run(rows=300_000, rounds=3),
        lambda: workers.run(rows=20_000, rounds=1, pinned=False),
    ),
    "cadence": (  # about 1.5 minutes: a looped replay of the real export at its own pace for 1 minute
        lambda: cadence.run(drift_minutes=1.0),
        lambda: cadence.run(drift_minutes=0),
    ),
    "rowcosts": (
        lambda: row_costs.run(rows=200_000, batch_size=1000, rounds=5),
        lambda: row_costs.run(rows=20_000, batch_size=1000, rounds=1),
    ),
    "batching": (
        lambda: batching.run(count=200_000, rounds=5),
        lambda: batching.run(count=20_000, rounds=1),
    ),
    "nats": (  # about 4 minutes; 10 s with --quick
        lambda: nats_throughput.run(rows=200_000, batch_sizes=(100, 1000), rounds=3, windows=(4, 16, 64)),
        lambda: nats_throughput.run(rows=20_000, batch_sizes=(100, 1000), rounds=1, windows=(4, 16, 64)),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round each: a smoke run")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset to run")
    parser.add_argument("--output", type=Path, default=OUT / "results.md", help="where to write the results")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    began = time.monotonic()
    load_before = os.getloadavg()
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    reports: list[Report] = []
    for name in chosen:
        report = BENCHMARKS[name][1 if args.quick else 0]()
        reports.append(report)
        print(report.details, flush=True)

    minutes = (time.monotonic() - began) / 60
    load = f"load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    mode = "quick (smoke) run" if args.quick else "full run"
    table = figures_table(figure for report in reports for figure in report.figures)
    heading = (
        f"rxstreamer benchmarks, {mode}, {started_at}, {minutes:.1f} min ({load})\nmachine: {machine_description()}"
    )
    print(f"\n{heading}\n\n{table}\n")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    details = "\n".join(report.details for report in reports)
    command = "bench/run_all.py" + (" --quick" if args.quick else "")
    if args.only != parser.get_default("only"):
        command += f" --only {args.only}"
    args.output.write_text(
        f"# rxstreamer benchmarks ({mode})\n\n"
        f"- date: {started_at}, {minutes:.1f} minutes, {load}\n- machine: {machine_description()}\n"
        f"- command: `{sys.executable} {command}`\n- code: {source_revision()}\n\n"
        f"## Summary\n\n{table}\n\n## Details\n\n{details}"
    )
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
