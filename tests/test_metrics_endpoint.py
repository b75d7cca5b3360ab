"""The metrics endpoint of real processes: a streamer and a broker, scraped over HTTP while they run.

promtool (Prometheus's own linter, installed by `make tools`) checks the text; the values are parsed with
prometheus_client's parser and compared with what the processes log.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from tests.conftest import REPO_ROOT, promtool_check, with_two_bad_rows
from tests.processes import (
    Watched,
    broker_process,
    child_env,
    free_port,
    freeze,
    http_get,
    json_lines,
    run_command,
    run_streamer,
    start_watched_streamer,
    thaw,
    wait_until,
)

pytestmark = pytest.mark.integration

INTERVAL = 0.1  # --interval 100ms
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The streamer.stopped fields and the metric each one is reported as.
SUMMARY_METRICS = {
    "rows_read": "rxstreamer_rows_read_total",
    "rows_rejected": "rxstreamer_rows_rejected_total",  # summed over its reasons
    "rows_filtered": "rxstreamer_rows_filtered_total",
    "rows_in_flight": "rxstreamer_rows_in_flight",
    "batches_published": "rxstreamer_batches_published_total",
    "rows_published": "rxstreamer_rows_published_total",
    "duplicates": "rxstreamer_duplicates_total",
    "checkpoint_sequence": "rxstreamer_checkpoint_sequence",
}


# Counters that can only rise during a run (the row counts are checked one by one).
RISING = (
    "rxstreamer_rows_read_total",
    "rxstreamer_batches_published_total",
    "rxstreamer_publish_duration_seconds_count",
    "rxstreamer_pacing_lateness_seconds_count",
)


def parsed(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metrics(base: str) -> Samples:
    status, text = http_get(base + "/metrics")
    assert status == 200, text
    return parsed(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: found for (sample, labels), found in samples.items() if sample == name}


def summary_as_metrics(samples: Samples) -> dict[str, float]:
    """The streamer.stopped fields as the metrics say them."""
    reported = {field: value(samples, name) for field, name in SUMMARY_METRICS.items() if field != "rows_rejected"}
    reported["rows_rejected"] = sum(by_label(samples, "rxstreamer_rows_rejected_total", "reason").values())
    return reported


def metrics_port(lines: list[dict[str, Any]]) -> int:
    port: int = next(line for line in lines if line.get("event") == "metrics.started")["port"]
    return port


class Poller:
    """Polls a URL on a thread of its own until stopped, keeping every status it answered and when."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.statuses: list[tuple[float, int]] = []
        self._url = url
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.statuses.append((time.monotonic(), http_get(self._url)[0]))
            except OSError:
                self.statuses.append((time.monotonic(), 0))  # no answer at all

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.statuses


def ensure_gone(streamer: Watched) -> None:
    """Kill the streamer if a failed test left it running (its output readers close its pipes)."""
    if streamer.process.poll() is None:
        streamer.process.kill()
        streamer.process.wait(10)


def stop_gracefully(streamer: Watched) -> int:
    streamer.process.send_signal(signal.SIGTERM)
    finished = streamer.finish(timeout=30)
    return finished.returncode


