"""Settings: layering (defaults < --config < environment < flags), validation and error messages."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.config import (
    ConfigError,
    Settings,
    load_settings,
    require_readable_file,
    settings_summary,
)
from rxstreamer.durations import parse_duration, parse_size
from tests.conftest import REPO_ROOT

DEFAULTS_TOML = REPO_ROOT / "settings.toml"


def _defaults() -> dict[str, Any]:
    with DEFAULTS_TOML.open("rb") as handle:
        return tomllib.load(handle)


def _dotted(tree: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _error(
    overrides: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, overrides=overrides, environ=environ or {})
    return caught.value


# --- defaults -------------------------------------------------------------------------------------------


def test_defaults_equal_settings_toml() -> None:
    """With no file, environment or flags, every value is the one written in settings.toml."""
    toml = _defaults()
    settings = load_settings(environ={})

    telemetry = toml["telemetry"]
    assert settings.telemetry.metrics_path == Path(str(telemetry["metrics_path"]))
    assert settings.telemetry.stream_interval == parse_duration(telemetry["stream_interval"])
    assert settings.telemetry.batch_size == telemetry["batch_size"]
    assert settings.telemetry.loop is telemetry["loop"]
    assert settings.telemetry.timestamps == telemetry["timestamps"]
    assert list(settings.telemetry.transforms) == telemetry["transforms"]

    mq = toml["message_queue"]
    assert settings.message_queue.address == mq["address"]
    assert settings.message_queue.topic == mq["topic"]
    assert settings.message_queue.publish_timeout == parse_duration(mq["publish_timeout"])
    assert settings.message_queue.producer_id == mq["producer_id"]
    retry = mq["retry"]
    assert isinstance(retry, dict)
    assert settings.message_queue.retry.initial_backoff == parse_duration(retry["initial_backoff"])
    assert settings.message_queue.retry.max_backoff == parse_duration(retry["max_backoff"])
    assert settings.message_queue.retry.multiplier == retry["multiplier"]
    assert settings.message_queue.retry.max_attempts == retry["max_attempts"]

    assert settings.shutdown.timeout == parse_duration(toml["shutdown"]["timeout"])

    logging = toml["logging"]
    assert settings.logging.format == logging["format"]
    assert settings.logging.level == logging["level"]
    assert settings.logging.progress_interval == parse_duration(logging["progress_interval"])

    broker = toml["broker"]
    assert settings.broker.listen == broker["listen"]
    assert settings.broker.max_messages == broker["max_messages"]
    assert settings.broker.max_bytes == parse_size(broker["max_bytes"])
    assert settings.broker.retention == parse_duration(broker["retention"])


def test_packaged_defaults_are_the_repository_settings_toml() -> None:
    """The settings.toml shipped inside the package is the one at the repository root."""
    packaged = resources.files("rxstreamer").joinpath("settings.toml").read_text(encoding="utf-8")
    assert packaged == DEFAULTS_TOML.read_text(encoding="utf-8")


def test_summary_has_every_key_of_settings_toml() -> None:
    """settings_summary lists exactly the dotted keys of settings.toml, with JSON-friendly values."""
    summary = settings_summary(load_settings(environ={}))
    assert set(summary) == set(_dotted(_defaults()))
    json.dumps(summary)  # must not raise
    assert summary["message_queue.retry.initial_backoff"] == "100ms"
    assert summary["telemetry.metrics_path"] == "test-data/metrics.csv"
    assert summary["telemetry.transforms"] == []
    assert summary["broker.max_bytes"] == 268435456


def test_settings_are_frozen() -> None:
    """Nothing downstream can change a setting after validation."""
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.telemetry.batch_size = 5  # type: ignore[misc]


# --- layering -------------------------------------------------------------------------------------------

CONFIG_FILES = {
    ".toml": """
[telemetry]
batch_size = 20
stream_interval = "2s"

[message_queue]
topic = "from-file"

[message_queue.retry]
max_attempts = 5
""",
    ".yaml": """
telemetry:
  batch_size: 20
  stream_interval: 2s
message_queue:
  topic: from-file
  retry:
    max_attempts: 5
""",
    ".yml": """
telemetry: {batch_size: 20, stream_interval: "2s"}
message_queue: {topic: from-file, retry: {max_attempts: 5}}
""",
    ".json": """
{"telemetry": {"batch_size": 20, "stream_interval": "2s"},
 "message_queue": {"topic": "from-file", "retry": {"max_attempts": 5}}}
