"""The first hour of a new user, as the real command: --version, --log-level, RXSTREAMER_CONFIG, generate -o -."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from rxstreamer import cli
from tests.processes import REPO_ROOT, broker_process, child_env, json_lines, run_command, rxstreamer_command

VERSION = "0.1.0"  # what pyproject.toml declares; a release bumps both


# --- --version ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["mq"], ["tail"], ["validate"], ["generate"]])
def test_every_command_prints_the_version(command: list[str]) -> None:
    """`--version` answers on stdout and exits 0, also where the command has required arguments."""
    finished = run_command(*command, "--version")
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, f"rxstreamer {VERSION}\n", "")


def test_the_version_is_the_declared_one() -> None:
    """The installed version is the one pyproject.toml declares (the venv installs this checkout)."""
    assert cli.version() == VERSION


def test_without_installed_metadata_the_version_comes_from_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source checkout that was never installed still answers --version with its declared version."""

    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == VERSION


# --- --log-level --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "mq", "tail"])
def test_log_level_is_checked_like_the_setting(command: str) -> None:
    """--log-level is logging.level: a bad value is the setting's one-line error, exit 2."""
    finished = run_command(command, "--log-level", "loud")
    assert finished.returncode == 2
    assert finished.stderr == (
        "rxstreamer: invalid setting logging.level = 'loud': must be one of: debug, info, warning, error\n"
    )


@pytest.mark.integration
def test_log_level_warning_silences_the_info_lines(tmp_path: Path) -> None:
    """A clean run at --log-level warning logs nothing at all; at the default it logs its start and stop."""
    csv = tmp_path / "small.csv"
    assert run_command("generate", "-o", str(csv), "--rows", "20").returncode == 0
    with broker_process() as broker:
        stream = ["run", "--mq-address", broker.address, "--metrics-path", str(csv), "--interval", "0s"]
        quiet = run_command(*stream, "--log-format", "json", "--log-level", "warning")
        usual = run_command(*stream, "--log-format", "json")
    assert (quiet.returncode, json_lines(quiet.stdout + quiet.stderr)) == (0, [])
    events = [line["event"] for line in json_lines(usual.stdout + usual.stderr)]
    assert usual.returncode == 0
    assert "streamer.stopped" in events


# --- RXSTREAMER_CONFIG --------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A small CSV, a config that breaks validate, and one that is fine."""
    csv = tmp_path / "small.csv"
    assert run_command("generate", "-o", str(csv), "--rows", "5").returncode == 0
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text('[telemetry]\nformat = "xml"\n', encoding="utf-8")
    good.write_text('[telemetry]\nformat = "csv"\n', encoding="utf-8")
    return {"csv": str(csv), "bad": str(bad), "good": str(good), "missing": str(tmp_path / "missing.toml")}


def test_rxstreamer_config_names_the_config_file(files: dict[str, str]) -> None:
    """RXSTREAMER_CONFIG=FILE is read like --config FILE: its value is used (here, refused)."""
    finished = run_command("validate", files["csv"], env={"RXSTREAMER_CONFIG": files["bad"]})
    assert finished.returncode == 2
    assert (
        finished.stderr
        == "rxstreamer: invalid setting telemetry.format = 'xml': must be one of: auto, csv, jsonl, prometheus\n"
    )


def test_the_config_flag_wins_over_rxstreamer_config(files: dict[str, str]) -> None:
    """With both, --config is read and RXSTREAMER_CONFIG is not (even when it names no file)."""
    for env_file in (files["bad"], files["missing"]):
        finished = run_command("validate", files["csv"], "--config", files["good"], env={"RXSTREAMER_CONFIG": env_file})
        assert (finished.returncode, finished.stderr) == (0, "")


def test_a_missing_rxstreamer_config_file_is_named_by_the_variable(files: dict[str, str]) -> None:
    """The error says where the name came from, so the user looks at the environment, not the command line."""
    finished = run_command("validate", files["csv"], env={"RXSTREAMER_CONFIG": files["missing"]})
    assert finished.returncode == 2
    assert finished.stderr == f"rxstreamer: invalid setting RXSTREAMER_CONFIG = '{files['missing']}': file not found\n"


# --- generate -o - ------------------------------------------------------------------------------------


def test_generate_to_standard_output(tmp_path: Path) -> None:
    """`-o -` writes the same CSV as to a file, on stdout; the summary stays on stderr."""
    to_file = tmp_path / "rows.csv"
    assert run_command("generate", "-o", str(to_file), "--rows", "7", "--seed", "3").returncode == 0
    finished = run_command("generate", "-o", "-", "--rows", "7", "--seed", "3")
    assert (finished.returncode, finished.stderr) == (0, "rxstreamer: wrote 7 rows to standard output\n")
    assert finished.stdout == to_file.read_text(encoding="utf-8")
    assert len(finished.stdout.splitlines()) == 8  # the header and 7 rows


def test_generate_to_a_file_named_dash(tmp_path: Path) -> None:
    """`-o ./-` is a file called "-", not standard output."""
    finished = subprocess.run(
        rxstreamer_command("generate", "-o", "./-", "--rows", "2"),
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert (finished.returncode, finished.stdout) == (0, "")
    assert finished.stderr == "rxstreamer: wrote 2 rows to ./-\n"
    assert len((tmp_path / "-").read_text(encoding="utf-8").splitlines()) == 3


def test_generate_into_a_pipe_that_closes_early() -> None:
    """`generate -o - | head -1`: the reader leaving is no error (exit 0, nothing on stderr)."""
    generate = subprocess.Popen(
        rxstreamer_command("generate", "-o", "-", "--rows", "100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    assert generate.stdout is not None
    assert generate.stderr is not None
    assert generate.stdout.readline().startswith(b"timestamp,metric_name,")
    generate.stdout.close()
    assert generate.wait(timeout=60) == 0
    assert generate.stderr.read() == b""
    generate.stderr.close()
