"""settings.toml and the README settings table say exactly what the declarations in rxstreamer/config/declared.py say.

Both are derived from the declarations; ``python -m tests.test_settings_files`` rewrites them after a change.
"""

from __future__ import annotations

import re
import textwrap

from rxstreamer.config import DECLARATIONS, Declaration
from tests.conftest import REPO_ROOT

SETTINGS_TOML = REPO_ROOT / "settings.toml"
README = REPO_ROOT / "README.md"
TABLE_HEADER = "| setting | default | flag | meaning |\n| --- | --- | --- | --- |\n"
TOML_HEADER = """\
# rxstreamer defaults, generated from the declarations in rxstreamer/config/declared.py: edit those, then run
# `python -m tests.test_settings_files`. Override these with --config FILE (TOML, YAML or JSON), then environment
# variables (RXSTREAMER_TELEMETRY__BATCH_SIZE=50), then command-line flags.
# Durations accept "250ms", "1s", "2m", "1h" (or a number of seconds); sizes "64KiB", "1GiB" (or bytes).
"""

Row = tuple[str, str, str, str]


def toml_value(value: object) -> str:
    """A default written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, int | float), value
    return repr(value)


def render_settings_toml() -> str:
    """Every table in declaration order, each setting after its help as a comment."""
    tables: dict[str, list[tuple[str, Declaration]]] = {}
    for name, declaration in DECLARATIONS.items():
        table, _, key = name.rpartition(".")
        tables.setdefault(table, []).append((key, declaration))
    lines = [TOML_HEADER.rstrip("\n")]
    for table, settings in tables.items():
        lines += ["", f"[{table}]"]
        for key, declaration in settings:
            lines += [f"# {line}" for line in textwrap.wrap(declaration.help, 108)]
            lines.append(f"{key} = {toml_value(declaration.default)}")
    return "\n".join(lines) + "\n"


def shown_default(value: object) -> str:
    """A default in the README: as TOML, except that text is unquoted and an empty text says "empty"."""
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    return f"`{toml_value(value)}`"


def declared_rows() -> list[Row]:
    """The README table as the declarations say it: the flag after its commands unless `run` takes it."""
    rows: list[Row] = []
    for name, declaration in DECLARATIONS.items():
        flags = [declaration.flag] if declaration.flag else []
        if flags and isinstance(declaration.default, bool):
            flags.append("--no-" + declaration.flag.removeprefix("--"))
        commands = "" if "run" in declaration.commands else " ".join(declaration.commands) + " "
        rows.append(
            (
                f"`{name}`",
                shown_default(declaration.default),
                " / ".join(f"`{commands}{flag}`" for flag in flags),
                declaration.help,
            )
        )
    return rows


def render_table() -> str:
    """The table as Markdown; an empty cell is written "| |", as before."""
    lines = ["| " + " | ".join(row) + " |" for row in declared_rows()]
    return TABLE_HEADER + "".join(line.replace("|  |", "| |") + "\n" for line in lines)


def readme_table(text: str) -> str:
    """The settings table as the README has it: its header and every row up to the first other line."""
    match = re.search(re.escape(TABLE_HEADER) + r"(?:\|.*\n)*", text)
    assert match, "the README lost its settings table (or changed its header)"
    return match.group(0)


def readme_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    for line in readme_table(text).splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]
        assert len(cells) == 4, f"a README settings row without 4 cells: {line}"
        rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def test_settings_toml_is_generated_from_the_declarations() -> None:
    """Every setting of settings.toml, its default and its comment, in order, is its declaration's."""
    assert SETTINGS_TOML.read_text(encoding="utf-8") == render_settings_toml()


def test_readme_table_lists_every_declared_setting() -> None:
    """The README table names the declared settings, in declaration order and nothing else."""
    names = [row[0] for row in readme_rows(README.read_text(encoding="utf-8"))]
    assert names == [f"`{name}`" for name in DECLARATIONS]


def test_readme_table_rows_match_the_declarations() -> None:
    """Each README row's default, flag and meaning are its declaration's default, flag and help."""
    readme = {row[0]: row for row in readme_rows(README.read_text(encoding="utf-8"))}
    assert readme == {row[0]: row for row in declared_rows()}


def test_readme_parser_sees_a_changed_cell() -> None:
    """The comparison can fail: a table with one default changed does not match."""
    changed = render_table().replace("| `10` |", "| `11` |")
    assert readme_rows(changed) != declared_rows()
    assert ("`telemetry.batch_size`", "`11`", "`--batch-size`", "rows per batch") in readme_rows(changed)


def test_rendered_toml_spells_defaults_as_toml() -> None:
    """Strings are quoted, booleans lower-case, lists bracketed, numbers as written."""
    text = render_settings_toml()
    assert "\n[message_queue.retry]\n# first backoff bound" in text
    for line in ('stream_interval = "1s"', "batch_size = 10", "loop = false", "transforms = []", "multiplier = 2.0"):
        assert f"\n{line}\n" in text


def _write() -> None:
    """Rewrite settings.toml and the README settings table from the declarations."""
    SETTINGS_TOML.write_text(render_settings_toml(), encoding="utf-8")
    text = README.read_text(encoding="utf-8")
    README.write_text(text.replace(readme_table(text), render_table()), encoding="utf-8")


if __name__ == "__main__":
    _write()
