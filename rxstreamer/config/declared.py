"""Every setting, declared once: its type, default, check, help and flag (see kinds.py for how).

The CLI flags are generated from these declarations; settings.toml and the README settings table are derived
from them and checked by tests/test_settings_files.py (``python -m tests.test_settings_files`` rewrites both).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from rxstreamer.config.kinds import (
    BOOLEAN,
    DURATION,
    INPUTS,
    MULTIPLIER,
    NATS_NAME,
    OPTIONAL_PATH,
    POSITIVE,
    SIZE,
    TEXT,
    TOPIC,
    TRANSFORMS,
    Declaration,
    Kind,
    choice,
    host_port,
    integer,
    register,
    setting,
    table,
)

if TYPE_CHECKING:
    from rxstreamer.encoding import Compression, TimestampMode, WireEncoding
    from rxstreamer.logs import LogFormat
    from rxstreamer.parsing import SentinelMode

MAX_BATCH_SIZE: Final = 1_000_000
MAX_READ_AHEAD: Final = 16
FsyncPolicy = Literal["always", "interval", "never"]  # here, not in rxstreamer.broker: importing that needs grpc
PaceMode = Literal["interval", "original"]
BatchBy = Literal["count", "scrape"]
MAX_AMPLIFY: Final = 100_000
MAX_WORKERS: Final = 64


def _speed(value: Any) -> float:
    if type(value) not in (int, float) or not 0 < value < math.inf:
        raise ValueError("must be a number greater than zero, e.g. 1, 10 or 0.5")
    return float(value)


def _shard(value: Any) -> str:
    """ "i/N" with 0 <= i < N, or empty for all of the input; kept as text, parsed by rxstreamer.scaling."""
    if isinstance(value, str) and not value.strip():
        return ""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value) if isinstance(value, str) else None
    if match is None or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError('must be "i/N" with 0 <= i < N, e.g. "0/4" .. "3/4"; or empty: the whole input')
    return f"{int(match[1])}/{int(match[2])}"


SPEED: Final = Kind(_speed)
SHARD: Final = Kind(_shard)


@dataclass(frozen=True)
class TelemetrySettings:
    metrics_path: Path | tuple[str, ...] = setting(
        INPUTS,
        "./test-data/metrics.csv",
        "the file to stream, or the `http://` or `https://` endpoints to scrape (a list; the flag repeated)",
        "--metrics-path",
    )
    format: str = setting(
        choice("rxstreamer.sources:SOURCE_FORMATS"),
        "auto",
        "the input's format: `auto` picks it by the file's extension, `csv` is a DCGM exporter CSV, "
        "`jsonl` is one JSON object a line as `tail` prints them (`.jsonl`, `.ndjson`), "
        "`prometheus` is a saved dcgm-exporter scrape in Prometheus text (`.prom`, `.txt`)",
        "run validate --format",
    )
    stream_interval: float = setting(
        DURATION, "1s", "time between batches; `0s` streams as fast as the queue accepts", "--interval"
    )
    batch_size: int = setting(integer(1, MAX_BATCH_SIZE), 10, "rows per batch", "--batch-size")
    loop: bool = setting(BOOLEAN, False, "replay the file endlessly", "--loop")
    timestamps: TimestampMode = setting(
        choice("rxstreamer.encoding:TimestampMode"),
        "original",
        "`original` keeps the CSV time; `processing` stamps rows with the time they are published",
        "--timestamps",
    )
    scrape_interval: float = setting(
        POSITIVE, "30s", "when scraping: how often each endpoint is scraped (dcgm-exporter collects every 30s)"
    )
    scrape_timeout: float = setting(
        DURATION,
        "0s",
        "when scraping: how long one scrape of one endpoint may take, at most `scrape_interval`; `0s`: until the "
        "next scrape is due",
    )
    transforms: tuple[str, ...] = setting(
        TRANSFORMS,
        [],
        'your operators between parsing and batching, `["package.module:function", ...]` (see Using it as a '
        "library); in the environment a TOML array or a comma-separated list",
    )
    instance: str = setting(TEXT, "", "names this streamer in the default producer id; empty: the host name")
    checkpoint_path: Path | None = setting(
        OPTIONAL_PATH,
        "",
        "record progress after each acknowledged batch and resume from it (see Delivery guarantees); empty: off",
        "--checkpoint-path",
    )
    start_over: bool = setting(
        BOOLEAN,
        False,
        "replace a checkpoint written for another file, batch size or producer instead of refusing to start",
        "--start-over",
    )
    rejected_path: Path | None = setting(
        OPTIONAL_PATH,
        "",
        "append every rejected row to this CSV (`line,reason,detail,raw`) to fix and replay; empty: off",
        "--rejected-path",
    )
    max_field_size: int = setting(
        SIZE,
        "64KiB",
        "the longest line (or multi-line record) accepted; longer ones are rejected without being held in memory",
    )
    dcgm_sentinels: SentinelMode = setting(
        choice("rxstreamer.parsing:SentinelMode"),
        "reject",
        'DCGM\'s "blank / not found / not supported / not permissioned" numbers: `reject` them, or `flag` them '
        "(published with label `dcgm_sentinel`)",
    )
    pace: PaceMode = setting(
        choice("rxstreamer.config.declared:PaceMode"),
        "interval",
        "`interval`: one batch per `stream_interval`; `original`: rows at the spacing of their own timestamps "
        "divided by `speed` (see Load testing)",
        "--pace",
    )
    speed: float = setting(SPEED, 1.0, 'with `pace = "original"`: how many times faster than recorded', "--speed")
    batch_by: BatchBy = setting(
        choice("rxstreamer.config.declared:BatchBy"),
        "count",
        "`count`: batches of `batch_size` rows; `scrape`: one batch per timestamp and host (one scrape of one "
        "host, split at `batch_size`), holding one timestamp's rows at a time",
        "--batch-by",
    )
    amplify: int = setting(
        integer(1, MAX_AMPLIFY),
        1,
        "replay every row as this many virtual clusters: copy k renames uuid, hostname and instance the same way "
        "on every run (copy 0 is the original)",
        "--amplify",
    )
    shard: str = setting(
        SHARD,
        "",
        '`"i/N"`: send only the GPUs whose uuid hashes to shard i of N (after `amplify`), so N instances send the '
        "input once between them; empty: all",
        "--shard",
    )
    workers: int = setting(
        integer(1, MAX_WORKERS),
        1,
        "shard processes run by this one (worker i is `--shard i/N`), to use N cores",
        "--workers",
    )
    read_ahead: int = setting(
        integer(0, MAX_READ_AHEAD),
        1,
        "batches read while the previous one is being published (the call leaves the pipeline's thread free); `0` "
        "reads only after each acknowledgement; scraping reads none ahead (a read waits for the next scrape)",
    )


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: float = setting(POSITIVE, "100ms", "first backoff bound (exponential, with full jitter)")
    max_backoff: float = setting(POSITIVE, "5s", "backoff cap, at least `initial_backoff`")
    multiplier: float = setting(MULTIPLIER, 2.0, "growth of the bound per attempt")
    max_attempts: int = setting(integer(0), 0, "attempts per batch, the first included; `0` retries until stopped")


@dataclass(frozen=True)
class NatsSettings:
    stream: str = setting(
        NATS_NAME,
        "GPU_TELEMETRY",
        "the JetStream stream (subjects `rxstreamer.>`), created when missing",
        "run tail --nats-stream",
    )
    replicas: int = setting(
        integer(0, 5),
        0,
        "replicas of a stream the streamer creates; `0`: 3 when three or more servers are given, else 1",
    )
    duplicate_window: float = setting(
        POSITIVE, "10m", "how long JetStream drops a re-sent batch by its `Nats-Msg-Id`, for a stream it creates"
    )
    user: str = setting(TEXT, "", "the NATS user to connect as, with `password_file` or `password`; empty: none")
    password_file: Path | None = setting(
        OPTIONAL_PATH, "", "a file holding the NATS user's password, on one line (see Security); empty: none"
    )
    password: str = setting(
        Kind(TEXT.convert, lambda value: "(set)" if value else "(unset)"),  # shown set/unset, never the value
        "",
        "the NATS password itself, for `RXSTREAMER_MESSAGE_QUEUE__NATS__PASSWORD`; `password_file` is preferred",
    )
    creds_file: Path | None = setting(
        OPTIONAL_PATH,
        "",
        "a NATS `.creds` file (user JWT and seed) or an NKey user seed file (`SU...`); empty: none",
    )


_SECRET = Kind(TEXT.convert, lambda value: "(set)" if value else "(unset)")  # shown set/unset, never the value


@dataclass(frozen=True)
class ClientTlsSettings:
    ca: Path | None = setting(
        OPTIONAL_PATH, "", "PEM file of the CA that signed the queue's certificate; setting it (or `cert`) turns TLS on"
    )
    cert: Path | None = setting(OPTIONAL_PATH, "", "PEM certificate chain of this client, for mutual TLS (with `key`)")
    key: Path | None = setting(OPTIONAL_PATH, "", "PEM private key of `cert`")
    server_name: str = setting(TEXT, "", "the name the queue's certificate must carry; empty: the address's host")


@dataclass(frozen=True)
class ClientAuthSettings:
    token_file: Path | None = setting(
        OPTIONAL_PATH, "", "a file holding this client's token for the broker (see Security); empty: no token"
    )
    token: str = setting(
        _SECRET, "", "the token itself, for `RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN`; `token_file` is preferred"
    )


@dataclass(frozen=True)
class MessageQueueSettings:
    address: str = setting(
        host_port(1, "rxstreamer.sinks:SCHEMES"),
        "localhost:50051",
        "`host:port` (or `grpc://host:port`) of the queue; `nats://h1:4222,nats://h2:4222,...` for NATS JetStream",
        "run tail --mq-address",
    )
    topic: str = setting(TOPIC, "gpu-telemetry", "the topic to publish to (and to read from)", "run tail --topic")
    publish_timeout: float = setting(POSITIVE, "5s", "deadline of one publish call")
    producer_id: str = setting(
        TEXT,
        "",
        "the identity the queue deduplicates by; empty: instance, file name, file fingerprint and how it is batched",
        "--producer-id",
    )
    max_retry_time: float = setting(
        DURATION, "0s", "how long one batch may be retried before the stream stops with reason `error`; `0s`: forever"
    )
    publish_in_background: bool = setting(
        BOOLEAN,
        False,
        "make gRPC Publish calls blocking, on a thread of their own, instead of on gRPC's threads (slower, see "
        "docs/benchmarks.md)",
    )
    unreachable_alert_after: float = setting(
        POSITIVE,
        "60s",
        "how long the queue may stay unreachable before one `mq.unreachable_alert` line at level `error`",
    )
    compression: Compression = setting(
        choice("rxstreamer.encoding:Compression"),
        "none",
        "`none`, `gzip` (gRPC's channel compression; over NATS, of the payload) or `zstd` (of the payload, named "
        "in its `content-encoding` header); `tail` reads every one",
    )
    encoding: WireEncoding = setting(
        choice("rxstreamer.encoding:WireEncoding"),
        "v2",
        "wire format of the batches: `v2` states each GPU once per batch (a quarter of v1's bytes, see The wire "
        "contract), `v1` one full message per row, for consumers that read only v1; `tail` reads both",
    )
    retry: RetrySettings = table(RetrySettings)
    nats: NatsSettings = table(NatsSettings)
    tls: ClientTlsSettings = table(ClientTlsSettings)
    auth: ClientAuthSettings = table(ClientAuthSettings)


@dataclass(frozen=True)
class ShutdownSettings:
    timeout: float = setting(POSITIVE, "10s", "on a stop signal, how long the publish in flight may take to finish")


@dataclass(frozen=True)
class LoggingSettings:
    format: LogFormat = setting(
        choice("rxstreamer.logs:LogFormat"),
        "auto",
        "`json`, `console`, or `auto` (console on a terminal)",
        "run mq tail validate --log-format",
    )
    level: str = setting(
        choice("rxstreamer.logs:LOG_LEVELS"), "info", "`debug`, `info`, `warning`, `error`", "run mq tail --log-level"
    )
    progress_interval: float = setting(POSITIVE, "10s", "how often `streamer.progress` is logged")
    rejected_rows_in_full: int = setting(
        integer(0), 20, "rejected rows logged one by one; after that, one count per progress interval"
    )


@dataclass(frozen=True)
class BrokerTlsSettings:
    cert: Path | None = setting(OPTIONAL_PATH, "", "PEM certificate chain the broker serves TLS with (with `key`)")
    key: Path | None = setting(OPTIONAL_PATH, "", "PEM private key of `cert`")
    client_ca: Path | None = setting(
        OPTIONAL_PATH, "", "PEM CA file: when set, every client must present a certificate it signed (mutual TLS)"
    )


@dataclass(frozen=True)
class BrokerAuthSettings:
    tokens_file: Path | None = setting(
        OPTIONAL_PATH,
        "",
        "TOML file of `[[token]]` tables (`name`, `token`, `publish`, `subscribe`) checked on every call, re-read "
        "on SIGHUP (see Security); empty: no tokens",
    )


@dataclass(frozen=True)
class BrokerSettings:
    listen: str = setting(
        host_port(0), "127.0.0.1:50051", "where the reference broker listens; port 0 picks one", "mq --listen"
    )
    max_messages: int = setting(integer(1), 100000, "messages retained per topic", "mq --max-messages")
    max_bytes: int = setting(SIZE, "256MiB", "payload bytes retained per topic", "mq --max-bytes")
    retention: float = setting(
        DURATION, "0s", "release messages older than this; `0s` keeps them until the broker stops", "mq --retention"
    )
    max_subscribers: int = setting(
        integer(1),
        64,
        "open `Subscribe` (and health `Watch`) streams; more are refused with `RESOURCE_EXHAUSTED`, so streams "
        "never take the threads Publish needs",
        "mq --max-subscribers",
    )
    max_topics: int = setting(
        integer(1),
        1000,
        "topics the broker holds; a publish that would create one more is refused with `RESOURCE_EXHAUSTED`",
        "mq --max-topics",
    )
    max_total_bytes: int = setting(
        SIZE,
        "1GiB",
        "payload bytes retained by all topics together; past it publishes are refused like a full topic",
        "mq --max-total-bytes",
    )
    data_dir: Path | None = setting(
        OPTIONAL_PATH,
        "",
        "keep topics in a SQLite database here (`broker.sqlite3`), across restarts; empty: in memory only",
        "mq --data-dir",
    )
    fsync: FsyncPolicy = setting(
        choice("rxstreamer.config.declared:FsyncPolicy"),
        "always",
        "`always` (before each acknowledgement), `interval`, or `never`",
        "mq --fsync",
    )
    fsync_interval: float = setting(
        POSITIVE, "100ms", 'with `fsync = "interval"`: how often the database is flushed to disk'
    )
    allow_plaintext: bool = setting(
        BOOLEAN,
        False,
        "listen without TLS on an address other than loopback without the `broker.plaintext` warning",
    )
    tls: BrokerTlsSettings = table(BrokerTlsSettings)
    auth: BrokerAuthSettings = table(BrokerAuthSettings)


def _or_empty(kind: Kind[str]) -> Kind[str]:
    """``kind``, or an empty string, which switches the feature off."""

    def convert(value: Any) -> str:
        if isinstance(value, str) and not value.strip():
            return ""
        try:
            return kind.convert(value)
        except ValueError as error:
            raise ValueError(f"{error}; or empty: off") from None

    return Kind(convert)


@dataclass(frozen=True)
class ObservabilitySettings:
    listen: str = setting(
        _or_empty(host_port(0)),
        "",
        "serve `/metrics` (Prometheus text), `/healthz` and `/readyz` over HTTP at this `host:port` (see Metrics and "
        "probes); port 0 picks one, logged as `metrics.started`; empty: off",
        "run mq --metrics-listen",
    )
    per_gpu_max: int = setting(
        integer(0),
        0,
        "report `rxstreamer_gpu_last_sample_age_seconds` for at most this many GPUs (the first acknowledged); "
        "`0`: no per-GPU series",
    )
    linger: float = setting(
        DURATION,
        "0s",
        "after a run that ended by itself (not by a signal), keep serving the endpoint this long, so that a last "
        "scrape sees the final counts; a stop signal ends the wait",
    )


@dataclass(frozen=True)
class Settings:
    telemetry: TelemetrySettings = table(TelemetrySettings)
    message_queue: MessageQueueSettings = table(MessageQueueSettings)
    shutdown: ShutdownSettings = table(ShutdownSettings)
    logging: LoggingSettings = table(LoggingSettings)
    broker: BrokerSettings = table(BrokerSettings)
    observability: ObservabilitySettings = table(ObservabilitySettings)


TABLES: Final[dict[str, list[str]]] = {}  # every table by dotted name ("" is the top level), with its keys
DECLARATIONS: Final[dict[str, Declaration]] = {}  # every setting by dotted name, in declaration order
register(Settings, TABLES, DECLARATIONS)
