"""TLS and credentials for the NATS JetStream sink and `tail`, against real nats-server clusters on 127.0.0.1.

One cluster per module and kind (tests/nats_cluster.py): TLS with users (a password, an NKey, a user without the
right to publish telemetry), plaintext with a token, and mutual TLS. Each test writes to a topic of its own, so the
tests sharing a cluster do not see each other's batches.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rxstreamer.config import ConfigError, load_settings
from rxstreamer.sinks.nats import nats_security
from rxstreamer.tls import is_loopback
from tests.conftest import TEST_DATA_CSV
from tests.nats_cluster import NatsCluster, cluster_for_test
from tests.nats_helpers import assert_exactly_once, read_stream
from tests.processes import Finished, free_port, run_command, run_streamer
from tests.test_streamer_e2e import assert_same_metrics, csv_records

pytestmark = pytest.mark.integration
nkeys: Any = importlib.import_module("nkeys")  # no type hints of its own; in the nats extra

PASSWORD = "pw-alice-5d1c9e7b3a"
LIMITED_PASSWORD = "pw-limited-8e2f4a6c"
WRONG_PASSWORD = "pw-wrong-0b9a8c7d"
TOKEN = "tok-nats-3f6e9d2c1b"
WRONG_TOKEN = "tok-wrong-7a5c3e1f"
# Fast enough for any refusal: a Python start (about a second on a busy 2-core machine), one connection attempt.
FAST_S = 8.0


@dataclass(frozen=True)
class Secure:
    """The TLS cluster with users, and the files a client needs for it."""

    cluster: NatsCluster
    password_file: Path
    seed_file: Path  # an NKey user seed
    seed: str

    def env(self, **extra: str) -> dict[str, str]:
        """RXSTREAMER_ variables: the cluster's CA, and ``extra`` (``NATS__USER="alice"`` for
        RXSTREAMER_MESSAGE_QUEUE__NATS__USER)."""
        settings = {"RXSTREAMER_MESSAGE_QUEUE__TLS__CA": str(self.cluster.ca)}
        settings.update({f"RXSTREAMER_MESSAGE_QUEUE__{key}": value for key, value in extra.items()})
        return settings

    def alice(self) -> dict[str, str]:
        return self.env(NATS__USER="alice", NATS__PASSWORD_FILE=str(self.password_file))


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    directory = tmp_path_factory.mktemp("nats-secure")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = directory / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    password_file = directory / "password"
    password_file.write_text(PASSWORD + "\n")
    users = (
        "  users: [\n"
        f"    {{user: alice, password: {json.dumps(PASSWORD)}}}\n"
        f"    {{nkey: {public}}}\n"
        f"    {{user: limited, password: {json.dumps(LIMITED_PASSWORD)}, permissions: {{\n"
        '      publish: {allow: ["$JS.API.>"]}, subscribe: {allow: ["_INBOX.>"]}}}\n'
        "  ]"
    )
    for cluster in cluster_for_test(tls=True, authorization=users):
        yield Secure(cluster, password_file, seed_file, seed.decode())


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[NatsCluster]:
    yield from cluster_for_test(authorization=f"  token: {json.dumps(TOKEN)}")


def stream_file(address: str, topic: str, settings: dict[str, str], *args: str) -> Finished:
    return run_streamer("--mq-address", address, "--topic", topic, "--interval", "0s", *args, settings=settings)


def timed_run(address: str, topic: str, settings: dict[str, str]) -> tuple[Finished, float]:
    began = time.monotonic()
    finished = stream_file(address, topic, settings)
    return finished, time.monotonic() - began


def the_error(finished: Finished) -> str:
    """The run's one line at level error, the `streamer.stopped` summary, and its error."""
    (line,) = [line for line in finished.lines if line.get("level") == "error"]
    assert line["event"] == "streamer.stopped"
    assert line["reason"] == "error"
    assert "Traceback" not in finished.stderr
    return str(line["error"])


def assert_tail_refused(address: str, settings: dict[str, str], *expected: str) -> str:
    """`tail` stops at once with exit 1 and one line holding every ``expected`` text."""
    began = time.monotonic()
    finished = run_command("tail", "--mq-address", address, "--from-beginning", "--idle-timeout", "1s", env=settings)
    assert time.monotonic() - began < FAST_S
    assert finished.returncode == 1, finished.stderr
    (line,) = finished.stderr.splitlines()
    for text in expected:
        assert text in line
    return finished.stderr


