"""One scrape of a synthetic dcgm-exporter, in the Prometheus text format it serves (version 0.0.4).

Scrapers and parsers are tested against what dcgm-exporter really prints, so this copies its shape rather
than Prometheus's conventions: families in the order of dcgm-exporter's default counters, a ``# HELP`` and
``# TYPE`` line for each (its help texts, its types), then one sample per GPU with the labels in the order
it prints them (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``, ``DCGM_FI_DRIVER_VERSION``), no
timestamps, and values as DCGM formats them (integers as integers, power with six decimals). Two of those
conventions are what ``promtool check metrics`` reports about every real dcgm-exporter scrape, and are kept
on purpose: the camelCase label ``modelName`` and the counter ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``
without a ``_total`` suffix.

The values come from rxstreamer.generate's Fleet: the same simulation, uuids and hostnames as the CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TextIO

from rxstreamer.generate import DEFAULT_SCRAPE_INTERVAL_S, METRIC_NAMES, Fleet, GpuReading

__all__ = [
    "CONTENT_TYPE",
    "FAMILIES",
    "Family",
    "render_scrape",
    "scrape_text",
    "write_scrape",
]

# What dcgm-exporter (and every Prometheus client) answers a text-format scrape with.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
ENERGY_FAMILY: Final = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family as dcgm-exporter declares it in its counters file: name, Prometheus type, help."""

    name: str
    type: Literal["gauge", "counter"]
    help: str


# dcgm-exporter's default-counters order, restricted to the fields the simulation produces.
FAMILIES: Final = (
    Family("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz)."),
    Family("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz)."),
    Family("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
    Family("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    Family(ENERGY_FAMILY, "counter", "Total energy consumption since boot (in mJ)."),
    Family("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    Family("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %)."),
    Family("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %)."),
    Family("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %)."),
    Family("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
    Family("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value_of(name: str) -> Callable[[GpuReading], str]:
    if name == ENERGY_FAMILY:
        return lambda reading: str(reading.energy_mj)
    position = METRIC_NAMES.index(name)
    if name == "DCGM_FI_DEV_POWER_USAGE":
        # DCGM prints doubles with %f; the simulation's power has milliwatt resolution, like the real one.
        return lambda reading: f"{float(reading.values[position]):.6f}"
    return lambda reading: reading.values[position]


_VALUES: Final = tuple(_value_of(family.name) for family in FAMILIES)
_HEADERS: Final = tuple(f"# HELP {f.name} {_escape_help(f.help)}\n# TYPE {f.name} {f.type}\n" for f in FAMILIES)


def _labels(reading: GpuReading) -> str:
    return (
        f'{{gpu="{reading.index}",UUID="{_escape_label(reading.uuid)}",device="nvidia{reading.index}",'
        f'modelName="{_escape_label(reading.model_name)}",Hostname="{_escape_label(reading.hostname)}",'
        f'DCGM_FI_DRIVER_VERSION="{_escape_label(reading.driver_version)}"}} '
    )


def render_scrape(readings: Sequence[GpuReading]) -> str:
    """The exposition text of one scrape of these GPUs: len(FAMILIES) families of len(readings) samples."""
    labelled = [(_labels(reading), reading) for reading in readings]
    parts: list[str] = []
    for family, header, value_of in zip(FAMILIES, _HEADERS, _VALUES, strict=True):
        parts.append(header)
        parts.extend(f"{family.name}{labels}{value_of(reading)}\n" for labels, reading in labelled)
    return "".join(parts)


def scrape_text(
    *, hosts: int = 1, gpus: int = 8, seed: int | str = 0, scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S
) -> str:
    """The first scrape of a new fleet: what ``generate --format prometheus`` writes for these options.

    One dcgm-exporter runs per node, so one host is the realistic default; more hosts put every host's GPUs
    in the same families (told apart by ``Hostname``), as one scrape of a federating Prometheus would.
    """
    fleet = Fleet(hosts=hosts, gpus=gpus, seed=seed, scrape_interval=scrape_interval)
    return render_scrape(fleet.advance())


def write_scrape(
    path: Path | str | TextIO,
    *,
    hosts: int = 1,
    gpus: int = 8,
    seed: int | str = 0,
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL_S,
) -> int:
    """Write ``scrape_text`` to a file (or an open text stream, left open); the number of samples written."""
    text = scrape_text(hosts=hosts, gpus=gpus, seed=seed, scrape_interval=scrape_interval)
    if isinstance(path, Path | str):
        with open(path, "w", encoding="utf-8", newline="") as out:
            out.write(text)
    else:
        path.write(text)
        path.flush()
    return hosts * gpus * len(FAMILIES)