def test_a_paced_run_counts_up_while_scraped_and_its_last_scrape_equals_the_summary(
    tmp_path: Path, promtool: str
) -> None:
    """960 rows (two bad ones added, power rows filtered), batches of 10 every 100ms, checkpointed.

    Three scrapes during the run see every counter rise. With ``observability.linger`` the endpoint stays up
    after ``streamer.stopped``; the scrape taken then reports each field of that line exactly (the run's
    counts no longer change), and a SIGTERM ends the linger at once.
    """
    path = with_two_bad_rows(tmp_path)
    (tmp_path / "no_power.py").write_text(
        "from reactivex import operators as ops\n\n"
        "def drop_power():\n"
        "    return ops.filter(lambda row: row.metric_name != 'DCGM_FI_DEV_POWER_USAGE')\n"
    )
    settings = {
        "RXSTREAMER_OBSERVABILITY__LINGER": "60s",
        "RXSTREAMER_TELEMETRY__TRANSFORMS": '["no_power:drop_power"]',
        "PYTHONPATH": str(tmp_path),
    }
    with broker_process() as broker:
        streamer = start_watched_streamer(
            "--mq-address", broker.address, "--topic", "metrics-summary", "--metrics-path", str(path),
            "--interval", "100ms", "--batch-size", "10", "--metrics-listen", "127.0.0.1:0",
            "--checkpoint-path", str(tmp_path / "checkpoint.json"), settings=settings,
        )  # fmt: skip
        try:
            streamer.wait_for_event("streamer.started")
            base = f"http://127.0.0.1:{metrics_port(streamer.lines)}"
            during = []
            for _ in range(3):
                time.sleep(1.0)
                during.append(metrics(base))
                assert http_get(base + "/healthz") == (200, "alive\n")
                assert http_get(base + "/readyz") == (200, "ready\n")
            summary = streamer.wait_for_event("streamer.stopped", timeout=60)
            streamer.wait_for_event("metrics.lingering")
            status, text = http_get(base + "/metrics")
            final = parsed(text)
            ended = (http_get(base + "/healthz"), http_get(base + "/readyz"))
            signalled = time.monotonic()
            returncode = stop_gracefully(streamer)
            stopped_in = time.monotonic() - signalled
        finally:
            ensure_gone(streamer)

    published = [value(samples, "rxstreamer_rows_published_total") for samples in during]
    assert 0 < published[0] < published[1] < published[2] < 864, published
    for earlier, later in zip(during, [*during[1:], final], strict=True):
        for name in RISING:
            assert value(earlier, name) <= value(later, name), name
    for samples in during:  # every row read is in exactly one of the four outcomes, in each scrape too
        counted = summary_as_metrics(samples)
        assert counted["rows_read"] == sum(
            counted[field] for field in ("rows_published", "rows_rejected", "rows_filtered", "rows_in_flight")
        )

    assert status == 200
    assert summary["reason"] == "completed"
    assert summary_as_metrics(final) == {field: summary[field] for field in SUMMARY_METRICS}
    assert by_label(final, "rxstreamer_rows_rejected_total", "reason") == summary["rejected_by_reason"]
    assert (summary["rows_read"], summary["rows_rejected"], summary["rows_filtered"]) == (962, 2, 96)
    assert (summary["rows_published"], summary["batches_published"], summary["checkpoint_sequence"]) == (864, 87, 87)
    assert by_label(final, "rxstreamer_publish_attempts_total", "outcome") == {"ok": 87}
    assert value(final, "rxstreamer_publish_duration_seconds_count") == 87
    assert value(final, "rxstreamer_pacing_lateness_seconds_count") >= 86  # every tick but the first
    assert value(final, "rxstreamer_queue_up") == 1
    assert value(final, "rxstreamer_batches_in_flight") == 0
    assert value(final, "rxstreamer_newest_row_lag_seconds") > 0  # the file's own (old) timestamps
    assert not any(name.startswith("rxstreamer_gpu_") for name, _ in final)  # nothing per GPU unless asked
    assert ended == ((200, "alive; the run has ended (completed)\n"), (503, "the run has ended (completed)\n"))
    assert promtool_check(promtool, text) == (0, [])
    assert returncode == 0
    assert stopped_in < 5, "the linger of 60s was not cut short by SIGTERM"


def test_readyz_turns_503_when_the_queue_goes_and_200_when_it_is_back_while_healthz_stays_200() -> None:
    """The broker is stopped, then started again on the same port, under a streamer looping every 100ms."""
    port = free_port()
    with broker_process(port=port) as first:
        streamer = start_watched_streamer(
            "--mq-address", first.address, "--topic", "metrics-ready", "--loop", "--interval", "100ms",
            "--metrics-listen", "127.0.0.1:0",
        )  # fmt: skip
        try:
            streamer.wait_for_event("streamer.started")
            base = f"http://127.0.0.1:{metrics_port(streamer.lines)}"
            health = Poller(base + "/healthz")
            wait_until(lambda: http_get(base + "/readyz") == (200, "ready\n"), 20, "/readyz to answer 200")
            assert value(metrics(base), "rxstreamer_queue_up") == 1
            first.stop()
            stopped = time.monotonic()
            wait_until(lambda: http_get(base + "/readyz")[0] == 503, 10, "/readyz to answer 503")
            noticed_in = time.monotonic() - stopped
            assert http_get(base + "/readyz") == (503, "the queue is unreachable (see mq.unreachable)\n")
            assert value(metrics(base), "rxstreamer_queue_up") == 0
            streamer.wait_for_event("mq.unreachable")
        except BaseException:
            ensure_gone(streamer)
            raise
    try:
        with broker_process(port=port):
            wait_until(lambda: http_get(base + "/readyz") == (200, "ready\n"), 30, "/readyz to answer 200 again")
            came_back = time.monotonic()
            back = metrics(base)
            statuses = health.stop()
            returncode = stop_gracefully(streamer)
    finally:
        ensure_gone(streamer)

    assert noticed_in <= 2 * INTERVAL, f"/readyz answered 503 {noticed_in:.3f}s after the broker stopped"
    assert value(back, "rxstreamer_queue_up") == 1
    retried = by_label(back, "rxstreamer_publish_attempts_total", "outcome")
    assert retried.get("UNAVAILABLE", 0) >= 1, retried  # the attempts made while the broker was away
    assert {status for _, status in statuses} == {200}, statuses
    assert len([at for at, _ in statuses if stopped <= at <= came_back]) >= 3  # /healthz was asked during the outage
    assert returncode == 0


