"""How a setting is declared: one dataclass field, ``setting(kind, default, help, usage)``.

A kind checks and converts a value; its ValueError is worded as what is allowed, so the loader only adds the
setting's name and the value. Enumerations are named by the module owning them ("rxstreamer.encoding:
TimestampMode") and imported at the first check, so declaring settings imports neither protobuf nor grpc.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast, get_args
from urllib.parse import urlsplit

from rxstreamer.durations import DURATION_HELP, format_duration, parse_duration, parse_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """Checks and converts a value (a ValueError says what is allowed); ``show`` spells it as settings.toml."""

    convert: Callable[[Any], T]
    show: Callable[[Any], object] = lambda value: value
    repeatable: bool = False  # its flag may be given several times, for a list


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


def join(table_name: str, key: str) -> str:
    return f"{table_name}.{key}" if table_name else key


def register(cls: type[DataclassInstance], tables: dict[str, list[str]], declarations: dict[str, Declaration]) -> None:
    """Index a tree of settings by dotted name: each table with its keys ("" is the top), each declaration."""

    def visit(cls: type[DataclassInstance], name: str) -> None:
        tables[name] = [field.name for field in dataclasses.fields(cls)]
        for field in dataclasses.fields(cls):
            if "table" in field.metadata:
                visit(field.metadata["table"], join(name, field.name))
            else:
                declarations[join(name, field.name)] = field.metadata["setting"]

    visit(cls, "")


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
_TRANSFORMS = 'must be a list of "package.module:function" strings, e.g. ["mypkg.ops:drop_idle"]'


def _transforms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(_TRANSFORMS)
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(f"{_NAMES}:{_NAMES}", item):
            raise ValueError(f"{_TRANSFORMS}; {item!r} is not of that form")
    return tuple(value)


_INPUTS = "must be a file path, or http:// or https:// URLs to scrape (a list, or separated by commas)"


def _inputs(value: Any) -> Path | tuple[str, ...]:
    """A file to stream, or the endpoints to scrape: "://" tells them apart, and the two never mix."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    if isinstance(value, str) and "://" in value:
        items = [part.strip() for part in value.split(",") if part.strip()]
    if not items or not all(isinstance(item, str | Path) for item in items):
        raise ValueError(_INPUTS)
    urls = [str(item) for item in items if "://" in str(item)]
    if not urls and len(items) == 1:
        return PATH.convert(items[0])
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{_INPUTS}; {url!r} is not an http:// or https:// URL with a host")
    if len(urls) != len(items):
        raise ValueError(f"{_INPUTS}; a file is streamed on its own, not beside URLs or other files")
    return tuple(dict.fromkeys(urls))


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
_NATS_NAME = "must be 1 to 255 characters without spaces, '.', '*', '>' or path separators"
NATS_NAME: Final = Kind(_rule(lambda v: isinstance(v, str) and re.fullmatch(r"[^\s.*>/\\]{1,255}", v), _NATS_NAME, str))
INPUTS: Final = Kind(_inputs, lambda value: str(value) if isinstance(value, Path) else list(value), repeatable=True)


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
    """One value of the enumeration that module "module:Name" declares (a Literal or a tuple), in any case.

    Typed Any: the Literal itself is imported for type checking only (see the module docstring).
    """

    def convert(value: Any) -> str:
        allowed = _declared_by(owner)
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}")
        return value.strip().lower()

    return Kind(convert)


def _declared_by(owner: str) -> tuple[str, ...]:
    module, _, name = owner.partition(":")
    declared = getattr(importlib.import_module(module), name)
    return tuple(get_args(declared) or declared)


def host_port(min_port: int, schemes_owner: str = "") -> Kind[str]:
    """host:port (an IPv6 host in brackets), or SCHEME://host:port for a scheme ``schemes_owner`` declares;
    NATS takes every seed server of its cluster: ``nats://h1:4222,nats://h2:4222``."""

    def convert(value: Any) -> str:
        several = value.split(",") if isinstance(value, str) and value.startswith("nats://") else [value]
        if isinstance(value, str) and "," in value and len(several) == 1:
            raise ValueError("only nats:// takes several servers, separated by commas")
        for server in several:
            one(server.strip() if isinstance(server, str) else server)
        return str(value)

    def one(value: Any) -> None:
        schemes = _declared_by(schemes_owner) if schemes_owner else ()
        allowed = f'must be host:port with a port from {min_port} to 65535, e.g. "localhost:50051", '
        allowed += '"10.0.0.5:50051" or "[::1]:50051"' + "".join(f", or {scheme}://host:port" for scheme in schemes)
        scheme, separator, rest = value.rpartition("://") if isinstance(value, str) else ("", "", "")
        if separator and scheme not in schemes:
            raise ValueError(
                f"unknown scheme {scheme!r}; the schemes are: {', '.join(schemes)}" if schemes else allowed
            )
        host, _, port = rest.rpartition(":")
        if not _is_host(host) or not re.fullmatch(r"[0-9]{1,5}", port) or not min_port <= int(port) <= 65535:
            raise ValueError(allowed)

    return Kind(convert)


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"


def _is_host(host: str) -> bool:
    """A DNS name, an IPv4 address, or an IPv6 address in brackets."""
    if host.startswith("[") and host.endswith("]"):
        return _ip_version(host[1:-1]) == 6
    if re.fullmatch(r"[0-9.]+", host):
        return _ip_version(host) == 4
    return len(host) <= 253 and re.fullmatch(rf"{_LABEL}(?:\.{_LABEL})*\.?", host) is not None


def _ip_version(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None
