"""The retry policy: which failures are retried, and how long to wait."""

from __future__ import annotations

import pytest

from rxstreamer.retry import RETRYABLE_STATUSES, PublishError, RetryPolicy


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUSES))
def test_transient_statuses_are_retried(status: str) -> None:
    """UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED may succeed later."""
    assert RetryPolicy().should_retry(PublishError(status, "x"), attempts_made=1)


@pytest.mark.parametrize("status", ["INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "UNKNOWN"])
def test_permanent_statuses_are_not_retried(status: str) -> None:
    """A request the queue rejects for what it is will be rejected again."""
    assert not RetryPolicy().should_retry(PublishError(status, "x"), attempts_made=1)


def test_other_exceptions_are_not_retried() -> None:
    """A bug in our own code (not a PublishError) must surface, not loop."""
    assert not RetryPolicy().should_retry(ValueError("bug"), attempts_made=1)


def test_max_attempts_counts_the_first_attempt() -> None:
    """max_attempts=3 allows two retries; 0 allows any number."""
    error = PublishError("UNAVAILABLE", "down")
    bounded = RetryPolicy(max_attempts=3)
    assert [bounded.should_retry(error, n) for n in (1, 2, 3)] == [True, True, False]
    assert RetryPolicy(max_attempts=0).should_retry(error, 10_000)


def test_backoff_bound_grows_exponentially_and_is_capped() -> None:
    """1, 2, 4, 8, then the cap; even after a very long outage (no overflow)."""
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, multiplier=2.0)
    assert [policy.backoff_bound(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.backoff_bound(100_000) == 10.0


def test_wait_is_full_jitter_within_the_bound() -> None:
    """The wait is the bound scaled by a uniform draw in [0, 1)."""
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, multiplier=2.0)
    error = PublishError("UNAVAILABLE", "down")
    assert policy.wait_before_retry(error, 3, uniform=lambda: 0.5) == 2.0
    assert policy.wait_before_retry(error, 3, uniform=lambda: 0.0) == 0.0
    waits = [policy.wait_before_retry(error, 3) for _ in range(200)]
    assert all(0.0 <= wait <= 4.0 for wait in waits)
    assert len(set(waits)) > 100  # really random


def test_the_servers_retry_hint_is_a_floor() -> None:
    """A retry-after hint longer than the jittered wait wins; a shorter one does not shorten it."""
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0)
    assert policy.wait_before_retry(PublishError("RESOURCE_EXHAUSTED", "full", 3.0), 1, uniform=lambda: 0.5) == 3.0
    assert policy.wait_before_retry(PublishError("RESOURCE_EXHAUSTED", "full", 0.1), 1, uniform=lambda: 0.5) == 0.5
