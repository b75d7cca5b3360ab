"""TLS and mutual TLS between real processes, with a CA and certificates made at test time by trustme."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from rxstreamer.config import ConfigError, load_settings
from rxstreamer.tail import TailError, TailOptions, tail
from rxstreamer.tls import is_loopback
from tests.processes import broker_process, read_topic, run_command, run_streamer

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    """A CA, a certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("streamer.test")
    paths = Pki(
        *(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "other.pem"))
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    trustme.CA().cert_pem.write_to_path(str(paths.other_ca))
    return paths


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def broker_tls(pki: Pki, *, mutual: bool = False, extra: str = "") -> str:
    """The [broker.tls] table of a broker config file."""
    client_ca = f'client_ca = "{pki.ca}"\n' if mutual else ""
    return f'[broker.tls]\ncert = "{pki.server_cert}"\nkey = "{pki.server_key}"\n{client_ca}{extra}'


def client_tls(pki: Pki, *, cert: bool = False, ca: Path | None = None) -> dict[str, str]:
    """The streamer's RXSTREAMER_ variables for TLS (with a client certificate when ``cert``)."""
    settings = {"RXSTREAMER_MESSAGE_QUEUE__TLS__CA": str(ca or pki.ca)}
    if cert:
        settings["RXSTREAMER_MESSAGE_QUEUE__TLS__CERT"] = str(pki.client_cert)
        settings["RXSTREAMER_MESSAGE_QUEUE__TLS__KEY"] = str(pki.client_key)
    return settings


def tail_settings(settings: dict[str, str]) -> TailOptions:
    """TailOptions reading from the beginning with the given RXSTREAMER_ variables."""
    loaded = load_settings(environ=settings)
    return TailOptions(
        address="", topic="gpu-telemetry", from_beginning=True, idle_timeout=1.0, settings=loaded.message_queue
    )


def stream(address: str, settings: dict[str, str], *args: str) -> tuple[float, object]:
    started = time.monotonic()
    finished = run_streamer(
        "--mq-address", address, "--interval", "0", "--batch-size", "100", *args, settings=settings, timeout=30
    )
    return time.monotonic() - started, finished


