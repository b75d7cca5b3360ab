"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
REAL_CSV = SHARED / "realdata" / "dcgm_metrics_20250718_134233.csv"
REAL_PROM = SHARED / "realdata" / "dcgm_exporter_metrics_A800_8gpu_mig.prom"
TEST_DATA_CSV = REPO_ROOT / "test-data" / "metrics.csv"


@pytest.fixture
def real_csv() -> Path:
    """The real DCGM export in ../shared; tests that need it skip where it is absent (a user's clone)."""
    if not REAL_CSV.is_file():
        pytest.skip(f"real DCGM data not available at {REAL_CSV} (../shared is only beside CI checkouts)")
    return REAL_CSV


@pytest.fixture
def real_prom() -> Path:
    """The real dcgm-exporter scrape (8 A800s, one with MIG) in ../shared; skipped where it is absent."""
    if not REAL_PROM.is_file():
        pytest.skip(f"real dcgm-exporter scrape not available at {REAL_PROM} (../shared is only beside CI checkouts)")
    return REAL_PROM


def with_two_bad_rows(directory: Path) -> Path:
    """test-data/metrics.csv with a bad row after line 50 and another after line 100: rejected counts not zero."""
    lines = TEST_DATA_CSV.read_text().splitlines(keepends=True)
    path = directory / "metrics.csv"
    path.write_text("".join([*lines[:50], "bad,row\n", *lines[50:100], "also,bad\n", *lines[100:]]))
    return path


@pytest.fixture(scope="module")
def broker_address() -> Iterator[str]:
    """An in-memory broker of the project's own, in this process on 127.0.0.1, for one test module."""
    from rxstreamer.broker import BrokerOptions, start_broker  # imported here: most tests need no grpc

    running = start_broker(BrokerOptions(listen="127.0.0.1:0"))
    try:
        yield running.address
    finally:
        running.stop(grace=0)


@pytest.fixture(scope="module")
def promtool() -> str:
    """Prometheus's own linter; `make tools` installs it, so under CI its absence is a failure, not a skip."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not on PATH under CI: `make test` runs `make tools`, which installs it")
        pytest.skip("promtool is not on PATH: `make tools` installs it (Debian package prometheus)")
    return path


def promtool_check(promtool: str, text: str) -> tuple[int, list[str]]:
    """`promtool check metrics` on ``text``: its exit status (0 clean, 3 lint findings, 1 no parse) and lines."""
    finished = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    return finished.returncode, (finished.stdout + finished.stderr).splitlines()
