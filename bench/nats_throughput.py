"""NATS JetStream (a three-replica stream) against the reference broker, and one batch in flight against several.

Two parts, everything on 127.0.0.1 (issue 12):

1. **End to end, side by side.** The real streamer, ``python -m rxstreamer run --interval 0s --batch-size N
   --log-format json --producer-id P --topic T ...``, streams the same generated file (200,000 rows, 32 hosts x
   8 GPUs, as bench/throughput.py) to

   - ``broker``: the reference broker, ``rxstreamer mq`` in memory with large limits (bench/_common.Broker), and
   - ``jetstream``: a three-node nats-server cluster (tests/nats_cluster.NatsCluster) holding the stream
     GPU_TELEMETRY with 3 replicas (file storage, subjects ``rxstreamer.>``, duplicate window 10 min: what the
     sink creates). The benchmark creates the stream itself before the runs and waits for its leader, so no run
     pays for creating it.

   Each run has a fresh topic *and* a fresh producer id: JetStream drops a repeated ``Nats-Msg-Id`` anywhere in
   the stream, whatever the subject, and the default producer id (host, file, batch size) repeats from run to
   run. For each batch size the two contenders run one after the other, the order swapping from round to round;
   a fresh broker and a fresh cluster serve each round. The figure is the streamer's own summary,
   ``rows_published / duration_s`` of its ``streamer.stopped`` line (connecting included, interpreter start-up
   not). CPU: the streamer's from /proc between its ``streamer.started`` and ``streamer.stopped`` lines, the
   servers' (the broker, or the three nats-servers together) from /proc over the whole run.

2. **In flight.** This process publishes with nats-py (asyncio) the same encoded
   batches (rows of the same file encoded by rxstreamer.encoding.BatchEncoder: real payloads, in batches of 100
   and of 1,000 rows, encoded before the clock starts) to the R3 stream, with JetStream acks and the sink's
   headers (a unique ``Nats-Msg-Id``, content type and content digest):

   - ``one at a time``: ``await asyncio.wait_for(js.publish(...))`` and then the next, as the sink does;
   - ``publish, N tasks``: the same call in N concurrent tasks (a semaphore bounds them), as a sink with N
     batches in flight on its event loop would;
   - ``publish_async, N``: nats-py's pipelined ``js.publish_async`` with ``publish_async_max_pending=N``, each
     pending ack wrapped in ``asyncio.wait_for``.

   N = 4, 16, 64. Each configuration runs twice in a round: through a connection to the stream's leader and
   through one to a follower (which forwards to the leader: the streamer, given every server, lands on a
   follower two times in three). The stream is purged before each run (outside the clock); the configurations
   run in one order in a round and reversed in the next, the two connections alternating. The clock runs from
   the first publish to the last ack.

    .venv/bin/python bench/nats_throughput.py [--rows 200000] [--batch-sizes 100,1000] [--rounds 3]
        [--windows 4,16,64] [--inflight-rows ROWS] [--quick]

Needs ``nats-server`` (``make tools``) and nats-py (the ``nats`` extra). Prints figures, asserts nothing.
Generated files are cached in bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import (
    REPO_ROOT,
    Broker,
    Figure,
    Report,
    child_env,
    data_file,
    log_time,
    markdown_table,
    median,
    proc_cpu_seconds,
    read_events,
    rxstreamer_command,
    unique_topic,
)

from tests.nats_cluster import NatsCluster, NatsServerMissingError, nats_server_binary

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

STREAM = "GPU_TELEMETRY"  # the sink's default stream (message_queue.nats.stream)
SUBJECT_PREFIX = "rxstreamer"  # the sink publishes a topic T on rxstreamer.T
DUPLICATE_WINDOW_S = 600.0  # message_queue.nats.duplicate_window's default
PUBLISH_TIMEOUT = 5.0  # message_queue.publish_timeout's default
QUEUES = ("broker", "jetstream")
ONE_AT_A_TIME = "one at a time"
TASKS = "publish, N tasks"
ASYNC = "publish_async, N"


# --- part 1: the streamer end to end ------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamerRun:
    queue: str
    batch_size: int
    rows: int
    batches: int
    duplicates: int
    duration_s: float  # streamer.stopped's duration_s: from before connecting to after the last ack
    streaming_s: float  # streamer.started → streamer.stopped timestamps
    streamer_cpu_s: float  # /proc, between the two lines
    server_cpu_s: float  # /proc, the server process(es), spawn → exit of the streamer
    via: str  # jetstream: whether the streamer's connection was to the stream's leader
    notes: tuple[str, ...]  # warning and error lines of the streamer

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s

    @property
    def messages_per_s(self) -> float:
        return self.batches / self.duration_s


def _cpu_of(pids: Iterable[int]) -> float:
    return sum(proc_cpu_seconds(pid) for pid in pids)


def _cluster_pids(cluster: NatsCluster) -> list[int]:
    return [node.process.pid for node in cluster.nodes.values() if node.process is not None]


def _connected_server(cluster: NatsCluster, client_name: str) -> str | None:
    """The server holding a client connection of that name now (each server's /connz), or None."""
    for name in cluster.running():
        try:
            connz = cluster.monitor(name, "/connz?limit=1024", timeout=1.0)
        except OSError:
            continue
        if any(conn.get("name") == client_name for conn in connz.get("connections") or []):
            return name
    return None


def run_streamer(
    path: Path, queue: str, address: str, batch_size: int, *, server_pids: list[int], cluster: NatsCluster | None
) -> StreamerRun:
    command = rxstreamer_command(
        "run", "--interval", "0s", "--batch-size", str(batch_size), "--metrics-path", str(path),
        "--mq-address", address, "--topic", unique_topic(f"nt-{queue[:2]}-{batch_size}"),
        "--producer-id", f"bench-{uuid.uuid4().hex[:12]}", "--log-format", "json",
    )  # fmt: skip
    servers_before = _cpu_of(server_pids)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=child_env())
    assert process.stdout is not None
    started: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    cpu_started = cpu_stopped = 0.0
    via = ""
    notes: list[str] = []
    for entry in read_events(process.stdout):
        if entry["event"] == "streamer.started":
            cpu_started = proc_cpu_seconds(process.pid)
            started = entry
            if cluster is not None:
                server = _connected_server(cluster, "rxstreamer")
                leader = cluster.leader(STREAM)
                via = "?" if server is None else ("leader" if server == leader else "follower")
        elif entry["event"] == "streamer.stopped":
            cpu_stopped = proc_cpu_seconds(process.pid)
            stopped = entry
        if entry.get("level") in ("warning", "error"):
            notes.append(str(entry["event"]))
    code = process.wait()
    servers_cpu = _cpu_of(server_pids) - servers_before
    if code != 0 or started is None or stopped is None or stopped.get("reason") != "completed":
        raise RuntimeError(f"the streamer failed (exit {code}) against {queue}: {stopped}")
    return StreamerRun(
        queue=queue,
        batch_size=batch_size,
        rows=int(stopped["rows_published"]),
        batches=int(stopped["batches_published"]),
        duplicates=int(stopped["duplicates"]),
        duration_s=float(stopped["duration_s"]),
        streaming_s=(log_time(stopped) - log_time(started)).total_seconds(),
        streamer_cpu_s=cpu_stopped - cpu_started,
        server_cpu_s=servers_cpu,
        via=via,
        notes=tuple(notes),
    )


