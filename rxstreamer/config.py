"""Settings: each declared once, layered in, handed out as one typed, validated, frozen object.

Each setting is one ``setting(...)`` field of the dataclasses below: its kind (check and conversion, which mypy
matches against the annotation), its default as settings.toml spells it, its help and its flag. The CLI flags
are generated from these declarations; settings.toml and the README table are derived from them and checked by
tests/test_settings_files.py (``python -m tests.test_settings_files`` rewrites both).

Layers, lowest first: the packaged settings.toml and ``--config FILE`` (TOML, YAML or JSON; without the flag,
the file ``RXSTREAMER_CONFIG`` names), read together by dynaconf; ``RXSTREAMER_`` environment variables, ``__``
nesting; command-line overrides. Each layer becomes a map of dotted names, so layering is ``dict.update``.

The environment is read here, not by dynaconf's env loader, having tried it: that loader reads ``os.environ``
through a module global (``environ=`` would mean patching dynaconf), reads values without knowing the setting
(``RXSTREAMER_MESSAGE_QUEUE__TOPIC=123`` becomes the int 123, a comma-separated list stays a string,
``RXSTREAMER_CONFIG`` becomes a key), and loses the variable's name that errors must show. Enumerations are
named by the modules owning them ("rxstreamer.encoding:TimestampMode") and imported at the first check, so
importing this module (the CLI does, at start) loads neither protobuf nor grpc.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import importlib
import ipaddress
import math
import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, TypeVar, cast, get_args

from rxstreamer.durations import DURATION_HELP, format_duration, parse_duration, parse_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from rxstreamer.encoding import TimestampMode
    from rxstreamer.logs import LogFormat
    from rxstreamer.parsing import SentinelMode

__all__ = [
    "DECLARATIONS",
    "ENV_NESTING",
    "ENV_PREFIX",
    "BrokerSettings",
    "ConfigError",
    "Declaration",
    "FsyncPolicy",
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
# Not a setting: the --config file, for where a flag is awkward (containers, systemd units); the flag wins.
ENV_CONFIG: Final = "RXSTREAMER_CONFIG"
MAX_BATCH_SIZE: Final = 1_000_000
MAX_READ_AHEAD: Final = 16
FsyncPolicy = Literal["always", "interval", "never"]  # here, not in rxstreamer.broker: importing that needs grpc

T = TypeVar("T")


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
        shown = repr(str(self.value)) if isinstance(self.value, Path) else repr(self.value)
        return f"{self.setting} = {shown}: {self.allowed}"


# --- declaring a setting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How a value is checked and converted (a ValueError says what is allowed) and shown in the summary."""

    convert: Callable[[Any], T]
    show: Callable[[Any], object] = lambda value: value


@dataclass(frozen=True)
class Declaration:
    kind: Kind[Any]
    default: object  # as settings.toml spells it; its type also says how environment and flag text is read
    help: str
    flag: str
    commands: tuple[str, ...]


def setting(kind: Kind[T], default: object, help: str, usage: str = "") -> T:
    """A dataclass field declaring one setting; typed as the kind's result, so mypy checks the annotation.

    ``usage`` is the flag, after the commands taking it unless only ``run`` does: "--loop", "mq --listen".
    """
    *commands, flag = usage.split() or [""]
    declaration = Declaration(kind, default, help, flag, tuple(commands) or (("run",) if flag else ()))
    return cast(T, dataclasses.field(metadata={"setting": declaration}))


def table(cls: type[T]) -> T:
    """A dataclass field holding a nested table of settings."""
    return cast(T, dataclasses.field(metadata={"table": cls}))


def _rule(test: Callable[[Any], object], allowed: str, then: Callable[[Any], T]) -> Callable[[Any], T]:
    def convert(value: Any) -> T:
        if not test(value):
            raise ValueError(allowed)
        return then(value)

    return convert


def _path(value: Any) -> Path | None:
    """An empty string switches the feature off; anything else must be a path."""
    if isinstance(value, str) and not value.strip():
        return None
    if not isinstance(value, str | Path):
        raise ValueError("must be a file path")
    return Path(value).expanduser()


_NAMES = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
_TRANSFORMS_HELP = 'must be a list of "package.module:function" strings, e.g. ["mypkg.ops:drop_idle"]'


