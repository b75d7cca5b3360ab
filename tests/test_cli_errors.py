"""Errors before start-up as the real command: one JSON line with JSON logs, the plain line otherwise, and
`validate --json` answering in JSON even when there is no report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.processes import run_command

BAD_BATCH = "invalid setting telemetry.batch_size = 0: must be an integer >= 1"


def only_json_line(text: str) -> dict[str, Any]:
    """``text`` is exactly one line, and that line is a JSON object."""
    assert text.count("\n") == 1, text
    assert text.endswith("\n"), text
    line = json.loads(text)
    assert isinstance(line, dict), text
    return line


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--log-format", "json"], None),  # the flag, although the settings it belongs to cannot load
        ([], {"RXSTREAMER_LOGGING__FORMAT": "json"}),
    ],
    ids=["flag", "environment"],
)
def test_a_bad_setting_is_one_json_line_with_json_logs(args: list[str], env: dict[str, str] | None) -> None:
    finished = run_command("run", *args, "--batch-size", "0", env=env)
    assert (finished.returncode, finished.stdout) == (2, "")
    line = only_json_line(finished.stderr)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["level"] == "error"
    assert line["event"] == "cli.invalid_setting"
    assert line["error"] == BAD_BATCH
    assert line["setting"] == "telemetry.batch_size"
    assert line["exit_code"] == 2


@pytest.mark.parametrize(
    ("command", "args", "env"),
    [
        (["run", "--log-format", "json", "--bogus"], "unrecognized arguments: --bogus", None),
        (["tail", "--log-format=json", "--topic"], "argument --topic: expected one argument", None),
        (["mq", "--bogus"], "unrecognized arguments: --bogus", {"RXSTREAMER_LOGGING__FORMAT": "json"}),
    ],
    ids=["unknown-flag", "flag-without-value", "environment"],
)
def test_a_usage_error_is_one_json_line_with_json_logs(
    command: list[str], args: str, env: dict[str, str] | None
) -> None:
    """argparse's own errors too: a log collector reading JSON lines never gets argparse's two plain lines."""
    finished = run_command(*command, env=env)
    assert (finished.returncode, finished.stdout) == (2, "")
    line = only_json_line(finished.stderr)
    assert (line["level"], line["event"], line["error"], line["exit_code"]) == ("error", "cli.usage_error", args, 2)
    assert line["help"] == f"rxstreamer {command[0]} --help"


def test_a_usage_error_with_console_logs_is_argparse_s_own() -> None:
    finished = run_command("run", "--log-format", "console", "--bogus")
    assert (finished.returncode, finished.stdout) == (2, "")
    assert finished.stderr.startswith("usage: rxstreamer")
    assert finished.stderr.endswith("rxstreamer: error: unrecognized arguments: --bogus\n")


def test_a_settings_file_asking_for_json_logs_gets_json_errors(tmp_path: Path) -> None:
    """Settings that load say JSON: an error after loading them (a missing metrics file) is JSON too."""
    config = tmp_path / "settings.toml"
    config.write_text('[logging]\nformat = "json"\n', encoding="utf-8")
    missing = tmp_path / "missing.csv"
    finished = run_command("validate", "--config", str(config), str(missing))
    line = only_json_line(finished.stderr)
    assert (finished.returncode, line["event"], line["exit_code"]) == (2, "cli.invalid_input", 2)
    assert str(missing) in line["error"]


@pytest.mark.parametrize("args", [[], ["--log-format", "console"], ["--log-format", "auto"]])
def test_console_logs_keep_the_plain_line(args: list[str]) -> None:
    finished = run_command("run", *args, "--batch-size", "0")
    assert (finished.returncode, finished.stdout, finished.stderr) == (2, "", f"rxstreamer: {BAD_BATCH}\n")


def test_validate_json_reports_a_missing_file_in_json(tmp_path: Path) -> None:
    finished = run_command("validate", "--json", "missing.csv", cwd=tmp_path)
    assert (finished.returncode, finished.stderr) == (2, "")
    assert json.loads(finished.stdout) == {"path": "missing.csv", "exit_code": 2, "error": "missing.csv: no such file"}


def test_validate_json_reports_a_file_that_is_not_a_csv_in_json(tmp_path: Path) -> None:
    (tmp_path / "notes.csv").write_text("hello world\n", encoding="utf-8")
    finished = run_command("validate", "--json", "notes.csv", cwd=tmp_path)
    assert (finished.returncode, finished.stderr) == (2, "")
    document = json.loads(finished.stdout)
    assert (document["path"], document["exit_code"]) == ("notes.csv", 2)
    assert "missing required column" in document["error"]


def test_validate_json_reports_a_bad_setting_in_json(tmp_path: Path) -> None:
    finished = run_command("validate", "--json", "--format", "xml", "metrics.csv", cwd=tmp_path)
    assert (finished.returncode, finished.stderr) == (2, "")
    document = json.loads(finished.stdout)
    assert document == {
        "path": "metrics.csv",
        "exit_code": 2,
        "error": "invalid setting telemetry.format = 'xml': must be one of: auto, csv, jsonl, prometheus",
    }


def test_validate_without_json_keeps_the_plain_line(tmp_path: Path) -> None:
    finished = run_command("validate", "missing.csv", cwd=tmp_path)
    assert (finished.returncode, finished.stdout, finished.stderr) == (2, "", "rxstreamer: missing.csv: no such file\n")
