"""``message_queue.compression``: bytes per row and rows per second for ``none``, ``gzip`` and ``zstd``, side by side.

The real DCGM export (../shared/realdata/dcgm_metrics_20250718_134233.csv, 2,470 rows; test-data/metrics.csv
when it is absent, and the output says which) is repeated ``--copies`` times into one file (bench/out/), so a
run lasts long enough to time: the rows are the real ones, each batch compresses on its own, so the bytes per
row are those of the real file. Each setting streams the file with ``--interval 0`` to a fresh topic of the
reference broker, through a TCP forwarder on 127.0.0.1 that counts the bytes the streamer sends (the gRPC
channel as it is on the wire: HTTP/2 and gRPC framing, headers, and gzip's channel compression when on).
Three figures per setting:

- wire bytes/row: streamer → broker TCP bytes over rows published (what the network carries);
- stored bytes/row: the payload bytes the broker holds, read back with Subscribe (for gzip, which is the
  channel's compression, the broker stores plain payloads: the same as ``none``);
- rows/s: rows over the time between the streamer's ``streamer.started`` and ``streamer.stopped`` lines.

The order of the settings rotates from round to round, one broker per round; medians over the rounds.

    .venv/bin/python bench/compression.py [--copies 40] [--batch-size 500] [--rounds 3]

Prints figures (a markdown table), asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from _common import (
    OUT,
    REPO_ROOT,
    Broker,
    child_env,
    log_time,
    machine_description,
    markdown_table,
    median,
    rxstreamer_command,
    source_revision,
    started_and_stopped,
    unique_topic,
)

from tests.test_compression import CountingProxy, stored_messages

REAL_CSV = REPO_ROOT.parent / "shared" / "realdata" / "dcgm_metrics_20250718_134233.csv"
TEST_DATA_CSV = REPO_ROOT / "test-data" / "metrics.csv"
SETTINGS = ("none", "gzip", "zstd")


@dataclass(frozen=True)
class Run:
    setting: str
    rows: int
    seconds: float
    wire_bytes: int
    stored_bytes: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def repeated(source: Path, copies: int) -> tuple[Path, int]:
    """The source's rows ``copies`` times in one CSV (one header), made once in bench/out/; its row count."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{source.stem}_x{copies}.csv"
    if not path.exists():
        path.write_text(header + "".join(rows) * copies, encoding="utf-8")
    return path, len(rows) * copies


def stream(path: Path, broker: Broker, setting: str, batch_size: int) -> Run:
    topic = unique_topic(f"compression-{setting}")
    with CountingProxy(broker.address) as proxy:
        command = rxstreamer_command(
            "run", "--interval", "0", "--batch-size", str(batch_size), "--metrics-path", str(path),
            "--mq-address", proxy.address, "--topic", topic, "--log-format", "json",
        )  # fmt: skip
        env = child_env(RXSTREAMER_MESSAGE_QUEUE__COMPRESSION=setting)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
        assert process.stdout is not None
        started, stopped = started_and_stopped(process.stdout)
        code = process.wait()
        if code != 0 or started is None or stopped is None or stopped.get("reason") != "completed":
            raise RuntimeError(f"rxstreamer failed with compression {setting} (exit {code}): {stopped}")
        wire = proxy.upstream
    stored = stored_messages(broker.address, int(stopped["batches_published"]), topic)
    seconds = (log_time(stopped) - log_time(started)).total_seconds()
    return Run(setting, int(stopped["rows_published"]), seconds, wire, sum(len(m.payload) for m in stored))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = REAL_CSV if REAL_CSV.is_file() else TEST_DATA_CSV
    if source is TEST_DATA_CSV:
        print(f"real CSV absent at {REAL_CSV}: measuring test-data/metrics.csv instead", file=sys.stderr)
    path, rows = repeated(source, args.copies)
    runs: dict[str, list[Run]] = {setting: [] for setting in SETTINGS}
    for round_number in range(args.rounds):
        shift = round_number % len(SETTINGS)
        order = SETTINGS[shift:] + SETTINGS[:shift]
        with Broker() as broker:
            for setting in order:
                run = stream(path, broker, setting, args.batch_size)
                assert run.rows == rows, f"{run.rows} rows published of {rows}"
                runs[setting].append(run)
                print(
                    f"round {round_number + 1} {setting}: {run.rows_per_s:,.0f} rows/s, "
                    f"wire {run.wire_bytes / run.rows:.1f} B/row, stored {run.stored_bytes / run.rows:.1f} B/row",
                    file=sys.stderr,
                    flush=True,
                )
    none_wire = median(run.wire_bytes / run.rows for run in runs["none"])
    none_rate = median(run.rows_per_s for run in runs["none"])
    table = []
    for setting in SETTINGS:
        wire = median(run.wire_bytes / run.rows for run in runs[setting])
        stored = median(run.stored_bytes / run.rows for run in runs[setting])
        rate = median(run.rows_per_s for run in runs[setting])
        table.append(
            (
                f"`{setting}`",
                f"{wire:.1f}",
                f"{wire / none_wire:.2f}",
                f"{stored:.1f}",
                f"{rate:,.0f}",
                f"{rate / none_rate:.2f}",
            )
        )
    print(
        f"{source.name} x{args.copies} ({rows:,} rows), batch size {args.batch_size}, {args.rounds} rounds "
        f"(medians); {machine_description()}; {source_revision()}\n"
    )
    headers = ("compression", "wire bytes/row", "vs none", "stored bytes/row", "rows/s", "vs none")
    print(markdown_table(headers, table))


if __name__ == "__main__":
    main()
