"""The synthetic dcgm-exporter: its text as a file and over HTTP, checked by promtool and an independent parser.

promtool (Prometheus's own linter, `make tools` installs it) reports two findings on every real dcgm-exporter
scrape, the camelCase label ``modelName`` and the counter ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` without
``_total``. The text keeps both, because scrapers must meet dcgm-exporter's names; the promtool check is
that nothing else is reported, and that the text renamed to Prometheus's conventions passes with status 0.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rxstreamer.exporter_server import ExporterOptions, RunningExporter, start_exporter
from rxstreamer.exposition import CONTENT_TYPE, FAMILIES, render_scrape, scrape_text
from rxstreamer.generate import METRIC_NAMES, Fleet, generate_records
from tests.conftest import promtool_check
from tests.processes import REPO_ROOT, child_env, run_command, rxstreamer_command, watch

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
FAMILY_NAMES = [family.name for family in FAMILIES]
# dcgm-exporter's label order (the real A800 scrape in ../shared/realdata, without MIG labels).
LABEL_ORDER = ["gpu", "UUID", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"]
# What promtool reports about every real dcgm-exporter scrape, and so about this one.
DCGM_NAMING_FINDINGS = (
    re.compile(r"DCGM_FI_\w+ label names should be written in 'snake_case' not 'camelCase'"),
    re.compile(rf'{ENERGY} counter metrics should have "_total" suffix'),
)
SAMPLE_LINE = re.compile(r"(?P<name>[A-Z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)")


# --- helpers ------------------------------------------------------------------------------------------


def assert_passes_promtool(promtool: str, text: str) -> None:
    """Parsed by promtool with only dcgm-exporter's own naming findings, and clean once renamed."""
    status, findings = promtool_check(promtool, text)
    assert status in (0, 3), findings  # 1: promtool could not parse it
    assert [line for line in findings if not any(known.fullmatch(line) for known in DCGM_NAMING_FINDINGS)] == []
    conventional = re.sub(rf"\b{ENERGY}\b", f"{ENERGY}_total", text.replace("modelName=", "model_name="))
    assert promtool_check(promtool, conventional) == (0, [])


def parse(text: str) -> list[Metric]:
    """The families prometheus_client's own text parser reads (an independent implementation of the format)."""
    parser = pytest.importorskip("prometheus_client.parser", reason="pip install 'prometheus-client>=0.20'")
    families: Iterable[Metric] = parser.text_string_to_metric_families(text)
    return list(families)


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each sample's identity, name and labels, without its value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))) for family in parse(text) for sample in family.samples}


def values(text: str) -> dict[tuple[str, str], float]:
    """(family, UUID) -> value."""
    return {(family.name, sample.labels["UUID"]): sample.value for family in parse(text) for sample in family.samples}