""",
}


@pytest.fixture(params=sorted(CONFIG_FILES))
def config_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """One config file per supported format, all setting the same values."""
    suffix: str = request.param
    path = tmp_path / f"rxstreamer{suffix}"
    path.write_text(CONFIG_FILES[suffix], encoding="utf-8")
    return path


def test_config_file_values_apply_and_merge_deeply(config_file: Path) -> None:
    """A TOML/YAML/JSON file overrides only the keys it names; sibling keys keep their defaults."""
    settings = load_settings(config_file, environ={})
    defaults = load_settings(environ={})
    assert settings.telemetry.batch_size == 20
    assert settings.telemetry.stream_interval == 2.0
    assert settings.message_queue.topic == "from-file"
    assert settings.message_queue.retry.max_attempts == 5
    # Everything else in the same tables is untouched.
    assert settings.telemetry.loop == defaults.telemetry.loop
    assert settings.telemetry.metrics_path == defaults.telemetry.metrics_path
    assert settings.message_queue.address == defaults.message_queue.address
    assert settings.message_queue.retry.initial_backoff == defaults.message_queue.retry.initial_backoff
    assert settings.message_queue.retry.multiplier == defaults.message_queue.retry.multiplier
    assert settings.broker == defaults.broker


def test_precedence_file_then_environment_then_overrides(config_file: Path) -> None:
    """The environment beats the file and command-line overrides beat both, key by key."""
    environ = {
        "RXSTREAMER_TELEMETRY__BATCH_SIZE": "30",
        "RXSTREAMER_TELEMETRY__STREAM_INTERVAL": "3s",
    }
    settings = load_settings(config_file, overrides={"telemetry.batch_size": 40}, environ=environ)
    assert settings.telemetry.batch_size == 40  # override > env > file
    assert settings.telemetry.stream_interval == 3.0  # env > file
    assert settings.message_queue.topic == "from-file"  # file > defaults
    assert settings.message_queue.retry.max_attempts == 5


def test_environment_beats_defaults_without_a_file() -> None:
    """Environment variables apply on top of the packaged defaults when no file is given."""
    settings = load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__RETRY__MAX_ATTEMPTS": "3"})
    assert settings.message_queue.retry.max_attempts == 3


def test_only_the_given_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit environ mapping hides os.environ; without one, os.environ is used."""
    monkeypatch.setenv("RXSTREAMER_TELEMETRY__BATCH_SIZE", "99")
    assert load_settings(environ={}).telemetry.batch_size == 10
    assert load_settings(environ={"RXSTREAMER_TELEMETRY__BATCH_SIZE": "7"}).telemetry.batch_size == 7
    assert load_settings().telemetry.batch_size == 99


def test_concurrent_loads_each_see_their_own_environ() -> None:
    """load_settings from several threads at once neither fails nor mixes up their environments."""
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def load(size: int) -> None:
        try:
            environ = {"RXSTREAMER_TELEMETRY__BATCH_SIZE": str(size)}
            results[size] = load_settings(environ=environ).telemetry.batch_size
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(size,)) for size in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == {size: size for size in range(1, 9)}


