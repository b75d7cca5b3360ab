"""The public API: the names users compose with are pinned, resolve, load lazily, and open the right sink."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from reactivex.scheduler import ImmediateScheduler
from structlog.testing import capture_logs

import rxstreamer
from rxstreamer.config import ConfigError, load_settings
from rxstreamer.service import run_streamer
from rxstreamer.sinks import Sink, SinkAddressError, SinkOptions, open_sink, split_address
from rxstreamer.sinks.grpc import GrpcSink
from tests.conftest import REPO_ROOT, TEST_DATA_CSV

#: Every public name. Changing this list is changing the API: do it on purpose, and say so in the README.
PUBLIC_NAMES = [
    "BatchEncoder",
    "ConfigError",
    "CsvRows",
    "EncodedBatch",
    "GrpcSink",
    "InMemorySink",
    "MetricRow",
    "Position",
    "PublishAck",
    "PublishError",
    "PublishStats",
    "Rejection",
    "RetryPolicy",
    "RunSummary",
    "Settings",
    "Sink",
    "SourceError",
    "build_pipeline",
    "decode_batch",
    "encode_batch",
    "load_settings",
    "load_transforms",
    "metric_to_dict",
    "open_sink",
    "pace",
    "publish_with_retry",
    "pull_through",
    "retrying",
    "rows_from_csv",
    "run_streamer",
]

NO_SCHEME = "unknown scheme 'kafka': the schemes are grpc://, nats:// (a bare host:port means grpc://)"


def test_the_public_names_are_exactly_the_pinned_ones() -> None:
    """rxstreamer.__all__ holds the 30 pinned names, no more, no fewer."""
    assert sorted(rxstreamer.__all__) == PUBLIC_NAMES


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_resolves_to_what_it_names(name: str) -> None:
    """Each name imports (lazily) and is the class or function of that name, not a stand-in."""
    value = getattr(rxstreamer, name)
    assert value.__name__ == name


def test_importing_the_package_loads_nothing_heavy_and_sinks_load_grpc_only_when_asked() -> None:
    """`import rxstreamer` loads no grpc, protobuf or reactivex; InMemorySink and testing no grpc; GrpcSink does."""
    probe = (
        "import sys\n"
        "import rxstreamer\n"
        "print(sorted(name for name in ('grpc', 'google.protobuf', 'reactivex') if name in sys.modules))\n"
        "from rxstreamer import InMemorySink, Sink, open_sink\n"
        "from rxstreamer.testing import FailingSink, ScriptedSource\n"
        "print('grpc' in sys.modules)\n"
        "from rxstreamer import GrpcSink\n"
        "print('grpc' in sys.modules)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == ["[]", "False", "True"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    """The lazy exports answer like a module: a name that is not exported raises AttributeError."""
    with pytest.raises(AttributeError, match="module 'rxstreamer' has no attribute 'GrpcPublisher'"):
        rxstreamer.GrpcPublisher  # noqa: B018 - the attribute access is what is tested


# --- open_sink: the address's scheme chooses the sink ----------------------------------------------------


@pytest.mark.parametrize("address", ["grpc://127.0.0.1:50051", "GRPC://127.0.0.1:50051", "127.0.0.1:50051"])
def test_grpc_and_bare_addresses_open_a_grpc_sink_on_host_and_port(address: str) -> None:
    """grpc://host:port and a bare host:port both give a GrpcSink whose target is host:port (no call made)."""
    sink: Sink = open_sink(address, "gpu-telemetry", SinkOptions(timeout=1.0, scheduler=ImmediateScheduler.singleton()))
    try:
        assert isinstance(sink, GrpcSink)
        assert sink.address == "127.0.0.1:50051"
        assert (sink.in_flight, sink.wait_idle(0.0)) == (0, True)
    finally:
        sink.close()
        sink.close()


def test_split_address_keeps_ipv6_targets_whole() -> None:
    """The scheme is cut at '://', never at a colon of the target."""
    assert split_address("[::1]:50051") == ("grpc", "[::1]:50051")
    assert split_address("grpc://[::1]:50051") == ("grpc", "[::1]:50051")


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("kafka://queue:9092", NO_SCHEME),
        ("grpc://", "'grpc://' names no host:port after grpc://"),
    ],
)
def test_an_address_no_sink_serves_is_refused_naming_the_schemes(address: str, message: str) -> None:
    """An unknown scheme, or a scheme with nothing after it: SinkAddressError, nothing opened."""
    with pytest.raises(SinkAddressError) as refused:
        open_sink(address, "gpu-telemetry", SinkOptions(timeout=1.0, scheduler=ImmediateScheduler.singleton()))
    assert str(refused.value) == message


def test_the_streamer_refuses_an_unknown_scheme_as_a_bad_setting_before_it_starts() -> None:
    """run_streamer with message_queue.address kafka://...: ConfigError naming the setting, and nothing logged."""
    settings = load_settings(overrides={"telemetry.metrics_path": str(TEST_DATA_CSV)}, environ={})
    queue = dataclasses.replace(settings.message_queue, address="kafka://queue:9092")
    with capture_logs() as logs, pytest.raises(ConfigError) as refused:
        run_streamer(dataclasses.replace(settings, message_queue=queue))
    assert str(refused.value) == f"message_queue.address = 'kafka://queue:9092': {NO_SCHEME}"
    assert logs == []


# --- the broker extra ------------------------------------------------------------------------------------


def test_the_broker_without_its_extra_says_what_to_install_in_one_line() -> None:
    """`rxstreamer mq` where grpc_health is missing: exit 1 and one line on stderr, no traceback."""
    hide_extra = (
        "import runpy, sys\n"
        "sys.modules['grpc_health'] = None  # as if rxstreamer[broker] were not installed\n"
        "sys.argv = ['rxstreamer', 'mq', '--listen', '127.0.0.1:0']\n"
        "runpy.run_module('rxstreamer', run_name='__main__')\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", hide_extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert (finished.returncode, finished.stdout, finished.stderr.count("\n")) == (1, "", 1)
    assert finished.stderr.startswith("rxstreamer: the broker needs: pip install 'rxstreamer[broker]' (No module")
