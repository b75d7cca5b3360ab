"""telemetry.metrics_path: a file to stream, or endpoints to scrape, from every layer; and the scrape timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rxstreamer.cli import _parser as build_parser
from rxstreamer.config import ConfigError, load_settings, settings_summary

A = "http://10.0.0.1:9400/metrics"
B = "https://node-2.example:9400/metrics"


def test_a_file_path_stays_a_path() -> None:
    settings = load_settings(overrides={"telemetry.metrics_path": "data/scrape.prom"})
    assert settings.telemetry.metrics_path == Path("data/scrape.prom")


def test_urls_from_a_file_the_environment_and_repeated_flags(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(f'[telemetry]\nmetrics_path = ["{A}", "{B}"]\n')
    assert load_settings(config).telemetry.metrics_path == (A, B)
    from_env = load_settings(environ={"RXSTREAMER_TELEMETRY__METRICS_PATH": f"{A}, {B}"})
    assert from_env.telemetry.metrics_path == (A, B)
    args = build_parser().parse_args(["run", "--metrics-path", A, "--metrics-path", B, "--metrics-path", A])
    from_flags = load_settings(overrides={"telemetry.metrics_path": vars(args)["telemetry.metrics_path"]})
    assert from_flags.telemetry.metrics_path == (A, B)  # a repeated target is scraped once
    assert settings_summary(from_flags)["telemetry.metrics_path"] == [A, B]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([A, "local.csv"], "a file is streamed on its own, not beside URLs or other files"),
        (["one.csv", "two.csv"], "a file is streamed on its own, not beside URLs or other files"),
        ("ftp://10.0.0.1/metrics", "'ftp://10.0.0.1/metrics' is not an http:// or https:// URL with a host"),
        ("http:///metrics", "'http:///metrics' is not an http:// or https:// URL with a host"),
        ([], "must be a file path, or http:// or https:// URLs to scrape (a list, or separated by commas)"),
    ],
)
def test_inputs_that_cannot_be_read_are_refused_with_what_is_allowed(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"telemetry.metrics_path": value})
    assert caught.value.setting == "telemetry.metrics_path"
    assert caught.value.allowed.endswith(problem)


def test_the_default_scrape_timeout_fits_any_interval() -> None:
    settings = load_settings(overrides={"telemetry.scrape_interval": "2s"})
    assert settings.telemetry.scrape_timeout == 0.0  # until the next scrape is due


def test_a_scrape_timeout_longer_than_the_interval_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"telemetry.scrape_interval": "5s", "telemetry.scrape_timeout": "6s"})
    assert str(caught.value) == "telemetry.scrape_timeout = '6s': must be <= telemetry.scrape_interval (5s)"