def test_keys_in_files_are_case_insensitive(tmp_path: Path) -> None:
    """Like dynaconf, a file may spell sections and keys in upper case."""
    path = tmp_path / "upper.toml"
    path.write_text("[TELEMETRY]\nBATCH_SIZE = 12\n", encoding="utf-8")
    assert load_settings(path, environ={}).telemetry.batch_size == 12


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("[telemetri]\nbatch_size = 3\n", " (did you mean 'telemetry'?)"),
        ("[brokers]\nlisten = '127.0.0.1:0'\n", " (did you mean 'broker'?)"),
        ("[other_tool]\nanything = 1\n", ""),
    ],
)
def test_unknown_top_level_tables_are_refused(tmp_path: Path, text: str, hint: str) -> None:
    """A table that is no section, a mistyped one above all, fails instead of being silently ignored."""
    path = tmp_path / "extra.toml"
    path.write_text(text, encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == text[1:].split("]", maxsplit=1)[0]
    sections = "telemetry, message_queue, shutdown, logging, broker, observability"
    assert error.allowed == f"unknown setting{hint}; the sections are: {sections}"


def test_environment_unknown_section_with_nesting_is_refused() -> None:
    """RXSTREAMER_TELEMETRI__BATCH_SIZE is meant as a setting, so a typo in its section is an error."""
    error = _error(environ={"RXSTREAMER_TELEMETRI__BATCH_SIZE": "5"})
    assert error.setting == "RXSTREAMER_TELEMETRI__BATCH_SIZE"
    assert error.allowed.startswith("unknown setting (did you mean 'telemetry'?); the sections are: telemetry, ")


def test_empty_config_file_keeps_defaults(tmp_path: Path) -> None:
    """An empty file is valid and changes nothing."""
    path = tmp_path / "empty.toml"
    path.write_text("", encoding="utf-8")
    assert load_settings(path, environ={}) == load_settings(environ={})


# --- environment parsing --------------------------------------------------------------------------------


def test_environment_values_are_parsed_by_setting() -> None:
    """Env values are TOML literals, with raw text for durations, sizes and text settings."""
    settings = load_settings(
        environ={
            "RXSTREAMER_TELEMETRY__BATCH_SIZE": "50",
            "RXSTREAMER_TELEMETRY__LOOP": "true",
            "RXSTREAMER_TELEMETRY__STREAM_INTERVAL": "500ms",
            "RXSTREAMER_TELEMETRY__TIMESTAMPS": "processing",
            "RXSTREAMER_MESSAGE_QUEUE__PUBLISH_TIMEOUT": '"2s"',
            "RXSTREAMER_MESSAGE_QUEUE__ADDRESS": "mq.internal:6000",
            "RXSTREAMER_MESSAGE_QUEUE__TOPIC": "123",
            "RXSTREAMER_MESSAGE_QUEUE__PRODUCER_ID": "",
            "RXSTREAMER_MESSAGE_QUEUE__RETRY__MULTIPLIER": "1.5",
            "RXSTREAMER_MESSAGE_QUEUE__RETRY__MAX_BACKOFF": "30",
            "RXSTREAMER_SHUTDOWN__TIMEOUT": "1m",
            "RXSTREAMER_BROKER__MAX_BYTES": "64KiB",
            "RXSTREAMER_LOGGING__LEVEL": "DEBUG",
        }
    )
    assert settings.telemetry.batch_size == 50
    assert settings.telemetry.loop is True
    assert settings.telemetry.stream_interval == 0.5
    assert settings.telemetry.timestamps == "processing"
    assert settings.message_queue.publish_timeout == 2.0
    assert settings.message_queue.address == "mq.internal:6000"
    assert settings.message_queue.topic == "123"
    assert settings.message_queue.producer_id == ""
    assert settings.message_queue.retry.multiplier == 1.5
    assert settings.message_queue.retry.max_backoff == 30.0
    assert settings.shutdown.timeout == 60.0
    assert settings.broker.max_bytes == 64 * 1024
    assert settings.logging.level == "debug"


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("false", False), ("True", True), ("FALSE", False)])
def test_environment_booleans(text: str, expected: bool) -> None:
    """true/false in the environment are booleans, whatever their case."""
    assert load_settings(environ={"RXSTREAMER_TELEMETRY__LOOP": text}).telemetry.loop is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["pkg.ops:drop_idle", "pkg.ops:scale"]', ("pkg.ops:drop_idle", "pkg.ops:scale")),
        ("pkg.ops:drop_idle, pkg.ops:scale", ("pkg.ops:drop_idle", "pkg.ops:scale")),
        ("pkg.ops:drop_idle", ("pkg.ops:drop_idle",)),
        ("[]", ()),
        ("", ()),
    ],
)
def test_environment_transforms(text: str, expected: tuple[str, ...]) -> None:
    """Transforms come from the environment as a TOML array or a comma-separated list."""
    settings = load_settings(environ={"RXSTREAMER_TELEMETRY__TRANSFORMS": text})
    assert settings.telemetry.transforms == expected


def test_environment_inline_table_merges_deeply() -> None:
    """A TOML inline table for a whole section sets its keys and keeps the others."""
    settings = load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__RETRY": "{ MAX_ATTEMPTS = 2 }"})
    assert settings.message_queue.retry.max_attempts == 2
    assert settings.message_queue.retry.initial_backoff == 0.1


def test_unrelated_environment_variables_are_ignored() -> None:
    """Variables without the prefix, or with it but naming no section, do not affect settings."""
    settings = load_settings(environ={"TELEMETRY__BATCH_SIZE": "5", "RXSTREAMER_HOME": "/opt/x", "BATCH_SIZE": "3"})
    assert settings == load_settings(environ={})


def test_environment_single_underscore_is_an_error() -> None:
    """RXSTREAMER_TELEMETRY_BATCH_SIZE is not silently ignored: the error names the right spelling."""
    error = _error(environ={"RXSTREAMER_TELEMETRY_BATCH_SIZE": "5"})
    assert error.setting == "RXSTREAMER_TELEMETRY_BATCH_SIZE"
    assert "RXSTREAMER_TELEMETRY__BATCH_SIZE" in error.allowed


def test_environment_unknown_key_names_the_variable() -> None:
    """A typo in a variable name is reported with the variable and the keys its section accepts."""
    error = _error(environ={"RXSTREAMER_TELEMETRY__BATCHSIZE": "5"})
    assert error.setting == "RXSTREAMER_TELEMETRY__BATCHSIZE"
    assert "did you mean 'batch_size'" in str(error)
    assert "metrics_path" in str(error)


def test_environment_bad_value_names_the_setting() -> None:
    """An unusable env value fails validation under the dotted setting name."""
    error = _error(environ={"RXSTREAMER_TELEMETRY__BATCH_SIZE": "lots"})
    assert str(error) == "telemetry.batch_size = 'lots': must be an integer >= 1 and <= 1000000"


