"""Tokens with rights: the tokens file (pure), the rights, and real brokers refusing what they must."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import grpc
import pytest

from rxstreamer.broker.auth import Token, TokensFileError, TokenStore, find_token, parse_tokens
from rxstreamer.config import load_settings
from rxstreamer.tail import TailError, TailOptions, tail
from tests.processes import broker_process, run_command, run_streamer, wait_until
from tests.test_tls import broker_tls, client_tls, make_pki

SECRET_A = "tok-a-8f3e1c0b7d9a"
SECRET_B = "tok-b-2c4d6e8f0a1b"
TOKENS = f"""
[[token]]
name = "streamer-a"
token = "{SECRET_A}"
publish = ["a*", "gpu-*"]

[[token]]
name = "reader"
token = "{SECRET_B}"
subscribe = ["gpu-*"]
"""


# --- the tokens file and the rights, apart --------------------------------------------------------------


def test_a_tokens_file_is_parsed_into_names_tokens_and_rights() -> None:
    a, reader = parse_tokens(TOKENS)
    assert (a.name, a.secret, a.publish, a.subscribe) == ("streamer-a", SECRET_A.encode(), ("a*", "gpu-*"), ())
    assert (reader.name, reader.publish, reader.subscribe) == ("reader", (), ("gpu-*",))
    assert SECRET_A not in repr(a)


def test_rights_are_topic_globs() -> None:
    (a, reader) = parse_tokens(TOKENS)
    assert a.may("publish", "a")
    assert a.may("publish", "abc")
    assert a.may("publish", "gpu-telemetry")
    assert not a.may("publish", "b")
    assert not a.may("publish", "ba")
    assert not a.may("subscribe", "abc")
    assert reader.may("subscribe", "gpu-x")
    assert not reader.may("publish", "gpu-x")
    assert not Token("x", b"t", ("A*",), ()).may("publish", "a")  # case counts


def test_an_empty_file_holds_no_tokens() -> None:
    assert parse_tokens("") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[token]]\ntoken = 'SECRETVALUE'\n", "needs a name"),
        ("[[token]]\nname = 'x'\n", "needs a token"),
        ("[[token]]\nname = 'x'\ntoken = 'SECRET VALUE'\n", "without spaces"),
        ("[[token]]\nname = 'x'\ntoken = 'SECRETVALUE'\npublish = 'a*'\n", "publish must be a list"),
        ("[[token]]\nname = 'x'\ntoken = 'SECRETVALUE'\nrights = []\n", "unknown keys"),
        ("[[token]]\nname = 'x'\ntoken = 'SECRETVALUE'\n[[token]]\nname = 'x'\ntoken = 'SECRETVALUE2'\n", "more than"),
        ("[[token]]\nname = 'x'\ntoken = 'SECRETVALUE'\n[[token]]\nname = 'y'\ntoken = 'SECRETVALUE'\n", "same token"),
        ("[[token]]\nname = 'x'\ntoken = SECRETVALUE\n", "is not TOML"),
        ("[tokens]\n", "unknown tables"),
    ],
)
def test_a_bad_tokens_file_is_refused_without_quoting_a_token(text: str, says: str) -> None:
    with pytest.raises(TokensFileError, match=says) as refused:
        parse_tokens(text)
    assert "SECRETVALUE" not in str(refused.value)


def test_tokens_are_found_by_their_whole_value() -> None:
    tokens = parse_tokens(TOKENS)
    assert find_token(tokens, SECRET_A.encode()) is tokens[0]
    assert find_token(tokens, SECRET_A[:-1].encode()) is None
    assert find_token(tokens, (SECRET_A + "x").encode()) is None
    assert find_token(tokens, b"") is None


def test_the_store_checks_tokens_and_rights(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    store = TokenStore(path)
    bearer = [("authorization", f"Bearer {SECRET_A}")]
    assert store.check(bearer, "publish", "abc") is None
    assert store.check([], "publish", "abc") == (
        grpc.StatusCode.UNAUTHENTICATED,
        "authentication failed: no token (set message_queue.auth.token_file)",
    )
    assert store.check([("authorization", "Bearer nope")], "publish", "a")[0] == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[index]
    denied = store.check(bearer, "publish", "b")
    assert denied is not None
    assert denied[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'streamer-a' may not publish on topic 'b'" in denied[1]


def test_a_bad_file_on_reload_keeps_the_tokens_in_force(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    store = TokenStore(path)
    path.write_text("not toml [")
    assert not store.reload()
    assert [token.name for token in store.tokens] == ["streamer-a", "reader"]
    path.write_text(TOKENS.replace("streamer-a", "streamer-b"))
    assert store.reload()
    assert [token.name for token in store.tokens] == ["streamer-b", "reader"]


# --- real brokers -----------------------------------------------------------------------------------------


def _files(tmp_path: Path, token: str = SECRET_A) -> tuple[Path, Path]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker.auth]\ntokens_file = "{tokens}"\n')
    token_file = tmp_path / "client-token"
    token_file.write_text(token + "\n")
    return config, token_file


def _token(path: Path) -> dict[str, str]:
    return {"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN_FILE": str(path)}


def _refusals(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines if '"broker.auth_refused"' in line]


@pytest.mark.integration
def test_a_wrong_token_stops_the_streamer_within_3s_with_one_line(tmp_path: Path) -> None:
    config, token_file = _files(tmp_path, token="wrong-token-value")
    with broker_process("--config", str(config)) as broker:
        started = time.monotonic()
        finished = run_streamer(
            "--mq-address", broker.address, "--interval", "0", settings=_token(token_file), timeout=30
        )
        elapsed = time.monotonic() - started
        assert finished.returncode == 1
        assert elapsed < 3, elapsed
        errors = [line for line in finished.lines if line["level"] == "error"]
        assert len(errors) == 1, errors
        assert "authentication" in errors[0]["error"]
        assert "UNAUTHENTICATED" in errors[0]["error"]
        assert "wrong-token-value" not in finished.stdout + finished.stderr
        wait_until(lambda: _refusals(broker.lines), 5, "the broker's refusal line")
        time.sleep(0.2)
        assert len(_refusals(broker.lines)) <= 1
        assert _refusals(broker.lines)[0]["status"] == "UNAUTHENTICATED"


@pytest.mark.integration
def test_publish_rights_on_a_star_are_refused_on_topic_b(tmp_path: Path) -> None:
    config, token_file = _files(tmp_path)
    with broker_process("--config", str(config)) as broker:
        refused = run_streamer(
            "--mq-address", broker.address, "--interval", "0", "--topic", "b", settings=_token(token_file), timeout=30
        )
        assert refused.returncode == 1
        assert "PERMISSION_DENIED" in refused.summary["error"]
        assert "may not publish on topic 'b'" in refused.summary["error"]
        allowed = run_streamer(
            "--mq-address", broker.address, "--interval", "0", "--topic", "abc", settings=_token(token_file), timeout=30
        )
        assert allowed.returncode == 0, allowed.stdout
        assert allowed.summary["rows_published"] == 960


@pytest.mark.integration
def test_tail_needs_a_token_with_the_right_to_subscribe(tmp_path: Path) -> None:
    config, token_file = _files(tmp_path)
    reader_file = tmp_path / "reader-token"
    reader_file.write_text(SECRET_B)
    with broker_process("--config", str(config)) as broker:
        assert (
            run_streamer("--mq-address", broker.address, "--interval", "0", settings=_token(token_file)).returncode == 0
        )
        reader = load_settings(environ=_token(reader_file)).message_queue
        options = TailOptions(broker.address, "gpu-telemetry", from_beginning=True, idle_timeout=1.0, settings=reader)
        assert tail(options, io.StringIO()) == 960
        with pytest.raises(TailError, match="UNAUTHENTICATED"):
            tail(TailOptions(broker.address, "gpu-telemetry", from_beginning=True, idle_timeout=1.0), io.StringIO())
        publisher = load_settings(environ=_token(token_file)).message_queue  # may publish, not subscribe
        with pytest.raises(TailError, match="PERMISSION_DENIED"):
            tail(
                TailOptions(broker.address, "gpu-telemetry", from_beginning=True, idle_timeout=1.0, settings=publisher),
                io.StringIO(),
            )


@pytest.mark.integration
def test_the_token_may_come_from_the_environment(tmp_path: Path) -> None:
    config, _ = _files(tmp_path)
    with broker_process("--config", str(config)) as broker:
        finished = run_streamer(
            "--mq-address",
            broker.address,
            "--interval",
            "0",
            settings={"RXSTREAMER_MESSAGE_QUEUE__AUTH__TOKEN": SECRET_A},
        )
        assert finished.returncode == 0, finished.stdout
        started = next(line for line in finished.lines if line["event"] == "streamer.started")
        assert SECRET_A not in finished.stdout + finished.stderr
        assert started["message_queue.address"] == broker.address


@pytest.mark.integration
def test_sighup_reloads_the_tokens_without_dropping_the_broker(tmp_path: Path) -> None:
    config, _token_file = _files(tmp_path)
    new_token = tmp_path / "new-token"
    new_token.write_text("tok-c-0a9b8c7d6e5f")
    with broker_process("--config", str(config)) as broker:
        assert (
            run_streamer("--mq-address", broker.address, "--interval", "0", settings=_token(new_token)).returncode == 1
        )
        (tmp_path / "tokens.toml").write_text(
            TOKENS + '\n[[token]]\nname = "c"\ntoken = "tok-c-0a9b8c7d6e5f"\npublish = ["*"]\n'
        )
        broker.process.send_signal(signal.SIGHUP)
        wait_until(lambda: any('"broker.tokens_reloaded"' in line for line in broker.lines), 5, "the reload")
        finished = run_streamer("--mq-address", broker.address, "--interval", "0", settings=_token(new_token))
        assert finished.returncode == 0, finished.stdout
        assert finished.summary["rows_published"] == 960
        assert broker.process.poll() is None
        assert not any("tok-c-" in line for line in broker.lines)


@pytest.mark.integration
def test_tls_and_tokens_together(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config, token_file = _files(tmp_path)
    config.write_text(config.read_text() + broker_tls(pki, mutual=True))
    with broker_process("--config", str(config)) as broker:
        finished = run_streamer(
            "--mq-address",
            broker.address,
            "--interval",
            "0",
            settings={**client_tls(pki, cert=True), **_token(token_file)},
        )
        assert finished.returncode == 0, finished.stdout
        assert finished.summary["rows_published"] == 960


@pytest.mark.integration
def test_a_bad_tokens_file_is_exit_2_naming_the_setting(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[token]]\nname = "x"\ntoken = "{SECRET_A}"\npublish = "a*"\n')
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker.auth]\ntokens_file = "{tokens}"\n')
    finished = run_command("mq", "--listen", "127.0.0.1:0", "--config", str(config))
    assert finished.returncode == 2
    assert "broker.auth.tokens_file" in finished.stderr
    assert SECRET_A not in finished.stderr + finished.stdout
    config.write_text(f'[broker.auth]\ntokens_file = "{tmp_path / "missing.toml"}"\n')
    missing = run_command("mq", "--listen", "127.0.0.1:0", "--config", str(config))
    assert missing.returncode == 2
    assert "broker.auth.tokens_file" in missing.stderr
