"""Live scraping at cluster scale: one process scraping K exporters of G GPUs, flat out and as a service.

One synthetic server process (``rxstreamer generate --serve 127.0.0.1:0 --exporters K --gpus G``) answers as K
dcgm-exporters on ``/exporter/<i>/metrics``; each GET advances that exporter's simulation by one scrape. Its CPU
is measured from ``/proc`` and reported apart, so it never counts as the scraper's.

1. **Capacity, in process.** One ``ScrapeRows`` over the K targets, pulled as fast as possible: its clock is
   virtual and only moves when the source asks to sleep until the next slot, so scrape rounds follow each
   other back to back, each one a real concurrent scrape of every target (thread pool, ``http_fetch`` with
   a real timeout) and a parse of every body. A round runs from the moment the previous round's last row was
   taken to its own last row. Per round: wall time, when its first row came, CPU time of this process
   (``time.process_time``: every thread), split into the fetch calls' own CPU (``time.thread_time`` around
   each call, in the pool's threads: the HTTP client) and the rest (parsing and the source's bookkeeping),
   samples; the first round (the server makes its fleets, the pool its threads) is a warm-up, left out of
   the medians. The same rounds are run again with the bodies kept in
   memory (``fetch`` returns the body of the first scrape): parsing and the pool alone, no HTTP.
2. **Sustained, as a service.** The real ``rxstreamer run`` with K ``--metrics-path`` URLs, ``scrape_interval``
   = ``--interval`` and ``scrape_timeout`` = ``--timeout``, ``--interval 0s --batch-size N``, into a real
   broker, for ``--rounds`` intervals after its first scrape, then SIGTERM. The measured window is aligned on
   the scrape slots (slot k starts at k x interval seconds since the epoch), so it holds exactly ``--rounds``
   scrapes. Every 0.1 s it samples the CPU (utime + stime, ``/proc/<pid>/stat``) of the streamer, the server
   and the broker, and the streamer's RSS. Per interval it reports the streamer's CPU, and how long after
   the slot its burst ended (the last 0.1 s in which it used 30% of a core or more): how long a scrape
   takes to be fetched, parsed, encoded and published. From the log:
   ``streamer.stopped`` (rows read / published / in flight), ``scrape.summary`` (scrapes, scrapes_skipped)
   and one ``scrape.target_summary`` per target (every target's ``scrapes_ok`` should equal ``scrapes``).
3. **Sizing.** From the CPU per exporter scrape of the service run, how many streamer processes a cluster
   of ``--cluster-exporters`` exporters scraped every ``--cluster-interval`` seconds needs, when each
   process may use ``--core-budget`` of one core (a Python process runs its parsing on one core at a time).

    .venv/bin/python bench/scraping.py [--exporters 200] [--gpus 8] [--interval 10] [--rounds 3]
        [--capacity-rounds 5] [--batch-size 1000] [--profile]

``--profile`` adds a cProfile of the in-process scrape (the consuming thread and every fetch thread, on
their CPU clocks; the profiler inflates small calls) and prints the top functions by own time.

Everything listens and connects on 127.0.0.1. (The server's listen backlog is 1024: with socketserver's
default of 5, K connections arriving at once overflowed it, and the kernel's SYN retries of 1 s, 3 s, 7 s
were measured instead of the scraper.)

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import itertools
import math
import os
import pstats
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    ServerProcess,
    child_env,
    drain,
    machine_description,
    markdown_table,
    median,
    parse_log_line,
    proc_cpu_seconds,
    proc_rss_mb,
    rxstreamer_command,
    source_revision,
    unique_topic,
    wait_for_started,
)

START_TIMEOUT = 60.0
#: The in-process source's interval and timeout: the interval never passes (the clock is virtual), the
#: timeout is real and generous, so a slow round shows as a long round rather than as failed targets.
CAPACITY_INTERVAL = 60.0
CAPACITY_TIMEOUT = 30.0
SAMPLE_EVERY = 0.1
#: A 0.1 s sample in which the streamer used at least this share of one core is part of a scrape's burst.
BUSY_SHARE = 0.3
#: The window starts this long before a slot (the scrape at that slot is inside it) and ends as long before
#: the slot after the last one measured.
LEAD = 0.3

Fetch = Callable[[str, float], bytes]


# --- the synthetic server ---------------------------------------------------------------------------------


class ExporterServer(ServerProcess):
    """``rxstreamer generate --serve`` as K virtual exporters in its own process; a context manager."""

    started = "exporter.started"

    def __init__(self, exporters: int, gpus: int, interval: float) -> None:
        super().__init__()
        self.exporters = exporters
        self.gpus = gpus
        self.interval = interval

    @property
    def targets(self) -> list[str]:
        return [f"http://127.0.0.1:{self.port}/exporter/{i}/metrics" for i in range(self.exporters)]

    def command(self) -> list[str]:
        return rxstreamer_command(
            "generate", "--serve", "127.0.0.1:0", "--exporters", str(self.exporters), "--gpus", str(self.gpus),
            "--scrape-interval", f"{self.interval:g}s", "--log-format", "json",
        )  # fmt: skip


# --- 1. capacity, in process --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One scrape round of every target, flat out, in this process."""

    wall_s: float  # previous round's last row → this round's last row
    first_row_s: float  # → this round's first row (the first body fetched and its first line parsed)
    cpu_s: float  # process_time over the round: every thread of this process
    fetch_cpu_s: float  # CPU of the fetch calls (the pool's threads: HTTP client), from time.thread_time
    server_cpu_s: float  # the exporter server's CPU over the round
    samples: int
    ok: int  # targets that gave rows this round
    failed: int

    @property
    def parse_cpu_s(self) -> float:
        """The rest: the consuming thread (splitting, parsing, the source's bookkeeping) and the pool's."""
        return self.cpu_s - self.fetch_cpu_s