# --- overrides ------------------------------------------------------------------------------------------


def test_overrides_coerce_command_line_strings() -> None:
    """Strings from argparse become ints, floats and booleans for settings of those types."""
    settings = load_settings(
        overrides={
            "telemetry.batch_size": "50",
            "telemetry.stream_interval": "250ms",
            "telemetry.loop": "true",
            "telemetry.metrics_path": "data/gpu.csv",
            "telemetry.transforms": "a.b:c,d.e:f",
            "message_queue.retry.multiplier": "1.5",
            "message_queue.retry.max_attempts": "3",
        },
        environ={},
    )
    assert settings.telemetry.batch_size == 50
    assert settings.telemetry.stream_interval == 0.25
    assert settings.telemetry.loop is True
    assert settings.telemetry.metrics_path == Path("data/gpu.csv")
    assert settings.telemetry.transforms == ("a.b:c", "d.e:f")
    assert settings.message_queue.retry.multiplier == 1.5
    assert settings.message_queue.retry.max_attempts == 3


def test_overrides_accept_typed_values_and_skip_none() -> None:
    """Typed values pass through, and None means the flag was not given."""
    settings = load_settings(
        overrides={"telemetry.batch_size": 50, "telemetry.loop": True, "message_queue.topic": None},
        environ={},
    )
    assert settings.telemetry.batch_size == 50
    assert settings.telemetry.loop is True
    assert settings.message_queue.topic == "gpu-telemetry"


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("telemetry.batch_size", "fifty", "must be an integer"),
        ("telemetry.batch_size", "5.0", "must be an integer"),
        ("telemetry.loop", "yes", "must be true or false"),
        ("message_queue.retry.multiplier", "double", "must be a number"),
    ],
)
def test_override_coercion_failures_name_the_setting(setting: str, value: str, allowed: str) -> None:
    """A flag string that is not of the setting's type fails with the setting's name."""
    error = _error(overrides={setting: value})
    assert (error.setting, error.value, error.allowed) == (setting, value, allowed)


def test_unknown_override_key() -> None:
    """An override naming no setting fails and suggests the closest one."""
    error = _error(overrides={"telemetry.batchsize": 5})
    assert error.setting == "telemetry.batchsize"
    assert "did you mean 'batch_size'" in error.allowed


def test_override_of_a_whole_table_is_refused() -> None:
    """Overrides name single settings, not tables."""
    error = _error(overrides={"message_queue.retry": {"max_attempts": 1}})
    assert error.setting == "message_queue.retry"
    assert "message_queue.retry.max_attempts" in error.allowed


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("telemetry.batch_size", 0, "must be an integer >= 1"),
        ("telemetry.batch_size", 1_000_001, "must be an integer <= 1000000"),
        ("telemetry.batch_size", 2.5, "must be an integer >= 1 and <= 1000000"),
        ("telemetry.batch_size", True, "must be an integer >= 1 and <= 1000000"),
        ("telemetry.stream_interval", "-1s", "must not be negative"),
        ("telemetry.stream_interval", "5x", "unknown unit 'x'"),
        ("telemetry.stream_interval", "soon", "expected a duration"),
        ("telemetry.loop", 1, "must be true or false"),
        ("telemetry.timestamps", "now", "must be one of: original, processing"),
        ("telemetry.transforms", ["no_colon"], 'must be a list of "package.module:function" strings'),
        ("telemetry.transforms", ["a.b:c:d"], "'a.b:c:d' is not of that form"),
        ("telemetry.transforms", ["1pkg.mod:fn"], "is not of that form"),
        ("telemetry.transforms", ["pkg..mod:fn"], "is not of that form"),
        ("telemetry.transforms", [5], "is not of that form"),
        ("telemetry.transforms", {"a": "b"}, "must be a list"),
        ("telemetry.metrics_path", "", "must be a file path"),
        ("telemetry.metrics_path", 5, "must be a file path"),
        ("message_queue.address", "localhost", "must be host:port with a port from 1 to 65535"),
        ("message_queue.address", "localhost:0", "must be host:port with a port from 1 to 65535"),
        ("message_queue.address", "localhost:65536", "must be host:port"),
        ("message_queue.address", ":50051", "must be host:port"),
        ("message_queue.address", "::1:50051", "must be host:port"),
        ("message_queue.address", "[::1]:port", "must be host:port"),
        ("message_queue.address", "[nonsense]:50051", "must be host:port"),
        ("message_queue.address", "bad host:50051", "must be host:port"),
        ("message_queue.address", "999.1.1.1:50051", "must be host:port"),
        ("message_queue.address", "-leading.dash:50051", "must be host:port"),
        ("message_queue.address", 50051, "must be host:port"),
        ("message_queue.topic", "", "must be 1 to 255 characters"),
        ("message_queue.topic", "has space", "must be 1 to 255 characters"),
        ("message_queue.topic", "a/b", "must be 1 to 255 characters"),
        ("message_queue.topic", "t" * 256, "must be 1 to 255 characters"),
        ("message_queue.publish_timeout", "0s", "must be greater than zero"),
        ("message_queue.producer_id", 7, "must be a string"),
        ("message_queue.retry.initial_backoff", "0ms", "must be greater than zero"),
        ("message_queue.retry.max_backoff", "50ms", "must be >= message_queue.retry.initial_backoff (100ms)"),
        ("message_queue.retry.multiplier", 0.5, "must be a number >= 1"),
        ("message_queue.retry.multiplier", float("nan"), "must be a number >= 1"),
        ("message_queue.retry.multiplier", True, "must be a number >= 1"),
        ("message_queue.retry.max_attempts", -1, "must be an integer >= 0"),
        ("shutdown.timeout", 0, "must be greater than zero"),
        ("logging.format", "xml", "must be one of: json, console, auto"),
        ("logging.level", "verbose", "must be one of: debug, info, warning, error"),
        ("logging.progress_interval", "0s", "must be greater than zero"),
        ("broker.listen", "127.0.0.1:65536", "must be host:port with a port from 0 to 65535"),
        ("broker.listen", "nohost", "must be host:port with a port from 0 to 65535"),
        ("broker.max_messages", 0, "must be an integer >= 1"),
        ("broker.max_bytes", 0, "must be at least 1 byte"),
        ("broker.max_bytes", "10XB", "unknown unit 'XB'"),
        ("broker.retention", "-5s", "must not be negative"),
    ],
)
def test_invalid_values_are_rejected_with_the_setting_name(setting: str, value: object, allowed: str) -> None:
    """Every validation rule fails with one ConfigError naming the dotted setting and its value."""
    error = _error(overrides={setting: value})
    assert error.setting == setting
    assert error.value is value or error.value == value
    assert allowed in error.allowed
    assert str(error).startswith(f"{setting} = ")


