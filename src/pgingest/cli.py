"""pgingest's command line: install, migrate, worker, status, search, maintenance, serve-model,
model, source, adopt, demo.

Dead letters are requeued from SQL with pgingest.requeue_dead_letters(), not by a command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pgingest import __version__, cli_support
from pgingest.settings import WorkerSettings


def cmd_install(args: argparse.Namespace) -> int:
    from pgingest import install

    return install.command(args)


def cmd_worker(args: argparse.Namespace) -> int:
    from pgingest import worker

    settings = WorkerSettings(
        conninfo=args.database_url,
        models=args.model or None,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        visibility_timeout=args.visibility_timeout,
        max_attempts=args.max_attempts,
        in_flight=args.in_flight,
        request_max_inputs=args.request_max_inputs,
        request_max_tokens=args.request_max_tokens,
        drain=args.drain,
        poll_interval=args.poll_interval,
        probe_interval=args.probe_interval,
        http_timeout=args.http_timeout,
        http_timeout_max=args.http_timeout_max,
        max_resends=args.max_resends,
        quota_pacing=not args.no_quota_pacing,
        quota_max_wait=args.quota_max_wait,
        batch_api=not args.no_batch_api,
        batch_api_documents=args.batch_api_documents,
        batch_api_poll_interval=args.batch_api_poll_interval,
        metrics_port=args.metrics_port,
        max_chunks_per_document=args.max_chunks_per_document,
        parse_processes=args.parse_processes,
        write_max_chunks=args.write_max_chunks,
        write_max_bytes=args.write_max_bytes,
        connect_timeout=args.connect_timeout,
        statement_timeout=args.statement_timeout,
        lock_timeout=args.lock_timeout,
    )
    if args.processes > 1:
        return worker.run_processes(settings, args.processes)
    return worker.run(settings)


def cmd_search(args: argparse.Namespace) -> int:
    import json

    import psycopg

    from pgingest import db, providers, search

    with db.connect(args.database_url) as conn:
        name = args.model
        model = db.get_model(conn, name) if name else db.active_model(conn)
        if model is None:
            print("pgingest search: no such model (or no active model)", file=sys.stderr)
            return 2
        if not args.query.strip():
            print("pgingest search: the query text is empty", file=sys.stderr)
            return 2
        # --embedding-url gets no API key: the model's key goes to its own endpoint only; a URL
        # with credentials or a key in its query string is refused (providers.InvalidURL).
        try:
            provider = providers.for_model(
                model, base_url=args.embedding_url, timeout=args.timeout, max_retries=1
            )
        except ValueError as exc:
            print(f"pgingest search: {exc}", file=sys.stderr)
            return 2
        try:
            qvec = search.embed_query(model, provider, args.query)
        except providers.ProviderError as exc:
            print(f"pgingest search: embedding the query failed: {exc}", file=sys.stderr)
            return 1
        finally:
            provider.close()
        try:
            if args.hybrid:
                rows = db.hybrid_search(
                    conn,
                    args.query,
                    qvec,
                    args.k,
                    json.loads(args.filter),
                    args.source,
                    args.per_document,
                    model.name,
                )
                for r in rows:
                    r["distance"] = 1 - r["score"]
            else:
                rows = db.search(
                    conn,
                    qvec,
                    args.k,
                    json.loads(args.filter),
                    args.per_document,
                    model.name,
                    args.source,
                )
        except psycopg.errors.UndefinedObject as exc:  # an unknown --source
            return cli_support.report_db_error("pgingest search", exc)
    if args.json:
        print(json.dumps([dict(r, score=1 - r["distance"]) for r in rows], default=str, indent=2))
        return 0
    print(f"model {model.name}: top {len(rows)} for {args.query!r}")
    print(f"{'#':>2}  {'score':>6}  {'source':<12}  {'document':<40}  chunk")
    for i, r in enumerate(rows, 1):
        title = (r["title"] or r["doc_key"])[:40]
        snippet = " ".join(r["content"].split())[:70]
        print(f"{i:>2}  {1 - r['distance']:>6.3f}  {r['source']:<12}  {title:<40}  {snippet}")
        print(f"{'':>2}  {'':>6}  {'key':<12}  {_search_key(r)}")
    return 0


def _search_key(row: dict[str, Any]) -> str:
    """The key of a hit's row as an application joins back on it: documents.key for the built-in
    source, the primary key columns of an attached table (compact JSON)."""
    import json

    if row["source"] == "documents":
        return str(row["doc_key"])
    return json.dumps(row["source_key"], separators=(", ", ": "), ensure_ascii=False)


def cmd_maintenance(args: argparse.Namespace) -> int:
    from pgingest import db

    with db.connect(args.database_url) as conn:
        result = db.run_maintenance(conn)
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in result.items()))
    return 0


def cmd_serve_model(args: argparse.Namespace) -> int:
    from pgingest import local_model

    return local_model.main(args.rest)


def cmd_demo(args: argparse.Namespace) -> int:
    from pgingest.demo import run as demo

    return demo.main(args.rest)


# The commands defined in this file: a process that runs one of them builds only these (the
# modules of the others, status, model, source and adopt, are not imported: 0.1-0.4 s of CPU at
# every start of a worker, issue 19).
_OWN_COMMANDS = frozenset(
    {"install", "migrate", "worker", "search", "maintenance", "serve-model", "demo"}
)


def command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first positional argument, past the global options),
    or None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--log-level", "--log-format"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``command`` one of this file's own commands, only those (the
    other commands' modules are not imported), else every command."""
    from pgingest import install  # cheap: psycopg is imported when a database is used

    parser = argparse.ArgumentParser(prog="pgingest", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"pgingest {__version__} (schema {install.schema_version()})",
        help="print the package version and the schema version it installs, then exit",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    for name in ("install", "migrate"):
        p = sub.add_parser(
            name, help="apply migrations/ (tracked, checksummed, locked) then sql/ and plpython/"
        )
        cli_support.add_database_url(p)
        install.add_arguments(p)
        p.set_defaults(func=cmd_install)

    p = sub.add_parser("worker", help="drain the queues: chunk, embed, validate, write back")
    cli_support.add_database_url(p)
    p.add_argument("--model", action="append", help="only these models (repeatable; default all)")
    d = WorkerSettings()  # the defaults live there
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="initial documents per batch (adapts; default %(default)s)",
    )
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument(
        "--connect-timeout",
        type=int,
        default=d.connect_timeout,
        help="seconds to wait for a connection (default %(default)s; the DSN's own wins)",
    )
    p.add_argument(
        "--statement-timeout",
        type=float,
        default=d.statement_timeout,
        help="statement_timeout of every worker connection, seconds, 0: none (default"
        " %(default)s; options='-c statement_timeout=...' in the DSN or PGOPTIONS wins)",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=d.lock_timeout,
        help="lock_timeout of every worker connection, seconds, 0: none (default %(default)s)",
    )
    p.add_argument(
        "--visibility-timeout",
        type=int,
        default=d.visibility_timeout,
        help="seconds a claim lasts (default %(default)s)",
    )
    p.add_argument(
        "--max-attempts", type=int, default=None, help="default: pgingest.config max_attempts"
    )
    p.add_argument(
        "--in-flight",
        type=int,
        default=d.in_flight,
        help="the most embedding requests in flight per model (default %(default)s); fewer while"
        " the provider's latency shows they would only queue there",
    )
    p.add_argument(
        "--request-max-inputs",
        type=int,
        default=d.request_max_inputs,
        help="inputs per embedding request (default %(default)s; OpenAI accepts up to 2,048)",
    )
    p.add_argument(
        "--request-max-tokens",
        type=int,
        default=d.request_max_tokens,
        help="estimated tokens per embedding request (default %(default)s; OpenAI: 300,000)",
    )
    p.add_argument(
        "--drain",
        action="store_true",
        help="exit once the queues are empty (0; 3: paused models still hold work; 4: write-backs"
        " kept failing, their messages still queued)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=d.poll_interval,
        help="idle wait between polls (s)",
    )
    p.add_argument(
        "--probe-interval",
        type=float,
        default=d.probe_interval,
        help="seconds between probes of paused models",
    )
    p.add_argument(
        "--http-timeout",
        type=float,
        default=d.http_timeout,
        help="seconds a request may take before any latency was observed, and the least ever"
        " (default %(default)s); then it follows the observed latency",
    )
    p.add_argument(
        "--http-timeout-max",
        type=float,
        default=d.http_timeout_max,
        help="the longest timeout the observed latency may give a request (default %(default)s)",
    )
    p.add_argument(
        "--no-quota-pacing",
        action="store_true",
        help="send without taking from the model's quota (pgingest.provider_quota): 429s only",
    )
    p.add_argument(
        "--quota-max-wait",
        type=float,
        default=d.quota_max_wait,
        help="seconds a request may wait for the model's quota (default %(default)s); a longer"
        " wait defers its batch and the worker serves its other models meanwhile",
    )
    p.add_argument(
        "--max-resends",
        type=int,
        default=d.max_resends,
        help="times a request that timed out is sent again (default %(default)s)",
    )
    p.add_argument(
        "--no-batch-api",
        action="store_true",
        help="leave the backfills of models with batch_api on to other workers (this one embeds"
        " online only)",
    )
    p.add_argument(
        "--batch-api-documents",
        type=int,
        default=d.batch_api_documents,
        help="documents per provider batch of a backfill through the Batch API (default %(default)s)",
    )
    p.add_argument(
        "--batch-api-poll-interval",
        type=float,
        default=d.batch_api_poll_interval,
        help="seconds between two polls of a provider batch in flight (default %(default)s)",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics on this port")
    p.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    p.add_argument(
        "--max-chunks-per-document",
        type=int,
        default=d.max_chunks_per_document,
        help="a document cut into more chunks is dead-lettered (too_many_chunks)",
    )
    p.add_argument(
        "--parse-processes",
        type=int,
        default=d.parse_processes,
        help="child processes parsing raw documents (PDF, DOCX, HTML), apart from the embedding"
        " concurrency (default %(default)s; started at the first raw document)",
    )
    p.add_argument(
        "--write-max-chunks",
        type=int,
        default=d.write_max_chunks,
        help="chunks per write-back transaction; a batch over it is written in several, a"
        " document over it alone (default %(default)s)",
    )
    p.add_argument(
        "--write-max-bytes",
        type=int,
        default=d.write_max_bytes,
        help="bytes (chunk text + vectors) per write-back transaction; a batch over it is"
        " written in several, a document over it alone (default %(default)s)",
    )
    p.set_defaults(func=cmd_worker)

    everything = command not in _OWN_COMMANDS
    if everything:
        from pgingest.status import add_status_command

        add_status_command(sub)

    p = sub.add_parser("search", help="natural-language search over the active model")
    cli_support.add_database_url(p)
    p.add_argument("query")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--filter", default="{}", help='metadata containment filter, e.g. \'{"lang": "en"}\''
    )
    p.add_argument("--per-document", action="store_true", help="one row per document")
    p.add_argument("--model", default=None, help="default: the active model")
    p.add_argument("--embedding-url", default=None, help="override the model's endpoint")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--hybrid", action="store_true", help="full-text + vector, reciprocal rank fusion"
    )
    p.add_argument(
        "--source",
        action="append",
        metavar="NAME",
        help="only this source (repeatable; default every source: pgingest source list)",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "maintenance", help="dead-letter retention and embedding-cache bounds (cron-friendly)"
    )
    cli_support.add_database_url(p)
    p.set_defaults(func=cmd_maintenance)

    p = sub.add_parser(
        "serve-model",
        help="serve the bundled all-MiniLM-L6-v2 as /v1/embeddings (needs pgingest[local])",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve_model)

    if everything:
        from pgingest import adopt_pgai, models_cli, sources_cli

        models_cli.add_model_commands(sub)
        sources_cli.add_source_commands(sub)
        adopt_pgai.add_adopt_commands(sub)

    p = sub.add_parser(
        "demo", help="the demo: a real corpus through the pipeline, then searches", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
    return parser


def configure_logging(level: str, fmt: str) -> None:
    from pgingest import logs

    logs.configure(level=level, fmt=fmt)


_PASSTHROUGH = {"serve-model": "pgingest.local_model", "demo": "pgingest.demo.run"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:  # these parse their own options
        import importlib

        configure_logging("INFO", "text")
        module = importlib.import_module(_PASSTHROUGH[argv[0]])
        return int(module.main(argv[1:]))
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    # Whatever is printed of an error leaves out the password of this connection string.
    cli_support.use_conninfo(getattr(args, "database_url", None))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a last resort: one readable line, the traceback at debug level
        prog = f"pgingest {args.command}"
        invalid = cli_support.conninfo_error(exc)
        if invalid is not None:  # libpq quotes the token it cannot read: the password, maybe
            print(f"{prog}: {invalid}", file=sys.stderr)
            return 2
        text = cli_support.redact_conninfo(str(exc))
        log = logging.getLogger("pgingest")
        if text == str(exc):
            log.debug("fatal", exc_info=True)
        else:  # the traceback would show the password
            log.debug("fatal: %s: %s", type(exc).__name__, text)
        print(f"{prog}: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    finally:
        cli_support.use_conninfo(None)


if __name__ == "__main__":
    raise SystemExit(main())
