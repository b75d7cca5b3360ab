"""A synthetic dcgm-exporter over real HTTP, standing in for one node or, for load tests, for K of them.

Scrapers fail on what only a live endpoint does (values that drift, counters that grow, many targets at
once), which a file cannot show. So each ``GET /metrics`` moves that exporter's simulated fleet on by one
scrape interval and answers with the text rxstreamer.exposition renders, with dcgm-exporter's content type;
``/health`` answers ``OK`` as dcgm-exporter does once it has metrics (always, here).

With ``exporters=K`` one server answers as K exporters on ``/exporter/<i>/metrics`` (and ``/health``),
``/metrics`` being exporter 0, so a cluster-scale scrape needs one process and one port rather than K. Each
exporter has a fleet of its own: hostnames numbered on from the previous exporter's, uuids from a seed of its
own. Exporter 0 uses the seed itself, so its first scrape is ``generate --format prometheus``'s file. Fleets
are made on their first scrape, so K only costs memory for the exporters actually scraped.

Only the standard library: ``http.server.ThreadingHTTPServer``, one thread per connection; a lock per
exporter keeps its scrapes in order, while different exporters are scraped in parallel.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import structlog

from rxstreamer.exposition import CONTENT_TYPE, render_scrape
from rxstreamer.generate import DEFAULT_SCRAPE_INTERVAL_S, EXPORTER_PORT, Fleet

__all__ = [
    "EXIT_BIND_FAILED",
    "ExporterBindError",
    "ExporterOptions",
    "RunningExporter",
    "VirtualExporters",
    "parse_listen",
    "serve",
    "start_exporter",
]

log = structlog.get_logger()

# Like the broker's address in use: the operator's to fix, as a bad setting is.
EXIT_BIND_FAILED: Final = 2
_MAX_PORT: Final = 65_535
_EXPORTER_PATH: Final = re.compile(r"/exporter/(\d{1,9})/(metrics|health)")


class ExporterBindError(Exception):
    """The server cannot listen where it was asked to; the message is the one line the operator reads."""


@dataclass(frozen=True, slots=True)
class ExporterOptions:
    """Where to listen and what to simulate: ``exporters`` fleets of ``hosts`` x ``gpus`` GPUs each."""

    listen: str = f"127.0.0.1:{EXPORTER_PORT}"
    exporters: int = 1
    hosts: int = 1
    gpus: int = 8
    seed: int = 0
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S

    def __post_init__(self) -> None:
        for name in ("exporters", "hosts", "gpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.scrape_interval < 0:
            raise ValueError(f"scrape_interval must not be negative, got {self.scrape_interval}")


class VirtualExporters:
    """K simulated exporters, each advanced one scrape per ``scrape(i)``; safe to call from many threads."""

    def __init__(self, options: ExporterOptions) -> None:
        self.options = options
        self._fleets: dict[int, tuple[Fleet, threading.Lock]] = {}
        self._fleets_lock = threading.Lock()
        self._served = 0
        self._served_lock = threading.Lock()

    def __len__(self) -> int:
        return self.options.exporters

    @property
    def scrapes_served(self) -> int:
        """Scrapes answered so far, over every exporter."""
        return self._served

    def fleet(self, index: int) -> Fleet:
        """Exporter ``index``'s fleet, made on first use."""
        return self._entry(index)[0]

    def scrape(self, index: int) -> str:
        """Exporter ``index``'s next scrape: its fleet moved on by one interval, rendered."""
        fleet, lock = self._entry(index)
        with lock:
            readings = fleet.advance()
        with self._served_lock:
            self._served += 1
        return render_scrape(readings)

    def _entry(self, index: int) -> tuple[Fleet, threading.Lock]:
        if not 0 <= index < self.options.exporters:
            raise IndexError(f"exporter {index} does not exist (0 to {self.options.exporters - 1})")
        with self._fleets_lock:
            entry = self._fleets.get(index)
            if entry is None:
                entry = (self._new_fleet(index), threading.Lock())
                self._fleets[index] = entry
            return entry

    def _new_fleet(self, index: int) -> Fleet:
        options = self.options
        return Fleet(
            hosts=options.hosts,
            gpus=options.gpus,
            # A string seed per exporter: reproducible across processes (str seeds are hashed with SHA-512).
            seed=options.seed if index == 0 else f"{options.seed}/exporter/{index}",
            first_host=1 + index * options.hosts,
            scrape_interval=options.scrape_interval,
        )


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a host and a port; ValueError says what is wrong."""
    host, colon, port_text = listen.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9400 (port 0 picks a free port)")
    port = int(port_text)
    if port > _MAX_PORT:
        raise ValueError(f"port {port} is above {_MAX_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a scraper holding a connection open must not keep a stopping process alive
    # As many exporters as a load test asks for are scraped at once; the default backlog of 5 drops their
    # connections, and the scraper's retries (1 s, 3 s, ...) would be measured instead of the scrapes.
    request_queue_size = 1024
    exporters: VirtualExporters

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper hanging up mid-answer (its timeout) is routine under load: a debug line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("exporter.client_left", client=str(client_address), reason=str(error))
        else:
            log.error("exporter.request_failed", client=str(client_address), exc_info=True)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """Answers ``/metrics``, ``/health`` and their ``/exporter/<i>/`` forms; 404 for anything else."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
    server_version = "rxstreamer-dcgm-exporter"

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, *, with_body: bool) -> None:
        path = self.path.partition("?")[0]
        index, endpoint = _route(path)
        exporters = self.server.exporters
        if endpoint is None or index >= len(exporters):
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", f"404 page not found: {path}\n", with_body)
        elif endpoint == "health":
            self._send(HTTPStatus.OK, "text/plain; charset=utf-8", "OK", with_body)
        else:
            self._send(HTTPStatus.OK, CONTENT_TYPE, exporters.scrape(index), with_body)

    def _send(self, status: HTTPStatus, content_type: str, text: str, with_body: bool) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: one access line per scrape, thousands of targets a minute, would drown the log."""


def _route(path: str) -> tuple[int, str | None]:
    if path in ("/metrics", "/health"):
        return 0, path[1:]
    match = _EXPORTER_PATH.fullmatch(path)
    if match is None:
        return 0, None
    return int(match.group(1)), match.group(2)


@dataclass
class RunningExporter:
    """A started server: where it listens, its exporters, and how to stop it (``close``, or ``with``)."""

    server: _Server
    thread: threading.Thread
    exporters: VirtualExporters
    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL a client on this machine scrapes (``/metrics`` and the rest go after it)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop accepting, end the serving thread and close the socket; open scrapes are not waited for."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> RunningExporter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def start_exporter(options: ExporterOptions) -> RunningExporter:
    """Bind ``options.listen`` and serve on a thread of its own; ExporterBindError when it cannot bind."""
    try:
        host, port = parse_listen(options.listen)
    except ValueError as error:
        raise ExporterBindError(f"cannot listen on {options.listen}: {error}") from error
    server_class = _IPv6Server if ":" in host else _Server
    try:
        server = server_class((host, port), _Handler)
    except OSError as error:
        raise ExporterBindError(_bind_failure(options.listen, error)) from error
    server.exporters = VirtualExporters(options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dcgm-exporter", daemon=True
    )
    thread.start()
    return RunningExporter(
        server=server, thread=thread, exporters=server.exporters, host=host, port=server.server_address[1]
    )


def _paths(exporters: int) -> str:
    if exporters == 1:
        return "/metrics /health"
    return f"/metrics /health (exporter 0), /exporter/<i>/metrics /exporter/<i>/health (i = 0..{exporters - 1})"


def _bind_failure(listen: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"cannot listen on {listen}: the port is in use; stop what listens there or choose another address"
    if isinstance(error, socket.gaierror):
        return f"cannot listen on {listen}: the host does not resolve ({error.strerror})"
    return f"cannot listen on {listen}: {error.strerror or error}"


def serve(
    options: ExporterOptions,
    *,
    stop_event: threading.Event,
    stop_signal: Callable[[], str | None] | None = None,
    report: Callable[[str], None] | None = None,
) -> int:
    """Serve until ``stop_event`` is set (the CLI's signal handlers set it); the process exit status.

    0 after a clean stop. When the address cannot be bound, ``report`` gets one line (the CLI prints it on
    stderr) and the status is EXIT_BIND_FAILED. Logs ``exporter.started`` with the bound ``port`` once
    scrapes can be made, which is what a test or a script waits for with port 0.
    """
    try:
        running = start_exporter(options)
    except ExporterBindError as error:
        if report is not None:
            report(str(error))
        return EXIT_BIND_FAILED
    with running:
        log.info(
            "exporter.started",
            listen=options.listen,
            address=f"{running.host}:{running.port}",
            port=running.port,
            url=f"{running.url}/metrics",
            exporters=options.exporters,
            hosts=options.hosts,
            gpus=options.gpus,
            seed=options.seed,
            paths=_paths(options.exporters),
        )
        stop_event.wait()
        log.info("exporter.stopping", signal=stop_signal() if stop_signal is not None else None)
    log.info("exporter.stopped", scrapes=running.exporters.scrapes_served)
    return 0
