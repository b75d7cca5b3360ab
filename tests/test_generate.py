"""The DCGM CSV generator: the real export's exact format, realistic values, determinism; and the real file."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import groupby, pairwise
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.generate import generate_file, generate_records
from rxstreamer.model import MetricRow, Rejection
from rxstreamer.parsing import RowParser
from rxstreamer.sources import CsvRows

# The export's header line, byte for byte: a column list, not data.
EXPORT_HEADER = (
    b"timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n"
)
EXPORT_METRICS = [
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
]
EXPORT_LABEL_KEYS = [
    "DCGM_FI_DRIVER_VERSION",
    "Hostname",
    "UUID",
    "__name__",
    "device",
    "gpu",
    "instance",
    "job",
    "modelName",
]
# Usable framebuffer of an H100 80GB as the export reports it: FB_USED + FB_FREE on every GPU.
FB_TOTAL_MIB = 81007
UUID_SHAPE = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TEST_DATA = Path(__file__).resolve().parent.parent / "test-data" / "metrics.csv"


def records_of(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.reader(file))[1:]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def quoted_as_export(fields: list[str]) -> bytes:
    """The line the export would write for these fields: every field quoted, quotes doubled, LF."""
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(fields)
    return out.getvalue().encode("ascii")


def naive_labels(raw: str) -> dict[str, str]:
    """Labels read the simplest possible way, valid for values without quotes or commas (both files)."""
    return dict(re.findall(r'(\w+)="([^"]*)"', raw))


def parse_all(path: Path) -> tuple[list[MetricRow], list[Rejection]]:
    rejections: list[Rejection] = []
    rows = list(CsvRows(path, on_reject=rejections.append))
    return rows, rejections


def assert_export_shape(path: Path) -> None:
    """The shape every DCGM export here has; applied to the real file too, so the check itself is checked."""
    lines = lines_of(path)
    assert lines[0] == EXPORT_HEADER
    records = records_of(path)
    assert len(records) == len(lines) - 1  # one record per line: no field spans lines
    for line, fields in zip(lines[1:], records, strict=True):
        assert len(fields) == 12
        assert line == quoted_as_export(fields)
        assert (fields[7], fields[8], fields[9]) == ("", "", "")
        assert list(naive_labels(fields[11])) == EXPORT_LABEL_KEYS
        assert '""' in line.decode("ascii").rsplit('","', 1)[1]  # labels_raw quotes are doubled
    assert b"\r" not in path.read_bytes()


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generated") / "small.csv"
    generate_file(path, hosts=3, gpus=4, scrapes=20, seed=11)
    return path


def test_generated_file_has_the_export_format(small_csv: Path) -> None:
    """Header byte-identical, 12 fields each quoted, empty k8s columns, 9 label keys in order, LF endings."""
    assert_export_shape(small_csv)


def test_metrics_come_in_blocks_of_every_gpu_in_export_order(small_csv: Path) -> None:
    """Each scrape is one contiguous block per metric, in the export's metric order, holding every GPU."""
    records = records_of(small_csv)
    blocks = [(metric, len(list(block))) for metric, block in groupby(records, key=lambda fields: fields[1])]
    assert blocks == [(metric, 3 * 4) for metric in EXPORT_METRICS] * 20
    uuids_per_block = {
        tuple(fields[4] for fields in records[start : start + 12]) for start in range(0, len(records), 12)
    }
    assert len(uuids_per_block) == 1


def test_fleet_identity(small_csv: Path) -> None:
    """hosts x gpus distinct GPUs with UUID-shaped ids, per-host indexes 0..gpus-1, labels agreeing with fields."""
    records = records_of(small_csv)
    gpus = {(fields[6], fields[2], fields[3], fields[4], fields[5]) for fields in records}
    assert len(gpus) == 12
    assert len({host for host, *_ in gpus}) == 3
    assert all(UUID_SHAPE.fullmatch(uuid) for *_, uuid, _ in gpus)
    assert {(gpu_id, device) for _, gpu_id, device, _, _ in gpus} == {(str(i), f"nvidia{i}") for i in range(4)}
    assert {model for *_, model in gpus} == {"NVIDIA H100 80GB HBM3"}
    for fields in records:
        labels = naive_labels(fields[11])
        assert (labels["Hostname"], labels["UUID"], labels["__name__"]) == (fields[6], fields[4], fields[1])
        assert (labels["gpu"], labels["device"], labels["modelName"]) == (fields[2], fields[3], fields[5])
        assert labels["instance"] == f"{fields[6]}:9400"


