"""Amplification and sharding through the real CLI, on the real DCGM export, into the project's own broker.

Issue 15's figures: ``--amplify 3`` turns 2,470 rows of 247 GPUs on 31 hosts into 7,410 rows of 741 GPUs on
93 hosts, each copy with the original's values, the same on every run; ``--shard i/3`` with ``--amplify 2``
splits that output between three instances, every row sent once, every GPU by one instance, in order.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.sources import CsvRows
from tests.processes import Finished, broker_process, read_topic, run_streamer

pytestmark = [pytest.mark.integration, pytest.mark.realdata]

# What a copy keeps of its original: everything but the names that make it another GPU.
KEPT = ("timestamp", "metric_name", "gpu_id", "device", "model_name", "container", "pod", "namespace", "value")


def stream(address: str, path: Path, topic: str, *args: str) -> tuple[Finished, list[dict[str, Any]]]:
    """One run of ``rxstreamer run`` to its end, and what its topic then holds."""
    finished = run_streamer(
        "--mq-address", address, "--metrics-path", str(path), "--topic", topic,
        "--interval", "0", "--batch-size", "1000", *args,
    )  # fmt: skip
    assert (finished.returncode, finished.summary["reason"]) == (0, "completed"), finished.stdout + finished.stderr
    return finished, read_topic(address, topic=topic)


def same_values(copy: dict[str, Any], original: dict[str, Any]) -> bool:
    return all(copy[name] == original[name] for name in KEPT)


def test_amplify_3_on_the_real_file(real_csv: Path) -> None:
    source = list(CsvRows(real_csv))
    gpus, hosts = {row.uuid for row in source}, {row.hostname for row in source}
    with broker_process() as broker:
        finished, metrics = stream(broker.address, real_csv, "amplified", "--amplify", "3")
        _, again = stream(broker.address, real_csv, "again", "--amplify", "3")
    summary = finished.summary
    assert (summary["rows_read"], summary["rows_rejected"]) == (len(source), 0)
    assert (summary["rows_copied"], summary["rows_published"]) == (2 * len(source), 3 * len(source))
    assert (len(source), len(gpus), len(hosts)) == (2470, 247, 31)
    assert len(metrics) == 7410
    assert len({metric["uuid"] for metric in metrics}) == 741
    assert len({metric["hostname"] for metric in metrics}) == 93
    for r, original in enumerate(source):  # row r's copies 0, 1, 2 one after the other
        copies = metrics[3 * r : 3 * r + 3]
        assert (copies[0]["uuid"], copies[0]["hostname"]) == (original.uuid, original.hostname)
        assert copies[0]["labels"] == dict(sorted(original.labels.items()))
        assert all(same_values(copy, copies[0]) for copy in copies[1:])
        assert copies[0]["value"] == original.value
        assert [copy["hostname"] for copy in copies[1:]] == [f"{original.hostname}-c1", f"{original.hostname}-c2"]
        assert all(copy["labels"]["UUID"] == copy["uuid"] for copy in copies)
    assert again == metrics  # two runs: the same names, the same rows, in the same order


def test_three_shards_of_the_amplified_real_file_send_it_exactly_once(real_csv: Path) -> None:
    with broker_process() as broker:
        whole_run, whole = stream(broker.address, real_csv, "whole", "--amplify", "2")
        shards = [
            stream(broker.address, real_csv, f"shard{i}", "--amplify", "2", "--shard", f"{i}/3") for i in range(3)
        ]
    assert len(whole) == whole_run.summary["rows_published"] == 2 * 2470
    ids = [producer_of(finished) for finished, _ in shards]
    assert [producer.rpartition(":")[2] for producer in ids] == ["shard0of3", "shard1of3", "shard2of3"]
    assert len({producer.rpartition(":")[0] for producer in ids}) == 1  # each shard is a producer of its own

    def key(metric: dict[str, Any]) -> str:
        return json.dumps(metric, sort_keys=True)

    sharded = [metric for _, metrics in shards for metric in metrics]
    assert Counter(map(key, sharded)) == Counter(map(key, whole))  # the union is the whole, no row twice
    assert len(sharded) == len(whole)
    owners: defaultdict[str, set[int]] = defaultdict(set)
    for index, (finished, metrics) in enumerate(shards):
        summary = finished.summary
        assert summary["rows_published"] == len(metrics) > 0
        assert summary["rows_published"] + summary["rows_in_other_shards"] == 2 * 2470
        for metric in metrics:
            owners[metric["uuid"]].add(index)
        mine = by_gpu(metrics)
        assert mine == {uuid: rows for uuid, rows in by_gpu(whole).items() if uuid in mine}  # in the whole's order
    assert len(owners) == 2 * 247
    assert all(len(found) == 1 for found in owners.values())


def by_gpu(metrics: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for metric in metrics:
        grouped[metric["uuid"]].append(metric)
    return dict(grouped)


def producer_of(finished: Finished) -> str:
    (started,) = [line for line in finished.lines if line.get("event") == "streamer.started"]
    producer: str = started["producer_id"]
    return producer
