#!/usr/bin/env python3
"""Backfill with the ANN index built after the load vs loading into a table that already has it.

Loads N random unit vectors (binary COPY, in batches) into two tables of a scratch database:

  live : the HNSW (or IVFFlat) index exists before the load: every row is inserted into the graph;
  after: no index during the load, then CREATE INDEX once (what `pgingest model index` does after
         a backfill).

and prints rows/s for each and the speedup of "after" over "live" (total time, load + build).
IVFFlat built on an empty table has no useful centroids, so the "live" case is meaningful for
HNSW; use --method ivfflat only to time the build itself.

    .venv/bin/python scripts/bench_index.py --rows 20000 --dims 384
    .venv/bin/python scripts/bench_index.py --rows 5000 --storage halfvec --json

The database server is the one of --database-url / $DATABASE_URL (default: the private cluster);
the scratch database pgingest_bench_index is created and dropped (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = "pgingest_bench_index"


def server_url(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    out = subprocess.run(
        [str(ROOT / "scripts" / "pgcluster.sh"), "url"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def with_dbname(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def index_sql(table: str, args: argparse.Namespace) -> sql.Composed:
    opclass = f"{args.storage}_cosine_ops"
    if args.method == "hnsw":
        with_ = sql.SQL("m = {}, ef_construction = {}").format(
            sql.Literal(args.m), sql.Literal(args.ef_construction)
        )
    else:
        with_ = sql.SQL("lists = {}").format(sql.Literal(max(1, args.rows // 1000)))
    return sql.SQL("CREATE INDEX ON {} USING {} (emb {}) WITH ({})").format(
        sql.Identifier(table), sql.SQL(args.method), sql.SQL(opclass), with_
    )


def load(
    conn: psycopg.Connection[Any], table: str, storage: str, vecs: np.ndarray, batch: int
) -> float:
    """Binary COPY in batches of ``batch`` rows, one transaction each; returns seconds."""
    t0 = time.perf_counter()
    for start in range(0, len(vecs), batch):
        with conn.transaction(), conn.cursor() as cur:
            copy_sql = sql.SQL("COPY {} (id, emb) FROM STDIN WITH (FORMAT BINARY)").format(
                sql.Identifier(table)
            )
            with cur.copy(copy_sql) as cp:
                cp.set_types(["int8", storage])
                for i, v in enumerate(vecs[start : start + batch], start):
                    cp.write_row((i, v))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database-url")
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--storage", choices=("vector", "halfvec"), default="vector")
    p.add_argument("--method", choices=("hnsw", "ivfflat"), default="hnsw")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--batch", type=int, default=1000, help="rows per COPY transaction")
    p.add_argument("--maintenance-work-mem", default="256MB")
    p.add_argument("--parallel-workers", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    url = server_url(args.database_url)
    with psycopg.connect(with_dbname(url, "postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
    vecs = vectors(args.rows, args.dims)
    result: dict[str, Any] = {
        "rows": args.rows,
        "dims": args.dims,
        "storage": args.storage,
        "method": args.method,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "maintenance_work_mem": args.maintenance_work_mem,
    }
    try:
        with psycopg.connect(with_dbname(url, SCRATCH), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)", (args.maintenance_work_mem,)
            )
            if args.parallel_workers is not None:
                conn.execute(
                    "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                    (str(args.parallel_workers),),
                )
            result["max_parallel_maintenance_workers"] = conn.execute(
                "SHOW max_parallel_maintenance_workers"
            ).fetchone()[0]  # type: ignore[index]
            for table in ("live", "after"):
                conn.execute(
                    sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, emb {}({}))").format(
                        sql.Identifier(table), sql.SQL(args.storage), sql.Literal(args.dims)
                    )
                )

            # 1. index first, then the load: every row goes into the live graph
            conn.execute(index_sql("live", args))
            live_s = load(conn, "live", args.storage, vecs, args.batch)
            # 2. load, then build once
            load_s = load(conn, "after", args.storage, vecs, args.batch)
            t0 = time.perf_counter()
            conn.execute(index_sql("after", args))
            build_s = time.perf_counter() - t0

            sizes = conn.execute(
                "SELECT pg_relation_size('live_emb_idx'), pg_relation_size('after_emb_idx')"
            ).fetchone()
    finally:
        if not args.keep:
            with psycopg.connect(with_dbname(url, "postgres"), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(SCRATCH)
                    )
                )
    after_s = load_s + build_s
    result.update(
        live_index_load_s=round(live_s, 2),
        live_index_rows_per_s=round(args.rows / live_s, 1),
        load_s=round(load_s, 2),
        build_s=round(build_s, 2),
        build_after_total_s=round(after_s, 2),
        build_after_rows_per_s=round(args.rows / after_s, 1),
        speedup=round(live_s / after_s, 2),
        index_bytes_live=sizes[0] if sizes else None,
        index_bytes_after=sizes[1] if sizes else None,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.rows} x {args.storage}({args.dims}), {args.method}"
            f"{f' m={args.m} ef_construction={args.ef_construction}' if args.method == 'hnsw' else ''}"
            f", maintenance_work_mem {args.maintenance_work_mem}, parallel workers "
            f"{result['max_parallel_maintenance_workers']}"
        )
        print(
            f"  load into a table with the index : {live_s:8.1f} s  "
            f"{result['live_index_rows_per_s']:>9} rows/s"
        )
        print(
            f"  load, then build the index       : {after_s:8.1f} s  "
            f"{result['build_after_rows_per_s']:>9} rows/s  (load {load_s:.1f} s + build {build_s:.1f} s)"
        )
        print(f"  speedup of building after the load: {result['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
