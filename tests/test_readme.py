"""The README's library example runs as written, in code and loaded from settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rxstreamer.encoding import BatchEncoder, decode_batch
from rxstreamer.pipeline import build_pipeline, load_transforms
from rxstreamer.publisher import InMemoryPublisher
from rxstreamer.retry import RetryPolicy
from rxstreamer.source import CsvRows
from tests.conftest import REPO_ROOT, TEST_DATA_CSV

EXAMPLE = re.compile(r"<!-- readme-example: transform -->\n```python\n(.*?)```", re.DOTALL)


@pytest.fixture
def example_module(tmp_path: Path) -> Path:
    """The README's example saved as a module, the way a user would copy it."""
    match = EXAMPLE.search((REPO_ROOT / "README.md").read_text())
    assert match, "the README lost its transform example"
    path = tmp_path / "my_transforms.py"
    path.write_text(match.group(1))
    return path


def test_the_readme_example_prints_the_power_readings_in_kilowatts(example_module: Path) -> None:
    """Run as a script from the repository root, it publishes the 96 power rows rescaled to kW."""
    finished = subprocess.run(
        [sys.executable, str(example_module)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr
    expected_max = max(row.value for row in CsvRows(TEST_DATA_CSV) if row.metric_name == "DCGM_FI_DEV_POWER_USAGE")
    assert finished.stdout.split() == ["96", "{'DCGM_FI_DEV_POWER_USAGE'}", str(round(expected_max / 1000, 6))]


def test_the_readme_transform_loads_from_settings(
    example_module: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`transforms = ["my_transforms:power_in_kilowatts"]` gives the same operator as the code example."""
    monkeypatch.syspath_prepend(str(example_module.parent))
    monkeypatch.chdir(REPO_ROOT)  # importing the module runs its example, which reads test-data/
    transforms = load_transforms(["my_transforms:power_in_kilowatts"])
    capsys.readouterr()
    publisher = InMemoryPublisher()
    build_pipeline(
        CsvRows(TEST_DATA_CSV), publisher, BatchEncoder("p"), batch_size=50, interval=0, retry=RetryPolicy(),
        transforms=transforms,
    ).run()  # fmt: skip
    metrics = [metric for batch in publisher.batches for metric in decode_batch(batch.payload).metrics]
    assert len(metrics) == 96
    assert {metric.metric_name for metric in metrics} == {"DCGM_FI_DEV_POWER_USAGE"}
    assert all(metric.value < 1.0 for metric in metrics)