def fetch(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode("utf-8")


@pytest.fixture
def serving() -> Iterator[Callable[..., RunningExporter]]:
    """Start in-process exporters on 127.0.0.1:0; each is closed at the end of the test."""
    started: list[RunningExporter] = []

    def start(**options: Any) -> RunningExporter:
        running = start_exporter(ExporterOptions(listen="127.0.0.1:0", **options))
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


# --- the file -----------------------------------------------------------------------------------------


def test_the_file_passes_promtool(tmp_path: Path, promtool: str) -> None:
    """`generate --format prometheus -o F`: one scrape that promtool parses, the same text as scrape_text."""
    path = tmp_path / "scrape.prom"
    finished = run_command("generate", "--format", "prometheus", "-o", str(path), "--gpus", "4", "--seed", "5")
    assert (finished.returncode, finished.stderr) == (0, f"rxstreamer: wrote one scrape of 44 samples to {path}\n")
    text = path.read_text(encoding="utf-8")
    assert text == scrape_text(gpus=4, seed=5)
    assert_passes_promtool(promtool, text)


def test_promtool_is_a_real_check(promtool: str) -> None:
    """It rejects what is wrong: two scrapes concatenated repeat every family (why a file is ONE scrape)."""
    text = scrape_text(gpus=2)
    status, findings = promtool_check(promtool, text + text)
    assert status == 1
    assert any("second HELP line" in line for line in findings), findings


def test_the_text_has_dcgm_exporters_shape() -> None:
    """HELP and TYPE once per family, in dcgm-exporter's order; labels in its order; no timestamps."""
    text = scrape_text(gpus=3)
    lines = text.splitlines()
    headers = [line for line in lines if line.startswith("#")]
    assert headers == [
        line
        for family in FAMILIES
        for line in (f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.type}")
    ]
    samples = [SAMPLE_LINE.fullmatch(line) for line in lines if not line.startswith("#")]
    assert all(samples)
    assert len(samples) == 3 * len(FAMILIES)
    for match in samples:
        assert match is not None
        assert re.findall(r'(\w+)="', match["labels"]) == LABEL_ORDER
    assert text.endswith("\n")
    assert {family.type for family in FAMILIES if family.name == ENERGY} == {"counter"}
    assert sorted(FAMILY_NAMES) == sorted([*METRIC_NAMES, ENERGY])


def test_the_text_round_trips_through_prometheus_client() -> None:
    """gpus x families samples, every family's type and help, the labels and values as written."""
    hosts, gpus = 2, 4
    text = scrape_text(hosts=hosts, gpus=gpus, seed=3)
    families = parse(text)
    assert [(f.name, f.type, f.documentation) for f in families] == [(f.name, f.type, f.help) for f in FAMILIES]
    assert sum(len(family.samples) for family in families) == hosts * gpus * len(FAMILIES)
    for family in families:
        # The parser names a counter's samples <name>_total, dcgm-exporter's name or not.
        expected_name = f"{ENERGY}_total" if family.name == ENERGY else family.name
        assert {sample.name for sample in family.samples} == {expected_name}
        assert [(s.labels["Hostname"], s.labels["gpu"]) for s in family.samples] == [
            (f"dgx-a-{host:03d}", str(gpu)) for host in range(1, hosts + 1) for gpu in range(gpus)
        ]
    written = {
        (match["name"], dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))["UUID"]): float(match["value"])
        for line in text.splitlines()
        if (match := SAMPLE_LINE.fullmatch(line))
    }
    assert values(text) == written


def test_the_first_scrape_holds_the_csvs_first_scrape_values() -> None:
    """Same simulation, same seed: the values the CSV writes for its first scrape (power as DCGM's %f)."""
    in_csv = {(r[1], r[4]): float(r[10]) for r in generate_records(hosts=1, gpus=8, scrapes=1, seed=4)}
    in_text = {key: value for key, value in values(scrape_text(seed=4)).items() if key[0] != ENERGY}
    assert in_text == in_csv


def test_the_same_seed_gives_the_same_scrape() -> None:
    assert scrape_text(seed=9) == scrape_text(seed=9)
    assert scrape_text(seed=9) != scrape_text(seed=10)


def test_the_energy_counter_only_grows() -> None:
    fleet = Fleet(gpus=4, seed=2)
    scrapes = [values(render_scrape(fleet.advance())) for _ in range(3)]
    energy = [{key: value for key, value in scrape.items() if key[0] == ENERGY} for scrape in scrapes]
    for before, after in pairwise(energy):
        assert all(after[key] > before[key] for key in before)


# --- served -------------------------------------------------------------------------------------------


def test_the_served_text_passes_promtool(serving: Callable[..., RunningExporter], promtool: str) -> None:
    """GET /metrics: dcgm-exporter's content type, and text that is the file for the same seed."""
    running = serving(seed=6, gpus=4)
    status, content_type, text = fetch(f"{running.url}/metrics")
    assert (status, content_type) == (200, CONTENT_TYPE)
    assert text == scrape_text(seed=6, gpus=4)
    assert_passes_promtool(promtool, text)


def test_two_scrapes_differ_in_values_not_in_series(serving: Callable[..., RunningExporter]) -> None:
    running = serving(seed=1)
    first, second = (fetch(f"{running.url}/metrics")[2] for _ in range(2))
    assert series(first) == series(second)
    assert len(series(first)) == 8 * len(FAMILIES)
    before, after = values(first), values(second)
    assert before != after
    assert all(after[key] > before[key] for key in before if key[0] == ENERGY)