def _transforms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(_TRANSFORMS_HELP)
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(f"{_NAMES}:{_NAMES}", item):
            raise ValueError(f"{_TRANSFORMS_HELP}; {item!r} is not of that form")
    return tuple(value)


_TOPIC = "must be 1 to 255 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
_POSITIVE = f"must be greater than zero; expected {DURATION_HELP}"

TEXT: Final = Kind(_rule(lambda v: isinstance(v, str), "must be a string", str))
TOPIC: Final = Kind(_rule(lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,255}", v), _TOPIC, str))
PATH: Final = Kind(_rule(lambda v: _path(v) is not None, "must be a file path", lambda v: Path(v).expanduser()), str)
OPTIONAL_PATH: Final = Kind(_path, lambda path: "" if path is None else str(path))
BOOLEAN: Final = Kind(_rule(lambda v: isinstance(v, bool), "must be true or false", bool))
MULTIPLIER: Final = Kind(_rule(lambda v: type(v) in (int, float) and 1 <= v < math.inf, "must be a number >= 1", float))
SIZE: Final = Kind(_rule(lambda v: parse_size(v) >= 1, "must be at least 1 byte", parse_size))
DURATION: Final = Kind(parse_duration, format_duration)
POSITIVE: Final = Kind(_rule(lambda v: parse_duration(v) > 0, _POSITIVE, parse_duration), format_duration)
TRANSFORMS: Final = Kind(_transforms, list)


def integer(minimum: int, maximum: int | None = None) -> Kind[int]:
    def convert(value: Any) -> int:
        if type(value) is not int:
            raise ValueError(f"must be an integer >= {minimum}" + ("" if maximum is None else f" and <= {maximum}"))
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(
                f"must be an integer >= {minimum}" if value < minimum else f"must be an integer <= {maximum}"
            )
        return value

    return Kind(convert)


def choice(owner: str) -> Kind[Any]:
    """One value of the enumeration (a Literal or a tuple) declared by its owner, named "module:Name".

    Typed Any: the Literal itself is imported for type checking only (see the module docstring).
    """

    def convert(value: Any) -> str:
        allowed = _declared_by(owner)
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}")
        return value.strip().lower()

    return Kind(convert)


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"


def _declared_by(owner: str) -> tuple[str, ...]:
    """The values of the enumeration (a Literal or a tuple) that module "module:Name" declares."""
    module, _, name = owner.partition(":")
    declared = getattr(importlib.import_module(module), name)
    return tuple(get_args(declared) or declared)


def host_port(min_port: int, schemes_owner: str = "") -> Kind[str]:
    """host:port (an IPv6 host in brackets), or SCHEME://host:port for a scheme ``schemes_owner`` declares."""

    def convert(value: Any) -> str:
        schemes = _declared_by(schemes_owner) if schemes_owner else ()
        allowed = f'must be host:port with a port from {min_port} to 65535, e.g. "localhost:50051", '
        allowed += '"10.0.0.5:50051" or "[::1]:50051"' + "".join(f", or {scheme}://host:port" for scheme in schemes)
        scheme, separator, rest = value.rpartition("://") if isinstance(value, str) else ("", "", "")
        if separator and schemes and scheme not in schemes:
            raise ValueError(f"unknown scheme {scheme!r}; the schemes are: {', '.join(schemes)}")
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            valid = _ip_version(host[1:-1]) == 6
        elif re.fullmatch(r"[0-9.]+", host):
            valid = _ip_version(host) == 4
        else:
            valid = len(host) <= 253 and re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})*\.?", host) is not None
        if (separator and not schemes) or not valid or not re.fullmatch(r"[0-9]{1,5}", port):
            raise ValueError(allowed)
        if not min_port <= int(port) <= 65535:
            raise ValueError(allowed)
        return str(value)

    return Kind(convert)


def _ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


# --- the settings ---------------------------------------------------------------------------------------
# RUF009 is silenced where ruff does not know a field's type to be immutable: setting() and table() return
# a dataclasses.field(), so no default value is shared between instances.