def _quiet_logs() -> None:
    """The source's log lines (one per target at the end) would drown the output: warnings only, on stderr."""
    from rxstreamer.logs import configure_logging

    configure_logging("json", "warning", sys.stderr)


@dataclass(frozen=True)
class _Mark:
    """The counters at a round boundary."""

    wall: float
    cpu: float  # process_time
    fetch_cpu: float  # fetch calls so far
    server_cpu: float
    ok: int  # scrapes ok so far, every target
    failed: int


def scrape_rounds(targets: Sequence[str], rounds: int, server_pid: int, fetch: Fetch | None = None) -> list[Round]:
    """``rounds`` scrape rounds of ``targets``, back to back, each timed from its start to its last row."""
    from rxstreamer.sources.scrape import ScrapeRows, http_fetch

    inner = fetch or http_fetch
    virtual_now = math.floor(time.time() / CAPACITY_INTERVAL) * CAPACITY_INTERVAL
    marks: list[_Mark] = []  # at each round's start, and after the last one
    first_rows: dict[int, float] = {}  # round → wall time of its first row
    samples: dict[int, int] = {}
    fetch_cpu = [0.0]
    lock = threading.Lock()

    def timed_fetch(url: str, deadline: float) -> bytes:
        started = time.thread_time()
        try:
            return inner(url, deadline)
        finally:
            used = time.thread_time() - started
            with lock:
                fetch_cpu[0] += used

    def clock() -> float:
        return virtual_now

    def mark() -> None:
        stats = source.target_stats.values()
        ok, failed = sum(s.scrapes_ok for s in stats), sum(s.scrapes_failed for s in stats)
        with lock:
            fetched = fetch_cpu[0]
        marks.append(_Mark(time.perf_counter(), time.process_time(), fetched, proc_cpu_seconds(server_pid), ok, failed))

    def sleep(seconds: float) -> None:
        """Called between two rounds, once the last row was taken: the end of a round; the clock jumps."""
        nonlocal virtual_now
        mark()
        if len(marks) > rounds:
            source.interrupt()
        virtual_now += seconds

    source = ScrapeRows(
        targets, interval=CAPACITY_INTERVAL, timeout=CAPACITY_TIMEOUT, fetch=timed_fetch, clock=clock, sleep=sleep
    )
    mark()
    for _row in source:
        current = len(marks) - 1
        if current not in first_rows:
            first_rows[current] = time.perf_counter()
        samples[current] = samples.get(current, 0) + 1
    result = []
    for index in range(rounds):
        before, after = marks[index], marks[index + 1]
        result.append(
            Round(
                wall_s=after.wall - before.wall,
                first_row_s=first_rows.get(index, after.wall) - before.wall,
                cpu_s=after.cpu - before.cpu,
                fetch_cpu_s=after.fetch_cpu - before.fetch_cpu,
                server_cpu_s=after.server_cpu - before.server_cpu,
                samples=samples.get(index, 0),
                ok=after.ok - before.ok,
                failed=after.failed - before.failed,
            )
        )
    return result


