"""Rules, pure: liveness and readiness from a ``RunState`` snapshot, and the lag of the newest row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rxstreamer.metrics.constants import MIN_STALL_S


@dataclass(frozen=True)
class Probe:
    """A probe's answer: 200 with ``ok``, else 503; ``reason`` is the one line of the body."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class RunState:
    """What the probes look at, read at one moment."""

    pipeline_alive: bool  # the pipeline's thread runs
    ended: str | None  # None while streaming; "stopping", "completed" or "failed: ..." once the run ends
    queue_reachable: bool | None  # None until the queue first answered (mq.connected / mq.unreachable)
    waiting_s: float | None  # how long the oldest unacknowledged batch has waited; None when none waits
    stall_after: float  # a wait longer than this is a stall


def stall_after(stream_interval: float) -> float:
    """How long a batch may wait for its acknowledgement before the stream counts as stalled.

    A healthy queue answers within the interval (that is what pacing at that interval assumes); with a short
    interval, or none, at least ``MIN_STALL_S``, so that an ordinary slow answer is not a stall.
    """
    return max(stream_interval, MIN_STALL_S)


def liveness(state: RunState) -> Probe:
    """``/healthz``: the process and its pipeline thread are alive (a run that has ended is still alive)."""
    if state.ended is not None:
        return Probe(True, f"alive; the run has ended ({state.ended})")
    if not state.pipeline_alive:
        return Probe(False, "the pipeline thread is not running")
    return Probe(True, "alive")


def readiness(state: RunState) -> Probe:
    """``/readyz``: the queue answered the last publish and no batch waits for it longer than ``stall_after``."""
    if state.ended is not None:
        return Probe(False, f"the run has ended ({state.ended})")
    if not state.pipeline_alive:
        return Probe(False, "the pipeline thread is not running")
    if state.queue_reachable is False:
        return Probe(False, "the queue is unreachable (see mq.unreachable)")
    if state.waiting_s is not None and state.waiting_s > state.stall_after:
        return Probe(
            False,
            f"stalled: a batch has waited {state.waiting_s:.1f}s for the queue's acknowledgement "
            f"(more than {state.stall_after:g}s)",
        )
    if state.queue_reachable is None:
        return Probe(False, "the queue has not answered yet")
    return Probe(True, "ready")


def lag_seconds(now: datetime, newest: datetime | None) -> float | None:
    """How old the newest acknowledged row is; never negative (a row stamped ahead of this clock is fresh)."""
    return None if newest is None else max((now - newest).total_seconds(), 0.0)
