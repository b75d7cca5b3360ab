"""Wait until a broker answers SERVING: ``python -m rxstreamer.broker.ready ADDRESS [--timeout 10s] [--pid PID]``.

``make run`` starts its broker in the background and must not stream before that broker listens: a
streamer started first only logs connection-refused warnings, and one started while another process holds
the port streams into whoever listens there. This asks the standard gRPC health service (``grpc_health.v1``,
the whole server) until it says SERVING, and exits

- 0 once it does;
- 1 with one line on stderr when the deadline passes, or when the broker process ``--pid`` names has exited
  (a broker that could not bind has said why on its own stderr line by then).

With ``--pid``, SERVING only counts from that process: on Linux it must own a socket listening on the port
(``/proc``), so another broker already on the port is never taken for the one just started. Elsewhere it
must at least still be running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rxstreamer.durations import DURATION_HELP, parse_duration

EXIT_READY = 0
EXIT_NOT_READY = 1
# How long one health check may wait for the channel; between checks the broker process is looked at.
ATTEMPT_TIMEOUT = 0.2
# Reconnect quickly: gRPC's default backoff (1 s and growing) would delay a broker that is up in 100 ms.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
]


class NotReadyError(Exception):
    """The broker did not become ready; the message is the operator's one line."""


def wait_until_serving(address: str, timeout: float, pid: int | None = None) -> None:
    """Return once the health check at ``address`` says SERVING (from ``pid``, when given); else NotReadyError."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if pid is not None and not _running(pid):
                raise NotReadyError(f"the broker (pid {pid}) exited before it was ready at {address}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NotReadyError(f"no broker answered SERVING at {address} within {timeout:g}s (last: {last})")
            answer = _check(stub, min(ATTEMPT_TIMEOUT, remaining))
            if answer is None:
                last = "no answer"  # the check itself waited for a connection: no pause needed
                continue
            if answer == "SERVING" and (pid is None or _listens(pid, address)):
                return
            last = answer if answer != "SERVING" else f"SERVING, but not from pid {pid}, which does not listen there"
            # Something answered at once: pause before asking again, rather than spin.
            time.sleep(min(ATTEMPT_TIMEOUT, max(0.0, deadline - time.monotonic())))


def _check(stub: health_pb2_grpc.HealthStub, timeout: float) -> str | None:
    """One health check waiting up to ``timeout`` for a connection: what it answered, None if nothing did.

    An error other than no connection (UNIMPLEMENTED from a server without the health service, say) is an
    answer, named by its code.
    """
    try:
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        if code in (None, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            return None
        return str(code.name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie its parent has yet to reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal said it exists
    return stat[stat.rindex(")") + 2] != "Z"


def _listens(pid: int, address: str) -> bool:
    """Whether ``pid`` owns a TCP socket listening on the address's port (True where /proc cannot tell)."""
    port_text = address.rpartition(":")[2]
    if not port_text.isdigit() or not Path("/proc/net/tcp").exists():
        return _running(pid)
    port = int(port_text)
    listening: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEXIP:HEXPORT, st 0A is LISTEN, and the 10th field the socket's inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False  # gone, or not ours to inspect: not proven to be the broker we started
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) in listening:
                return True
        except OSError:
            continue
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 once the broker is SERVING, 1 with one line on stderr when it is not by the deadline."""
    parser = argparse.ArgumentParser(
        prog="python -m rxstreamer.broker.ready", description="Wait until a broker's health check says SERVING."
    )
    parser.add_argument("address", help="host:port of the broker")
    parser.add_argument("--timeout", default="10s", help=f"how long to wait: {DURATION_HELP} (default 10s)")
    parser.add_argument("--pid", type=int, help="the broker's process: fail at once if it exits, and only it counts")
    args = parser.parse_args(argv)
    try:
        timeout = parse_duration(args.timeout)
    except ValueError as error:
        parser.error(f"--timeout: {error}")
    address = args.address.removeprefix("grpc://")
    try:
        wait_until_serving(address, timeout, args.pid)
    except NotReadyError as error:
        print(f"rxstreamer: {error}", file=sys.stderr)
        return EXIT_NOT_READY
    return EXIT_READY


if __name__ == "__main__":
    sys.exit(main())