def bodies_in_memory(targets: Sequence[str]) -> Fetch:
    """A fetch that answers every target with the body of one real scrape of it, kept in memory."""
    from rxstreamer.sources.scrape import http_fetch

    bodies = {target: http_fetch(target, time.monotonic() + CAPACITY_TIMEOUT) for target in targets}

    def fetch(url: str, _deadline: float) -> bytes:
        return bodies[url]

    return fetch


def profile_scrape(targets: Sequence[str], rounds: int, server_pid: int, top: int) -> str:
    """cProfile of ``rounds`` in-process rounds, every thread on its own CPU clock, merged; the top by own time."""
    from rxstreamer.sources.scrape import http_fetch

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    local = threading.local()

    def profiled_fetch(url: str, deadline: float) -> bytes:
        profile: cProfile.Profile | None = getattr(local, "profile", None)
        if profile is None:
            profile = local.profile = cProfile.Profile(time.thread_time)
            with lock:
                profiles.append(profile)
        profile.enable()
        try:
            return http_fetch(url, deadline)
        finally:
            profile.disable()

    main = cProfile.Profile(time.thread_time)
    main.enable()
    measured = scrape_rounds(targets, rounds, server_pid, fetch=profiled_fetch)
    main.disable()
    stats = pstats.Stats(main)
    for profile in profiles:
        stats.add(profile)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(own for _calls, _prim, own, _cum, _callers in entries.values()) or 1.0
    main_total = sum(own for _c, _p, own, _cu, _ca in pstats.Stats(main).stats.values())  # type: ignore[attr-defined]
    rows = []
    for (file, line, name), (_calls, calls, own, cumulative, _callers) in sorted(
        entries.items(), key=lambda item: -item[1][2]
    )[:top]:
        where = f"{os.path.relpath(file, REPO_ROOT) if file.startswith(str(REPO_ROOT)) else os.path.basename(file)}"
        rows.append(
            (
                f"`{name}` ({where}:{line})",
                f"{calls:,}",
                f"{own:.3f}",
                f"{cumulative:.3f}",
                f"{100 * own / total:.1f}%",
            )
        )
    samples = sum(r.samples for r in measured)
    return (
        f"#### Profile: {rounds} in-process rounds of {len(targets)} targets, {samples:,} samples\n\n"
        f"CPU seconds seen by the profiler: {total:.2f} ({main_total:.2f} on the consuming thread: parsing; "
        f"{total - main_total:.2f} in {len(profiles)} fetch threads: HTTP); the profiled rounds took "
        f"{sum(r.cpu_s for r in measured):.2f} CPU-s of this process in all, profiler included.\n\n"
        + markdown_table(("function", "calls", "own CPU s", "cumulative CPU s", "% of own"), rows)
        + "\n"
    )


# --- 2. sustained, as a service -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    streamer_cpu: float
    server_cpu: float
    broker_cpu: float
    rss_mb: float


