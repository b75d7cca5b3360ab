"""Amplification and sharding: one recorded file as many clusters, and one stream split across instances.

Both are RxPY operators over ``MetricRow``, used like RxPY's own (``rows.pipe(amplify(3), shard(0, 2))``);
the service puts them first among the row operators (source ─▶ amplify ─▶ shard ─▶ your transforms ─▶ batch),
so transforms see the virtual GPUs, and each shard's transforms see only the GPUs it sends.

Everything here is a function of its inputs: the names of copy k and the shard of a uuid are the same on every
run, in every process and on every machine. That is what lets N instances started with ``0/N`` .. ``N-1/N``
split the amplified input between them without talking to each other, and what makes a replay publish the same
batches, so the queue recognises them as duplicates. Hence blake2b, never Python's ``hash``, which is salted
per process.

Copy k > 0 of a row renames, in the row and in its labels:

- the uuid: ``GPU-`` and 32 hex digits of blake2b(uuid, k), grouped 8-4-4-4-12 like DCGM's own;
- the hostname: ``<host>-c<k>`` (``dgx-031`` becomes ``dgx-031-c1``, ``dgx-031-c2``, ...), an empty one stays
  empty;
- the labels ``UUID``/``uuid`` and ``Hostname``/``hostname`` the same way, and ``instance`` (``host:port``) by
  its host part, the port kept.

Everything else (metric, value, timestamp, gpu index, device, model, pod) is the original's, so each virtual
cluster reports realistic values. Copy 0 is the original row itself.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final

from reactivex import Observable, abc

from rxstreamer.model import MetricRow

__all__ = [
    "ScalingCounters",
    "amplify",
    "copy_host",
    "copy_instance",
    "copy_labels",
    "copy_row",
    "copy_uuid",
    "parse_shard",
    "shard",
    "shard_of",
    "skipping_other_shards",
]

RowOperator = Callable[[Observable[MetricRow]], Observable[MetricRow]]

UUID_LABELS: Final = frozenset({"UUID", "uuid"})
HOST_LABELS: Final = frozenset({"Hostname", "hostname"})
INSTANCE_LABEL: Final = "instance"

# Bounds on the caches below: a load generator may see millions of (row, copy) pairs, and a cache that only
# grows would turn a long run into a memory leak. Past the bound a cache starts again, which costs only time.
_NAME_CACHE_SIZE: Final = 1 << 16
_LABELS_CACHE_SIZE: Final = 1 << 14
_PORT: Final = re.compile(r":\d+")


@dataclass
class ScalingCounters:
    """What amplification added and sharding left to other instances, so the run's summary accounts for it.

    Written by the operators on the pipeline thread, read by ``rxstreamer.counts.RunCounts``.
    """

    rows_copied: int = 0  # rows made by ``amplify`` beyond the originals: (copies - 1) per row
    rows_in_other_shards: int = 0  # rows ``shard`` left to the other instances


@lru_cache(maxsize=_NAME_CACHE_SIZE)
def copy_uuid(uuid: str, k: int) -> str:
    """The uuid of copy ``k``: DCGM's shape, so that consumers parsing or validating uuids take it as one."""
    if k == 0:
        return uuid
    digest = hashlib.blake2b(f"{uuid}\x00{k}".encode(), digest_size=16).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


@lru_cache(maxsize=_NAME_CACHE_SIZE)
def copy_host(host: str, k: int) -> str:
    """The host name of copy ``k``: readable, and telling which real host it stands in for."""
    if k == 0 or not host:
        return host
    return f"{host}-c{k}"


def copy_instance(instance: str, k: int) -> str:
    """A Prometheus ``instance`` (``host:port``) of copy ``k``: the host renamed like the hostname, the port kept."""
    host, colon, port = instance.rpartition(":")
    if colon and _PORT.fullmatch(colon + port):
        return f"{copy_host(host, k)}:{port}"
    return copy_host(instance, k)


def copy_labels(labels: Mapping[str, str], k: int) -> Mapping[str, str]:
    """The labels of copy ``k``, read-only like the parser's; unchanged (the same object) when nothing is renamed."""
    renamed = {}
    for key, value in labels.items():
        if key in UUID_LABELS:
            renamed[key] = copy_uuid(value, k)
        elif key in HOST_LABELS:
            renamed[key] = copy_host(value, k)
        elif key == INSTANCE_LABEL:
            renamed[key] = copy_instance(value, k)
    if k == 0 or not renamed:
        return labels
    return MappingProxyType({**labels, **renamed})


def copy_row(row: MetricRow, k: int) -> MetricRow:
    """Copy ``k`` of ``row``: copy 0 is ``row`` itself; any other has its own uuid, hostname and instance."""
    if k == 0:
        return row
    labels = copy_labels(row.labels, k)
    return row._replace(uuid=copy_uuid(row.uuid, k), hostname=copy_host(row.hostname, k), labels=labels)


