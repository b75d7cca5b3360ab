"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
REAL_CSV = SHARED / "realdata" / "dcgm_metrics_20250718_134233.csv"
TEST_DATA_CSV = REPO_ROOT / "test-data" / "metrics.csv"


@pytest.fixture
def real_csv() -> Path:
    """The real DCGM export in ../shared; tests that need it skip where it is absent (a user's clone)."""
    if not REAL_CSV.is_file():
        pytest.skip(f"real DCGM data not available at {REAL_CSV} (../shared is only beside CI checkouts)")
    return REAL_CSV
