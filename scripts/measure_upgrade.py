"""Measures the upgrade to per-model stores (migration 0006) on a database of the previous layout.

    .venv/bin/python scripts/measure_upgrade.py [--chunks 30000] [--dims 384] [--base HEAD]

Installs the schema of ``--base`` (a commit before migration 0006: ``git archive``, its own
installer in a child process) into a new database on $DATABASE_URL's server, registers model v1,
writes ``--chunks`` chunk rows with vectors straight into pgingest.chunks (3 per document) and
builds v1's HNSW index there, then runs this checkout's ``pgingest install`` (one transaction:
the migrations and sql/), timing it, and the concurrent index rebuild that follows it. While the
install runs, a second session measures how long a plain read of the chunks and an INSERT into
pgingest.documents wait (the install holds ACCESS EXCLUSIVE locks on the chunks and the models).
Prints the figures; docs/model-lifecycle.md ("Upgrading to per-model stores") quotes them.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.common import dsn_for, server_url  # noqa: E402

from pgingest import index, install  # noqa: E402


def old_install(commit: str, dsn: str, workdir: Path) -> None:
    data = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "archive",
            "--format=tar",
            commit,
            "migrations",
            "sql",
            "plpython",
            "src",
        ],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(workdir, filter="data")
    code = f"from pgingest import install\ninstall.install({dsn!r})\n"
    env = {**os.environ, "PYTHONPATH": str(workdir / "src")}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=workdir, check=True, timeout=600)


def fill(dsn: str, chunks: int, dims: int) -> None:
    rng = np.random.default_rng(1)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "SELECT pgingest.register_model('v1', 'fake', %s, 'http://127.0.0.1:9/v1')", (dims,)
        )
        docs = chunks // 3
        c.execute(
            "INSERT INTO pgingest.documents (key, title, body)"
            " SELECT 'doc-' || g, 'Title ' || g, repeat('Body of document ' || g || '. ', 40)"
            " FROM generate_series(1, %s) AS g",
            (docs,),
        )
        c.execute("SELECT pgmq.purge_queue('pgingest_v1')")
        ids = [r[0] for r in c.execute("SELECT id FROM pgingest.documents ORDER BY id")]
        with (
            c.cursor() as cur,
            cur.copy(
                "COPY pgingest.chunks (doc_id, ordinal, content, chunk_hash, token_count, char_start,"
                " char_end, chunker, emb_v1) FROM STDIN"
            ) as cp,
        ):
            for doc_id in ids:
                for o in range(3):
                    v = rng.standard_normal(dims).astype(np.float32)
                    v /= np.linalg.norm(v)
                    text = f"Chunk {o} of document {doc_id}. " * 20
                    cp.write_row(
                        (
                            doc_id,
                            o,
                            text,
                            os.urandom(32),
                            120,
                            o * 600,
                            o * 600 + 600,
                            "measure",
                            "[" + ",".join(f"{x:.6f}" for x in v) + "]",
                        )
                    )
        c.execute(
            "INSERT INTO pgingest.embedding_state (doc_id, model, content_hash, chunk_count)"
            " SELECT id, 'v1', content_hash, 3 FROM pgingest.documents"
        )
        t0 = time.perf_counter()
        c.execute("SET maintenance_work_mem = '512MB'")
        c.execute(
            "CREATE INDEX chunks_emb_v1_idx ON pgingest.chunks USING hnsw (emb_v1 vector_cosine_ops)"
        )
        print(
            f"old layout: {chunks:,} chunks of {dims} dims; its HNSW index built in"
            f" {time.perf_counter() - t0:.1f} s"
        )
        c.execute("VACUUM ANALYZE pgingest.chunks")
        size = c.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('pgingest.chunks'))"
        ).fetchone()
        print(f"pgingest.chunks with its indexes: {size[0] if size else '?'}")


def probe(dsn: str, stop: threading.Event, waits: dict[str, float]) -> None:
    """Times a read of the chunks and an insert of a document, over and over, during the install."""
    with psycopg.connect(dsn, autocommit=True) as c:
        i = 0
        while not stop.is_set():
            for name, query in (
                ("read chunks", "SELECT count(*) FROM pgingest.chunks WHERE doc_id = 1"),
                ("insert document", None),
            ):
                t0 = time.perf_counter()
                if query is None:
                    i += 1
                    c.execute(
                        "INSERT INTO pgingest.documents (key, body) VALUES (%s, 'probe')",
                        (f"probe-{os.getpid()}-{i}",),
                    )
                else:
                    c.execute(query)
                waits[name] = max(waits.get(name, 0.0), time.perf_counter() - t0)
            time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", type=int, default=30_000)
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--base", default="HEAD", help="a commit with the previous layout")
    args = p.parse_args()
    url = server_url()
    name = f"pgingest_measure_upgrade_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = dsn_for(url, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            old_install(args.base, dsn, Path(tmp))
        fill(dsn, args.chunks, args.dims)
        waits: dict[str, float] = {}
        stop = threading.Event()
        t = threading.Thread(target=probe, args=(dsn, stop, waits), daemon=True)
        t.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        install.install(dsn)
        install_s = time.perf_counter() - t0
        time.sleep(0.3)
        during_install = dict(waits)
        waits.clear()
        t0 = time.perf_counter()
        results = index.rebuild_after_upgrade(dsn, progress=False)
        rebuild_s = time.perf_counter() - t0
        time.sleep(0.3)
        stop.set()
        t.join()
        print(f"pgingest install (migrations + sql/, one transaction): {install_s:.2f} s")
        print(
            "  longest wait of a concurrent session during it: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in during_install.items())
        )
        print(
            f"index rebuild (CREATE INDEX CONCURRENTLY): {rebuild_s:.2f} s "
            + ", ".join(f"{r.index_name} {r.action}" for r in results)
        )
        print(
            "  longest wait of a concurrent session during it: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in waits.items())
        )
        with psycopg.connect(dsn) as c:
            n = c.execute("SELECT count(*) FROM pgingest.store_v1").fetchone()
            print(f"store_v1: {n[0] if n else 0:,} vectors")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
