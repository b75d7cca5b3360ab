"""Pacing: does the streamer keep its interval without drifting, as a service at a fixed rate?

The streamer publishes 250 batches of 10 rows at 20 ms (``--interval 20ms --batch-size 10`` on a file of
exactly 2,500 rows). Afterwards this reads every message of the topic back (``Subscribe`` from EARLIEST) and
takes each message's ``published_at``: the broker's wall clock when it stored the batch, just before it
acknowledged it. With t_k the published_at of batch k (k = 0..249, by sequence):

- total = t_249 - t_0, first stored batch to last; ideally 249 x 20 ms = 4.98 s (the first batch goes at
  once, so 250 batches span 249 intervals, not 250);
- lateness_k = t_k - (t_0 + k x 20 ms), how late batch k is against its ideal slot, measured from the first;
  the mean lateness of the first 25 batches against that of the last 25: a pacer that does not drift keeps
  them about equal, one that schedules relative to the previous publish drifts by the publish time per batch;
- the largest gap between two consecutive batches (a stall; the streamer restarts its schedule after one).

Batch 0 is usually a few milliseconds later than the others (its publish is the first on a new connection), so
lateness measured from it comes out negative by about that much for every later batch. That offset is the
same at both ends of the run, so the first-25/last-25 comparison is unaffected.

Why the broker's ``published_at`` rather than the streamer's debug ``publisher.acked`` log lines: it needs
no debug logging (the run measured is the production configuration, not one that also formats and writes a
JSON line per batch on the pipeline thread), it is taken in another process, away from the streamer's GIL,
and it is when the batch reached the queue, which is what a consumer sees. It includes one network hop, the
same for every batch, which cancels out of lateness and total.

    .venv/bin/python bench/pacing.py [--batches 250] [--interval-ms 20] [--batch-size 10] [--rounds 3]

Prints figures (medians over the rounds), asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
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
    log_time,
    markdown_table,
    median,
    published_times_ns,
    read_events,
    rxstreamer_command,
    unique_topic,
)

EDGE = 25  # batches averaged at each end


@dataclass(frozen=True)
class Pacing:
    batches: int
    interval_s: float
    total_s: float  # t_last - t_first, by published_at
    first_mean_late_ms: float
    last_mean_late_ms: float
    median_late_ms: float
    p95_late_ms: float
    max_late_ms: float
    max_gap_ms: float
    run_s: float  # streamer.started → streamer.stopped
    cpu_s: float  # the streamer process, all of it

    @property
    def ideal_s(self) -> float:
        return (self.batches - 1) * self.interval_s

    @property
    def drift_ms(self) -> float:
        return self.last_mean_late_ms - self.first_mean_late_ms


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(address: str, batches: int, interval_ms: int, batch_size: int) -> Pacing:
    path = data_file(batches * batch_size)
    topic = unique_topic("pacing")
    command = rxstreamer_command(
        "run", "--interval", f"{interval_ms}ms", "--batch-size", str(batch_size), "--metrics-path", str(path),
        "--mq-address", address, "--topic", topic, "--log-format", "json",
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    events = {entry["event"]: entry for entry in read_events(process.stdout)}
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stopped = events.get("streamer.stopped", {})
    if process.returncode != 0 or stopped.get("batches_published") != batches:
        raise RuntimeError(f"the streamer failed (exit {process.returncode}): {stopped}")

    stamps = published_times_ns(address, topic, batches)
    interval_ns = interval_ms * 1_000_000
    late_ms = [(stamp - stamps[0] - k * interval_ns) / 1e6 for k, stamp in enumerate(stamps)]
    gaps_ms = [(later - earlier) / 1e6 for earlier, later in itertools.pairwise(stamps)]
    edge = min(EDGE, batches)
    return Pacing(
        batches=batches,
        interval_s=interval_ms / 1000,
        total_s=(stamps[-1] - stamps[0]) / 1e9,
        first_mean_late_ms=sum(late_ms[:edge]) / edge,
        last_mean_late_ms=sum(late_ms[-edge:]) / edge,
        median_late_ms=median(late_ms),
        p95_late_ms=percentile(late_ms, 0.95),
        max_late_ms=max(late_ms),
        max_gap_ms=max(gaps_ms, default=0.0),
        run_s=(log_time(stopped) - log_time(events["streamer.started"])).total_seconds(),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def run(batches: int = 250, interval_ms: int = 20, batch_size: int = 10, rounds: int = 3) -> Report:
    print(
        f"pacing: {batches} batches of {batch_size} at {interval_ms} ms, {rounds} rounds", file=sys.stderr, flush=True
    )
    results: list[Pacing] = []
    with Broker() as broker:
        for round_number in range(rounds):
            started = time.perf_counter()
            result = measure(broker.address, batches, interval_ms, batch_size)
            results.append(result)
            print(
                f"  round {round_number + 1}/{rounds}: total {result.total_s:.3f} s (ideal {result.ideal_s:.3f}), "
                f"mean lateness first {EDGE} {result.first_mean_late_ms:.2f} ms, last {EDGE} "
                f"{result.last_mean_late_ms:.2f} ms, max gap {result.max_gap_ms:.1f} ms "
                f"[{time.perf_counter() - started:.1f} s]",
                file=sys.stderr,
                flush=True,
            )

    def med(attribute: str) -> float:
        return median(float(getattr(result, attribute)) for result in results)

    ideal = results[0].ideal_s
    total, first, last, drift = med("total_s"), med("first_mean_late_ms"), med("last_mean_late_ms"), med("drift_ms")
    rows = [
        ("total, first → last stored batch", f"{total:.3f} s", f"ideal {ideal:.3f} s", f"{total / ideal:.4f}"),
        (f"mean lateness, first {EDGE} batches", f"{first:.2f} ms", "", ""),
        (f"mean lateness, last {EDGE} batches", f"{last:.2f} ms", "", ""),
        ("drift (last - first mean lateness)", f"{drift:+.2f} ms", "0", ""),
        ("lateness median / p95 / max", f"{med('median_late_ms'):.2f} / {med('p95_late_ms'):.2f} / "
         f"{med('max_late_ms'):.2f} ms", "", ""),
        ("largest gap between consecutive batches", f"{med('max_gap_ms'):.1f} ms", f"{interval_ms} ms", ""),
        ("streamer.started → streamer.stopped", f"{med('run_s'):.3f} s", "", ""),
        ("streamer CPU, whole process", f"{med('cpu_s'):.2f} s", "", ""),
    ]  # fmt: skip
    report = Report("pacing")
    report.details = (
        f"### Pacing: {batches} batches of {batch_size} rows at {interval_ms} ms, medians of {rounds} rounds\n\n"
        + markdown_table(("figure", "value", "ideal", "ratio"), rows)
        + "\n\nTimes are the broker's published_at of each batch; lateness of batch k = t_k - (t_0 + k·interval). "
        "Negative lateness means batch 0 was itself late (the first publish on a fresh connection), so every slot "
        "anchored on it is late too; drift, a difference, does not depend on the anchor.\n"
    )
    report.figures += [
        Figure("pacing", f"{batches} batches at {interval_ms} ms: first → last stored batch", f"{total:.3f} s",
               f"ideal {ideal:.3f} s", f"{total / ideal:.4f}", "broker published_at"),
        Figure("pacing", f"mean lateness, first {EDGE} vs last {EDGE} batches", f"{first:.2f} / {last:.2f} ms",
               "equal", "", f"drift {drift:+.2f} ms; max gap {med('max_gap_ms'):.1f} ms"),
    ]  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=250)
    parser.add_argument("--interval-ms", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(run(args.batches, args.interval_ms, args.batch_size, args.rounds).details)


if __name__ == "__main__":
    main()
