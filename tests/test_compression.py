"""``message_queue.compression``: payload encodings (pure), and round trips through the real broker and NATS.

gzip over gRPC is the channel's own compression, so the broker stores plain payloads; what it saves is only
visible on the wire, which ``CountingProxy`` (a TCP forwarder between the streamer and the broker) counts.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, get_args

import grpc
import pytest
from google.protobuf.message import DecodeError

from rxstreamer.encoding import (
    CONTENT_DIGEST_HEADER,
    CONTENT_ENCODING_HEADER,
    BatchEncoder,
    Compression,
    PayloadEncodingError,
    compress_payload,
    decode_batch,
    decompress_payload,
)
from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.sources import CsvRows
from rxstreamer.tail import TailError, TailOptions, _print_message
from tests.conftest import TEST_DATA_CSV
from tests.nats_cluster import NatsCluster
from tests.nats_helpers import cluster, read_stream
from tests.processes import broker_process, read_topic, run_streamer
from tests.test_streamer_e2e import assert_same_metrics, csv_records

__all__ = ["cluster"]  # the fixture, imported to be used

SETTINGS: tuple[Compression, ...] = get_args(Compression)
SETTING_VARIABLE = "RXSTREAMER_MESSAGE_QUEUE__COMPRESSION"


# --- a TCP forwarder that counts what the client sends ------------------------------------------------------


class CountingProxy:
    """Listens on 127.0.0.1 and forwards every connection to ``target`` (host:port), counting the bytes the
    clients send (``upstream``) and receive (``downstream``): what the channel carries, HTTP/2 framing included."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.upstream = 0
        self.downstream = 0
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True, name="counting-proxy")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._accepting.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._target)
            for source, sink, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, up), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if up:
                        self.upstream += len(data)
                    else:
                        self.downstream += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Stored:
    headers: dict[str, str]
    payload: bytes


def stored_messages(address: str, count: int, topic: str = "gpu-telemetry") -> list[Stored]:
    """The first ``count`` messages of the topic exactly as the broker stores them (headers and payload bytes)."""
    with grpc.insecure_channel(address) as channel:
        stub = mq_pb2_grpc.MessageQueueStub(channel)
        call = stub.Subscribe(mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST), timeout=10.0)
        stored = []
        try:
            for message in call:
                stored.append(Stored(dict(message.headers), message.payload))
                if len(stored) == count:
                    break
        finally:
            call.cancel()
    return stored


# --- unit ---------------------------------------------------------------------------------------------------


def _payload() -> bytes:
    rows = list(CsvRows(TEST_DATA_CSV))[:200]
    encoder = BatchEncoder("p", clock=lambda: datetime(2025, 7, 18, tzinfo=UTC))
    return encoder(rows).payload


@pytest.mark.parametrize("encoding", ["none", "gzip", "zstd"])
def test_each_encoding_round_trips(encoding: str) -> None:
    payload = _payload()
    compressed = compress_payload(payload, encoding)
    assert decompress_payload(compressed, encoding) == payload
    header = "" if encoding == "none" else encoding
    assert decode_batch(compressed, header) == decode_batch(payload)
    if encoding != "none":
        assert len(compressed) < len(payload) / 2  # values and timestamps repeat: even v2's tables compress well


def test_the_digest_names_rows_not_bytes() -> None:
    """The digest comes from the rows, before any compression: the same whatever the setting."""
    rows = list(CsvRows(TEST_DATA_CSV))[:50]
    first = BatchEncoder("p")(rows)
    again = BatchEncoder("p", clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))(rows)
    assert first.payload != again.payload
    assert first.content_digest == again.content_digest != ""