@dataclass(frozen=True)
class TelemetrySettings:
    metrics_path: Path = setting(PATH, "./test-data/metrics.csv", "the DCGM CSV to stream", "--metrics-path")  # noqa: RUF009
    format: str = setting(
        choice("rxstreamer.sources:SOURCE_FORMATS"),
        "auto",
        "the input's format: `auto` picks it by the file's extension, `csv` is a DCGM exporter CSV",
        "run validate --format",
    )
    stream_interval: float = setting(
        DURATION, "1s", "time between batches; `0s` streams as fast as the queue accepts", "--interval"
    )
    batch_size: int = setting(integer(1, MAX_BATCH_SIZE), 10, "rows per batch", "--batch-size")
    loop: bool = setting(BOOLEAN, False, "replay the file endlessly", "--loop")
    timestamps: TimestampMode = setting(  # noqa: RUF009
        choice("rxstreamer.encoding:TimestampMode"),
        "original",
        "`original` keeps the CSV time; `processing` stamps rows with the time they are published",
        "--timestamps",
    )
    transforms: tuple[str, ...] = setting(
        TRANSFORMS,
        [],
        'your operators between parsing and batching, `["package.module:function", ...]` (see Using it as a '
        "library); in the environment a TOML array or a comma-separated list",
    )
    instance: str = setting(TEXT, "", "names this streamer in the default producer id; empty: the host name")
    checkpoint_path: Path | None = setting(  # noqa: RUF009
        OPTIONAL_PATH,
        "",
        "record progress after each acknowledged batch and resume from it (see Delivery guarantees); empty: off",
        "--checkpoint-path",
    )
    start_over: bool = setting(
        BOOLEAN,
        False,
        "replace a checkpoint written for another file, batch size or producer instead of refusing to start",
        "--start-over",
    )
    rejected_path: Path | None = setting(  # noqa: RUF009
        OPTIONAL_PATH,
        "",
        "append every rejected row to this CSV (`line,reason,detail,raw`) to fix and replay; empty: off",
        "--rejected-path",
    )
    max_field_size: int = setting(
        SIZE,
        "64KiB",
        "the longest line (or multi-line record) accepted; longer ones are rejected without being held in memory",
    )
    dcgm_sentinels: SentinelMode = setting(  # noqa: RUF009
        choice("rxstreamer.parsing:SentinelMode"),
        "reject",
        'DCGM\'s "blank / not found / not supported / not permissioned" numbers: `reject` them, or `flag` them '
        "(published with label `dcgm_sentinel`)",
    )
    read_ahead: int = setting(
        integer(0, MAX_READ_AHEAD),
        0,
        "batches read while the previous one is being published; `0` reads only after each acknowledgement",
    )


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: float = setting(POSITIVE, "100ms", "first backoff bound (exponential, with full jitter)")
    max_backoff: float = setting(POSITIVE, "5s", "backoff cap, at least `initial_backoff`")
    multiplier: float = setting(MULTIPLIER, 2.0, "growth of the bound per attempt")
    max_attempts: int = setting(integer(0), 0, "attempts per batch, the first included; `0` retries until stopped")


@dataclass(frozen=True)
class MessageQueueSettings:
    address: str = setting(
        host_port(1, "rxstreamer.sinks:SCHEMES"),
        "localhost:50051",
        "`host:port` (or `grpc://host:port`) of the queue",
        "run tail --mq-address",
    )
    topic: str = setting(TOPIC, "gpu-telemetry", "the topic to publish to (and to read from)", "run tail --topic")
    publish_timeout: float = setting(POSITIVE, "5s", "deadline of one publish call")
    producer_id: str = setting(
        TEXT,
        "",
        "the identity the queue deduplicates by; empty: instance, file name, file fingerprint and batch size",
        "--producer-id",
    )
    max_retry_time: float = setting(
        DURATION, "0s", "how long one batch may be retried before the stream stops with reason `error`; `0s`: forever"
    )
    publish_in_background: bool = setting(
        BOOLEAN,
        False,
        "make Publish calls on a thread of their own so that `read_ahead` overlaps reading with the call (slower "
        "on 2 cores, see docs/benchmarks.md)",
    )
    unreachable_alert_after: float = setting(
        POSITIVE,
        "60s",
        "how long the queue may stay unreachable before one `mq.unreachable_alert` line at level `error`",
    )
    retry: RetrySettings = table(RetrySettings)  # noqa: RUF009


