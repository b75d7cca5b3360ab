"""Amplification and sharding (rxstreamer.scaling): the names of copies, the shard of a GPU, and the service's use.

The hashes are pinned to known values: a change to them would rename every virtual GPU and move GPUs between
shards, so that instances of two versions started together would send some GPUs twice and others never.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnError
from reactivex.testing import TestScheduler
from reactivex.testing.marbles import marbles_testing
from structlog.testing import capture_logs

from rxstreamer.checkpoint import CheckpointError, FileIdentity
from rxstreamer.config import ConfigError, load_settings
from rxstreamer.counts import PipelineCounters, RunCounts
from rxstreamer.encoding import BatchEncoder, metric_to_dict, to_metric
from rxstreamer.exposition import scrape_text
from rxstreamer.model import MetricRow, Rejection
from rxstreamer.operators import pull_through
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.scaling import (
    ScalingCounters,
    amplify,
    copy_host,
    copy_instance,
    copy_labels,
    copy_row,
    copy_uuid,
    parse_shard,
    shard,
    shard_of,
    skipping_other_shards,
)
from rxstreamer.service import derive_producer_id, run_streamer, started_fields
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows, JsonLinesRows, PrometheusRows
from rxstreamer.testing import metric_row
from tests.conftest import REPO_ROOT, TEST_DATA_CSV, with_two_bad_rows

DCGM_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIRST_GPU = "GPU-6513270e-269e-0d37-f2a7-4de452e6b438"  # test-data/metrics.csv's first two GPUs
SECOND_GPU = "GPU-e8e25d94-0ed9-0475-9531-985d5d9dc9f8"


def a_row(uuid: str = FIRST_GPU, host: str = "dgx-a-001", **labels: str) -> MetricRow:
    shown = {"UUID": uuid, "Hostname": host, "instance": f"{host}:9400", "job": "dcgm-exporter", **labels}
    return metric_row(uuid=uuid, hostname=host, value=42.0, labels=MappingProxyType(shown))


# --- the names of copies -------------------------------------------------------------------------------


def test_copy_zero_is_the_original_row_itself() -> None:
    row = a_row()
    assert copy_row(row, 0) is row
    assert copy_labels(row.labels, 0) is row.labels


def test_a_copy_renames_uuid_hostname_and_instance_and_keeps_everything_else() -> None:
    row = a_row(uuid=FIRST_GPU, host="dgx-a-001")
    copy = copy_row(row, 2)
    assert DCGM_UUID.fullmatch(copy.uuid), copy.uuid
    assert copy.uuid != row.uuid
    assert copy.hostname == "dgx-a-001-c2"
    assert dict(copy.labels) == {
        "UUID": copy.uuid,
        "Hostname": "dgx-a-001-c2",
        "instance": "dgx-a-001-c2:9400",
        "job": "dcgm-exporter",
    }
    unchanged = [name for name in MetricRow._fields if name not in ("uuid", "hostname", "labels")]
    assert [getattr(copy, name) for name in unchanged] == [getattr(row, name) for name in unchanged]
    with pytest.raises(TypeError):
        copy.labels["UUID"] = "x"  # type: ignore[index]  # read-only, like the parser's


def test_prometheus_spellings_of_the_labels_are_renamed_too() -> None:
    """dcgm-exporter scrapes, or relabelled sources, may spell them ``uuid`` and ``hostname``."""
    labels = MappingProxyType({"uuid": FIRST_GPU, "hostname": "node-7", "instance": "10.0.0.7:9400"})
    renamed = copy_labels(labels, 1)
    assert dict(renamed) == {
        "uuid": copy_uuid(FIRST_GPU, 1),
        "hostname": "node-7-c1",
        "instance": "10.0.0.7-c1:9400",
    }


def test_copy_names_edge_cases() -> None:
    assert copy_host("", 3) == ""  # no host to stand in for: stays empty
    assert copy_instance("dgx-a-001", 3) == "dgx-a-001-c3"  # no port
    assert copy_instance("dgx-a-001:9400", 0) == "dgx-a-001:9400"
    labels = MappingProxyType({"job": "dcgm-exporter"})
    assert copy_labels(labels, 4) is labels  # nothing to rename: the shared mapping itself


def test_copy_names_are_pinned() -> None:
    """The same (uuid, k) gives the same name on every run and version: a change here renames every virtual GPU."""
    assert copy_uuid(FIRST_GPU, 1) == "GPU-609d04d0-c8bd-40f9-7b64-e6d95b2b2c2d"
    assert copy_uuid(FIRST_GPU, 7) == "GPU-5492edee-ace9-65fd-daa3-de7b2d038556"
    assert copy_uuid(SECOND_GPU, 1) == "GPU-91269459-bb55-8ebd-13a6-00eaabdc6628"
    assert copy_host("dgx-a-001", 12) == "dgx-a-001-c12"


def test_every_copy_of_every_gpu_has_names_of_its_own() -> None:
    """No two (GPU, copy) pairs of the test file share a uuid; hosts stay one per (host, copy)."""
    rows = list(CsvRows(TEST_DATA_CSV))
    gpus = {(row.uuid, row.hostname) for row in rows}
    copies = 50
    uuids = {copy_uuid(uuid, k) for uuid, _ in gpus for k in range(copies)}
    hosts = {copy_host(host, k) for _, host in gpus for k in range(copies)}
    assert len(uuids) == len(gpus) * copies
    assert len(hosts) == len({host for _, host in gpus}) * copies


# --- amplify ---------------------------------------------------------------------------------------------


def test_amplify_emits_the_copies_of_each_row_together_in_order() -> None:
    """Marble: row a's copies, then row b's, at a's and b's times; the completion passes through.

    (A group ``(x,y,z)`` takes as many time units as it has characters, so the source is spaced to match.)
    """
    a, b = a_row(FIRST_GPU, "dgx-a-001"), a_row(SECOND_GPU, "dgx-a-002")
    counters = ScalingCounters()
    with marbles_testing(timespan=1.0) as (start, cold, _, exp):
        source = cold("a------b------|", {"a": a, "b": b}, None)
        expected = exp("(x,y,z)(u,v,w)|", {
            "x": a, "y": copy_row(a, 1), "z": copy_row(a, 2),
            "u": b, "v": copy_row(b, 1), "w": copy_row(b, 2),
        }, None)  # fmt: skip
        results = start(source.pipe(amplify(3, counters)))
    assert results == expected
    assert counters.rows_copied == 4


def test_amplify_of_one_is_the_source_and_of_zero_is_refused() -> None:
    source: Observable[MetricRow] = Observable()
    assert amplify(1)(source) is source
    with pytest.raises(ValueError, match="at least 1"):
        amplify(0)


def test_amplify_passes_an_error_on_and_reports_a_value_it_cannot_copy() -> None:
    boom = ValueError("boom")
    with marbles_testing(timespan=1.0) as (start, cold, _, exp):
        results = start(cold("a----#", {"a": a_row()}, boom).pipe(amplify(2)))
        assert results[:2] == exp("(x,y)", {"x": a_row(), "y": copy_row(a_row(), 1)}, None)
        failed = results[2].value
        assert (results[2].time, isinstance(failed, OnError) and failed.exception) == (205, boom)
    with marbles_testing(timespan=1.0) as (start, cold, _, _exp):
        not_a_row = start(cold("a|", {"a": 7}, None).pipe(amplify(2)))
        assert [type(message.value) for message in not_a_row] == [OnError]


def test_amplified_rows_share_their_renamed_labels_as_the_parser_shares_the_originals() -> None:
    """Rows with one labels mapping get one renamed mapping per copy, not one per row: cheap per row."""
    rows = list(CsvRows(TEST_DATA_CSV))
    by_labels = defaultdict(list)
    for row in rows:
        by_labels[id(row.labels)].append(row)
    shared = next(group for group in by_labels.values() if len(group) > 1)
    copies = list(pull_through(shared, amplify(3)))
    assert len({id(copy.labels) for copy in copies[1::3]}) == 1
    assert len({id(copy.labels) for copy in copies[2::3]}) == 1
    assert copies[1].labels is not copies[2].labels


def test_amplify_is_the_same_on_every_run() -> None:
    first = list(pull_through(CsvRows(TEST_DATA_CSV), amplify(4)))
    again = list(pull_through(CsvRows(TEST_DATA_CSV), amplify(4)))
    assert first == again
    assert len(first) == 4 * 960


# --- shard -----------------------------------------------------------------------------------------------


def test_shard_of_is_pinned() -> None:
    """A change here would move GPUs between shards: instances of two versions would send some twice."""
    assert [shard_of(FIRST_GPU, count) for count in (2, 3, 4, 1000)] == [1, 2, 1, 877]
    assert [shard_of(SECOND_GPU, count) for count in (2, 3, 4, 1000)] == [1, 0, 3, 447]
    assert shard_of(FIRST_GPU, 1) == 0


def test_the_names_and_shards_do_not_depend_on_pythons_hash_seed() -> None:
    """Another process with another PYTHONHASHSEED computes the same: what instances started apart rely on."""
    code = "from rxstreamer.scaling import copy_uuid, shard_of; print(copy_uuid('u', 3), shard_of('u', 7))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{copy_uuid('u', 3)} {shard_of('u', 7)}\n"}


def test_shard_keeps_the_rows_of_its_gpus_and_counts_the_others() -> None:
    """Marble: the first GPU falls in shard 2 of 3, the second in shard 0."""
    a1, b1 = a_row(FIRST_GPU), a_row(SECOND_GPU)
    a2, b2 = a1._replace(value=1.0), b1._replace(value=2.0)
    values: dict[str | float, Any] = {"a": a1, "b": b1, "c": a2, "d": b2}
    for index, kept in ((2, "a---c---|"), (0, "--b---d-|"), (1, "--------|")):
        counters = ScalingCounters()
        with marbles_testing(timespan=1.0) as (start, cold, _, exp):
            results = start(cold("a-b-c-d-|", values, None).pipe(shard(index, 3, counters)))
            assert results == exp(kept, values, None), index
        assert counters.rows_in_other_shards == 4 - len(kept.strip("-|").replace("-", ""))


def test_each_gpu_of_the_amplified_file_is_in_exactly_one_shard_with_its_rows_in_order() -> None:
    """Four shards of the test file amplified three times send, together, exactly the unsharded rows."""
    whole = list(pull_through(CsvRows(TEST_DATA_CSV), amplify(3)))
    count = 4
    shards = [list(pull_through(CsvRows(TEST_DATA_CSV), amplify(3), shard(i, count))) for i in range(count)]
    assert Counter(map(_key, (row for rows in shards for row in rows))) == Counter(map(_key, whole))
    assert sum(map(len, shards)) == len(whole)
    owners = defaultdict(set)
    for index, rows in enumerate(shards):
        for row in rows:
            owners[row.uuid].add(index)
    assert all(len(found) == 1 for found in owners.values())
    assert len(owners) == len({row.uuid for row in whole})
    assert all(rows for rows in shards), "a shard got no GPU at all: the hash does not spread them"
    for rows in shards:
        for uuid in {row.uuid for row in rows}:
            assert [row for row in rows if row.uuid == uuid] == [row for row in whole if row.uuid == uuid]


def _key(row: MetricRow) -> tuple[object, ...]:
    """A row as something hashable (its labels are a read-only mapping, which is not)."""
    return (*row[:-2], tuple(sorted(row.labels.items())), row.line)


def test_parse_shard() -> None:
    assert parse_shard("") is None
    assert parse_shard("  ") is None
    assert parse_shard("0/3") == (0, 3)
    assert parse_shard(" 2 / 4 ") == (2, 4)
    for bad in ("3/3", "1", "a/b", "-1/2", "1/0"):
        with pytest.raises(ValueError, match="i/N"):
            parse_shard(bad)
    with pytest.raises(ValueError, match=r"0 \.\. count-1"):
        shard(3, 3)


# --- the accounting ---------------------------------------------------------------------------------------


def test_counts_account_for_copies_and_other_shards(tmp_path: Path) -> None:
    """Two bad rows, amplify 3, shard 1 of 2, power rows filtered by a transform: every row in one outcome."""
    rows = CsvRows(with_two_bad_rows(tmp_path))
    scaling, pipeline_counters = ScalingCounters(), PipelineCounters()
    scheduler = TestScheduler()
    sink = InMemorySink(latency=0.5, scheduler=scheduler)
    counts = RunCounts(rows, pipeline_counters, sink, scaling)

    def not_power(row: MetricRow) -> bool:
        return row.metric_name != "DCGM_FI_DEV_POWER_USAGE"

    transforms = [amplify(3, scaling), shard(1, 2, scaling), ops.filter(not_power)]
    pipeline = build_pipeline(
        rows, sink, BatchEncoder("p"), batch_size=100, interval=1.0, retry=RetryPolicy(), read_ahead=1,
        transforms=transforms, scheduler=scheduler, counters=pipeline_counters,
    )  # fmt: skip
    middle: list[Any] = []
    scheduler.schedule_absolute(202.75, lambda *_: middle.append(counts.now()))
    scheduler.start(lambda: pipeline, disposed=1_000_000)
    expected_kept = [
        row
        for row in pull_through(CsvRows(TEST_DATA_CSV), amplify(3), shard(1, 2))
        if row.metric_name != "DCGM_FI_DEV_POWER_USAGE"
    ]
    for now in (middle[0], counts.now()):
        assert now.rows_read + now.rows_copied == (
            now.rows_published + now.rows_rejected + now.rows_filtered + now.rows_in_other_shards + now.rows_in_flight
        )
        assert now.rows_filtered >= 0
    end = counts.now()
    assert (end.rows_read, end.rows_rejected, end.rows_copied) == (962, 2, 960 * 2)
    assert end.rows_published == len(expected_kept)
    assert end.rows_in_other_shards == 960 * 3 - sum(
        1 for _ in pull_through(CsvRows(TEST_DATA_CSV), amplify(3), shard(1, 2))
    )
    assert end.rows_in_flight == 0


# --- the service ------------------------------------------------------------------------------------------


def test_the_producer_id_names_amplify_and_shard_when_not_the_default(tmp_path: Path) -> None:
    """Each shard is its own producer; the default id is unchanged, so existing checkpoints still resume."""
    path = tmp_path / "metrics.csv"
    path.write_text("timestamp,metric_name,uuid,value\n1,2,3,4\n")
    file = FileIdentity.of(path)
    plain = derive_producer_id("dgx-1", path, file, 10)
    assert derive_producer_id("dgx-1", path, file, 10, amplify=1, shard="") == plain
    ids = [
        plain,
        derive_producer_id("dgx-1", path, file, 10, amplify=3),
        derive_producer_id("dgx-1", path, file, 10, amplify=3, shard="0/3"),
        derive_producer_id("dgx-1", path, file, 10, amplify=3, shard="1/3"),
        derive_producer_id("dgx-1", path, file, 10, shard="1/3"),
    ]
    assert len(set(ids)) == len(ids)
    assert ids[2] == f"{plain}:x3:shard0of3"


def _settings(address: str, **overrides: object) -> Any:
    return load_settings(
        overrides={
            "telemetry.metrics_path": str(TEST_DATA_CSV),
            "telemetry.stream_interval": "0s",
            "telemetry.batch_size": 100,
            "message_queue.address": address,
            **overrides,
        },
        environ={},
    )


def test_a_checkpoint_of_another_shard_is_refused_unless_starting_over(broker_address: str, tmp_path: Path) -> None:
    """One checkpoint per shard: shard 1 does not resume where shard 0 stopped."""
    checkpoint = tmp_path / "checkpoint.json"
    first = run_streamer(
        _settings(broker_address, **{"telemetry.shard": "0/2", "telemetry.checkpoint_path": str(checkpoint)}),
        stop=threading.Event(),
    )
    assert (first.reason, first.rows_read) == ("completed", 960)
    assert first.rows_published + first.rows_in_other_shards == 960
    other = _settings(broker_address, **{"telemetry.shard": "1/2", "telemetry.checkpoint_path": str(checkpoint)})
    with pytest.raises(CheckpointError, match=r"belongs to producer .*:shard0of2'.*shard1of2"):
        run_streamer(other, stop=threading.Event())
    second = run_streamer(
        _settings(
            broker_address,
            **{"telemetry.shard": "1/2", "telemetry.checkpoint_path": str(checkpoint), "telemetry.start_over": True},
        ),
        stop=threading.Event(),
    )
    assert second.rows_published == first.rows_in_other_shards


def test_amplify_with_a_checkpoint_is_refused_before_anything_starts(broker_address: str, tmp_path: Path) -> None:
    settings = _settings(
        broker_address, **{"telemetry.amplify": 2, "telemetry.checkpoint_path": str(tmp_path / "checkpoint.json")}
    )
    with pytest.raises(ConfigError, match=r"telemetry\.amplify"):
        run_streamer(settings, stop=threading.Event())
    assert not (tmp_path / "checkpoint.json").exists()


def test_an_explicit_producer_id_gets_the_shard_appended(broker_address: str) -> None:
    """N shards started with one explicit producer id would clash at the queue."""
    with capture_logs() as logs:
        run_streamer(
            _settings(
                broker_address,
                **{"telemetry.shard": "1/4", "message_queue.producer_id": "load-test", "message_queue.topic": "ex"},
            ),
            stop=threading.Event(),
        )
    (started,) = [line for line in logs if line["event"] == "streamer.started"]
    assert started["producer_id"] == "load-test:shard1of4"


@pytest.mark.parametrize(
    "cut",
    [{"telemetry.pace": "original", "telemetry.speed": 1000}, {"telemetry.batch_by": "scrape"}],
    ids=["original-cadence", "per-scrape"],
)
def test_the_same_file_cut_another_way_is_another_producer_not_a_conflict(
    broker_address: str, cut: dict[str, object]
) -> None:
    """A file streamed by count, then at its own cadence or per scrape, to the same topic: the second run holds
    other rows under each sequence, so it is another producer, and the queue takes it whole, not refusing it as
    the first's batches come back different."""
    topic = {"message_queue.topic": f"cut-{'-'.join(map(str, cut.values()))}"}  # the broker serves the module
    by_count = run_streamer(_settings(broker_address, **topic), stop=threading.Event())
    cut_otherwise = run_streamer(_settings(broker_address, **topic, **cut), stop=threading.Event())
    assert (by_count.reason, by_count.rows_published, by_count.duplicates) == ("completed", 960, 0)
    assert (cut_otherwise.reason, cut_otherwise.rows_published, cut_otherwise.duplicates) == ("completed", 960, 0)
    again = run_streamer(_settings(broker_address, **topic, **cut), stop=threading.Event())
    assert (again.reason, again.duplicates) == ("completed", again.batches_published)  # the same stream again


