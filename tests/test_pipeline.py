"""The composed pipeline on a real file, in virtual time, with the in-memory publisher."""

from __future__ import annotations

import csv
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
from rxstreamer.retry import PublishError, RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV

#: The 32 GPUs of test-data/metrics.csv in the order each scrape lists them, for every metric.
GPUS_IN_FILE_ORDER = [
    "GPU-6513270e-269e-0d37-f2a7-4de452e6b438",
    "GPU-e8e25d94-0ed9-0475-9531-985d5d9dc9f8",
    "GPU-d3ac94af-0f21-ddb6-6cad-4a268d116ece",
    "GPU-93bd04cf-0fd6-30f1-f29d-0da9953f48f1",
    "GPU-8a6a63ec-24ed-e6a4-6b4c-b2424a23d596",
    "GPU-923a7369-94e3-bf91-1a61-dbe22e44158b",
    "GPU-9e7769b1-0f42-05b4-907a-70c31012f037",
    "GPU-4cbd87ad-5c90-a958-7403-e430ec66a787",
    "GPU-86734721-4cdd-2055-930d-6eaf14f4733f",
    "GPU-2a3af4d4-6b0a-18e8-830e-07bc1e398f10",
    "GPU-92b1d3f2-8ede-0d7a-c3ba-ea9e13deef86",
    "GPU-119a72d1-74c9-df6a-cc01-1cdd9474031b",
    "GPU-a5aa3c81-4f42-6dcb-b394-fb36bb2d420f",
    "GPU-7631a992-f0ce-5835-05c6-af0758d5563d",
    "GPU-65dc9f50-3f63-af83-bd05-61e6211c70cf",
    "GPU-d1bc52d9-230d-977e-e225-71594720771f",
    "GPU-e25a7605-aec6-f024-5bd8-6d40fc891b4a",
    "GPU-d4c28c2e-7c26-847f-0316-909e3bbbe9ea",
    "GPU-f3fe39c0-5190-88f5-90fb-bd119c1caaf7",
    "GPU-0dd27a65-bd62-8881-ad1b-72dba7abe1c2",
    "GPU-6472f1a3-8f2c-6ec8-cc41-69a3ae3a2b7f",
    "GPU-70ccec31-3571-810a-fc13-2d0d113db17d",
    "GPU-5d158a2f-f2ee-4e45-19f9-919c895fd7b3",
    "GPU-9a2ef80f-58ee-8571-f499-8d7c4093f6de",
    "GPU-7afb2c68-774b-15d7-fa52-9ba3fe3bfada",
    "GPU-29540a6e-b12a-a1f6-d42f-ddbb7a86f7a2",
    "GPU-8b0d590b-b0a8-44e5-2587-be6b5c9bcf35",
    "GPU-84b5a818-42d8-7208-d86f-40f6b239f3c7",
    "GPU-80b0c08b-c770-2420-8aa4-248c8857f9a4",
    "GPU-31f51707-da45-e18a-c221-6b02fc241d0b",
    "GPU-7e26f36a-8483-f8b8-332d-d3313a0b9965",
    "GPU-f4de2c08-9aea-6429-b149-1e243192b704",
]
#: Every row's uuid, in file order: 3 scrapes x 10 metrics, each listing the 32 GPUs.
FILE_UUIDS = GPUS_IN_FILE_ORDER * 30


def published_uuids(publisher: InMemorySink) -> list[str]:
    return [metric.uuid for batch in publisher.batches for metric in decode_batch(batch.payload).metrics]


def pipeline_on(
    publisher: InMemorySink,
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
    publisher = InMemorySink(latency=0.25, scheduler=scheduler)
    results = scheduler.start(lambda: pipeline_on(publisher, scheduler), disposed=100_000)
    acks = [(message.time, message.value.value) for message in results.messages if isinstance(message.value, OnNext)]
    assert [time for time, _ in acks] == [200.25 + k for k in range(10)]
    assert [ack.sequence for _, ack in acks] == list(range(1, 11))
    assert [ack.rows for _, ack in acks] == [100] * 9 + [60]
    assert published_uuids(publisher) == FILE_UUIDS
    assert isinstance(results.messages[-1].value, OnCompleted)


def test_a_retried_batch_keeps_its_sequence_and_is_stored_once() -> None:
    """A batch refused twice is published on the third attempt with the same identity; nothing is duplicated."""
    scheduler = TestScheduler()
    down = PublishError("UNAVAILABLE", "queue restarting")
    publisher = InMemorySink(scheduler=scheduler, failures=[None, down, down])
    scheduler.start(lambda: pipeline_on(publisher, scheduler), disposed=100_000)
    assert [batch.sequence for batch in publisher.batches] == list(range(1, 11))
    assert publisher.attempts == 12
    assert published_uuids(publisher) == FILE_UUIDS


def test_transforms_run_between_parsing_and_batching() -> None:
    """A filter-and-rescale transform keeps only its rows, rescaled, and batches stay full."""
    scheduler = TestScheduler()
    publisher = InMemorySink(scheduler=scheduler)

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
    with TEST_DATA_CSV.open(newline="") as handle:  # read with Python's csv module, not the code under test
        watts = [float(r["value"]) for r in csv.DictReader(handle) if r["metric_name"] == "DCGM_FI_DEV_POWER_USAGE"]
    assert watts[:3] == [75.554, 217.974, 72.051]
    expected = [value / 1000 for value in watts]
    assert [metric.value for metric in metrics] == expected
    assert [batch.rows for batch in publisher.batches] == [40, 40, 16]


def test_each_subscription_reads_the_file_afresh() -> None:
    """The pipeline is cold: a second subscription publishes the file again, with new sequence numbers."""
    publisher = InMemorySink()
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
