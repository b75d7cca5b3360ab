"""Where the streamer's time goes at full speed: a cProfile of the threads that do the work in ``rxstreamer run``.

``python -m cProfile -m rxstreamer run ...`` profiles only the main thread, and in ``rxstreamer run`` the
main thread only sets up and then waits (``threading.Event.wait`` in the service loop) while the pipeline runs
on the RxPY ``EventLoopScheduler`` thread and acknowledgements arrive on gRPC's channel thread: its profile
shows little but waiting. This script runs the same command with a profiler in every thread instead (it
patches ``threading.Thread.run`` before rxstreamer is imported), merges the profiles of the other threads
(the pipeline thread and gRPC's) and prints the top functions by cumulative and by total (own) time. The
main thread's profile (imports, settings, the file check, then waiting) is written to a file of its own.

The profiler's clock is the wall clock by default (cheap to read, so the run is only slightly slower than
without a profiler); rows that only measure blocking (lock acquires, gRPC's connectivity poller, the frames of
``threading.py``) are left out of the tables. ``--clock cpu`` uses each thread's CPU clock instead, which needs
no filtering but costs a system call per function call and entry, inflating every small function a lot.
``--main-thread-only`` runs plain ``python -m cProfile`` for comparison.

    .venv/bin/python bench/profile_streamer.py [--rows 200000] [--batch-size 1000] [--top 25] [--clock wall]

Writes bench/out/profile-<rows>-<batch>.prof (and -main.prof): open them with ``python -m pstats``. Timings
under a profiler are inflated, unevenly (function calls cost the most); read the tables for where the time
goes, not for how fast it is. The broker runs in its own process on 127.0.0.1 and is not profiled.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import OUT, REPO_ROOT, Broker, child_env, data_file, markdown_table, parse_log_line, unique_topic

Key = tuple[str, int, str]
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
# Rows that measure waiting, not work: left out of the tables of a wall-clock profile.
_BLOCKING_FUNCTIONS = ("<method 'acquire' of '_thread.lock' objects>", "_poll_connectivity", "channel_spin")


def profile_child(output: Path, clock: str, argv: list[str]) -> int:
    """Run ``rxstreamer`` with ``argv`` in this process, every thread profiled; dump the profiles."""
    timer = CLOCKS[clock]
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run: Callable[[threading.Thread], None] = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile(timer)
        with lock:
            profiles.append(profile)
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign,assignment]
    main_profile = cProfile.Profile(timer)
    main_profile.enable()
    try:
        from rxstreamer.cli import main

        code = main(argv)
    finally:
        main_profile.disable()
    for thread in threading.enumerate():  # let gRPC's threads finish after the channel closed
        if thread is not threading.current_thread():
            thread.join(timeout=2)
    still_running = sum(1 for thread in threading.enumerate() if thread is not threading.current_thread())
    main_profile.dump_stats(main_output(output))
    with lock:
        stats = pstats.Stats(*profiles)
    stats.dump_stats(output)
    print(f"profiled {len(profiles)} threads besides main ({still_running} still running at exit)", file=sys.stderr)
    return code


def main_output(output: Path) -> Path:
    return output.with_name(output.stem + "-main.prof")


def _blocking(key: Key) -> bool:
    filename, _, function = key
    return function in _BLOCKING_FUNCTIONS or filename.endswith("/threading.py")


def _short(filename: str) -> str:
    """A profile's file name without the machine-specific prefix: rxstreamer/..., reactivex/..., csv.py."""
    paths = sysconfig.get_paths()
    # Most specific first: the virtual environment may live inside the repository.
    prefixes = [paths["purelib"] + "/", paths["stdlib"] + "/", str(REPO_ROOT) + "/"]
    for prefix in prefixes:
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    return filename


def _name(key: Key) -> str:
    filename, line, function = key
    if filename == "~":  # a built-in: the name says it all, e.g. <method 'append' of 'list' objects>
        return function.replace("|", "\\|")
    return f"{_short(filename)}:{line}({function})".replace("|", "\\|")


def top_table(stats: pstats.Stats, by: str, top: int, *, skip_blocking: bool) -> str:
    """The ``top`` functions by ``cumulative`` or ``tottime`` as a markdown table.

    The % column is against the sum of every kept function's own time: the work the profile saw.
    """
    entries: dict[Key, tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    index = 3 if by == "cumulative" else 2
    kept = [item for item in entries.items() if not (skip_blocking and _blocking(item[0]))]
    work = sum(values[2] for _, values in kept) or 1.0
    ranked = sorted(kept, key=lambda item: item[1][index], reverse=True)[:top]
    rows = [
        (str(rank), f"{calls:,}" if calls == primitive else f"{calls:,}/{primitive:,}", f"{own:.3f}", f"{cum:.3f}",
         f"{100 * (cum if by == 'cumulative' else own) / work:.1f}", _name(key))
        for rank, (key, (primitive, calls, own, cum, _)) in enumerate(ranked, 1)
    ]  # fmt: skip
    table = markdown_table(("#", "calls", "tottime s", "cumtime s", "%", "function"), rows)
    return f"{table}\n\nwork seen (sum of own times): {work:.3f} s"


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        sys.exit(profile_child(Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="the profiler's clock")
    parser.add_argument("--main-thread-only", action="store_true", help="plain `python -m cProfile`, for comparison")
    args = parser.parse_args()

    path = data_file(args.rows)
    suffix = "-python-m-cprofile" if args.main_thread_only else ("-cpu" if args.clock == "cpu" else "")
    output = OUT / f"profile-{args.rows}-{args.batch_size}{suffix}.prof"
    with Broker() as broker:
        streamer_args = [
            "run", "--interval", "0", "--batch-size", str(args.batch_size), "--metrics-path", str(path),
            "--mq-address", broker.address, "--topic", unique_topic("profile"), "--log-format", "json",
        ]  # fmt: skip
        if args.main_thread_only:
            command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "rxstreamer", *streamer_args]
        else:
            command = [sys.executable, __file__, "--child", str(output), args.clock, *streamer_args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=child_env(), check=False)
    if result.returncode != 0:
        raise SystemExit(f"the profiled streamer failed (exit {result.returncode}):\n{result.stderr}")
    for line in result.stdout.splitlines():
        entry = parse_log_line(line)
        if entry is not None and entry.get("event") == "streamer.stopped":
            print(f"streamer.stopped under the profiler: {entry}\n")
    stats = pstats.Stats(str(output))
    if args.main_thread_only:
        scope = "main thread only (python -m cProfile)"
    else:
        scope = f"pipeline and gRPC threads, {args.clock} clock" + (", waits left out" if args.clock == "wall" else "")
    skip = args.clock == "wall" and not args.main_thread_only
    for by in ("cumulative", "tottime"):
        print(f"### Top {args.top} by {by}: {args.rows:,} rows, batch {args.batch_size}, {scope}\n")
        print(top_table(stats, by, args.top, skip_blocking=skip) + "\n")
    print(f"profile written to {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
