"""The command line: ``python -m rxstreamer [run|mq|tail|generate] ...``.

Every failure a user can cause (a bad setting, a missing file, a broker that cannot bind) ends here as
one line on stderr and exit status 2 (usage) or 1 (runtime), never a traceback. With JSON logs
(``--log-format json``, ``logging.format = "json"``, ``RXSTREAMER_LOGGING__FORMAT=json``) that line is a JSON
object too (``cli.invalid_setting``, ``cli.invalid_input``, ``cli.failed``), so a log shipper parses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rxstreamer.config import DECLARATIONS, ENV_NESTING, ENV_PREFIX, ConfigError, Settings, load_settings
from rxstreamer.durations import parse_duration
from rxstreamer.signals import install_process_watch

EXIT_USAGE = 2
EXIT_FAILURE = 1
COMMANDS = ("run", "mq", "tail", "generate", "validate")
# The commands that stop gracefully on SIGINT/SIGTERM and ignore SIGHUP (and `generate --serve`).
LONG_RUNNING = ("run", "mq")
_LOG_FORMAT = "logging.format"
_LOG_FORMAT_VARIABLE = ENV_PREFIX + _LOG_FORMAT.replace(".", ENV_NESTING).upper()  # RXSTREAMER_LOGGING__FORMAT


class _ErrorFormat:
    """How _fail writes: ``logging.format`` once the settings loaded; before that (or when they cannot load)
    the --log-format flag, else RXSTREAMER_LOGGING__FORMAT, so that a bad setting is reported as JSON too."""

    format: str | None = None

    @classmethod
    def guess(cls, args: argparse.Namespace) -> None:
        flag = getattr(args, _LOG_FORMAT, None)
        cls.format = flag if flag is not None else os.environ.get(_LOG_FORMAT_VARIABLE)

    @classmethod
    def guess_from_argv(cls, argv: Sequence[str]) -> None:
        """Before the arguments parse, for argparse's own errors: the flag's last value as given, if any."""
        flag = None
        for index, argument in enumerate(argv):
            if argument == "--log-format" and index + 1 < len(argv):
                flag = argv[index + 1]
            elif argument.startswith("--log-format="):
                flag = argument.partition("=")[2]
        cls.format = flag if flag is not None else os.environ.get(_LOG_FORMAT_VARIABLE)

    @classmethod
    def is_json(cls) -> bool:
        return cls.format is not None and str(cls.format).strip().lower() == "json"


class _Parser(argparse.ArgumentParser):
    """argparse, whose own usage errors (an unknown flag, a flag without its value) come as one JSON line when
    the logs are JSON, like every other error before start-up; else as argparse writes them."""

    command = "run"  # the command being parsed, for where to look: `rxstreamer <command> --help`

    def error(self, message: str) -> NoReturn:
        if _ErrorFormat.is_json():
            sys.exit(_fail(message, EXIT_USAGE, "cli.usage_error", help=f"rxstreamer {_Parser.command} --help"))
        super().error(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rxstreamer`` script and of ``python -m rxstreamer``."""
    watch = install_process_watch()  # already done by ``python -m rxstreamer``; the script gets it here
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_list.insert(0, "run")  # `rxstreamer --batch-size 5` means `rxstreamer run --batch-size 5`
    _ErrorFormat.guess_from_argv(args_list)
    _Parser.command = args_list[0] if args_list[0] in COMMANDS else "run"
    args = _parser().parse_args(args_list)
    args.argv = args_list[1:]  # the command's own arguments, as given: what `run --workers N` gives each worker
    _ErrorFormat.guess(args)
    if args.command not in LONG_RUNNING and getattr(args, "serve", None) is None:
        stopped = watch.release()  # short commands keep Python's own handling of Ctrl-C and SIGTERM
        if stopped is not None:
            return stopped
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except ConfigError as error:
        return _fail(f"invalid setting {error}", EXIT_USAGE, "cli.invalid_setting", setting=error.setting)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, status: int, event: str = "cli.failed", **fields: object) -> int:
    """Report an error that ends the command: ``rxstreamer: message`` on stderr, or with JSON logs one JSON
    line there (``event``, ``error``: the message, ``exit_code`` and ``fields``). Returns ``status``."""
    if _ErrorFormat.is_json():
        _json_error_logger().error(event, error=message, exit_code=status, **fields)
    else:
        print(f"rxstreamer: {message}", file=sys.stderr)
    return status


