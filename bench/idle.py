"""Idle cost: the CPU a streamer uses as a service at the default pace, where it should cost next to nothing.

The streamer runs at the production defaults, 10 rows a batch and one batch a second (passed explicitly:
``--batch-size 10 --interval 1s``), with ``--loop`` so the file never runs out. From the moment its
``streamer.started`` line arrives (imports, settings and the file check are done by then), this samples its
CPU time (utime + stime of all its threads, from ``/proc/<pid>/stat``, 10 ms resolution) and resident set
size every second for 20 s, then sends SIGTERM and reaps it with ``os.wait4``.

- steady-state CPU: CPU seconds used during those 20 s (target: under 0.4 s, i.e. 2% of one core);
- start-up CPU: CPU seconds used before ``streamer.started`` (interpreter, imports, settings);
- total CPU: the whole life of the process, start-up and shutdown included, from ``wait4``'s rusage;
- RSS at ``streamer.started``, a quarter into the window (connected, first batches out) and at its end:
  flat memory means the last two are about equal. Over the first few minutes RSS rises slowly while the
  parser's bounded caches (one entry per distinct ``labels_raw``; the generated file has 2,560) fill, then
  levels off; ``--seconds 600`` shows it.

    .venv/bin/python bench/idle.py [--seconds 20] [--rounds 3] [--rows 10000]

The broker runs in its own process on 127.0.0.1; its CPU is not counted. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    data_file,
    drain,
    markdown_table,
    median,
    parse_log_line,
    proc_cpu_seconds,
    proc_rss_mb,
    rxstreamer_command,
    unique_topic,
    wait_for_started,
)

TARGET_CPU_S_PER_20_S = 0.4
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Idle:
    seconds: float
    startup_cpu_s: float
    steady_cpu_s: float
    total_cpu_s: float
    rss_start_mb: float  # at streamer.started
    rss_warm_mb: float  # a quarter into the window: connected, first batches published
    rss_end_mb: float
    rss_max_mb: float
    peak_rss_mb: float  # over the whole life, from wait4
    rows_published: int


def measure(address: str, rows: int, seconds: float) -> Idle:
    path = data_file(rows)
    command = rxstreamer_command(
        "run", "--batch-size", "10", "--interval", "1s", "--loop", "--metrics-path", str(path),
        "--mq-address", address, "--topic", unique_topic("idle"), "--log-format", "json",
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    try:
        wait_for_started(process, START_TIMEOUT)
        window_start = time.monotonic()
        startup_cpu = proc_cpu_seconds(process.pid)
        rss_samples = [proc_rss_mb(process.pid)]
        lines: list[str] = []
        reader = drain(process.stdout, lines)
        for tick in range(1, int(seconds) + 1):
            time.sleep(max(0.0, window_start + tick - time.monotonic()))
            rss_samples.append(proc_rss_mb(process.pid))
        time.sleep(max(0.0, window_start + seconds - time.monotonic()))
        steady_cpu = proc_cpu_seconds(process.pid) - startup_cpu
        window = time.monotonic() - window_start
        rss_end = proc_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    stopped = [entry for entry in map(parse_log_line, lines) if entry and entry.get("event") == "streamer.stopped"]
    if process.returncode != 0 or not stopped:
        raise RuntimeError(f"the streamer did not stop cleanly (exit {process.returncode}): {lines[-3:]}")
    return Idle(
        seconds=window,
        startup_cpu_s=startup_cpu,
        steady_cpu_s=steady_cpu,
        total_cpu_s=usage.ru_utime + usage.ru_stime,
        rss_start_mb=rss_samples[0],
        rss_warm_mb=rss_samples[max(1, len(rss_samples) // 4)],
        rss_end_mb=rss_end,
        rss_max_mb=max(rss_samples),
        peak_rss_mb=usage.ru_maxrss / 1024,
        rows_published=int(stopped[-1]["rows_published"]),
    )


def run(seconds: float = 20.0, rounds: int = 3, rows: int = 10_000) -> Report:
    print(f"idle: {seconds:g} s at batch 10 / interval 1 s, {rounds} rounds", file=sys.stderr, flush=True)
    results: list[Idle] = []
    with Broker() as broker:
        for round_number in range(rounds):
            result = measure(broker.address, rows, seconds)
            results.append(result)
            print(
                f"  round {round_number + 1}/{rounds}: steady {result.steady_cpu_s:.2f} CPU-s over "
                f"{result.seconds:.1f} s, start-up {result.startup_cpu_s:.2f}, total {result.total_cpu_s:.2f}; "
                f"RSS {result.rss_start_mb:.1f} → {result.rss_warm_mb:.1f} → {result.rss_end_mb:.1f} MB; "
                f"{result.rows_published} rows",
                file=sys.stderr,
                flush=True,
            )

    def med(attribute: str) -> float:
        return median(float(getattr(result, attribute)) for result in results)

    steady, target = med("steady_cpu_s"), TARGET_CPU_S_PER_20_S * seconds / 20
    rows_table = [
        (f"steady-state CPU over {seconds:g} s (after streamer.started)", f"{steady:.2f} s",
         f"< {target:.2f} s", f"{100 * steady / seconds:.2f}% of one core"),
        ("start-up CPU (spawn → streamer.started)", f"{med('startup_cpu_s'):.2f} s", "", ""),
        ("total CPU, whole process (wait4)", f"{med('total_cpu_s'):.2f} s", "", "start-up + window + shutdown"),
        ("RSS at streamer.started / ¼ into the window / end", f"{med('rss_start_mb'):.1f} / "
         f"{med('rss_warm_mb'):.1f} / {med('rss_end_mb'):.1f} MB", "last two equal", "flat after warm-up"),
        ("peak RSS (wait4)", f"{med('peak_rss_mb'):.1f} MB", "", ""),
        ("rows published", f"{med('rows_published'):.0f}", "", "10 per second"),
    ]  # fmt: skip
    report = Report("idle")
    report.details = (
        f"### Idle cost: batch 10, interval 1 s, --loop, {seconds:g} s window, medians of {rounds} rounds\n\n"
        + markdown_table(("figure", "value", "target", "note"), rows_table)
        + "\n\nRSS grows while the parser's bounded caches fill: the generated file has up to 2,560 distinct "
        "labels_raw values (32 x 8 GPUs x 10 metrics), all seen after 256 s at 10 rows/s. "
        "Run with --seconds 600 to see it level off.\n"
    )
    report.figures += [
        Figure("idle", f"CPU s over {seconds:g} s at 10 rows/s, steady state", f"{steady:.2f}",
               f"target < {target:.2f}", f"{steady / target:.2f}",
               f"start-up {med('startup_cpu_s'):.2f} s; whole process {med('total_cpu_s'):.2f} s"),
        Figure("idle", "RSS ¼ into the window → end", f"{med('rss_warm_mb'):.1f} → {med('rss_end_mb'):.1f} MB",
               "flat", f"{med('rss_end_mb') / med('rss_warm_mb'):.3f}", f"{med('rss_start_mb'):.1f} MB at started"),
    ]  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measured window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the generated file it loops over")
    args = parser.parse_args()
    print(run(args.seconds, args.rounds, args.rows).details)


if __name__ == "__main__":
    main()