def test_tls_works_end_to_end(tmp_path: Path, pki: Pki) -> None:
    """A TLS broker, a TLS streamer, a TLS tail: every row arrives."""
    config = write_config(tmp_path / "broker.toml", broker_tls(pki))
    with broker_process("--config", str(config)) as broker:
        finished = run_streamer(
            "--mq-address", broker.address, "--interval", "0", "--batch-size", "100", settings=client_tls(pki)
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert finished.summary["rows_published"] == 960
        options = tail_settings(client_tls(pki))
        out = io.StringIO()
        assert tail(TailOptions(**{**options.__dict__, "address": broker.address}), out) == 960
        assert '"broker.started"' in "".join(broker.lines)
        assert '"tls": true' in "".join(broker.lines)


def test_mutual_tls_end_to_end_and_a_client_without_a_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path / "broker.toml", broker_tls(pki, mutual=True))
    with broker_process("--config", str(config)) as broker:
        finished = run_streamer(
            "--mq-address",
            broker.address,
            "--interval",
            "0",
            "--batch-size",
            "100",
            settings=client_tls(pki, cert=True),
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert finished.summary["rows_published"] == 960

        started = time.monotonic()
        refused = run_streamer("--mq-address", broker.address, "--interval", "0", settings=client_tls(pki), timeout=30)
        assert refused.returncode == 1
        assert time.monotonic() - started < 10
        error = refused.summary["error"]
        assert "requires a client certificate" in error
        assert "message_queue.tls.cert" in error
        assert refused.summary["rows_published"] == 0


def test_a_plaintext_client_against_a_tls_broker_fails_fast_saying_so(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path / "broker.toml", broker_tls(pki))
    with broker_process("--config", str(config)) as broker:
        started = time.monotonic()
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", timeout=30)
        assert finished.returncode == 1
        assert time.monotonic() - started < 10
        assert "speaks TLS and this client connects in plaintext" in finished.summary["error"]
        with pytest.raises(TailError, match="speaks TLS"):
            read_topic(broker.address)


def test_a_tls_client_against_a_plaintext_broker_fails_fast_saying_so(pki: Pki) -> None:
    with broker_process() as broker:
        started = time.monotonic()
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", settings=client_tls(pki), timeout=30)
        assert finished.returncode == 1
        assert time.monotonic() - started < 10
        assert "does not speak TLS" in finished.summary["error"]
        options = tail_settings(client_tls(pki))
        with pytest.raises(TailError, match="does not speak TLS"):
            tail(TailOptions(**{**options.__dict__, "address": broker.address}), io.StringIO())


def test_a_certificate_from_another_ca_fails_fast(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path / "broker.toml", broker_tls(pki))
    with broker_process("--config", str(config)) as broker:
        finished = run_streamer(
            "--mq-address", broker.address, "--interval", "0", settings=client_tls(pki, ca=pki.other_ca), timeout=30
        )
        assert finished.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in finished.summary["error"]


@pytest.mark.parametrize("setting", ["ca", "cert", "key"])
def test_a_missing_client_tls_file_is_exit_2_naming_the_setting(tmp_path: Path, pki: Pki, setting: str) -> None:
    settings = client_tls(pki, cert=True)
    settings[f"RXSTREAMER_MESSAGE_QUEUE__TLS__{setting.upper()}"] = str(tmp_path / "missing.pem")
    finished = run_streamer("--mq-address", "127.0.0.1:1", settings=settings, timeout=30)
    assert finished.returncode == 2
    assert f"message_queue.tls.{setting}" in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.parametrize("setting", ["cert", "key", "client_ca"])
def test_a_missing_broker_tls_file_is_exit_2_naming_the_setting(tmp_path: Path, pki: Pki, setting: str) -> None:
    table = broker_tls(pki, mutual=True)
    replaced = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca}[setting]
    config = write_config(
        tmp_path / "broker.toml", table.replace(f'{setting} = "{replaced}"', f'{setting} = "{tmp_path / "nope"}"')
    )
    finished = run_command("mq", "--listen", "127.0.0.1:0", "--config", str(config))
    assert finished.returncode == 2
    assert f"broker.tls.{setting}" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_broker_key_without_its_certificate_is_exit_2(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path / "broker.toml", f'[broker.tls]\nkey = "{pki.server_key}"\n')
    finished = run_command("mq", "--listen", "127.0.0.1:0", "--config", str(config))
    assert finished.returncode == 2
    assert "broker.tls.cert" in finished.stderr


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.8.0.1:5", "unix:/tmp/x"]))
    assert not any(map(is_loopback, ["10.0.0.5:1", "queue:50051", "0.0.0.0:1", "[::]:1"]))


def test_a_token_without_tls_is_refused_for_an_address_other_than_loopback(tmp_path: Path) -> None:
    from rxstreamer.tls import client_security

    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    settings = load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(token)}).message_queue
    with pytest.raises(ConfigError, match="only sent over TLS") as refused:
        client_security(settings, "queue.example:50051")
    assert "s3cret" not in str(refused.value)
    assert client_security(settings, "127.0.0.1:50051").token


def test_server_name_checks_the_certificate_under_another_name(tmp_path: Path) -> None:
    """A broker whose certificate names only broker.test is reached at 127.0.0.1 with server_name set."""
    ca = trustme.CA()
    named = ca.issue_cert("broker.test")
    for name, pem in (("ca.pem", ca.cert_pem), ("b.pem", named.cert_chain_pems[0]), ("b.key", named.private_key_pem)):
        pem.write_to_path(str(tmp_path / name))
    config = write_config(
        tmp_path / "broker.toml", f'[broker.tls]\ncert = "{tmp_path / "b.pem"}"\nkey = "{tmp_path / "b.key"}"\n'
    )
    settings = {"RXSTREAMER_MESSAGE_QUEUE__TLS__CA": str(tmp_path / "ca.pem")}
    with broker_process("--config", str(config)) as broker:
        mismatched = run_streamer("--mq-address", broker.address, "--interval", "0", settings=settings, timeout=30)
        assert mismatched.returncode == 1
        assert "does not name this host" in mismatched.summary["error"]
        named_settings = {**settings, "RXSTREAMER_MESSAGE_QUEUE__TLS__SERVER_NAME": "broker.test"}
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", settings=named_settings, timeout=30)
        assert finished.returncode == 0, finished.stdout
        assert finished.summary["rows_published"] == 960
