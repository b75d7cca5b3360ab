"""Duration and size parsing for settings and flags."""

from __future__ import annotations

import math

import pytest

from rxstreamer.durations import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("0ms", 0.0),
        ("  2m  ", 120.0),
        ("250 ms", 0.25),
        ("5", 5.0),
        ("0.25", 0.25),
        (5, 5.0),
        (0, 0.0),
        (0.1, 0.1),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    """Units ms/s/m/h, decimals, whitespace and plain numbers (seconds) all parse to seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1s", "must not be negative"),
        (-0.5, "must not be negative"),
        ("", "empty"),
        ("   ", "empty"),
        ("5x", "unknown unit 'x' (allowed: ms, s, m, h)"),
        ("1M", "unknown unit 'M'"),
        ("1d", "unknown unit 'd'"),
        ("fast", "expected a duration"),
        ("1e3s", "expected a duration"),
        ("+1s", "expected a duration"),
        ("1s2m", "expected a duration"),
        ("inf", "expected a duration"),
        ("nan", "expected a duration"),
        (True, "boolean"),
        (False, "boolean"),
        (math.nan, "NaN"),
        (math.inf, "finite"),
        ("9" * 400 + "s", "finite"),
        (10**400, "too large"),
        (None, "got NoneType"),
        ([1], "got list"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    """Negatives, empties, unknown units, booleans and non-finite values fail with what is allowed."""
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.1 * 3, "300ms"),
        (0.0005, "0.5ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (60, "1m"),
        (90, "90s"),
        (120, "2m"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "24h"),
        (-2.5, "-2.5s"),
        (math.nan, "nan"),
        (math.inf, "inf"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    """Log-friendly text in the largest whole unit, never raising for odd values."""
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.1, 0.25, 0.75, 1, 1.25, 59, 60, 61.5, 600, 3599, 3600, 7200])
def test_format_duration_round_trips(seconds: float) -> None:
    """Whatever format_duration writes, parse_duration reads back to the same number of seconds."""
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (268435456, 268435456),
        ("256MiB", 256 * 1024**2),
        ("64KiB", 64 * 1024),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("2KB", 2000),
        ("1GB", 10**9),
        ("1.5KiB", 1536),
        ("1.1MB", 1_100_000),
        ("100B", 100),
        ("100", 100),
        (" 8 MiB ", 8 * 1024**2),
        (1024.0, 1024),
        (0, 0),
    ],
)
def test_parse_size_accepts(value: object, size: int) -> None:
    """Plain byte counts and decimal (KB) or binary (KiB) units give exact whole bytes."""
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1MiB", "must not be negative"),
        (-5, "must not be negative"),
        ("0.3B", "whole number of bytes"),
        (1.5, "whole number of bytes"),
        ("10XB", "unknown unit 'XB'"),
        ("lots", "expected a size"),
        ("", "empty"),
        (True, "boolean"),
        (math.inf, "finite"),
        (None, "got NoneType"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    """Negative, fractional-byte, unknown-unit and non-numeric sizes fail with what is allowed."""
    with pytest.raises(ValueError, match="size") as caught:
        parse_size(value)
    assert message in str(caught.value)
