"""The HTTP edge: a WSGI server on a daemon thread, with a router in front of prometheus_client's app, which
would otherwise answer metrics on every path."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

from rxstreamer.config import ConfigError
from rxstreamer.metrics.constants import PATHS
from rxstreamer.metrics.rules import Probe

log = structlog.get_logger()


def router(metrics: WSGIApplication, health: Callable[[], Probe], ready: Callable[[], Probe]) -> WSGIApplication:
    """``/metrics`` to prometheus_client's app, ``/healthz`` and ``/readyz`` to the probes, 404 elsewhere."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        if path not in PATHS:
            return _text(start_response, "404 Not Found", f"not found; the paths are {', '.join(PATHS)}")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET", [("Allow", "GET, HEAD")])
        try:
            probe = health() if path == "/healthz" else ready()
        except Exception as error:  # a probe must answer, whatever happened to what it reads
            probe = Probe(False, f"the probe failed: {type(error).__name__}: {error}")
        status = "200 OK" if probe.ok else "503 Service Unavailable"
        body = _text(start_response, status, probe.reason)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else body

    return app


def _text(
    start_response: StartResponse, status: str, line: str, headers: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    body = (line + "\n").encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *headers,
        ],
    )
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: a scrape every 15 s would fill the logs."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process open
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can hang without DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


def _server_class(family: socket.AddressFamily) -> type[_Server]:
    return type("_Server", (_Server,), {"address_family": family})


class Endpoint:
    """The HTTP server of ``observability.listen``, on a daemon thread, until ``close``.

    It answers from the moment it listens: until ``attach`` gives it what to report, ``/healthz`` says
    "starting" (200), ``/readyz`` too (503), and ``/metrics`` has the process metrics only.
    """

    def __init__(self, server: _Server, registry: CollectorRegistry) -> None:
        self._server = server
        self.registry = registry
        self.port: int = server.server_port
        self._health: Callable[[], Probe] = lambda: Probe(True, "starting")
        self._ready: Callable[[], Probe] = lambda: Probe(False, "starting")
        server.set_app(router(make_wsgi_app(registry), self._answer_health, self._answer_ready))
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="rxstreamer-metrics", daemon=True
        )
        self._thread.start()
        self._closed = False

    def _answer_health(self) -> Probe:
        return self._health()  # looked up at each request: ``attach`` replaces it

    def _answer_ready(self) -> Probe:
        return self._ready()

    def attach(self, collector: Any, health: Callable[[], Probe], ready: Callable[[], Probe]) -> None:
        """Report ``collector``'s metrics and answer the probes with ``health`` and ``ready`` from now on."""
        self.registry.register(collector)
        self._health, self._ready = health, ready

    def linger(self, seconds: float, interrupted: Callable[[], bool]) -> None:
        """Keep serving ``seconds`` more (``observability.linger``), or until ``interrupted()`` (a stop signal)."""
        if seconds <= 0 or interrupted():
            return
        log.info("metrics.lingering", linger_s=seconds, port=self.port)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not interrupted():
            time.sleep(min(remaining, 0.05))

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_endpoint(listen: str, setting: str = "observability.listen") -> Endpoint:
    """Listen on ``host:port`` (port 0 picks one) and serve; a bind failure is a ``ConfigError`` on ``setting``."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server = _server_class(family)((str(address[0]), int(address[1])), _QuietHandler)
    except (OSError, UnicodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(setting, listen, f"cannot listen there: {reason}") from None
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    endpoint = Endpoint(server, registry)
    shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
    log.info(
        "metrics.started",
        listen=listen,
        port=endpoint.port,
        url=f"http://{shown}:{endpoint.port}/metrics",
        paths=list(PATHS),
    )
    return endpoint