def test_config_error_message_format() -> None:
    """str(ConfigError) is 'setting = value: what is allowed', on one line."""
    error = _error(overrides={"telemetry.batch_size": 0})
    assert str(error) == "telemetry.batch_size = 0: must be an integer >= 1"


@pytest.mark.parametrize(
    "address", ["localhost:50051", "mq.example.com:443", "10.0.0.5:1", "[::1]:50051", "mq_broker:65535"]
)
def test_valid_addresses(address: str) -> None:
    """Hostnames, IPv4 and bracketed IPv6 with a port are accepted for the queue address."""
    settings = load_settings(overrides={"message_queue.address": address}, environ={})
    assert settings.message_queue.address == address


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:50051", "[::]:0", "localhost:50051"])
def test_broker_listen_accepts_port_zero(listen: str) -> None:
    """The broker may listen on port 0 (any free port), which the queue address may not use."""
    assert load_settings(overrides={"broker.listen": listen}, environ={}).broker.listen == listen


def test_valid_transforms(tmp_path: Path) -> None:
    """Transform references may name a module function or a dotted attribute inside a module."""
    path = tmp_path / "transforms.toml"
    path.write_text('[telemetry]\ntransforms = ["pkg.ops:drop_idle", "ops:Scale.apply"]\n', encoding="utf-8")
    transforms = load_settings(path, environ={}).telemetry.transforms
    assert transforms == ("pkg.ops:drop_idle", "ops:Scale.apply")


