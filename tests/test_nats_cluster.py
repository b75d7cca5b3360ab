"""The three-node JetStream cluster harness itself (tests/nats_cluster.py), against real nats-server processes.

The NATS sink's fault tests trust this harness to say who leads a stream, to crash or stop exactly that server,
and to bring it back with its data: so each of those is checked here against what JetStream itself answers
(through nats-py, as the sink talks to it). A missing nats-server fails these tests with the `make tools` hint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import PubAck

from tests import nats_cluster
from tests.nats_cluster import (
    ELECTION_TIMEOUT,
    ClusterError,
    NatsCluster,
    NatsServerMissingError,
    cluster_for_test,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STREAM = "HARNESS"
SUBJECT = "harness.batches"
# What a publisher retries while a stream has no leader: nobody answers, the request times out, or the server
# answers 503. (Never 400/404: those are configuration errors.)
TRANSIENT = (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError)

T = TypeVar("T")


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    yield from cluster_for_test()


def run(cluster: NatsCluster, body: Callable[[Client], Awaitable[T]]) -> T:
    """``body(client)`` on a fresh connection to every server of the cluster, closed afterwards."""

    async def connected() -> T:
        errors: list[Exception] = []

        async def record(error: Exception) -> None:  # nats-py's default prints every refused reconnect
            errors.append(error)

        client: Client = await nats.connect(
            servers=cluster.urls, connect_timeout=2, reconnect_time_wait=0.2, error_cb=record
        )
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(connected())


async def add_stream(client: Client, replicas: int = 3) -> None:
    await client.jetstream(timeout=2).add_stream(name=STREAM, subjects=[f"{SUBJECT}.>", SUBJECT], num_replicas=replicas)


async def publish(client: Client, msg_id: str, deadline: float = ELECTION_TIMEOUT) -> PubAck:
    """Publish with ``Nats-Msg-Id``, retrying transient failures (same id: safe) until ``deadline`` seconds."""
    js = client.jetstream(timeout=2)
    give_up = time.monotonic() + deadline
    while True:
        try:
            return await js.publish(SUBJECT, msg_id.encode(), headers={"Nats-Msg-Id": msg_id})
        except TRANSIENT:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


def stream_messages(cluster: NatsCluster, name: str) -> int | None:
    """How many messages the server ``name`` itself holds for the stream (its replica), None if it has none."""
    jsz = cluster.monitor(name, "/jsz?streams=true")
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == STREAM:
                return int(detail["state"]["messages"])
    return None


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
def test_the_cluster_forms_on_loopback_with_jetstream(cluster: NatsCluster) -> None:
    assert cluster.names == ("n1", "n2", "n3")
    assert cluster.urls == [f"nats://127.0.0.1:{cluster.node(name).client_port}" for name in cluster.names]
    assert cluster.address == ",".join(cluster.urls)
    ports = [port for n in cluster.nodes.values() for port in (n.client_port, n.cluster_port, n.http_port)]
    assert len(set(ports)) == 9
    leaders = {cluster.meta_leader(name) for name in cluster.names}
    assert len(leaders) == 1
    assert leaders <= set(cluster.names)
    for name in cluster.names:
        varz = cluster.monitor(name, "/varz")
        assert varz["server_name"] == name
        assert (varz["host"], varz["http_host"], varz["cluster"]["addr"]) == ("127.0.0.1",) * 3
        assert varz["cluster"]["name"] == "rxstreamer"
        assert cluster.monitor(name, "/routez")["num_routes"] == 2
        assert "Server is ready" in cluster.logs(name)
        assert (cluster.node(name).store_dir / "jetstream").is_dir()
        assert cluster.monitor(name, "/jsz")["config"]["store_dir"] == str(cluster.node(name).store_dir / "jetstream")

    async def account_streams(client: Client) -> int:
        return (await client.jetstream().account_info()).streams

    assert run(cluster, account_streams) == 0


@pytest.mark.integration
def test_a_stream_with_three_replicas_has_the_leader_jetstream_names(cluster: NatsCluster) -> None:
    async def create_and_ask(client: Client) -> dict[str, object]:
        await add_stream(client)
        reply = await client.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=2)
        cluster_info: dict[str, object] = json.loads(reply.data)["cluster"]
        return cluster_info

    info = run(cluster, create_and_ask)
    leader = cluster.wait_for_leader(STREAM)
    assert info["leader"] == leader
    assert cluster.leader(STREAM) == leader
    assert isinstance(info["replicas"], list)
    assert sorted(replica["name"] for replica in info["replicas"]) == sorted(set(cluster.names) - {leader})
    assert cluster.leader("NO_SUCH_STREAM") is None
    assert cluster.streams()[STREAM]["state"]["messages"] == 0


@pytest.mark.integration
@pytest.mark.faults
def test_killing_the_leader_elects_another_that_still_deduplicates(cluster: NatsCluster) -> None:
    async def before(client: Client) -> PubAck:
        await add_stream(client)
        return await publish(client, "batch-1")

    first = run(cluster, before)
    assert (first.seq, first.duplicate) == (1, None)
    old = cluster.wait_for_leader(STREAM)

    cluster.kill(old)
    assert not cluster.node(old).running
    assert cluster.leader(STREAM) != old
    began = time.monotonic()
    new = cluster.wait_for_leader(STREAM, other_than=old, timeout=ELECTION_TIMEOUT)
    elected_in = time.monotonic() - began
    assert new in set(cluster.names) - {old}

    async def after(client: Client) -> list[PubAck]:
        # The id stored before the election is still known to the new leader; a new id is stored once.
        return [await publish(client, "batch-1"), await publish(client, "batch-2"), await publish(client, "batch-2")]

    again, second, resent = run(cluster, after)
    assert (again.seq, again.duplicate) == (1, True)
    assert (second.seq, second.duplicate) == (2, None)
    assert (resent.seq, resent.duplicate) == (2, True)
    print(f"leader {old} killed: {new} elected in {elected_in:.1f}s")  # shown with -s; typically 4-6 s on 2.9


@pytest.mark.integration
@pytest.mark.faults
def test_stopping_the_leader_hands_the_stream_over(cluster: NatsCluster) -> None:
    """SIGTERM is a graceful shutdown: the leader steps down on its way out (tens of ms, no 4-9 s election)."""
    run(cluster, add_stream)
    old = cluster.wait_for_leader(STREAM)
    cluster.stop(old)
    assert not cluster.node(old).running
    assert "Server Exiting.." in cluster.logs(old)  # a graceful stop (2.9 still exits with status 1 on SIGTERM)
    assert cluster.wait_for_leader(STREAM, other_than=old) != old
    assert (run(cluster, lambda client: publish(client, "after-stop"))).seq == 1


@pytest.mark.integration
@pytest.mark.faults
def test_a_restarted_server_rejoins_catches_up_and_counts_for_quorum(cluster: NatsCluster) -> None:
    run(cluster, add_stream)
    leader = cluster.wait_for_leader(STREAM)
    follower = next(name for name in cluster.names if name != leader)
    ports = (cluster.node(follower).client_port, cluster.node(follower).cluster_port)
    cluster.kill(follower)

    async def publish_three(client: Client) -> None:
        for number in range(3):
            await publish(client, f"while-down-{number}")

    run(cluster, publish_three)  # two of three servers are a quorum
    cluster.restart(follower)
    assert cluster.node(follower).running
    assert (cluster.node(follower).client_port, cluster.node(follower).cluster_port) == ports
    assert cluster.logs(follower).count("--- harness: starting") == 2
    wait_for(lambda: stream_messages(cluster, follower) == 3, 10, f"{follower} to hold the 3 messages")

    # The restarted server is needed now: with the third one down, it and one other must carry the stream.
    third = next(name for name in cluster.names if name not in (leader, follower))
    cluster.kill(third)
    assert run(cluster, lambda client: publish(client, "with-restarted")).seq == 4


@pytest.mark.integration
def test_everything_is_removed_on_exit_even_after_a_failure() -> None:
    try:
        with NatsCluster() as cluster:
            directory = cluster.directory
            processes = [node.process for node in cluster.nodes.values()]
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    except NatsServerMissingError as error:
        pytest.fail(str(error), pytrace=False)
    assert directory is not None
    assert not directory.exists()
    assert all(process is not None and process.returncode is not None for process in processes)
    assert cluster.nodes == {}


@pytest.mark.integration
def test_a_port_taken_before_the_server_binds_it_means_new_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free ports are only free until someone takes them: a server that cannot bind makes the start try again."""
    real = nats_cluster.free_ports
    calls: list[list[int]] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])

        def first_one_taken(count: int) -> list[int]:
            ports = real(count)
            if not calls:
                ports[0] = taken  # n1's client port
            calls.append(ports)
            return ports

        monkeypatch.setattr(nats_cluster, "free_ports", first_one_taken)
        try:
            with NatsCluster() as cluster:
                assert len(calls) == 2
                assert cluster.node("n1").client_port != taken
                assert len(cluster.running()) == 3
        except NatsServerMissingError as error:
            pytest.fail(str(error), pytrace=False)


