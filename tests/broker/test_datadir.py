"""The data directory: exclusive lock, unusable paths, topic directory names and the interval flusher."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from rxstreamer.broker.datadir import DataDir, topic_directory_name, topic_of_directory
from rxstreamer.broker.framing import Record
from rxstreamer.broker.segments import DataDirError

FLUSH_TIMEOUT = 5.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[DataDir]:
    opened = DataDir.open(tmp_path / "data")
    yield opened
    opened.close()


def test_second_open_of_a_locked_directory_fails_fast(data_dir: DataDir) -> None:
    """Two brokers must never write the same logs; the second is told who holds the lock."""
    with pytest.raises(DataDirError) as refused:
        DataDir.open(data_dir.path)
    assert str(refused.value) == (
        f"data directory {data_dir.path} is in use by another broker "
        f"(pid {os.getpid()} holds {data_dir.path / '.lock'})"
    )


def test_lock_is_released_on_close(tmp_path: Path) -> None:
    """A stopped broker's directory can be opened again at once."""
    DataDir.open(tmp_path).close()
    DataDir.open(tmp_path).close()


@pytest.mark.parametrize("below", ["file/data", "file"])
def test_directory_that_cannot_be_created_fails_with_one_line(tmp_path: Path, below: str) -> None:
    """A path through or onto a regular file is refused with a one-line reason naming it."""
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / below
    with pytest.raises(DataDirError, match=f"^cannot create data directory {path}: ") as refused:
        DataDir.open(path)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("policy", "interval", "message"),
    [("sometimes", 0.1, "fsync must be one of always, interval, never"), ("interval", 0.0, "fsync_interval")],
)
def test_invalid_durability_settings_are_refused(tmp_path: Path, policy: str, interval: float, message: str) -> None:
    """An unknown policy or a non-positive interval is refused before anything is created."""
    with pytest.raises(ValueError, match=message):
        DataDir.open(tmp_path / "data", policy=policy, interval=interval)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("topic", "directory"),
    [("gpu", "gpu"), (".", "%"), ("..", "%."), (".lock", "%lock"), ("a.b-c_d", "a.b-c_d")],
)
def test_topic_directory_names_round_trip(topic: str, directory: str) -> None:
    """Names starting with "." get a "%" instead, so they cannot clash with ".", ".." or the lock file."""
    assert topic_directory_name(topic) == directory
    assert topic_of_directory(directory) == topic


@pytest.mark.parametrize("name", ["lost+found", ".lock", "", "%bad/"])
def test_other_directory_names_are_not_topics(name: str) -> None:
    """Only names a topic can map to are taken for topics."""
    assert topic_of_directory(name) is None


def test_topic_names_lists_topic_directories_only(data_dir: DataDir) -> None:
    """Every topic given a log is found again; stray entries are logged and left alone."""
    for topic in ("gpu", ".", "..", ".lock"):
        data_dir.open_log(topic)
    (data_dir.path / "lost+found").mkdir()
    (data_dir.path / "notes").write_text("a file with a valid topic name")
    with structlog.testing.capture_logs() as logs:
        assert data_dir.topic_names() == [".", "..", ".lock", "gpu"]
    ignored = sorted(Path(entry["path"]).name for entry in logs if entry["event"] == "broker.data_dir_entry_ignored")
    assert ignored == ["lost+found", "notes"]
    assert sorted(os.listdir(data_dir.path)) == ["%", "%.", "%lock", ".lock", "gpu", "lost+found", "notes"]


def test_interval_flusher_fsyncs_written_logs(tmp_path: Path) -> None:
    """Under "interval" a background thread fsyncs what was appended, without another publish."""
    flushed = threading.Event()
    data_dir = DataDir.open(tmp_path, policy="interval", interval=0.01, fsync=lambda fd: flushed.set())
    try:
        log = data_dir.open_log("gpu")
        list(log.recover())
        flushed.clear()  # creating the topic synced its directory
        log.append(Record(0, "", 0, 0, {}, b"x"))
        assert flushed.wait(FLUSH_TIMEOUT)
        log.close()
    finally:
        data_dir.close()
    assert not any(thread.name == "broker-fsync" for thread in threading.enumerate())