def test_transforms_as_a_string_in_a_file_is_an_error(tmp_path: Path) -> None:
    """In a file, transforms must be a real list; a bare string is a mistake, not a one-item list."""
    path = tmp_path / "transforms.toml"
    path.write_text('[telemetry]\ntransforms = "pkg.ops:drop_idle"\n', encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == "telemetry.transforms"


def test_yaml_yes_is_not_a_boolean(tmp_path: Path) -> None:
    """YAML is read as YAML 1.2, where `yes` is a string, so loop: yes fails instead of guessing."""
    path = tmp_path / "loop.yaml"
    path.write_text("telemetry:\n  loop: yes\n", encoding="utf-8")
    error = _error(config_file=path)
    assert str(error) == "telemetry.loop = 'yes': must be true or false"


def test_metrics_path_stays_relative_and_is_not_checked() -> None:
    """A relative metrics_path is kept relative (to the working directory) and need not exist yet."""
    settings = load_settings(overrides={"telemetry.metrics_path": "no/such/dir/metrics.csv"}, environ={})
    assert settings.telemetry.metrics_path == Path("no/such/dir/metrics.csv")
    assert not settings.telemetry.metrics_path.is_absolute()


def test_metrics_path_expands_home() -> None:
    """~ in a configured path means the home directory, as it would in a shell."""
    settings = load_settings(overrides={"telemetry.metrics_path": "~/metrics.csv"}, environ={})
    assert settings.telemetry.metrics_path == Path.home() / "metrics.csv"


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".toml", "[telemetry]\nbatchsize = 5\n"),
        (".yaml", "message_queue:\n  retry:\n    max_attempt: 5\n"),
        (".json", '{"broker": {"max_message": 5}}'),
    ],
)
def test_unknown_key_in_a_known_section(tmp_path: Path, suffix: str, text: str) -> None:
    """A typo inside a known section fails, listing the keys that section accepts."""
    path = tmp_path / f"typo{suffix}"
    path.write_text(text, encoding="utf-8")
    error = _error(config_file=path)
    section, _, key = error.setting.rpartition(".")
    assert section in ("telemetry", "message_queue.retry", "broker")
    assert key in ("batchsize", "max_attempt", "max_message")
    assert f"{section} accepts: " in error.allowed
    assert "did you mean" in error.allowed


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    """A section set to a scalar names the section and its keys."""
    path = tmp_path / "scalar.json"
    path.write_text('{"telemetry": 5}', encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == "telemetry"
    assert "must be a table" in error.allowed


# --- the --config file itself ---------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    """A --config path that does not exist fails as --config, naming the path."""
    path = tmp_path / "absent.toml"
    error = _error(config_file=path)
    assert error.setting == "--config"
    assert error.value == path
    assert "file not found" in error.allowed


def test_config_file_that_is_a_directory(tmp_path: Path) -> None:
    """A directory given as --config is refused before any parser sees it."""
    directory = tmp_path / "conf.toml"
    directory.mkdir()
    error = _error(config_file=directory)
    assert error.setting == "--config"
    assert "is a directory" in error.allowed


@pytest.mark.parametrize("name", ["settings.ini", "settings.py", "settings", "settings.TOML"])
def test_unsupported_config_extension(tmp_path: Path, name: str) -> None:
    """Only .toml, .yaml, .yml and .json are accepted, so the format is never guessed."""
    path = tmp_path / name
    path.write_text("", encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == "--config"
    assert "use .toml, .yaml, .yml or .json" in error.allowed


@pytest.mark.parametrize(
    ("suffix", "text", "kind"),
    [
        (".toml", "[telemetry\nbatch_size = ", "TOML"),
        (".yaml", "telemetry:\n  - a\n b: [", "YAML"),
        (".json", '{"telemetry": ', "JSON"),
    ],
)
def test_config_syntax_error(tmp_path: Path, suffix: str, text: str, kind: str) -> None:
    """A syntax error is one ConfigError line naming --config, the file and the parser's complaint."""
    path = tmp_path / f"broken{suffix}"
    path.write_text(text, encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == "--config"
    assert error.value == path
    assert error.allowed.startswith(f"cannot be read as {kind}: ")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("suffix", "text"), [(".yaml", "- a\n- b\n"), (".json", "[1, 2]")])
def test_config_top_level_must_be_a_table(tmp_path: Path, suffix: str, text: str) -> None:
    """A file whose top level is a list is refused with a message saying what it should be."""
    path = tmp_path / f"list{suffix}"
    path.write_text(text, encoding="utf-8")
    error = _error(config_file=path)
    assert error.setting == "--config"
    assert "top level must be a table" in error.allowed


def test_config_path_with_glob_characters(tmp_path: Path) -> None:
    """A path containing [ ] or * is read literally, not expanded as a pattern."""
    directory = tmp_path / "conf[1]*"
    directory.mkdir()
    path = directory / "rx.toml"
    path.write_text("[telemetry]\nbatch_size = 4\n", encoding="utf-8")
    assert load_settings(path, environ={}).telemetry.batch_size == 4


def test_local_sibling_of_the_config_file_is_merged_over_it(tmp_path: Path) -> None:
    """dynaconf's convention: NAME.local.EXT beside --config NAME.EXT overrides it, key by key."""
    path = tmp_path / "rx.toml"
    path.write_text("[telemetry]\nbatch_size = 3\nloop = true\n", encoding="utf-8")
    (tmp_path / "rx.local.toml").write_text("[telemetry]\nbatch_size = 4\n", encoding="utf-8")
    settings = load_settings(path, environ={})
    assert (settings.telemetry.batch_size, settings.telemetry.loop) == (4, True)


def test_dynaconf_variables_that_hide_the_defaults_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """If dynaconf's own *_FOR_DYNACONF variables stop the defaults loading, the error names them."""
    monkeypatch.setenv("ENVIRONMENTS_FOR_DYNACONF", "true")
    error = _error()
    assert "ENVIRONMENTS_FOR_DYNACONF" in error.allowed


# --- require_readable_file ------------------------------------------------------------------------------


def test_require_readable_file_accepts_a_file(tmp_path: Path) -> None:
    """An existing regular file passes."""
    path = tmp_path / "metrics.csv"
    path.write_text("x\n", encoding="utf-8")
    require_readable_file("telemetry.metrics_path", path)


def test_require_readable_file_missing(tmp_path: Path) -> None:
    """A missing file fails under the given setting name."""
    path = tmp_path / "missing.csv"
    with pytest.raises(ConfigError) as caught:
        require_readable_file("telemetry.metrics_path", path)
    assert str(caught.value) == f"telemetry.metrics_path = {str(path)!r}: file not found"


def test_require_readable_file_relative_path_mentions_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a relative path the message says which directory it was resolved against."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        require_readable_file("telemetry.metrics_path", Path("missing.csv"))
    assert f"relative to the current directory {tmp_path}" in caught.value.allowed


def test_require_readable_file_directory(tmp_path: Path) -> None:
    """A directory is not a metrics file."""
    with pytest.raises(ConfigError, match="is a directory"):
        require_readable_file("telemetry.metrics_path", tmp_path)


def test_require_readable_file_refuses_a_pipe_and_says_what_to_do(tmp_path: Path) -> None:
    """A named pipe (or /dev/stdin) cannot be read twice or resumed at an offset: save the stream to a file."""
    path = tmp_path / "metrics.csv"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as caught:
        require_readable_file("telemetry.metrics_path", path)
    assert caught.value.allowed == "must be a regular file, not a pipe or a device: save the stream to a file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_require_readable_file_unreadable(tmp_path: Path) -> None:
    """A file without read permission fails before streaming starts."""
    path = tmp_path / "secret.csv"
    path.write_text("x\n", encoding="utf-8")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="cannot be read"):
            require_readable_file("telemetry.metrics_path", path)
    finally:
        path.chmod(0o600)


def test_settings_type_is_exported() -> None:
    """load_settings returns the public Settings dataclass that the rest of the code is typed against."""
    assert isinstance(load_settings(environ={}), Settings)


def test_broker_caps_have_their_documented_defaults() -> None:
    """max_subscribers 64, max_topics 1000 and max_total_bytes 1 GiB unless set otherwise."""
    broker = load_settings(environ={}).broker
    assert (broker.max_subscribers, broker.max_topics, broker.max_total_bytes) == (64, 1000, 1 << 30)


def test_broker_caps_come_from_flags_and_environment() -> None:
    """The caps take flag strings (sizes with units) and RXSTREAMER_BROKER__ variables like any setting."""
    flags = {"broker.max_subscribers": "4", "broker.max_topics": "2000", "broker.max_total_bytes": "512MiB"}
    broker = load_settings(overrides=flags, environ={}).broker
    assert (broker.max_subscribers, broker.max_topics, broker.max_total_bytes) == (4, 2000, 512 << 20)
    environ = {"RXSTREAMER_BROKER__MAX_SUBSCRIBERS": "8", "RXSTREAMER_BROKER__MAX_TOTAL_BYTES": "2GiB"}
    broker = load_settings(environ=environ).broker
    assert (broker.max_subscribers, broker.max_total_bytes) == (8, 2 << 30)


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("broker.max_subscribers", 0, "must be an integer >= 1"),
        ("broker.max_topics", 0, "must be an integer >= 1"),
        ("broker.max_total_bytes", 0, "must be at least 1 byte"),
        ("broker.max_total_bytes", "1XB", "unknown unit 'XB'"),
    ],
)
def test_invalid_broker_caps_are_rejected(setting: str, value: object, allowed: str) -> None:
    """A cap that cannot work stops the start, naming the setting."""
    error = _error(overrides={setting: value})
    assert (error.setting, allowed in error.allowed) == (setting, True)


