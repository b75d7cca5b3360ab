"""Scraping live exporters end to end: three `generate --serve` processes, one killed and restarted mid-run.

Real processes throughout: the exporters, the broker and the streamer each run as `python -m rxstreamer`,
on 127.0.0.1; what arrived is read back from the broker with `tail`.
"""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.processes import (
    REPO_ROOT,
    Watched,
    broker_process,
    child_env,
    event,
    free_port,
    read_topic,
    rxstreamer_command,
    start_watched_streamer,
    watch,
)

pytestmark = pytest.mark.integration

INTERVAL_S = 1.0
SHUTDOWN_TIMEOUT_S = 10.0


def start_exporter(port: int, seed: int) -> Watched:
    process = subprocess.Popen(
        rxstreamer_command(
            "generate", "--serve", f"127.0.0.1:{port}", "--gpus", "2", "--seed", str(seed), "--log-format", "json"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    exporter = watch(process)
    exporter.wait_for_event("exporter.started")
    return exporter


@contextmanager
def exporters(count: int) -> Iterator[list[tuple[int, Watched]]]:
    running = [(port, start_exporter(port, seed)) for seed, port in enumerate(free_port() for _ in range(count))]
    try:
        yield running
    finally:
        for _, exporter in running:
            if exporter.process.poll() is None:
                exporter.process.kill()
            exporter.finish(timeout=10)


def test_three_exporters_one_killed_and_restarted_the_others_scraped_without_a_gap() -> None:
    with exporters(3) as running, broker_process() as broker:
        urls = [f"http://127.0.0.1:{port}/metrics" for port, _ in running]
        gpus = {url: set(re.findall(r'UUID="([^"]+)"', _scrape(url))) for url in urls}
        assert all(len(uuids) == 2 for uuids in gpus.values())
        streamer = start_watched_streamer(
            *(option for url in urls for option in ("--metrics-path", url)),
            "--mq-address",
            broker.address,
            "--interval",
            "0s",
            "--batch-size",
            "16",
            settings={
                "RXSTREAMER_TELEMETRY__SCRAPE_INTERVAL": f"{INTERVAL_S}s",
                "RXSTREAMER_SHUTDOWN__TIMEOUT": f"{SHUTDOWN_TIMEOUT_S}s",
            },
        )
        try:
            streamer.wait_for_event("scrape.target_up", count=3)
            port, victim = running[2]
            victim.process.kill()
            victim.finish(timeout=10)
            down = streamer.wait_for_event("scrape.target_down", timeout=10)
            killed_at = datetime.now().astimezone()
            time.sleep(2 * INTERVAL_S)  # two more scrapes that the victim misses: what "no gap" is measured on
            running[2] = (port, start_exporter(port, seed=2))
            streamer.wait_for_event("scrape.target_up", count=4, timeout=10)
            time.sleep(2 * INTERVAL_S)
            stop_requested = time.monotonic()
            streamer.process.send_signal(signal.SIGTERM)
            finished = streamer.finish(timeout=SHUTDOWN_TIMEOUT_S + 20)
            stopped_after = time.monotonic() - stop_requested
        finally:
            if streamer.process.poll() is None:
                streamer.process.kill()
        received = read_topic(broker.address)

    assert finished.returncode == 0, finished.stderr
    assert stopped_after < SHUTDOWN_TIMEOUT_S
    assert down["target"] == urls[2]
    assert down["state"] == "unreachable"

    # Each exporter (told apart by its GPUs' uuids) and the scrape times at which its rows were stamped.
    exporter_of = {uuid: url for url, uuids in gpus.items() for uuid in uuids}
    by_exporter: dict[str, set[str]] = defaultdict(set)
    for metric in received:
        by_exporter[exporter_of[metric["uuid"]]].add(metric["timestamp"])
    assert sorted(by_exporter) == sorted(urls)
    every_scrape = sorted(set.union(*by_exporter.values()), key=_moment)
    steady = [times for times in by_exporter.values() if times == set(every_scrape)]
    assert len(steady) == 2, "the two exporters that stayed up were not in every scrape"
    # Every scrape the streamer took is in the stream, and slots went unscraped only as many as it counted
    # (when the machine is too busy to keep up, a scrape waits for the pipeline and the slots between are skipped).
    scrapes = event(finished.lines, "scrape.summary")
    assert len(every_scrape) == scrapes["scrapes"]
    gaps = [_moment(later) - _moment(earlier) for earlier, later in itertools.pairwise(every_scrape)]
    allowed = timedelta(seconds=(scrapes["scrapes_skipped"] + 1.5) * INTERVAL_S)
    assert max(gaps) < allowed, f"a scrape interval was missed without being counted: {max(gaps)}"
    (restarted,) = [times for times in by_exporter.values() if times != set(every_scrape)]
    missed = set(every_scrape) - restarted
    assert len(missed) >= 2
    assert any(_moment(moment) > killed_at for moment in restarted - missed), "the restarted exporter did not resume"

    assert_counts_add_up(finished.summary, finished.lines, urls, published=len(received))


def assert_counts_add_up(summary: dict[str, Any], lines: list[dict[str, Any]], urls: list[str], published: int) -> None:
    """The summary accounts for every row read, and the per-target lines add up to it."""
    assert summary["reason"] == "signal"
    assert summary["rows_read"] == (
        summary["rows_published"] + summary["rows_rejected"] + summary["rows_filtered"] + summary["rows_in_flight"]
    )
    assert summary["rows_published"] == published
    targets = [line for line in lines if line.get("event") == "scrape.target_summary"]
    assert sorted(line["target"] for line in targets) == sorted(urls)
    assert sum(line["rows_read"] for line in targets) == summary["rows_read"]
    assert sum(line["rows_rejected"] for line in targets) == summary["rows_rejected"]
    (victim_summary,) = [line for line in targets if line["target"] == urls[2]]
    assert victim_summary["failed_by_state"]["unreachable"] >= 2
    assert victim_summary["state"] == "up"


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_scraping_streamer_restarted_without_a_checkpoint_is_not_refused_by_the_queue() -> None:
    """Its producer id is the same on every start; its batches are numbered from the clock, so the second run's
    batches never reuse a (producer id, sequence) the broker holds with other content."""
    with exporters(1) as running, broker_process() as broker:
        url = f"http://127.0.0.1:{running[0][0]}/metrics"
        runs = []
        for _ in range(2):
            streamer = start_watched_streamer(
                "--metrics-path", url, "--mq-address", broker.address, "--interval", "0s", "--batch-size", "8",
                settings={"RXSTREAMER_TELEMETRY__SCRAPE_INTERVAL": f"{INTERVAL_S}s"},
            )  # fmt: skip
            streamer.wait_for_event("scrape.target_up")
            time.sleep(INTERVAL_S)
            streamer.process.send_signal(signal.SIGTERM)
            runs.append(streamer.finish(timeout=SHUTDOWN_TIMEOUT_S + 20))
        received = read_topic(broker.address, with_batch=True)
    assert [run.returncode for run in runs] == [0, 0], runs[1].stderr
    assert runs[1].summary["duplicates"] == 0
    producers = {metric["producer_id"] for metric in received}
    assert len(producers) == 1
    assert len(received) == sum(run.summary["rows_published"] for run in runs)
