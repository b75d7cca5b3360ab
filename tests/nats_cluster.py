"""A real three-node NATS JetStream cluster on 127.0.0.1, for the NATS sink's tests, benchmarks and `make run-nats`.

The sink's promises (no batch lost or stored twice across a leader election, a killed server, a restart) are
properties of a RAFT-replicated stream, which no fake reproduces: so the tests run Debian's ``nats-server``
(2.9, installed by `make tools`) as three processes. Each node gets free client, cluster and monitoring ports,
its own config file, ``jetstream { store_dir }`` and log file under one temporary directory; all of it is
removed on exit, whatever happened. Output goes to files, not pipes, so a chatty server never blocks on a full
pipe, and a failure can show every server's log.

Readiness and leadership are read from each server's HTTP monitoring endpoint (``/healthz``, ``/jsz``,
``/routez``) rather than through a NATS client: the harness stays synchronous and usable from any test or script,
and asks each server what it alone knows (only a leader can say for sure that it leads). No pytest here: bench
scripts import it too.

Security, for the tests of TLS and credentials: ``NatsCluster(tls=True)`` makes a CA and certificates with trustme
(for 127.0.0.1 and localhost, written to the cluster's directory: ``cluster.ca``, and ``client_cert`` and
``client_key`` for mutual TLS, which ``verify_clients=True`` requires), and ``authorization="..."`` puts that
text in the servers' ``authorization { }`` block (users with passwords or NKeys and their permissions, or a
token). Both apply to the client port only: routes between the servers and the monitoring endpoint stay plain,
on 127.0.0.1. The default is a plaintext cluster without authorization.

``python -m tests.nats_cluster --serve`` starts a cluster, prints its address and runs until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

NODE_NAMES = ("n1", "n2", "n3")
CLUSTER_NAME = "rxstreamer"
# Three servers on 2 cores start and elect a metadata leader in well under a second; the margin is for a busy CI.
READY_TIMEOUT = 30.0
# nats-server 2.9 calls a RAFT election after 4 to 9 s without a leader's heartbeat; then the vote itself.
ELECTION_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Debian's package installs the binary in /usr/sbin, which a non-root user's PATH does not hold.
FALLBACK_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")
MISSING_MESSAGE = (
    "nats-server is not installed (looked on PATH and in {dirs}): run `make tools`, which installs Debian's "
    "nats-server package (`make test` does it first)"
)
_LOG_TAIL_LINES = 60
# The monitoring endpoint is on 127.0.0.1: never through an HTTP proxy from the developer's environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NatsServerMissingError(RuntimeError):
    """No ``nats-server`` binary: the message says to run `make tools`."""


class ClusterError(RuntimeError):
    """The cluster did not do what was asked in time (start, form, elect); the message holds the servers' logs."""


