"""Read replicas by logical replication (sql/095_replication.sql, docs/deployment.md).

A second PostgreSQL cluster on this machine (scripts/pgcluster.sh start-second, on a free port and
in its own folder, stopped and removed at the end) installs pgingest, mirrors the primary's model
registry (pgingest.replica_setup_sql()), subscribes to the primary's publication, builds its own
ANN index and serves pgingest.search(). The capture triggers do not fire for replicated rows:
nothing is queued on the replica.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import index, install, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.conftest import ROOT
from tests.helpers import insert_docs, queue_count, register, wait_for

pytestmark = pytest.mark.slow

PGCLUSTER = str(ROOT / "scripts" / "pgcluster.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def second_cluster() -> Iterator[Callable[[str], str]]:
    yield from start_second_cluster()


def start_second_cluster() -> Iterator[Callable[[str], str]]:
    """A second cluster of its own (folder, port); yields make(dbname) -> conninfo, then stops
    and removes it."""
    home = Path(tempfile.mkdtemp(prefix="pgingest-replica-"))
    home.chmod(0o755)  # the postgres system user runs the server when we are root
    env = {
        **os.environ,
        "PGINGEST_PGDATA2": str(home / "cluster"),
        "PGINGEST_PGPORT2": str(free_port()),
        "PGINGEST_PGDATABASE": "postgres",
    }
    started = subprocess.run(
        [PGCLUSTER, "start-second"], env=env, capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"the second cluster did not start:\n{started.stderr[-3000:]}")
    url = subprocess.run(
        [PGCLUSTER, "url-second"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    admin = psycopg.connect(url, autocommit=True)

    def make(dbname: str) -> str:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return psycopg.conninfo.make_conninfo(url, dbname=dbname)

    try:
        yield make
    finally:
        admin.close()
        subprocess.run([PGCLUSTER, "destroy-second"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def drain(dsn: str) -> None:
    worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn, drain=True, install_signal_handlers=False, poll_interval=0.1
        )
    ).run()


def chunk_rows(conn: psycopg.Connection[Any], model: str) -> list[tuple[Any, ...]]:
    """The chunks of ``model``'s profile with the model's vector (NULL where its store has none
    for that exact text)."""
    return conn.execute(
        sql.SQL(
            "SELECT c.doc_id, c.ordinal, c.content, s.embedding::text FROM pgingest.chunks AS c"
            " JOIN pgingest.models AS m ON m.name = {model} AND m.profile_id = c.profile_id"
            " LEFT JOIN pgingest.{store} AS s ON s.doc_id = c.doc_id AND s.ordinal = c.ordinal"
            " AND s.chunk_hash = c.chunk_hash ORDER BY c.doc_id, c.ordinal"
        ).format(model=sql.Literal(model), store=sql.Identifier(f"store_{model}"))
    ).fetchall()


def missing_vectors(conn: psycopg.Connection[Any], model: str) -> int:
    return sum(1 for r in chunk_rows(conn, model) if r[3] is None)


def documents(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, key, title, body, content_hash, updated_at FROM pgingest.documents ORDER BY id"
    ).fetchall()


def states(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT doc_id, model, content_hash, chunk_count FROM pgingest.embedding_state ORDER BY 1, 2"
    ).fetchall()


def apply_setup(primary: psycopg.Connection[Any], replica: psycopg.Connection[Any]) -> None:
    replica.execute(one(primary, "SELECT pgingest.replica_setup_sql()").encode())


def test_replica_subscribes_and_serves_searches_with_its_own_index(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    second_cluster: Callable[[str], str],
) -> None:
    if one(conn, "SHOW wal_level") != "logical":
        pytest.skip("the primary's wal_level is not logical (scripts/pgcluster.sh sets it)")
    tag = uuid.uuid4().hex[:10]
    replica_dsn = second_cluster(f"replica_{tag}")
    subscription = f"pgingest_sub_{tag}"

    # The primary: a model, documents, a publication.
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"doc-{i}", f"Title {i}", f"Body of document {i}.") for i in range(20)])
    # An attached table: its registry rows replicate, the table itself does not.
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute(
        "SELECT pgingest.add_source('notes', 'public.notes', body => 'body', backfill => false)"
    )
    conn.execute(
        "INSERT INTO public.notes SELECT i, 'Note number ' || i FROM generate_series(1, 3) AS i"
    )
    assert one(conn, "SELECT pgingest.create_publication()") == "pgingest"
    assert one(conn, "SELECT pgingest.create_publication()") == "pgingest"  # re-runnable
    assert sorted(
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'pgingest'"
        )
    ) == ["chunks", "documents", "embedding_state", "source_rows", "store_v1"]

    # The replica: pgingest installed, the same model registered (same store), then subscribed.
    install.install(replica_dsn)
    r = psycopg.connect(replica_dsn, autocommit=True)
    try:
        apply_setup(conn, r)
        apply_setup(conn, r)  # idempotent
        assert r.execute("SELECT name, state, store_name FROM pgingest.models").fetchall() == [
            ("v1", "active", "store_v1")
        ]
        r.execute("ALTER SYSTEM SET wal_retrieve_retry_interval = '500ms'")
        r.execute("SELECT pg_reload_conf()")
        primary_conninfo = psycopg.conninfo.make_conninfo(dsn, application_name=subscription)
        r.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION pgingest").format(
                sql.Identifier(subscription), sql.Literal(primary_conninfo)
            )
        )
        try:
            _replicate_and_search(conn, dsn, r, replica_dsn, fake, subscription)
        finally:
            r.execute(
                sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(subscription))
            )
        assert (
            one(
                conn,
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                (subscription,),
            )
            == 0
        )
    finally:
        r.close()


def _replicate_and_search(
    p: psycopg.Connection[Any],
    dsn: str,
    r: psycopg.Connection[Any],
    replica_dsn: str,
    fake: FakeEmbeddingServer,
    subscription: str,
) -> None:
    # Embedded on the primary, then changed: updates and deletes replicate too.
    drain(dsn)
    insert_docs(p, [(f"late-{i}", None, f"Added after the subscription, {i}.") for i in range(5)])
    p.execute(
        "UPDATE pgingest.documents SET body = 'Body of document 3, edited.' WHERE key = 'doc-3'"
    )
    p.execute("DELETE FROM pgingest.documents WHERE key = 'doc-4'")
    drain(dsn)
    assert missing_vectors(p, "v1") == 0

    # Every table's initial copy done (each table has its own sync worker), then caught up.
    wait_for(
        lambda: (
            one(r, "SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel") == 0
        ),
        timeout=60,
        interval=0.2,
    )
    wait_for(
        lambda: (
            (chunk_rows(r, "v1"), documents(r), states(r))
            == (chunk_rows(p, "v1"), documents(p), states(p))
        ),
        timeout=60,
        interval=0.2,
    )
    assert len(states(r)) == 27  # 24 documents and 3 notes

    # The attached table's rows: searchable on the replica by source, with their keys.
    assert r.execute(
        "SELECT source, doc_key FROM pgingest.source_documents WHERE source = 'notes' ORDER BY doc_id"
    ).fetchall() == [("notes", "1"), ("notes", "2"), ("notes", "3")]

    # Nothing is queued on the replica: the capture triggers are ordinary ENABLE triggers, which the
    # apply worker (session_replication_role = replica) does not fire.
    assert queue_count(r, "v1") == 0
    assert r.execute(
        "SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgrelid = 'pgingest.documents'::regclass"
        " AND NOT tgisinternal"
    ).fetchall() == [("O",)]

    # The replica's own ANN index, and searches on it.
    built = index.build_index(replica_dsn, "v1", progress=False)
    assert built.valid
    assert not one(p, "SELECT count(*) FROM pg_indexes WHERE indexname = 'store_v1_idx'")
    q = one(
        r,
        "SELECT c.embedding::text FROM pgingest.store_v1 AS c JOIN pgingest.documents AS d"
        " ON d.id = c.doc_id WHERE d.key = 'late-2'",
    )
    hits = r.execute(
        "SELECT doc_key, distance FROM pgingest.search(%s::vector, 5)", (q,)
    ).fetchall()
    assert len(hits) == 5
    assert hits[0][0] == "late-2" and hits[0][1] < 1e-6
    assert "doc-4" not in {
        h[0] for h in r.execute("SELECT doc_key FROM pgingest.search(%s::vector, 25)", (q,))
    }
    with r.transaction():
        r.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in r.execute(
                "EXPLAIN SELECT doc_id FROM pgingest.search_chunks ORDER BY embedding <=> %s::vector"
                " LIMIT 5",
                (q,),
            )
        )
    assert "store_v1_idx" in plan

    # A new model, the documented way: registered on the replica first, then on the primary
    # (which adds its store to the publication), then the subscription refreshed.
    refresh = sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION").format(
        sql.Identifier(subscription)
    )
    register(r, "v2", fake.url, model_id="fake-768", dimensions=768)
    register(p, "v2", fake.url, model_id="fake-768", dimensions=768)
    assert "store_v2" in {
        row[0]
        for row in p.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = 'pgingest'"
        )
    }
    drain(dsn)
    r.execute(refresh)
    wait_for(lambda: chunk_rows(r, "v2") == chunk_rows(p, "v2"), timeout=60, interval=0.2)
    assert missing_vectors(r, "v2") == 0

    # The other way round: the primary first. Nothing stops (the chunks are shared, the new
    # store is not subscribed yet); once the replica applied pgingest.replica_setup_sql() and
    # refreshed the subscription, it has the store's rows (nothing lost).
    register(p, "v3", fake.url)
    drain(dsn)
    assert missing_vectors(p, "v3") == 0
    apply_setup(p, r)
    r.execute(refresh)
    wait_for(lambda: chunk_rows(r, "v3") == chunk_rows(p, "v3"), timeout=90, interval=0.3)
    assert [row[0] for row in r.execute("SELECT name FROM pgingest.models ORDER BY 1")] == [
        "v1",
        "v2",
        "v3",
    ]
    for model in ("v1", "v2", "v3"):
        assert queue_count(r, model) == 0

    # Even ENABLE ALWAYS would not queue streamed changes: the apply worker fires row-level
    # triggers only, and the capture triggers are statement-level (with transition tables). Only
    # a new subscription's initial copy (run like COPY) would fire them: keep them ENABLE.
    r.execute("ALTER TABLE pgingest.documents ENABLE ALWAYS TRIGGER documents_capture_insert")
    try:
        insert_docs(p, [("always", None, "Replicated while the trigger is ENABLE ALWAYS.")])
        wait_for(
            lambda: one(r, "SELECT count(*) FROM pgingest.documents WHERE key = 'always'") == 1,
            timeout=60,
            interval=0.2,
        )
        assert queue_count(r, "v1") == 0
    finally:
        r.execute("ALTER TABLE pgingest.documents ENABLE TRIGGER documents_capture_insert")
