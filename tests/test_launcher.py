"""`make telemetry-streamer` and the launcher it builds, run the way its README section says, from elsewhere.

The launcher is built at the repository root (where `make` puts it; it is git-ignored), with this test's Python
(``PY=``) and without touching .venv (``-o .venv/.installed``). Every process listens on 127.0.0.1 only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rxstreamer.sources import CsvRows
from tests.processes import REPO_ROOT, broker_process, child_env, event, json_lines, read_topic

pytestmark = pytest.mark.integration

LAUNCHER = REPO_ROOT / "telemetry-streamer"
CONFIG = REPO_ROOT / "config.yaml"
METRICS = REPO_ROOT / "test-data" / "metrics.csv"


@pytest.fixture(scope="module")
def launcher() -> Path:
    """`make telemetry-streamer`, once for the module."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    built = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "telemetry-streamer", f"PY={sys.executable}"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), timeout=60, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert LAUNCHER.is_file()
    assert LAUNCHER.stat().st_mode & 0o111, "the launcher is not executable"
    return LAUNCHER


def launch(launcher: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(launcher), *args], capture_output=True, text=True, cwd=cwd, env=child_env(), timeout=60, check=False
    )


def test_the_launcher_is_a_shell_script_that_runs_this_checkouts_python(launcher: Path) -> None:
    text = launcher.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert f"exec '{Path(sys.executable).absolute()}' -P -m rxstreamer \"$@\"" in text


def test_the_example_config_holds_the_four_settings_users_know() -> None:
    assert yaml.safe_load(CONFIG.read_text()) == {
        "telemetry": {"stream_interval": "1s", "batch_size": 10, "metrics_path": "./test-data/metrics.csv"},
        "message_queue": {"address": "localhost:50051"},
    }


def test_the_launcher_streams_the_example_config_from_another_directory(launcher: Path, tmp_path: Path) -> None:
    """config.yaml as shipped, its queue and pace overridden by flags, run from a directory that is not the
    checkout: the relative metrics_path is found relative to that directory (here a link to test-data)."""
    (tmp_path / "test-data").symlink_to(REPO_ROOT / "test-data", target_is_directory=True)
    with broker_process() as broker:
        finished = launch(
            launcher, "--config", str(CONFIG), "--mq-address", broker.address, "--interval", "0s", "--log-format",
            "json", cwd=tmp_path,
        )  # fmt: skip
        assert finished.returncode == 0, finished.stdout + finished.stderr
        lines = json_lines(finished.stdout)
        started, stopped = event(lines, "streamer.started"), event(lines, "streamer.stopped")
        assert started["telemetry.batch_size"] == 10  # from config.yaml
        assert started["telemetry.stream_interval"] == "0s"  # the flag over config.yaml's 1s
        assert started["message_queue.address"] == broker.address
        assert (stopped["reason"], stopped["rows_published"], stopped["batches_published"]) == ("completed", 960, 96)
        metrics = read_topic(broker.address)
    expected = [(row.uuid, row.metric_name, row.value) for row in CsvRows(METRICS)]
    assert [(metric["uuid"], metric["metric_name"], metric["value"]) for metric in metrics] == expected


def test_a_relative_metrics_path_is_relative_to_where_you_run_it(launcher: Path, tmp_path: Path) -> None:
    """From a directory without test-data/, the example config stops before streaming and says where it looked."""
    finished = launch(launcher, "--config", str(CONFIG), cwd=tmp_path)
    assert finished.returncode == 2
    assert finished.stderr == (
        "rxstreamer: invalid setting telemetry.metrics_path = 'test-data/metrics.csv': file not found "
        f"(relative to the current directory {tmp_path})\n"
    )


def test_a_folder_named_rxstreamer_where_you_run_it_does_not_shadow_the_package(launcher: Path, tmp_path: Path) -> None:
    (tmp_path / "rxstreamer").mkdir()
    (tmp_path / "rxstreamer" / "__main__.py").write_text("raise SystemExit('the wrong rxstreamer')\n")
    finished = launch(launcher, "--version", cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("rxstreamer ")