def test_a_frozen_queue_is_a_stall_before_any_publish_times_out() -> None:
    """A broker stopped with SIGSTOP keeps its connection and answers nothing: /readyz says stalled after ~1s."""
    with broker_process() as broker:
        streamer = start_watched_streamer(
            "--mq-address", broker.address, "--topic", "metrics-stall", "--loop", "--interval", "100ms",
            "--metrics-listen", "127.0.0.1:0",
        )  # fmt: skip
        try:
            streamer.wait_for_event("streamer.started")
            base = f"http://127.0.0.1:{metrics_port(streamer.lines)}"
            wait_until(lambda: http_get(base + "/readyz") == (200, "ready\n"), 20, "/readyz to answer 200")
            freeze(broker.process)
            frozen = time.monotonic()
            try:
                wait_until(lambda: http_get(base + "/readyz")[0] == 503, 4, "/readyz to answer 503")
                stalled_after = time.monotonic() - frozen
                reason = http_get(base + "/readyz")[1]
                in_flight = value(metrics(base), "rxstreamer_batches_in_flight")
            finally:
                thaw(broker.process)
            wait_until(lambda: http_get(base + "/readyz") == (200, "ready\n"), 20, "/readyz to answer 200 again")
            returncode = stop_gracefully(streamer)
        finally:
            ensure_gone(streamer)

    # The batch that found the broker frozen may have been sent just before it froze (at most about an interval);
    # message_queue.publish_timeout is 5s, so no publish has timed out yet: the queue is not "unreachable".
    assert 1.0 - 2 * INTERVAL <= stalled_after < 4.0
    assert reason.startswith("stalled: a batch has waited 1."), reason
    assert reason.endswith("s for the queue's acknowledgement (more than 1s)\n"), reason
    assert in_flight == 1
    assert returncode == 0


def payload_bytes(address: str, topic: str, count: int) -> int:
    """The payload bytes of the first ``count`` messages of the topic, read with a raw Subscribe."""
    total = 0
    with grpc.insecure_channel(address) as channel:
        request = mq_pb2.SubscribeRequest(topic=topic, start=mq_pb2.START_POSITION_EARLIEST)
        call = mq_pb2_grpc.MessageQueueStub(channel).Subscribe(request, timeout=20)
        for number, message in enumerate(call, start=1):
            total += len(message.payload)
            if number == count:
                break
        call.cancel()
    return total


def test_the_broker_counts_messages_bytes_and_duplicates_per_topic(promtool: str) -> None:
    """A file streamed twice under the same producer id: 96 messages stored, then 96 duplicates."""
    with broker_process("--metrics-listen", "127.0.0.1:0") as broker:
        base = f"http://127.0.0.1:{metrics_port(json_lines(''.join(broker.lines)))}"
        assert http_get(base + "/healthz") == (200, "serving\n")
        assert http_get(base + "/readyz") == (200, "serving\n")
        streamed = [
            run_streamer("--mq-address", broker.address, "--topic", "broker-metrics", "--interval", "0s")
            for _ in range(2)
        ]
        assert [finished.summary["duplicates"] for finished in streamed] == [0, 96]
        status, text = http_get(base + "/metrics")
        samples = parsed(text)
        stored = payload_bytes(broker.address, "broker-metrics", 96)
        wait_until(lambda: value(metrics(base), "rxstreamer_broker_subscribers") == 0, 10, "the subscriber to go")

    assert status == 200
    assert by_label(samples, "rxstreamer_broker_messages_total", "topic") == {"broker-metrics": 96}
    assert by_label(samples, "rxstreamer_broker_duplicates_total", "topic") == {"broker-metrics": 96}
    assert by_label(samples, "rxstreamer_broker_bytes_total", "topic") == {"broker-metrics": stored}
    assert by_label(samples, "rxstreamer_broker_retained_messages", "topic") == {"broker-metrics": 96}
    assert by_label(samples, "rxstreamer_broker_retained_bytes", "topic") == {"broker-metrics": stored}
    assert set(by_label(samples, "rxstreamer_broker_rejections_total", "reason").values()) == {0}
    assert promtool_check(promtool, text) == (0, [])


@pytest.mark.parametrize("command", ["run", "mq"])
def test_an_address_in_use_is_a_bad_setting_named_in_one_line(command: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        where = ["--mq-address", "127.0.0.1:1"] if command == "run" else ["--listen", "127.0.0.1:0"]
        finished = run_command(command, *where, "--metrics-listen", listen)
    assert finished.returncode == 2
    assert finished.stderr == (
        f"rxstreamer: invalid setting observability.listen = '{listen}': cannot listen there: Address already in use\n"
    )


def test_prometheus_client_is_imported_only_when_the_endpoint_is_on() -> None:
    probe = (
        "import sys\n"
        "from rxstreamer.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('prometheus_client' in sys.modules, code, file=sys.stderr)\n"
    )
    with broker_process() as broker:
        answers = []
        for extra in ([], ["--metrics-listen", "127.0.0.1:0"]):
            finished = subprocess.run(
                [sys.executable, "-c", probe, "run", "--mq-address", broker.address, "--interval", "0s",
                 "--topic", "lazy", "--log-format", "json", *extra],
                capture_output=True, text=True, env=child_env(), cwd=REPO_ROOT, timeout=60, check=False,
            )  # fmt: skip
            answers.append(finished.stderr.splitlines()[-1])
    assert answers == ["False 0", "True 0"]
