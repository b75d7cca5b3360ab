"""Deterministic DCGM CSV in exactly the shape of a real export, for tests, demos and benchmarks.

The real export cannot ship with the project, so this writes files that a reader cannot tell apart from
it by format: the same unquoted header, every field double-quoted, ``labels_raw`` with the same nine keys
in the same order, one block per metric holding every GPU, LF line endings. Values come from a small
per-GPU simulation (jobs start and finish; utilisation, power, temperature and memory follow them) so
that a GPU's readings drift plausibly from one scrape to the next instead of being independent noise.

Everything is drawn from one ``random.Random(seed)`` in a fixed order, so a seed always gives the same
file, and a file capped at N rows is the first N rows of the uncapped one. Output is streamed: memory
grows with the number of GPUs, never with the number of rows.

``Fleet`` is the same simulation moved on one scrape at a time, for what must answer live (the synthetic
dcgm-exporter in rxstreamer.exposition and rxstreamer.exporter_server): its first scrape holds the values of
the CSV's first scrape for the same fleet and seed.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import TextIO

HEADER = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw"
# The order of the real export: each scrape is one contiguous block per metric.
METRIC_NAMES = tuple(
    f"DCGM_FI_DEV_{name}"
    for name in (
        "GPU_UTIL",
        "MEM_COPY_UTIL",
        "POWER_USAGE",
        "GPU_TEMP",
        "FB_USED",
        "FB_FREE",
        "DEC_UTIL",
        "ENC_UTIL",
        "SM_CLOCK",
        "MEM_CLOCK",
    )
)
MODEL_NAME = "NVIDIA H100 80GB HBM3"
DRIVER_VERSION = "550.54.15"
EXPORTER_JOB = "dcgm-exporter"
EXPORTER_PORT = 9400
# FB_USED + FB_FREE on an H100 80GB: 81559 MiB of framebuffer less the 552 MiB the driver reserves. The real
# export shows this sum on every GPU.
FB_TOTAL_MIB = 81007
FB_IDLE_MIB = 4
IDLE_SM_CLOCK_MHZ = 345
MAX_SM_CLOCK_MHZ = 1980
MEM_CLOCK_MHZ = 2619
POWER_RANGE_W = (60.0, 700.0)
TEMP_RANGE_C = (28, 85)
DEFAULT_START = datetime(2025, 7, 18, 20, 0, 0, tzinfo=UTC)
DEFAULT_SCRAPE_INTERVAL_S = 30.0

# Per scrape, the chance that an idle GPU starts a job and that a busy one finishes it.
_JOB_START_CHANCE = 0.06
_JOB_END_CHANCE = 0.04
# How far a reading moves towards its target each scrape: power follows load quickly, temperature lags.
_POWER_FOLLOW = 0.6
_TEMP_FOLLOW = 0.35


@dataclass(slots=True)
class _Gpu:
    """One simulated GPU: its identity, fixed traits, and the state that carries from scrape to scrape."""

    hostname: str
    index: int
    uuid: str
    idle_power_w: float
    cooling_offset_c: float
    busy: bool = False
    load: float = 0.0  # the running job's intensity, 0-1
    job_fb_mib: int = FB_IDLE_MIB
    power_w: float = 0.0
    temp_c: float = 0.0
    # Per metric: every field before the value, then labels_raw. Built once, shared by every scrape.
    heads: list[list[str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _gpu_uuid(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    return f"GPU-{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _labels_raw(gpu: _Gpu, metric_name: str) -> str:
    return (
        f'DCGM_FI_DRIVER_VERSION="{DRIVER_VERSION}",Hostname="{gpu.hostname}",UUID="{gpu.uuid}",'
        f'__name__="{metric_name}",device="nvidia{gpu.index}",gpu="{gpu.index}",'
        f'instance="{gpu.hostname}:{EXPORTER_PORT}",job="{EXPORTER_JOB}",modelName="{MODEL_NAME}"'
    )


def _make_fleet(rng: random.Random, hosts: int, gpus: int, first_host: int = 1) -> list[_Gpu]:
    fleet = []
    for host_number in range(first_host, first_host + hosts):
        hostname = f"dgx-a-{host_number:03d}"
        for index in range(gpus):
            gpu = _Gpu(
                hostname=hostname,
                index=index,
                uuid=_gpu_uuid(rng),
                idle_power_w=rng.uniform(64.0, 80.0),
                cooling_offset_c=rng.uniform(-2.0, 8.0),
            )
            gpu.power_w = gpu.idle_power_w
            gpu.temp_c = 30.0 + gpu.cooling_offset_c
            if rng.random() < 0.5:
                _start_job(rng, gpu)
            gpu.heads = [
                [metric, str(index), f"nvidia{index}", gpu.uuid, MODEL_NAME, hostname, "", "", ""]
                for metric in METRIC_NAMES
            ]
            gpu.labels = [_labels_raw(gpu, metric) for metric in METRIC_NAMES]
            fleet.append(gpu)
    return fleet


def _start_job(rng: random.Random, gpu: _Gpu) -> None:
    gpu.busy = True
    gpu.load = rng.uniform(0.45, 1.0)
    gpu.job_fb_mib = rng.randint(20_000, 77_400)


def _advance(rng: random.Random, gpu: _Gpu) -> tuple[str, ...]:
    """Move one GPU on by one scrape and return its readings as the exporter prints them, in metric order."""
    if gpu.busy and rng.random() < _JOB_END_CHANCE:
        gpu.busy = False
    elif not gpu.busy and rng.random() < _JOB_START_CHANCE:
        _start_job(rng, gpu)

    if gpu.busy:
        util = round(_clamp(gpu.load * 100.0 + rng.gauss(0.0, 4.0), 0.0, 100.0))
        copy_util = round(util * rng.uniform(0.35, 0.8))
        target_power = gpu.idle_power_w + util / 100.0 * rng.uniform(380.0, 600.0)
        fb_used = min(FB_TOTAL_MIB, gpu.job_fb_mib + rng.randint(-40, 40))
        media_busy = rng.random() < 0.02
        dec_util = rng.randint(1, 20) if media_busy else 0
        enc_util = rng.randint(1, 10) if media_busy else 0
    else:
        util = copy_util = dec_util = enc_util = 0
        target_power = gpu.idle_power_w + rng.uniform(-2.0, 2.0)
        fb_used = FB_IDLE_MIB
    gpu.power_w = _clamp(gpu.power_w + _POWER_FOLLOW * (target_power - gpu.power_w), *POWER_RANGE_W)
    target_temp = 30.0 + gpu.cooling_offset_c + (gpu.power_w - POWER_RANGE_W[0]) * 0.075
    gpu.temp_c = _clamp(gpu.temp_c + _TEMP_FOLLOW * (target_temp - gpu.temp_c) + rng.gauss(0.0, 0.4), *TEMP_RANGE_C)
    if not gpu.busy:
        sm_clock = IDLE_SM_CLOCK_MHZ
    elif gpu.power_w > 640.0:  # near the power cap the clock backs off in 15 MHz steps
        sm_clock = MAX_SM_CLOCK_MHZ - 15 * rng.randint(1, 15)
    else:
        sm_clock = MAX_SM_CLOCK_MHZ
    return (
        str(util),
        str(copy_util),
        _prometheus_float(gpu.power_w),
        str(round(gpu.temp_c)),
        str(fb_used),
        str(FB_TOTAL_MIB - fb_used),
        str(dec_util),
        str(enc_util),
        str(sm_clock),
        str(MEM_CLOCK_MHZ),
    )


def _prometheus_float(value: float) -> str:
    """Three decimals without trailing zeros, as the export prints power (``117.77``, ``381``)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _check_fleet(hosts: int, gpus: int) -> None:
    if hosts < 1 or gpus < 1:
        raise ValueError(f"hosts and gpus must be at least 1, got hosts={hosts} gpus={gpus}")


