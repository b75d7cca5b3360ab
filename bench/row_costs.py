"""Where a row's microseconds go, stage by stage, in one process: the profile as a table.

Each stage adds one step to the previous one, over the same file, and the table gives each stage's cost per
row and what the step added: ``csv.reader`` alone (the reading ceiling), the source's rows (framing, splitting,
parsing into ``MetricRow``), then batching as the pipeline pulls it (``pull_through``), then encoding each
batch as the pipeline does. Publishing is not in it: the broker's time and the overlap with it are what
``bench/throughput.py`` measures, whole processes side by side.

It runs against whichever rxstreamer is first on ``sys.path``, so the same script measures an older tree too
(``git worktree add /tmp/before <commit>; PYTHONPATH=/tmp/before python bench/row_costs.py``): a tree without
``rxstreamer.batching`` batches with reactivex's ``buffer_with_count``, as the pipeline then did.

    .venv/bin/python bench/row_costs.py [--rows 200000] [--batch-size 1000] [--rounds 5]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Figure, Report, data_file, markdown_table, median

import rxstreamer
from rxstreamer.encoding import BatchEncoder
from rxstreamer.operators import pull_through
from rxstreamer.sources import CsvRows


def batching(size: int) -> tuple[str, Callable[..., Any]]:
    """The pipeline's batching step in the rxstreamer being measured."""
    if (Path(rxstreamer.__file__).parent / "batching.py").exists():  # not find_spec: an editable install's hook
        from rxstreamer.batching import batch

        return f"batch({size})", batch(size)
    from reactivex import operators as ops

    return f"buffer_with_count({size})", ops.buffer_with_count(size)


def stages(path: Path, size: int) -> list[tuple[str, Callable[[], object]]]:
    name, operator = batching(size)
    encoder = BatchEncoder("row-costs")

    def reading() -> object:
        with path.open(newline="", encoding="utf-8") as file:
            return sum(1 for _ in csv.reader(file))

    def parsing() -> object:
        return sum(1 for _ in CsvRows(path))

    def batched() -> object:
        return sum(len(rows) for rows in pull_through(CsvRows(path), operator))

    def encoded() -> object:
        return sum(len(encoder(rows).payload) for rows in pull_through(CsvRows(path), operator))

    return [
        ("csv.reader alone", reading),
        ("rows: + framing, splitting, parsing to MetricRow", parsing),
        (f"batches: + pull_through, {name}", batched),
        ("encoded: + BatchEncoder", encoded),
    ]


def run(rows: int = 200_000, batch_size: int = 1000, rounds: int = 5) -> Report:
    path = data_file(rows)
    steps = stages(path, batch_size)
    timings: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _ in range(rounds):
        for name, step in steps:
            started = time.perf_counter()
            step()
            timings[name].append(time.perf_counter() - started)
    table = []
    previous = 0.0
    report = Report("row costs")
    for name, _ in steps:
        per_row = median(timings[name]) / rows * 1e6
        table.append((name, f"{per_row:.2f}", f"{per_row - previous:+.2f}" if previous else ""))
        previous = per_row
        report.figures.append(Figure("row costs", f"{name}: µs per row", f"{per_row:.2f}"))
    where = sys.modules["rxstreamer"].__file__
    report.details = (
        f"### Where a row's microseconds go: {rows:,} rows, batch {batch_size}, medians of {rounds} rounds "
        f"(rxstreamer from {where})\n\n" + markdown_table(("stage", "µs per row", "added by the step"), table) + "\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.rows, args.batch_size, args.rounds).details)


if __name__ == "__main__":
    main()
