"""Scraping live endpoints: the schedule on a virtual clock, and real HTTP servers on 127.0.0.1 for the rest."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import Any

import pytest
from structlog.testing import capture_logs

from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.sources.base import Live, Source
from rxstreamer.sources.scrape import ScrapeRows, ScrapeSchedule
from tests.processes import free_port

GOOD = (
    "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
    "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
    'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a",device="nvidia0",modelName="H100",Hostname="node-1"} 41\n'
    'DCGM_FI_DEV_GPU_TEMP{gpu="1",UUID="GPU-b",device="nvidia1",modelName="H100",Hostname="node-1"} 43\n'
)


# --- the schedule --------------------------------------------------------------------------------------


def test_the_first_scrape_is_at_once_then_one_per_slot() -> None:
    schedule = ScrapeSchedule(interval=10.0)
    assert schedule.due(1000.5) == (100, 0.0)
    schedule.taken(100)
    assert schedule.due(1003.0) == (101, 7.0)
    assert schedule.due(1010.0) == (101, 0.0)
    schedule.taken(101)
    assert schedule.skipped == 0


def test_slots_that_went_by_while_rows_were_published_are_skipped_and_counted() -> None:
    schedule = ScrapeSchedule(interval=10.0)
    schedule.taken(100)
    assert schedule.due(1035.0) == (103, 0.0)  # 101 and 102 went by
    schedule.taken(103)
    assert schedule.skipped == 2
    assert schedule.due(1036.0) == (104, 4.0)


def test_a_resumed_schedule_waits_for_the_slot_after_the_checkpointed_one() -> None:
    schedule = ScrapeSchedule(interval=10.0, next_slot=101)
    assert schedule.due(1004.0) == (101, 6.0)  # slot 100 was acknowledged: not scraped again
    schedule.taken(101)
    assert schedule.skipped == 0


# --- real HTTP endpoints ------------------------------------------------------------------------------


class Endpoint:
    """A real HTTP server on 127.0.0.1 answering each GET with what ``answer`` returns: (status, body)."""

    def __init__(self, answer: Callable[[int], tuple[int, bytes]]) -> None:
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests += 1
                status, body = answer(endpoint.requests)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the scraper gave up (its timeout)
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Callable[[Callable[[int], tuple[int, bytes]]], Endpoint]]:
    started: list[Endpoint] = []

    def start(answer: Callable[[int], tuple[int, bytes]]) -> Endpoint:
        started.append(Endpoint(answer))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


class VirtualClock:
    """Wall time that moves only when the source sleeps: the schedule runs without waiting for real."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scraping(targets: list[str], clock: VirtualClock, **options: Any) -> tuple[ScrapeRows, list[Rejection]]:
    rejected: list[Rejection] = []
    options.setdefault("interval", 10.0)
    options.setdefault("timeout", 2.0)
    rows = ScrapeRows(targets, on_reject=rejected.append, clock=clock, sleep=clock.sleep, **options)
    return rows, rejected


def test_a_scraping_source_is_a_live_source() -> None:
    rows, _ = scraping(["http://127.0.0.1:1/metrics"], VirtualClock(0.0))
    assert isinstance(rows, Source)
    assert isinstance(rows, Live)


def test_each_scrape_is_stamped_with_its_time_and_positioned_at_its_slot(endpoints: Any) -> None:
    endpoint = endpoints(lambda n: (200, GOOD.replace(" 41\n", f" {40 + n}\n").encode()))
    clock = VirtualClock(1000.5)
    rows, rejected = scraping([endpoint.url], clock)
    iterator = iter(rows)
    first = list(islice(iterator, 2))
    assert rows.position == Position(100, 1)
    second = list(islice(iterator, 2))
    assert rows.position == Position(101, 2)
    assert clock.sleeps == [9.5]
    assert [row.timestamp for row in first] == [datetime.fromtimestamp(1000.5, UTC)] * 2
    assert [row.timestamp for row in second] == [datetime.fromtimestamp(1010.0, UTC)] * 2
    assert [(row.uuid, row.value) for row in first + second] == [
        ("GPU-a", 41.0),
        ("GPU-b", 43.0),
        ("GPU-a", 42.0),
        ("GPU-b", 43.0),
    ]
    assert rejected == []
    assert rows.stats.rows_read == 4
    assert rows.stats.passes == 2


