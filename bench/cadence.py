"""Original cadence: does a replay keep the recording's own rhythm, at speed 1 and 10, and without drift?

The real DCGM CSV (../shared) holds four timestamps one second apart (741, 741, 247 and 741 rows); without
it, a generated file of four one-second scrapes stands in. The streamer replays it with ``--pace original
--speed S`` to the broker in its own process; afterwards this reads every message back (``Subscribe`` from
EARLIEST) with the broker's ``published_at``, and finds when each timestamp group first reached the queue
(a batch never holds two timestamps in this mode, and with batch 1000 each group of the file is one batch).

- span: first group to last, against the recording's own (3.0 s) divided by the speed;
- drift: a looped replay (``--loop --timestamps processing``) for ``--drift-minutes``: lateness of group j is
  t_j - (t_0 + its ideal offset), where a pass lasts its span plus one mean gap (4 s for the real file); the
  mean lateness of the groups of the first minute against those of the last minute.

    .venv/bin/python bench/cadence.py [--drift-minutes 10]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    markdown_table,
    published_times_ns,
    read_events,
    rxstreamer_command,
    unique_topic,
)

BATCH = 1000  # larger than any group of the file: one message per group
REAL_CSV = REPO_ROOT.parent / "shared" / "realdata" / "dcgm_metrics_20250718_134233.csv"


def recording() -> Path:
    """The real file, or four generated scrapes of 8 x 8 GPUs x 10 metrics."""
    if REAL_CSV.exists():
        return REAL_CSV
    from rxstreamer.generate import generate_file

    path = REPO_ROOT / "bench" / "out" / "cadence_4_scrapes.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        generate_file(path, hosts=8, gpus=8, rows=4 * 8 * 8 * 10, seed=1)
    return path


def groups_of(path: Path) -> tuple[list[int], list[float]]:
    """Rows per timestamp group in file order, and each group's offset (s) from the first."""
    from rxstreamer.sources import open_source

    sizes: list[int] = []
    stamps: list[datetime] = []
    for row in open_source(path, "auto", on_reject=lambda _: None):
        if not stamps or row.timestamp != stamps[-1]:
            stamps.append(row.timestamp)
            sizes.append(0)
        sizes[-1] += 1
    return sizes, [(stamp - stamps[0]).total_seconds() for stamp in stamps]


def replay(address: str, path: Path, speed: float) -> tuple[list[int], float]:
    topic = unique_topic("cadence")
    command = rxstreamer_command(
        "run", "--pace", "original", "--speed", str(speed), "--batch-size", str(BATCH), "--metrics-path",
        str(path), "--mq-address", address, "--topic", topic, "--log-format", "json",
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    events = {entry["event"]: entry for entry in read_events(process.stdout)}
    _, status, usage = os.wait4(process.pid, 0)
    stopped = events.get("streamer.stopped", {})
    if not stopped or stopped.get("reason") not in ("completed", "signal"):
        raise RuntimeError(f"the streamer failed (exit status {status}): {stopped}")
    return published_times_ns(address, topic, int(stopped["batches_published"])), usage.ru_utime + usage.ru_stime


def span_figures(address: str, path: Path, offsets: list[float]) -> list[Figure]:
    figures = []
    for speed in (1.0, 10.0):
        times, cpu = replay(address, path, speed)
        span = (times[-1] - times[0]) / 1e9
        ideal = offsets[-1] / speed
        gaps = ", ".join(f"{(b - a) / 1e9:.3f}" for a, b in itertools.pairwise(times))
        print(
            f"  speed {speed:g}: span {span:.3f} s (ideal {ideal:.3f}), gaps {gaps} s, CPU {cpu:.2f} s", file=sys.stderr
        )
        figures.append(
            Figure("cadence", f"speed {speed:g}: first → last group, by published_at", f"{span:.3f} s",
                   f"{ideal:.3f} s", f"{span / ideal:.4f}", f"gaps {gaps} s")
        )  # fmt: skip
    return figures


def drift_figure(address: str, path: Path, offsets: list[float], minutes: float) -> Figure:
    """A looped replay at speed 1, stopped with SIGTERM after ``minutes``: the first minute's lateness vs the last's."""
    span = offsets[-1]
    period = span + (span / (len(offsets) - 1) if len(offsets) > 1 else 1.0)
    topic = unique_topic("cadence-drift")
    command = rxstreamer_command(
        "run", "--pace", "original", "--speed", "1", "--batch-size", str(BATCH), "--metrics-path", str(path), "--loop",
        "--timestamps", "processing", "--mq-address", address, "--topic", topic, "--log-format", "json",
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    time.sleep(minutes * 60)
    process.terminate()
    events = {entry["event"]: entry for entry in read_events(process.stdout)}
    process.wait()
    times = published_times_ns(address, topic, int(events["streamer.stopped"]["batches_published"]))
    ideal = [p * period + offsets[g] for p in range(len(times) // len(offsets) + 1) for g in range(len(offsets))]
    late_ms = [(t - times[0]) / 1e6 - ideal[j] * 1000 for j, t in enumerate(times)]
    first = [late for j, late in enumerate(late_ms) if ideal[j] < 60]
    last = [late for j, late in enumerate(late_ms) if ideal[j] > ideal[len(times) - 1] - 60]
    mean_first, mean_last = sum(first) / len(first), sum(last) / len(last)
    print(f"  drift over {minutes:g} min: {len(times)} groups, first minute {mean_first:.2f} ms late, last minute "
          f"{mean_last:.2f} ms, max {max(late_ms):.1f} ms", file=sys.stderr)  # fmt: skip
    note = f"drift {mean_last - mean_first:+.2f} ms over {len(times)} groups; max {max(late_ms):.1f} ms"
    figure = f"looped at speed 1 for {minutes:g} min: mean lateness, first vs last minute"
    return Figure("cadence", figure, f"{mean_first:.2f} / {mean_last:.2f} ms", "equal", "", note)


def run(drift_minutes: float = 1.0) -> Report:
    path = recording()
    sizes, offsets = groups_of(path)
    if max(sizes) > BATCH:
        raise SystemExit(f"{path}: a timestamp group of {max(sizes)} rows does not fit one batch of {BATCH}")
    print(f"cadence: {path.name}, groups {sizes} at {offsets} s", file=sys.stderr, flush=True)
    report = Report("cadence")
    with Broker() as broker:
        report.figures += span_figures(broker.address, path, offsets)
        if drift_minutes > 0:
            report.figures.append(drift_figure(broker.address, path, offsets, drift_minutes))
    report.details = (
        f"### Original cadence: {path.name}, groups of {sizes} rows at {offsets} s, batch {BATCH}\n\n"
        + markdown_table(
            ("figure", "value", "ideal", "ratio", "note"),
            [(f.figure, f.value, f.reference, f.ratio, f.note) for f in report.figures],
        )
        + "\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drift-minutes", type=float, default=1.0)
    args = parser.parse_args()
    print(run(args.drift_minutes).details)


if __name__ == "__main__":
    main()
