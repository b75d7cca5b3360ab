"""Batching: reactivex's ``buffer_with_count`` against our ``batch``, per row and per batch, in one process.

Both run inside ``pull_through`` exactly as the pipeline runs them, over the same parsed rows (test-data, looped
in memory), alternated round by round; medians. At batch 10 the per-batch overhead is what matters: the
window subject and ``to_list`` that ``buffer_with_count`` builds for every batch.

    .venv/bin/python bench/batching.py [--rows 200000] [--rounds 5]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

from _common import REPO_ROOT, Figure, Report, markdown_table, median
from reactivex import operators as ops

from rxstreamer.batching import batch
from rxstreamer.operators import pull_through
from rxstreamer.sources import open_source

SIZES = (10, 100, 1000)


def rows(count: int) -> list[Any]:
    parsed = list(open_source(REPO_ROOT / "test-data" / "metrics.csv"))
    return list(itertools.islice(itertools.cycle(parsed), count))


def seconds(items: list[Any], operator: Callable[..., Any]) -> float:
    started = time.perf_counter()
    for _ in pull_through(items, operator):
        pass
    return time.perf_counter() - started


def run(count: int = 200_000, rounds: int = 5) -> Report:
    items = rows(count)
    table = []
    report = Report("batching")
    for size in SIZES:
        theirs, ours = [], []
        for _ in range(rounds):
            theirs.append(seconds(items, ops.buffer_with_count(size)))
            ours.append(seconds(items, batch(size)))
        theirs_us, ours_us = median(theirs) / count * 1e6, median(ours) / count * 1e6
        per_batch = (median(theirs) - median(ours)) / (count / size) * 1e6
        print(f"  batch {size}: buffer_with_count {theirs_us:.2f} µs/row, batch {ours_us:.2f}", file=sys.stderr)
        table.append(
            (str(size), f"{theirs_us:.2f}", f"{ours_us:.2f}", f"{theirs_us / ours_us:.2f}x", f"{per_batch:.1f}")
        )
        report.figures.append(
            Figure("batching", f"pull_through, batch {size}: µs per row", f"{ours_us:.2f}",
                   f"buffer_with_count {theirs_us:.2f}", f"{theirs_us / ours_us:.2f}x", "same rows, alternated")
        )  # fmt: skip
    report.details = (
        f"### Batching {count:,} parsed rows through pull_through, medians of {rounds} alternated rounds\n\n"
        + markdown_table(("batch", "buffer_with_count µs/row", "batch µs/row", "speed-up", "saved per batch µs"), table)
        + "\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.rows, args.rounds).details)


if __name__ == "__main__":
    main()
