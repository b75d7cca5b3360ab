"""Several cores: ``run --workers 2`` against ``--workers 1`` on the same file, side by side.

The file is the real DCGM export (../shared, 2,470 rows of 247 GPUs) repeated to about 300,000 rows, or,
without ../shared, a generated file of that size (32 hosts x 8 GPUs). Each run streams it once at interval 0
in batches of 1000 to a fresh topic of the reference broker, which runs in its own process. ``--workers 1`` is
one plain streamer process; ``--workers 2`` is the supervisor and its two shard processes, each reading the
whole file and publishing its half of the GPUs.

Each round runs both, alternating which goes first, on a broker restarted for the round. Per run:

- rows/s over the wall time, spawn to exit (interpreter start-up and imports included: what the command
  costs a user), and over the streaming time: from the first ``streamer.started`` line (a worker's, with
  ``--workers 2``) to ``streamer.stopped`` (the supervisor's own, once the last worker has ended);
- CPU seconds (user + system) of the streamer: ``os.wait4``'s rusage of the command, which counts the
  workers, since the supervisor waits for them; of the broker: its /proc counters before and after; and of the
  whole machine from /proc/stat, so that what other processes took during the run is printed too.

Then one run each pinned with ``taskset``: ``--workers 1`` and ``--workers 2`` on core 0 only, and
``--workers 2`` on cores 0 and 1 (the broker is never pinned and goes wherever it can). The broker takes
little at batch 1000 (about 1 µs of CPU a row), but it, the supervisor and whatever else runs on the machine
share the same 2 cores; docs/benchmarks.md says what to expect where cores are free.

    .venv/bin/python bench/workers.py [--rows 300000] [--rounds 3] [--no-pinned]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    OUT,
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    data_file,
    log_time,
    markdown_table,
    median,
    proc_cpu_seconds,
    read_events,
    rxstreamer_command,
    unique_topic,
)

REAL_CSV = REPO_ROOT.parent / "shared" / "realdata" / "dcgm_metrics_20250718_134233.csv"
BATCH_SIZE = 1000


@dataclass(frozen=True)
class Run:
    """One run of the command: what it published, how long it took and what CPU it and the others used."""

    label: str
    workers: int
    rows: int
    wall_s: float  # spawn → exit
    streaming_s: float  # first streamer.started → streamer.stopped
    streamer_cpu_s: float  # the command and its workers, from wait4
    broker_cpu_s: float
    machine_cpu_s: float  # every process on the machine, from /proc/stat

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s

    @property
    def streaming_rows_per_s(self) -> float:
        return self.rows / self.streaming_s

    @property
    def others_cpu_s(self) -> float:
        """What the rest of the machine (other users, other agents' tests) took meanwhile."""
        return max(self.machine_cpu_s - self.streamer_cpu_s - self.broker_cpu_s, 0.0)


def input_file(rows: int) -> tuple[Path, int, str]:
    """The file to stream, its rows and what it is: the real export repeated, else a generated file."""
    if not REAL_CSV.is_file():
        print(f"real CSV absent at {REAL_CSV}: using a generated file", file=sys.stderr, flush=True)
        return data_file(rows), rows, f"generated, {rows:,} rows of 256 GPUs"
    lines = REAL_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    copies = max(1, round(rows / len(body)))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{REAL_CSV.stem}_x{copies}.csv"  # the name bench/compression.py uses too
    if not path.exists():
        partial = path.with_suffix(".partial")
        partial.write_text(header + "".join(body) * copies, encoding="utf-8")
        partial.rename(path)
    gpus = len({line.split(",")[4] for line in body})
    return path, len(body) * copies, f"the real export x {copies}: {len(body) * copies:,} rows of {gpus} GPUs"


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (every core: user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stream(path: Path, rows: int, broker: Broker, workers: int, cores: str | None = None) -> Run:
    label = f"--workers {workers}" + (f", taskset -c {cores}" if cores else "")
    command = rxstreamer_command(
        "run", "--workers", str(workers), "--interval", "0", "--batch-size", str(BATCH_SIZE),
        "--metrics-path", str(path), "--mq-address", broker.address, "--topic", unique_topic(f"workers-{workers}"),
        "--log-format", "json",
    )  # fmt: skip
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    broker_before, machine_before = proc_cpu_seconds(broker.pid), machine_cpu_seconds()
    spawned = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    first_started = stopped = None
    for entry in read_events(process.stdout):
        if entry["event"] == "streamer.started" and first_started is None:
            first_started = entry
        elif entry["event"] == "streamer.stopped" and "worker" not in entry:
            stopped = entry
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - spawned
    machine, broker_cpu = machine_cpu_seconds() - machine_before, proc_cpu_seconds(broker.pid) - broker_before
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or first_started is None or stopped is None or stopped.get("reason") != "completed":
        raise RuntimeError(f"{label} failed (exit {code}): {stopped}")
    published = int(stopped["rows_published"]) - int(stopped["duplicates"])
    if published != rows:
        raise RuntimeError(f"{label} published {published:,} new rows, expected {rows:,}: {stopped}")
    streaming = (log_time(stopped) - log_time(first_started)).total_seconds()
    return Run(label, workers, rows, wall, streaming, usage.ru_utime + usage.ru_stime, broker_cpu, machine)


def show(run: Run, prefix: str) -> None:
    print(
        f"  {prefix} {run.label:<28} {run.rows_per_s:>8,.0f} rows/s wall ({run.wall_s:.2f} s), "
        f"{run.streaming_rows_per_s:>8,.0f} streaming; CPU s: streamer {run.streamer_cpu_s:.2f}, "
        f"broker {run.broker_cpu_s:.2f}, others {run.others_cpu_s:.2f}",
        file=sys.stderr,
        flush=True,
    )


def row(label: str, runs: list[Run]) -> tuple[str, ...]:
    return (
        label,
        str(len(runs)),
        f"{median(r.rows_per_s for r in runs):,.0f}",
        f"{median(r.streaming_rows_per_s for r in runs):,.0f}",
        f"{median(r.wall_s for r in runs):.2f}",
        f"{median(r.streamer_cpu_s for r in runs):.2f}",
        f"{median(r.broker_cpu_s for r in runs):.2f}",
        f"{median((r.streamer_cpu_s + r.broker_cpu_s) / r.wall_s for r in runs):.2f}",
        f"{median(r.others_cpu_s for r in runs):.2f}",
    )


def run(rows: int = 300_000, rounds: int = 3, pinned: bool = True) -> Report:
    path, rows, what = input_file(rows)
    print(f"workers: {what}, batch {BATCH_SIZE}, interval 0, {rounds} rounds", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    runs: dict[int, list[Run]] = {1: [], 2: []}
    for number in range(rounds):
        with Broker() as broker:
            for workers in (1, 2) if number % 2 == 0 else (2, 1):
                result = stream(path, rows, broker, workers)
                runs[workers].append(result)
                show(result, f"round {number + 1}/{rounds}")
    pins: list[Run] = []
    if pinned and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        with Broker() as broker:
            for workers, cores in ((1, "0"), (2, "0"), (2, "0,1")):
                result = stream(path, rows, broker, workers, cores)
                pins.append(result)
                show(result, "pinned")
    load_after = os.getloadavg()[0]

    ratios = [two.rows_per_s / one.rows_per_s for one, two in zip(runs[1], runs[2], strict=True)]
    streaming_ratios = [
        two.streaming_rows_per_s / one.streaming_rows_per_s for one, two in zip(runs[1], runs[2], strict=True)
    ]
    headers = (
        "run", "runs", "rows/s (wall)", "rows/s (streaming)", "wall s", "streamer CPU s", "broker CPU s",
        "cores busy (streamer + broker)", "others' CPU s",
    )  # fmt: skip
    table = [row("--workers 1", runs[1]), row("--workers 2", runs[2])]
    table += [row(pin.label, [pin]) for pin in pins]
    report = Report("workers")
    ratio, streaming_ratio = median(ratios), median(streaming_ratios)
    report.figures.append(
        Figure(
            "workers",
            f"rows/s, --workers 2 against --workers 1 (batch {BATCH_SIZE}, interval 0, spawn→exit)",
            f"{median(r.rows_per_s for r in runs[2]):,.0f}",
            f"--workers 1 {median(r.rows_per_s for r in runs[1]):,.0f}",
            f"{ratio:.2f}",
            f"streaming only: {streaming_ratio:.2f}; CPU s {median(r.streamer_cpu_s for r in runs[2]):.1f} vs "
            f"{median(r.streamer_cpu_s for r in runs[1]):.1f} (broker "
            f"{median(r.broker_cpu_s for r in runs[2]):.1f} vs {median(r.broker_cpu_s for r in runs[1]):.1f})",
        )
    )
    if pins:
        by_label = {pin.label: pin for pin in pins}
        one_core, two_cores = by_label["--workers 2, taskset -c 0"], by_label["--workers 2, taskset -c 0,1"]
        report.figures.append(
            Figure(
                "workers",
                "rows/s, --workers 2 pinned to cores 0,1 against core 0 (one run each)",
                f"{two_cores.rows_per_s:,.0f}",
                f"core 0: {one_core.rows_per_s:,.0f}",
                f"{two_cores.rows_per_s / one_core.rows_per_s:.2f}",
                f"--workers 1 on core 0: {by_label['--workers 1, taskset -c 0'].rows_per_s:,.0f}",
            )
        )
    report.details = (
        f"### Several cores: --workers 2 against --workers 1 ({what}, batch {BATCH_SIZE}, interval 0)\n\n"
        + markdown_table(headers, table)
        + f"\n\nMedians of {rounds} alternated rounds (pinned: one run each). Ratio --workers 2 / --workers 1, median "
        f"of the per-round ratios: {ratio:.2f} over the wall time ({min(ratios):.2f}-{max(ratios):.2f}), "
        f"{streaming_ratio:.2f} over the streaming time. CPU s: user + system; cores busy = (streamer + broker "
        f"CPU s) / wall s; others' CPU s: the rest of the machine meanwhile. Load average (1 min) "
        f"{load_before:.2f} before, {load_after:.2f} after; {os.cpu_count()} cores.\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows to stream (about: whole copies of the file)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; --workers 1 and 2 alternate within each")
    parser.add_argument("--no-pinned", action="store_true", help="skip the runs pinned with taskset")
    args = parser.parse_args()
    print(run(args.rows, args.rounds, pinned=not args.no_pinned).details)


if __name__ == "__main__":
    main()
