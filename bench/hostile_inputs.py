"""Hostile inputs: does ``rxstreamer validate`` stay bounded in memory and free of tracebacks on them?

Writes, in a temporary directory, 100 MB files that real pipelines do produce by accident:

- ``random``: random bytes (a binary file given by mistake): refused at the header, exit status 2;
- ``header+random``: a good header, then random bytes: every "line" read, rejected and counted;
- ``no-newline``: a good header, then 100 MB without a single line break: one over-long line;
- ``open-quote``: a good header, valid rows, one row cut short inside a quoted field, then valid rows
  to 100 MB: only the cut row may be lost.

Each is validated by a subprocess (``python -m rxstreamer validate FILE --json`` once the command exists,
until then the same through ``python -c``), and this prints its exit status, wall time, peak RSS (from
``os.wait4``), the summary, and whether stderr holds a Python traceback. It prints figures; it asserts
nothing.

Files are written by child processes too, so that this process stays small: Linux counts the memory a
process had when it was forked (or vforked) into the peak RSS of the program it then executes.

    .venv/bin/python bench/hostile_inputs.py [--size-mb 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MB = 1024 * 1024
# Until the lead wires `rxstreamer validate`, the same behaviour as the command: JSON report on stdout,
# exit status 0 / 1 from the report, 2 with a one-line message for a file-level problem.
FALLBACK = """
import sys
from rxstreamer.sources import SourceError
from rxstreamer.validate import render_json, validate_file
try:
    report = validate_file(sys.argv[1])
except SourceError as error:
    print(f"rxstreamer validate: error: {error}", file=sys.stderr)
    sys.exit(2)
sys.stdout.write(render_json(report))
sys.exit(report.exit_code)
"""


@dataclass
class Outcome:
    name: str
    size_mb: float
    status: int
    wall_s: float
    peak_rss_mb: float
    summary: str
    traceback: bool


def header() -> bytes:
    # Imported where used: rxstreamer pulls in grpc and reactivex, and this process must stay small.
    from rxstreamer.generate import HEADER

    return HEADER.encode() + b"\n"


def valid_body(rows: int) -> bytes:
    """Valid data lines (no header) in the export's shape."""
    from rxstreamer.generate import generate_records, write_csv

    text = io.StringIO(newline="")
    write_csv(text, generate_records(hosts=8, gpus=8, scrapes=rows // 640 + 1, seed=3))
    return "".join(text.getvalue().splitlines(keepends=True)[1 : rows + 1]).encode()


def write_random(path: Path, size: int, *, with_header: bool = False) -> None:
    rng = random.Random(20250718)
    with path.open("wb") as out:
        if with_header:
            out.write(header())
        for _ in range(size // MB):
            out.write(rng.randbytes(MB))


def write_no_newline(path: Path, size: int) -> None:
    with path.open("wb") as out:
        out.write(header())
        chunk = b"x" * MB
        for _ in range(size // MB):
            out.write(chunk)


def write_open_quote(path: Path, size: int) -> None:
    body = valid_body(10_000)
    lines = body.splitlines(keepends=True)
    cut = lines[10][: lines[10].index(b"NVIDIA") + 3] + b"\n"  # inside the quoted modelName field
    with path.open("wb") as out:
        out.write(header())
        out.write(b"".join(lines[:10]) + cut + b"".join(lines[11:]))
        written = len(body)
        while written < size:
            out.write(body)
            written += len(body)


def validate_command() -> list[str]:
    """``python -m rxstreamer validate`` when the command exists, else the fallback script."""
    probe = subprocess.run(
        [sys.executable, "-m", "rxstreamer", "validate", "--help"], capture_output=True, cwd=REPO_ROOT, check=False
    )
    if probe.returncode == 0 and b"usage: rxstreamer validate" in probe.stdout:
        return [sys.executable, "-m", "rxstreamer", "validate", "--json"]
    return [sys.executable, "-c", FALLBACK]


def run(name: str, path: Path, command: list[str], workdir: Path) -> Outcome:
    """Validate ``path`` in a child process, measuring wall time and the child's peak RSS."""
    stdout_path, stderr_path = workdir / f"{name}.out", workdir / f"{name}.err"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        child = subprocess.Popen([*command, str(path)], stdout=stdout, stderr=stderr, cwd=REPO_ROOT)
        _, wait_status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, so Popen must not wait again
    out = stdout_path.read_text(encoding="utf-8", errors="replace")
    err = stderr_path.read_text(encoding="utf-8", errors="replace")
    return Outcome(
        name=name,
        size_mb=path.stat().st_size / MB,
        status=child.returncode,
        wall_s=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        summary=summarise(out, err),
        traceback="Traceback" in err or "Traceback" in out,
    )


def summarise(out: str, err: str) -> str:
    try:
        report = json.loads(out)
    except ValueError:
        return err.strip().splitlines()[-1] if err.strip() else "(no output)"
    reasons = ", ".join(f"{reason} {count}" for reason, count in report["rejected_by_reason"].items())
    return f"rows {report['rows']}, good {report['good']}, rejected {report['rejected']}" + (
        f" ({reasons})" if reasons else ""
    )


CASES: dict[str, Callable[[Path, int], None]] = {
    "random": write_random,
    "header+random": partial(write_random, with_header=True),
    "no-newline": write_no_newline,
    "open-quote": write_open_quote,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=100, help="size of each hostile file (default 100)")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them, instead of a temp dir")
    parser.add_argument("--write", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    size = args.size_mb * MB
    if args.write:
        CASES[args.write[0]](Path(args.write[1]), size)
        return

    command = validate_command()
    shown = "python -m rxstreamer validate" if "-m" in command else "python -c <validate_file, as the command would>"
    print(f"validating with: {shown}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rxstreamer-hostile-") as temporary:
        workdir = args.keep or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        outcomes = []
        real = REPO_ROOT.parent / "shared" / "realdata" / "dcgm_metrics_20250718_134233.csv"
        if real.is_file():
            outcomes.append(run("real export", real, command, workdir))
        for name in CASES:
            path = workdir / f"{name}.csv"
            subprocess.run(
                [sys.executable, __file__, "--size-mb", str(args.size_mb), "--write", name, str(path)], check=True
            )
            outcomes.append(run(name, path, command, workdir))
            if args.keep is None:
                path.unlink()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process: {own:.1f} MB peak RSS, an upper bound on what a child inherits at fork)")
    print(f"{'input':<14} {'MB':>6} {'exit':>4} {'wall s':>7} {'peak RSS MB':>11} {'traceback':>9}  summary")
    for o in outcomes:
        print(
            f"{o.name:<14} {o.size_mb:>6.1f} {o.status:>4} {o.wall_s:>7.2f} {o.peak_rss_mb:>11.1f} "
            f"{'YES' if o.traceback else 'no':>9}  {o.summary}"
        )


if __name__ == "__main__":
    main()