def fake_server(tmp_path: Path, body: str) -> str:
    """A stand-in for nats-server: records its pid and config, then runs ``body`` (a shell snippet)."""
    script = tmp_path / "nats-server"
    script.write_text(f'#!/bin/sh\necho $$ >> {tmp_path}/pids\necho "$2" >> {tmp_path}/configs\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def gone(tmp_path: Path) -> None:
    """Every fake server was ended and reaped, and the cluster's directory removed."""
    for pid in (tmp_path / "pids").read_text().split():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    for config in (tmp_path / "configs").read_text().split():
        assert not Path(config).parent.exists()


def test_a_server_that_exits_at_start_fails_at_once_with_its_log(tmp_path: Path) -> None:
    binary = fake_server(tmp_path, 'echo "nats-server: bad config line 3" >&2; exit 1')
    began = time.monotonic()
    with pytest.raises(ClusterError, match=r"exited \(1\) while starting") as error:
        NatsCluster(binary=binary).start()
    assert time.monotonic() - began < 10
    assert "nats-server: bad config line 3" in str(error.value)
    gone(tmp_path)


def test_a_cluster_that_never_gets_ready_fails_at_the_deadline_with_the_logs(tmp_path: Path) -> None:
    binary = fake_server(tmp_path, 'echo "still thinking"; exec sleep 60')
    with pytest.raises(ClusterError, match=r"not ready after 0.5s: n1 does not answer") as error:
        NatsCluster(binary=binary, ready_timeout=0.5).start()
    assert str(error.value).count("still thinking") == 3
    gone(tmp_path)


def test_a_missing_nats_server_says_to_run_make_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nats_cluster, "FALLBACK_DIRS", ())
    with pytest.raises(NatsServerMissingError, match="run `make tools`"):
        NatsCluster().start()
    with pytest.raises(pytest.fail.Exception, match="run `make tools`"):
        next(cluster_for_test())


@pytest.mark.integration
def test_serve_gives_the_address_until_sigterm(tmp_path: Path) -> None:
    """`python -m tests.nats_cluster --serve`, as `make run-nats` runs it: address file, then a clean stop."""
    address_file = tmp_path / "address"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.nats_cluster", "--serve", "--address-file", str(address_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        wait_for(lambda: address_file.exists() or process.poll() is not None, 30, "the address file")
        assert process.poll() is None, process.communicate()
        address = address_file.read_text().strip()
        urls = address.split(",")
        assert len(urls) == 3
        assert all(url.startswith("nats://127.0.0.1:") for url in urls)

        async def create_and_publish() -> PubAck:
            client = await nats.connect(servers=urls, connect_timeout=2)
            try:
                await add_stream(client)
                return await publish(client, "served")
            finally:
                await client.close()

        assert asyncio.run(create_and_publish()).seq == 1
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert address in stdout
    assert f"stream {STREAM}: 1 messages" in stdout  # what the queue holds, printed before the servers stop
    assert not address_file.exists()
    assert all(refuses(int(url.rsplit(":", 1)[1])) for url in urls)
