#!/usr/bin/env python3
"""How long `pgingest adopt pgai` takes, and how long it blocks the application's writes.

In a scratch database: pgingest installed, pgai's catalog installed (``pgai.install``), an
application table ``bench.notes`` (composite key (tenant, id), title, body) of --rows rows, a
pgai vectorizer on it with a template, and its store filled as pgai's worker fills it
(--chunks rows per table row: --rows x --chunks store rows, random vectors of --dims
dimensions), pgai's queue emptied, then --pending rows edited (pgai queues them).

Then adoption, timed step by step (plan, model registration, cut-over, ANN index), while:

  writer: one connection updates a random row every 5 ms (autocommit) and records how long
          each UPDATE took: the longest is what an application write waited on the cut-over;
  reader: one connection reads a random row every 5 ms: reads are not blocked (SHARE ROW
          EXCLUSIVE lets them through).

The cut-over reports when it got the table's lock and when it committed (lock held); the
writer's longest UPDATE is the same figure seen from the application. No provider is called
(the vectorizer's base_url points at a closed port).

    .venv/bin/python scripts/adopt_bench.py                      # 50,000 rows x 2 = 100,000
    .venv/bin/python scripts/adopt_bench.py --rows 5000 --dims 1536 --json

The server is --database-url / $DATABASE_URL (default: the private cluster); the scratch
database pgingest_adopt_bench is created and dropped (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pgingest import adopt_pgai, index, install  # noqa: E402

SCRATCH = "pgingest_adopt_bench"


def _server_url(arg: str | None) -> str:
    url = arg or os.environ.get("DATABASE_URL")
    if url:
        return url
    out = subprocess.run(
        [str(ROOT / "scripts" / "pgcluster.sh"), "url"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def _setup(dsn: str, rows: int, chunks: int, dims: int, pending: int) -> dict[str, float]:
    import pgai

    t: dict[str, float] = {}
    t0 = time.monotonic()
    install.install(dsn)
    pgai.install(dsn)
    t["install_s"] = time.monotonic() - t0
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        conn.execute("CREATE SCHEMA bench")
        conn.execute(
            "CREATE TABLE bench.notes (tenant text NOT NULL, id integer NOT NULL, title text NOT"
            " NULL, body text NOT NULL, PRIMARY KEY (tenant, id))"
        )
        conn.execute(
            "INSERT INTO bench.notes SELECT 't' || (i %% 7), i, 'Note ' || i,"
            " (SELECT string_agg(format('Paragraph %%s of note %%s: some words about topic %%s.',"
            "   p, i, (i * 31 + p) %% 97), E'\\n\\n') FROM generate_series(1, %s) AS p)"
            " FROM generate_series(1, %s) AS i",
            (chunks, rows),
        )
        conn.execute(
            "SELECT ai.create_vectorizer('bench.notes'::regclass,"
            " loading => ai.loading_column('body'),"
            " embedding => ai.embedding_openai('text-embedding-3-small', %s,"
            "   base_url => 'http://127.0.0.1:9/v1'),"
            " formatting => ai.formatting_python_template('$title: $chunk'),"
            " chunking => ai.chunking_recursive_character_text_splitter(800, 80))",
            (dims,),
        )
        t["table_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        # What pgai's worker writes: one row per paragraph, chunk = the formatted text.
        conn.execute(
            "INSERT INTO bench.notes_embedding_store (tenant, id, chunk_seq, chunk, embedding)"
            " SELECT n.tenant, n.id, p.n - 1, n.title || ': ' || p.para,"
            "   (SELECT array_agg(random()::real) FROM generate_series(1, %s) AS g"
            "    WHERE n.id IS NOT NULL AND p.n IS NOT NULL)::vector"
            " FROM bench.notes AS n"
            " CROSS JOIN LATERAL regexp_split_to_table(n.body, E'\\n\\n') WITH ORDINALITY AS p (para, n)",
            (dims,),
        )
        conn.execute("DELETE FROM ai._vectorizer_q_1")
        conn.execute("UPDATE bench.notes SET body = body || ' Edited.' WHERE id <= %s", (pending,))
        conn.execute("VACUUM ANALYZE bench.notes, bench.notes_embedding_store")
        t["store_s"] = time.monotonic() - t0
    return t


class _Probe(threading.Thread):
    """Runs ``query`` every 5 ms until stopped; records (start, duration) of each."""

    def __init__(self, dsn: str, query: str, rows: int) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.query = query
        self.rows = rows
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        rnd = random.Random(7)
        while not self.stop.is_set():
            i = rnd.randint(self.rows // 2, self.rows)
            t0 = time.monotonic()
            self.conn.execute(self.query, (f"t{i % 7}", i))
            self.samples.append((t0, time.monotonic() - t0))
            time.sleep(0.005)
        self.conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="table rows (default %(default)s)")
    ap.add_argument("--chunks", type=int, default=2, help="store rows per table row")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--pending", type=int, default=100, help="rows pgai has queued")
    ap.add_argument("--database-url")
    ap.add_argument("--no-index", action="store_true", help="do not time the ANN index build")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    server = _server_url(args.database_url)
    admin = psycopg.connect(server, autocommit=True)
    admin.execute(
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH))
    )
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
    dsn = _with_db(server, SCRATCH)
    try:
        figures: dict[str, Any] = {
            "rows": args.rows,
            "store_rows": args.rows * args.chunks,
            "dims": args.dims,
            "pending": args.pending,
        }
        figures.update(_setup(dsn, args.rows, args.chunks, args.dims, args.pending))
        writer = _Probe(
            dsn, "UPDATE bench.notes SET title = title WHERE tenant = %s AND id = %s", args.rows
        )
        reader = _Probe(
            dsn, "SELECT title FROM bench.notes WHERE tenant = %s AND id = %s", args.rows
        )
        writer.start()
        reader.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            p = adopt_pgai.plan(conn, "bench_notes_embedding_store")
        figures["plan_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        res = adopt_pgai.adopt(dsn, p, build_index=False, lock_timeout="30s")
        t2 = time.monotonic()
        time.sleep(0.5)
        writer.stop.set()
        reader.stop.set()
        writer.join()
        reader.join()
        built = None if args.no_index else index.build_index(dsn, p.model, progress=False)
        t3 = time.monotonic()
        during = [d for s, d in writer.samples if t1 <= s <= t2]
        figures.update(
            {
                "adopt_s": t2 - t1,
                "cutover_s": res.cutover_s,
                "lock_wait_s": res.lock_wait_s,
                "lock_held_s": res.lock_held_s,
                "register_model_s": (t2 - t1) - res.cutover_s,
                "chunks_adopted": res.chunks_adopted,
                "documents_embedded": res.documents_embedded,
                "queued": res.queued,
                "moved_from_pgai": res.moved_from_pgai,
                "writer_max_update_s": max(d for _s, d in writer.samples),
                "writer_updates_during_adopt": len(during),
                "writer_median_update_s": sorted(d for _s, d in writer.samples)[
                    len(writer.samples) // 2
                ],
                "reader_max_select_s": max(d for _s, d in reader.samples),
                "steps": res.steps,
                "index_build_s": None if built is None else t3 - t2,
                "index": None
                if built is None
                else f"{built.index_name} {built.action} valid={built.valid}",
            }
        )
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            for k, v in figures.items():
                print(f"{k:30} {v:.3f}" if isinstance(v, float) else f"{k:30} {v}")
    finally:
        if not args.keep:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH))
            )
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