def nats_server_binary() -> str:
    """The path of ``nats-server``: on PATH, else in /usr/sbin where Debian puts it (NatsServerMissingError)."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path=os.pathsep.join(FALLBACK_DIRS))
    if found is None:
        raise NatsServerMissingError(MISSING_MESSAGE.format(dirs=", ".join(FALLBACK_DIRS) or "nowhere else"))
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago on 127.0.0.1 (all held open together, so distinct)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass
class NatsNode:
    """One server of the cluster: its ports and files, and its process while it runs."""

    name: str
    client_port: int
    cluster_port: int
    http_port: int
    config: Path
    store_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    log_handle: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsCluster:
    """Three ``nats-server`` processes forming one JetStream cluster; a context manager.

    ``with NatsCluster() as cluster:`` returns once every server is healthy, routed to the others and agrees on a
    JetStream metadata leader; leaving the block kills the servers and deletes their files, even on an exception.
    ``start()`` and ``close()`` do the same for scripts that cannot use a ``with`` block.
    """

    def __init__(
        self,
        names: Sequence[str] = NODE_NAMES,
        *,
        cluster_name: str = CLUSTER_NAME,
        ready_timeout: float = READY_TIMEOUT,
        binary: str | None = None,
        tls: bool = False,
        verify_clients: bool = False,
        authorization: str = "",
    ) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"server names must be distinct and at least one: {names!r}")
        self.names: tuple[str, ...] = tuple(names)
        self.cluster_name = cluster_name
        self.ready_timeout = ready_timeout
        self._binary = binary
        self.tls = tls or verify_clients
        self.verify_clients = verify_clients
        self.authorization = authorization
        self.directory: Path | None = None
        self.nodes: dict[str, NatsNode] = {}
        # Seconds from the first process started to the cluster being ready (the last start() or restart()).
        self.started_in: float | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> NatsCluster:
        """Start every server and wait until the cluster is ready; on any failure nothing is left behind.

        Ports are picked free and then released, so another process may take one before a server binds it: a
        start whose server could not bind is retried with new ports (twice at most).
        """
        binary = self._binary or nats_server_binary()
        try:
            for attempt in range(3):
                self._lay_out()
                began = time.monotonic()
                for name in self.names:
                    self._spawn(binary, name)
                try:
                    self.wait_ready(self.names, self.ready_timeout)
                except ClusterError:
                    if attempt == 2 or not any("address already in use" in self.logs(n) for n in self.names):
                        raise
                    self._cleanup()
                    continue
                self.started_in = time.monotonic() - began
                return self
        except BaseException:
            self._cleanup()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Kill every server (its data is deleted next, so no graceful stop is needed) and remove the directory."""
        self._cleanup()

    def _cleanup(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
            if node.process is not None:
                node.process.wait(STOP_TIMEOUT)
            if node.log_handle is not None:
                node.log_handle.close()
                node.log_handle = None
        self.nodes = {}
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _lay_out(self) -> None:
        """A fresh directory with one config file, store directory and log file per server, on fresh ports."""
        self.directory = Path(tempfile.mkdtemp(prefix="rxstreamer-nats-"))
        if self.tls:
            self._write_certificates(self.directory)
        ports = free_ports(3 * len(self.names))
        routes = [f"nats-route://127.0.0.1:{ports[3 * i + 1]}" for i in range(len(self.names))]
        for i, name in enumerate(self.names):
            client_port, cluster_port, http_port = ports[3 * i : 3 * i + 3]
            node = NatsNode(
                name=name,
                client_port=client_port,
                cluster_port=cluster_port,
                http_port=http_port,
                config=self.directory / f"{name}.conf",
                store_dir=self.directory / name,  # nats-server keeps its JetStream files in store_dir/jetstream
                log=self.directory / f"{name}.log",
            )
            node.config.write_text(self._config(node, routes))
            self.nodes[name] = node

    @property
    def ca(self) -> Path:
        """The PEM file of the CA that signed the servers' (and the client's) certificates; only with ``tls``."""
        return self._pki_file("ca.pem")

    @property
    def client_cert(self) -> Path:
        return self._pki_file("client.pem")

    @property
    def client_key(self) -> Path:
        return self._pki_file("client.key")

    def _pki_file(self, name: str) -> Path:
        if not self.tls or self.directory is None:
            raise ValueError("only a started NatsCluster(tls=True) has certificates")
        return self.directory / "pki" / name

    def _write_certificates(self, directory: Path) -> None:
        import trustme  # here: only clusters with TLS need it (a dev dependency)

        pki = directory / "pki"
        pki.mkdir()
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("streamer.test")
        ca.cert_pem.write_to_path(str(pki / "ca.pem"))
        server.cert_chain_pems[0].write_to_path(str(pki / "server.pem"))
        server.private_key_pem.write_to_path(str(pki / "server.key"))
        client.cert_chain_pems[0].write_to_path(str(pki / "client.pem"))
        client.private_key_pem.write_to_path(str(pki / "client.key"))

    def _config(self, node: NatsNode, routes: Sequence[str]) -> str:
        """The server's config: every listener on 127.0.0.1; every server lists all routes (its own is ignored)."""
        q = json.dumps  # NATS config accepts JSON strings, which quotes paths and names safely
        route_list = ", ".join(q(route) for route in routes)
        config = (
            f"server_name: {q(node.name)}\n"
            f"listen: {q(f'127.0.0.1:{node.client_port}')}\n"
            f"http: {q(f'127.0.0.1:{node.http_port}')}\n"
            f"jetstream {{\n  store_dir: {q(str(node.store_dir))}\n}}\n"
            f"cluster {{\n  name: {q(self.cluster_name)}\n  listen: {q(f'127.0.0.1:{node.cluster_port}')}\n"
            f"  routes: [{route_list}]\n}}\n"
        )
        if self.tls:  # the client port only: the cluster block has its own tls, left out, so routes stay plain
            assert self.directory is not None
            pki = self.directory / "pki"
            verify = f"  ca_file: {q(str(pki / 'ca.pem'))}\n  verify: true\n" if self.verify_clients else ""
            config += (
                f"tls {{\n  cert_file: {q(str(pki / 'server.pem'))}\n  key_file: {q(str(pki / 'server.key'))}\n"
                f"{verify}  timeout: 2\n}}\n"
            )
        if self.authorization:  # likewise: routes are not authorized by it
            config += f"authorization {{\n{self.authorization}\n}}\n"
        return config

    def _spawn(self, binary: str, name: str) -> None:
        node = self.node(name)
        if node.log_handle is None:
            node.log_handle = node.log.open("ab")
        node.log_handle.write(f"--- harness: starting {name} ({binary} -c {node.config})\n".encode())
        node.log_handle.flush()
        node.process = subprocess.Popen(
            [binary, "-c", str(node.config)],
            stdin=subprocess.DEVNULL,
            stdout=node.log_handle,
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: a Ctrl-C reaches the harness, which stops the servers itself
            # (after `--serve` has reported on them), instead of killing them under it.
            start_new_session=True,
        )

    # --- what a test asks for -------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every server's client URL, ``nats://127.0.0.1:PORT``, in the order of ``names``."""
        return [self.node(name).url for name in self.names]

    @property
    def address(self) -> str:
        """The URLs comma-joined, as ``message_queue.address`` (``--mq-address``) takes them."""
        return ",".join(self.urls)

    def node(self, name: str) -> NatsNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no server {name!r} in a started cluster of {list(self.nodes) or 'none'}") from None

    def running(self) -> list[str]:
        """The names of the servers whose process is alive."""
        return [name for name in self.names if name in self.nodes and self.nodes[name].running]

    def kill(self, name: str) -> None:
        """SIGKILL the server, as a crash would (no RAFT step-down, no flush); returns once it is gone."""
        self._signal(name, signal.SIGKILL)

    def stop(self, name: str) -> None:
        """SIGTERM the server, its graceful shutdown; returns once it has exited (killed after STOP_TIMEOUT).

        A stream leader steps down on its way out, so another leads within tens of milliseconds. nats-server 2.9
        exits with status 1 after a SIGTERM (0 after a SIGINT): the status does not tell a clean stop.
        """
        self._signal(name, signal.SIGTERM)

    def _signal(self, name: str, signum: int) -> None:
        node = self.node(name)
        if node.process is None or node.process.poll() is not None:
            return
        node.process.send_signal(signum)
        try:
            node.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(STOP_TIMEOUT)

    def restart(self, name: str, *, wait: bool = True, timeout: float | None = None) -> None:
        """Start the server again on the same ports and store directory (stopping it first if it runs).

        With ``wait``, returns once the whole cluster is ready again: this server healthy (JetStream current with
        the metadata leader and its streams), routed to the others, and agreeing on the metadata leader. "Current"
        is RAFT's word, not "every message applied": its replica may still be a few messages short for a moment,
        so a test that counts them waits on ``monitor(name, "/jsz?streams=true")``.
        """
        self.stop(name)
        began = time.monotonic()
        self._spawn(self._binary or nats_server_binary(), name)
        if wait:
            self.wait_ready(self.running(), self.ready_timeout if timeout is None else timeout)
            self.started_in = time.monotonic() - began

    def logs(self, name: str) -> str:
        """Everything the server has written (all of its runs, each after a ``--- harness: starting`` line)."""
        try:
            return self.node(name).log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def monitor(self, name: str, path: str, timeout: float = 2.0) -> Any:
        """The JSON of the server's monitoring endpoint ``path`` (``/jsz?streams=true``, ``/routez``, ...).

        A non-2xx answer whose body is JSON (``/healthz`` says 503 with a reason) is returned too; a server that
        does not answer raises OSError.
        """
        url = f"http://127.0.0.1:{self.node(name).http_port}{path}"
        try:
            with _HTTP.open(url, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                body = error.read()
            try:
                return json.loads(body)
            except ValueError:
                raise OSError(f"{url}: HTTP {error.code} {body[:200]!r}") from None

    def meta_leader(self, name: str) -> str | None:
        """The JetStream metadata leader as the server ``name`` sees it (None: none known, or it does not answer)."""
        try:
            leader = self.monitor(name, "/jsz").get("meta_cluster", {}).get("leader")
        except OSError:
            return None
        return str(leader) if leader else None

    def leader(self, stream: str) -> str | None:
        """The server leading the stream now: the one that says it leads it (``/jsz?streams=true``), else None.

        Only the leader's own word counts: a follower may still name a leader that has just died.
        """
        detail = self.streams().get(stream)
        return None if detail is None else str(detail["cluster"]["leader"])

    def streams(self) -> dict[str, dict[str, Any]]:
        """Each stream that has a leader now, as its leader reports it (``/jsz?streams=true``): ``state``
        (``messages``, ``bytes``, ``first_seq``, ``last_seq``...) and ``cluster`` (``leader``, ``replicas``)."""
        found: dict[str, dict[str, Any]] = {}
        for name in self.running():
            try:
                jsz = self.monitor(name, "/jsz?streams=true", timeout=1.0)
            except OSError:
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if (detail.get("cluster") or {}).get("leader") == name:
                        found.setdefault(str(detail.get("name")), detail)
        return found

    def wait_for_leader(self, stream: str, *, other_than: str | None = None, timeout: float = ELECTION_TIMEOUT) -> str:
        """The stream's leader once there is one (one other than ``other_than``, after an election); ClusterError
        with the logs when there is none within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader(stream)
            if leader is not None and leader != other_than:
                return leader
            if time.monotonic() > deadline:
                wanted = f"a leader other than {other_than}" if other_than else "a leader"
                raise ClusterError(f"stream {stream} had no {wanted} after {timeout}s\n{self._report()}")
            time.sleep(0.05)

    # --- readiness ------------------------------------------------------------------------------------------

    def wait_ready(self, names: Iterable[str] | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the servers ``names`` (default: those running) form a ready cluster, or raise ClusterError.

        Ready: each is healthy (``/healthz``, which in a cluster also means JetStream is current with the metadata
        leader and with its streams), has a route to each of the others, and all name the same metadata leader,
        one of them. A server that exits meanwhile fails the wait at once.
        """
        wanted = list(self.running() if names is None else names)
        deadline = time.monotonic() + timeout
        while True:
            for name in wanted:
                node = self.node(name)
                if not node.running:
                    code = node.process.returncode if node.process is not None else None
                    raise ClusterError(f"nats-server {name} exited ({code}) while starting\n{self._report()}")
            waiting_for = self._not_ready(wanted)
            if waiting_for is None:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the cluster {wanted} was not ready after {timeout}s: {waiting_for}\n{self._report()}"
                )
            time.sleep(0.05)

    def _not_ready(self, names: Sequence[str]) -> str | None:
        """What the cluster still lacks (for the error message), or None when it is ready."""
        routez: dict[str, Any] = {}
        for name in names:
            try:
                health = self.monitor(name, "/healthz", timeout=1.0)
                if health.get("status") != "ok":
                    return f"{name} not healthy: {health}"
                routez[name] = self.monitor(name, "/routez", timeout=1.0)
            except OSError as error:
                return f"{name} does not answer on its monitoring port: {error}"
        # 2.9's /routez names a route's remote by server id (new at every start), not by server name.
        ids = {name: routez[name].get("server_id") for name in names}
        leaders = set()
        for name in names:
            routed = {route.get("remote_id") for route in routez[name].get("routes") or []}
            if missing := [other for other in names if other != name and ids[other] not in routed]:
                return f"{name} has no route to {missing}"
            leaders.add(self.meta_leader(name))
        if len(leaders) != 1 or next(iter(leaders)) not in names:
            return f"no agreed JetStream metadata leader among {list(names)}: {leaders}"
        return None

    def _report(self) -> str:
        """The tail of every server's log, for an error message."""
        parts = []
        for name in self.names:
            if name not in self.nodes:
                continue
            lines = self.logs(name).splitlines()[-_LOG_TAIL_LINES:]
            parts.append(f"--- {name} ({self.node(name).log}), last {len(lines)} lines:\n" + "\n".join(lines))
        return "\n".join(parts)


def cluster_for_test(**options: Any) -> Iterator[NatsCluster]:
    """The body of a pytest fixture (``yield from cluster_for_test()``): a ready cluster, closed after the test.

    A missing ``nats-server`` fails the test with the `make tools` hint rather than skipping it: CI installs the
    server, so a skip would only hide that the NATS tests did not run.
    """
    try:
        cluster = NatsCluster(**options).start()
    except NatsServerMissingError as error:
        import pytest  # here, not at the top: bench scripts and --serve import this module without pytest

        pytest.fail(str(error), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


# --- python -m tests.nats_cluster --serve ------------------------------------------------------------------------


class _OneInterrupt:
    """A SIGINT/SIGTERM handler that interrupts once: a second signal (a Ctrl-C and then the SIGTERM of the
    script's exit trap) must not cut the clean-up short and leave servers or their directory behind."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.done:
            self.done = True
            raise KeyboardInterrupt


def serve(address_file: Path | None, out: IO[str] = sys.stdout) -> int:
    """Run a cluster until Ctrl-C or SIGTERM (exit 0) or until one of its servers dies (exit 1, with its log).

    The address is printed, and written to ``address_file`` (atomically, by a rename) once the cluster is ready,
    so that a script can wait for the file and then stream into the cluster. On SIGTERM (how `make run-nats` ends
    it) what each stream holds is printed before the servers go: the queue's side of the streamer's summary.
    """
    interrupt = _OneInterrupt()
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        with NatsCluster() as cluster:
            print(f"NATS JetStream cluster ready in {cluster.started_in:.2f}s: {cluster.address}", file=out, flush=True)
            if address_file is not None:
                partial = address_file.with_name(address_file.name + ".partial")
                partial.write_text(cluster.address + "\n")
                partial.replace(address_file)
            try:
                while len(cluster.running()) == len(cluster.names):
                    time.sleep(0.2)
                interrupt.done = True  # from here on, the clean-up runs to its end
            except KeyboardInterrupt:
                print("--- what the cluster holds:", file=out, flush=True)
                for name, detail in sorted(cluster.streams().items()):
                    state, replicas = detail.get("state", {}), detail["cluster"].get("replicas") or []
                    print(
                        f"stream {name}: {state.get('messages')} messages, {state.get('bytes')} bytes, "
                        f"{1 + len(replicas)} replicas, leader {detail['cluster']['leader']}",
                        file=out,
                        flush=True,
                    )
                return 0
            dead = [name for name in cluster.names if name not in cluster.running()]
            print(f"nats-server {dead} exited\n{cluster._report()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 130  # while starting
    except (NatsServerMissingError, ClusterError) as error:
        print(f"tests.nats_cluster: {error}", file=sys.stderr)
        return 1
    finally:
        if address_file is not None:
            address_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nats_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", required=True, help="run a cluster until Ctrl-C")
    parser.add_argument("--address-file", type=Path, help="write the address here once the cluster is ready")
    args = parser.parse_args(argv)
    return serve(args.address_file)


if __name__ == "__main__":
    sys.exit(main())
