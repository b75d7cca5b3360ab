"""Settings: layered sources in, one typed, validated, frozen object out.

Layers, lowest to highest: the packaged ``settings.toml``, an optional ``--config`` file (TOML, YAML or
JSON), ``RXSTREAMER_*`` environment variables, then command-line overrides. Everything is checked here,
before anything starts, so that a bad value fails with one line naming the setting instead of an error deep
inside a running pipeline.

This is the only module that imports dynaconf, and dynaconf only parses files: the environment and the
overrides are applied here from the mappings the caller passes, which keeps tests hermetic (dynaconf's own
environment loader reads ``os.environ`` and cannot be pointed elsewhere) and thread-safe.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import ipaddress
import math
import os
import re
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from rxstreamer.durations import DURATION_HELP, format_duration, parse_duration, parse_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ENV_NESTING",
    "ENV_PREFIX",
    "BrokerSettings",
    "ConfigError",
    "LoggingSettings",
    "MessageQueueSettings",
    "RetrySettings",
    "Settings",
    "ShutdownSettings",
    "TelemetrySettings",
    "load_settings",
    "require_readable_file",
    "settings_summary",
]

ENV_PREFIX: Final = "RXSTREAMER_"
ENV_NESTING: Final = "__"
MAX_BATCH_SIZE: Final = 1_000_000
MAX_READ_AHEAD: Final = 16

TimestampMode = Literal["original", "processing"]
LogFormat = Literal["json", "console", "auto"]
SentinelMode = Literal["reject", "flag"]
FsyncPolicy = Literal["always", "interval", "never"]

TIMESTAMP_MODES: Final = ("original", "processing")
LOG_FORMATS: Final = ("json", "console", "auto")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
SENTINEL_MODES: Final = ("reject", "flag")
FSYNC_POLICIES: Final = ("always", "interval", "never")


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: float
    max_backoff: float
    multiplier: float
    max_attempts: int  # 0 = unlimited


@dataclass(frozen=True)
class TelemetrySettings:
    metrics_path: Path
    stream_interval: float
    batch_size: int
    loop: bool
    timestamps: TimestampMode
    transforms: tuple[str, ...]
    instance: str  # names this streamer in the default producer id; empty means the host name
    checkpoint_path: Path | None  # None: no checkpoints
    start_over: bool  # ignore (and replace) a checkpoint that does not match the input
    rejected_path: Path | None  # None: rejected rows are only logged
    max_field_size: int  # bytes; a longer field (or a line without a newline) is rejected
    dcgm_sentinels: SentinelMode
    read_ahead: int  # batches read while the previous one is being published


@dataclass(frozen=True)
class MessageQueueSettings:
    address: str
    topic: str
    publish_timeout: float
    producer_id: str
    max_retry_time: float  # seconds a batch may spend retrying before the stream stops; 0 = unlimited
    publish_in_background: bool  # call Publish on a thread of its own, overlapping with reading ahead
    retry: RetrySettings


@dataclass(frozen=True)
class ShutdownSettings:
    timeout: float


@dataclass(frozen=True)
class LoggingSettings:
    format: LogFormat
    level: str
    progress_interval: float
    rejected_rows_in_full: int  # rejected rows logged one by one before switching to periodic counts


@dataclass(frozen=True)
class BrokerSettings:
    listen: str
    max_messages: int
    max_bytes: int
    retention: float
    max_subscribers: int  # open streams; each holds one of the broker's threads
    max_topics: int
    max_total_bytes: int  # payload bytes retained by all topics together
    data_dir: Path | None  # None: topics live in memory only
    fsync: FsyncPolicy
    fsync_interval: float


@dataclass(frozen=True)
class Settings:
    telemetry: TelemetrySettings
    message_queue: MessageQueueSettings
    shutdown: ShutdownSettings
    logging: LoggingSettings
    broker: BrokerSettings


class ConfigError(Exception):
    """A setting that cannot be used, worded for the operator who has to fix it.

    ``setting`` is the dotted name as written in settings.toml (or ``--config`` / an environment variable
    name when the problem is the source itself), so that the message points at what to edit.
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        super().__init__(setting, value, allowed)
        self.setting = setting
        self.value = value
        self.allowed = allowed

    def __str__(self) -> str:
        return f"{self.setting} = {_show(self.value)}: {self.allowed}"