def _json_error_logger() -> Any:
    """A logger writing JSON lines to stderr, shaped like rxstreamer.logs' (timestamp, level, event first),
    that does not depend on, or change, the process's logging configuration (it may not be made yet)."""
    import structlog

    def leading_keys_first(_logger: Any, _method: str, event_dict: Any) -> Any:
        first = ("timestamp", "level", "event")
        return {**{key: event_dict[key] for key in first if key in event_dict}, **event_dict}

    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            leading_keys_first,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(0),
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Settings with every setting flag given on the command line (each flag's dest is its setting's name)."""
    settings = load_settings(args.config, overrides={name: getattr(args, name, None) for name in DECLARATIONS})
    _ErrorFormat.format = settings.logging.format
    return settings


def _configure_logging(settings: Settings, stream: Any = None) -> None:
    from rxstreamer.logs import configure_logging

    configure_logging(settings.logging.format, settings.logging.level, stream=stream)


# --- run ----------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from rxstreamer.checkpoint import CheckpointError
    from rxstreamer.pipeline import TransformError
    from rxstreamer.service import run_streamer
    from rxstreamer.sources import SourceError

    settings = _settings(args)
    _configure_logging(settings)
    watch = install_process_watch()
    watch.event_prefix = "streamer"
    if settings.telemetry.workers > 1:  # N shard processes under this one (rxstreamer/supervisor.py)
        from rxstreamer.supervisor import run_workers

        return run_workers(settings, getattr(args, "argv", []), stop=watch.stop, stop_signal=lambda: watch.stop_signal)
    try:
        summary = run_streamer(settings, stop=watch.stop, stop_signal=lambda: watch.stop_signal)
    except (SourceError, TransformError, CheckpointError) as error:
        return _fail(str(error), EXIT_USAGE, "cli.invalid_input")
    return summary.exit_code


# --- mq -----------------------------------------------------------------------------------------------


def _mq(args: argparse.Namespace) -> int:
    # Signals first, before settings and recovery: the process watch (already there when main installed it)
    # turns SIGINT/SIGTERM into a stop the broker honours once it runs, and logs SIGHUP instead of dying.
    watch = install_process_watch()
    watch.event_prefix = "broker"
    try:
        from rxstreamer.broker import BrokerOptions, serve
    except ImportError as error:  # the broker extra is not installed: say what to install, not a traceback
        return _fail(f"the broker needs: pip install 'rxstreamer[broker]' ({error})", EXIT_FAILURE)

    settings = _settings(args)
    _configure_logging(settings)
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
        metrics_listen=settings.observability.listen,
        tls_cert=broker.tls.cert,
        tls_key=broker.tls.key,
        tls_client_ca=broker.tls.client_ca,
        tokens_file=broker.auth.tokens_file,
        allow_plaintext=broker.allow_plaintext,
    )
    return serve(options, stop_signals=False, stop_event=watch.stop, stop_signal=lambda: watch.stop_signal)


# --- tail ---------------------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    from rxstreamer.tail import TailError, TailOptions, tail

    settings = _settings(args)
    _configure_logging(settings, stream=sys.stderr)  # stdout carries the data
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
        settings=settings.message_queue,
    )
    try:
        if options.address.startswith("nats://"):
            try:
                from rxstreamer.tail_nats import tail_nats
            except ImportError as error:
                return _fail(f"nats:// needs: pip install 'rxstreamer[nats]' ({error})", EXIT_FAILURE)

            tail_nats(options, sys.stdout, settings.message_queue.nats.stream)
        else:
            tail(options, sys.stdout, notify=lambda text: print(f"rxstreamer: {text}", file=sys.stderr, flush=True))
    except TailError as error:
        return _fail(str(error), EXIT_FAILURE)
    except BrokenPipeError:
        sys.stderr.close()  # `tail | head`: the reader left; nothing to report
    return 0


# --- generate -----------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from rxstreamer.generate import generate_file

    prometheus = args.format == "prometheus" or (args.format is None and args.serve is not None)
    if args.hosts is None:
        args.hosts = 1 if prometheus else 4  # one dcgm-exporter serves one node
    for name in ("hosts", "gpus"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", getattr(args, name), "must be an integer >= 1")
    if prometheus:
        return _generate_prometheus(args)
    if args.serve is not None:
        raise ConfigError("--serve", args.serve, "serves Prometheus text: drop --format csv")
    if args.exporters is not None:
        raise ConfigError("--exporters", args.exporters, "applies to --serve only")
    if args.scrapes is not None and args.scrapes < 1:
        raise ConfigError("--scrapes", args.scrapes, "must be an integer >= 1")
    if args.rows is not None and args.rows < 1:
        raise ConfigError("--rows", args.rows, "must be an integer >= 1")
    try:
        scrape_interval = parse_duration(args.scrape_interval)
    except ValueError as error:
        raise ConfigError("--scrape-interval", args.scrape_interval, str(error)) from error
    scrapes = 3 if args.scrapes is None and args.rows is None else args.scrapes
    to_stdout = args.output == "-"  # `generate -o - | head`: straight into another tool, no temporary file
    try:
        written = generate_file(
            sys.stdout if to_stdout else Path(args.output),
            hosts=args.hosts,
            gpus=args.gpus,
            scrapes=scrapes,
            seed=args.seed,
            scrape_interval=scrape_interval,
            rows=args.rows,
        )
    except BrokenPipeError:
        sys.stderr.close()  # `generate -o - | head`: the reader left; nothing to report
        return 0
    except OSError as error:
        return _fail(f"cannot write {args.output}: {error.strerror}", EXIT_FAILURE)
    where = "standard output" if to_stdout else args.output
    print(f"rxstreamer: wrote {written} rows to {where}", file=sys.stderr)
    return 0


def _generate_prometheus(args: argparse.Namespace) -> int:
    """``generate --format prometheus``: one scrape to --output, or a live synthetic exporter on --serve."""
    for name in ("scrapes", "rows"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name}", getattr(args, name), "applies to CSV: a Prometheus file is one scrape")
    try:
        scrape_interval = parse_duration(args.scrape_interval)
    except ValueError as error:
        raise ConfigError("--scrape-interval", args.scrape_interval, str(error)) from error
    if args.serve is not None:
        return _serve_exporters(args, scrape_interval)
    if args.exporters is not None:
        raise ConfigError("--exporters", args.exporters, "applies to --serve only: a file is one exporter's scrape")
    from rxstreamer.exposition import write_scrape

    to_stdout = args.output == "-"
    try:
        written = write_scrape(
            sys.stdout if to_stdout else Path(args.output),
            hosts=args.hosts,
            gpus=args.gpus,
            seed=args.seed,
            scrape_interval=scrape_interval,
        )
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except OSError as error:
        return _fail(f"cannot write {args.output}: {error.strerror}", EXIT_FAILURE)
    where = "standard output" if to_stdout else args.output
    print(f"rxstreamer: wrote one scrape of {written} samples to {where}", file=sys.stderr)
    return 0


def _serve_exporters(args: argparse.Namespace, scrape_interval: float) -> int:
    from rxstreamer.exporter_server import ExporterOptions, parse_listen, serve
    from rxstreamer.logs import configure_logging

    exporters = 1 if args.exporters is None else args.exporters
    if exporters < 1:
        raise ConfigError("--exporters", exporters, "must be an integer >= 1")
    try:
        parse_listen(args.serve)
    except ValueError as error:
        raise ConfigError("--serve", args.serve, str(error)) from error
    watch = install_process_watch()  # main kept the signals for `--serve`, as for the long-running commands
    if not watch.installed:
        watch.install()
    watch.event_prefix = "exporter"
    try:
        configure_logging(_ErrorFormat.format or "auto")
    except ValueError as error:
        raise ConfigError(_LOG_FORMAT, _ErrorFormat.format, str(error)) from error
    options = ExporterOptions(
        listen=args.serve,
        exporters=exporters,
        hosts=args.hosts,
        gpus=args.gpus,
        seed=args.seed,
        scrape_interval=scrape_interval,
    )
    return serve(
        options,
        stop_event=watch.stop,
        stop_signal=lambda: watch.stop_signal,
        report=lambda message: print(f"rxstreamer generate: {message}", file=sys.stderr),
    )


# --- validate -----------------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from rxstreamer.sources import SourceError
    from rxstreamer.validate import render_error_json, render_json, render_text, validate_file

    try:
        settings = _settings(args)
    except ConfigError as error:
        if not args.json:
            raise  # main reports it, as for every command
        print(render_error_json(args.file, f"invalid setting {error}", EXIT_USAGE), end="")
        return EXIT_USAGE
    try:
        report = validate_file(
            args.file,
            max_field_size=settings.telemetry.max_field_size,
            sentinels=settings.telemetry.dcgm_sentinels,
            format=settings.telemetry.format,
        )
    except SourceError as error:
        if args.json:  # --json always answers with JSON, on stdout where the report goes
            print(render_error_json(args.file, str(error), EXIT_USAGE), end="")
            return EXIT_USAGE
        return _fail(str(error), EXIT_USAGE, "cli.invalid_input")
    print(render_json(report) if args.json else render_text(report))
    return report.exit_code


# --- the parser ---------------------------------------------------------------------------------------


def version() -> str:
    """The installed distribution's version; from a source checkout that is not installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("rxstreamer")
    except metadata.PackageNotFoundError:
        return _declared_version()


