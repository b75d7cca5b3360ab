"""The command line: ``python -m rxstreamer [run|mq|tail|generate] ...``.

Every failure a user can cause (a bad setting, a missing file, a broker that cannot bind) ends here as
one line on stderr and exit status 2 (usage) or 1 (runtime), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rxstreamer.config import ConfigError, Settings, load_settings
from rxstreamer.durations import parse_duration
from rxstreamer.signals import install_process_watch

EXIT_USAGE = 2
EXIT_FAILURE = 1
COMMANDS = ("run", "mq", "tail", "generate", "validate")
LONG_RUNNING = ("run", "mq")  # the commands that stop gracefully on SIGINT/SIGTERM and ignore SIGHUP


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rxstreamer`` script and of ``python -m rxstreamer``."""
    watch = install_process_watch()  # already done by ``python -m rxstreamer``; the script gets it here
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list.insert(0, "run")  # `rxstreamer --batch-size 5` means `rxstreamer run --batch-size 5`
    args = _parser().parse_args(args_list)
    if args.command not in LONG_RUNNING:
        stopped = watch.release()  # short commands keep Python's own handling of Ctrl-C and SIGTERM
        if stopped is not None:
            return stopped
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except ConfigError as error:
        return _fail(f"invalid setting {error}", EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int) -> int:
    print(f"rxstreamer: {message}", file=sys.stderr)
    return status


def _settings(args: argparse.Namespace, overrides: dict[str, object]) -> Settings:
    given = {key: value for key, value in overrides.items() if value is not None}
    return load_settings(args.config, overrides=given)


def _configure_logging(settings: Settings, args: argparse.Namespace, stream: Any = None) -> None:
    from rxstreamer.logs import configure_logging

    configure_logging(args.log_format or settings.logging.format, settings.logging.level, stream=stream)


# --- run ----------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from rxstreamer.checkpoint import CheckpointError
    from rxstreamer.pipeline import TransformError
    from rxstreamer.service import run_streamer
    from rxstreamer.source import SourceError

    settings = _settings(
        args,
        {
            "telemetry.metrics_path": args.metrics_path,
            "telemetry.batch_size": args.batch_size,
            "telemetry.stream_interval": args.interval,
            "telemetry.loop": args.loop,
            "telemetry.timestamps": args.timestamps,
            "message_queue.address": args.mq_address,
            "message_queue.topic": args.topic,
            "message_queue.producer_id": args.producer_id,
            "telemetry.checkpoint_path": args.checkpoint_path,
            "telemetry.start_over": args.start_over,
            "telemetry.rejected_path": args.rejected_path,
        },
    )
    _configure_logging(settings, args)
    watch = install_process_watch()
    watch.event_prefix = "streamer"
    try:
        summary = run_streamer(settings, stop=watch.stop, stop_signal=lambda: watch.stop_signal)
    except (SourceError, TransformError, CheckpointError) as error:
        return _fail(str(error), EXIT_USAGE)
    return summary.exit_code


# --- mq -----------------------------------------------------------------------------------------------


def _mq(args: argparse.Namespace) -> int:
    # Signals first, before settings and recovery: the process watch (already there when main installed it)
    # turns SIGINT/SIGTERM into a stop the broker honours once it runs, and logs SIGHUP instead of dying.
    watch = install_process_watch()
    watch.event_prefix = "broker"
    from rxstreamer.broker import BrokerOptions, serve

    settings = _settings(
        args,
        {
            "broker.listen": args.listen,
            "broker.max_messages": args.max_messages,
            "broker.max_bytes": args.max_bytes,
            "broker.retention": args.retention,
            "broker.max_subscribers": args.max_subscribers,
            "broker.max_topics": args.max_topics,
            "broker.max_total_bytes": args.max_total_bytes,
            "broker.data_dir": args.data_dir,
            "broker.fsync": args.fsync,
        },
    )
    _configure_logging(settings, args)
    broker = settings.broker
    options = BrokerOptions(
        listen=broker.listen,
        max_messages=broker.max_messages,
        max_bytes=broker.max_bytes,
        retention=broker.retention,
        max_subscribers=broker.max_subscribers,
        max_topics=broker.max_topics,
        max_total_bytes=broker.max_total_bytes,
        data_dir=broker.data_dir,
        fsync=broker.fsync,
        fsync_interval=broker.fsync_interval,
    )
    return serve(options, stop_signals=False, stop_event=watch.stop, stop_signal=lambda: watch.stop_signal)


# --- tail ---------------------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    from rxstreamer.tail import TailError, TailOptions, tail

    settings = _settings(args, {"message_queue.address": args.mq_address, "message_queue.topic": args.topic})
    _configure_logging(settings, args, stream=sys.stderr)  # stdout carries the data
    try:
        idle = None if args.idle_timeout is None else parse_duration(args.idle_timeout)
    except ValueError as error:
        raise ConfigError("--idle-timeout", args.idle_timeout, str(error)) from error
    if args.count is not None and args.count < 1:
        raise ConfigError("--count", args.count, "must be an integer >= 1")
    options = TailOptions(
        address=settings.message_queue.address,
        topic=settings.message_queue.topic,
        from_beginning=args.from_beginning,
        from_offset=args.from_offset,
        count=args.count,
        idle_timeout=idle,
        with_batch=args.with_batch,
    )
    try:
        tail(options, sys.stdout)
    except TailError as error:
        return _fail(str(error), EXIT_FAILURE)
    except BrokenPipeError:
        sys.stderr.close()  # `tail | head`: the reader left; nothing to report
    return 0


