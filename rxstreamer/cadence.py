"""When a recorded row is due in a replay at its own cadence: pure arithmetic on the rows' timestamps.

dcgm-exporter sends every GPU's metrics together, once per collect interval, so a recording is a series of
timestamp groups. Replaying it "as the cluster sent it" means releasing each group at its offset from the
first one, divided by the speed. The pacer (``rxstreamer.operators.pace_by_offsets``) turns these offsets into
absolute deadlines from one anchor, so nothing accumulates: the thousandth group is as punctual as the first.

A looped file starts again from its top; its timestamps start again too. Each pass is laid after the previous
one: a pass lasts from its first timestamp to its last, plus one mean gap between its groups (a recording of
four groups one second apart repeats every four seconds). A pass holding a single timestamp repeats every
``single_group_period``. A pass begins where the rows' line numbers go back down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Timeline:
    """Offsets, in seconds of replay, of successive timestamp groups; ``None`` for a group out of time order.

    A group earlier than one already seen in the same pass cannot be placed without going back in time: it is
    released at once and its rows are counted in ``rows_out_of_order``.
    """

    speed: float = 1.0
    single_group_period: float = 1.0  # seconds of recording between passes of a one-timestamp file
    rows_out_of_order: int = 0
    _pass_start: float = 0.0  # replay seconds at which the current pass began
    _first: datetime | None = None  # the first timestamp of the current pass
    _latest: datetime | None = None  # the latest timestamp seen in the current pass
    _groups: int = 0  # distinct timestamps seen in time order in the current pass
    _line: int = field(default=-1)  # the highest line number seen in the current pass

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be greater than zero, got {self.speed}")

    def offset(self, timestamp: datetime, line: int, rows: int = 1) -> float | None:
        """Seconds after the replay's start when ``rows`` rows stamped ``timestamp`` (from ``line``) are due."""
        if self._first is None or self._latest is None:
            self._begin_pass(timestamp, line)
            return self._pass_start
        if line < self._line:
            self._pass_start += self._pass_length(self._first, self._latest) / self.speed
            self._begin_pass(timestamp, line)
            return self._pass_start
        self._line = line
        if timestamp < self._latest:
            self.rows_out_of_order += rows
            return None
        if timestamp > self._latest:
            self._latest = timestamp
            self._groups += 1
        return self._pass_start + (timestamp - self._first).total_seconds() / self.speed

    def _begin_pass(self, timestamp: datetime, line: int) -> None:
        self._first = self._latest = timestamp
        self._groups = 1
        self._line = line

    def _pass_length(self, first: datetime, last: datetime) -> float:
        span = (last - first).total_seconds()
        gap = span / (self._groups - 1) if self._groups > 1 else self.single_group_period
        return span + gap
