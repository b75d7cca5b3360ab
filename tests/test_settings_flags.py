"""The setting flags of run, mq, tail and validate come from the declarations, under the names they always had."""

from __future__ import annotations

import pytest

from rxstreamer.cli import _parser, _settings
from rxstreamer.config import DECLARATIONS

# Every setting flag the CLI had before the flags were generated, and the new --format and --log-level.
FLAGS: list[tuple[str, str, str]] = [
    ("run", "--metrics-path", "telemetry.metrics_path"),
    ("run", "--batch-size", "telemetry.batch_size"),
    ("run", "--interval", "telemetry.stream_interval"),
    ("run", "--timestamps", "telemetry.timestamps"),
    ("run", "--mq-address", "message_queue.address"),
    ("run", "--topic", "message_queue.topic"),
    ("run", "--producer-id", "message_queue.producer_id"),
    ("run", "--checkpoint-path", "telemetry.checkpoint_path"),
    ("run", "--rejected-path", "telemetry.rejected_path"),
    ("run", "--format", "telemetry.format"),
    ("run", "--log-format", "logging.format"),
    ("mq", "--listen", "broker.listen"),
    ("mq", "--max-messages", "broker.max_messages"),
    ("mq", "--max-bytes", "broker.max_bytes"),
    ("mq", "--retention", "broker.retention"),
    ("mq", "--max-subscribers", "broker.max_subscribers"),
    ("mq", "--max-topics", "broker.max_topics"),
    ("mq", "--max-total-bytes", "broker.max_total_bytes"),
    ("mq", "--data-dir", "broker.data_dir"),
    ("mq", "--fsync", "broker.fsync"),
    ("mq", "--log-format", "logging.format"),
    ("tail", "--mq-address", "message_queue.address"),
    ("tail", "--topic", "message_queue.topic"),
    ("tail", "--log-format", "logging.format"),
    ("validate", "--format", "telemetry.format"),
    ("validate", "--log-format", "logging.format"),
    ("run", "--log-level", "logging.level"),
    ("mq", "--log-level", "logging.level"),
    ("tail", "--log-level", "logging.level"),
    ("run", "--nats-stream", "message_queue.nats.stream"),
    ("tail", "--nats-stream", "message_queue.nats.stream"),
    ("run", "--metrics-listen", "observability.listen"),
    ("mq", "--metrics-listen", "observability.listen"),
    ("run", "--pace", "telemetry.pace"),
    ("run", "--speed", "telemetry.speed"),
    ("run", "--batch-by", "telemetry.batch_by"),
    ("run", "--amplify", "telemetry.amplify"),
    ("run", "--shard", "telemetry.shard"),
    ("run", "--workers", "telemetry.workers"),
]


def _given(argv: list[str]) -> dict[str, object]:
    """The settings a command line sets, by dotted name."""
    args = _parser().parse_args(argv)
    return {name: getattr(args, name) for name in DECLARATIONS if getattr(args, name, None) is not None}


@pytest.mark.parametrize(("command", "flag", "setting"), FLAGS)
def test_each_flag_sets_its_setting(command: str, flag: str, setting: str) -> None:
    """A flag's string reaches load_settings under the setting's dotted name, and nothing else is set."""
    file = ["metrics.csv"] if command == "validate" else []
    repeatable = DECLARATIONS[setting].kind.repeatable  # each use adds one to a list: endpoints to scrape
    assert _given([command, *file, flag, "VALUE"]) == {setting: ["VALUE"] if repeatable else "VALUE"}


@pytest.mark.parametrize(("flag", "expected"), [("--loop", True), ("--no-loop", False), ("--start-over", True)])
def test_boolean_flags_have_a_no_form(flag: str, expected: bool) -> None:
    """Boolean settings take --name and --no-name."""
    setting = "telemetry.loop" if "loop" in flag else "telemetry.start_over"
    assert _given(["run", flag]) == {setting: expected}


def test_the_declared_flags_are_the_flags_of_before() -> None:
    """No setting flag was lost or added by accident: the declarations give exactly these."""
    declared = {(command, flag) for command, flag, _ in FLAGS} | {("run", "--loop"), ("run", "--start-over")}
    assert {(command, d.flag) for d in DECLARATIONS.values() for command in d.commands} == declared


@pytest.mark.parametrize(("command", "flag"), [("mq", "--batch-size"), ("tail", "--listen"), ("validate", "--topic")])
def test_a_flag_belongs_to_its_commands_only(command: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A setting flag given to a command that does not take it is a usage error (exit 2)."""
    file = ["metrics.csv"] if command == "validate" else []
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args([command, *file, flag, "1"])
    assert exited.value.code == 2
    assert f"unrecognized arguments: {flag} 1" in capsys.readouterr().err


def test_help_shows_the_setting_and_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    """`mq --help` names each flag's setting with the README's description, Markdown quotes removed."""
    with pytest.raises(SystemExit):
        _parser().parse_args(["mq", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--listen LISTEN broker.listen: where the reference broker listens; port 0 picks one" in help_text
    assert "--fsync FSYNC broker.fsync: always (before each acknowledgement), interval, or never" in help_text


def test_flag_values_are_read_and_validated_as_settings() -> None:
    """Flags become overrides: strings read by the setting's type, the result validated like any layer."""
    args = _parser().parse_args(["run", "--batch-size", "7", "--no-loop", "--interval", "250ms", "--format", "csv"])
    settings = _settings(args)
    telemetry = settings.telemetry
    assert (telemetry.batch_size, telemetry.loop, telemetry.stream_interval, telemetry.format) == (
        7,
        False,
        0.25,
        "csv",
    )
