"""Reading ahead with checkpoints: each checkpoint counts exactly what was acknowledged, across a stop and a resume."""

from __future__ import annotations

from pathlib import Path

from reactivex.testing import TestScheduler

from rxstreamer.checkpoint import Checkpointer, InputFile, plan_resume, read_checkpoint
from rxstreamer.encoding import BatchEncoder
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV


def stream(path: Path, checkpoint: Path, *, disposed: float, read_ahead: int = 1) -> InMemorySink:
    """One run in virtual time (batches of 100, one per second, each ack 0.5 s later), resuming where it can."""
    file = InputFile(path)
    plan = plan_resume(
        read_checkpoint(checkpoint),
        file=file,
        producer_id="p",
        batch_size=100,
        start_over=False,
        checkpoint_path=checkpoint,
    )
    scheduler = TestScheduler()
    publisher = InMemorySink(latency=0.5, scheduler=scheduler)
    record = Checkpointer(checkpoint, producer_id="p", batch_size=100, file=file, before=plan.before)
    scheduler.start(
        lambda: build_pipeline(
            CsvRows(path, start=plan.start),
            publisher,
            BatchEncoder("p", first_sequence=plan.first_sequence),
            batch_size=100,
            interval=1.0,
            retry=RetryPolicy(),
            read_ahead=read_ahead,
            scheduler=scheduler,
            on_ack=record,
        ),
        disposed=disposed,
    )
    return publisher


def test_the_first_checkpoint_counts_its_own_batch_not_the_one_read_ahead(tmp_path: Path) -> None:
    """With read_ahead=1 the source has read 200 rows at the first ack; the checkpoint says 100."""
    checkpoint = tmp_path / "stream.checkpoint"
    stream(TEST_DATA_CSV, checkpoint, disposed=200.75)  # stopped after the first ack at 200.5
    saved = read_checkpoint(checkpoint)
    assert saved is not None
    assert (saved.sequence, saved.rows_published, saved.rows_read, saved.rows_rejected) == (1, 100, 100, 0)


def test_a_stopped_and_resumed_run_counts_the_same_as_one_uninterrupted_run(tmp_path: Path) -> None:
    """Stop after 3 acks with a batch read ahead, resume: the totals are those of one run, 960 read and published."""
    path = tmp_path / "metrics.csv"
    text = TEST_DATA_CSV.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join([*lines[:150], "bad,row\n", *lines[150:]]))  # one rejected row, in batch 2
    checkpoint = tmp_path / "stream.checkpoint"
    first = stream(path, checkpoint, disposed=202.75)  # acks at 200.5, 201.5, 202.5; batch 4 read ahead
    stopped = read_checkpoint(checkpoint)
    assert stopped is not None
    assert (stopped.sequence, stopped.rows_published, stopped.rows_read, stopped.rows_rejected) == (3, 300, 301, 1)
    second = stream(path, checkpoint, disposed=100_000)
    done = read_checkpoint(checkpoint)
    assert done is not None
    assert (done.sequence, done.rows_published, done.rows_read, done.rows_rejected) == (10, 960, 961, 1)
    assert [batch.sequence for batch in first.batches + second.batches] == list(range(1, 11))

    uninterrupted = tmp_path / "uninterrupted.checkpoint"
    stream(path, uninterrupted, disposed=100_000)
    whole = read_checkpoint(uninterrupted)
    assert whole is not None
    assert (whole.rows_published, whole.rows_read, whole.rows_rejected) == (960, 961, 1)
