"""Live dcgm-exporter endpoints as a source: every interval, each target scraped at once, its text parsed to rows.

A scrape is pulled, like a file's next line: the pipeline asks for rows, and when the last scrape's rows are
spent the source waits for the next scrape's time, scrapes every target concurrently (one thread each, each
bounded by ``timeout``), and hands over each target's rows as soon as its answer is in, so a slow target
delays no other. So memory holds one scrape at a time,
and when the queue is slower than the scrapes, scrapes wait: the intervals that went by while the rows of
the last scrape were still being published are skipped and counted (``scrapes_skipped``), never queued.

Scrape times are slots of the wall clock (slot ``k`` begins at ``k * interval`` seconds since the epoch), and
a slot is scraped at most once. The slot plays the part a byte offset plays for a file: ``position.offset``
is the slot of the scrape whose rows were handed over last, so a checkpoint records the last acknowledged
scrape, and a streamer restarted from it waits for the next slot instead of sending that scrape's data again
(dcgm-exporter serves the same values until its next collect). Rows are stamped with the scrape's time.

A target that is down, slow, answers an error or serves no sample is logged once when its state changes
(``scrape.target_down`` with the reason, ``scrape.target_up`` with how long it was down), counted in its
``TargetStats``, and tried again at the next slot; it never holds up the other targets or the stream. A line
that is not a usable sample is a ``Rejection`` like a bad line of a file, its detail naming the target.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

import structlog

from rxstreamer.model import MetricRow, Position, Rejection
from rxstreamer.parsing import FIELD_TOO_LARGE, NOT_UTF8, NUL_BYTE, SentinelMode
from rxstreamer.sources.base import DEFAULT_MAX_FIELD_SIZE, RejectHandler, SourceError, SourceStats
from rxstreamer.sources.lines import raw_of
from rxstreamer.sources.prometheus_text import ExpositionParser

__all__ = ["ScrapeRows", "ScrapeSchedule", "TargetStats", "http_fetch", "is_url", "targets_digest"]

log = structlog.get_logger()

URL_SCHEMES = ("http", "https")
#: The largest body read from one target: dcgm-exporter serves ~100 KB for 8 GPUs; this is ~300 such nodes.
MAX_BODY_BYTES = 32 * 1024 * 1024
_READ_CHUNK = 64 * 1024
# A fetch checks its deadline between reads: this is how long one read may run past it.
_GRACE_S = 1.0
_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"

#: Fetches one target's body within a deadline (``time.monotonic()``), raising ``ScrapeFailedError`` otherwise.
Fetch = Callable[[str, float], bytes]


class ScrapeFailedError(Exception):
    """One scrape of one target gave no body; ``state`` is a short, stable word for logs and counts."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(f"{state}: {detail}")
        self.state = state
        self.detail = detail


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in URL_SCHEMES and "://" in text


def targets_digest(targets: Sequence[str]) -> str:
    """Names a set of targets, whatever their order: part of a scraping streamer's default producer id."""
    return hashlib.sha256("\n".join(sorted(targets)).encode()).hexdigest()


def http_fetch(url: str, deadline: float) -> bytes:
    """GET ``url`` and read its body by ``deadline``, in chunks, so a server that trickles cannot hold on."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ScrapeFailedError("timeout", "no time left before the scrape timeout")
    request = urllib.request.Request(url, headers={"Accept": _ACCEPT, "User-Agent": "rxstreamer"})
    try:
        with urllib.request.urlopen(request, timeout=remaining) as response:
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(_READ_CHUNK):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ScrapeFailedError("too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ScrapeFailedError("timeout", "the body did not arrive within the scrape timeout")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise ScrapeFailedError(f"http_{error.code}", f"answered HTTP {error.code} {error.reason}") from None
    except TimeoutError:
        raise ScrapeFailedError("timeout", "no answer within the scrape timeout") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise ScrapeFailedError("timeout", "no answer within the scrape timeout") from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise ScrapeFailedError("unreachable", text) from None
    except OSError as error:  # a connection reset mid-body, say
        raise ScrapeFailedError("unreachable", error.strerror or str(error)) from None


@dataclass
class TargetStats:
    """One target's share of the run: what ``scrape.target_summary`` reports, and what the totals add up from."""

    scrapes_ok: int = 0
    scrapes_failed: int = 0
    rows_read: int = 0
    rows_rejected: int = 0
    failed_by_state: dict[str, int] = field(default_factory=dict)
    state: str = "unknown"  # "up", or why the last scrape failed
    down_since: float | None = None  # time.monotonic() of the first failure in a row


