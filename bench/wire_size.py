"""Wire format v1 against v2: bytes per row (plain, zstd, gzip) and encode and decode µs per row, side by side.

The real DCGM export (../shared/realdata/dcgm_metrics_20250718_134233.csv, 2,470 rows of 247 GPUs, 10
metrics, 4 timestamps; test-data/metrics.csv when it is absent, and the output says which) is cut into
batches of each size in file order, as the streamer's ``telemetry.batching = count`` cuts it, and every
batch is encoded by both versions (``encode_batch_v1``, ``encode_batch_v2``, original timestamps):

- bytes/row: the payloads' bytes over the rows, plain and compressed one batch at a time with
  ``compress_payload`` (zstd level 3 and gzip level 6, as ``message_queue.compression`` does; gzip over gRPC
  is the channel's compression, whose bytes are close to these);
- encode µs/row: the time to encode the whole file, over its rows; decode µs/row: the same for
  ``decode_batch`` (both versions decode to the same v1 ``MetricBatch``, which is checked once, field by
  field, before timing). The encoders' caches are warm, as when a streamer sees the same GPUs every scrape.

Each round times v1 then v2, or v2 then v1 (alternating), each pass repeated until it lasts about 0.2 s;
figures are medians over the rounds. Timings are per core and share the machine with whatever else runs.

    .venv/bin/python bench/wire_size.py [--rounds 7] [--batch-sizes 10,100,1000]

Prints figures (markdown tables), asserts nothing about them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from _common import REPO_ROOT, Figure, Report, machine_description, markdown_table, median

from rxstreamer.encoding import compress_payload, decode_batch, encode_batch_v1, encode_batch_v2
from rxstreamer.model import MetricRow
from rxstreamer.sources import CsvRows

REAL_CSV = REPO_ROOT.parent / "shared" / "realdata" / "dcgm_metrics_20250718_134233.csv"
TEST_DATA_CSV = REPO_ROOT / "test-data" / "metrics.csv"
CREATED_AT = datetime(2025, 7, 18, 20, 43, tzinfo=UTC)
Encode = Callable[..., bytes]
VERSIONS: dict[str, Encode] = {"v1": encode_batch_v1, "v2": encode_batch_v2}
MIN_PASS_S = 0.2


@dataclass(frozen=True)
class Sizes:
    plain: float
    zstd: float
    gzip: float


def source() -> tuple[Path, str]:
    if REAL_CSV.is_file():
        return REAL_CSV, "the real DCGM export"
    print(f"{REAL_CSV} is absent: measuring {TEST_DATA_CSV} instead", file=sys.stderr, flush=True)
    return TEST_DATA_CSV, "test-data/metrics.csv (the real export is absent)"


def encode_all(encode: Encode, batches: Sequence[Sequence[MetricRow]]) -> list[bytes]:
    return [encode(batch, producer_id="bench", sequence=n, created_at=CREATED_AT) for n, batch in enumerate(batches)]


def decode_all(payloads: list[bytes]) -> None:
    for payload in payloads:
        decode_batch(payload)


def sizes(payloads: list[bytes], rows: int) -> Sizes:
    def per_row(encoding: str) -> float:
        return sum(len(compress_payload(payload, encoding)) for payload in payloads) / rows

    return Sizes(per_row("none"), per_row("zstd"), per_row("gzip"))


def seconds_per_row(work: Callable[[], object], rows: int) -> float:
    """The time of one ``work()`` over ``rows``, from as many repetitions as fill ``MIN_PASS_S``."""
    repeats, elapsed = 0, 0.0
    began = time.perf_counter()
    while elapsed < MIN_PASS_S:
        work()
        repeats += 1
        elapsed = time.perf_counter() - began
    return elapsed / repeats / rows


def run(batch_sizes: Sequence[int] = (10, 100, 1000), rounds: int = 7) -> Report:
    path, described = source()
    rows = list(CsvRows(path))
    print(f"wire size: {len(rows):,} rows of {path.name}, batches of {batch_sizes}, {rounds} rounds", file=sys.stderr)
    table: list[tuple[str, ...]] = []
    speed: list[tuple[str, ...]] = []
    report = Report("wire")
    for size in batch_sizes:
        batches = [rows[at : at + size] for at in range(0, len(rows), size)]
        payloads = {version: encode_all(encode, batches) for version, encode in VERSIONS.items()}
        if [decode_batch(p) for p in payloads["v1"]] != [decode_batch(p) for p in payloads["v2"]]:
            raise SystemExit(f"batch size {size}: v1 and v2 decode to different rows")  # a bug, not a figure
        measured = {version: sizes(payloads[version], len(rows)) for version in VERSIONS}
        encode_s: dict[str, list[float]] = {version: [] for version in VERSIONS}
        decode_s: dict[str, list[float]] = {version: [] for version in VERSIONS}
        for round_number in range(rounds):
            order = list(VERSIONS) if round_number % 2 == 0 else list(reversed(VERSIONS))
            for version in order:
                encode = VERSIONS[version]
                encode_s[version].append(seconds_per_row(partial(encode_all, encode, batches), len(rows)))
                decode_s[version].append(seconds_per_row(partial(decode_all, payloads[version]), len(rows)))
        enc = {version: median(values) * 1e6 for version, values in encode_s.items()}
        dec = {version: median(values) * 1e6 for version, values in decode_s.items()}
        v1, v2 = measured["v1"], measured["v2"]
        print(
            f"  batch {size}: {v1.plain:.1f} -> {v2.plain:.1f} bytes/row; encode {enc['v1']:.2f} -> "
            f"{enc['v2']:.2f} µs/row, decode {dec['v1']:.2f} -> {dec['v2']:.2f} µs/row",
            file=sys.stderr,
            flush=True,
        )
        table.append(
            (f"{size:,}", f"{v1.plain:.1f}", f"{v2.plain:.1f}", f"{v2.plain / v1.plain:.2f}",
             f"{v1.zstd:.1f}", f"{v2.zstd:.1f}", f"{v1.gzip:.1f}", f"{v2.gzip:.1f}")
        )  # fmt: skip
        speed.append(
            (f"{size:,}", f"{enc['v1']:.2f}", f"{enc['v2']:.2f}", f"{enc['v2'] / enc['v1']:.2f}",
             f"{dec['v1']:.2f}", f"{dec['v2']:.2f}")
        )  # fmt: skip
        report.figures += [
            Figure("wire", f"bytes/row, batches of {size}, v2", f"{v2.plain:.1f}", f"v1 {v1.plain:.1f}",
                   f"{v2.plain / v1.plain:.2f}", f"plain; zstd {v1.zstd:.1f} -> {v2.zstd:.1f}"),
            Figure("wire", f"encode µs/row, batches of {size}, v2", f"{enc['v2']:.2f}", f"v1 {enc['v1']:.2f}",
                   f"{enc['v2'] / enc['v1']:.2f}", f"decode {dec['v1']:.2f} -> {dec['v2']:.2f}"),
        ]  # fmt: skip
    report.details = (
        f"### Wire format v1 and v2: {len(rows):,} rows of {described}, medians of {rounds} rounds\n\n"
        + markdown_table(("batch", "v1 B/row", "v2 B/row", "v2/v1", "v1 zstd", "v2 zstd", "v1 gzip", "v2 gzip"), table)
        + "\n\n"
        + markdown_table(("batch", "v1 encode µs/row", "v2 encode µs/row", "v2/v1", "v1 decode", "v2 decode"), speed)
        + f"\n\nMachine: {machine_description()}.\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-sizes", default="10,100,1000", help="comma-separated rows per batch")
    args = parser.parse_args()
    print(run(tuple(int(size) for size in args.batch_sizes.split(",")), args.rounds).details)


if __name__ == "__main__":
    main()
