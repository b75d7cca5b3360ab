"""Progress is recorded after the queue acknowledged it, never before: checked at every virtual instant."""

from __future__ import annotations

from pathlib import Path

from reactivex.testing import TestScheduler

from rxstreamer.checkpoint import Checkpointer, InputFile, read_checkpoint
from rxstreamer.encoding import BatchEncoder
from rxstreamer.pipeline import build_pipeline
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import TEST_DATA_CSV


def test_the_checkpoint_never_names_a_batch_the_queue_has_not_acknowledged(tmp_path: Path) -> None:
    """Publishes taking 0.5 s at a 1 s pace: sampled every 0.25 s, the file names only acknowledged sequences."""
    scheduler = TestScheduler()
    rows = CsvRows(TEST_DATA_CSV)
    publisher = InMemorySink(latency=0.5, scheduler=scheduler)
    path = tmp_path / "stream.checkpoint"
    checkpointer = Checkpointer(path, producer_id="p", batch_size=100, file=InputFile(TEST_DATA_CSV))
    pipeline = build_pipeline(
        rows,
        publisher,
        BatchEncoder("p"),
        batch_size=100,
        interval=1.0,
        retry=RetryPolicy(),
        scheduler=scheduler,
        on_ack=checkpointer,
    )
    pipeline.subscribe()

    named: list[int | None] = []
    for step in range(44):
        scheduler.advance_to(step * 0.25)
        checkpoint = read_checkpoint(path)
        acknowledged = [batch.sequence for batch in publisher.batches]
        sequence = None if checkpoint is None else checkpoint.sequence
        assert sequence is None or sequence in acknowledged, (
            f"at {scheduler.clock}s the checkpoint names sequence {sequence}, acknowledged: {acknowledged}"
        )
        named.append(sequence)

    # A batch goes at 0, 1, 2, ... s and is acknowledged 0.5 s later; the checkpoint follows each ack.
    assert named == [
        None, None, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5,
        6, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10,
    ]  # fmt: skip
    final = read_checkpoint(path)
    assert final is not None
    assert (final.sequence, final.rows_published, final.position.offset) == (10, 960, TEST_DATA_CSV.stat().st_size)