def _check_counts(**counts: float | None) -> None:
    for name, count in counts.items():
        if count is not None and count < 0:
            raise ValueError(f"{name} must not be negative, got {count}")


def generate_records(
    *,
    hosts: int,
    gpus: int,
    scrapes: int,
    seed: int = 0,
    start: datetime | None = None,
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S,
) -> Iterator[list[str]]:
    """Yield data records (unquoted fields, in header order): per scrape, one block per metric of every GPU.

    Timestamps are RFC 3339 UTC at second resolution like the real export, so scrapes less than a second
    apart share a timestamp. ``start`` must be timezone-aware.
    """
    _check_fleet(hosts, gpus)
    _check_counts(scrapes=scrapes, scrape_interval=scrape_interval)
    first = DEFAULT_START if start is None else start
    if first.tzinfo is None:
        raise ValueError(f"start must be timezone-aware, got {first.isoformat()}")
    return _records(
        random.Random(seed),
        hosts=hosts,
        gpus=gpus,
        scrapes=scrapes,
        start=first.astimezone(UTC),
        scrape_interval=scrape_interval,
    )


def _records(
    rng: random.Random, *, hosts: int, gpus: int, scrapes: int, start: datetime, scrape_interval: float
) -> Iterator[list[str]]:
    fleet = _make_fleet(rng, hosts, gpus)
    for scrape in range(scrapes):
        timestamp = (start + timedelta(seconds=scrape * scrape_interval)).strftime("%Y-%m-%dT%H:%M:%SZ")
        readings = [_advance(rng, gpu) for gpu in fleet]
        for metric_index in range(len(METRIC_NAMES)):
            for gpu, values in zip(fleet, readings, strict=True):
                yield [timestamp, *gpu.heads[metric_index], values[metric_index], gpu.labels[metric_index]]


