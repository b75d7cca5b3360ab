"""``run --workers N``: N shard processes under one supervisor, with real processes and the project's own broker.

What must hold: the workers together send the input once (their union is what one unsharded streamer sends,
no row twice, each GPU from one worker); the supervisor prints one summary adding up theirs and exits 0; a
SIGTERM to the supervisor stops every worker cleanly, checkpoints written; a worker killed with SIGKILL is
reported, the others are stopped, and the exit status says so; what N workers cannot share is refused with
exit status 2 before any of them starts. Every wait is for something observable (a log line, a file), bounded.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.config import load_settings
from rxstreamer.supervisor import _Supervisor, exit_status, shard_path, worker_command
from tests.conftest import TEST_DATA_CSV
from tests.processes import (
    START_TIMEOUT,
    Broker,
    Finished,
    Watched,
    broker_process,
    read_topic,
    run_command,
    run_streamer,
    start_watched_streamer,
    wait_until,
)

ROWS = 960  # test-data/metrics.csv
# The stop tests stream in a loop, a batch every 100 ms: still streaming whenever the test acts.
STREAMING = ("--loop", "--timestamps", "processing", "--interval", "100ms", "--batch-size", "10")


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with broker_process() as running:
        yield running


def events(finished: Finished, name: str) -> list[dict[str, Any]]:
    return [line for line in finished.lines if line.get("event") == name]


def row_key(metric: dict[str, Any]) -> str:
    """A metric as it was read from the file, without where the queue put it."""
    return json.dumps(
        {k: v for k, v in metric.items() if k not in ("producer_id", "sequence", "offset")}, sort_keys=True
    )


def by_worker(finished: Finished, name: str) -> dict[int, dict[str, Any]]:
    lines = events(finished, name)
    assert len(lines) == len({line["worker"] for line in lines}), lines
    return {line["worker"]: line for line in lines}


# --- the pieces ------------------------------------------------------------------------------------------------


def test_each_worker_has_its_own_checkpoint_file_beside_the_one_set() -> None:
    assert shard_path(Path("state/checkpoint.json"), 0, 2) == Path("state/checkpoint.shard-0-of-2.json")
    assert shard_path(Path("/var/lib/rx/ckpt"), 3, 4) == Path("/var/lib/rx/ckpt.shard-3-of-4")


def test_a_worker_runs_the_users_arguments_as_shard_i_of_n_without_workers_of_its_own() -> None:
    settings = load_settings(
        overrides={
            "telemetry.workers": "3",
            "telemetry.checkpoint_path": "c.json",
            "telemetry.rejected_path": "bad.csv",
        },
        environ={},
    )
    user = ["--workers", "3", "--checkpoint-path", "c.json", "--rejected-path", "bad.csv", "--batch-size", "5"]
    first, second = (worker_command(user, settings, index, 3) for index in (0, 1))
    assert first[first.index("run") + 1 :] == [
        *user, "--workers", "1", "--shard", "0/3", "--log-format", "json", "--checkpoint-path", "c.shard-0-of-3.json",
        "--rejected-path", "bad.shard-0-of-3.csv",
    ]  # fmt: skip
    # each worker keeps its own quarantine file: of a CSV file, each rejects the bad records of its own GPUs
    assert second[-4:] == ["--checkpoint-path", "c.shard-1-of-3.json", "--rejected-path", "bad.shard-1-of-3.csv"]


def test_the_summary_adds_the_workers_counts_and_keeps_the_worst_lag_behind_schedule() -> None:
    """Counts add up across workers; how far behind schedule a replay is does not: the worst worker's is the run's."""
    settings = load_settings(overrides={"telemetry.workers": "2"}, environ={})
    supervisor = _Supervisor(settings, ["--workers", "2"], threading.Event(), lambda: None)
    for worker, (published, behind, late) in zip(supervisor._workers, [(10, 0.5, 1), (20, 2.25, 0)], strict=True):
        worker.summary = {
            "rows_published": published, "behind_schedule_s": behind, "rows_out_of_order": late, "duration_s": 3.0,
            "rejected_by_reason": {"field_count": 1},
        }  # fmt: skip
    totals, without_summary = supervisor._counts()
    assert (totals["rows_published"], totals["behind_schedule_s"], totals["rows_out_of_order"]) == (30, 2.25, 1)
    assert totals["rejected_by_reason"] == {"field_count": 2}
    assert "duration_s" not in totals
    assert without_summary == []


def test_a_worker_killed_by_a_signal_counts_as_128_plus_the_signal() -> None:
    assert [exit_status(code) for code in (0, 1, 2, -9, -15)] == [0, 1, 2, 137, 143]


# --- refused before anything starts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "setting"),
    [
        (("--shard", "0/2"), "telemetry.shard"),
        (("--metrics-listen", "127.0.0.1:9464"), "observability.listen"),
        (("--metrics-path", "no-such-file.csv"), "telemetry.metrics_path"),
    ],
)
def test_what_workers_cannot_share_is_a_usage_error(flags: tuple[str, str], setting: str) -> None:
    finished = run_command("run", "--workers", "2", *flags, "--mq-address", "127.0.0.1:9")
    assert finished.returncode == 2, finished.stderr
    assert finished.stdout == ""  # no worker was started
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"rxstreamer: invalid setting {setting} = "), lines[0]
    if setting == "telemetry.shard":
        assert "telemetry.workers = 2" in lines[0]


# --- two workers streaming a file ------------------------------------------------------------------------------


def test_two_workers_send_every_row_once_and_one_summary_adds_them_up(broker: Broker) -> None:
    common = (
        "--metrics-path",
        str(TEST_DATA_CSV),
        "--interval",
        "0",
        "--batch-size",
        "10",
        "--mq-address",
        broker.address,
    )
    alone = run_streamer(*common, "--topic", "workers-alone")
    assert alone.returncode == 0, alone.stderr
    finished = run_streamer(*common, "--topic", "workers-two", "--workers", "2")
    assert finished.returncode == 0, finished.stdout + finished.stderr

    # the union of the workers' output is what one streamer sends, no row twice
    unsharded = read_topic(broker.address, "workers-alone")
    sharded = read_topic(broker.address, "workers-two", with_batch=True)
    assert len(unsharded) == ROWS
    assert Counter(map(row_key, sharded)) == Counter(map(row_key, unsharded))
    # each worker is its own producer, and each GPU is sent by one of them only
    producers = {metric["producer_id"] for metric in sharded}
    assert len(producers) == 2, producers
    gpus: dict[str, set[str]] = {}
    for metric in sharded:
        gpus.setdefault(metric["uuid"], set()).add(metric["producer_id"])
    assert all(len(sent_by) == 1 for sent_by in gpus.values()), gpus

    # one summary, the sum of the workers' own
    assert len(events(finished, "streamer.stopped")) == 1
    summary = finished.summary
    workers = by_worker(finished, "worker.stopped")
    assert sorted(workers) == [0, 1]
    assert all(worker["reason"] == "completed" for worker in workers.values())
    assert all(0 < worker["rows_published"] < ROWS for worker in workers.values())
    for name in ("rows_read", "rows_published", "batches_published", "duplicates", "rows_rejected"):
        assert summary[name] == sum(worker[name] for worker in workers.values()), name
    assert (summary["reason"], summary["workers"], summary["exit_code"]) == ("completed", 2, 0)
    assert (summary["rows_published"], summary["duplicates"], summary["rows_rejected"]) == (ROWS, 0, 0)
    assert summary["batches_published"] == len({(m["producer_id"], m["sequence"]) for m in sharded})
    # the workers' lines are relayed with their number; their own progress and summaries are not repeated as such
    started = by_worker(finished, "streamer.started")
    assert {worker: line["telemetry.shard"] for worker, line in started.items()} == {0: "0/2", 1: "1/2"}
    assert [line.get("worker") for line in events(finished, "streamer.progress")] == [None] * len(
        events(finished, "streamer.progress")
    )


def test_the_users_log_format_is_kept_for_the_relayed_lines(broker: Broker) -> None:
    finished = run_streamer(
        "--workers", "2", "--log-format", "console", "--metrics-path", str(TEST_DATA_CSV), "--interval", "0",
        "--batch-size", "100", "--mq-address", broker.address, "--topic", "workers-console",
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.lines == []  # no JSON
    stopped = [line for line in finished.stdout.splitlines() if "streamer.stopped" in line]
    assert len(stopped) == 1
    assert "reason=completed" in stopped[0]
    assert "rows_published=960" in stopped[0]
    for worker in (0, 1):
        assert any("streamer.started" in line and f"worker={worker}" in line for line in finished.stdout.splitlines())


# --- stopping ------------------------------------------------------------------------------------------------


def _two_workers_then(
    stop: Callable[[Watched, dict[str, Any]], None], broker: Broker, tmp_path: Path, topic: str
) -> tuple[Finished, dict[str, Any], list[Path]]:
    """Two workers streaming to ``topic`` with checkpoints; once each has had a batch acknowledged (its checkpoint
    is written after the acknowledgement), ``stop(supervisor, its supervisor.started line)``. Returns the whole
    output, that line, and the workers' checkpoint files."""
    supervisor = start_watched_streamer(
        "--workers", "2", *STREAMING, "--metrics-path", str(TEST_DATA_CSV), "--mq-address", broker.address,
        "--topic", topic, "--checkpoint-path", str(tmp_path / "checkpoint.json"),
    )  # fmt: skip
    try:
        started = supervisor.wait_for_event("supervisor.started")
        files = [tmp_path / f"checkpoint.shard-{i}-of-2.json" for i in (0, 1)]
        wait_until(lambda: all(file.exists() for file in files), START_TIMEOUT, "both workers' checkpoints")
        stop(supervisor, started)
        finished = supervisor.finish(timeout=60)
    finally:
        supervisor.process.kill()
    return finished, started, files


