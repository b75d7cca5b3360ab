"""The composed pipeline on a real file, in virtual time, with the in-memory publisher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnCompleted, OnNext
from reactivex.testing import TestScheduler

from rxstreamer.encoding import BatchEncoder, decode_batch
from rxstreamer.model import MetricRow, PublishAck
from rxstreamer.pipeline import TransformError, build_pipeline, load_transforms
from rxstreamer.publisher import InMemoryPublisher
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.source import CsvRows
from tests.conftest import TEST_DATA_CSV


def published_uuids(publisher: InMemoryPublisher) -> list[str]:
    return [metric.uuid for batch in publisher.batches for metric in decode_batch(batch.payload).metrics]


def pipeline_on(
    publisher: InMemoryPublisher,
    scheduler: TestScheduler,
    *,
    batch_size: int = 100,
    interval: float = 1.0,
    transforms: list[Callable[[Observable[MetricRow]], Observable[MetricRow]]] | None = None,
) -> Observable[PublishAck]:
    return build_pipeline(
        CsvRows(TEST_DATA_CSV),
        publisher,
        BatchEncoder("test-producer"),
        batch_size=batch_size,
        interval=interval,
        retry=RetryPolicy(initial_backoff=0.5, max_backoff=0.5),
        transforms=transforms or [],
        scheduler=scheduler,
    )


def test_the_pipeline_publishes_the_file_in_paced_batches_in_order() -> None:
    """960 rows in batches of 100: ten batches one second apart, sequences 1..10, rows in file order."""
    scheduler = TestScheduler()
    publisher = InMemoryPublisher(latency=0.25, scheduler=scheduler)
    results = scheduler.start(lambda: pipeline_on(publisher, scheduler), disposed=100_000)
    acks = [(message.time, message.value.value) for message in results.messages if isinstance(message.value, OnNext)]
    assert [time for time, _ in acks] == [200.25 + k for k in range(10)]
    assert [ack.sequence for _, ack in acks] == list(range(1, 11))
    assert [ack.rows for _, ack in acks] == [100] * 9 + [60]
    assert published_uuids(publisher) == [row.uuid for row in CsvRows(TEST_DATA_CSV)]
    assert isinstance(results.messages[-1].value, OnCompleted)


def test_a_retried_batch_keeps_its_sequence_and_is_stored_once() -> None:
    """A batch refused twice is published on the third attempt with the same identity; nothing is duplicated."""
    scheduler = TestScheduler()
    down = PublishError("UNAVAILABLE", "queue restarting")
    publisher = InMemoryPublisher(scheduler=scheduler, failures=[None, down, down])
    scheduler.start(lambda: pipeline_on(publisher, scheduler), disposed=100_000)
    assert [batch.sequence for batch in publisher.batches] == list(range(1, 11))
    assert publisher.attempts == 12
    assert published_uuids(publisher) == [row.uuid for row in CsvRows(TEST_DATA_CSV)]


def test_transforms_run_between_parsing_and_batching() -> None:
    """A filter-and-rescale transform keeps only its rows, rescaled, and batches stay full."""
    scheduler = TestScheduler()
    publisher = InMemoryPublisher(scheduler=scheduler)

    def is_power(row: MetricRow) -> bool:
        return row.metric_name == "DCGM_FI_DEV_POWER_USAGE"

    def in_kw(row: MetricRow) -> MetricRow:
        return row._replace(value=row.value / 1000)

    power_in_kw: Callable[[Observable[MetricRow]], Observable[MetricRow]] = reactivex.compose(
        ops.filter(is_power), ops.map(in_kw)
    )
    scheduler.start(
        lambda: pipeline_on(publisher, scheduler, batch_size=40, transforms=[power_in_kw]), disposed=100_000
    )
    metrics = [metric for batch in publisher.batches for metric in decode_batch(batch.payload).metrics]
    expected = [row.value / 1000 for row in CsvRows(TEST_DATA_CSV) if row.metric_name == "DCGM_FI_DEV_POWER_USAGE"]
    assert [metric.value for metric in metrics] == expected
    assert [batch.rows for batch in publisher.batches] == [40, 40, 16]


def test_each_subscription_reads_the_file_afresh() -> None:
    """The pipeline is cold: a second subscription publishes the file again, with new sequence numbers."""
    publisher = InMemoryPublisher()
    pipeline = build_pipeline(
        CsvRows(TEST_DATA_CSV), publisher, BatchEncoder("p"), batch_size=480, interval=0, retry=RetryPolicy()
    )
    pipeline.run()
    pipeline.run()
    assert [batch.sequence for batch in publisher.batches] == [1, 2, 3, 4]
    assert publisher.stats.rows == 1920


def test_load_transforms_imports_and_calls_each_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ "module:function" names a factory; its operator is what the pipeline gets."""
    (tmp_path / "user_transforms.py").write_text(
        "from reactivex import operators as ops\n\ndef double():\n    return ops.map(lambda n: n * 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    [double] = load_transforms(["user_transforms:double"])
    assert reactivex.from_iterable([1, 2]).pipe(double, ops.to_list()).run() == [2, 4]


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        ("", "no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("x = 1\n", "bad_transforms_a:missing", "has no callable 'missing'"),
        ("def f():\n    raise RuntimeError('boom')\n", "bad_transforms_b:f", "failed when called: boom"),
        ("def f():\n    return 42\n", "bad_transforms_c:f", "returned int, not an RxPY operator"),
    ],
)
def test_load_transforms_explains_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, spec: str, message: str
) -> None:
    """Each way a transform can be unusable gives a message naming the entry."""
    module = spec.partition(":")[0]
    if source:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TransformError, match=message):
        load_transforms([spec])
