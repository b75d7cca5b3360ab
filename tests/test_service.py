"""The service's small decisions: the default producer id."""

from __future__ import annotations

from pathlib import Path

from rxstreamer.checkpoint import FileIdentity
from rxstreamer.service import derive_producer_id


def test_the_default_producer_id_follows_the_stream_not_the_run(tmp_path: Path) -> None:
    """Same instance, file content and batch size: same id; any of them different: another id."""
    path = tmp_path / "metrics.csv"
    path.write_text("timestamp,metric_name,uuid,value\n")
    same = FileIdentity.of(path)
    ids = {
        derive_producer_id("dgx-1", path, same, 10),
        derive_producer_id("dgx-1", path, FileIdentity.of(path), 10),
    }
    assert len(ids) == 1
    path.write_text("timestamp,metric_name,uuid,value\n1,2,3,4\n")
    others = {
        derive_producer_id("dgx-2", path, same, 10),
        derive_producer_id("dgx-1", path, FileIdentity.of(path), 10),
        derive_producer_id("dgx-1", path, same, 20),
    }
    assert len(others | ids) == 4