def test_targets_that_fail_do_not_hold_up_the_others_and_are_logged_once_per_state_change(endpoints: Any) -> None:
    good = endpoints(lambda n: (200, GOOD.encode()))
    failing = endpoints(lambda n: (500, b"oops") if n <= 2 else (200, GOOD.encode()))
    garbage = endpoints(lambda n: (200, b"<html>not metrics</html>\n"))
    down = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    clock = VirtualClock(1000.0)
    rows, rejected = scraping([good.url, failing.url, garbage.url, down], clock)
    with capture_logs() as logs:
        iterator = iter(rows)
        received = list(islice(iterator, 2 + 2 + 2 + 2))  # scrape 1: good; 2: good; 3: good and failing
        rows.interrupt()
        assert list(iterator) == []
    assert [row.uuid for row in received] == ["GPU-a", "GPU-b"] * 4
    downs = [(entry["target"], entry["state"]) for entry in logs if entry["event"] == "scrape.target_down"]
    assert sorted(downs) == sorted([(failing.url, "http_500"), (garbage.url, "no_samples"), (down, "unreachable")])
    ups = [entry["target"] for entry in logs if entry["event"] == "scrape.target_up"]
    assert ups == [good.url, failing.url]
    stats = rows.target_stats
    assert (stats[good.url].scrapes_ok, stats[good.url].scrapes_failed) == (3, 0)
    assert (stats[failing.url].scrapes_ok, stats[failing.url].failed_by_state) == (1, {"http_500": 2})
    assert stats[garbage.url].failed_by_state == {"no_samples": 3}
    assert stats[down].failed_by_state == {"unreachable": 3}
    assert {rejection.reason for rejection in rejected} != set()
    assert all(rejection.detail.startswith(f"{garbage.url}: ") for rejection in rejected)
    assert sum(target.rows_read for target in stats.values()) == rows.stats.rows_read == 8 + len(rejected)
    assert sum(target.rows_rejected for target in stats.values()) == rows.stats.rows_rejected == len(rejected)
    summaries = [entry for entry in logs if entry["event"] == "scrape.target_summary"]
    assert {entry["target"]: entry["rows_read"] for entry in summaries} == {
        target: target_stats.rows_read for target, target_stats in stats.items()
    }


def test_a_target_slower_than_the_timeout_is_cut_off_and_the_others_still_arrive(endpoints: Any) -> None:
    release = threading.Event()

    def stall(_: int) -> tuple[int, bytes]:
        release.wait(10.0)
        return 200, GOOD.encode()

    good = endpoints(lambda n: (200, GOOD.encode()))
    slow = endpoints(stall)
    rows, _ = scraping([slow.url, good.url], VirtualClock(1000.0), timeout=0.3)
    try:
        with capture_logs() as logs:
            iterator = iter(rows)
            received = list(islice(iterator, 2))
            rows.interrupt()
            assert list(iterator) == []
    finally:
        release.set()
    assert [row.uuid for row in received] == ["GPU-a", "GPU-b"]
    assert rows.target_stats[slow.url].failed_by_state == {"timeout": 1}
    assert [entry["state"] for entry in logs if entry["event"] == "scrape.target_down"] == ["timeout"]


def test_the_rows_of_a_target_that_answered_do_not_wait_for_a_slow_one(endpoints: Any) -> None:
    release = threading.Event()

    def stall(_: int) -> tuple[int, bytes]:
        release.wait(10.0)
        return 200, GOOD.replace("GPU-", "SLOW-").encode()

    slow = endpoints(stall)
    good = endpoints(lambda n: (200, GOOD.encode()))
    rows, _ = scraping([slow.url, good.url], VirtualClock(1000.0), timeout=8.0)
    iterator = iter(rows)
    try:
        first = list(islice(iterator, 2))
        assert rows.target_stats[slow.url].state == "unknown"  # still out: its rows were not waited for
    finally:
        release.set()
    later = list(islice(iterator, 2))
    rows.interrupt()
    assert list(iterator) == []
    assert [row.uuid for row in first + later] == ["GPU-a", "GPU-b", "SLOW-a", "SLOW-b"]
    assert rows.target_stats[slow.url].state == "up"


def test_a_resumed_source_waits_for_the_slot_after_its_checkpoint(endpoints: Any) -> None:
    endpoint = endpoints(lambda n: (200, GOOD.encode()))
    clock = VirtualClock(1003.0)
    rows, _ = scraping([endpoint.url], clock, start=Position(100, 7))
    next(iter(rows))
    assert clock.sleeps == [7.0]
    assert rows.position == Position(101, 8)
    assert endpoint.requests == 1


def test_interrupt_ends_a_source_that_is_waiting_for_its_next_scrape(endpoints: Any) -> None:
    endpoint = endpoints(lambda n: (200, GOOD.encode()))
    rows = ScrapeRows([endpoint.url], interval=3600.0, timeout=2.0)
    iterator = iter(rows)
    assert len(list(islice(iterator, 2))) == 2
    finished = threading.Event()

    def drain() -> None:
        list(iterator)
        finished.set()

    threading.Thread(target=drain, daemon=True).start()
    rows.interrupt()
    assert finished.wait(5.0), "the source kept waiting for a scrape an hour away"


def test_rows_keep_mig_instances_apart_and_rejections_name_their_target(endpoints: Any) -> None:
    body = (
        'DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-a",device="nvidia0",GPU_I_PROFILE="1g.10gb",GPU_I_ID="3"} 1410\n'
        'DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-a",device="nvidia0",GPU_I_PROFILE="1g.10gb",GPU_I_ID="5"} 1410\n'
        'DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-a"} N/A\n'
    )
    endpoint = endpoints(lambda n: (200, body.encode()))
    rows, rejected = scraping([endpoint.url], VirtualClock(1000.0))
    iterator = iter(rows)
    received: list[MetricRow] = list(islice(iterator, 2))
    assert [row.labels["GPU_I_ID"] for row in received] == ["3", "5"]
    rows.interrupt()
    assert list(iterator) == []
    assert [(rejection.line, rejection.reason) for rejection in rejected] == [(3, "value_not_numeric")]
    assert rejected[0].detail.startswith(endpoint.url)