# --- message_queue.address schemes and telemetry.format ----------------------------------------------------


@pytest.mark.parametrize("address", ["grpc://localhost:50051", "grpc://[::1]:50051", "grpc://10.0.0.5:1"])
def test_address_accepts_the_grpc_scheme_and_keeps_it(address: str) -> None:
    """grpc://host:port is accepted and kept as written, for the sink to choose by."""
    settings = load_settings(overrides={"message_queue.address": address}, environ={})
    assert settings.message_queue.address == address


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("kafka://localhost:9092", "unknown scheme 'kafka'; the schemes are: grpc"),
        ("GRPC://localhost:50051", "unknown scheme 'GRPC'; the schemes are: grpc"),
        ("://localhost:50051", "unknown scheme ''; the schemes are: grpc"),
        (
            "grpc://localhost",
            'must be host:port with a port from 1 to 65535, e.g. "localhost:50051", "10.0.0.5:50051" or '
            '"[::1]:50051", or grpc://host:port',
        ),
        ("grpc://localhost:0", "must be host:port with a port from 1 to 65535"),
    ],
)
def test_address_with_an_unknown_scheme_or_bad_host_port(address: str, allowed: str) -> None:
    """Unknown schemes name the known ones; after grpc:// the host:port rules still apply."""
    error = _error(overrides={"message_queue.address": address})
    assert (error.setting, error.value) == ("message_queue.address", address)
    assert error.allowed.startswith(allowed)