def test_sigterm_to_the_supervisor_stops_every_worker_cleanly(broker: Broker, tmp_path: Path) -> None:
    finished, started, files = _two_workers_then(
        lambda supervisor, _: supervisor.process.send_signal(signal.SIGTERM), broker, tmp_path, "workers-sigterm"
    )
    assert started["checkpoints"] == [str(file) for file in files]
    assert finished.returncode == 0, finished.stdout + finished.stderr
    stopping = events(finished, "supervisor.stopping")
    assert [(line["signal"], line["because"]) for line in stopping] == [("SIGTERM", "SIGTERM received")]
    assert sorted(by_worker(finished, "streamer.stopping")) == [0, 1]  # each got the signal, once
    assert events(finished, "streamer.forced_exit") == []
    workers = by_worker(finished, "worker.stopped")
    summary = finished.summary
    assert (summary["reason"], summary["exit_code"], summary["exit_codes"]) == ("signal", 0, [0, 0])
    for index, file in enumerate(files):
        written = json.loads(file.read_text())
        assert workers[index]["reason"] == "signal"
        assert written["sequence"] == workers[index]["checkpoint_sequence"]
        assert written["rows_published"] == workers[index]["rows_published"]
    published = read_topic(broker.address, "workers-sigterm")
    assert len(published) == summary["rows_published"] - summary["duplicates"]