# --- TLS ---------------------------------------------------------------------------------------------------------


def test_a_file_goes_over_tls_with_a_password_and_comes_back_the_same(secure: Secure) -> None:
    finished = stream_file(secure.cluster.address, "tls-e2e", secure.alice(), "--batch-size", "50")
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["rows_published"] == 960
    received = read_stream(secure.cluster.address, topic="tls-e2e", settings=secure.alice())
    assert_same_metrics(received, csv_records(TEST_DATA_CSV))
    assert_exactly_once(received, 960)


def test_a_plaintext_client_meeting_the_tls_cluster_stops_at_once_saying_so(secure: Secure) -> None:
    plaintext = {k: v for k, v in secure.alice().items() if "__TLS__" not in k}
    finished, took = timed_run(secure.cluster.address, "plain-vs-tls", plaintext)
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert "require TLS" in error
    assert "set message_queue.tls.ca" in error
    assert not [line for line in finished.lines if line["event"] == "mq.unreachable"]  # refused, not retried
    assert_tail_refused(secure.cluster.address, plaintext, "require TLS", "message_queue.tls.ca")


def test_a_tls_client_meeting_a_plaintext_cluster_stops_before_sending_its_token(
    secure: Secure, token_cluster: NatsCluster
) -> None:
    settings = secure.env(AUTH__TOKEN=TOKEN)
    finished, took = timed_run(token_cluster.address, "tls-vs-plain", settings)
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert "does not offer TLS" in error
    assert "unset message_queue.tls" in error
    assert_tail_refused(token_cluster.address, settings, "does not offer TLS")


