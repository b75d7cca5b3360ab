"""Which kinds of trouble are ongoing, so the broker logs when each starts and ends, not per request.

A full topic or a failing disk refuses every publish until it clears, and producers retry many times a
second: one line when it starts and one when it ends tell an operator more than thousands in between.
"""

from __future__ import annotations

import threading


class Episodes:
    """A thread-safe set of ongoing episodes, by key; ``begin`` and ``end`` say whether anything changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[str] = set()

    def begin(self, key: str) -> bool:
        """Mark ``key`` ongoing; True only for the call that started it, which should log it."""
        with self._lock:
            if key in self._open:
                return False
            self._open.add(key)
            return True

    def end(self, key: str) -> bool:
        """Mark ``key`` over; True only for the call that ended it. Cheap when nothing is ongoing."""
        if key not in self._open:  # the hot path takes no lock; the locked check below decides
            return False
        with self._lock:
            if key not in self._open:
                return False
            self._open.discard(key)
            return True

    @property
    def any(self) -> bool:
        """True while some episode is ongoing (read without the lock, for a fast path)."""
        return bool(self._open)