class _Copier:
    """``copy_row`` with the renamed labels shared, as the parser shares them, between rows with the same labels.

    Rows of one GPU and metric share one labels mapping; renaming it once per (mapping, copy) instead of once
    per row keeps amplification to a tuple per copy. The cache is keyed by the mapping's identity and holds
    the mapping itself, so the identity cannot be reused by another object while it is cached.
    """

    def __init__(self, copies: int) -> None:
        self._copies = copies
        self._labels: dict[tuple[int, int], tuple[Mapping[str, str], Mapping[str, str]]] = {}

    def __call__(self, row: MetricRow) -> list[MetricRow]:
        out = [row]
        for k in range(1, self._copies):
            out.append(
                row._replace(
                    uuid=copy_uuid(row.uuid, k), hostname=copy_host(row.hostname, k), labels=self._copy_labels(row, k)
                )
            )
        return out

    def _copy_labels(self, row: MetricRow, k: int) -> Mapping[str, str]:
        key = (id(row.labels), k)
        cached = self._labels.get(key)
        if cached is not None and cached[0] is row.labels:
            return cached[1]
        if len(self._labels) >= _LABELS_CACHE_SIZE:
            self._labels.clear()
        renamed = copy_labels(row.labels, k)
        self._labels[key] = (row.labels, renamed)
        return renamed


def amplify(copies: int, counters: ScalingCounters | None = None) -> RowOperator:
    """Each row as ``copies`` rows, copy 0 .. copies-1 one after the other, before the next row.

    Consecutive, so that each copy keeps the original order and the rows of one timestamp stay together
    (what pacing by the rows' own timestamps relies on). ``counters.rows_copied`` counts the rows added.

    Marble, ``amplify(2)``, where ``a1`` is copy 1 of ``a``::

        rows:   a--b--|
        result: (a a1)--(b b1)--|
    """
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")

    def operator(source: Observable[MetricRow]) -> Observable[MetricRow]:
        if copies == 1:
            return source

        def subscribe(
            observer: abc.ObserverBase[MetricRow], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            copier = _Copier(copies)  # per subscription: nothing is shared between runs

            def on_next(row: MetricRow) -> None:
                try:
                    rows = copier(row)
                except Exception as error:  # a transform upstream emitted something other than a row, say
                    observer.on_error(error)
                    return
                if counters is not None:
                    counters.rows_copied += len(rows) - 1
                for each in rows:
                    observer.on_next(each)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


@lru_cache(maxsize=_NAME_CACHE_SIZE)
def shard_of(uuid: str, count: int) -> int:
    """The shard, of ``count``, that the GPU ``uuid`` belongs to: the same in every process and on every run."""
    digest = hashlib.blake2b(uuid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"i/N"`` as ``(i, N)``; None for an empty text, which means the whole input."""
    if not text.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f'a shard is "i/N" with 0 <= i < N, e.g. "0/4", not {text!r}')
    return int(match[1]), int(match[2])


def shard(index: int, count: int, counters: ScalingCounters | None = None) -> RowOperator:
    """Only the rows of the GPUs whose uuid falls in shard ``index`` of ``count``, in their order.

    A GPU's rows all go to one shard, so each GPU's series stays whole and ordered in one instance.
    ``counters.rows_in_other_shards`` counts the rows left to the other shards.

    Marble, ``shard(0, 2)``, where GPU ``a`` falls in shard 0 and ``b`` in shard 1::

        rows:   a1-b1-a2-b2-|
        result: a1----a2----|
    """
    if not 0 <= index < count:
        raise ValueError(f"a shard index must be in 0 .. count-1, got {index}/{count}")

    def operator(source: Observable[MetricRow]) -> Observable[MetricRow]:
        if count == 1:
            return source

        def subscribe(
            observer: abc.ObserverBase[MetricRow], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(row: MetricRow) -> None:
                try:
                    mine = shard_of(row.uuid, count) == index
                except Exception as error:
                    observer.on_error(error)
                    return
                if mine:
                    observer.on_next(row)
                elif counters is not None:
                    counters.rows_in_other_shards += 1

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


def skipping_other_shards(
    index: int, count: int, copies: int, counters: ScalingCounters
) -> tuple[Callable[[str], bool], Callable[[], None], Callable[[str | None], bool]]:
    """For a source that skips records by uuid before parsing them (``LineSource.skip_uuids``): which uuids to
    keep, how to count a skip, and which bad records to report.

    A record is kept when any of its ``copies`` falls in shard ``index``; the ``shard`` operator downstream
    still keeps only those copies. A skipped record counts as all its copies left to the other shards (and
    the copies beyond the first as made), so the counts are those the operators would have given. A bad
    record is reported by the shard of its original uuid (copy 0), one whose uuid cannot be read by shard 0:
    once between the shards.
    """

    @lru_cache(maxsize=_NAME_CACHE_SIZE)
    def keep(uuid: str) -> bool:
        return any(shard_of(copy_uuid(uuid, k), count) == index for k in range(copies))

    def skipped() -> None:
        counters.rows_copied += copies - 1
        counters.rows_in_other_shards += copies

    def reports(uuid: str | None) -> bool:
        return (shard_of(uuid, count) if uuid is not None else 0) == index

    return keep, skipped, reports