def test_timestamps_step_by_the_scrape_interval(tmp_path: Path) -> None:
    """Scrape n is stamped start + n * interval, in RFC 3339 UTC at second resolution."""
    path = tmp_path / "times.csv"
    start = datetime(2024, 2, 29, 23, 59, 30, tzinfo=UTC)
    generate_file(path, hosts=1, gpus=1, scrapes=3, start=start, scrape_interval=15)
    stamps = [fields[0] for fields in records_of(path)]
    assert stamps == [
        s for s in ("2024-02-29T23:59:30Z", "2024-02-29T23:59:45Z", "2024-03-01T00:00:00Z") for _ in range(10)
    ]


def test_values_are_in_realistic_ranges(small_csv: Path) -> None:
    """Each metric stays within what an H100 reports, as integers except power with up to 3 decimals."""
    ranges = {
        "DCGM_FI_DEV_GPU_UTIL": (0, 100),
        "DCGM_FI_DEV_MEM_COPY_UTIL": (0, 100),
        "DCGM_FI_DEV_POWER_USAGE": (60, 700),
        "DCGM_FI_DEV_GPU_TEMP": (28, 85),
        "DCGM_FI_DEV_FB_USED": (0, FB_TOTAL_MIB),
        "DCGM_FI_DEV_FB_FREE": (0, FB_TOTAL_MIB),
        "DCGM_FI_DEV_DEC_UTIL": (0, 100),
        "DCGM_FI_DEV_ENC_UTIL": (0, 100),
        "DCGM_FI_DEV_SM_CLOCK": (210, 1980),
        "DCGM_FI_DEV_MEM_CLOCK": (2619, 2619),
    }
    for fields in records_of(small_csv):
        metric, text = fields[1], fields[10]
        low, high = ranges[metric]
        assert low <= float(text) <= high, (metric, text)
        pattern = r"\d+(\.\d{1,3})?" if metric == "DCGM_FI_DEV_POWER_USAGE" else r"\d+"
        assert re.fullmatch(pattern, text), (metric, text)


def per_gpu_series(records: list[list[str]], metric: str) -> dict[str, list[float]]:
    series: dict[str, list[float]] = defaultdict(list)
    for fields in records:
        if fields[1] == metric:
            series[fields[4]].append(float(fields[10]))
    return series


def test_fb_used_plus_free_is_the_framebuffer(small_csv: Path) -> None:
    """For every GPU and scrape, FB_USED + FB_FREE is the H100's usable framebuffer."""
    records = records_of(small_csv)
    used = per_gpu_series(records, "DCGM_FI_DEV_FB_USED")
    free = per_gpu_series(records, "DCGM_FI_DEV_FB_FREE")
    sums = {u + f for uuid in used for u, f in zip(used[uuid], free[uuid], strict=True)}
    assert sums == {FB_TOTAL_MIB}


def test_readings_drift_per_gpu_rather_than_jump(tmp_path: Path) -> None:
    """A GPU's temperature moves a little between scrapes while GPUs differ: continuity, not noise."""
    path = tmp_path / "drift.csv"
    generate_file(path, hosts=2, gpus=8, scrapes=60, seed=4)
    records = records_of(path)
    temps = per_gpu_series(records, "DCGM_FI_DEV_GPU_TEMP")
    steps = [abs(b - a) for series in temps.values() for a, b in pairwise(series)]
    spreads = [max(series) - min(series) for series in temps.values()]
    assert sum(steps) / len(steps) < 3
    assert max(spreads) > 10  # some GPUs heat up and cool down over the run
    utils = per_gpu_series(records, "DCGM_FI_DEV_GPU_UTIL")
    powers = per_gpu_series(records, "DCGM_FI_DEV_POWER_USAGE")
    busy = [p for uuid in utils for u, p in zip(utils[uuid], powers[uuid], strict=True) if u >= 80]
    idle = [p for uuid in utils for u, p in zip(utils[uuid], powers[uuid], strict=True) if u == 0]
    assert busy
    assert idle
    assert min(busy) > sum(idle) / len(idle)  # power follows utilisation


def test_same_seed_same_file_other_seed_other_file(tmp_path: Path) -> None:
    """Output is a function of the arguments: equal seeds give equal bytes, another seed other values."""
    paths = [tmp_path / f"{name}.csv" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (3, 3, 4), strict=True):
        generate_file(path, hosts=2, gpus=2, scrapes=5, seed=seed)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_rows_caps_the_output_to_a_prefix(tmp_path: Path) -> None:
    """rows=N writes exactly N rows, the first N of the uncapped file for the same seed."""
    capped, full = tmp_path / "capped.csv", tmp_path / "full.csv"
    assert generate_file(capped, hosts=1, gpus=2, scrapes=5, rows=25, seed=8) == 25
    assert generate_file(full, hosts=1, gpus=2, scrapes=5, seed=8) == 100
    assert lines_of(capped) == lines_of(full)[:26]


