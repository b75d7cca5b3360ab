"""No token or key content leaves: every log line, error, checkpoint and /metrics page of a run is grepped."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from rxstreamer.config import load_settings, settings_summary
from tests.processes import broker_process, free_port, run_command, run_streamer
from tests.test_auth import SECRET_A, TOKENS
from tests.test_tls import broker_tls, client_tls, make_pki

pytestmark = pytest.mark.integration


def _secrets(*keys: Path) -> list[str]:
    """The tokens, and every line of base64 in the private keys: none may appear anywhere."""
    lines = [line for key in keys for line in key.read_text().splitlines() if line and not line.startswith("-----")]
    return [SECRET_A, "tok-b-2c4d6e8f0a1b", "wrong-secret-9d8c7b", *lines]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def test_no_secret_appears_in_anything_a_run_wrote(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    broker_metrics = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[broker.auth]\ntokens_file = "{tokens}"\n[observability]\nlisten = "127.0.0.1:{broker_metrics}"\n'
        f'[logging]\nlevel = "debug"\n{broker_tls(pki, mutual=True)}'
    )
    token_file = tmp_path / "token"
    token_file.write_text(SECRET_A)
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text("wrong-secret-9d8c7b")
    checkpoint = tmp_path / "checkpoint.json"
    written: list[str] = []
    with broker_process("--config", str(config)) as broker:
        streamer_metrics = free_port()
        settings = {
            **client_tls(pki, cert=True),
            "RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(token_file),
            "RXSTREAMER_LOGGING__LEVEL": "debug",
            "RXSTREAMER_OBSERVABILITY__LINGER": "3s",
        }
        process_args = ("--mq-address", broker.address, "--interval", "0", "--checkpoint-path", str(checkpoint))
        import threading

        pages: list[str] = []

        def scrape_during_linger() -> None:
            for _ in range(100):
                try:
                    pages.append(_scrape(streamer_metrics))
                    return
                except OSError:
                    threading.Event().wait(0.1)

        scraper = threading.Thread(target=scrape_during_linger)
        scraper.start()
        finished = run_streamer(
            *process_args, "--metrics-listen", f"127.0.0.1:{streamer_metrics}", settings=settings, timeout=60
        )
        scraper.join(timeout=10)
        assert finished.returncode == 0, finished.stdout
        assert pages, "the streamer's /metrics was never scraped"
        started = next(line for line in finished.lines if line["event"] == "streamer.settings")
        assert started["message_queue.auth.token"] == "(unset)"
        written += [finished.stdout, finished.stderr, checkpoint.read_text(), *pages]

        by_environment = run_streamer(
            *process_args, settings={**settings, "RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": SECRET_A}, timeout=60
        )
        shown = next(line for line in by_environment.lines if line["event"] == "streamer.settings")
        assert shown["message_queue.auth.token"] == "(set)"
        written += [by_environment.stdout, by_environment.stderr]

        wrong = run_streamer(
            *process_args[:4], settings={**settings, "RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(wrong_file)}
        )
        assert wrong.returncode == 1
        written += [wrong.stdout, wrong.stderr]
        tail_wrong = run_command(
            "tail",
            "--mq-address",
            broker.address,
            "--count",
            "1",
            "--idle-timeout",
            "1s",
            env={**settings, "RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(wrong_file)},
        )
        assert tail_wrong.returncode == 1
        assert "UNAUTHENTICATED" in tail_wrong.stderr
        written += [tail_wrong.stdout, tail_wrong.stderr]
        written.append(_scrape(broker_metrics))
    written += broker.lines
    everything = "\n".join(written)
    assert '"broker.auth_refused"' in everything  # the refusals were logged, and are grepped too
    for secret in _secrets(pki.server_key, pki.client_key):
        assert secret not in everything, f"a secret leaked: {secret[:6]}..."


def test_the_settings_summary_shows_a_token_as_set_or_unset() -> None:
    assert settings_summary(load_settings(environ={}))["message_queue.auth.token"] == "(unset)"
    shown = settings_summary(load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": SECRET_A}))
    assert shown["message_queue.auth.token"] == "(set)"
    assert SECRET_A not in json.dumps(shown, default=str)
    nats = settings_summary(load_settings(environ={"RXSTREAMER_MESSAGE_QUEUE__NATS__PASSWORD": SECRET_A}))
    assert (nats["message_queue.nats.password"], nats["message_queue.auth.token"]) == ("(set)", "(unset)")
    assert SECRET_A not in json.dumps(nats, default=str)
