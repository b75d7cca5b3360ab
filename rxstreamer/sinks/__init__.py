"""Sinks: where encoded batches go, one module per queue, chosen by the scheme of the queue's address.

``open_sink("grpc://queue:50051", topic, ...)`` (or a bare ``queue:50051``, which means gRPC) opens a
``GrpcSink``; an unknown scheme is refused with a message listing the known ones. Adding a sink is one
module with a class that satisfies ``Sink`` and takes ``open_sink``'s arguments (the address without its
``scheme://``), plus one line in ``_SCHEMES``. Sink modules are imported only when their scheme is opened,
so importing this package (for ``InMemorySink``, say) loads no gRPC.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from rxstreamer.sinks.base import Publisher, PublishStats, Sink, SinkOptions, StatsRecorder
from rxstreamer.sinks.memory import InMemorySink

__all__ = [
    "DEFAULT_SCHEME",
    "SCHEMES",
    "InMemorySink",
    "PublishStats",
    "Publisher",
    "Sink",
    "SinkAddressError",
    "SinkOptions",
    "StatsRecorder",
    "open_sink",
    "split_address",
]

#: Each scheme's sink, as "module:class"; imported on first use.
_SCHEMES: dict[str, str] = {
    "grpc": "rxstreamer.sinks.grpc:GrpcSink",
    "nats": "rxstreamer.sinks.nats:NatsSink",
}

#: The schemes ``message_queue.address`` may name (the settings check it against this).
SCHEMES = tuple(_SCHEMES)

#: What an address without ``scheme://`` means: ``host:port`` has always been a gRPC target here.
DEFAULT_SCHEME = "grpc"


class SinkAddressError(ValueError):
    """An address that names no known sink; the message says which schemes there are."""


def split_address(address: str) -> tuple[str, str]:
    """The scheme and the target of an address: ``grpc://q:50051`` and ``q:50051`` both give ``("grpc", "q:50051")``.

    Raises ``SinkAddressError`` for a scheme without a sink, or for nothing after ``scheme://``; checking
    this before anything starts is what lets a wrong address fail as a bad setting.
    """
    scheme, separator, target = address.partition("://")
    if not separator:
        return DEFAULT_SCHEME, address
    known = ", ".join(f"{name}://" for name in sorted(_SCHEMES))
    if scheme.lower() not in _SCHEMES:
        raise SinkAddressError(f"unknown scheme {scheme!r}: the schemes are {known} (a bare host:port means grpc://)")
    if not target:
        raise SinkAddressError(f"{address!r} names no host:port after {scheme}://")
    return scheme.lower(), target


def open_sink(address: str, topic: str, options: SinkOptions) -> Sink:
    """Open the sink ``address`` names, for ``topic``."""
    scheme, target = split_address(address)
    module_name, _, attribute = _SCHEMES[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # a sink whose client library is an extra that is not installed
        raise SinkAddressError(f"{scheme}:// needs: pip install 'rxstreamer[{scheme}]' ({error})") from error
    factory = cast(Callable[[str, str, SinkOptions], Sink], getattr(module, attribute))
    return factory(target, topic, options)