@dataclass(frozen=True)
class Sustained:
    interval: float
    rounds: int
    window_s: float
    streamer_cpu_s: float
    server_cpu_s: float
    broker_cpu_s: float
    per_interval_cpu_s: list[float]
    per_interval_busy_s: list[float]  # slot → end of the last 0.1 s sample with BUSY_SHARE of a core
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float
    peak_rss_mb: float  # wait4, whole life
    startup_cpu_s: float  # spawn → streamer.started
    total_cpu_s: float  # wait4, whole life
    scrapes: int
    scrapes_expected: int  # slots from the first scrape to SIGTERM
    scrapes_skipped: int
    targets: int
    targets_every_scrape: int  # targets whose scrapes_ok == scrapes
    scrapes_failed: int
    failed_by_state: dict[str, int]
    rows_read: int
    rows_published: int
    rows_in_flight: int
    rows_rejected: int
    batches_published: int
    reason: str

    @property
    def cpu_percent(self) -> float:
        return 100 * self.streamer_cpu_s / self.window_s

    @property
    def cpu_per_scrape_ms(self) -> float:
        return 1000 * self.streamer_cpu_s / (self.rounds * self.targets)


@dataclass
class _Watched:
    """What watching one streamer run gave: the samples of the window and the streamer's log lines."""

    samples: list[Sample]
    first_slot: int
    started_at: float
    terminated_at: float
    startup_cpu_s: float
    usage: resource.struct_rusage  # from os.wait4
    lines: list[str]


def _watch_streamer(process: subprocess.Popen[str], pids: tuple[int, int], *, interval: float, rounds: int) -> _Watched:
    """Wait for ``streamer.started``, sample a window of ``rounds`` slots, SIGTERM the streamer and reap it."""
    assert process.stdout is not None
    server_pid, broker_pid = pids
    lines: list[str] = []
    try:
        wait_for_started(process, START_TIMEOUT)
        started_at = time.time()
        startup_cpu = proc_cpu_seconds(process.pid)
        reader = drain(process.stdout, lines)
        # The first scrape happens at once; the window starts at a later slot, once that one is done with.
        first_slot = math.floor(started_at / interval) + 1
        if first_slot * interval - started_at < interval / 2:
            first_slot += 1
        window_start, window_end = first_slot * interval - LEAD, (first_slot + rounds) * interval - LEAD

        def sample() -> Sample:
            return Sample(
                time.time(),
                proc_cpu_seconds(process.pid),
                proc_cpu_seconds(server_pid),
                proc_cpu_seconds(broker_pid),
                proc_rss_mb(process.pid),
            )

        time.sleep(max(0.0, window_start - time.time()))
        samples = [sample()]
        tick = 1
        while samples[-1].at < window_end:
            time.sleep(max(0.0, min(window_start + tick * SAMPLE_EVERY, window_end) - time.time()))
            samples.append(sample())
            tick += 1
    finally:
        terminated_at = time.time()
        process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=10)
    return _Watched(samples, first_slot, started_at, terminated_at, startup_cpu, usage, lines)


def _per_interval(watched: _Watched, interval: float, rounds: int) -> tuple[list[float], list[float]]:
    """The streamer's CPU in each interval, and when after its slot the last busy sample ended.

    A sample is busy when the streamer used at least BUSY_SHARE of a core during it: the scrape's burst.
    Between bursts the streamer wakes now and then (a 10 ms tick every second or two), which a share of the
    interval's CPU (reached when 95% was used, say) would take for work.
    """
    cpu, busy = [], []
    for index in range(rounds):
        slot = (watched.first_slot + index) * interval
        inside = [s for s in watched.samples if slot - LEAD <= s.at <= slot + interval - LEAD]
        cpu.append(inside[-1].streamer_cpu - inside[0].streamer_cpu)
        ends = [
            later.at
            for earlier, later in itertools.pairwise(inside)
            if later.streamer_cpu - earlier.streamer_cpu >= BUSY_SHARE * (later.at - earlier.at)
        ]
        busy.append(max(0.0, max(ends, default=slot) - slot))
    return cpu, busy


