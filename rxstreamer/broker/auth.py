"""Tokens with rights: who may publish to and subscribe from which topics.

The tokens file (``broker.auth.tokens_file``) is TOML, one ``[[token]]`` table per client::

    [[token]]
    name = "streamer-a"            # shown in log lines and refusals; never the token
    token = "..."                  # the secret the client sends (``authorization: Bearer ...``)
    publish = ["gpu-*"]            # topic glob patterns (fnmatch, case-sensitive); empty or absent: none
    subscribe = []

``parse_tokens`` is pure (text in, tokens out); ``TokenStore`` holds the current tokens and re-reads the file
on ``reload`` (SIGHUP), keeping the old ones when the new file is bad. ``AuthInterceptor`` checks every
MessageQueue call: no token or an unknown one gets UNAUTHENTICATED, a token without the right to the topic
PERMISSION_DENIED. Tokens are compared with ``hmac.compare_digest`` against every entry, so the time taken
does not say how much of a token was right. The health service is left open (probes carry no tokens and it
tells nothing about topics). No message here ever contains a token.
"""

from __future__ import annotations

import fnmatch
import hmac
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

log = structlog.get_logger()

TOKEN_METADATA = "authorization"
BEARER = "bearer "
#: The service whose calls need no token: probes carry none, and it tells nothing about topics.
OPEN_PREFIX = "/grpc.health."


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names the entry by position or name, never its token."""


@dataclass(frozen=True)
class Token:
    name: str
    secret: bytes
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may(self, action: str, topic: str) -> bool:
        patterns = self.publish if action == "publish" else self.subscribe
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in patterns)

    def __repr__(self) -> str:  # never the secret, whatever prints a Token
        return f"Token(name={self.name!r}, publish={self.publish!r}, subscribe={self.subscribe!r})"


def parse_tokens(text: str) -> tuple[Token, ...]:
    """The tokens of a tokens file's text; TokensFileError when it is not one."""
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TokensFileError(f"is not TOML: {error}") from None
    unknown = sorted(set(tree) - {"token"})
    if unknown:
        raise TokensFileError(f"has unknown tables {unknown}; only [[token]] tables are allowed")
    entries = tree.get("token", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise TokensFileError("must hold [[token]] tables")
    tokens: list[Token] = []
    for number, entry in enumerate(entries, start=1):
        tokens.append(_token(entry, f"[[token]] number {number}"))
    names = [token.name for token in tokens]
    for name in names:
        if names.count(name) > 1:
            raise TokensFileError(f"names {name!r} more than once")
    secrets = [token.secret for token in tokens]
    if len(set(secrets)) != len(secrets):
        raise TokensFileError("gives the same token to two names")
    return tuple(tokens)


def _token(entry: dict[str, Any], where: str) -> Token:
    unknown = sorted(set(entry) - {"name", "token", "publish", "subscribe"})
    if unknown:
        raise TokensFileError(f"{where} has unknown keys {unknown}; the keys are name, token, publish, subscribe")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TokensFileError(f"{where} needs a name (a non-empty string)")
    where = f"[[token]] {name!r}"
    secret = entry.get("token")
    if not isinstance(secret, str) or not secret.strip() or any(character.isspace() for character in secret):
        raise TokensFileError(f"{where} needs a token: a non-empty string without spaces")
    rights = {}
    for key in ("publish", "subscribe"):
        patterns = entry.get(key, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise TokensFileError(f'{where}: {key} must be a list of topic patterns, e.g. ["gpu-*"]')
        rights[key] = tuple(patterns)
    return Token(name, secret.encode(), rights["publish"], rights["subscribe"])


def read_tokens(path: Path) -> tuple[Token, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise TokensFileError(f"cannot be read: {reason}") from None
    return parse_tokens(text)


def find_token(tokens: Sequence[Token], given: bytes) -> Token | None:
    """The entry whose token is ``given``, comparing with every entry in constant time."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.secret, given):
            found = token
    return found


class TokenStore:
    """The tokens in force; ``reload`` re-reads the file, keeping the old tokens when the new file is bad."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens = read_tokens(path)  # TokensFileError at start: the broker does not start
        self._lock = threading.Lock()

    @property
    def tokens(self) -> tuple[Token, ...]:
        with self._lock:
            return self._tokens

    def reload(self) -> bool:
        try:
            tokens = read_tokens(self.path)
        except TokensFileError as error:
            log.error("broker.tokens_reload_failed", path=str(self.path), reason=str(error), kept=len(self.tokens))
            return False
        with self._lock:
            self._tokens = tokens
        log.info("broker.tokens_reloaded", path=str(self.path), tokens=len(tokens), names=[t.name for t in tokens])
        return True

    def check(
        self, metadata: Sequence[tuple[str, Any]] | None, action: str, topic: str
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may go on; else the status and the message to refuse it with."""
        given = None
        for key, value in metadata or ():
            if key == TOKEN_METADATA and isinstance(value, str) and value.lower().startswith(BEARER):
                given = value[len(BEARER) :].strip().encode()
        if not given:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "authentication failed: no token (set message_queue.auth.token_file)",
            )
        token = find_token(self.tokens, given)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, "authentication failed: the token is not valid"
        if not token.may(action, topic):
            return grpc.StatusCode.PERMISSION_DENIED, f"token {token.name!r} may not {action} on topic {topic!r}"
        return None


_ACTIONS = {"Publish": "publish", "Subscribe": "subscribe"}


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the token and its rights on every MessageQueue call, before the servicer sees it."""

    def __init__(self, store: TokenStore, on_refused: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._on_refused = on_refused

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_PREFIX):
            return handler
        action = _ACTIONS.get(method.rpartition("/")[2], "call")
        metadata = details.invocation_metadata
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard(handler.unary_unary, action, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._guard(handler.unary_stream, action, metadata),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _guard(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any], action: str, metadata: Any
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            topic = str(getattr(request, "topic", ""))
            refusal = self._store.check(metadata, action, topic)
            if refusal is not None:
                log.warning(
                    "broker.auth_refused", status=refusal[0].name, action=action, topic=topic[:255], reason=refusal[1]
                )
                if self._on_refused is not None:
                    self._on_refused(refusal[0].name.lower())
                context.abort(*refusal)
            return behaviour(request, context)

        return guarded


def reload_on_hangup(store: TokenStore) -> Callable[[], None]:
    """Re-read the tokens file on each SIGHUP (connections stay open); returns what gives SIGHUP back.

    The handler only queues the signal; a thread of its own reloads (a handler that logged could deadlock on a
    lock the interrupted thread held). Off the main thread, where handlers cannot be installed, this does nothing.
    """
    import queue
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()

    def reload_each() -> None:
        while pending.get() != 0:
            store.reload()

    threading.Thread(target=reload_each, name="broker-tokens-reload", daemon=True).start()
    previous = signal.signal(signal.SIGHUP, lambda signum, _frame: pending.put(signum))

    def give_back() -> None:
        signal.signal(signal.SIGHUP, previous)
        pending.put(0)

    return give_back