async def _connect(cluster: NatsCluster, name: str) -> Client:
    import nats

    return await nats.connect(servers=cluster.urls, name=name, connect_timeout=5, max_reconnect_attempts=0)


async def _create_stream(cluster: NatsCluster) -> None:
    """The stream as the sink would create it (R3, file storage, subjects rxstreamer.>, 10 min dedup window)."""
    from nats.js.api import StreamConfig

    nc = await _connect(cluster, "bench-setup")
    try:
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        config = StreamConfig(
            name=STREAM, subjects=[f"{SUBJECT_PREFIX}.>"], num_replicas=3, duplicate_window=DUPLICATE_WINDOW_S
        )
        await js.add_stream(config)
    finally:
        await nc.close()


@contextmanager
def running_cluster() -> Iterator[NatsCluster]:
    """A fresh three-node cluster holding the (empty) stream, with its leader elected; removed on exit."""
    cluster = NatsCluster().start()
    try:
        asyncio.run(_create_stream(cluster))
        cluster.wait_for_leader(STREAM)
        yield cluster
    finally:
        cluster.close()


def end_to_end(
    path: Path, rows: int, batch_sizes: Sequence[int], rounds: int
) -> dict[tuple[str, int], list[StreamerRun]]:
    runs: dict[tuple[str, int], list[StreamerRun]] = {(q, b): [] for q in QUEUES for b in batch_sizes}
    for round_number in range(rounds):
        order = QUEUES if round_number % 2 == 0 else QUEUES[::-1]
        with Broker() as broker, running_cluster() as cluster:
            assert broker.process is not None
            for batch_size in batch_sizes:
                for queue in order:
                    if queue == "broker":
                        pids = [broker.process.pid]
                        run = run_streamer(path, queue, broker.address, batch_size, server_pids=pids, cluster=None)
                    else:
                        pids = _cluster_pids(cluster)
                        run = run_streamer(path, queue, cluster.address, batch_size, server_pids=pids, cluster=cluster)
                    if run.rows != rows or run.duplicates:
                        raise RuntimeError(
                            f"{queue}: {run.rows} rows published ({run.duplicates} duplicates), expected {rows}"
                        )
                    runs[queue, batch_size].append(run)
                    print(
                        f"  round {round_number + 1}/{rounds} batch {batch_size:>5} {queue:<9} "
                        f"{run.rows_per_s:>8,.0f} rows/s {run.messages_per_s:>6,.0f} msg/s ({run.duration_s:.2f} s; "
                        f"streamer cpu {run.streamer_cpu_s:.2f} s, servers {run.server_cpu_s:.2f} s"
                        f"{', via ' + run.via if run.via else ''}{', ' + ','.join(run.notes) if run.notes else ''})",
                        file=sys.stderr,
                        flush=True,
                    )
    return runs