@dataclass(frozen=True)
class ShutdownSettings:
    timeout: float = setting(POSITIVE, "10s", "on a stop signal, how long the publish in flight may take to finish")


@dataclass(frozen=True)
class LoggingSettings:
    format: LogFormat = setting(  # noqa: RUF009
        choice("rxstreamer.logs:LogFormat"),
        "auto",
        "`json`, `console`, or `auto` (console on a terminal)",
        "run mq tail validate --log-format",
    )
    level: str = setting(
        choice("rxstreamer.logs:LOG_LEVELS"), "info", "`debug`, `info`, `warning`, `error`", "run mq tail --log-level"
    )
    progress_interval: float = setting(POSITIVE, "10s", "how often `streamer.progress` is logged")
    rejected_rows_in_full: int = setting(
        integer(0), 20, "rejected rows logged one by one; after that, one count per progress interval"
    )


@dataclass(frozen=True)
class BrokerSettings:
    listen: str = setting(
        host_port(0), "127.0.0.1:50051", "where the reference broker listens; port 0 picks one", "mq --listen"
    )
    max_messages: int = setting(integer(1), 100000, "messages retained per topic", "mq --max-messages")
    max_bytes: int = setting(SIZE, "256MiB", "payload bytes retained per topic", "mq --max-bytes")
    retention: float = setting(
        DURATION,
        "0s",
        "release messages older than this; `0s` keeps them until the broker stops",
        "mq --retention",
    )
    max_subscribers: int = setting(
        integer(1),
        64,
        "open `Subscribe` (and health `Watch`) streams; more are refused with `RESOURCE_EXHAUSTED`, so streams "
        "never take the threads Publish needs",
        "mq --max-subscribers",
    )
    max_topics: int = setting(
        integer(1),
        1000,
        "topics the broker holds; a publish that would create one more is refused with `RESOURCE_EXHAUSTED`",
        "mq --max-topics",
    )
    max_total_bytes: int = setting(
        SIZE,
        "1GiB",
        "payload bytes retained by all topics together; past it publishes are refused like a full topic",
        "mq --max-total-bytes",
    )
    data_dir: Path | None = setting(  # noqa: RUF009
        OPTIONAL_PATH,
        "",
        "keep topics in a SQLite database here (`broker.sqlite3`), across restarts; empty: in memory only",
        "mq --data-dir",
    )
    fsync: FsyncPolicy = setting(  # noqa: RUF009
        choice("rxstreamer.config:FsyncPolicy"),
        "always",
        "`always` (before each acknowledgement), `interval`, or `never`",
        "mq --fsync",
    )
    fsync_interval: float = setting(
        POSITIVE, "100ms", 'with `fsync = "interval"`: how often the database is flushed to disk'
    )


@dataclass(frozen=True)
class Settings:
    telemetry: TelemetrySettings = table(TelemetrySettings)  # noqa: RUF009
    message_queue: MessageQueueSettings = table(MessageQueueSettings)  # noqa: RUF009
    shutdown: ShutdownSettings = table(ShutdownSettings)  # noqa: RUF009
    logging: LoggingSettings = table(LoggingSettings)  # noqa: RUF009
    broker: BrokerSettings = table(BrokerSettings)  # noqa: RUF009


def _register(cls: type[DataclassInstance], name: str = "") -> None:
    TABLES[name] = [field.name for field in dataclasses.fields(cls)]
    for field in dataclasses.fields(cls):
        if "table" in field.metadata:
            _register(field.metadata["table"], _join(name, field.name))
        else:
            DECLARATIONS[_join(name, field.name)] = field.metadata["setting"]


def _join(table_name: str, key: str) -> str:
    return f"{table_name}.{key}" if table_name else key


TABLES: Final[dict[str, list[str]]] = {}  # every table by dotted name ("" is the top level), with its keys
DECLARATIONS: Final[dict[str, Declaration]] = {}  # every setting by dotted name, in declaration order
_register(Settings)


# --- loading --------------------------------------------------------------------------------------------

