"""The batching operators: buffer_with_count's contract, a cut at each new timestamp, one scrape of one host."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler
from reactivex.testing.marbles import marbles_testing

from rxstreamer.batching import batch, batch_per_scrape
from rxstreamer.model import MetricRow
from rxstreamer.operators import pull_through

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error

T0 = datetime(2025, 7, 18, 13, 42, 33, tzinfo=UTC)


def row(seconds: int, host: str, line: int) -> MetricRow:
    return MetricRow(
        T0 + timedelta(seconds=seconds), "M", "0", "nvidia0", f"GPU-{host}", "H100", host, "", "", "", 1.0, {}, line
    )


def test_batch_follows_buffer_with_count_in_virtual_time() -> None:
    """Marble: batches of 2 leave with their second item; the last partial one with completion."""
    with marbles_testing(timespan=1.0) as (start, cold, _, __):
        source = cold("a-b-c-d-e|", None, None)
        result = start(source.pipe(batch(2)))
    assert result == [on_next(202, ["a", "b"]), on_next(206, ["c", "d"]), on_next(209, ["e"]), on_completed(209)]


def test_batch_passes_an_error_on_without_the_partial_batch() -> None:
    scheduler = TestScheduler()
    error = ValueError("bad row")
    source = scheduler.create_cold_observable(on_next(10, 1), on_next(20, 2), on_next(30, 3), on_error(40, error))
    results = scheduler.start(lambda: source.pipe(batch(2)))
    assert results.messages == [on_next(220, [1, 2]), on_error(240, error)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_batch_gives_what_buffer_with_count_gives(size: int) -> None:
    """The same lists for random lengths, exact multiples and the empty input alike."""
    chance = random.Random(size)
    for length in [0, size, 2 * size, *(chance.randrange(0, 5 * size + 3) for _ in range(20))]:
        items = list(range(length))
        assert list(pull_through(items, batch(size))) == list(pull_through(items, ops.buffer_with_count(size)))


def test_batch_cuts_where_the_key_changes_as_well_as_at_the_size() -> None:
    items = ["a", "A", "A", "b", "B", "c"]
    assert list(pull_through(items, batch(2, split_on=str.lower))) == [["a", "A"], ["A"], ["b", "B"], ["c"]]


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        batch(0)
    with pytest.raises(ValueError, match=">= 1"):
        batch_per_scrape(0)


def test_batch_per_scrape_groups_each_timestamp_by_host_in_order_of_first_appearance() -> None:
    """The real CSV interleaves hosts (one metric of every GPU, then the next): each host's rows come together."""
    rows = [row(0, "b", 2), row(0, "a", 3), row(0, "b", 4), row(0, "a", 5), row(1, "a", 6), row(1, "b", 7)]
    batches = list(pull_through(rows, batch_per_scrape(10)))
    assert [[r.line for r in b] for b in batches] == [[2, 4], [3, 5], [6], [7]]


def test_batch_per_scrape_sends_a_full_host_at_once_and_holds_less_than_a_batch_per_host() -> None:
    rows = [row(0, "a", line) for line in range(2, 9)]
    pulled = iter(pull_through(rows, batch_per_scrape(3)))
    assert [r.line for r in next(pulled)] == [2, 3, 4]
    assert [[r.line for r in b] for b in pulled] == [[5, 6, 7], [8]]


def test_batch_per_scrape_keeps_every_row_once_and_each_hosts_order() -> None:
    chance = random.Random(7)
    rows = [row(chance.randrange(3) // 2 + line // 40, chance.choice("abcd"), line) for line in range(2, 400)]
    batches = list(pull_through(rows, batch_per_scrape(5)))
    assert sorted(r.line for b in batches for r in b) == [r.line for r in rows]
    for one in batches:
        assert len({(r.timestamp, r.hostname) for r in one}) == 1
        assert len(one) <= 5
    for host in "abcd":
        assert [r.line for b in batches for r in b if r.hostname == host] == [
            r.line for r in rows if r.hostname == host
        ]


def test_batch_per_scrape_in_virtual_time_flushes_a_timestamp_when_the_next_begins() -> None:
    scheduler = TestScheduler()
    a0, b0, a1 = row(0, "a", 2), row(0, "b", 3), row(1, "a", 4)
    source = scheduler.create_cold_observable(on_next(10, a0), on_next(20, b0), on_next(30, a1), on_completed(40))
    results = scheduler.start(lambda: source.pipe(batch_per_scrape(10)))
    assert results.messages == [on_next(230, [a0]), on_next(230, [b0]), on_next(240, [a1]), on_completed(240)]


def test_batch_is_an_ordinary_pipeable_operator() -> None:
    collected: list[list[int]] = []
    reactivex.from_iterable(range(5)).pipe(batch(2)).subscribe(collected.append)
    assert collected == [[0, 1], [2, 3], [4]]