def _declared_version() -> str:
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return "unknown"
    return str(declared)


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for, not on every start."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"rxstreamer {version()}")
        parser.exit(0)


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction, help="print rxstreamer's version and exit")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="a TOML, YAML or JSON file overriding settings.toml (default: $RXSTREAMER_CONFIG)"
    )
    _add_version(common)

    parser = _Parser(
        prog="rxstreamer",
        description="Stream DCGM GPU telemetry from a CSV file into a message queue over gRPC.",
        epilog="Without a command, `run` is assumed.",
    )
    _add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="stream a metrics file to the queue (default)")
    _add_setting_flags(run, "run")
    run.set_defaults(handler=_run)

    mq = commands.add_parser("mq", parents=[common], help="run the reference message-queue broker")
    _add_setting_flags(mq, "mq")
    mq.set_defaults(handler=_mq)

    tail = commands.add_parser("tail", parents=[common], help="print the metrics a topic holds, as JSON lines")
    _add_setting_flags(tail, "tail")
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
    _add_setting_flags(validate, "validate")
    validate.set_defaults(handler=_validate)

    generate = commands.add_parser(
        "generate",
        help="write a realistic synthetic DCGM CSV, or dcgm-exporter text (a file, or served over HTTP)",
        description="Write a realistic synthetic DCGM CSV (the default), or, with --format prometheus, what "
        "dcgm-exporter serves: ONE scrape to --output, or a live exporter on --serve whose every GET /metrics "
        "is the next scrape of a drifting simulation. The same seed gives the same values in both formats.",
    )
    _add_version(generate)
    target = generate.add_mutually_exclusive_group(required=True)
    # Text, not a Path: Path("./-") is Path("-"), and `-o ./-` must still mean a file named "-".
    target.add_argument(
        "--output", "-o", metavar="FILE", help="the file to write; - for stdout (a prometheus file is one scrape)"
    )
    target.add_argument(
        "--serve",
        metavar="HOST:PORT",
        help="serve Prometheus text over HTTP (implies --format prometheus): /metrics, /health; port 0 picks a "
        "free port, logged as exporter.started; SIGINT/SIGTERM stop it",
    )
    generate.add_argument(
        "--format",
        choices=("csv", "prometheus"),
        help="csv (default): the DCGM CSV export; prometheus: dcgm-exporter's text format, one scrape",
    )
    generate.add_argument(
        "--hosts", type=int, help="number of hosts (default 4 for CSV; 1 for prometheus, one exporter per node)"
    )
    generate.add_argument("--gpus", type=int, default=8, help="GPUs per host (default 8)")
    generate.add_argument(
        "--scrapes", type=int, help="CSV only: number of scrapes (default 3, or as many as --rows needs)"
    )
    generate.add_argument("--rows", type=int, help="CSV only: stop after this many data rows")
    generate.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same file")
    generate.add_argument(
        "--scrape-interval",
        default="30s",
        help="simulated time between scrapes (default 30s); with --serve, each scrape moves on by this much",
    )
    generate.add_argument(
        "--exporters",
        type=int,
        metavar="K",
        help="with --serve: answer as K exporters, each with its own hosts and GPUs, on /exporter/<i>/metrics "
        "(i = 0..K-1; /metrics is exporter 0) (default 1)",
    )
    generate.add_argument(
        "--log-format",
        dest=_LOG_FORMAT,
        choices=("json", "console", "auto"),
        help="with --serve: log lines as JSON or for people (default: $RXSTREAMER_LOGGING__FORMAT, else auto)",
    )
    generate.set_defaults(handler=_generate)
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the settings declared for ``command`` (rxstreamer/config/declared.py): each stores its value under
    the setting's dotted name, for _settings to pass on as an override; booleans get a --no- form."""
    for name, declaration in DECLARATIONS.items():
        if command not in declaration.commands:
            continue
        meaning = f"{name}: {declaration.help}".replace("`", "").replace("%", "%%")
        if isinstance(declaration.default, bool):
            parser.add_argument(declaration.flag, dest=name, action=argparse.BooleanOptionalAction, help=meaning)
        else:
            metavar = declaration.flag.removeprefix("--").replace("-", "_").upper()
            action = "append" if declaration.kind.repeatable else "store"
            parser.add_argument(declaration.flag, dest=name, metavar=metavar, help=meaning, action=action)