def test_the_started_and_stopped_lines_show_amplify_and_shard_only_when_on(broker_address: str) -> None:
    on = _settings(broker_address, **{"telemetry.amplify": 3, "telemetry.shard": "2/3", "message_queue.topic": "on"})
    fields = started_fields(on, "me")
    assert (fields["telemetry.amplify"], fields["telemetry.shard"]) == (3, "2/3")
    assert "telemetry.amplify" not in started_fields(_settings(broker_address), "me")
    with capture_logs() as logs:
        summary = run_streamer(on, stop=threading.Event())
    (stopped,) = [line for line in logs if line["event"] == "streamer.stopped"]
    assert (stopped["rows_read"], stopped["rows_copied"]) == (960, 1920)
    assert stopped["rows_published"] + stopped["rows_in_other_shards"] == 960 * 3
    assert (summary.rows_filtered, summary.rows_in_flight) == (0, 0)
    with capture_logs() as logs:
        run_streamer(_settings(broker_address, **{"message_queue.topic": "off"}), stop=threading.Event())
    (stopped,) = [line for line in logs if line["event"] == "streamer.stopped"]
    assert "rows_copied" not in stopped
    assert "rows_in_other_shards" not in stopped


# --- skipping other shards' records in the source, before parsing ----------------------------------------