_FORMATS: Final = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
_DYNACONF_LOCK = threading.Lock()  # dynaconf reloads module-level state on every instantiation
# A flag's string for a setting whose default is a number or a boolean must be one; what it must be.
_FLAG_TYPES: Final[dict[type, tuple[tuple[type, ...], str]]] = {
    bool: ((bool,), "must be true or false"),
    int: ((int,), "must be an integer"),
    float: ((int, float), "must be a number"),
}


def load_settings(
    config_file: Path | str | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge every layer and validate the result, raising ConfigError at the first unusable value.

    ``overrides`` maps dotted names ("telemetry.batch_size") to values; a None value means "not given", so
    the CLI can pass every flag straight from argparse. ``environ`` defaults to ``os.environ``. Without
    ``config_file``, a non-empty ``RXSTREAMER_CONFIG`` names it, and errors about the file name that variable.
    """
    environ = os.environ if environ is None else environ
    source = "--config"
    if config_file is None and environ.get(ENV_CONFIG, "").strip():
        config_file, source = environ[ENV_CONFIG], ENV_CONFIG
    values = _files_layer(None if config_file is None else Path(config_file).expanduser(), source)
    for variable, raw in sorted(environ.items()):
        values.update(_environment_variable(variable, raw))
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name in TABLES:
            keys = ", ".join(_join(name, key) for key in TABLES[name])
            raise ConfigError(name, value, f"is a table; override one of its settings: {keys}")
        if name not in DECLARATIONS:
            raise _unknown(name, value, name)
        values[name] = _read(value, name, strict=True)
    settings: Settings = _build(Settings, "", values)
    if settings.message_queue.retry.max_backoff < settings.message_queue.retry.initial_backoff:
        floor = format_duration(settings.message_queue.retry.initial_backoff)
        name = "message_queue.retry.max_backoff"
        raise ConfigError(name, values[name], f"must be >= message_queue.retry.initial_backoff ({floor})")
    return settings


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
    for name, declaration in DECLARATIONS.items():
        value: object = settings
        for part in name.split("."):
            value = getattr(value, part)
        summary[name] = declaration.kind.show(value)
    return summary


def _files_layer(config: Path | None, source: str = "--config") -> dict[str, object]:
    """The packaged settings.toml, then --config and its NAME.local.EXT sibling, layered by dynaconf.

    ``source`` is how the user named the file (``--config`` or ``RXSTREAMER_CONFIG``), for error messages."""
    from dynaconf import Dynaconf  # imported here: it costs ~0.1 s of start-up

    files = [Path(str(resources.files("rxstreamer").joinpath("settings.toml"))), *([config] if config else [])]
    if config and config.suffix not in _FORMATS:
        unsupported = f"unsupported file type {config.suffix or '(no extension)'!r}; use .toml, .yaml, .yml or .json"
        raise ConfigError(source, config, unsupported)
    if config:
        require_readable_file(source, config)
    problem = f"cannot be read as {_FORMATS[files[-1].suffix]}"
    with _DYNACONF_LOCK:
        try:  # absolute, glob-escaped paths: no search through parent directories, no "[...]" patterns
            tree = Dynaconf(
                settings_files=[glob.escape(str(path.absolute())) for path in files],
                core_loaders=["TOML", "YAML", "JSON"],
                environments=False,  # load_dotenv is off by default; passing it would add a LOAD_DOTENV key
                loaders=[],  # no environment loader: see the module docstring
                merge_enabled=True,
            ).as_dict()
        except (AttributeError, TypeError) as exc:
            raise ConfigError(source, files[-1], f"{problem}: the top level must be a table of sections") from exc
        except Exception as exc:  # every parser has its own exception types; all mean "cannot be read"
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise ConfigError(source, files[-1], f"{problem}: {message}") from exc
    return _flatten(tree)


def _flatten(tree: Mapping[Any, Any], table_name: str = "") -> dict[str, object]:
    """A nested table as dotted names, refusing keys that are no setting (in any case: dynaconf's rule)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = _join(table_name, str(key).lower())
        if name in TABLES and not isinstance(value, Mapping):
            raise ConfigError(name, value, f"must be a table with the keys {', '.join(TABLES[name])}")
        if name not in TABLES and name not in DECLARATIONS:
            raise _unknown(name, value, name)
        flat.update(_flatten(value, name) if name in TABLES else {name: value})
    return flat


def _environment_variable(variable: str, raw: str) -> dict[str, object]:
    """RXSTREAMER_SECTION__KEY as a setting. RXSTREAMER_NAME without ``__`` is left to wrapper scripts, unless
    it is RXSTREAMER_SECTION_KEY: that looks meant, and would silently do nothing."""
    if not variable.startswith(ENV_PREFIX) or variable == ENV_CONFIG:
        return {}
    name = variable.removeprefix(ENV_PREFIX).lower().replace(ENV_NESTING, ".")
    if "." not in name and name not in TABLES:
        if any(name.startswith(f"{section}_") for section in TABLES[""]):
            spelled = [ENV_PREFIX + known.replace(".", ENV_NESTING).upper() for known in DECLARATIONS]
            meant = [env for env in spelled if env.replace(ENV_NESTING, "_") == variable]
            hint = f": {meant[0]}" if meant else f", e.g. {ENV_PREFIX}TELEMETRY__BATCH_SIZE"
            raise ConfigError(variable, raw, f"not a setting; nested names use '__'{hint}")
        return {}
    if name not in TABLES and name not in DECLARATIONS:
        raise _unknown(variable, raw, name)
    return _flatten({name: _read(raw, name, strict=False)})


def _read(raw: object, name: str, *, strict: bool) -> object:
    """An environment or flag string as a value, by the type of the setting's default: text stays text
    (a quoted TOML string loses its quotes), a list may be comma-separated, anything else is a TOML literal
    (50, true, ["a:b"], { KEY = 1 }) when it is one, else text. From a flag, numbers and booleans must be."""
    default = DECLARATIONS[name].default if name in DECLARATIONS else None
    if not isinstance(raw, str):
        return raw
    try:  # a value with a newline could smuggle in extra keys: such text is not a single literal
        parsed = tomllib.loads(f"value = {raw}")
        literal = parsed["value"] if parsed.keys() == {"value"} else raw
    except tomllib.TOMLDecodeError:
        literal = raw
    if isinstance(default, bool) and raw.strip().lower() in ("true", "false"):
        literal = raw.strip().lower() == "true"
    elif isinstance(default, list) and literal is raw:
        literal = [item.strip() for item in raw.split(",") if item.strip()]
    accepted, allowed = _FLAG_TYPES.get(type(default), ((type(literal),), ""))
    if strict and type(literal) not in accepted:
        raise ConfigError(name, raw, allowed)
    return literal if not isinstance(default, str) or isinstance(literal, str) else raw


def _unknown(shown: str, value: object, name: str) -> ConfigError:
    """Name what the table accepts and the likely intended key: most unknown keys are typos."""
    parts = name.split(".")
    depth = max(depth for depth in range(len(parts)) if ".".join(parts[:depth]) in TABLES)
    table_name, key, known = ".".join(parts[:depth]), parts[depth], TABLES[".".join(parts[:depth])]
    if key in known:
        return ConfigError(shown, value, f"unknown setting; {_join(table_name, key)} has no sub-settings")
    hint = difflib.get_close_matches(key, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"{table_name} accepts" if table_name else "the sections are"
    return ConfigError(shown, value, f"unknown setting{did_you_mean}; {where}: {', '.join(known)}")


def _build(cls: Any, table_name: str, values: Mapping[str, object]) -> Any:
    """The dataclass tree, each setting converted by its kind, in declaration order."""
    arguments: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        name = _join(table_name, field.name)
        if "table" in field.metadata:
            arguments[field.name] = _build(field.metadata["table"], name, values)
            continue
        if name not in values:
            meddling = sorted(variable for variable in os.environ if variable.endswith("_FOR_DYNACONF"))
            hint = f"dynaconf's own environment variables change how files are read, unset {', '.join(meddling)}"
            raise ConfigError(
                name, None, f"missing; {hint if meddling else 'the packaged settings.toml should set it'}"
            )
        try:
            arguments[field.name] = DECLARATIONS[name].kind.convert(values[name])
        except ValueError as exc:
            raise ConfigError(name, values[name], str(exc)) from None
    return cls(**arguments)