def test_broker_listen_takes_no_scheme() -> None:
    """The broker binds a host:port; a scheme there is refused like any malformed address."""
    error = _error(overrides={"broker.listen": "grpc://127.0.0.1:0"})
    assert str(error) == (
        "broker.listen = 'grpc://127.0.0.1:0': must be host:port with a port from 0 to 65535, "
        'e.g. "localhost:50051", "10.0.0.5:50051" or "[::1]:50051"'
    )


def test_address_scheme_from_the_environment() -> None:
    """RXSTREAMER_MESSAGE_QUEUE__ADDRESS may carry the scheme too."""
    settings = load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__ADDRESS": "grpc://mq.internal:6000"})
    assert settings.message_queue.address == "grpc://mq.internal:6000"


def test_telemetry_format_defaults_to_auto() -> None:
    """Without a setting the format is chosen by the file's extension."""
    assert load_settings(environ={}).telemetry.format == "auto"


@pytest.mark.parametrize(
    ("overrides", "environ"),
    [
        ({"telemetry.format": "csv"}, {}),
        ({"telemetry.format": " CSV "}, {}),
        ({}, {"RXSTREAMER_TELEMETRY__FORMAT": "csv"}),
    ],
)
def test_telemetry_format_csv(overrides: dict[str, object], environ: dict[str, str]) -> None:
    """csv is accepted from a flag or the environment, in any case, and stored lower-case."""
    assert load_settings(overrides=overrides, environ=environ).telemetry.format == "csv"


def test_telemetry_format_from_a_file(tmp_path: Path) -> None:
    """telemetry.format is an ordinary key of the [telemetry] table."""
    path = tmp_path / "format.yaml"
    path.write_text("telemetry:\n  format: csv\n", encoding="utf-8")
    assert load_settings(path, environ={}).telemetry.format == "csv"


def test_unknown_telemetry_format_names_the_formats() -> None:
    """An unknown format fails with the formats there are."""
    error = _error(overrides={"telemetry.format": "parquet"})
    assert str(error) == "telemetry.format = 'parquet': must be one of: auto, csv, jsonl, prometheus"


def test_summary_lists_the_new_settings_as_given() -> None:
    """The started line reports the format and a scheme-carrying address as they were set."""
    overrides = {"telemetry.format": "csv", "message_queue.address": "grpc://q:1"}
    summary = settings_summary(load_settings(overrides=overrides, environ={}))
    assert (summary["telemetry.format"], summary["message_queue.address"]) == ("csv", "grpc://q:1")


# --- RXSTREAMER_CONFIG ----------------------------------------------------------------------------------


def test_rxstreamer_config_is_the_config_file(tmp_path: Path) -> None:
    """RXSTREAMER_CONFIG=FILE layers FILE like --config FILE; other variables still override it."""
    path = tmp_path / "over.toml"
    path.write_text("[telemetry]\nbatch_size = 12\nloop = true\n", encoding="utf-8")
    environ = {"RXSTREAMER_CONFIG": str(path), "RXSTREAMER_TELEMETRY__BATCH_SIZE": "13"}
    telemetry = load_settings(environ=environ).telemetry
    assert (telemetry.batch_size, telemetry.loop) == (13, True)


def test_a_given_config_file_wins_over_rxstreamer_config(tmp_path: Path) -> None:
    """With both, the file given (the --config flag) is read and the variable's is not, even a missing one."""
    path = tmp_path / "given.toml"
    path.write_text("[telemetry]\nbatch_size = 21\n", encoding="utf-8")
    environ = {"RXSTREAMER_CONFIG": str(tmp_path / "missing.toml")}
    assert load_settings(path, environ=environ).telemetry.batch_size == 21


def test_an_empty_rxstreamer_config_means_none() -> None:
    """`RXSTREAMER_CONFIG=` (how shells unset a variable for one command) reads the defaults only."""
    assert load_settings(environ={"RXSTREAMER_CONFIG": " "}) == load_settings(environ={})


def test_a_missing_rxstreamer_config_file_is_named_by_the_variable(tmp_path: Path) -> None:
    """The error names RXSTREAMER_CONFIG, not --config, so the user looks in the environment."""
    missing = tmp_path / "missing.yaml"
    error = _error(environ={"RXSTREAMER_CONFIG": str(missing)})
    assert str(error) == f"RXSTREAMER_CONFIG = '{missing}': file not found"