# --- part 2: in flight, with nats-py directly ---------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    payload: bytes
    rows: int
    headers: dict[str, str]  # without the Nats-Msg-Id, which is new at every publish


def encode_batches(path: Path, rows: int, batch_size: int) -> list[Payload]:
    """The file's first ``rows`` rows in batches of ``batch_size``, encoded as the streamer encodes them."""
    from rxstreamer.encoding import CONTENT_DIGEST_HEADER, BatchEncoder
    from rxstreamer.sources.dcgm_csv import CsvRows

    encoder = BatchEncoder("bench-inflight")
    source = iter(CsvRows(path))
    batches: list[Payload] = []
    remaining = rows
    while remaining > 0:
        chunk = list(itertools.islice(source, min(batch_size, remaining)))
        if not chunk:
            break
        batch = encoder(chunk)
        headers = {"content-type": batch.content_type, CONTENT_DIGEST_HEADER: batch.content_digest}
        batches.append(Payload(batch.payload, batch.rows, headers))
        remaining -= len(chunk)
    return batches


@dataclass(frozen=True)
class Config:
    batch_size: int
    mechanism: str
    window: int

    @property
    def label(self) -> str:
        return ONE_AT_A_TIME if self.mechanism == ONE_AT_A_TIME else self.mechanism.replace("N", str(self.window))


@dataclass(frozen=True)
class InflightRun:
    config: Config
    route: str  # the client's connection: to the stream's leader, or to a follower
    messages: int
    rows: int
    seconds: float
    client_cpu_s: float
    cluster_cpu_s: float
    errors: int
    duplicates: int

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


@dataclass
class _Outcome:
    errors: int = 0
    duplicates: int = 0
    kinds: list[str] = field(default_factory=list)

    def count(self, result: object) -> None:
        if isinstance(result, BaseException):
            self.errors += 1
            self.kinds.append(type(result).__name__)
        elif getattr(result, "duplicate", False):
            self.duplicates += 1


async def _one_at_a_time(js: JetStreamContext, subject: str, batches: list[Payload], ids: Iterator[str]) -> _Outcome:
    outcome = _Outcome()
    for batch in batches:
        headers = {"Nats-Msg-Id": next(ids), **batch.headers}
        try:
            ack = await asyncio.wait_for(
                js.publish(subject, batch.payload, timeout=PUBLISH_TIMEOUT, headers=headers), PUBLISH_TIMEOUT + 1
            )
        except Exception as error:
            outcome.count(error)
        else:
            outcome.count(ack)
    return outcome


