"""Fixtures shared by the whole suite."""

from __future__ import annotations

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