@dataclass
class ScrapeSchedule:
    """Which wall-clock slot to scrape next, and how long to wait for it: pure, so it is tested without waiting.

    ``next_slot`` is the first slot not yet scraped. A slot whose time has passed is scraped at once; if
    later slots have passed as well (the rows of the last scrape took that long to publish), only the
    newest is scraped and the others are counted as skipped.
    """

    interval: float
    next_slot: int = 0
    skipped: int = 0

    def due(self, now: float) -> tuple[int, float]:
        """The slot to scrape and the seconds to wait before it (0: now)."""
        current = math.floor(now / self.interval)
        if current < self.next_slot:
            return self.next_slot, self.next_slot * self.interval - now
        return current, 0.0

    def taken(self, slot: int) -> None:
        if self.next_slot and slot > self.next_slot:
            self.skipped += slot - self.next_slot
        self.next_slot = slot + 1


class ScrapeRows:
    """The rows of every scrape of ``targets``, until interrupted: a ``Source`` that never ends by itself.

    ``start`` (a position from a checkpoint) makes the first scrape wait for the slot after the one it names.
    ``clock`` (wall time), ``sleep`` and ``fetch`` are parameters so that tests can run the schedule on a
    virtual clock; by default waiting is done on an event that ``interrupt()`` sets, which is how a stop
    request ends the stream at once.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        interval: float,
        timeout: float,
        on_reject: RejectHandler | None = None,
        start: Position | None = None,
        max_field_size: int = DEFAULT_MAX_FIELD_SIZE,
        sentinels: SentinelMode = "reject",
        fetch: Fetch = http_fetch,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is needed")
        if not 0 < timeout <= interval:
            raise ValueError(f"timeout must be > 0 and <= interval ({interval}), got {timeout}")
        self.targets = tuple(dict.fromkeys(targets))
        self.interval = interval
        self.timeout = timeout
        self.on_reject = on_reject
        self.max_field_size = max_field_size
        self.sentinels: SentinelMode = sentinels
        self._fetch = fetch
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self.schedule = ScrapeSchedule(interval, next_slot=start.offset + 1 if start is not None else 0)
        self.target_stats = {target: TargetStats() for target in self.targets}
        # One parser per target, kept across its scrapes: its label sets are learnt once (see ``restart``).
        self._parsers: dict[str, ExpositionParser] = {}
        self._stats = SourceStats()
        self._scrapes = start.line if start is not None else 0
        self._position = start if start is not None else Position(0, 0)

    @property
    def stats(self) -> SourceStats:
        return self._stats

    @property
    def position(self) -> Position:
        """The slot of the scrape whose rows were handed over last (``offset``) and the scrapes taken so far."""
        return self._position

    @property
    def scrapes_skipped(self) -> int:
        return self.schedule.skipped

    def check(self) -> None:
        """Every target must be an http(s) URL with a host; whether it answers is found out by scraping."""
        for target in self.targets:
            parts = urlsplit(target)
            if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
                raise SourceError(f"{target}: not an http:// or https:// URL with a host")

    def interrupt(self) -> None:
        """Stop waiting for the next scrape and end the iteration: a stop request must not wait an interval."""
        self._stop.set()

    def __iter__(self) -> Generator[MetricRow, None, None]:
        with ThreadPoolExecutor(max_workers=min(len(self.targets), 256), thread_name_prefix="scrape") as pool:
            try:
                yield from self._scrapes_until_stopped(pool)
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
                self._log_summary()

    def _scrapes_until_stopped(self, pool: ThreadPoolExecutor) -> Generator[MetricRow, None, None]:
        while not self._stop.is_set():
            slot, wait = self.schedule.due(self._clock())
            if wait > 0:
                self._sleep(wait)
                continue
            self.schedule.taken(slot)
            self._scrapes += 1
            self._stats.passes += 1
            scraped_at = datetime.fromtimestamp(self._clock(), UTC)
            self._position = Position(slot, min(self._scrapes, slot))
            for target, body in self._scrape_all(pool):
                yield from self._rows(target, body, scraped_at)

    def _log_summary(self) -> None:
        """One line per target: its counts add up to the stream's (``rows_read``, ``rows_rejected``)."""
        for target, stats in self.target_stats.items():
            log.info(
                "scrape.target_summary",
                target=target,
                state=stats.state,
                scrapes_ok=stats.scrapes_ok,
                scrapes_failed=stats.scrapes_failed,
                failed_by_state=stats.failed_by_state,
                rows_read=stats.rows_read,
                rows_rejected=stats.rows_rejected,
            )
        log.info("scrape.summary", scrapes=self._stats.passes, scrapes_skipped=self.schedule.skipped)

    def _scrape_all(self, pool: ThreadPoolExecutor) -> Iterator[tuple[str, bytes]]:
        """Each target's body as soon as it arrives, so a slow target holds up nobody's rows but its own; a
        target that failed, or is still out when the timeout has passed, is logged and left out."""
        deadline = time.monotonic() + self.timeout
        futures = {pool.submit(self._fetch, target, deadline): target for target in self.targets}
        try:
            for future in as_completed(futures, timeout=self.timeout + _GRACE_S):
                outcome = _outcome(future)
                if isinstance(outcome, ScrapeFailedError):
                    self._failed(futures[future], outcome)
                else:
                    yield futures[future], outcome
        except TimeoutError:
            for future, target in futures.items():
                if not future.done():
                    future.cancel()
                    self._failed(target, ScrapeFailedError("timeout", "no answer within the scrape timeout"))

    def _rows(self, target: str, body: bytes, scraped_at: datetime) -> Iterator[MetricRow]:
        """The body's samples as rows; the target counts as up once one line became a row."""
        parser = self._parsers.get(target)
        if parser is None:
            parser = self._parsers[target] = ExpositionParser(scraped_at, reject_sentinels=self.sentinels == "reject")
        else:
            parser.restart(scraped_at)
        stats, counts = self.target_stats[target], self._stats
        good = rejected = 0
        for number, text in _lines(body, self.max_field_size):
            result = parser.line(text, number) if isinstance(text, str) else text
            if result is None:
                continue
            counts.rows_read += 1
            stats.rows_read += 1
            if isinstance(result, MetricRow):
                good += 1
                yield result
                continue
            rejected += 1
            stats.rows_rejected += 1
            counts.rows_rejected += 1
            counts.rejected_by_reason[result.reason] = counts.rejected_by_reason.get(result.reason, 0) + 1
            if self.on_reject is not None:
                self.on_reject(Rejection(result.line, result.reason, f"{target}: {result.detail}", result.raw))
        if good:
            stats.scrapes_ok += 1
            self._up(target)
        else:
            self._failed(
                target, ScrapeFailedError("no_samples", f"the body held no usable sample ({rejected} rejected)")
            )

    def _up(self, target: str) -> None:
        stats = self.target_stats[target]
        if stats.state != "up":
            down_for = None if stats.down_since is None else round(time.monotonic() - stats.down_since, 3)
            log.info("scrape.target_up", target=target, down_for_s=down_for)
        stats.state, stats.down_since = "up", None

    def _failed(self, target: str, failure: ScrapeFailedError) -> None:
        stats = self.target_stats[target]
        stats.scrapes_failed += 1
        stats.failed_by_state[failure.state] = stats.failed_by_state.get(failure.state, 0) + 1
        if stats.state != failure.state:
            log.warning("scrape.target_down", target=target, state=failure.state, detail=failure.detail)
        if stats.down_since is None:
            stats.down_since = time.monotonic()
        stats.state = failure.state


def _outcome(future: Future[bytes]) -> bytes | ScrapeFailedError:
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, ScrapeFailedError):
        return error
    return ScrapeFailedError("error", f"{type(error).__name__}: {error}")


def _lines(body: bytes, limit: int) -> Iterator[tuple[int, str | Rejection]]:
    """The body's lines as text, numbered from 1, or as the rejection a line gets before it is parsed."""
    for number, raw in enumerate(body.split(b"\n"), start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > limit:
            yield number, Rejection(number, FIELD_TOO_LARGE, f"the line is longer than {limit} bytes", raw_of(line))
        elif b"\0" in line:
            yield number, Rejection(number, NUL_BYTE, "the line holds a NUL byte", raw_of(line))
        else:
            try:
                yield number, line.decode()
            except UnicodeDecodeError as error:
                yield number, Rejection(number, NOT_UTF8, f"the line is not UTF-8 ({error.reason})", raw_of(line))
