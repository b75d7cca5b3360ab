"""Throughput: rows per second from the file to the broker's acknowledgement, as a load generator.

For each batch size (10, 100 and 1000 by default) and each round, two contenders stream the same generated
file (200,000 rows, 32 hosts x 8 GPUs) as fast as the broker acknowledges, one after the other, each in its
own process and each to a fresh topic of the same broker process:

- rxstreamer: ``python -m rxstreamer run --interval 0 --batch-size N ...``. The main figure is the time
  between its ``streamer.started`` and ``streamer.stopped`` log lines (the streamer's own clock: file open,
  connecting, every publish acknowledged, channel closed; interpreter start-up and imports excluded). The
  wall time from spawn to exit (imports included) is reported alongside.
- baseline: ``bench/baseline_publisher.py``, the same work written the obvious way in plain Python (csv.reader,
  the same protobuf messages, one blocking Publish per batch), timed by itself from just before connecting
  to the last acknowledgement. Its wall time from spawn to exit is reported alongside too.

The order of the two alternates from round to round and the broker is restarted before each round, so a
drift in machine load or a fuller broker hits both alike. The table gives medians over the rounds and the
median of the per-round ratios rxstreamer/baseline (above 1: rxstreamer is faster). The reading ceiling is
``csv.reader`` alone over the same file in this process: no parsing, no protobuf, no network.

    .venv/bin/python bench/throughput.py [--rows 200000] [--batch-sizes 10,100,1000] [--rounds 3]

Prints figures, asserts nothing. Generated files are cached in bench/out/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    data_file,
    log_time,
    markdown_table,
    median,
    rxstreamer_command,
    started_and_stopped,
    unique_topic,
)

BASELINE = Path(__file__).resolve().parent / "baseline_publisher.py"
CONTENDERS = ("rxstreamer", "baseline")


@dataclass(frozen=True)
class Run:
    """One contender's run: the main time (its own clock), wall time and CPU time of its process."""

    contender: str
    batch_size: int
    rows: int
    seconds: float  # rxstreamer: started → stopped log lines; baseline: its own timer
    wall_s: float  # spawn → exit
    cpu_s: float  # user + system time of the process, from wait4

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def wall_rows_per_s(self) -> float:
        return self.rows / self.wall_s