def write_csv(out: TextIO, records: Iterable[Sequence[str]]) -> int:
    """Write the header and ``records`` in the export's quoting; return the number of records written.

    ``out`` should be opened with ``newline=""`` so the LF line endings survive on every platform.
    """
    out.write(HEADER + "\n")
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    written = 0
    for record in records:
        writer.writerow(record)
        written += 1
    return written


def scrapes_for_rows(rows: int, *, hosts: int, gpus: int) -> int:
    """The number of scrapes needed to produce at least ``rows`` records from this fleet."""
    _check_fleet(hosts, gpus)
    return math.ceil(rows / (hosts * gpus * len(METRIC_NAMES)))


def generate_file(
    path: Path | str | TextIO,
    *,
    hosts: int,
    gpus: int,
    scrapes: int | None = None,
    seed: int = 0,
    start: datetime | None = None,
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S,
    rows: int | None = None,
) -> int:
    """Write a DCGM CSV to ``path`` and return the number of data rows written.

    ``rows`` caps the output; without ``scrapes`` it also decides how many scrapes to simulate, which is
    how benchmark files of an exact size are made. One of the two must be given. ``path`` may be an open text
    stream (``generate -o -`` passes standard output), written to and left open: piping into another tool
    should not need a temporary file.
    """
    _check_counts(rows=rows)
    if scrapes is None:
        if rows is None:
            raise ValueError("give scrapes, rows, or both")
        scrapes = scrapes_for_rows(rows, hosts=hosts, gpus=gpus)
    records: Iterator[list[str]] = generate_records(
        hosts=hosts, gpus=gpus, scrapes=scrapes, seed=seed, start=start, scrape_interval=scrape_interval
    )
    if rows is not None:
        records = islice(records, rows)
    if not isinstance(path, Path | str):
        written = write_csv(path, records)
        path.flush()
        return written
    with open(path, "w", encoding="utf-8", newline="") as out:
        return write_csv(out, records)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU's readings of one scrape, with the identity a consumer labels them by.

    ``values`` are in METRIC_NAMES order, as the CSV prints them; ``energy_mj`` is DCGM's energy counter
    (millijoules since boot), which the CSV does not carry.
    """

    hostname: str
    index: int
    uuid: str
    model_name: str
    driver_version: str
    values: tuple[str, ...]
    energy_mj: int


class Fleet:
    """The generator's simulation, advanced one scrape per call: what a live exporter serves from.

    It draws from its own ``random.Random(seed)`` in the CSV writer's order, so ``advance()`` returns, scrape
    after scrape, the values ``generate_records`` writes for the same ``hosts``, ``gpus`` and ``seed``. Hosts
    are numbered from ``first_host`` (``dgx-a-001`` by default), which keeps the hostnames of several fleets
    apart. Not thread-safe: one caller at a time (the exporter server holds a lock per fleet).
    """

    def __init__(
        self,
        *,
        hosts: int = 1,
        gpus: int = 8,
        seed: int | str = 0,
        first_host: int = 1,
        scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S,
    ) -> None:
        _check_fleet(hosts, gpus)
        _check_counts(scrape_interval=scrape_interval)
        if first_host < 1:
            raise ValueError(f"first_host must be at least 1, got {first_host}")
        self._rng = random.Random(seed)
        self._gpus = _make_fleet(self._rng, hosts, gpus, first_host)
        # The counter's value before the first scrape: derived from the uuid rather than drawn from the
        # generator, so that adding it left the CSV's values (and every recorded seed) unchanged.
        self._energy_mj = [_energy_at_boot_mj(gpu) for gpu in self._gpus]
        self._scrape_interval = scrape_interval
        self.scrapes = 0

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Each host's name once, in order."""
        return tuple(dict.fromkeys(gpu.hostname for gpu in self._gpus))

    @property
    def uuids(self) -> tuple[str, ...]:
        return tuple(gpu.uuid for gpu in self._gpus)

    def __len__(self) -> int:
        return len(self._gpus)

    def advance(self) -> list[GpuReading]:
        """Move every GPU on by one scrape interval; their readings, host by host, GPU by GPU."""
        readings = []
        for position, gpu in enumerate(self._gpus):
            values = _advance(self._rng, gpu)
            # Energy over the interval at the power just read: the counter only ever grows (power >= 60 W).
            self._energy_mj[position] += round(gpu.power_w * self._scrape_interval * 1000)
            readings.append(
                GpuReading(
                    hostname=gpu.hostname,
                    index=gpu.index,
                    uuid=gpu.uuid,
                    model_name=MODEL_NAME,
                    driver_version=DRIVER_VERSION,
                    values=values,
                    energy_mj=self._energy_mj[position],
                )
            )
        self.scrapes += 1
        return readings


def _energy_at_boot_mj(gpu: _Gpu) -> int:
    """Energy since the driver loaded: between an hour and 30 days of uptime at 1.5 x idle power."""
    uptime_s = 3600 + int(gpu.uuid[4:12], 16) % (30 * 86400)
    return round(gpu.idle_power_w * 1.5 * uptime_s * 1000)
