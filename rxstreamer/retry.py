"""When to retry a failed publish, and how long to wait first.

Pure policy: no gRPC, no timers. The publisher translates transport failures into ``PublishError`` with
the status code's name; the retry operator asks this policy what to do with each failure. Keeping the
decision here lets it be tested exhaustively without a network or a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: Status codes after which the same publish may succeed: the queue is down, slow, full or raced.
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})


class PublishError(Exception):
    """A publish the queue did not acknowledge.

    ``status`` is the gRPC status code's name (``"UNAVAILABLE"``), so policy code needs no grpc import.
    ``retry_after`` is the server's hint, in seconds, of when trying again makes sense.
    """

    def __init__(self, status: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, optionally bounded in attempts.

    Full jitter (a uniform wait between 0 and the exponential bound) spreads the retries of many
    streamers that lost the same queue at the same moment, instead of having them return in lockstep.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 0  # attempts per publish, the first included; 0 means no limit

    def should_retry(self, error: BaseException, attempts_made: int) -> bool:
        """Retry only failures that can succeed later, and only while attempts remain."""
        if not isinstance(error, PublishError) or not error.retryable:
            return False
        return self.max_attempts == 0 or attempts_made < self.max_attempts

    def backoff_bound(self, attempts_made: int) -> float:
        """The upper bound of the wait after the given number of failed attempts (1 for the first)."""
        exponent = max(attempts_made - 1, 0)
        # Stop growing once past the cap: multiplier ** exponent would overflow for a long outage.
        bound = self.initial_backoff
        for _ in range(exponent):
            bound *= self.multiplier
            if bound >= self.max_backoff:
                return self.max_backoff
        return min(bound, self.max_backoff)

    def wait_before_retry(
        self,
        error: BaseException,
        attempts_made: int,
        uniform: Callable[[], float] | None = None,
    ) -> float:
        """Seconds to wait before the next attempt: jittered backoff, never less than the server's hint.

        ``uniform`` draws the jitter in [0, 1); tests pass a fixed one to make waits exact.
        """
        draw = uniform if uniform is not None else random.random
        wait = draw() * self.backoff_bound(attempts_made)
        hint = error.retry_after if isinstance(error, PublishError) else None
        if hint is not None and hint > wait:
            return hint
        return wait
