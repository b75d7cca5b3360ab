"""The README's library examples run as written: the transform in code and from settings, and the user's sink."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rxstreamer.encoding import BatchEncoder, decode_batch
from rxstreamer.pipeline import build_pipeline, load_transforms
from rxstreamer.retry import RetryPolicy
from rxstreamer.sinks import InMemorySink
from rxstreamer.sources import CsvRows
from tests.conftest import REPO_ROOT, TEST_DATA_CSV


def readme_example(name: str) -> str:
    """The code of the README block marked ``<!-- readme-example: name -->``."""
    pattern = re.compile(rf"<!-- readme-example: {name} -->\n```python\n(.*?)```", re.DOTALL)
    match = pattern.search((REPO_ROOT / "README.md").read_text())
    assert match, f"the README lost its {name} example"
    return match.group(1)


@pytest.fixture
def example_module(tmp_path: Path) -> Path:
    """The README's transform example saved as a module, the way a user would copy it."""
    path = tmp_path / "my_transforms.py"
    path.write_text(readme_example("transform"))
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
    sink = InMemorySink()
    build_pipeline(
        CsvRows(TEST_DATA_CSV), sink, BatchEncoder("p"), batch_size=50, interval=0, retry=RetryPolicy(),
        transforms=transforms,
    ).run()  # fmt: skip
    metrics = [metric for batch in sink.batches for metric in decode_batch(batch.payload).metrics]
    assert len(metrics) == 96
    assert {metric.metric_name for metric in metrics} == {"DCGM_FI_DEV_POWER_USAGE"}
    assert all(metric.value < 1.0 for metric in metrics)


def test_the_readme_sink_writes_every_row_of_the_file_as_a_json_line(tmp_path: Path) -> None:
    """The user's JsonLinesSink, run as a script: 960 JSON lines, the file's rows in order, and its count printed."""
    script = tmp_path / "my_sink.py"
    script.write_text(readme_example("sink"))
    output = tmp_path / "out.jsonl"
    finished = subprocess.run(
        [sys.executable, str(script), str(output)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == f"960 rows written to {output}\n"
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == 960
    expected = [(row.uuid, row.metric_name, row.value) for row in CsvRows(TEST_DATA_CSV)]
    assert [(metric["uuid"], metric["metric_name"], metric["value"]) for metric in written] == expected
    assert written[0]["uuid"] == "GPU-6513270e-269e-0d37-f2a7-4de452e6b438"
