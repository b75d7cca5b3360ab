"""Whether the queue answers, said once per change in lines a person can alert on.

Two witnesses: the channel's connection state (refused, reset: the connection fails) and the outcome of
every publish (a frozen queue keeps its connection but answers nothing, so only the publishes' deadlines
tell). Lost and regained are one line each whatever the cause, the regained one with how long it lasted.
While the queue is down, retries are not logged one by one (a long outage made hundreds of warnings): one
``mq.still_unreachable`` per progress interval counts them, and after ``alert_after`` one ``error`` line
says the outage has gone on too long.

The connection state arrives on a gRPC thread and publish outcomes on the pipeline thread, so the state is
kept under a lock; the clock is injectable so that the timing is tested without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from rxstreamer.model import EncodedBatch, PublishAck
from rxstreamer.retry import PublishError

log = structlog.get_logger()

#: Publish failures that mean "nobody answered", as opposed to "the queue answered no" (a full topic).
UNREACHABLE_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})


class QueueStatus:
    """Tracks the queue's reachability and logs its changes; also the streamer's retry logger."""

    def __init__(self, address: str, *, alert_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._address = address
        self._alert_after = alert_after
        self._clock = clock
        self._lock = threading.Lock()
        self._reachable: bool | None = None
        self._down_since = 0.0
        self._cause = ""
        self._alerted = False
        self._retries = 0  # retries since the last line that counted them
        self._counted_by_alert = False  # the alert counted the retries since the last progress tick
        self.stopping = False  # set when a stop was requested: retries are then not announced

    @property
    def reachable(self) -> bool | None:
        """True once the queue answered (``mq.connected``), False while unreachable, None before either."""
        with self._lock:
            return self._reachable

    def connectivity(self, state: str) -> None:
        """The channel's state: READY is reachable, TRANSIENT_FAILURE is not; the others are on the way."""
        if state == "READY":
            self._up()
        elif state == "TRANSIENT_FAILURE":
            self._down("the connection failed")

    def acked(self, _: PublishAck) -> None:
        """Any answer means the queue is there."""
        if self._reachable is not True:
            self._up()

    def retry(self, batch: EncodedBatch, attempt: int, wait: float, error: BaseException) -> None:
        """A publish failed and will be tried again: an outage is counted, anything else logged as it comes."""
        status = error.status if isinstance(error, PublishError) else type(error).__name__
        unreachable = status in UNREACHABLE_STATUSES
        if unreachable:
            self._down(str(error))
            with self._lock:
                self._retries += 1
        if not self.stopping:  # counted while the queue is down: then each retry is only a debug line
            level = log.debug if unreachable else log.warning
            level(
                "publisher.retry_scheduled",
                sequence=batch.sequence,
                attempt=attempt,
                wait_s=round(wait, 3),
                status=status,
                error=str(error),
            )
        if unreachable:
            self._alert_if_due()

    def tick(self) -> None:
        """Once per progress interval: while the queue is down, one line for the retries since the last."""
        if self._alert_if_due():
            return
        with self._lock:
            counted_by_alert, self._counted_by_alert = self._counted_by_alert, False
            if self._reachable is not False or self.stopping or counted_by_alert:
                return  # up, stopping, or the alert line has just counted this interval's retries
            down_for, retries, self._retries = self._clock() - self._down_since, self._retries, 0
        log.warning("mq.still_unreachable", address=self._address, down_for_s=round(down_for, 1), retries=retries)

    def _alert_if_due(self) -> bool:
        with self._lock:
            down_for = self._clock() - self._down_since
            if self._reachable is not False or self._alerted or down_for < self._alert_after:
                return False
            self._alerted = self._counted_by_alert = True
            retries, self._retries = self._retries, 0
        log.error(
            "mq.unreachable_alert",
            address=self._address,
            down_for_s=round(down_for, 1),
            retries=retries,
            cause=self._cause,
            alert_after_s=self._alert_after,
        )
        return True

    def _down(self, cause: str) -> None:
        with self._lock:
            if self._reachable is False:
                return
            self._reachable, self._down_since, self._cause = False, self._clock(), cause
            self._alerted, self._retries = False, 0
        log.warning("mq.unreachable", address=self._address, cause=cause)

    def _up(self) -> None:
        with self._lock:
            if self._reachable is True:
                return
            was_down = self._reachable is False
            self._reachable = True
            down_for = self._clock() - self._down_since
        if was_down:
            log.info("mq.connected", address=self._address, down_for_s=round(down_for, 1))
        else:
            log.info("mq.connected", address=self._address)
