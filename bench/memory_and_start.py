"""Peak memory and time to the first acknowledged batch, for a small and a large file.

Memory must be bounded by the batch, not the file: the streamer's peak RSS on a 1,000,000-row file should be
within 20% of its peak on a 10,000-row file, and the first batch should be acknowledged within half a second
of the streamer starting, whatever the file size. This prints the figures; it asserts nothing.

    .venv/bin/python bench/memory_and_start.py [--sizes 10000,1000000] [--batch-size 1000] [--rounds 3]

The streamer runs with ``--interval 0`` and debug logging (one ``publisher.acked`` line per batch, so the first
acknowledgement can be seen). Peak RSS is ``ru_maxrss`` from ``os.wait4``; "spawn → 1st ack" is wall time
from starting the process to reading its first ``publisher.acked`` line, imports included; "started → 1st
ack" is between the ``streamer.started`` and first ``publisher.acked`` log timestamps. The broker runs in its
own process on 127.0.0.1, as in production. Generated files are cached in bench/out/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    data_file,
    log_time,
    machine_description,
    markdown_table,
    read_events,
    rxstreamer_command,
    unique_topic,
)

RSS_TARGET_RATIO = 1.20
FIRST_ACK_TARGET_S = 0.5


@dataclass
class Measurement:
    rows: int
    peak_rss_mb: float
    spawn_to_first_ack_s: float
    started_to_first_ack_s: float
    total_s: float
    rows_published: int


def measure(path: Path, rows: int, address: str, batch_size: int, topic: str) -> Measurement:
    env = child_env(RXSTREAMER_LOGGING__LEVEL="debug")  # one publisher.acked line per batch
    command = rxstreamer_command(
        "run", "--log-format", "json", "--metrics-path", str(path), "--mq-address", address, "--topic", topic,
        "--interval", "0", "--batch-size", str(batch_size),
    )  # fmt: skip
    spawned = time.perf_counter()
    streamer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    assert streamer.stdout is not None
    first_ack_wall: float | None = None
    started_at: datetime | None = None
    first_ack_at: datetime | None = None
    summary: dict[str, object] = {}
    for entry in read_events(streamer.stdout):
        if entry["event"] == "streamer.started":
            started_at = log_time(entry)
        elif entry["event"] == "publisher.acked" and first_ack_at is None:
            first_ack_wall = time.perf_counter()
            first_ack_at = log_time(entry)
        elif entry["event"] == "streamer.stopped":
            summary = entry
    _, status, usage = os.wait4(streamer.pid, 0)
    streamer.returncode = os.waitstatus_to_exitcode(status)
    finished = time.perf_counter()
    if streamer.returncode != 0 or first_ack_wall is None or started_at is None or first_ack_at is None:
        raise RuntimeError(f"the streamer failed (exit {streamer.returncode}): {summary}")
    return Measurement(
        rows=rows,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
        spawn_to_first_ack_s=first_ack_wall - spawned,
        started_to_first_ack_s=(first_ack_at - started_at).total_seconds(),
        total_s=finished - spawned,
        rows_published=int(str(summary["rows_published"])),
    )


def run(sizes: tuple[int, ...] = (10_000, 1_000_000), batch_size: int = 1000, rounds: int = 3) -> Report:
    print(f"memory and start: sizes {sizes}, batch {batch_size}, {rounds} rounds", file=sys.stderr, flush=True)
    files = {rows: data_file(rows) for rows in sizes}
    results: dict[int, list[Measurement]] = {rows: [] for rows in sizes}
    with Broker() as broker:
        for round_number in range(rounds):
            for rows in sizes:  # alternate sizes within a round: drift in machine load hits both alike
                topic = unique_topic(f"mem-{rows}-{round_number}")
                result = measure(files[rows], rows, broker.address, batch_size, topic)
                results[rows].append(result)
                print(
                    f"  round {round_number + 1}/{rounds} {rows:>9,} rows: peak RSS {result.peak_rss_mb:.1f} MB, "
                    f"started→1st ack {result.started_to_first_ack_s:.3f} s, total {result.total_s:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    report = Report("memory and start")
    table = []
    for rows in sizes:
        runs = results[rows]
        total = median([run.total_s for run in runs])
        rss = median([r.peak_rss_mb for r in runs])
        spawn_ack, started_ack = (
            median([r.spawn_to_first_ack_s for r in runs]),
            median([r.started_to_first_ack_s for r in runs]),
        )
        table.append(
            (
                f"{rows:,}", f"{rss:.1f}", f"{spawn_ack:.3f}", f"{started_ack:.3f}", f"{total:.2f}",
                f"{rows / total:,.0f}", f"{min(r.rows_published for r in runs):,}",
            )
        )  # fmt: skip
        report.figures.append(
            Figure("memory and start", f"peak RSS, {rows:,} rows", f"{rss:.1f} MB", note=f"batch {batch_size}")
        )
        report.figures.append(
            Figure(
                "memory and start",
                f"started → 1st ack, {rows:,} rows",
                f"{started_ack:.3f} s",
                f"target < {FIRST_ACK_TARGET_S} s",
                f"{started_ack / FIRST_ACK_TARGET_S:.2f}",
                f"spawn → 1st ack {spawn_ack:.3f} s (imports included)",
            )
        )
    header = ("rows", "peak RSS MB", "spawn→1st ack s", "started→1st ack s", "total s", "rows/s", "published")
    report.details = (
        f"### Memory and start: batch size {batch_size}, interval 0, medians of {rounds} rounds\n\n"
        + markdown_table(header, table)
        + "\n\ntotal s and rows/s: wall time from spawn to exit, with debug logging on (one line per batch).\n"
    )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        ratio = median([r.peak_rss_mb for r in results[large]]) / median([r.peak_rss_mb for r in results[small]])
        report.details += (
            f"\npeak RSS {large:,} rows / {small:,} rows: {ratio:.3f} (target: within {RSS_TARGET_RATIO})\n"
        )
        report.figures.append(
            Figure(
                "memory and start",
                f"peak RSS {large:,} rows / {small:,} rows",
                f"{ratio:.3f}",
                f"target ≤ {RSS_TARGET_RATIO}",
                note="memory bounded by the batch, not the file",
            )
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated row counts")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per size, alternated; medians are reported")
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.sizes.split(","))
    report = run(sizes, args.batch_size, args.rounds)
    print(f"\nmachine: {machine_description()}\n")
    print(report.details)


if __name__ == "__main__":
    main()
