"""Human-friendly durations and sizes for settings ("250ms", "2m", "256MiB").

Pure functions with no dependency on the configuration machinery, so that the CLI, the broker and the tests
can parse a flag value the same way the settings loader does.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["DURATION_HELP", "SIZE_HELP", "format_duration", "parse_duration", "parse_size"]

DURATION_HELP = 'a duration such as "250ms", "1s", "1.5s", "2m" or "1h", or a number of seconds'
SIZE_HELP = 'a size such as "64KiB", "256MiB", "1GiB" or "10MB", or a number of bytes'

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A digit is required on at least one side of the point; no sign (negatives get their own message), no
# exponent (nobody writes "1e3s" on purpose, and it hides typos).
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(rf"(?P<number>{_NUMBER})\s*(?P<unit>[a-zA-Z]*)")

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(rf"(?P<number>{_NUMBER})\s*(?P<unit>[a-zA-Z]*)")


def parse_duration(value: object) -> float:
    """Seconds from a setting or flag value.

    Numbers are seconds so that TOML/JSON/YAML numbers and env values like ``RXSTREAMER_..._TIMEOUT=5``
    work without a unit. Units are case-sensitive: "m" is minutes and an upper-case "M" would be ambiguous.
    """
    if isinstance(value, bool):
        # bool is an int subclass: `timeout = true` is a mistake, not one second.
        raise ValueError(f"expected {DURATION_HELP}, got a boolean")
    if isinstance(value, int | float):
        seconds = _finite_float(value, DURATION_HELP)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"expected {DURATION_HELP}, got an empty string")
        if text.startswith("-"):
            raise ValueError(f"must not be negative; expected {DURATION_HELP}")
        match = _DURATION_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"expected {DURATION_HELP}")
        unit = match["unit"] or "s"
        if unit not in _DURATION_UNITS:
            allowed = ", ".join(_DURATION_UNITS)
            raise ValueError(f"unknown unit {match['unit']!r} (allowed: {allowed}); expected {DURATION_HELP}")
        seconds = _finite_float(float(match["number"]) * _DURATION_UNITS[unit], DURATION_HELP)
    else:
        raise ValueError(f"expected {DURATION_HELP}, got {type(value).__name__}")
    if seconds < 0:
        raise ValueError(f"must not be negative; expected {DURATION_HELP}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds in the largest unit that keeps the number short, for log lines.

    Precision is one microsecond, and the output parses back with parse_duration. It never raises, because
    a log call must not fail over a value it only reports.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    # Float noise such as 0.1 * 3 must not leak into the text: work in whole microseconds.
    text = _format_micros(round(abs(seconds) * 1_000_000))
    return f"-{text}" if seconds < 0 and text != "0s" else text


def _format_micros(micros: int) -> str:
    if micros == 0:
        return "0s"
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000)):
        if micros >= size and micros % size == 0:
            return f"{micros // size}{unit}"
    if micros >= 1_000_000:
        return f"{_trim(micros / 1_000_000, 6)}s"
    return f"{_trim(micros / 1000, 3)}ms"


def parse_size(value: object) -> int:
    """Bytes from a setting value: KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024.

    Unit letters are case-insensitive because "256mb" is commonly written and means the same to everyone.
    The result must be a whole number of bytes; "1.5KiB" is 1536 bytes, "0.3B" is an error.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HELP}, got a boolean")
    amount: Fraction
    if isinstance(value, int):
        amount = Fraction(value)
    elif isinstance(value, float):
        amount = Fraction(_finite_float(value, SIZE_HELP))
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"expected {SIZE_HELP}, got an empty string")
        if text.startswith("-"):
            raise ValueError(f"must not be negative; expected {SIZE_HELP}")
        match = _SIZE_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"expected {SIZE_HELP}")
        unit = match["unit"].lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(
                f"unknown unit {match['unit']!r} (allowed: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB); expected {SIZE_HELP}"
            )
        # Fraction keeps "1.1MB" exact instead of landing on 1099999.9999999998 bytes.
        amount = Fraction(match["number"]) * _SIZE_UNITS[unit]
    else:
        raise ValueError(f"expected {SIZE_HELP}, got {type(value).__name__}")
    if amount < 0:
        raise ValueError(f"must not be negative; expected {SIZE_HELP}")
    if amount.denominator != 1:
        raise ValueError(f"must be a whole number of bytes; expected {SIZE_HELP}")
    return int(amount)


def _finite_float(value: float, help_text: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"too large; expected {help_text}") from None
    if math.isnan(number):
        raise ValueError(f"expected {help_text}, got NaN")
    if math.isinf(number):
        raise ValueError(f"must be finite; expected {help_text}")
    return number


def _trim(number: float, decimals: int) -> str:
    text = f"{number:.{decimals}f}".rstrip("0").rstrip(".")
    return text or "0"