def test_an_unknown_encoding_is_refused() -> None:
    payload = _payload()
    with pytest.raises(PayloadEncodingError, match="unknown content-encoding 'br'"):
        compress_payload(payload, "br")
    with pytest.raises(PayloadEncodingError, match="unknown content-encoding 'br'"):
        decode_batch(payload, "br")
    with pytest.raises(PayloadEncodingError, match="not valid zstd"):
        decode_batch(payload, "zstd")  # plain bytes said to be zstd
    with pytest.raises(PayloadEncodingError, match="not valid gzip"):
        decode_batch(payload, "gzip")
    with pytest.raises(DecodeError):
        decode_batch(compress_payload(payload, "zstd"))  # compressed bytes without their header


def test_tail_names_an_unknown_encoding() -> None:
    message = mq_pb2.Message(offset=7, payload=_payload(), headers={CONTENT_ENCODING_HEADER: "br"})
    options = TailOptions(address="127.0.0.1:1", topic="t")
    with pytest.raises(TailError, match=r"offset 7 cannot be read: unknown content-encoding 'br'"):
        _print_message(message, options, io.StringIO(), limit=None)


# --- integration: the real broker ---------------------------------------------------------------------------


@pytest.mark.integration
def test_every_setting_round_trips_through_the_broker() -> None:
    """Each setting: `tail` reads back test-data/metrics.csv row for row; zstd is what the broker stores, gzip
    is on the channel only (smaller on the wire, stored plain); the digests are the same for all three."""
    stored_bytes: dict[str, int] = {}
    wire_bytes: dict[str, int] = {}
    digests: dict[str, list[str]] = {}
    for setting in SETTINGS:
        with broker_process() as broker, CountingProxy(broker.address) as proxy:
            finished = run_streamer(
                "--mq-address",
                proxy.address,
                "--interval",
                "0",
                "--batch-size",
                "50",
                settings={SETTING_VARIABLE: setting},
            )
            assert finished.returncode == 0, finished.stderr
            assert finished.summary["rows_published"] == 960
            assert_same_metrics(read_topic(broker.address), csv_records(TEST_DATA_CSV))
            stored = stored_messages(broker.address, 20)
            assert len(stored) == 20
            expected_header = "zstd" if setting == "zstd" else None
            assert {message.headers.get(CONTENT_ENCODING_HEADER) for message in stored} == {expected_header}
            stored_bytes[setting] = sum(len(message.payload) for message in stored)
            wire_bytes[setting] = proxy.upstream
            digests[setting] = [message.headers[CONTENT_DIGEST_HEADER] for message in stored]
    assert digests["none"] == digests["gzip"] == digests["zstd"]
    # The channel's compression: the broker stores plain payloads (equal but for each batch's creation time).
    assert stored_bytes["gzip"] == pytest.approx(stored_bytes["none"], rel=0.01)
    assert stored_bytes["zstd"] < stored_bytes["none"] / 2
    assert wire_bytes["gzip"] < wire_bytes["none"] / 2
    assert wire_bytes["zstd"] < wire_bytes["none"] / 2


@pytest.mark.integration
def test_a_stored_zstd_topic_reads_back_with_the_setting_off() -> None:
    """`tail` follows each message's header, not its own setting: a zstd topic reads back under `none`."""
    with broker_process() as broker:
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", settings={SETTING_VARIABLE: "zstd"})
        assert finished.returncode == 0, finished.stderr
        assert_same_metrics(read_topic(broker.address), csv_records(TEST_DATA_CSV))


# --- integration: NATS JetStream ----------------------------------------------------------------------------


@pytest.mark.integration
def test_every_setting_round_trips_through_nats(cluster: NatsCluster) -> None:
    """Over NATS gzip and zstd both compress the payload; `tail` reads each topic back equal to the file."""
    for setting in SETTINGS:
        finished = run_streamer(
            "--mq-address",
            cluster.address,
            "--interval",
            "0s",
            "--batch-size",
            "50",
            "--topic",
            f"compression-{setting}",
            settings={SETTING_VARIABLE: setting},
        )
        assert finished.returncode == 0, finished.stderr
        assert_same_metrics(read_stream(cluster.address, topic=f"compression-{setting}"), csv_records(TEST_DATA_CSV))
