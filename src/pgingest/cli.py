"""Command line: ``pgingest install|worker|status|search|serve-model|model|requeue``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pgingest import __version__


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=None,
        help="libpq connection string or URL (default: $DATABASE_URL, else the PG* variables)",
    )


def cmd_install(args: argparse.Namespace) -> int:
    from pgingest import install

    if args.print:
        sys.stdout.write(install.render_script(psql=True))
        return 0
    try:
        applied = install.install(args.database_url)
    except install.InstallError as exc:
        print(f"pgingest install: {exc}", file=sys.stderr)
        return 2
    for line in applied:
        print(line)
    print("pgingest: installed (migrations applied, sql/ and plpython/ re-applied)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from pgingest import worker

    settings = worker.WorkerSettings(
        conninfo=args.database_url,
        models=args.model or None,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        visibility_timeout=args.visibility_timeout,
        max_attempts=args.max_attempts,
        in_flight=args.in_flight,
        drain=args.drain,
        poll_interval=args.poll_interval,
        probe_interval=args.probe_interval,
        http_timeout=args.http_timeout,
        metrics_port=args.metrics_port,
    )
    if args.processes > 1:
        return worker.run_processes(settings, args.processes)
    return worker.run(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgingest", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pgingest {__version__}")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    for name in ("install", "migrate"):
        p = sub.add_parser(
            name, help="apply migrations/ (tracked, checksummed, locked) then sql/ and plpython/"
        )
        _add_db(p)
        p.add_argument(
            "--print",
            action="store_true",
            help="write the installation as one SQL script to stdout",
        )
        p.set_defaults(func=cmd_install)

    p = sub.add_parser("worker", help="drain the queues: chunk, embed, validate, write back")
    _add_db(p)
    p.add_argument("--model", action="append", help="only these models (repeatable; default all)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="initial documents per batch (adapts)"
    )
    p.add_argument("--max-batch-size", type=int, default=512)
    p.add_argument("--visibility-timeout", type=int, default=120, help="seconds a claim lasts")
    p.add_argument(
        "--max-attempts", type=int, default=None, help="default: pgingest.config max_attempts"
    )
    p.add_argument("--in-flight", type=int, default=4, help="embedding requests in flight")
    p.add_argument("--drain", action="store_true", help="exit once the queues are empty")
    p.add_argument("--poll-interval", type=float, default=5.0, help="idle wait between polls (s)")
    p.add_argument(
        "--probe-interval", type=float, default=30.0, help="seconds between probes of paused models"
    )
    p.add_argument("--http-timeout", type=float, default=30.0)
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics on this port")
    p.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    p.set_defaults(func=cmd_worker)
    return parser


def configure_logging(level: str, fmt: str) -> None:
    from pgingest import logs

    logs.configure(level=level, fmt=fmt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a last resort: one readable line, the traceback at debug level
        logging.getLogger("pgingest").debug("fatal", exc_info=True)
        print(f"pgingest {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
