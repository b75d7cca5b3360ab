"""The service's small decisions: connection-state logging and the default producer id."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from rxstreamer.checkpoint import FileIdentity
from rxstreamer.service import _ConnectionWatch, derive_producer_id


def test_connection_changes_are_logged_once_each_not_per_reconnect_attempt() -> None:
    """Flapping between CONNECTING and TRANSIENT_FAILURE logs one mq.unreachable; READY logs one mq.connected."""
    watch = _ConnectionWatch("127.0.0.1:1")
    states = ["IDLE", "CONNECTING", "READY", "IDLE", "CONNECTING", "TRANSIENT_FAILURE", "CONNECTING"]
    states += ["TRANSIENT_FAILURE", "CONNECTING", "TRANSIENT_FAILURE", "CONNECTING", "READY", "READY"]
    with capture_logs() as logs:
        for state in states:
            watch(state)
    assert [entry["event"] for entry in logs] == ["mq.connected", "mq.unreachable", "mq.connected"]


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