def test_virtual_exporters_are_distinct_fleets_with_the_same_families(
    serving: Callable[..., RunningExporter],
) -> None:
    running = serving(exporters=3, gpus=2, seed=7)
    texts = [fetch(f"{running.url}/exporter/{index}/metrics")[2] for index in range(3)]
    uuids: list[set[str]] = []
    hostnames: list[set[str]] = []
    for text in texts:
        families = parse(text)
        assert [family.name for family in families] == FAMILY_NAMES
        assert sum(len(family.samples) for family in families) == 2 * len(FAMILIES)
        uuids.append({sample.labels["UUID"] for family in families for sample in family.samples})
        hostnames.append({sample.labels["Hostname"] for family in families for sample in family.samples})
    assert [len(found) for found in uuids] == [2, 2, 2]
    assert len(set.union(*uuids)) == 6
    assert hostnames == [{"dgx-a-001"}, {"dgx-a-002"}, {"dgx-a-003"}]
    # /metrics is exporter 0 (its second scrape here), with the seed's own fleet.
    assert series(fetch(f"{running.url}/metrics")[2]) == series(texts[0])
    assert texts[0] == scrape_text(gpus=2, seed=7)
    assert fetch(f"{running.url}/exporter/3/metrics")[0] == 404


def test_health_and_unknown_paths(serving: Callable[..., RunningExporter]) -> None:
    running = serving(exporters=2)
    assert fetch(f"{running.url}/health")[::2] == (200, "OK")
    assert fetch(f"{running.url}/exporter/1/health")[::2] == (200, "OK")
    assert fetch(f"{running.url}/exporter/2/health")[0] == 404
    assert fetch(f"{running.url}/")[0] == 404
    assert running.exporters.scrapes_served == 0  # health checks move no simulation on


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_exporter_process_serves_until_a_stop_signal(stop: signal.Signals, promtool: str) -> None:
    """`generate --format prometheus --serve 127.0.0.1:0`: logs its port, serves /metrics, exits 0 on a signal."""
    process = subprocess.Popen(
        rxstreamer_command("generate", "--format", "prometheus", "--serve", "127.0.0.1:0", "--log-format", "json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    watched = watch(process)
    try:
        started = watched.wait_for_event("exporter.started")
        status, content_type, text = fetch(f"http://127.0.0.1:{started['port']}/metrics")
    finally:
        process.send_signal(stop)  # the exporter stops whatever happened above
    finished = watched.finish(timeout=20)
    assert (finished.returncode, finished.stderr) == (0, "")
    assert (status, content_type) == (200, CONTENT_TYPE)
    assert text == scrape_text()
    assert_passes_promtool(promtool, text)
    assert [line["event"] for line in finished.lines] == ["exporter.started", "exporter.stopping", "exporter.stopped"]
    assert finished.lines[1]["signal"] == stop.name
    assert finished.lines[2]["scrapes"] == 1


@pytest.mark.integration
def test_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        finished = run_command("generate", "--format", "prometheus", "--serve", address)
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == [
        f"rxstreamer generate: cannot listen on {address}: the port is in use; stop what listens there or "
        "choose another address"
    ]
    assert finished.stdout == ""


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--format", "prometheus", "-o", "-", "--rows", "5"], "--rows = 5: applies to CSV"),
        (["--format", "prometheus", "-o", "-", "--exporters", "2"], "--exporters = 2: applies to --serve only"),
        (["--format", "csv", "--serve", "127.0.0.1:0"], "--serve = '127.0.0.1:0': serves Prometheus text"),
        (["--serve", "localhost"], "--serve = 'localhost': expected HOST:PORT"),
    ],
)
def test_options_that_do_not_apply_are_usage_errors(args: list[str], complaint: str) -> None:
    finished = run_command("generate", *args)
    assert finished.returncode == 2
    assert complaint in finished.stderr
    assert finished.stdout == ""