# --- schema ---------------------------------------------------------------------------------------------

Kind = Literal["str", "path", "optional_path", "int", "float", "bool", "duration", "size", "list", "table"]

# Every known table and the kind of each of its keys. The kind drives three things: which keys are typos,
# how an environment string is read, and how a command-line string is coerced. Values are validated below.
_SCHEMA: Final[dict[str, dict[str, Kind]]] = {
    "telemetry": {
        "metrics_path": "path",
        "stream_interval": "duration",
        "batch_size": "int",
        "loop": "bool",
        "timestamps": "str",
        "transforms": "list",
        "instance": "str",
        "checkpoint_path": "optional_path",
        "start_over": "bool",
        "rejected_path": "optional_path",
        "max_field_size": "size",
        "dcgm_sentinels": "str",
        "read_ahead": "int",
    },
    "message_queue": {
        "address": "str",
        "topic": "str",
        "publish_timeout": "duration",
        "producer_id": "str",
        "max_retry_time": "duration",
        "publish_in_background": "bool",
        "retry": "table",
    },
    "message_queue.retry": {
        "initial_backoff": "duration",
        "max_backoff": "duration",
        "multiplier": "float",
        "max_attempts": "int",
    },
    "shutdown": {"timeout": "duration"},
    "logging": {"format": "str", "level": "str", "progress_interval": "duration", "rejected_rows_in_full": "int"},
    "broker": {
        "listen": "str",
        "max_messages": "int",
        "max_bytes": "size",
        "retention": "duration",
        "max_subscribers": "int",
        "max_topics": "int",
        "max_total_bytes": "size",
        "data_dir": "optional_path",
        "fsync": "str",
        "fsync_interval": "duration",
    },
}
_SECTIONS: Final = tuple(name for name in _SCHEMA if "." not in name)

_CONFIG_FORMATS: Final = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}

_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_TRANSFORM_RE = re.compile(r"(?P<module>[^:\s]+):(?P<attr>[^:\s]+)")
_TRANSFORM_HELP = 'must be a list of "package.module:function" strings, e.g. ["mypkg.ops:drop_idle"]'

# dynaconf mutates module-level state (it reloads its default_settings module) on every instantiation.
_DYNACONF_LOCK = threading.Lock()
_MISSING: Final = object()


# --- public API -----------------------------------------------------------------------------------------