def test_a_certificate_from_another_ca_is_refused_with_the_settings_to_check(secure: Secure, tmp_path: Path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    finished, took = timed_run(
        secure.cluster.address, "other-ca", {**secure.alice(), "RXSTREAMER_MESSAGE_QUEUE__TLS__CA": str(other)}
    )
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert "TLS handshake" in error
    assert "message_queue.tls.ca" in error


def test_mutual_tls_needs_the_client_certificate() -> None:
    for cluster in cluster_for_test(verify_clients=True):
        ca = {"RXSTREAMER_MESSAGE_QUEUE__TLS__CA": str(cluster.ca)}
        without, took = timed_run(cluster.address, "mtls", ca)
        assert without.returncode == 1
        assert took < FAST_S
        assert "require a client certificate" in the_error(without)
        certificate = {
            **ca,
            "RXSTREAMER_MESSAGE_QUEUE__TLS__CERT": str(cluster.client_cert),
            "RXSTREAMER_MESSAGE_QUEUE__TLS__KEY": str(cluster.client_key),
        }
        finished = stream_file(cluster.address, "mtls", certificate, "--batch-size", "100")
        assert finished.returncode == 0, finished.stderr
        assert len(read_stream(cluster.address, topic="mtls", settings=certificate, count=960)) == 960


# --- credentials -------------------------------------------------------------------------------------------------


def test_a_wrong_password_stops_the_run_at_once_naming_authentication(secure: Secure) -> None:
    settings = secure.env(NATS__USER="alice", NATS__PASSWORD=WRONG_PASSWORD)
    finished, took = timed_run(secure.cluster.address, "wrong-password", settings)
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert error.startswith("UNAUTHENTICATED: authentication failed")
    assert "user 'alice'" in error
    assert "message_queue.nats.password" in error
    assert not [line for line in finished.lines if line["event"] == "mq.unreachable"]
    assert_tail_refused(secure.cluster.address, settings, "authentication failed", "user 'alice'")


def test_no_credentials_for_a_cluster_that_wants_them_says_which_to_set(secure: Secure) -> None:
    finished, _ = timed_run(secure.cluster.address, "no-credentials", secure.env())
    assert finished.returncode == 1
    error = the_error(finished)
    assert "require credentials" in error
    assert "message_queue.nats.user" in error


def test_an_nkey_seed_file_authenticates(secure: Secure) -> None:
    settings = secure.env(NATS__CREDS_FILE=str(secure.seed_file))
    finished = stream_file(secure.cluster.address, "nkey", settings, "--batch-size", "100")
    assert finished.returncode == 0, finished.stderr
    assert finished.summary["batches_published"] == 10
    assert len(read_stream(secure.cluster.address, topic="nkey", settings=settings, count=960)) == 960


def test_a_publish_the_user_may_not_make_is_final(secure: Secure) -> None:
    """The user may make the stream calls ($JS.API.>) but not publish on rxstreamer.<topic>: the server answers the
    publish with no reply, only an error on the connection, which ends the run at once (no wait for a timeout)."""
    # A publish timeout far longer than FAST_S: a refusal that waited for it would fail the test.
    settings = secure.env(NATS__USER="limited", NATS__PASSWORD=LIMITED_PASSWORD, PUBLISH_TIMEOUT="30s")
    finished, took = timed_run(secure.cluster.address, "denied", settings)
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert error.startswith("PERMISSION_DENIED")
    assert 'publish to "rxstreamer.denied"' in error
    assert finished.summary["batches_published"] == 0


def test_a_token_authenticates_and_a_wrong_one_is_final(token_cluster: NatsCluster, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = {"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(token_file)}
    finished = stream_file(token_cluster.address, "token", settings, "--batch-size", "100")
    assert finished.returncode == 0, finished.stderr
    assert len(read_stream(token_cluster.address, topic="token", settings=settings, count=960)) == 960
    wrong, took = timed_run(token_cluster.address, "token", {"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": WRONG_TOKEN})
    assert wrong.returncode == 1
    assert took < FAST_S
    error = the_error(wrong)
    assert error.startswith("UNAUTHENTICATED: authentication failed")
    assert "a token" in error


# --- settings, checked before anything is sent ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "setting", "says"),
    [
        ({"NATS__PASSWORD_FILE": "/nonexistent/password", "NATS__USER": "a"}, "nats.password_file", "cannot be read"),
        ({"NATS__PASSWORD": "x"}, "nats.user", "must be set too"),
        ({"NATS__USER": "a"}, "nats.password_file", "must be set too"),
        ({"NATS__USER": "a", "NATS__PASSWORD": "x", "AUTH__TOKEN": "t"}, "auth.token", "only one kind"),
        ({"NATS__CREDS_FILE": "NOT_A_SEED"}, "nats.creds_file", "neither a NATS .creds file nor an NKey"),
        ({"TLS__CA": "/nonexistent/ca.pem"}, "tls.ca", "cannot be read"),
        ({"TLS__CA": "NOT_PEM"}, "tls.ca", "holds no PEM certificate"),
        ({"TLS__CERT": "/nonexistent/c.pem"}, "tls.key", "must be set too"),
    ],
)
def test_a_bad_security_setting_is_a_config_error_naming_it(
    tmp_path: Path, settings: dict[str, str], setting: str, says: str
) -> None:
    junk = tmp_path / "junk"
    junk.write_text("SECRET-LOOKING-CONTENT-1234\n")
    environ = {
        f"RXSTREAMER_MESSAGE_QUEUE__{key}": str(junk) if value in ("NOT_A_SEED", "NOT_PEM") else value
        for key, value in settings.items()
    }
    with pytest.raises(ConfigError) as refused:
        nats_security(load_settings(environ=environ).message_queue)
    assert refused.value.setting == f"message_queue.{setting}"
    assert says in str(refused.value)
    assert "SECRET-LOOKING-CONTENT" not in str(refused.value)


def test_a_bad_password_file_stops_the_streamer_with_exit_2(secure: Secure, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    finished = stream_file(
        secure.cluster.address, "config", secure.env(NATS__USER="alice", NATS__PASSWORD_FILE=str(empty))
    )
    assert finished.returncode == 2
    (line,) = [json.loads(text) for text in finished.stderr.splitlines()]
    assert line["setting"] == "message_queue.nats.password_file"
    assert "is empty" in line["error"]


# --- no secret leaves --------------------------------------------------------------------------------------------


def _scrape_while_lingering(port: int, pages: list[str]) -> None:
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                pages.append(response.read().decode())
                return
        except OSError:
            threading.Event().wait(0.1)


def test_no_secret_appears_in_anything_a_run_wrote(secure: Secure, token_cluster: NatsCluster, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    debug = {"RXSTREAMER_LOGGING__LEVEL": "debug"}
    written: list[str] = []
    metrics_port = free_port()
    pages: list[str] = []
    scraper = threading.Thread(target=_scrape_while_lingering, args=(metrics_port, pages))
    scraper.start()
    by_environment = secure.env(NATS__USER="alice", NATS__PASSWORD=PASSWORD)
    finished = stream_file(
        secure.cluster.address,
        "secrets",
        {**by_environment, **debug, "RXSTREAMER_OBSERVABILITY__LINGER": "1s"},
        "--batch-size",
        "100",
        "--checkpoint-path",
        str(checkpoint),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    )
    scraper.join(timeout=10)
    assert finished.returncode == 0, finished.stderr
    assert pages, "the streamer's /metrics was never scraped"
    shown = next(line for line in finished.lines if line["event"] == "streamer.settings")
    assert shown["message_queue.nats.password"] == "(set)"
    written += [finished.stdout, finished.stderr, checkpoint.read_text(), *pages]
    # (where, settings, whether `tail` is refused too: its one line is grepped then)
    runs = [
        (secure.cluster.address, secure.env(NATS__USER="alice", NATS__PASSWORD=WRONG_PASSWORD), True),
        (secure.cluster.address, secure.env(NATS__USER="limited", NATS__PASSWORD=LIMITED_PASSWORD), False),
        (secure.cluster.address, secure.env(NATS__CREDS_FILE=str(secure.seed_file)), False),
        (token_cluster.address, {"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": WRONG_TOKEN}, True),
        (token_cluster.address, secure.env(AUTH__TOKEN=TOKEN), True),  # TLS wanted, not offered: no CONNECT sent
    ]
    for address, settings, refused in runs:
        run = stream_file(address, "secrets", {**settings, **debug}, "--batch-size", "100")
        written += [run.stdout, run.stderr]
        if refused:
            tailed = run_command("tail", "--mq-address", address, "--idle-timeout", "1s", env={**settings, **debug})
            assert tailed.returncode == 1, tailed.stderr
            written += [tailed.stdout, tailed.stderr]
    everything = "\n".join(written)
    assert "authentication failed" in everything  # the refusals are grepped too
    assert "PERMISSION_DENIED" in everything
    for secret in (PASSWORD, WRONG_PASSWORD, LIMITED_PASSWORD, TOKEN, WRONG_TOKEN, secure.seed):
        assert secret not in everything, f"a secret leaked: {secret[:6]}..."


def test_a_token_is_not_sent_in_plaintext_to_an_address_other_than_loopback(token_cluster: NatsCluster) -> None:
    """The guard reads the server's INFO before CONNECT: no TLS, and a host not named as loopback (this machine's
    own name, which resolves to 127.0.0.1 here: the server is reached, and the name is not a loopback address)."""
    name = socket.gethostname()
    try:
        resolved = socket.gethostbyname(name)
    except OSError:
        resolved = ""
    if resolved != "127.0.0.1" or is_loopback(name):
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.0.0.1 ({resolved or 'not at all'})")
    address = ",".join(url.replace("127.0.0.1", name) for url in token_cluster.urls)
    finished, took = timed_run(address, "plaintext-token", {"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": TOKEN})
    assert finished.returncode == 1
    assert took < FAST_S
    error = the_error(finished)
    assert "does not use TLS" in error
    assert "message_queue.auth.token is only sent over TLS" in error


def test_a_creds_file_and_a_seed_file_are_told_apart_by_their_content(tmp_path: Path) -> None:
    """A .creds file (a user JWT and its seed; the servers that check the JWT run with an operator, which the local
    cluster does not) is given to nats-py as user credentials, a seed alone as an NKey seed."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n"
        "------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed + "\n")
    for path, option in ((creds, "user_credentials"), (seed_file, "nkeys_seed")):
        environ = {"RXSTREAMER_MESSAGE_QUEUE__NATS__CREDS_FILE": str(path)}
        security = nats_security(load_settings(environ=environ).message_queue)
        assert security.connect_options() == {option: str(path)}
        assert seed not in repr(security)
    broken = tmp_path / "broken.creds"
    broken.write_text(creds.read_text().replace(seed, seed[:30]))  # cut short
    environ = {"RXSTREAMER_MESSAGE_QUEUE__NATS__CREDS_FILE": str(broken)}
    with pytest.raises(ConfigError, match=r"neither a NATS \.creds file nor an NKey user seed") as refused:
        nats_security(load_settings(environ=environ).message_queue)
    assert seed[:30] not in str(refused.value)
