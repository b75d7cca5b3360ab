"""Why the broker refuses a message, as exceptions the gRPC edge maps onto status codes.

Each refusal says whether retrying can help, because producers act on the status code alone: the ones
that clear by themselves (a full topic or broker, a failing disk, too many topics until limits change) are
retryable, the ones that never clear (a message too large, a producer id reused for other content) are not.
Every message is one line an operator can act on, naming the setting involved where there is one.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the reasons a topic refuses a message."""


class TopicFull(StoreError):  # noqa: N818 - the name the project uses
    """The topic is at its retention bound; the producer should back off and retry.

    ``retry_after`` is when (seconds from now) enough retained messages will have expired to make
    room for the refused one, or None when there is no retention time and room appears only if
    limits change.
    """

    def __init__(
        self,
        topic: str,
        *,
        retained_messages: int,
        retained_bytes: int,
        max_messages: int,
        max_bytes: int,
        retry_after: float | None,
    ) -> None:
        self.topic = topic
        self.retained_messages = retained_messages
        self.retained_bytes = retained_bytes
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        hint = "" if retry_after is None else f"; room in {retry_after:.3f}s"
        super().__init__(
            f"topic {topic} is full ({retained_messages} messages, {retained_bytes} bytes retained; "
            f"limits {max_messages} messages, {max_bytes} bytes{hint})"
        )


class BrokerFull(StoreError):  # noqa: N818 - in line with TopicFull
    """All topics together hold broker.max_total_bytes; retryable like a full topic.

    ``retry_after`` is when the oldest message retained anywhere expires: the earliest room can appear,
    not a promise that it will be enough. None without a retention time.
    """

    def __init__(self, topic: str, *, total_bytes: int, max_total_bytes: int, retry_after: float | None) -> None:
        self.topic = topic
        self.total_bytes = total_bytes
        self.max_total_bytes = max_total_bytes
        self.retry_after = retry_after
        hint = "" if retry_after is None else f"; room in {retry_after:.3f}s at the earliest"
        super().__init__(
            f"broker is full: its topics hold {total_bytes} bytes, the most broker.max_total_bytes "
            f"({max_total_bytes}) allows; topic {topic} cannot take more{hint}"
        )


class TooManyTopics(StoreError):  # noqa: N818 - in line with TopicFull
    """Creating the topic would exceed broker.max_topics; topics are never removed while the broker runs."""

    def __init__(self, topic: str, *, topics: int, max_topics: int) -> None:
        self.topic = topic
        self.topics = topics
        self.max_topics = max_topics
        super().__init__(
            f"broker has {topics} topics, the most broker.max_topics ({max_topics}) allows; "
            f"topic {topic} cannot be created (use an existing topic or raise broker.max_topics)"
        )


class MessageTooLarge(StoreError):  # noqa: N818 - the name the project uses
    """The payload alone exceeds what a topic can ever hold, so retrying can never succeed.

    ``setting`` names the limit that decides it: broker.max_bytes, or broker.max_total_bytes when that is
    the smaller one.
    """

    def __init__(self, topic: str, *, size: int, limit: int, setting: str) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        self.setting = setting
        super().__init__(
            f"message of {size} bytes can never be stored in topic {topic}: "
            f"{setting} = {limit} bytes is the largest a message may be"
        )


class SequenceConflict(StoreError):  # noqa: N818 - in line with the other refusals
    """A (producer id, sequence) the topic already holds arrived with different content.

    Two inputs streaming under one producer id: acknowledging the second as a duplicate would silently
    drop its rows, so the producer is stopped instead. Retrying can never help.
    """

    def __init__(self, topic: str, *, producer_id: str, sequence: int, offset: int) -> None:
        self.topic = topic
        self.producer_id = producer_id
        self.sequence = sequence
        self.offset = offset
        super().__init__(
            f"producer {producer_id!r} already published sequence {sequence} with different content: "
            "two inputs share one producer id (give each input its own message_queue.producer_id, or leave "
            f"it unset to derive one per input); topic {topic} holds the first at offset {offset}"
        )


class StoreClosed(StoreError):  # noqa: N818 - the name the project uses
    """The broker is shutting down; nothing is accepted any more."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        super().__init__(f"topic {topic} is closed")


class StorageFailed(StoreError):  # noqa: N818 - in line with the other refusals
    """A durable broker could not write its database, so the message was not stored and must not be acked.

    Worth retrying: a full disk may be freed. After an I/O error the database refuses every write until the
    broker restarts, because the kernel may have dropped data it failed to write. ``path`` is the file
    that failed, ``reason`` what the operating system (through SQLite) said.
    """

    def __init__(self, topic: str, reason: str, *, path: str = "") -> None:
        self.topic = topic
        self.reason = reason
        self.path = path
        super().__init__(f"topic {topic} cannot be written to disk: {reason}")


class DataDirError(Exception):
    """The data directory cannot be used as it is; the message names the file and what the operator can do."""
