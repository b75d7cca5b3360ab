"""The NATS sink's pure rules: which servers an address names, which subjects a stream takes, what is retried."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from rxstreamer.config import ConfigError, load_settings
from rxstreamer.sinks import split_address
from rxstreamer.sinks.nats import publish_error, servers_of, subject_covers


def test_an_address_names_every_seed_server() -> None:
    scheme, target = split_address("nats://10.0.0.1:4222,nats://10.0.0.2:4222, nats://10.0.0.3:4222")
    assert scheme == "nats"
    assert servers_of(target) == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]


def test_the_address_setting_takes_several_nats_servers_and_checks_each() -> None:
    address = "nats://a.example:4222,nats://b.example:4222"
    assert load_settings(overrides={"message_queue.address": address}).message_queue.address == address
    with pytest.raises(ConfigError, match="must be host:port with a port from 1 to 65535"):
        load_settings(overrides={"message_queue.address": "nats://a.example:4222,nats://b.example:0"})
    with pytest.raises(ConfigError, match=r"only nats:// takes several servers, separated by commas"):
        load_settings(overrides={"message_queue.address": "a.example:50051,b.example:50051"})


@pytest.mark.parametrize(
    ("pattern", "subject", "covers"),
    [
        ("rxstreamer.>", "rxstreamer.gpu-telemetry", True),
        ("rxstreamer.>", "rxstreamer.a.b", True),
        ("rxstreamer.>", "rxstreamer", False),
        ("rxstreamer.*", "rxstreamer.gpu-telemetry", True),
        ("rxstreamer.*", "rxstreamer.a.b", False),
        ("rxstreamer.gpu-telemetry", "rxstreamer.gpu-telemetry", True),
        ("rxstreamer.other", "rxstreamer.gpu-telemetry", False),
        (">", "rxstreamer.gpu-telemetry", True),
        ("telemetry.>", "rxstreamer.gpu-telemetry", False),
    ],
)
def test_which_subjects_a_stream_takes(pattern: str, subject: str, covers: bool) -> None:
    assert subject_covers(pattern, subject) is covers


@pytest.mark.parametrize(
    ("error", "status", "retried"),
    [
        (nats.js.errors.NoStreamResponseError(), "UNAVAILABLE", True),
        (nats.js.errors.ServiceUnavailableError(code=503, description="unavailable"), "UNAVAILABLE", True),
        (nats.errors.TimeoutError(), "DEADLINE_EXCEEDED", True),
        (TimeoutError(), "DEADLINE_EXCEEDED", True),
        (nats.errors.ConnectionReconnectingError(), "UNAVAILABLE", True),
        (nats.errors.OutboundBufferLimitError(), "UNAVAILABLE", True),
        (nats.js.errors.BadRequestError(code=400, description="wrong last sequence"), "FAILED_PRECONDITION", False),
        (nats.js.errors.NotFoundError(code=404, description="stream not found"), "NOT_FOUND", False),
        (nats.errors.MaxPayloadError(), "RESOURCE_EXHAUSTED", False),
    ],
)
def test_what_is_retried(error: BaseException, status: str, retried: bool) -> None:
    translated = publish_error(error)
    assert (translated.status, translated.retryable) == (status, retried)
