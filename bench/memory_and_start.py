"""Peak memory and time to the first acknowledged batch, for a small and a large file.

Memory must be bounded by the batch, not the file: the streamer's peak RSS on a 1,000,000-row file should be
within 20% of its peak on a 10,000-row file, and the first batch should be acknowledged within half a second
of the streamer starting, whatever the file size. This prints the figures; it asserts nothing.

    .venv/bin/python bench/memory_and_start.py [--sizes 10000,1000000] [--batch-size 1000] [--rounds 3]

The broker runs in its own process on 127.0.0.1, as in production. Generated files are cached in bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "bench" / "out"
sys.path.insert(0, str(REPO_ROOT))

from rxstreamer.generate import generate_file  # noqa: E402


@dataclass
class Measurement:
    rows: int
    peak_rss_mb: float
    spawn_to_first_ack_s: float
    started_to_first_ack_s: float
    total_s: float
    rows_published: int


def data_file(rows: int) -> Path:
    """A generated DCGM file of exactly ``rows`` rows, made once and reused."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"metrics_{rows}.csv"
    if not path.exists():
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
        partial = path.with_suffix(".partial")
        generate_file(partial, hosts=32, gpus=8, rows=rows, seed=1)
        partial.rename(path)
    return path


def start_broker() -> tuple[subprocess.Popen[str], str]:
    broker = subprocess.Popen(
        [sys.executable, "-m", "rxstreamer", "mq", "--listen", "127.0.0.1:0", "--log-format", "json",
         "--max-messages", "10000000", "--max-bytes", "8GiB"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert broker.stdout is not None
    for line in broker.stdout:
        if '"broker.started"' in line:
            threading.Thread(target=lambda: [None for _ in broker.stdout or ()], daemon=True).start()
            return broker, f"127.0.0.1:{json.loads(line)['port']}"
    raise RuntimeError("the broker did not start")


def measure(path: Path, rows: int, address: str, batch_size: int, topic: str) -> Measurement:
    env = {**os.environ, "RXSTREAMER_LOGGING__LEVEL": "debug"}  # one publisher.acked line per batch
    command = [
        sys.executable, "-m", "rxstreamer", "run", "--log-format", "json", "--metrics-path", str(path),
        "--mq-address", address, "--topic", topic, "--interval", "0", "--batch-size", str(batch_size),
    ]  # fmt: skip
    spawned = time.monotonic()
    streamer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    assert streamer.stdout is not None
    first_ack_wall: float | None = None
    started_at = first_ack_at = None
    summary: dict[str, object] = {}
    for line in streamer.stdout:
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry["event"] == "streamer.started":
            started_at = datetime.fromisoformat(entry["timestamp"])
        elif entry["event"] == "publisher.acked" and first_ack_at is None:
            first_ack_wall = time.monotonic()
            first_ack_at = datetime.fromisoformat(entry["timestamp"])
        elif entry["event"] == "streamer.stopped":
            summary = entry
    _, status, usage = os.wait4(streamer.pid, 0)
    streamer.returncode = os.waitstatus_to_exitcode(status)
    finished = time.monotonic()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated row counts")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="runs per size, alternated; medians are reported")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    files = {rows: data_file(rows) for rows in sizes}

    broker, address = start_broker()
    results: dict[int, list[Measurement]] = {rows: [] for rows in sizes}
    try:
        for round_number in range(args.rounds):
            for rows in sizes:  # alternate sizes within a round: drift in machine load hits both alike
                topic = f"bench-{rows}-{round_number}"
                results[rows].append(measure(files[rows], rows, address, args.batch_size, topic))
    finally:
        broker.terminate()
        broker.wait(timeout=30)

    print(f"\nmachine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}")
    print(f"batch size {args.batch_size}, interval 0, medians of {args.rounds} rounds\n")
    header = ("rows", "peak RSS MB", "spawn→1st ack s", "started→1st ack s", "total s", "rows/s", "published")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rows in sizes:
        runs = results[rows]

        def median(values: list[float]) -> float:
            return statistics.median(values)

        total = median([run.total_s for run in runs])
        print(
            f"| {rows:,} | {median([r.peak_rss_mb for r in runs]):.1f} | "
            f"{median([r.spawn_to_first_ack_s for r in runs]):.3f} | "
            f"{median([r.started_to_first_ack_s for r in runs]):.3f} | {total:.2f} | {rows / total:,.0f} | "
            f"{min(r.rows_published for r in runs):,} |"
        )
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        ratio = statistics.median([r.peak_rss_mb for r in results[large]]) / statistics.median(
            [r.peak_rss_mb for r in results[small]]
        )
        print(f"\npeak RSS {large:,} rows / {small:,} rows: {ratio:.3f} (target: within 1.20)")


if __name__ == "__main__":
    main()
