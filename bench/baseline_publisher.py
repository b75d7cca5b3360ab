"""The plain-Python baseline for bench/throughput.py: the streamer's work done the obvious way, no RxPY.

It reads a DCGM CSV with ``csv.reader``, builds the same protobuf messages as the streamer (``GpuMetric`` with
the timestamp parsed from RFC 3339 into a Timestamp and ``labels_raw`` parsed into the labels map, grouped
into ``MetricBatch`` messages with a producer id and a sequence), and publishes each batch with the same
blocking ``Publish`` RPC and ``content-type`` header, one batch at a time, as fast as the broker answers.

It is what a competent Python developer would write in an afternoon: no caches, no pre-built templates,
no pipelining. It times itself from just before connecting and opening the file to the last
acknowledgement, and prints one JSON line: ``{"rows": ..., "batches": ..., "seconds": ...}``.

    .venv/bin/python bench/baseline_publisher.py --metrics-path F --mq-address 127.0.0.1:PORT \\
        --topic T [--batch-size 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from rxstreamer.proto import mq_pb2, mq_pb2_grpc
from rxstreamer.proto.telemetry_pb2 import GpuMetric, MetricBatch

CONTENT_TYPE = "application/x-protobuf; messageType=rxstreamer.v1.MetricBatch"
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_timestamp(text: str) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(datetime.fromisoformat(text))
    return timestamp


def parse_labels(raw: str) -> dict[str, str]:
    return dict(LABEL.findall(raw))


def publish_file(path: str, address: str, topic: str, batch_size: int) -> dict[str, float]:
    producer_id = f"baseline-{os.getpid()}"
    started = time.perf_counter()
    rows = sequence = 0
    with grpc.insecure_channel(address) as channel, open(path, newline="", encoding="utf-8") as file:
        stub = mq_pb2_grpc.MessageQueueStub(channel)

        def publish(metrics: list[GpuMetric]) -> None:
            nonlocal sequence
            sequence += 1
            created_at = Timestamp()
            created_at.FromDatetime(datetime.now(UTC))
            batch = MetricBatch(metrics=metrics, producer_id=producer_id, sequence=sequence, created_at=created_at)
            request = mq_pb2.PublishRequest(
                topic=topic,
                payload=batch.SerializeToString(),
                headers={"content-type": CONTENT_TYPE},
                producer_id=producer_id,
                sequence=sequence,
            )
            stub.Publish(request, timeout=5)

        reader = csv.reader(file)
        column = {name.lower(): index for index, name in enumerate(next(reader))}
        metrics: list[GpuMetric] = []
        for record in reader:
            metrics.append(
                GpuMetric(
                    timestamp=parse_timestamp(record[column["timestamp"]]),
                    metric_name=record[column["metric_name"]],
                    gpu_id=record[column["gpu_id"]],
                    device=record[column["device"]],
                    uuid=record[column["uuid"]],
                    model_name=record[column["modelname"]],
                    hostname=record[column["hostname"]],
                    container=record[column["container"]],
                    pod=record[column["pod"]],
                    namespace=record[column["namespace"]],
                    value=float(record[column["value"]]),
                    labels=parse_labels(record[column["labels_raw"]]),
                )
            )
            rows += 1
            if len(metrics) == batch_size:
                publish(metrics)
                metrics = []
        if metrics:
            publish(metrics)
        seconds = time.perf_counter() - started  # the last publish has been acknowledged
    return {"rows": rows, "batches": sequence, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-path", required=True)
    parser.add_argument("--mq-address", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(publish_file(args.metrics_path, args.mq_address, args.topic, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
