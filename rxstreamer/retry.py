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
    ``retry_after`` is the server's hint, in seconds, of when trying again makes sense. ``final`` marks a
    failure that no retry can mend although its status is one that usually passes (gRPC answers a message
    over its size limit with RESOURCE_EXHAUSTED, the same status as a full topic).
    """

    def __init__(self, status: str, message: str, retry_after: float | None = None, *, final: bool = False) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.final = final

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES and not self.final


class RetriesExhaustedError(PublishError):
    """A retryable failure that went on past the policy's attempts or time: the stream gives up."""

    def __init__(self, last: PublishError, attempts: int, elapsed: float) -> None:
        super().__init__(
            last.status, f"gave up after {attempts} attempts over {elapsed:.1f}s: {last.message}", last.retry_after
        )
        self.last = last
        self.attempts = attempts


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
    max_retry_time: float = 0.0  # seconds one publish may keep retrying; 0 means no limit

    def should_retry(self, error: BaseException, attempts_made: int, elapsed: float = 0.0) -> bool:
        """Retry only failures that can succeed later, and only while attempts and time remain."""
        return self.retryable(error) and not self.exhausted(attempts_made, elapsed)

    @staticmethod
    def retryable(error: BaseException) -> bool:
        return isinstance(error, PublishError) and error.retryable

    def exhausted(self, attempts_made: int, elapsed: float) -> bool:
        """Whether the attempts or the time allowed for one publish are used up."""
        out_of_attempts = self.max_attempts != 0 and attempts_made >= self.max_attempts
        out_of_time = self.max_retry_time != 0 and elapsed >= self.max_retry_time
        return out_of_attempts or out_of_time

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