def load_settings(
    config_file: Path | str | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge every layer and validate the result, raising ConfigError at the first unusable value.

    ``overrides`` maps dotted names ("telemetry.batch_size") to values; a None value means "not given", so
    the CLI can pass every flag straight from argparse. ``environ`` defaults to ``os.environ``.

    Like any dynaconf settings file, ``--config NAME.EXT`` is followed by ``NAME.local.EXT`` from the same
    directory when that file exists (dynaconf's convention for uncommitted local overrides).
    """
    data = _read_file(_packaged_defaults(), "packaged defaults")
    if config_file is not None:
        path = Path(config_file).expanduser()
        if path.suffix not in _CONFIG_FORMATS:
            raise ConfigError(
                "--config",
                path,
                f"unsupported file type {path.suffix or '(no extension)'!r}; use .toml, .yaml, .yml or .json",
            )
        require_readable_file("--config", path)
        _merge(data, _read_file(path, "--config"))
    _merge(data, _environment_layer(os.environ if environ is None else environ))
    _merge(data, _overrides_layer(overrides or {}))
    return _build(data)


def require_readable_file(setting: str, path: Path) -> None:
    """Fail early, with the setting's name, when a file the command needs cannot be opened."""
    where = f" (relative to the current directory {Path.cwd()})" if not path.is_absolute() else ""
    if not path.exists():
        raise ConfigError(setting, path, f"file not found{where}")
    if path.is_dir():
        raise ConfigError(setting, path, f"is a directory, not a file{where}")
    if not path.is_file():
        raise ConfigError(setting, path, "must be a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(setting, path, f"cannot be read: {exc.strerror or exc}") from exc


def settings_summary(settings: Settings) -> dict[str, object]:
    """The effective configuration as flat dotted keys, written the way settings.toml spells values."""
    summary: dict[str, object] = {}
    for section in _SECTIONS:
        summary.update(_flatten(section, getattr(settings, section)))
    return summary


# --- layers ---------------------------------------------------------------------------------------------


def _packaged_defaults() -> Path:
    return Path(str(resources.files("rxstreamer").joinpath("settings.toml")))


def _read_file(path: Path, setting: str) -> dict[str, Any]:
    """Parse one settings file with dynaconf into plain, lower-cased nested dicts."""
    from dynaconf import Dynaconf  # imported here: it costs ~0.1 s of start-up

    kind = _CONFIG_FORMATS.get(path.suffix, "TOML")
    with _DYNACONF_LOCK:
        try:
            loaded = Dynaconf(
                # An absolute, glob-escaped path: dynaconf would otherwise search parent directories for a
                # relative name and expand "[...]" in a path as a pattern.
                settings_files=[glob.escape(str(path.absolute()))],
                core_loaders=["TOML", "YAML", "JSON"],
                environments=False,
                load_dotenv=False,
                loaders=[],  # no environment loader: the environment layer is applied by this module
                merge_enabled=True,
            )
            raw = loaded.as_dict()
        except (AttributeError, TypeError) as exc:
            raise ConfigError(
                setting, path, f"cannot be read as {kind}: the top level must be a table of sections"
            ) from exc
        except Exception as exc:  # every parser has its own exception types; all mean "cannot be read"
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(setting, path, f"cannot be read as {kind}: {message}") from exc
    plain = _plain(raw)
    return plain if isinstance(plain, dict) else {}


def _environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """RXSTREAMER_SECTION__KEY=value variables as a nested dict.

    Values are read as TOML literals (so 50 is an int, true a bool, ["a:b"] a list), falling back to the
    raw text, which lets ``RXSTREAMER_TELEMETRY__STREAM_INTERVAL=500ms`` work unquoted. Text settings keep
    the raw text, so a topic named 123 stays a string.
    """
    layer: dict[str, Any] = {}
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        if parts[0] not in _SECTIONS:
            _reject_single_underscore(name, text, parts)
            continue  # RXSTREAMER_* variables that are not settings (e.g. for wrapper scripts) are ignored
        kind = _kind_of(parts)
        if kind is None:
            raise _unknown_setting(name, text, parts)
        _assign(layer, parts, _env_value(text, kind))
    return layer


def _reject_single_underscore(name: str, text: str, parts: list[str]) -> None:
    """Catch RXSTREAMER_TELEMETRY_BATCH_SIZE, which would otherwise be silently ignored."""
    flat = "_".join(parts)
    if not any(flat.startswith(section + "_") for section in _SECTIONS):
        return
    for table, keys in _SCHEMA.items():
        for key in keys:
            dotted = f"{table}.{key}"
            if dotted.replace(".", "_") == flat:
                suggestion = ENV_PREFIX + dotted.replace(".", ENV_NESTING).upper()
                raise ConfigError(name, text, f"not a setting; nested names use '__': {suggestion}")
    raise ConfigError(name, text, f"not a setting; nested names use '__', e.g. {ENV_PREFIX}TELEMETRY__BATCH_SIZE")


def _env_value(text: str, kind: Kind | None) -> object:
    literal = _toml_literal(text)
    if kind in ("str", "path"):
        return literal if isinstance(literal, str) else text
    if kind == "bool" and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    if kind == "list" and literal is _MISSING:
        return _split_list(text)
    return text if literal is _MISSING else _plain(literal)


def _toml_literal(text: str) -> object:
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return _MISSING
    # A value with a newline could smuggle in extra keys; such text is not a single literal.
    return parsed["value"] if parsed.keys() == {"value"} else _MISSING


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _overrides_layer(overrides: Mapping[str, object]) -> dict[str, Any]:
    """Command-line values by dotted name; strings are coerced for numeric and boolean settings."""
    layer: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        parts = dotted.split(".")
        kind = _kind_of(parts)
        if kind == "table":
            keys = ", ".join(f"{dotted}.{key}" for key in _SCHEMA[dotted])
            raise ConfigError(dotted, value, f"is a table; override one of its settings: {keys}")
        if kind is None:
            raise _unknown_setting(dotted, value, parts)
        _assign(layer, parts, _coerce_override(dotted, value, kind))
    return layer


def _coerce_override(dotted: str, value: object, kind: Kind) -> object:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(dotted, value, "must be an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ConfigError(dotted, value, "must be a number") from None
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ConfigError(dotted, value, "must be true or false")
        return text.lower() == "true"
    if kind == "list":
        return _split_list(text)
    return value


def _kind_of(parts: list[str]) -> Kind | None:
    if len(parts) == 1:
        return "table" if parts[0] in _SCHEMA else None
    return _SCHEMA.get(".".join(parts[:-1]), {}).get(parts[-1])


def _assign(tree: dict[str, Any], parts: list[str], value: object) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Deep merge: a layer that sets one key of a table keeps every other key of that table."""
    for key, value in layer.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            _merge(current, value)
        else:
            base[key] = value


def _plain(value: Any) -> object:
    """dynaconf's boxes as plain dicts and lists, keys lower-cased (dynaconf matches keys in any case)."""
    if isinstance(value, Mapping):
        return {str(key).lower(): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# --- validation -----------------------------------------------------------------------------------------


def _build(data: Mapping[str, Any]) -> Settings:
    tables = {name: _table(data, name) for name in _SCHEMA}
    for name, table in tables.items():
        _reject_unknown_keys(name, table)

    telemetry = tables["telemetry"]
    message_queue = tables["message_queue"]
    retry = tables["message_queue.retry"]
    logging = tables["logging"]
    broker = tables["broker"]

    initial_backoff = _duration("message_queue.retry.initial_backoff", retry, positive=True)
    max_backoff = _duration("message_queue.retry.max_backoff", retry, positive=True)
    if max_backoff < initial_backoff:
        raise ConfigError(
            "message_queue.retry.max_backoff",
            retry["max_backoff"],
            f"must be >= message_queue.retry.initial_backoff ({format_duration(initial_backoff)})",
        )

    return Settings(
        telemetry=TelemetrySettings(
            metrics_path=_path("telemetry.metrics_path", telemetry),
            stream_interval=_duration("telemetry.stream_interval", telemetry, positive=False),
            batch_size=_integer("telemetry.batch_size", telemetry, minimum=1, maximum=MAX_BATCH_SIZE),
            loop=_boolean("telemetry.loop", telemetry),
            timestamps=cast(TimestampMode, _choice("telemetry.timestamps", telemetry, TIMESTAMP_MODES)),
            transforms=_transforms("telemetry.transforms", telemetry),
            instance=_string("telemetry.instance", telemetry),
            checkpoint_path=_optional_path("telemetry.checkpoint_path", telemetry),
            start_over=_boolean("telemetry.start_over", telemetry),
            rejected_path=_optional_path("telemetry.rejected_path", telemetry),
            max_field_size=_size("telemetry.max_field_size", telemetry),
            dcgm_sentinels=cast(SentinelMode, _choice("telemetry.dcgm_sentinels", telemetry, SENTINEL_MODES)),
            read_ahead=_integer("telemetry.read_ahead", telemetry, minimum=0, maximum=MAX_READ_AHEAD),
        ),
        message_queue=MessageQueueSettings(
            address=_host_port("message_queue.address", message_queue, min_port=1),
            topic=_topic("message_queue.topic", message_queue),
            publish_timeout=_duration("message_queue.publish_timeout", message_queue, positive=True),
            producer_id=_string("message_queue.producer_id", message_queue),
            max_retry_time=_duration("message_queue.max_retry_time", message_queue, positive=False),
            publish_in_background=_boolean("message_queue.publish_in_background", message_queue),
            retry=RetrySettings(
                initial_backoff=initial_backoff,
                max_backoff=max_backoff,
                multiplier=_multiplier("message_queue.retry.multiplier", retry),
                max_attempts=_integer("message_queue.retry.max_attempts", retry, minimum=0),
            ),
        ),
        shutdown=ShutdownSettings(timeout=_duration("shutdown.timeout", tables["shutdown"], positive=True)),
        logging=LoggingSettings(
            format=cast(LogFormat, _choice("logging.format", logging, LOG_FORMATS)),
            level=_choice("logging.level", logging, LOG_LEVELS),
            progress_interval=_duration("logging.progress_interval", logging, positive=True),
            rejected_rows_in_full=_integer("logging.rejected_rows_in_full", logging, minimum=0),
        ),
        broker=BrokerSettings(
            listen=_host_port("broker.listen", broker, min_port=0),
            max_messages=_integer("broker.max_messages", broker, minimum=1),
            max_bytes=_size("broker.max_bytes", broker),
            retention=_duration("broker.retention", broker, positive=False),
            max_subscribers=_integer("broker.max_subscribers", broker, minimum=1),
            max_topics=_integer("broker.max_topics", broker, minimum=1),
            max_total_bytes=_size("broker.max_total_bytes", broker),
            data_dir=_optional_path("broker.data_dir", broker),
            fsync=cast(FsyncPolicy, _choice("broker.fsync", broker, FSYNC_POLICIES)),
            fsync_interval=_duration("broker.fsync_interval", broker, positive=True),
        ),
    )


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    node: object = data
    for part in name.split("."):
        node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
    if node is _MISSING:
        raise _missing(name)
    if not isinstance(node, Mapping):
        keys = ", ".join(_SCHEMA[name])
        raise ConfigError(name, node, f"must be a table with the keys {keys}")
    return node


def _reject_unknown_keys(name: str, table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if key not in _SCHEMA[name]:
            raise _unknown_setting(f"{name}.{key}", value, [*name.split("."), key])


def _unknown_setting(setting: str, value: object, parts: list[str]) -> ConfigError:
    """Name what the table accepts, and the likely intended key: most unknown keys are typos."""
    for depth in range(len(parts) - 1, 0, -1):
        table = ".".join(parts[:depth])
        if table in _SCHEMA:
            known = list(_SCHEMA[table])
            if parts[depth] in known:
                return ConfigError(setting, value, f"unknown setting; {table}.{parts[depth]} has no sub-settings")
            hint = difflib.get_close_matches(parts[depth], known, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            return ConfigError(setting, value, f"unknown setting{did_you_mean}; {table} accepts: {', '.join(known)}")
    return ConfigError(setting, value, f"unknown setting; the sections are: {', '.join(_SECTIONS)}")


def _missing(setting: str) -> ConfigError:
    """A key absent after merging means the packaged defaults were not read as intended."""
    meddling = sorted(name for name in os.environ if name.endswith("_FOR_DYNACONF"))
    hint = (
        f"; dynaconf's own environment variables change how files are read, unset {', '.join(meddling)}"
        if meddling
        else "; the packaged settings.toml should define it"
    )
    return ConfigError(setting, None, f"missing{hint}")


def _get(setting: str, table: Mapping[str, Any]) -> object:
    value = table.get(setting.rsplit(".", 1)[1], _MISSING)
    if value is _MISSING:
        raise _missing(setting)
    return value


def _string(setting: str, table: Mapping[str, Any]) -> str:
    value = _get(setting, table)
    if not isinstance(value, str):
        raise ConfigError(setting, value, "must be a string")
    return value


def _path(setting: str, table: Mapping[str, Any]) -> Path:
    value = _get(setting, table)
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(setting, value, "must be a file path")
    return Path(value).expanduser()


def _optional_path(setting: str, table: Mapping[str, Any]) -> Path | None:
    """An empty string switches the feature off; anything else must be a path."""
    value = _get(setting, table)
    if isinstance(value, str) and not value.strip():
        return None
    return _path(setting, table)


def _integer(setting: str, table: Mapping[str, Any], *, minimum: int, maximum: int | None = None) -> int:
    value = _get(setting, table)
    if not isinstance(value, int) or isinstance(value, bool):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(setting, value, f"must be an integer >= {minimum}{upper}")
    if value < minimum:
        raise ConfigError(setting, value, f"must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(setting, value, f"must be an integer <= {maximum}")
    return value


def _boolean(setting: str, table: Mapping[str, Any]) -> bool:
    value = _get(setting, table)
    if not isinstance(value, bool):
        raise ConfigError(setting, value, "must be true or false")
    return value


def _multiplier(setting: str, table: Mapping[str, Any]) -> float:
    value = _get(setting, table)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 1:
        raise ConfigError(setting, value, "must be a number >= 1")
    return float(value)


def _duration(setting: str, table: Mapping[str, Any], *, positive: bool) -> float:
    value = _get(setting, table)
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ConfigError(setting, value, str(exc)) from None
    if positive and seconds == 0:
        raise ConfigError(setting, value, f"must be greater than zero; expected {DURATION_HELP}")
    return seconds


def _size(setting: str, table: Mapping[str, Any]) -> int:
    value = _get(setting, table)
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(setting, value, str(exc)) from None
    if size < 1:
        raise ConfigError(setting, value, "must be at least 1 byte")
    return size


def _choice(setting: str, table: Mapping[str, Any], choices: tuple[str, ...]) -> str:
    value = _get(setting, table)
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ConfigError(setting, value, f"must be one of: {', '.join(choices)}")
    return value.strip().lower()


def _topic(setting: str, table: Mapping[str, Any]) -> str:
    value = _get(setting, table)
    if not isinstance(value, str) or not _TOPIC_RE.fullmatch(value):
        raise ConfigError(setting, value, "must be 1 to 255 characters from A-Z, a-z, 0-9, '.', '_' and '-'")
    return value


def _transforms(setting: str, table: Mapping[str, Any]) -> tuple[str, ...]:
    value = _get(setting, table)
    if not isinstance(value, list | tuple):
        raise ConfigError(setting, value, _TRANSFORM_HELP)
    for item in value:
        if not isinstance(item, str) or not _is_transform_ref(item):
            raise ConfigError(setting, value, f"{_TRANSFORM_HELP}; {item!r} is not of that form")
    return tuple(value)


def _is_transform_ref(text: str) -> bool:
    match = _TRANSFORM_RE.fullmatch(text)
    return match is not None and all(
        part.isidentifier() for part in (*match["module"].split("."), *match["attr"].split("."))
    )


def _host_port(setting: str, table: Mapping[str, Any], *, min_port: int) -> str:
    value = _get(setting, table)
    allowed = (
        f'must be host:port with a port from {min_port} to 65535, e.g. "localhost:50051", '
        f'"10.0.0.5:50051" or "[::1]:50051"'
    )
    if not isinstance(value, str):
        raise ConfigError(setting, value, allowed)
    host, port = _split_host_port(value)
    if host is None or port is None or not min_port <= port <= 65535:
        raise ConfigError(setting, value, allowed)
    return value


def _split_host_port(text: str) -> tuple[str | None, int | None]:
    if text.startswith("["):
        bracket = re.fullmatch(r"\[(?P<host>[^\]]+)\]:(?P<port>\d{1,5})", text)
        if bracket is None or not _is_ip(bracket["host"], ipaddress.IPv6Address):
            return None, None
        return bracket["host"], int(bracket["port"])
    host, separator, port = text.rpartition(":")
    if not separator or not port.isascii() or not port.isdigit() or len(port) > 5:
        return None, None
    if re.fullmatch(r"[\d.]+", host):
        valid = _is_ip(host, ipaddress.IPv4Address)
    else:
        valid = len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) is not None
    return (host, int(port)) if valid else (None, None)


def _is_ip(text: str, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


# --- presentation ---------------------------------------------------------------------------------------


def _flatten(prefix: str, section: DataclassInstance) -> Iterator[tuple[str, object]]:
    kinds = _SCHEMA[prefix]
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        dotted = f"{prefix}.{field.name}"
        kind = kinds[field.name]
        if kind == "table":
            yield from _flatten(dotted, value)
        elif kind == "duration":
            yield dotted, format_duration(value)
        elif kind in ("path", "optional_path"):
            yield dotted, "" if value is None else str(value)
        elif kind == "list":
            yield dotted, list(value)
        else:
            yield dotted, value


def _show(value: object) -> str:
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)
