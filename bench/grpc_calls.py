"""What one publish costs in Python gRPC, by the way the call is made: why the gRPC sink calls ``future()``.

A bare server (one unary and one bidirectional-streaming method, answering 8 bytes, in its own process on
127.0.0.1) and a client that makes ``--calls`` sequential calls with a ``--payload``-byte request (1,100 bytes:
a 10-row batch in the v2 encoding), one call in flight at a time, as the streamer's pipeline does. For each way
of calling, the figures are the wall time per call and the CPU per call of the client and of the server (the
server's from /proc, so Linux only). The ways are alternated over ``--rounds``; the table gives medians.

- ``blocking``: ``stub.Method(request)``. The calling thread polls the call's own completion queue: no other
  thread, the least client CPU, but the caller can do nothing else meanwhile.
- ``future``: ``stub.Method.future(request)`` and its result, what the gRPC sink does. gRPC's channel thread
  carries the call, so the caller's thread is free; the channel starts that thread again for every call when
  none is in flight (grpc/_channel.py), which is most of the extra CPU.
- ``stream``: one bidirectional stream, a request written and its answer read per publish: no call to set up
  each time (a third less server CPU), but gRPC's thread that sends the requests and the reader are two more
  hand-offs under the GIL.
- ``aio-stream``: the same stream in ``grpc.aio`` on an event-loop thread, each answer handed back through a
  queue as the sink hands answers to the pipeline's scheduler.

The ``stream`` ways were built into the sink and the broker (branch ``experiment/publish-stream``) and measured
whole (docs/benchmarks.md, "Publish stream: tried, not kept"): what they save here is spent in the streamer.

    .venv/bin/python bench/grpc_calls.py [--calls 3000] [--payload 1100] [--rounds 3]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from _common import markdown_table, median

MODES = ("blocking", "future", "stream", "aio-stream")
_SERVICE = "bench.Calls"


def _identity(data: bytes) -> bytes:
    return data


def serve() -> None:
    """The bare server: its port on stdout, then serve until killed."""

    def unary(request: bytes, _: grpc.ServicerContext) -> bytes:
        return request[:8]

    def bidi(requests: Iterator[bytes], _: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request[:8]

    handlers = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _identity, _identity),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _calls(mode: str, address: str, payload: bytes, calls: int) -> Callable[[], None]:
    """A function making ``calls`` calls in ``mode``, one at a time (the channel connected beforehand)."""
    channel = grpc.insecure_channel(address)
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{_SERVICE}/Unary")
    bidi: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(f"/{_SERVICE}/Bidi")
    unary(payload, timeout=10)
    if mode == "blocking":

        def blocking() -> None:
            for _ in range(calls):
                unary(payload, timeout=10)

        return blocking
    if mode == "future":

        def on_futures() -> None:
            for _ in range(calls):
                unary.future(payload, timeout=10).result()

        return on_futures
    if mode == "stream":

        def on_a_stream() -> None:
            requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
            answers = bidi(iter(requests.get, None))
            for _ in range(calls):
                requests.put(payload)
                next(answers)
            requests.put(None)
            list(answers)

        return on_a_stream
    return _aio_stream(address, payload, calls)


def _aio_stream(address: str, payload: bytes, calls: int) -> Callable[[], None]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def open_stream() -> grpc.aio.StreamStreamCall[bytes, bytes]:
        channel = grpc.aio.insecure_channel(address)
        await channel.channel_ready()
        return channel.stream_stream(f"/{_SERVICE}/Bidi")()

    stream = asyncio.run_coroutine_threadsafe(open_stream(), loop).result()
    answers: queue.SimpleQueue[object] = queue.SimpleQueue()  # stands for the pipeline's scheduler

    async def publish() -> None:
        await stream.write(payload)
        answers.put(await stream.read())

    def on_the_loop() -> None:
        for _ in range(calls):
            loop.call_soon_threadsafe(lambda: loop.create_task(publish()) and None)
            answers.get()

    return on_the_loop


def measure(mode: str, address: str, payload_size: int, calls: int) -> None:
    """In a child process: make the calls and print wall and CPU seconds."""
    run = _calls(mode, address, b"x" * payload_size, calls)
    started, cpu = time.perf_counter(), _client_cpu()
    run()
    print(time.perf_counter() - started, _client_cpu() - cpu, flush=True)
    os._exit(0)  # an aio loop thread and open channels need no orderly goodbye here


def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--payload", type=int, default=1100, help="request bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "ADDRESS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.measure:
        measure(args.measure[0], args.measure[1], args.payload, args.calls)
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    figures: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
    try:
        assert server.stdout is not None
        address = f"127.0.0.1:{server.stdout.readline().strip()}"
        for round_number in range(args.rounds):
            for mode in MODES if round_number % 2 == 0 else reversed(MODES):
                before = _server_cpu(server.pid)
                child = [sys.executable, __file__, "--measure", mode, address]
                out = subprocess.run(
                    [*child, "--calls", str(args.calls), "--payload", str(args.payload)],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=300,
                ).stdout
                wall, cpu = (float(value) for value in out.split())
                server_cpu = _server_cpu(server.pid) - before
                figures[mode].append((wall, cpu, server_cpu))
                print(f"  round {round_number + 1} {mode:10} {wall / args.calls * 1e6:6.0f} µs a call", file=sys.stderr)
    finally:
        server.kill()
    per_call = 1e6 / args.calls
    rows = [
        [mode, *(f"{median(value[i] for value in figures[mode]) * per_call:.0f}" for i in range(3))] for mode in MODES
    ]
    print(
        f"### gRPC calls: {args.calls:,} sequential calls of {args.payload:,} bytes, medians of {args.rounds} rounds\n"
    )
    print(markdown_table(["way", "wall µs a call", "client CPU µs a call", "server CPU µs a call"], rows))


if __name__ == "__main__":
    main()