def test_sigterm_to_every_process_at_once_is_one_clean_stop(broker: Broker, tmp_path: Path) -> None:
    """What systemd's default KillMode and ``pkill`` do: each worker gets SIGTERM itself and again from the
    supervisor, which is one request, not a second one forcing it out with its last batch cut."""

    def to_every_process(supervisor: Watched, started: dict[str, Any]) -> None:
        for pid in (supervisor.process.pid, *started["pids"]):
            os.kill(pid, signal.SIGTERM)

    finished, _, _ = _two_workers_then(to_every_process, broker, tmp_path, "workers-sigterm-all")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert events(finished, "streamer.forced_exit") == []
    assert events(finished, "worker.failed") == []
    assert sorted(by_worker(finished, "worker.stopped")) == [0, 1]
    summary = finished.summary
    assert (summary["reason"], summary["exit_code"], summary["exit_codes"]) == ("signal", 0, [0, 0])
    assert summary["rows_published"] > 0
    published = read_topic(broker.address, "workers-sigterm-all")
    assert len(published) == summary["rows_published"] - summary["duplicates"]


def test_a_killed_worker_is_reported_and_the_others_are_stopped(broker: Broker, tmp_path: Path) -> None:
    finished, started, files = _two_workers_then(
        lambda _, started: os.kill(started["pids"][1], signal.SIGKILL), broker, tmp_path, "workers-kill"
    )
    pids = started["pids"]
    assert finished.returncode == 128 + signal.SIGKILL, finished.stdout + finished.stderr
    failed = events(finished, "worker.failed")
    assert len(failed) == 1
    assert (failed[0]["worker"], failed[0]["pid"], failed[0]["signal"], failed[0]["exit_code"]) == (
        1, pids[1], "SIGKILL", 137,
    )  # fmt: skip
    assert failed[0]["level"] == "error"
    stopping = events(finished, "supervisor.stopping")
    assert [(line["signal"], line["because"], line["workers"]) for line in stopping] == [
        ("SIGTERM", "worker 1 failed", [0])
    ]
    workers = by_worker(finished, "worker.stopped")
    assert list(workers) == [0]  # the killed one could not say anything more
    assert workers[0]["reason"] == "signal"
    assert json.loads(files[0].read_text())["sequence"] == workers[0]["checkpoint_sequence"]
    summary = finished.summary
    assert summary["level"] == "error"
    assert (summary["reason"], summary["exit_code"], summary["exit_codes"]) == ("error", 137, [0, 137])
    assert summary["workers_without_summary"] == [1]
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL" in summary["error"]
