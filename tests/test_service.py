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


def test_how_batches_are_cut_is_part_of_the_default_producer_id(tmp_path: Path) -> None:
    """At each timestamp or per scrape, sequence k holds other rows than by count alone: another stream."""
    path = tmp_path / "metrics.csv"
    path.write_text("timestamp,metric_name,uuid,value\n1,2,3,4\n")
    file = FileIdentity.of(path)
    ids = [derive_producer_id("dgx-1", path, file, 10, cut=cut) for cut in ("", "time", "scrape")]
    assert len(set(ids)) == 3
    assert ids[1] == ids[0] + ":time"
    assert derive_producer_id("dgx-1", path, file, 10, cut="scrape", amplify=2, shard="1/2") == ids[2] + ":x2:shard1of2"
