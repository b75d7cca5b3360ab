"""The streamer.started line says what this command uses, in order; the full settings go to a debug line."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rxstreamer.config import load_settings
from rxstreamer.service import run_streamer, started_fields

DATA = Path(__file__).parent / "data" / "bad_rows.csv"
STARTED_KEYS = [
    "telemetry.metrics_path",
    "telemetry.format",
    "message_queue.address",
    "message_queue.topic",
    "producer_id",
    "telemetry.batch_size",
    "telemetry.stream_interval",
    "telemetry.loop",
    "telemetry.timestamps",
]


def _run(address: str, **overrides: object) -> list[dict[str, Any]]:
    """Run the streamer in-process over the small test file; stop at once when it loops."""
    settings = load_settings(
        overrides={
            "telemetry.metrics_path": str(DATA),
            "telemetry.stream_interval": "0s",
            "message_queue.address": address,
            **overrides,
        },
        environ={},
    )
    stop = threading.Event()
    if settings.telemetry.loop:
        stop.set()  # the first progress wait returns at once: the run stops with reason "signal"
    with capture_logs() as logs:
        run_streamer(settings, stop=stop)
    return [dict(line) for line in logs]


def _one(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    (line,) = [line for line in logs if line["event"] == event]
    return line


def test_started_line_has_the_streamers_settings_in_order(broker_address: str) -> None:
    """Source, sink, producer, then how it streams: in that order, no broker.* or other unused settings."""
    started = _one(_run(broker_address), "streamer.started")
    assert [key for key in started if key not in ("event", "log_level")] == STARTED_KEYS
    assert not [key for key in started if key.startswith("broker.")]
    assert started["telemetry.metrics_path"] == str(DATA)
    assert started["message_queue.address"] == broker_address


def test_optional_features_are_shown_only_when_on(tmp_path: Path) -> None:
    """checkpoint_path and rejected_path when set, read_ahead when not 1, in that order after the rest."""
    settings = load_settings(
        overrides={
            "telemetry.checkpoint_path": str(tmp_path / "checkpoint.json"),
            "telemetry.rejected_path": str(tmp_path / "rejected.csv"),
            "telemetry.read_ahead": 2,
            "broker.listen": "127.0.0.1:50099",
        },
        environ={},
    )
    fields = started_fields(settings, "me")
    assert list(fields) == [
        *STARTED_KEYS,
        "telemetry.checkpoint_path",
        "telemetry.rejected_path",
        "telemetry.read_ahead",
    ]
    assert fields["producer_id"] == "me"
    assert fields["telemetry.read_ahead"] == 2
    assert list(started_fields(load_settings(environ={}), "me")) == STARTED_KEYS


def test_full_settings_are_logged_at_debug(broker_address: str) -> None:
    """streamer.settings, at debug level, carries every setting, the broker's included."""
    settings_line = _one(_run(broker_address), "streamer.settings")
    assert settings_line["log_level"] == "debug"
    assert "broker.listen" in settings_line
    assert settings_line["message_queue.address"] == broker_address


def test_loop_with_original_timestamps_warns_once(broker_address: str) -> None:
    """--loop re-sends the file's timestamps every pass: one warning at start, pointing to processing time."""
    logs = _run(broker_address, **{"telemetry.loop": True, "telemetry.timestamps": "original"})
    warning = _one(logs, "streamer.loop_repeats_timestamps")
    assert warning["log_level"] == "warning"
    assert "--timestamps processing" in warning["fix"]
    events = [line["event"] for line in logs]
    assert events.index("streamer.started") < events.index("streamer.loop_repeats_timestamps")


@pytest.mark.parametrize(
    "overrides",
    [
        {"telemetry.loop": True, "telemetry.timestamps": "processing"},
        {"telemetry.loop": False, "telemetry.timestamps": "original"},
    ],
)
def test_no_loop_warning_otherwise(broker_address: str, overrides: dict[str, object]) -> None:
    """Without --loop, or with processing timestamps, nothing repeats: no warning."""
    logs = _run(broker_address, **overrides)
    assert "streamer.loop_repeats_timestamps" not in [line["event"] for line in logs]


def test_stopped_line_puts_the_reason_first_then_the_counts(broker_address: str) -> None:
    """streamer.stopped reads reason, then the row counts, as the code passes them."""
    stopped = _one(_run(broker_address), "streamer.stopped")
    keys = [key for key in stopped if key not in ("event", "log_level")]
    assert keys[:4] == ["reason", "rows_read", "rows_rejected", "rows_filtered"]
    assert stopped["reason"] == "completed"