async def _tasks(
    js: JetStreamContext, subject: str, batches: list[Payload], ids: Iterator[str], window: int
) -> _Outcome:
    slots = asyncio.Semaphore(window)

    async def publish(batch: Payload, msg_id: str) -> object:
        try:
            headers = {"Nats-Msg-Id": msg_id, **batch.headers}
            return await asyncio.wait_for(
                js.publish(subject, batch.payload, timeout=PUBLISH_TIMEOUT, headers=headers), PUBLISH_TIMEOUT + 1
            )
        finally:
            slots.release()

    pending = []
    for batch in batches:
        await slots.acquire()
        pending.append(asyncio.create_task(publish(batch, next(ids))))
    outcome = _Outcome()
    for result in await asyncio.gather(*pending, return_exceptions=True):
        outcome.count(result)
    return outcome


async def _publish_async(nc: Client, subject: str, batches: list[Payload], ids: Iterator[str], window: int) -> _Outcome:
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT, publish_async_max_pending=window)
    pending = []
    for batch in batches:
        headers = {"Nats-Msg-Id": next(ids), **batch.headers}
        # Waits (up to the timeout) while `window` acks are pending; each pending ack gets its own deadline.
        future = await js.publish_async(subject, batch.payload, wait_stall=PUBLISH_TIMEOUT, headers=headers)
        pending.append(asyncio.ensure_future(asyncio.wait_for(future, PUBLISH_TIMEOUT)))
    outcome = _Outcome()
    for result in await asyncio.gather(*pending, return_exceptions=True):
        outcome.count(result)
    return outcome


ROUTES = ("leader", "follower")


async def _publish_all(nc: Client, js: JetStreamContext, config: Config, batches: list[Payload]) -> _Outcome:
    prefix = uuid.uuid4().hex[:12]
    ids = (f"{prefix}:{sequence}" for sequence in itertools.count(1))
    subject = f"{SUBJECT_PREFIX}.{unique_topic('inflight')}"
    if config.mechanism == ONE_AT_A_TIME:
        return await _one_at_a_time(js, subject, batches, ids)
    if config.mechanism == TASKS:
        return await _tasks(js, subject, batches, ids, config.window)
    return await _publish_async(nc, subject, batches, ids, config.window)