@pytest.mark.parametrize("copies", [1, 3])
def test_the_csv_source_skips_other_shards_records_and_every_record_is_handled_once(
    tmp_path: Path, copies: int
) -> None:
    """Each shard parses only records with a copy in it; a bad record is rejected by one shard alone."""
    records = list(csv.reader(Path("test-data/metrics.csv").read_text().splitlines()))
    records[5][10] = "not a number"  # a bad record, which exactly one shard must reject
    records[7] = records[7][:5]  # and one whose uuid cannot be told: shard 0 reports it
    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as file:
        csv.writer(file, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(records)
        file.write('"a line with a NUL \x00 byte"\n')  # and one whose text is unusable: shard 0 reports it too
    rejected = _each_shard_handles_its_own(CsvRows, path, copies)
    assert len([reason for reasons in rejected for reason in reasons]) == 3


def _each_shard_handles_its_own(
    source: type[CsvRows | JsonLinesRows | PrometheusRows], path: Path, copies: int, shards: int = 3
) -> list[list[str]]:
    """Read ``path`` as each of ``shards`` shards; check that each keeps only its GPUs, that its counts add up,
    and that together they send what one unsharded reader would. Returns each shard's rejection reasons."""
    everything = list(pull_through(source(path), amplify(copies)))
    seen: list[MetricRow] = []
    rejected: list[list[str]] = []
    for index in range(shards):
        rejections: list[Rejection] = []
        rows = source(path, on_reject=rejections.append)
        counters = ScalingCounters()
        rows.skip_uuids(*skipping_other_shards(index, shards, copies, counters))
        kept = list(pull_through(rows, amplify(copies, counters), shard(index, shards, counters)))
        assert {shard_of(row.uuid, shards) for row in kept} <= {index}
        stats = rows.stats
        assert stats.rows_read + counters.rows_copied == len(kept) + stats.rows_rejected + counters.rows_in_other_shards
        assert stats.rows_rejected == len(rejections)
        seen += kept
        rejected.append([rejection.reason for rejection in rejections])
    assert sorted(seen) == sorted(everything)
    return rejected


def _json_lines_file(path: Path) -> Path:
    """test-data/metrics.csv as JSON lines (``tail``'s format), with a bad record and an unusable line."""
    lines = [json.dumps(metric_to_dict(to_metric(row))) for row in CsvRows(TEST_DATA_CSV)]
    lines[5] = lines[5].replace('"value": ', '"value": "not a number", "was": ')
    lines[7] = "{not json"
    path.write_text("\n".join(lines) + "\n\x00 a NUL line\n", encoding="utf-8")
    return path


def _exposition_file(path: Path) -> Path:
    """One scrape of 4 hosts, with a sample whose value is no number and a line that is no sample."""
    text = scrape_text(hosts=4, gpus=8, seed=3).splitlines()
    samples = [index for index, line in enumerate(text) if line and not line.startswith("#")]
    text[samples[5]] = text[samples[5]].rsplit(" ", 1)[0] + " not-a-number"
    text[samples[7]] = "no sample here"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("source", "make"),
    [(JsonLinesRows, _json_lines_file), (PrometheusRows, _exposition_file)],
    ids=["jsonl", "prometheus"],
)
@pytest.mark.parametrize("copies", [1, 3])
def test_formats_that_parse_every_record_still_reject_each_bad_one_in_one_shard(
    tmp_path: Path, source: type[JsonLinesRows | PrometheusRows], make: Any, copies: int
) -> None:
    """Without a skip by uuid, each shard parses every record; a bad one is still rejected once between them
    (by shard 0, as a record of unknown uuid), and each shard's counts still add up."""
    path = make(tmp_path / "input")
    unsharded: list[Rejection] = []
    list(source(path, on_reject=unsharded.append))
    expected = [rejection.reason for rejection in unsharded]
    assert len(expected) >= 2
    assert _each_shard_handles_its_own(source, path, copies) == [expected, [], []]