# --- generate -----------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from rxstreamer.generate import generate_file

    for name in ("hosts", "gpus"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", getattr(args, name), "must be an integer >= 1")
    if args.scrapes is not None and args.scrapes < 1:
        raise ConfigError("--scrapes", args.scrapes, "must be an integer >= 1")
    if args.rows is not None and args.rows < 1:
        raise ConfigError("--rows", args.rows, "must be an integer >= 1")
    try:
        scrape_interval = parse_duration(args.scrape_interval)
    except ValueError as error:
        raise ConfigError("--scrape-interval", args.scrape_interval, str(error)) from error
    scrapes = 3 if args.scrapes is None and args.rows is None else args.scrapes
    try:
        written = generate_file(
            args.output,
            hosts=args.hosts,
            gpus=args.gpus,
            scrapes=scrapes,
            seed=args.seed,
            scrape_interval=scrape_interval,
            rows=args.rows,
        )
    except OSError as error:
        return _fail(f"cannot write {args.output}: {error.strerror}", EXIT_FAILURE)
    print(f"rxstreamer: wrote {written} rows to {args.output}", file=sys.stderr)
    return 0


# --- validate -----------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from rxstreamer.source import SourceError
    from rxstreamer.validate import render_json, render_text, validate_file

    settings = _settings(args, {})
    try:
        report = validate_file(
            args.file,
            max_field_size=settings.telemetry.max_field_size,
            sentinels=settings.telemetry.dcgm_sentinels,
        )
    except SourceError as error:
        return _fail(str(error), EXIT_USAGE)
    print(render_json(report) if args.json else render_text(report))
    return report.exit_code


# --- the parser ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="a TOML, YAML or JSON file overriding settings.toml")
    common.add_argument("--log-format", choices=("json", "console", "auto"), help="overrides logging.format")

    parser = argparse.ArgumentParser(
        prog="rxstreamer",
        description="Stream DCGM GPU telemetry from a CSV file into a message queue over gRPC.",
        epilog="Without a command, `run` is assumed.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="stream a metrics file to the queue (default)")
    run.add_argument("--metrics-path", help="telemetry.metrics_path: the DCGM CSV to stream")
    run.add_argument("--batch-size", help="telemetry.batch_size: rows per published batch")
    run.add_argument("--interval", help="telemetry.stream_interval: time between batches, e.g. 250ms; 0 = no pause")
    run.add_argument("--loop", action=argparse.BooleanOptionalAction, help="telemetry.loop: replay the file endlessly")
    run.add_argument("--timestamps", help="telemetry.timestamps: original | processing")
    run.add_argument("--mq-address", help="message_queue.address: host:port of the queue")
    run.add_argument("--topic", help="message_queue.topic")
    run.add_argument("--producer-id", help="message_queue.producer_id: identity used for deduplication")
    run.add_argument("--checkpoint-path", help="telemetry.checkpoint_path: record progress here and resume from it")
    run.add_argument(
        "--start-over",
        action=argparse.BooleanOptionalAction,
        help="telemetry.start_over: replace a checkpoint that does not fit this stream instead of refusing",
    )
    run.add_argument("--rejected-path", help="telemetry.rejected_path: append rejected rows to this CSV")
    run.set_defaults(handler=_run)

    mq = commands.add_parser("mq", parents=[common], help="run the reference message-queue broker")
    for flag, meaning in (
        ("--listen", "broker.listen: host:port to bind (port 0 picks a free one)"),
        ("--max-messages", "broker.max_messages: retained messages per topic"),
        ("--max-bytes", "broker.max_bytes: retained payload bytes per topic, e.g. 256MiB"),
        ("--retention", "broker.retention: release messages older than this; 0s keeps them"),
        ("--max-subscribers", "broker.max_subscribers: open Subscribe streams at once"),
        ("--max-topics", "broker.max_topics: topics the broker may hold"),
        ("--max-total-bytes", "broker.max_total_bytes: payload bytes of all topics together, e.g. 1GiB"),
        ("--data-dir", "broker.data_dir: keep topics in a SQLite database here, across restarts"),
        ("--fsync", "broker.fsync: always | interval | never (with --data-dir)"),
    ):
        mq.add_argument(flag, help=meaning)
    mq.set_defaults(handler=_mq)

    tail = commands.add_parser("tail", parents=[common], help="print the metrics a topic holds, as JSON lines")
    tail.add_argument("--mq-address", help="message_queue.address: host:port of the queue")
    tail.add_argument("--topic", help="message_queue.topic")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start with the oldest retained message")
    start.add_argument("--from-offset", type=int, metavar="N", help="start at this offset")
    tail.add_argument("--count", type=int, metavar="N", help="stop after N metrics")
    tail.add_argument("--idle-timeout", metavar="DURATION", help="stop when nothing arrived for this long, e.g. 2s")
    tail.add_argument("--with-batch", action="store_true", help="add producer_id, sequence and offset to each line")
    tail.set_defaults(handler=_tail)

    validate = commands.add_parser(
        "validate", parents=[common], help="check a metrics file with the streamer's parser and summarise it"
    )
    validate.add_argument("file", type=Path, help="the DCGM CSV to check")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.set_defaults(handler=_validate)

    generate = commands.add_parser("generate", help="write a realistic synthetic DCGM CSV (test data, load files)")
    generate.add_argument("--output", "-o", type=Path, required=True, help="the CSV file to write")
    generate.add_argument("--hosts", type=int, default=4, help="number of hosts (default 4)")
    generate.add_argument("--gpus", type=int, default=8, help="GPUs per host (default 8)")
    generate.add_argument("--scrapes", type=int, help="number of scrapes (default 3, or as many as --rows needs)")
    generate.add_argument("--rows", type=int, help="stop after this many data rows")
    generate.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same file")
    generate.add_argument("--scrape-interval", default="30s", help="time between scrapes (default 30s)")
    generate.set_defaults(handler=_generate)
    return parser
