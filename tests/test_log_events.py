"""Every log event the program can emit is listed in the README's log-events table, and nothing more."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.processes import REPO_ROOT

PACKAGE = REPO_ROOT / "rxstreamer"
README = REPO_ROOT / "README.md"
LOGGER_METHODS = frozenset({"debug", "info", "warning", "warn", "error", "critical", "exception", "fatal", "msg"})

# Events whose name is not the string constant of a logger call, so that parsing cannot find them. Each must
# still occur in the source (as a constant or in the named f-string), which the test checks.
INDIRECT_EVENTS = {
    # rxstreamer/signals.py logs f"{self.event_prefix}.sighup_ignored", ".forced_exit" and ".signal_repeated";
    # cli.py sets event_prefix to "streamer" for `run` and "broker" for `mq`.
    "streamer.sighup_ignored": "{self.event_prefix}.sighup_ignored",
    "streamer.forced_exit": "{self.event_prefix}.forced_exit",
    "streamer.signal_repeated": "{self.event_prefix}.signal_repeated",
    "broker.sighup_ignored": "{self.event_prefix}.sighup_ignored",
    "broker.forced_exit": "{self.event_prefix}.forced_exit",
    "broker.signal_repeated": "{self.event_prefix}.signal_repeated",
    # queue_status.py: `level = log.debug if unreachable else log.warning; level("publisher.retry_scheduled", ...)`
    "publisher.retry_scheduled": '"publisher.retry_scheduled"',
    # broker/database.py passes these to _background_failure(event, ...), which logs them.
    "broker.checkpoint_failed": '"broker.checkpoint_failed"',
    "broker.release_failed": '"broker.release_failed"',
    # cli.py's _fail(message, status, event) writes these (as JSON with JSON logs) through its own logger.
    "cli.invalid_setting": '"cli.invalid_setting"',
    "cli.invalid_input": '"cli.invalid_input"',
    "cli.failed": '"cli.failed"',
    "cli.usage_error": '"cli.usage_error"',
}


def source_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "proto" not in path.relative_to(PACKAGE).parts)


def logged_events() -> set[str]:
    """First arguments of calls like ``log.info("name", ...)``: any ``.<logger method>(...)`` whose first
    argument is a string constant that looks like an event name (``area.what``)."""
    events = set()
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOGGER_METHODS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", node.args[0].value)
            ):
                events.add(node.args[0].value)
    return events


def readme_events() -> set[str]:
    """The backticked names in the first column of the table under README's "### Logs"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Logs\n", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    events = set()
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith(("| event", "| ---")):
            continue
        first_column = line.split("|")[1]
        events.update(re.findall(r"`([^`]+)`", first_column))
    return events


def test_the_indirect_events_still_exist() -> None:
    source = "\n".join(path.read_text(encoding="utf-8") for path in source_files())
    stale = sorted(name for name, spelled in INDIRECT_EVENTS.items() if spelled not in source)
    assert not stale, f"INDIRECT_EVENTS lists events no longer in the source: {stale}"


def test_readme_lists_every_log_event() -> None:
    emitted = logged_events() | set(INDIRECT_EVENTS)
    listed = readme_events()
    assert emitted, "found no log events: has the way the package logs changed?"
    not_listed = sorted(emitted - listed)
    not_emitted = sorted(listed - emitted)
    assert (not_listed, not_emitted) == ([], []), (
        f"log events missing from README's '### Logs' table: {not_listed}; "
        f"README rows for events the source does not emit: {not_emitted}"
    )