def test_rows_without_scrapes_simulates_enough_scrapes(tmp_path: Path) -> None:
    """Given only rows, the generator runs as many scrapes as needed to fill them."""
    path = tmp_path / "sized.csv"
    assert generate_file(path, hosts=1, gpus=2, rows=45) == 45
    records = records_of(path)
    assert len(records) == 45
    assert len({fields[0] for fields in records}) == 3  # 20 rows per scrape


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"hosts": 0, "gpus": 1, "scrapes": 1}, "hosts and gpus must be at least 1"),
        ({"hosts": 1, "gpus": 0, "scrapes": 1}, "hosts and gpus must be at least 1"),
        ({"hosts": 1, "gpus": 1, "scrapes": -1}, "scrapes must not be negative"),
        ({"hosts": 1, "gpus": 1, "scrapes": 1, "rows": -1}, "rows must not be negative"),
        ({"hosts": 1, "gpus": 1}, "give scrapes, rows, or both"),
        ({"hosts": 1, "gpus": 1, "scrapes": 1, "start": datetime(2025, 1, 1)}, "start must be timezone-aware"),
    ],
)
def test_invalid_arguments_raise_before_writing(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    """Impossible sizes, a missing size and a naive start are ValueErrors, and no file is created."""
    path = tmp_path / "never.csv"
    with pytest.raises(ValueError, match=message):
        generate_file(path, **arguments)
    assert not path.exists()


def test_generated_file_parses_without_rejections(small_csv: Path) -> None:
    """Every generated row passes RowParser: the generator and the parser agree on the format."""
    rows, rejections = parse_all(small_csv)
    assert (len(rows), rejections) == (3 * 4 * 10 * 20, [])


def test_committed_test_data_is_what_the_generator_makes(tmp_path: Path) -> None:
    """test-data/metrics.csv is generate_file(hosts=4, gpus=8, scrapes=3, seed=7): reproducible, 960 rows."""
    fresh = tmp_path / "metrics.csv"
    assert generate_file(fresh, hosts=4, gpus=8, scrapes=3, seed=7) == 960
    assert TEST_DATA.read_bytes() == fresh.read_bytes()
    rows, rejections = parse_all(TEST_DATA)
    assert (len(rows), rejections) == (960, [])


def test_records_are_lazy() -> None:
    """generate_records yields as it goes, so a huge run can be started and cut short cheaply."""
    records: Iterator[list[str]] = generate_records(hosts=1, gpus=1, scrapes=10**12)
    assert next(records)[1] == "DCGM_FI_DEV_GPU_UTIL"


# The real export


@pytest.mark.realdata
def test_real_export_has_the_shape_the_generator_copies(real_csv: Path) -> None:
    """The real file passes the same shape checks as the generated one, header line included."""
    assert_export_shape(real_csv)
    metrics = [metric for metric, _ in groupby(records_of(real_csv), key=lambda fields: fields[1])]
    assert metrics == EXPORT_METRICS


@pytest.mark.realdata
def test_real_export_parses_completely(real_csv: Path) -> None:
    """2,470 rows, no rejections, 247 GPUs on 31 hosts, 10 metrics, labels equal to a naive re-parse."""
    rows, rejections = parse_all(real_csv)
    assert rejections == []
    assert len(rows) == 2470
    assert len({row.uuid for row in rows}) == 247
    assert len({row.hostname for row in rows}) == 31
    assert Counter(row.metric_name for row in rows) == dict.fromkeys(EXPORT_METRICS, 247)
    for row, fields in zip(rows, records_of(real_csv), strict=True):
        assert len(row.labels) == 9
        assert dict(row.labels) == naive_labels(fields[11])
        assert row.timestamp.tzinfo is not None
        assert row.timestamp == datetime.fromisoformat(fields[0]).astimezone(UTC)
        assert row.value == float(fields[10])


@pytest.mark.realdata
def test_parser_on_real_header_maps_columns(real_csv: Path) -> None:
    """The real mixed-case header maps modelName and Hostname to their fields."""
    with real_csv.open(encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        parser = RowParser(next(reader))
        first = parser.parse(next(reader), 2)
    assert isinstance(first, MetricRow)
    assert first.model_name == "NVIDIA H100 80GB HBM3"
    assert first.hostname == first.labels["Hostname"]
    assert first.uuid == first.labels["UUID"]


def test_generate_file_writes_to_an_open_stream(tmp_path: Path) -> None:
    """A text stream (what `generate -o -` passes) gets exactly the file's bytes and is left open."""
    path = tmp_path / "rows.csv"
    stream = io.StringIO()
    assert generate_file(stream, hosts=1, gpus=2, scrapes=1, seed=5) == 20
    assert generate_file(path, hosts=1, gpus=2, scrapes=1, seed=5) == 20
    assert not stream.closed
    assert stream.getvalue() == path.read_text(encoding="utf-8")