def _wait(process: subprocess.Popen[str]) -> tuple[int, float]:
    """Reap a child; its exit code and the CPU seconds it used (all threads, user + system)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


#: Settings given to the streamer under test (``--setting KEY=VALUE``), as RXSTREAMER_ environment variables.
STREAMER_SETTINGS: dict[str, str] = {}


def run_rxstreamer(path: Path, address: str, batch_size: int) -> Run:
    command = rxstreamer_command(
        "run", "--interval", "0", "--batch-size", str(batch_size), "--metrics-path", str(path),
        "--mq-address", address, "--topic", unique_topic(f"tp-rx-{batch_size}"), "--log-format", "json",
    )  # fmt: skip
    spawned = time.perf_counter()
    env = {**child_env(), **STREAMER_SETTINGS}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    assert process.stdout is not None
    started, stopped = started_and_stopped(process.stdout)
    code, cpu = _wait(process)
    wall = time.perf_counter() - spawned
    if code != 0 or started is None or stopped is None or stopped.get("reason") != "completed":
        raise RuntimeError(f"rxstreamer failed (exit {code}): {stopped}")
    seconds = (log_time(stopped) - log_time(started)).total_seconds()
    return Run("rxstreamer", batch_size, int(stopped["rows_published"]), seconds, wall, cpu)


def run_baseline(path: Path, address: str, batch_size: int) -> Run:
    command = [
        sys.executable, str(BASELINE), "--metrics-path", str(path), "--mq-address", address,
        "--topic", unique_topic(f"tp-base-{batch_size}"), "--batch-size", str(batch_size),
    ]  # fmt: skip
    spawned = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    output = process.stdout.read()
    code, cpu = _wait(process)
    wall = time.perf_counter() - spawned
    if code != 0:
        raise RuntimeError(f"the baseline failed (exit {code}): {output}")
    result = json.loads(output.strip().splitlines()[-1])
    return Run("baseline", batch_size, int(result["rows"]), float(result["seconds"]), wall, cpu)


def reading_ceiling(path: Path) -> tuple[int, float]:
    """Rows and seconds for ``csv.reader`` alone over the file: an upper bound for any CSV-fed publisher."""
    started = time.perf_counter()
    with open(path, newline="", encoding="utf-8") as file:
        rows = sum(1 for _ in csv.reader(file)) - 1  # the header
    return rows, time.perf_counter() - started


def measure(rows: int, batch_sizes: list[int], rounds: int) -> tuple[dict[tuple[str, int], list[Run]], list[float]]:
    path = data_file(rows)
    runs: dict[tuple[str, int], list[Run]] = {(c, b): [] for c in CONTENDERS for b in batch_sizes}
    ceiling: list[float] = []
    for round_number in range(rounds):
        order = CONTENDERS if round_number % 2 == 0 else CONTENDERS[::-1]
        with Broker() as broker:
            for batch_size in batch_sizes:
                for contender in order:
                    runner = run_rxstreamer if contender == "rxstreamer" else run_baseline
                    run = runner(path, broker.address, batch_size)
                    if run.rows != rows:
                        raise RuntimeError(f"{contender} published {run.rows} rows, expected {rows}")
                    runs[contender, batch_size].append(run)
                    print(
                        f"  round {round_number + 1}/{rounds} batch {batch_size:>5} {contender:<10} "
                        f"{run.rows_per_s:>9,.0f} rows/s ({run.seconds:.2f} s; wall {run.wall_s:.2f} s, "
                        f"cpu {run.cpu_s:.2f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
        read_rows, seconds = reading_ceiling(path)
        ceiling.append(read_rows / seconds)
    return runs, ceiling


def run(rows: int = 200_000, batch_sizes: tuple[int, ...] = (10, 100, 1000), rounds: int = 3) -> Report:
    print(f"throughput: {rows:,} rows, batch sizes {batch_sizes}, {rounds} rounds", file=sys.stderr, flush=True)
    runs, ceiling = measure(rows, list(batch_sizes), rounds)
    report = Report("throughput")
    table = []
    for batch_size in batch_sizes:
        rx, base = runs["rxstreamer", batch_size], runs["baseline", batch_size]
        ratios = [r.rows_per_s / b.rows_per_s for r, b in zip(rx, base, strict=True)]
        wall_ratios = [r.wall_rows_per_s / b.wall_rows_per_s for r, b in zip(rx, base, strict=True)]
        rx_rate, base_rate = median(r.rows_per_s for r in rx), median(b.rows_per_s for b in base)
        ratio, wall_ratio = median(ratios), median(wall_ratios)
        rx_cpu_us = median(r.cpu_s / r.rows * 1e6 for r in rx)
        base_cpu_us = median(b.cpu_s / b.rows * 1e6 for b in base)
        table.append(
            (
                f"{batch_size:,}",
                f"{rx_rate:,.0f}",
                f"{base_rate:,.0f}",
                f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                f"{median(r.wall_rows_per_s for r in rx):,.0f}",
                f"{median(b.wall_rows_per_s for b in base):,.0f}",
                f"{wall_ratio:.2f}",
                f"{rx_cpu_us:.1f}",
                f"{base_cpu_us:.1f}",
            )
        )
        report.figures.append(
            Figure(
                "throughput",
                f"rows/s, batch {batch_size:,} (started→stopped vs baseline's own timer)",
                f"{rx_rate:,.0f}",
                f"baseline {base_rate:,.0f}",
                f"{ratio:.2f}",
                f"spawn→exit: {median(r.wall_rows_per_s for r in rx):,.0f} vs "
                f"{median(b.wall_rows_per_s for b in base):,.0f} ({wall_ratio:.2f}); "
                f"CPU µs/row {rx_cpu_us:.1f} vs {base_cpu_us:.1f}",
            )
        )
    ceiling_rate = median(ceiling)
    report.figures.append(
        Figure(
            "throughput",
            "reading ceiling: csv.reader alone, rows/s",
            "—",
            f"{ceiling_rate:,.0f}",
            note="in-process, no parsing, protobuf or network",
        )
    )
    headers = (
        "batch", "rxstreamer rows/s (started→stopped)", "baseline rows/s (own timer)", "ratio (min-max)",
        "rxstreamer rows/s (spawn→exit)", "baseline rows/s (spawn→exit)", "ratio", "rxstreamer CPU µs/row",
        "baseline CPU µs/row",
    )  # fmt: skip
    report.details = (
        f"### Throughput: {rows:,} rows, interval 0, medians of {rounds} rounds\n\n"
        + markdown_table(headers, table)
        + f"\n\nratio = median of the per-round ratios rxstreamer/baseline (above 1: rxstreamer is faster). "
        f"CPU µs/row: user + system time of the whole process (imports included) per row.\n"
        f"Reading ceiling (csv.reader alone, in-process): {ceiling_rate:,.0f} rows/s "
        f"({rows / ceiling_rate:.3f} s for the file).\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the generated file")
    parser.add_argument("--batch-sizes", default="10,100,1000", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; contenders alternate within each")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the streamer, e.g. message_queue.publish_in_background=true (repeatable)",
    )
    args = parser.parse_args()
    for setting in args.setting:
        key, _, value = setting.partition("=")
        STREAMER_SETTINGS["RXSTREAMER_" + key.upper().replace(".", "__")] = value
    batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    print(run(args.rows, batch_sizes, args.rounds).details)


if __name__ == "__main__":
    main()