async def _inflight_round(
    cluster: NatsCluster, payloads: dict[int, list[Payload]], configs: Sequence[Config], label: str
) -> list[InflightRun]:
    """Every configuration through a connection to the stream's leader and through one to a follower."""
    import nats

    leader = cluster.leader(STREAM)
    follower = next(name for name in cluster.names if name != leader)
    connections: dict[str, Client] = {}
    results: list[InflightRun] = []
    try:
        for route, server in (("leader", leader), ("follower", follower)):
            assert server is not None
            connections[route] = await nats.connect(
                servers=[cluster.node(server).url], name=f"bench-{route}", connect_timeout=5, max_reconnect_attempts=0
            )
        contexts = {route: nc.jetstream(timeout=PUBLISH_TIMEOUT) for route, nc in connections.items()}
        pids = _cluster_pids(cluster)
        for index, config in enumerate(configs):
            for route in ROUTES if index % 2 == 0 else ROUTES[::-1]:
                await contexts[route].purge_stream(STREAM)
                batches = payloads[config.batch_size]
                cluster_before, client_before = _cpu_of(pids), time.process_time()
                began = time.perf_counter()
                outcome = await _publish_all(connections[route], contexts[route], config, batches)
                seconds = time.perf_counter() - began
                run = InflightRun(
                    config=config,
                    route=route,
                    messages=len(batches),
                    rows=sum(batch.rows for batch in batches),
                    seconds=seconds,
                    client_cpu_s=time.process_time() - client_before,
                    cluster_cpu_s=_cpu_of(pids) - cluster_before,
                    errors=outcome.errors,
                    duplicates=outcome.duplicates,
                )
                results.append(run)
                kinds = f" errors {outcome.errors} ({', '.join(sorted(set(outcome.kinds)))})" if outcome.errors else ""
                print(
                    f"  {label} {config.batch_size:>5} rows {config.label:<20} via {route:<8} "
                    f"{run.messages_per_s:>7,.0f} msg/s {run.rows_per_s:>9,.0f} rows/s ({seconds:.2f} s; client cpu "
                    f"{run.client_cpu_s:.2f} s, cluster {run.cluster_cpu_s:.2f} s){kinds}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for nc in connections.values():
            await nc.close()
    return results


def in_flight(
    path: Path, rows: int, batch_sizes: Sequence[int], windows: Sequence[int], rounds: int
) -> tuple[dict[tuple[Config, str], list[InflightRun]], dict[int, int]]:
    payloads = {size: encode_batches(path, rows, size) for size in batch_sizes}
    sizes = {size: round(median(len(p.payload) for p in batches)) for size, batches in payloads.items()}
    configs = [
        Config(size, mechanism, window)
        for size in batch_sizes
        for mechanism, window in [(ONE_AT_A_TIME, 1), *((m, w) for m in (TASKS, ASYNC) for w in windows)]
    ]
    runs: dict[tuple[Config, str], list[InflightRun]] = {(c, route): [] for c in configs for route in ROUTES}
    for round_number in range(rounds):
        order = configs if round_number % 2 == 0 else configs[::-1]
        with running_cluster() as cluster:
            for run in asyncio.run(_inflight_round(cluster, payloads, order, f"round {round_number + 1}/{rounds}")):
                runs[run.config, run.route].append(run)
    return runs, sizes


# --- report ------------------------------------------------------------------------------------------------


def _range(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def end_to_end_table(runs: dict[tuple[str, int], list[StreamerRun]], batch_sizes: Sequence[int]) -> str:
    table = []
    for batch_size in batch_sizes:
        broker = runs["broker", batch_size]
        for queue in QUEUES:
            these = runs[queue, batch_size]
            ratios = [n.rows_per_s / b.rows_per_s for n, b in zip(these, broker, strict=True)]
            vias = [r.via for r in these if r.via]
            table.append(
                (
                    f"{batch_size:,}",
                    "reference broker (memory)" if queue == "broker" else "JetStream R3 (3 nats-servers)",
                    f"{median(r.rows_per_s for r in these):,.0f}",
                    f"{median(r.messages_per_s for r in these):,.0f}",
                    "1" if queue == "broker" else _range(ratios, lambda v: f"{v:.2f}"),
                    f"{median(r.streamer_cpu_s / r.rows * 1e6 for r in these):.1f}",
                    f"{median(100 * r.streamer_cpu_s / r.streaming_s for r in these):.0f}%",
                    f"{median(r.server_cpu_s / r.rows * 1e6 for r in these):.1f}",
                    f"{median(100 * r.server_cpu_s / r.duration_s for r in these):.0f}%",
                    ", ".join(f"{vias.count(v)} {v}" for v in sorted(set(vias))) or "—",
                )
            )
    headers = (
        "batch", "queue", "rows/s", "messages/s", "÷ broker (min-max)", "streamer CPU µs/row", "streamer % of a core",
        "server CPU µs/row", "server % of a core", "streamer connected to",
    )  # fmt: skip
    return markdown_table(headers, table)


def in_flight_table(runs: dict[tuple[Config, str], list[InflightRun]], sizes: dict[int, int]) -> str:
    table = []
    for config in dict.fromkeys(config for config, _ in runs):
        cells = [f"{config.batch_size:,} ({sizes[config.batch_size] / 1000:.0f} KB)", config.label]
        for route in ROUTES:
            these, base = runs[config, route], runs[Config(config.batch_size, ONE_AT_A_TIME, 1), route]
            speedups = [r.messages_per_s / b.messages_per_s for r, b in zip(these, base, strict=True)]
            cells += [
                f"{median(r.messages_per_s for r in these):,.0f}",
                f"{median(r.rows_per_s for r in these):,.0f}",
                "1" if config.mechanism == ONE_AT_A_TIME else _range(speedups, lambda v: f"{v:.2f}"),
            ]
        both = [runs[config, route] for route in ROUTES]
        cells += [
            " / ".join(f"{median(r.client_cpu_s / r.messages * 1e3 for r in these):.2f}" for these in both),
            " / ".join(f"{median(r.cluster_cpu_s / r.messages * 1e3 for r in these):.2f}" for these in both),
            " / ".join(f"{median(100 * r.cluster_cpu_s / r.seconds for r in these):.0f}%" for these in both),
            f"{sum(r.errors for these in both for r in these)} / {sum(r.duplicates for these in both for r in these)}",
        ]
        table.append(cells)
    headers = (
        "batch (payload)", "publishing", "via leader: messages/s", "rows/s", "x one at a time (min-max)",
        "via a follower: messages/s", "rows/s", "x one at a time (min-max)", "client CPU ms/msg (leader / follower)",
        "cluster CPU ms/msg", "cluster % of a core", "errors / duplicates",
    )  # fmt: skip
    return markdown_table(headers, table)


def run(
    rows: int = 200_000,
    batch_sizes: tuple[int, ...] = (100, 1000),
    rounds: int = 3,
    windows: tuple[int, ...] = (4, 16, 64),
    inflight_rows: int | None = None,
) -> Report:
    report = Report("nats")
    try:
        nats_server_binary()
        import nats  # noqa: F401 (only whether it is installed)
    except (NatsServerMissingError, ImportError) as error:
        report.figures.append(Figure("nats", "skipped", "—", note=str(error).splitlines()[0]))
        report.details = f"### NATS JetStream (three replicas): skipped\n\n{error}\n"
        return report
    inflight_rows = rows if inflight_rows is None else inflight_rows
    print(
        f"nats: {rows:,} rows end to end at batch sizes {batch_sizes}, in flight {inflight_rows:,} rows at windows "
        f"{windows}, {rounds} rounds",
        file=sys.stderr,
        flush=True,
    )
    path = data_file(rows)
    load = [os.getloadavg()[0]]
    e2e = end_to_end(path, rows, batch_sizes, rounds)
    load.append(os.getloadavg()[0])
    inflight, sizes = in_flight(path, inflight_rows, batch_sizes, windows, rounds)
    load.append(os.getloadavg()[0])

    for batch_size in batch_sizes:
        nats_runs, broker_runs = e2e["jetstream", batch_size], e2e["broker", batch_size]
        ratio = median(n.rows_per_s / b.rows_per_s for n, b in zip(nats_runs, broker_runs, strict=True))
        report.figures.append(
            Figure(
                "nats",
                f"streamer rows/s to JetStream R3, batch {batch_size:,}",
                f"{median(r.rows_per_s for r in nats_runs):,.0f}",
                f"broker {median(r.rows_per_s for r in broker_runs):,.0f}",
                f"{ratio:.2f}",
                "rows_published / duration_s",
            )
        )
        base = Config(batch_size, ONE_AT_A_TIME, 1)
        for route in ROUTES:
            rates = {
                config: median(r.messages_per_s for r in these)
                for (config, where), these in inflight.items()
                if where == route and config.batch_size == batch_size
            }
            best = max((c for c in rates if c.mechanism != ONE_AT_A_TIME), key=rates.__getitem__)
            via = "the leader" if route == "leader" else "a follower"
            report.figures.append(
                Figure(
                    "nats",
                    f"JetStream R3 messages/s, {batch_size:,}-row payloads via {via}, several in flight",
                    f"{rates[best]:,.0f} ({best.label})",
                    f"one at a time {rates[base]:,.0f}",
                    f"{rates[best] / rates[base]:.2f}",
                    "nats-py directly",
                )
            )
    notes = sorted({note for these in e2e.values() for r in these for note in r.notes})
    report.details = (
        f"### NATS JetStream (three replicas) against the reference broker: {rows:,} rows, medians of {rounds} "
        f"rounds\n\nload average (1 min) {load[0]:.2f} at the start, {load[1]:.2f} after part 1, {load[2]:.2f} "
        f"at the end\n\nThe streamer end to end (rows_published / duration_s; ÷ broker = median of the per-round "
        f"ratios):\n\n"
        + end_to_end_table(e2e, batch_sizes)
        + f"\n\nstreamer warnings and errors: {', '.join(notes) or 'none'}\n\n"
        f"In flight, nats-py in this process ({inflight_rows:,} rows a configuration; x one at a time = median of "
        f"the per-round ratios):\n\n" + in_flight_table(inflight, sizes) + "\n"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the generated file")
    parser.add_argument("--batch-sizes", default="100,1000", help="comma-separated batch sizes (both parts)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; contenders alternate within each")
    parser.add_argument("--windows", default="4,16,64", help="comma-separated numbers of batches in flight")
    parser.add_argument("--inflight-rows", type=int, help="rows published per in-flight configuration (--rows)")
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one round: a smoke run")
    args = parser.parse_args()
    rows, rounds = (20_000, 1) if args.quick else (args.rows, args.rounds)
    batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    windows = tuple(int(window) for window in args.windows.split(","))
    print(run(rows, batch_sizes, rounds, windows, args.inflight_rows).details)


if __name__ == "__main__":
    main()
