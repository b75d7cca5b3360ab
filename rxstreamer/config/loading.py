"""Layering settings into one validated, frozen ``Settings``: packaged defaults, file, environment, flags.

Layers, lowest first: the packaged settings.toml and ``--config FILE`` (TOML, YAML or JSON; without the flag,
the file ``RXSTREAMER_CONFIG`` names), read together by dynaconf; ``RXSTREAMER_`` environment variables, ``__``
nesting; command-line overrides. Each layer becomes a map of dotted names, so layering is ``dict.update``.

The environment is read here, not by dynaconf's env loader, having tried it: that loader reads ``os.environ``
through a module global, reads values without knowing the setting (``RXSTREAMER_MESSAGE_QUEUE__TOPIC=123``
becomes the int 123, a comma-separated list stays a string, ``RXSTREAMER_CONFIG`` becomes a key), and loses
the variable's name that errors must show.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import os
import threading
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from rxstreamer.config.declared import DECLARATIONS, TABLES, Settings
from rxstreamer.config.kinds import join
from rxstreamer.durations import format_duration

ENV_PREFIX: Final = "RXSTREAMER_"
ENV_NESTING: Final = "__"
# Not a setting: the --config file, for where a flag is awkward (containers, systemd units); the flag wins.
ENV_CONFIG: Final = "RXSTREAMER_CONFIG"
_FORMATS: Final = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
_DYNACONF_LOCK = threading.Lock()  # dynaconf reloads module-level state on every instantiation
# A flag's string for a setting whose default is a number or a boolean must be one; what it must be.
_FLAG_TYPES: Final[dict[type, tuple[tuple[type, ...], str]]] = {
    bool: ((bool,), "must be true or false"),
    int: ((int,), "must be an integer"),
    float: ((int, float), "must be a number"),
}


class ConfigError(Exception):
    """A setting that cannot be used, worded for the operator who has to fix it: ``setting`` is the dotted
    name as settings.toml writes it (or ``--config`` / a variable's name when the source is the problem)."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        super().__init__(setting, value, allowed)
        self.setting, self.value, self.allowed = setting, value, allowed

    def __str__(self) -> str:
        shown = repr(str(self.value)) if isinstance(self.value, Path) else repr(self.value)
        return f"{self.setting} = {shown}: {self.allowed}"


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
            keys = ", ".join(join(name, key) for key in TABLES[name])
            raise ConfigError(name, value, f"is a table; override one of its settings: {keys}")
        if name not in DECLARATIONS:
            raise _unknown(name, value)
        values[name] = _read(value, name, strict=True)
    settings: Settings = _build(Settings, "", values)
    retry, name = settings.message_queue.retry, "message_queue.retry.max_backoff"
    if retry.max_backoff < retry.initial_backoff:
        floor = format_duration(retry.initial_backoff)
        raise ConfigError(name, values[name], f"must be >= message_queue.retry.initial_backoff ({floor})")
    telemetry, name = settings.telemetry, "telemetry.scrape_timeout"
    if telemetry.scrape_timeout > telemetry.scrape_interval:  # 0s means the interval
        ceiling = format_duration(telemetry.scrape_interval)
        raise ConfigError(name, values[name], f"must be <= telemetry.scrape_interval ({ceiling})")
    return settings


def require_readable_file(setting: str, path: Path) -> None:
    """Fail early, with the setting's name, when a file the command needs cannot be opened."""
    where = f" (relative to the current directory {Path.cwd()})" if not path.is_absolute() else ""
    if not path.exists():
        raise ConfigError(setting, path, f"file not found{where}")
    if path.is_dir():
        raise ConfigError(setting, path, f"is a directory, not a file{where}")
    if not path.is_file():
        raise ConfigError(setting, path, "must be a regular file, not a pipe or a device: save the stream to a file")
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


def _files_layer(config: Path | None, source: str) -> dict[str, object]:
    """The packaged settings.toml, then the config file (``source`` says how the user named it) and its
    NAME.local.EXT sibling, layered by dynaconf."""
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
        name = join(table_name, str(key).lower())
        if name in TABLES and not isinstance(value, Mapping):
            raise ConfigError(name, value, f"must be a table with the keys {', '.join(TABLES[name])}")
        if name not in TABLES and name not in DECLARATIONS:
            raise _unknown(name, value)
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
        raise _unknown(name, raw, shown=variable)
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


def _unknown(name: str, value: object, shown: str = "") -> ConfigError:
    """Name what the table accepts and the likely intended key: most unknown keys are typos."""
    parts = name.split(".")
    depth = max(depth for depth in range(len(parts)) if ".".join(parts[:depth]) in TABLES)
    table_name, key, known = ".".join(parts[:depth]), parts[depth], TABLES[".".join(parts[:depth])]
    if key in known:
        return ConfigError(shown or name, value, f"unknown setting; {join(table_name, key)} has no sub-settings")
    hint = difflib.get_close_matches(key, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"{table_name} accepts" if table_name else "the sections are"
    return ConfigError(shown or name, value, f"unknown setting{did_you_mean}; {where}: {', '.join(known)}")


def _build(cls: Any, table_name: str, values: Mapping[str, object]) -> Any:
    """The dataclass tree, each setting converted by its kind, in declaration order."""
    arguments: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        name = join(table_name, field.name)
        if "table" in field.metadata:
            arguments[field.name] = _build(field.metadata["table"], name, values)
        elif name not in values:
            meddling = sorted(variable for variable in os.environ if variable.endswith("_FOR_DYNACONF"))
            hint = f"dynaconf's own environment variables change how files are read, unset {', '.join(meddling)}"
            raise ConfigError(
                name, None, f"missing; {hint if meddling else 'the packaged settings.toml should set it'}"
            )
        else:
            try:
                arguments[field.name] = DECLARATIONS[name].kind.convert(values[name])
            except ValueError as exc:
                raise ConfigError(name, values[name], str(exc)) from None
    return cls(**arguments)