def sustained(
    server: ExporterServer, broker: Broker, *, interval: float, timeout: float, rounds: int, batch_size: int
) -> Sustained:
    """``rxstreamer run`` scraping every target of ``server`` every ``interval`` into ``broker``, watched."""
    assert broker.process is not None
    flags = [option for target in server.targets for option in ("--metrics-path", target)]
    command = rxstreamer_command(
        "run", *flags, "--mq-address", broker.address, "--topic", unique_topic("scrape"), "--interval", "0s",
        "--batch-size", str(batch_size), "--log-format", "json",
    )  # fmt: skip
    env = child_env(
        RXSTREAMER_TELEMETRY__SCRAPE_INTERVAL=f"{interval:g}s", RXSTREAMER_TELEMETRY__SCRAPE_TIMEOUT=f"{timeout:g}s"
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    watched = _watch_streamer(process, (server.pid, broker.process.pid), interval=interval, rounds=rounds)
    entries = [entry for entry in map(parse_log_line, watched.lines) if entry is not None]
    stopped = [entry for entry in entries if entry.get("event") == "streamer.stopped"]
    summary = [entry for entry in entries if entry.get("event") == "scrape.summary"]
    per_target = [entry for entry in entries if entry.get("event") == "scrape.target_summary"]
    if process.returncode != 0 or not stopped or not summary:
        raise RuntimeError(f"the streamer did not stop cleanly (exit {process.returncode}): {watched.lines[-3:]}")
    stop, scrapes = stopped[-1], int(summary[-1]["scrapes"])
    failed_by_state: dict[str, int] = {}
    for entry in per_target:
        for state, count in dict(entry.get("failed_by_state") or {}).items():
            failed_by_state[state] = failed_by_state.get(state, 0) + int(count)
    per_interval_cpu, per_interval_busy = _per_interval(watched, interval, rounds)
    samples, usage = watched.samples, watched.usage
    first, last = samples[0], samples[-1]
    return Sustained(
        interval=interval,
        rounds=rounds,
        window_s=last.at - first.at,
        streamer_cpu_s=last.streamer_cpu - first.streamer_cpu,
        server_cpu_s=last.server_cpu - first.server_cpu,
        broker_cpu_s=last.broker_cpu - first.broker_cpu,
        per_interval_cpu_s=per_interval_cpu,
        per_interval_busy_s=per_interval_busy,
        rss_start_mb=first.rss_mb,
        rss_end_mb=last.rss_mb,
        rss_max_mb=max(s.rss_mb for s in samples),
        peak_rss_mb=usage.ru_maxrss / 1024,
        startup_cpu_s=watched.startup_cpu_s,
        total_cpu_s=usage.ru_utime + usage.ru_stime,
        scrapes=scrapes,
        scrapes_expected=math.floor(watched.terminated_at / interval) - math.floor(watched.started_at / interval) + 1,
        scrapes_skipped=int(summary[-1]["scrapes_skipped"]),
        targets=len(per_target),
        targets_every_scrape=sum(1 for e in per_target if int(e["scrapes_ok"]) == scrapes),
        scrapes_failed=sum(int(e["scrapes_failed"]) for e in per_target),
        failed_by_state=failed_by_state,
        rows_read=int(stop["rows_read"]),
        rows_published=int(stop["rows_published"]),
        rows_in_flight=int(stop.get("rows_in_flight", 0)),
        rows_rejected=int(stop.get("rows_rejected", 0)),
        batches_published=int(stop.get("batches_published", 0)),
        reason=str(stop.get("reason")),
    )


# --- the report -----------------------------------------------------------------------------------------------


def _capacity_rows(label: str, rounds: list[Round], exporters: int) -> tuple[list[tuple[str, ...]], dict[str, float]]:
    """One table row per round (the first marked as warm-up) and the medians of the others."""
    rows: list[tuple[str, ...]] = []
    for number, r in enumerate(rounds, start=1):
        rows.append(
            (
                f"{label} {number}" + (" (warm-up)" if number == 1 and len(rounds) > 1 else ""),
                f"{r.wall_s:.3f}",
                f"{r.first_row_s:.3f}",
                f"{r.cpu_s:.3f}",
                f"{r.fetch_cpu_s:.3f} / {r.parse_cpu_s:.3f}",
                f"{r.server_cpu_s:.3f}",
                f"{r.samples:,}",
                f"{r.ok}/{exporters}" + (f" ({r.failed} failed)" if r.failed else ""),
                f"{r.ok / r.wall_s:,.0f}",
                f"{r.samples / r.wall_s:,.0f}",
                f"{1000 * r.cpu_s / max(r.ok, 1):.2f}",
            )
        )
    steady = rounds[1:] or rounds
    figures = {
        "wall_s": median(r.wall_s for r in steady),
        "cpu_s": median(r.cpu_s for r in steady),
        "fetch_cpu_s": median(r.fetch_cpu_s for r in steady),
        "parse_cpu_s": median(r.parse_cpu_s for r in steady),
        "server_cpu_s": median(r.server_cpu_s for r in steady),
        "scrapes_per_s": median(r.ok / r.wall_s for r in steady),
        "samples_per_s": median(r.samples / r.wall_s for r in steady),
        "cpu_ms_per_scrape": median(1000 * r.cpu_s / max(r.ok, 1) for r in steady),
        "cpu_us_per_sample": median(1e6 * r.cpu_s / max(r.samples, 1) for r in steady),
        "samples_per_scrape": median(r.samples / max(r.ok, 1) for r in steady),
    }
    return rows, figures


def run(
    *,
    exporters: int = 200,
    gpus: int = 8,
    interval: float = 10.0,
    rounds: int = 3,
    timeout: float = 5.0,
    capacity_rounds: int = 5,
    batch_size: int = 1000,
    cluster_exporters: int = 1250,
    cluster_interval: float = 10.0,
    core_budget: float = 0.5,
    profile: bool = False,
    profile_top: int = 20,
) -> Report:
    timeout = min(timeout, interval)  # the streamer refuses a timeout above the interval
    print(
        f"scraping: {exporters} exporters x {gpus} GPUs; capacity {capacity_rounds} + 1 rounds flat out; "
        f"service {rounds} x {interval:g} s",
        file=sys.stderr,
        flush=True,
    )
    _quiet_logs()
    load_before = os.getloadavg()
    profile_text = ""
    with ExporterServer(exporters, gpus, interval) as server:
        targets = server.targets
        live = scrape_rounds(targets, capacity_rounds + 1, server.pid)
        for number, r in enumerate(live, start=1):
            print(
                f"  live round {number}: {r.wall_s:.3f} s (1st row {r.first_row_s:.3f}), cpu {r.cpu_s:.2f} s, "
                f"server cpu {r.server_cpu_s:.2f} s, {r.samples:,} samples, {r.ok} ok, {r.failed} failed",
                file=sys.stderr,
                flush=True,
            )
        memory = scrape_rounds(targets, capacity_rounds + 1, server.pid, fetch=bodies_in_memory(targets))
        print(
            f"  in memory: median {median(r.wall_s for r in memory[1:] or memory):.3f} s a round",
            file=sys.stderr,
            flush=True,
        )
        if profile:
            profile_text = profile_scrape(targets, capacity_rounds, server.pid, profile_top)
        with Broker() as broker:
            service = sustained(
                server, broker, interval=interval, timeout=timeout, rounds=rounds, batch_size=batch_size
            )
    load_after = os.getloadavg()
    print(
        f"  service: {service.cpu_percent:.1f}% of a core, {service.scrapes} scrapes "
        f"({service.scrapes_skipped} skipped), {service.rows_published:,} rows published",
        file=sys.stderr,
        flush=True,
    )

    live_rows, cap = _capacity_rows("HTTP", live, exporters)
    memory_rows, mem = _capacity_rows("memory", memory, exporters)
    capacity_table = markdown_table(
        (
            "round", "wall s", "1st row at s", "CPU s", "HTTP / rest CPU s", "server CPU s", "samples",
            "targets ok", "scrapes/s", "samples/s", "CPU ms / scrape",
        ),
        live_rows + memory_rows,
    )  # fmt: skip

    # Sizing: CPU per exporter scrape as a service (scrape + parse + encode + publish), within a core budget.
    cluster_rate = cluster_exporters / cluster_interval  # scrapes a second, cluster-wide
    service_ms = service.cpu_per_scrape_ms
    cores_needed = cluster_rate * service_ms / 1000
    processes = max(1, math.ceil(cores_needed / core_budget))
    per_process = math.floor(core_budget * cluster_interval / (service_ms / 1000))
    flat_out_ms = cap["cpu_ms_per_scrape"]
    samples_per_scrape = service.rows_read / max(service.scrapes * exporters, 1)

    busy = ", ".join(f"{b:.1f}" for b in service.per_interval_busy_s)
    per_interval = ", ".join(f"{c:.2f}" for c in service.per_interval_cpu_s)
    every = service.targets_every_scrape == exporters and service.scrapes_skipped == 0 and not service.scrapes_failed
    service_rows = [
        ("window (aligned on the scrape slots)", f"{service.window_s:.1f} s = {rounds} x {interval:g} s", ""),
        ("scrapes (scrape.summary) / expected from the clock", f"{service.scrapes} / {service.scrapes_expected}",
         f"skipped {service.scrapes_skipped}"),
        ("targets scraped ok in every scrape", f"{service.targets_every_scrape} / {exporters}",
         f"failed scrapes {service.scrapes_failed} {service.failed_by_state or ''}".strip()),
        ("samples per scrape of one exporter", f"{samples_per_scrape:.0f}", f"{gpus} GPUs"),
        ("samples published per interval", f"{service.rows_published / max(service.scrapes, 1):,.0f}",
         f"rows read {service.rows_read:,}, published {service.rows_published:,}, in flight "
         f"{service.rows_in_flight:,}, rejected {service.rows_rejected:,}; {service.batches_published} batches"),
        ("scrapes/s, samples/s sustained",
         f"{exporters / interval:,.1f}, {samples_per_scrape * exporters / interval:,.0f}",
         "every target every interval" if every else "NOT every target every interval"),
        ("streamer CPU over the window", f"{service.streamer_cpu_s:.2f} s = {service.cpu_percent:.1f}% of one core",
         f"per interval: {per_interval} s"),
        ("streamer busy after each slot", f"{busy} s",
         f"of {interval:g} s: to the end of its last 0.1 s with ≥ 30% of a core"),
        ("streamer CPU per exporter scrape (service)", f"{service_ms:.2f} ms",
         f"{1e3 * service_ms / max(samples_per_scrape, 1):.1f} µs per sample; "
         f"flat out in process {flat_out_ms:.2f} ms"),
        ("exporter server CPU over the window", f"{service.server_cpu_s:.2f} s = "
         f"{100 * service.server_cpu_s / service.window_s:.1f}% of one core", "not the scraper's"),
        ("broker CPU over the window", f"{service.broker_cpu_s:.2f} s = "
         f"{100 * service.broker_cpu_s / service.window_s:.1f}% of one core", ""),
        ("streamer RSS window start / end / max; peak (wait4)",
         f"{service.rss_start_mb:.1f} / {service.rss_end_mb:.1f} / {service.rss_max_mb:.1f}; "
         f"{service.peak_rss_mb:.1f} MB", ""),
        ("streamer start-up CPU; whole life", f"{service.startup_cpu_s:.2f} s; {service.total_cpu_s:.2f} s",
         f"stopped: {service.reason}"),
    ]  # fmt: skip
    sizing = (
        f"{cluster_exporters:,} exporters every {cluster_interval:g} s = {cluster_rate:,.0f} scrapes/s x "
        f"{service_ms:.2f} CPU-ms = {cores_needed:.2f} cores of streamer; at {100 * core_budget:.0f}% of one core "
        f"per process (headroom for bursts, slower or larger exporters, and a 5 s scrape timeout): "
        f"**{processes} process{'es' if processes > 1 else ''}**, up to {per_process:,} exporters each"
    )
    report = Report("scraping")
    report.details = (
        f"### Live scraping: {exporters} exporters x {gpus} GPUs on one server process\n\n"
        f"machine: {machine_description()}; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after\n\ncode: {source_revision()}; rxstreamer/sources/scrape.py sha256 "
        f"{hashlib.sha256((REPO_ROOT / 'rxstreamer/sources/scrape.py').read_bytes()).hexdigest()[:12]}\n\n"
        f"Capacity, in process, flat out ({capacity_rounds} round(s) after a warm-up; medians leave it out): "
        f"**{cap['scrapes_per_s']:,.0f} scrapes/s, {cap['samples_per_s']:,.0f} samples/s**, "
        f"{cap['cpu_ms_per_scrape']:.2f} CPU-ms per scrape ({cap['cpu_us_per_sample']:.1f} µs per sample; HTTP client "
        f"{cap['fetch_cpu_s']:.3f} + parsing and the rest {cap['parse_cpu_s']:.3f} CPU-s a round); the server used "
        f"{cap['server_cpu_s']:.3f} CPU-s a round. Bodies in memory (no HTTP): {mem['scrapes_per_s']:,.0f} scrapes/s, "
        f"{mem['cpu_ms_per_scrape']:.2f} CPU-ms per scrape.\n\n"
        + capacity_table
        + f"\n\nSustained, `rxstreamer run` scraping every {interval:g} s (timeout {timeout:g} s, batch {batch_size}) "
        f"into the broker, {rounds} intervals:\n\n"
        + markdown_table(("figure", "value", "note"), service_rows)
        + f"\n\nSizing: {sizing}.\n"
        + (f"\n{profile_text}" if profile_text else "")
    )
    report.figures += [
        Figure("scraping", f"flat out, one process, {exporters} x {gpus}-GPU targets: scrapes/s",
               f"{cap['scrapes_per_s']:,.0f}", "", "",
               f"{cap['samples_per_s']:,.0f} samples/s; {cap['cpu_ms_per_scrape']:.2f} CPU-ms/scrape"),
        Figure("scraping", f"service, {exporters} targets every {interval:g} s: streamer CPU",
               f"{service.cpu_percent:.1f}% of a core", "", "",
               f"{service_ms:.2f} CPU-ms/scrape; busy {busy} s per interval; "
               f"{service.targets_every_scrape}/{exporters} targets every scrape, {service.scrapes_skipped} skipped"),
        Figure("scraping", f"streamer processes for {cluster_exporters:,} exporters every {cluster_interval:g} s",
               f"{processes}", f"{cores_needed:.2f} cores", "", f"at {100 * core_budget:.0f}% of a core each"),
    ]  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporters", type=int, default=200, help="virtual exporters (targets)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per exporter")
    parser.add_argument("--interval", type=float, default=10.0, help="scrape interval of the service run, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="intervals measured in the service run")
    parser.add_argument("--timeout", type=float, default=5.0, help="scrape timeout of the service run, seconds")
    parser.add_argument("--capacity-rounds", type=int, default=5, help="flat-out rounds in process, after a warm-up")
    parser.add_argument("--batch-size", type=int, default=1000, help="the service run's batch size")
    parser.add_argument("--cluster-exporters", type=int, default=1250, help="exporters of the cluster to size for")
    parser.add_argument("--cluster-interval", type=float, default=10.0, help="its scrape interval, seconds")
    parser.add_argument("--core-budget", type=float, default=0.5, help="share of one core a process may use")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the in-process scrape")
    parser.add_argument("--profile-top", type=int, default=20, help="functions in the profile table")
    args = parser.parse_args()
    report = run(
        exporters=args.exporters,
        gpus=args.gpus,
        interval=args.interval,
        rounds=args.rounds,
        timeout=args.timeout,
        capacity_rounds=args.capacity_rounds,
        batch_size=args.batch_size,
        cluster_exporters=args.cluster_exporters,
        cluster_interval=args.cluster_interval,
        core_budget=args.core_budget,
        profile=args.profile,
        profile_top=args.profile_top,
    )
    print(report.details)


if __name__ == "__main__":
    main()
