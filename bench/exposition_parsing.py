"""Exposition parsing: samples/s of our Prometheus text parser against prometheus_client's, on the same text.

The text is dcgm-exporter's, synthesised at scale in the shape of the real A800 scrape: one ``# HELP`` and
``# TYPE`` per field, then one sample per GPU with the exporter's labels in its order (``gpu``, ``UUID``,
``device``, ``modelName``, MIG ``GPU_I_PROFILE``/``GPU_I_ID`` on one GPU in eight, ``Hostname``,
``DCGM_FI_DRIVER_VERSION``, ``DCGM_FI_PROCESS_NAME``, and empty ``container``/``namespace``/``pod``): 10 to
12 labels a sample, distinct UUIDs and hosts, 27 fields, 5 of them counters. Only numeric values, since
prometheus_client stops at the first line it cannot read (``ERROR - FAILED TO CONVERT TO STRING``).

Each round (new hosts and UUIDs every round), in this order, on one core:

- ours: ``parse_exposition`` over ``text.split("\\n")``, every result consumed. A parser caches label sets for
  one text only (one scrape, one file pass), so each distinct label set is parsed once per text, as in use;
- the file source: ``PrometheusRows`` over the text written to a file (reads, positions, counts included);
- prometheus_client: ``text_string_to_metric_families`` over the same text, every sample consumed.

Figures are medians over the rounds; the ratio is ours / prometheus_client, per round then the median. The
target for ours is well above 30,000 samples/s: 10,000 GPUs scraped every 10 s.

    .venv/bin/python bench/exposition_parsing.py [--hosts 64] [--gpus 8] [--rounds 5]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from _common import Figure, Report, machine_description, markdown_table, median

from rxstreamer.model import MetricRow
from rxstreamer.sources.prometheus_text import PrometheusRows, parse_exposition

TARGET_SAMPLES_PER_S = 30_000
# (field, type, help, value for GPU g): the fields of the real scrape, plus two more of the default set.
FIELDS: list[tuple[str, str, str, Callable[[int], str]]] = [
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda g: str(210 + 120 * (g % 11))),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", lambda g: "1593"),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", lambda g: str(25 + g % 9)),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: str(26 + g % 13)),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: f"{53.752 + g % 97 * 0.731:.6f}"),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Total energy consumption since boot (in mJ).",
     lambda g: str(213124 + 7919 * g)),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", lambda g: str(g % 3)),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda g: str(g * 37 % 101)),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda g: str(g * 17 % 101)),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", lambda g: "0"),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", lambda g: "0"),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", lambda g: "0"),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", lambda g: str(81037 - g * 131 % 4096)),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda g: str(g * 131 % 4096)),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", lambda g: "0"),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters.",
     lambda g: str(g * 1009)),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status", lambda g: "0"),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for uncorrectable errors",
     lambda g: "0"),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Number of remapped rows for correctable errors",
     lambda g: str(g % 2)),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed", lambda g: "0"),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
     lambda g: f"{g * 0.013 % 1:.6f}"),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Ratio of cycles the tensor (HMMA) pipe is active.",
     lambda g: f"{g * 0.007 % 1:.6f}"),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Ratio of cycles the device memory interface is active.",
     lambda g: f"{g * 0.011 % 1:.6f}"),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "The rate of data transmitted over the PCIe bus.",
     lambda g: str(g * 40961 % 900000)),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "The rate of data received over the PCIe bus.",
     lambda g: str(g * 30011 % 900000)),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge", "Current clock throttle reasons.", lambda g: "0"),
    ("DCGM_FI_DEV_SM_OCCUPANCY", "gauge", "SM occupancy.", lambda g: f"{g * 0.003 % 1:.6f}"),
]  # fmt: skip


def gpu_labels(round_number: int, host: int, gpu: int) -> list[str]:
    """The label sets of one GPU as dcgm-exporter prints them: three MIG instances on GPU 0 of each host."""
    uuid = f"GPU-{round_number:04x}{host:04x}-{gpu:04x}-5124-a0a9-079af1b65cc6"
    head = f'gpu="{gpu}",UUID="{uuid}",device="nvidia{gpu}",modelName="NVIDIA A800-SXM4-80GB",'
    tail = (
        f'Hostname="node-{round_number}-{host:05d}",DCGM_FI_DRIVER_VERSION="535.129.03",'
        'DCGM_FI_PROCESS_NAME="/usr/bin/dcgm-exporter",container="",namespace="",pod=""'
    )
    if gpu == 0:
        return [f'{head}GPU_I_PROFILE="2g.20gb",GPU_I_ID="{instance}",{tail}' for instance in (3, 5, 6)]
    return [head + tail]


def exposition_text(hosts: int, gpus: int, round_number: int) -> tuple[str, int]:
    """The text of one scrape of ``hosts`` x ``gpus`` GPUs, grouped by family, and its number of samples."""
    label_sets = [
        labels for host in range(hosts) for gpu in range(gpus) for labels in gpu_labels(round_number, host, gpu)
    ]
    lines: list[str] = []
    for name, kind, help_text, value in FIELDS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{labels}}} {value(index)}" for index, labels in enumerate(label_sets)]
    return "\n".join(lines) + "\n", len(FIELDS) * len(label_sets)


def ours(text: str) -> int:
    rows = 0
    for result in parse_exposition(text.split("\n"), default_time=datetime.now(UTC)):
        rows += isinstance(result, MetricRow)
    return rows


def ours_from_file(path: Path) -> int:
    return sum(1 for _ in PrometheusRows(path))


def theirs(text: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(len(family.samples) for family in text_string_to_metric_families(text))


@dataclass(frozen=True)
class Round:
    samples: int
    ours_s: float
    file_s: float
    client_s: float


def timed(parse: Callable[[], int], expected: int, what: str) -> float:
    began = time.perf_counter()
    samples = parse()
    elapsed = time.perf_counter() - began
    if samples != expected:
        print(f"  warning: {what} read {samples:,} samples, the text has {expected:,}", file=sys.stderr)
    return elapsed


def measure(hosts: int, gpus: int, round_number: int, workdir: Path) -> Round:
    text, samples = exposition_text(hosts, gpus, round_number)
    path = workdir / f"scrape-{round_number}.prom"
    path.write_text(text, encoding="utf-8")
    ours_s = timed(lambda: ours(text), samples, "ours")
    file_s = timed(lambda: ours_from_file(path), samples, "PrometheusRows")
    client = timed(lambda: theirs(text), samples, "prometheus_client")
    return Round(samples, ours_s, file_s, client)


def run(hosts: int = 64, gpus: int = 8, rounds: int = 5) -> Report:
    print(f"exposition parsing: {hosts} hosts x {gpus} GPUs, {rounds} rounds", file=sys.stderr, flush=True)
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="exposition-") as directory:
        for round_number in range(1, rounds + 1):
            result = measure(hosts, gpus, round_number, Path(directory))
            results.append(result)
            print(
                f"  round {round_number}/{rounds}: {result.samples:,} samples; ours {result.ours_s * 1e3:.1f} ms "
                f"(file {result.file_s * 1e3:.1f} ms), prometheus_client {result.client_s * 1e3:.1f} ms",
                file=sys.stderr,
                flush=True,
            )

    def rate(seconds: Callable[[Round], float]) -> float:
        return median(result.samples / seconds(result) for result in results)

    def ratio(seconds: Callable[[Round], float]) -> float:
        return median(result.client_s / seconds(result) for result in results)

    samples = results[0].samples
    client = rate(lambda r: r.client_s)
    kinds: list[tuple[str, Callable[[Round], float]]] = [
        ("ours, parse_exposition over the text", lambda r: r.ours_s),
        ("ours, PrometheusRows over the file", lambda r: r.file_s),
    ]
    table = [
        (what, f"{rate(seconds):,.0f}", f"{1e6 / rate(seconds):.1f}", f"{ratio(seconds):.1f}x")
        for what, seconds in kinds
    ]
    table.append(("prometheus_client text_string_to_metric_families", f"{client:,.0f}", f"{1e6 / client:.1f}", "1x"))
    report = Report("exposition")
    report.details = (
        f"### Exposition parsing: {hosts} hosts x {gpus} GPUs, {samples:,} samples a text, medians of {rounds} "
        f"rounds\n\n"
        + markdown_table(("parser", "samples/s", "µs/sample", "vs prometheus_client"), table)
        + f"\n\nTarget for ours: well above {TARGET_SAMPLES_PER_S:,} samples/s (10,000 GPUs every 10 s). "
        f"Machine: {machine_description()}.\n"
    )
    report.figures += [
        Figure("exposition", f"{what}, samples/s", f"{rate(seconds):,.0f}", f"prometheus_client {client:,.0f}",
               f"{ratio(seconds):.1f}", f"{samples:,} samples a text")
        for what, seconds in kinds
    ]  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=64, help="hosts in the scrape text")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per host (GPU 0 of each has 3 MIG instances)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.hosts, args.gpus, args.rounds).details)


if __name__ == "__main__":
    main()
