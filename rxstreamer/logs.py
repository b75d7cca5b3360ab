"""structlog set-up: JSON lines for machines, a readable console for people.

Every module logs through ``structlog.get_logger()``; this module decides once, at start-up, where the lines
go and what they look like. JSON output is one object per line with ``timestamp`` (UTC, ISO-8601),
``level`` and ``event`` first, so that log shippers and ``jq`` need no configuration, and exceptions are
rendered inside that object rather than as a raw traceback on stderr.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import sys
from collections.abc import MutableMapping
from pathlib import PurePath
from typing import Any, Final, Literal, TextIO, get_args

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging"]

# Declared here, where they take effect; logging.format and logging.level accept exactly these.
LogFormat = Literal["json", "console", "auto"]
_FORMATS: Final = get_args(LogFormat)
_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOG_LEVELS: Final = tuple(_LEVELS)
_LEADING_KEYS: Final = ("timestamp", "level", "event")


def configure_logging(format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """(Re)configure structlog for the whole process.

    ``stream`` defaults to whatever ``sys.stdout`` is when a line is written, not when this is called, so a
    replaced stdout (pytest's capture, a redirect) is honoured. "auto" picks the console renderer when the
    stream is a terminal and JSON otherwise. Safe to call again, from tests or after reading settings.
    """
    if format not in _FORMATS:
        raise ValueError(f"log format must be one of {', '.join(_FORMATS)}, got {format!r}")
    if level.lower() not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    target = stream if stream is not None else sys.stdout
    is_tty = _isatty(target)
    console = format == "console" or (format == "auto" and is_tty)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[Processor]
    if console:
        # ConsoleRenderer formats exc_info itself (and warns when format_exc_info ran before it). Keys stay in
        # the order the code passed them (reason, then counts, ...) instead of being sorted alphabetically.
        renderer = [structlog.dev.ConsoleRenderer(colors=is_tty, sort_keys=False)]
    else:
        renderer = [
            structlog.processors.format_exc_info,
            _leading_keys_first,
            structlog.processors.JSONRenderer(default=_json_default),
        ]

    # WriteLogger writes each line with a single write() under a lock per file object. structlog creates
    # that lock lazily and without synchronisation, so create it now, before threads start logging.
    structlog.WriteLogger(target)
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        context_class=dict,
        # Not cached: loggers created at import time must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty()
        return False


def _leading_keys_first(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level and event first so that a line reads well before it is parsed."""
    ordered: MutableMapping[str, Any] = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update((key, value) for key, value in event_dict.items() if key not in ordered)
    return ordered


def _json_default(value: object) -> object:
    """Render the values that do occur in our log fields readably instead of as their repr()."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return repr(value)
