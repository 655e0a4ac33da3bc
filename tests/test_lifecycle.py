"""Model lifecycle against the real database and the fake provider (384 and 768 dimensions):
register a second model while documents arrive, backfill, index, swap, roll back, retire."""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgingest import db, index, models_cli, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import queue_count, register, wait_for

SENTENCES = (
    "Postgres keeps every document in one table.",
    "The worker embeds chunks and writes vectors back.",
    "A model swap re-points the search view in one transaction.",
    "Backfills run in bounded batches while new writes keep coming.",
    "Indexes are built concurrently after the load.",
)


def body(i: int) -> str:
    return f"Document number {i}. " + " ".join(SENTENCES[(i + j) % 5] for j in range(3))


def insert_docs(conn: psycopg.Connection[Any], start: int, n: int, prefix: str = "doc") -> None:
    conn.execute(
        "INSERT INTO pgingest.documents (key, title, body)"
        " SELECT %s || '-' || g, 'Title ' || g, 'Document number ' || g || '. ' || %s"
        " FROM generate_series(%s::integer, %s::integer) AS g",
        (prefix, " ".join(SENTENCES[:3]), start, start + n - 1),
    )


def drain(dsn: str, **kw: Any) -> None:
    settings = worker.WorkerSettings(
        conninfo=dsn, drain=True, install_signal_handlers=False, poll_interval=0.2, **kw
    )
    worker.Worker(settings).run()


@pytest.fixture
def background_worker(dsn: str) -> Iterator[worker.Worker]:
    w = worker.Worker(
        worker.WorkerSettings(
            conninfo=dsn,
            drain=False,
            install_signal_handlers=False,
            poll_interval=0.2,
            backfill_batch=500,
        )
    )
    t = threading.Thread(target=w.run, name="lifecycle-worker", daemon=True)
    t.start()
    yield w
    w.stopping.set()
    t.join(timeout=30)
    assert not t.is_alive()


def settled(conn: psycopg.Connection[Any], w: worker.Worker, models: tuple[str, ...]) -> None:
    """Waits until no document is pending for ``models``; says why not on a timeout."""
    try:
        wait_for(lambda: all(progress(conn, m)["pending"] == 0 for m in models), timeout=60)
    except AssertionError:
        queues = {
            m: conn.execute(
                sql.SQL("SELECT count(*), min(vt), max(read_ct) FROM pgmq.{}").format(
                    sql.Identifier(f"q_pgingest_{m}")
                )
            ).fetchone()
            for m in models
        }
        raise AssertionError(
            f"pending documents remain: {[progress(conn, m) for m in models]}; queues {queues}; "
            f"worker stopping={w.stopping.is_set()}"
        ) from None


def progress(conn: psycopg.Connection[Any], model: str) -> dict[str, Any]:
    rows = db.backfill_progress(conn, model)
    assert len(rows) == 1
    return rows[0]


def refusal(conn: psycopg.Connection[Any], name: str) -> psycopg.errors.Diagnostic:
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        db.swap_model(conn, name)
    return ei.value.diag


def view_dims(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT vector_dims(embedding) FROM pgingest.search_chunks LIMIT 1"
    ).fetchone()
    assert row is not None
    return int(row[0])


def two_models(conn: psycopg.Connection[Any], dsn: str, url: str, n: int = 40, **v2: Any) -> None:
    """v1 (384, active) and v2 (768 unless overridden, shadow), n documents embedded by both."""
    assert register(conn, "v1", url) == "active"
    insert_docs(conn, 1, n)
    args = {"model_id": "fake-768", "dimensions": 768, **v2}
    assert register(conn, "v2", url, **args) == "shadow"
    drain(dsn)


class SearchLoop(threading.Thread):
    """Searches through pgingest.search_chunks in its own connection, as an application would:
    the query vector is read from the view each time (its type changes at a swap)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="search-loop", daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.empty = 0
        self.queries = 0
        self.dims: set[int] = set()

    def run(self) -> None:
        with db.connect(self.dsn) as conn:  # psycopg prepares statements run 5 times or more
            while not self.stop.is_set():
                try:
                    row = conn.execute(
                        "SELECT embedding, model FROM pgingest.search_chunks LIMIT 1"
                    ).fetchone()
                    hits = conn.execute(
                        "SELECT doc_id FROM pgingest.search_chunks ORDER BY embedding <=>"
                        " (SELECT embedding FROM pgingest.search_chunks LIMIT 1) LIMIT 5"
                    ).fetchall()
                except psycopg.Error as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.queries += 1
                if row is None or not hits:
                    self.empty += 1
                else:
                    self.dims.add(len(row[0].to_list()))


class Inserter(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(name="inserter", daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.inserted = 0

    def run(self) -> None:
        with db.connect(self.dsn, register_vector=False) as conn:
            while not self.stop.wait(0.02):
                insert_docs(conn, 100_000 + self.inserted, 5, prefix="live")
                self.inserted += 5


def test_register_backfill_index_swap_rollback_under_load(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, background_worker: Any
) -> None:
    """1,000 documents (two backfill batches of 500), inserts arriving all along the backfill,
    a search loop in another connection through register, backfill, index, swap, rollback and
    swap again."""
    assert register(conn, "v1", fake.url) == "active"
    insert_docs(conn, 1, 1000)
    wait_for(lambda: progress(conn, "v1")["pending"] == 0, timeout=60)
    assert index.build_index(dsn, "v1", progress=False).valid  # built after the initial load

    searches = SearchLoop(dsn)
    searches.start()
    inserter = Inserter(dsn)
    inserter.start()
    wait_for(lambda: inserter.inserted >= 20)

    assert register(conn, "v2", fake.url, model_id="fake-768", dimensions=768) == "shadow"
    upto = conn.execute("SELECT backfill_upto FROM pgingest.models WHERE name = 'v2'").fetchone()
    assert upto is not None and upto[0] >= 1000
    # Refused at once: nothing of the backfill is embedded yet.
    diag = refusal(conn, "v2")
    assert diag.sqlstate == "55000"
    assert "cannot swap to model v2" in (diag.message_primary or "")
    assert "not embedded" in (diag.message_primary or "") or "backfill" in (
        diag.message_primary or ""
    )
    assert "documents embedded" in (diag.message_detail or "") or "queued" in (
        diag.message_detail or ""
    )
    assert "force => true" in (diag.message_hint or "")

    # The backfill completes while documents keep arriving (dual write).
    wait_for(
        lambda: (p := progress(conn, "v2"))["backfill_queued_all"] and p["embedded"] >= 1000,
        timeout=60,
    )
    inserted_during = inserter.inserted
    inserter.stop.set()
    inserter.join()
    assert inserted_during > 20
    settled(conn, background_worker, ("v1", "v2"))
    late = conn.execute(
        "SELECT count(*) FROM pgingest.documents AS d"
        " JOIN pgingest.embedding_state AS s ON s.doc_id = d.id AND s.model = 'v2'"
        "  AND s.content_hash = d.content_hash"
        " WHERE d.id > (SELECT backfill_upto FROM pgingest.models WHERE name = 'v2')"
    ).fetchone()
    assert late is not None and late[0] > 0  # inserted after register_model, embedded by dual write
    p2 = progress(conn, "v2")
    assert p2["documents"] == 1000 + inserter.inserted
    assert p2["embedded"] == p2["documents"] and p2["dead_lettered"] == 0
    assert p2["percent"] == 100

    # Backfill done, no index yet: refused, and the message says it is the index.
    diag = refusal(conn, "v2")
    assert "index store_v2_idx does not exist" in (diag.message_primary or "")
    assert "not embedded" not in (diag.message_primary or "")
    assert "pgingest model index v2" in (diag.message_hint or "")

    res = index.build_index(dsn, "v2", maintenance_work_mem="128MB", progress=False)
    assert res.action == "built" and res.valid

    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert view_dims(conn) == 768
    time.sleep(0.3)
    assert db.swap_model(conn, "v1") == "v1 active, v2 standby"  # rollback
    assert view_dims(conn) == 384
    time.sleep(0.3)
    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    time.sleep(0.3)

    searches.stop.set()
    searches.join()
    assert searches.errors == []
    assert searches.empty == 0
    assert searches.queries > 20
    assert searches.dims == {384, 768}
    states = dict(conn.execute("SELECT name, state FROM pgingest.models").fetchall())
    assert states == {"v1": "standby", "v2": "active"}


def test_swap_refusals_invalid_index_psql_and_force(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    assert register(conn, "v1", fake.url) == "active"
    insert_docs(conn, 1, 30)
    drain(dsn)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)

    diag = refusal(conn, "v2")  # nothing queued yet: no worker ran
    assert "backfill is not fully queued" in (diag.message_primary or "")
    assert "0 documents queued so far" in (diag.message_detail or "")
    assert "run_backfill('v2')" in (diag.message_hint or "")

    db.run_backfill(conn, "v2")
    assert queue_count(conn, "v2") == 30
    diag = refusal(conn, "v2")
    assert "30 documents are not embedded for it yet" in (diag.message_primary or "")
    assert "0 of 30 documents embedded (0.0%), 30 pending, 0 dead-lettered" in (
        diag.message_detail or ""
    )
    assert "backfill is not fully queued" not in (diag.message_primary or "")

    drain(dsn)
    diag = refusal(conn, "v2")
    assert (diag.message_primary or "").endswith("its index store_v2_idx does not exist")

    # A failed CREATE INDEX CONCURRENTLY leaves an invalid index behind.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY store_v2_idx ON pgingest.store_v2 (ordinal)")
    st = db.model_index_status(conn, "v2")[0]
    assert st["present"] and not st["valid"]
    diag = refusal(conn, "v2")
    assert "its index store_v2_idx is invalid" in (diag.message_primary or "")
    assert "indisvalid is false" in (diag.message_detail or "")

    with pytest.raises(psycopg.errors.UniqueViolation):  # as a failed REINDEX CONCURRENTLY leaves
        conn.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY store_v2_idx_ccnew ON pgingest.store_v2 (ordinal)"
        )
    seen: list[index.Progress] = []
    res = index.build_index(dsn, "v2", parallel_workers=0, progress=seen.append, poll_interval=0.01)
    assert res.dropped_invalid and res.action == "rebuilt" and res.valid
    assert res.dropped_leftovers == ["store_v2_idx_ccnew"]
    assert conn.execute("SELECT to_regclass('pgingest.store_v2_idx_ccnew')").fetchone() == (None,)
    assert res.settings == {"max_parallel_maintenance_workers": "0"}
    st = db.model_index_status(conn, "v2")[0]
    assert st["valid"] and st["on_column"]
    assert (
        "USING hnsw (embedding vector_cosine_ops) WITH (m='16', ef_construction='64')"
        in st["definition"]
    )
    assert index.build_index(dsn, "v2", progress=False).action == "exists"

    # Exactly as a DBA types it, with pgingest on the search_path.
    out = subprocess.run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c",
         "SET search_path = pgingest, public", "-c", "SELECT swap_model('v2')"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "v2 active, v1 standby"
    assert "v2 is the active model" in out.stderr
    assert view_dims(conn) == 768

    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    assert db.swap_model(conn, "v2") == "v2 is already active"
    assert any("already the active model" in n for n in notices)

    # force => true swaps to a model with nothing embedded (with a warning).
    register(conn, "v3", fake.url)
    notices.clear()
    assert db.swap_model(conn, "v3", force=True) == "v3 active, v2 standby"
    assert any("although its backfill is not fully queued" in n for n in notices)
    assert db.swap_model(conn, "v2") == "v2 active, v3 standby"
    assert view_dims(conn) == 768

    with pytest.raises(psycopg.errors.UndefinedObject):
        db.swap_model(conn, "nope")


def test_rollback_and_retire(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    two_models(conn, dsn, fake.url)
    index.build_index(dsn, "v1", progress=False)
    index.build_index(dsn, "v2", progress=False)
    # One document dead-lettered for v2: the swap goes through, with a warning.
    conn.execute(
        "DELETE FROM pgingest.embedding_state WHERE model = 'v2'"
        " AND doc_id = (SELECT min(id) FROM pgingest.documents)"
    )
    conn.execute(
        "INSERT INTO pgingest.dead_letters (doc_id, doc_key, model, content_hash, error_class,"
        " error_message) SELECT id, key, 'v2', content_hash, 'planted', 'planted by the test'"
        " FROM pgingest.documents ORDER BY id LIMIT 1"
    )
    p2 = progress(conn, "v2")
    assert (p2["embedded"], p2["dead_lettered"], p2["pending"]) == (39, 1, 0)
    warnings: list[str] = []
    conn.add_notice_handler(lambda d: warnings.append(f"{d.severity}: {d.message_primary}"))
    assert db.swap_model(conn, "v2") == "v2 active, v1 standby"
    assert "WARNING: pgingest: model v2: 1 documents are dead-lettered for it" in warnings[0]
    assert db.swap_model(conn, "v1") == "v1 active, v2 standby"  # rollback
    assert view_dims(conn) == 384

    # The standby model is still written (dual write).
    insert_docs(conn, 1000, 3, prefix="after-rollback")
    drain(dsn)
    assert progress(conn, "v2")["pending"] == 0 and progress(conn, "v2")["documents"] == 43

    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        db.retire_model(conn, "v1")
    assert "it is the active model" in (ei.value.diag.message_primary or "")
    assert "Swap to another model first" in (ei.value.diag.message_hint or "")

    db.swap_model(conn, "v2")
    conn.execute(
        "INSERT INTO pgingest.dead_letters (doc_id, doc_key, model, error_class, error_message)"
        " SELECT id, key, 'v1', 'planted', 'x' FROM pgingest.documents ORDER BY id LIMIT 1"
    )
    v2_rows = conn.execute("SELECT count(*) FROM pgingest.store_v2").fetchone()
    assert v2_rows is not None and v2_rows[0] > 0
    assert db.retire_model(conn, "v1") == "retired"
    # One DROP TABLE: v1's store and its index; v2's store untouched.
    assert conn.execute("SELECT to_regclass('pgingest.store_v1')").fetchone() == (None,)
    assert conn.execute("SELECT to_regclass('pgingest.store_v1_idx')").fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pgingest.store_v2").fetchone() == v2_rows
    assert conn.execute("SELECT to_regclass('pgmq.q_pgingest_v1')").fetchone() == (None,)
    for table in ("embedding_state", "dead_letters"):
        n = conn.execute(
            sql.SQL("SELECT count(*) FROM pgingest.{} WHERE model = 'v1'").format(
                sql.Identifier(table)
            )
        ).fetchone()
        assert n == (0,)
    assert [r["model"] for r in db.backfill_progress(conn)] == ["v2"]
    assert [r["model"] for r in db.model_index_status(conn)] == ["v2"]

    # New documents are no longer queued or embedded for v1; v2 gets them.
    insert_docs(conn, 2000, 5, prefix="after-retire")
    assert conn.execute(
        "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'pgingest_v1'"
    ).fetchone() == (0,)
    assert queue_count(conn, "v2") == 5
    drain(dsn)
    assert progress(conn, "v2")["pending"] == 0
    assert conn.execute(
        "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'"
    ).fetchone() == (0,)

    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    assert db.retire_model(conn, "v1") == "retired"  # idempotent
    assert any("already retired" in n for n in notices)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="retired"):
        db.swap_model(conn, "v1")
    with pytest.raises(psycopg.errors.DuplicateObject):
        register(conn, "v1", fake.url)  # a retired name is not reused
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        db.retire_model(conn, "v2")


def test_retire_while_documents_are_written(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Writers racing a retire never fail (their trigger may have seen the model live) and nothing
    is queued for the model once it is retired."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    errors: list[str] = []
    inserter = Inserter(dsn)

    def run() -> None:
        try:
            inserter.run()
        except psycopg.Error as exc:
            errors.append(str(exc))

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: inserter.inserted >= 50)
    assert db.retire_model(conn, "v2") == "retired"
    retired_at = inserter.inserted
    wait_for(lambda: bool(errors) or inserter.inserted >= retired_at + 50)
    inserter.stop.set()
    t.join()
    assert errors == []
    docs = conn.execute("SELECT count(*) FROM pgingest.documents").fetchone()
    assert docs is not None and docs[0] == inserter.inserted
    assert queue_count(conn, "v1") == inserter.inserted
    assert conn.execute("SELECT to_regclass('pgmq.q_pgingest_v2')").fetchone() == (None,)


def test_halfvec_model_end_to_end(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    two_models(conn, dsn, fake.url, storage="halfvec", metric="l2", index_options='{"m": 8}')
    row = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'pgingest.store_v2'::regclass AND attname = 'embedding'"
    ).fetchone()
    assert row == ("halfvec(768)",)
    assert progress(conn, "v2")["embedded"] == 40

    res = index.build_index(dsn, "v2", progress=False)
    assert res.valid
    st = db.model_index_status(conn, "v2")[0]
    assert (
        "USING hnsw (embedding halfvec_l2_ops) WITH (m='8', ef_construction='64')"
        in st["definition"]
    )

    db.swap_model(conn, "v2")
    assert conn.execute(
        "SELECT pg_typeof(embedding)::text, vector_dims(embedding) FROM pgingest.search_chunks LIMIT 1"
    ).fetchone() == ("halfvec", 768)
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT doc_id FROM pgingest.search_chunks ORDER BY embedding <->"
                " (SELECT embedding FROM pgingest.search_chunks LIMIT 1) LIMIT 5"
            )
        )
    assert "store_v2_idx" in plan, plan
    # Exact search for the data path: 40 random 768-dimension vectors with m = 8 make an HNSW
    # graph whose search reaches only part of the rows (measured: 26 of 40, even with
    # hnsw.ef_search = 200), depending on the order the graph was built in.
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        hits = conn.execute(
            "SELECT doc_id FROM pgingest.search_chunks ORDER BY embedding <->"
            " (SELECT embedding FROM pgingest.search_chunks WHERE doc_id = 7 LIMIT 1) LIMIT 3"
        ).fetchall()
    assert hits[0] == (7,)

    # IVFFlat on halfvec too, with its lists option; rollback from halfvec to vector.
    register(
        conn,
        "v3",
        fake.url,
        storage="halfvec",
        index_method="ivfflat",
        index_options='{"lists": 4}',
    )
    drain(dsn)
    assert db.index_ddl(conn, "v3") == (
        "CREATE INDEX CONCURRENTLY store_v3_idx ON pgingest.store_v3"
        " USING ivfflat (embedding halfvec_cosine_ops) WITH (lists = 4)"
    )
    assert index.build_index(dsn, "v3", progress=False).valid
    index.build_index(dsn, "v1", progress=False)
    db.swap_model(conn, "v1")
    assert view_dims(conn) == 384


BAD_NAMES = ["v2; DROP TABLE x", "V2", "2v", "v" * 40, 'v2"', "", "v-2", "emb v2"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_or_injected_model_names_are_refused(
    conn: psycopg.Connection[Any], dsn: str, name: str
) -> None:
    conn.execute("CREATE TABLE x (i integer)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid model name"):
        register(conn, name, "http://127.0.0.1:9/v1")
    for call in (
        "SELECT pgingest.swap_model(%s)",
        "SELECT pgingest.swap_model(%s, force => true)",
        "SELECT pgingest.retire_model(%s)",
        "SELECT pgingest.index_ddl(%s)",
        "SELECT * FROM pgingest.compare_models(%s, 'v1')",
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid model name"):
            conn.execute(call, (name,))
    with pytest.raises(index.IndexBuildError):
        index.build_index(dsn, name, progress=False)
    assert conn.execute("SELECT count(*) FROM pgingest.models").fetchone() == (0,)
    assert conn.execute("SELECT to_regclass('x')").fetchone() == ("x",)
    cols = conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgingest.chunks'::regclass"
        " AND attname LIKE 'emb%'"
    ).fetchone()
    assert cols == (0,)


def test_every_model_must_accept_its_chunk_size(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """A model whose context is shorter than the chunks of its profile is refused, not silently
    truncated; with a profile of shorter chunks it is accepted."""
    register(conn, "v1", fake.url)
    chunk_max = conn.execute(
        "SELECT value::integer FROM pgingest.config WHERE key = 'chunk_max_tokens'"
    ).fetchone()
    assert chunk_max == (200,)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as ei:
        register(conn, "small", fake.url, max_input_tokens=128)
    assert "accepts 128 tokens but its chunks are up to 200 tokens" in str(ei.value)
    assert "chunk_max_tokens" in (ei.value.diag.message_hint or "")
    assert conn.execute("SELECT to_regclass('pgingest.store_small')").fetchone() == (None,)
    assert register(conn, "exact", fake.url, max_input_tokens=200) == "shadow"
    assert register(conn, "small", fake.url, max_input_tokens=128, chunk_max_tokens=128) == "shadow"
    profiles = conn.execute(
        "SELECT m.name, m.profile_id, p.max_tokens FROM pgingest.models AS m"
        " JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id ORDER BY m.name"
    ).fetchall()
    assert profiles == [("exact", 1, 200), ("small", 2, 128), ("v1", 1, 200)]


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("hnsw", '{"lists": 10}', "unknown index option"),
        ("hnsw", '{"m": 1}', "must be an integer from 2 to 100"),
        ("hnsw", '{"m": 16.5}', "must be an integer"),
        ("hnsw", '{"m": 40, "ef_construction": 64}', "at least twice m"),
        ("ivfflat", '{"lists": "8; DROP TABLE x"}', "must be an integer"),
        ("none", '{"m": 16}', "unknown index option"),
        ("btree", "{}", "index_method must be hnsw, ivfflat or none"),
    ],
)
def test_bad_index_options_are_refused(
    conn: psycopg.Connection[Any], method: str, options: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        register(conn, "v1", "http://127.0.0.1:9/v1", index_method=method, index_options=options)


def test_compare_models_and_cli(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    parser = argparse.ArgumentParser(prog="pgingest")
    models_cli.add_model_commands(parser.add_subparsers(dest="command"))

    def cli(*argv: str) -> int:
        args = parser.parse_args(["model", *argv, "--database-url", dsn])
        return int(args.func(args))

    assert (
        cli("add", "v1", "--model-id", "fake-384", "--dimensions", "384", "--base-url", fake.url)
        == 0
    )
    insert_docs(conn, 1, 60)
    assert (
        cli(
            "add", "v2", "--model-id", "fake-768", "--dimensions", "768", "--base-url", fake.url,
            "--m", "8", "--ef-construction", "32", "--backfill",
        )
        == 0
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "registered model v2 (shadow): store store_v2 vector(768) cosine" in out
    assert queue_count(conn, "v2") == 60
    assert cli("swap", "v2") == models_cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "cannot swap to model v2" in err and "hint:" in err
    drain(dsn)

    assert cli("list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["v2"]["embedded"] == 60 and rows["v2"]["percent"] == 100.0
    assert rows["v2"]["index_present"] is False

    assert cli("index", "v2", "--no-progress", "--maintenance-work-mem", "64MB") == 0
    assert "index store_v2_idx built" in capsys.readouterr().out
    assert cli("index", "v1", "--no-progress") == 0
    assert cli("list") == 0
    table = capsys.readouterr().out
    assert "v2     shadow" in table and "60/60" in table and "hnsw valid" in table

    # Compare: embed query texts through each model's endpoint, search both columns.
    report = models_cli.compare_models(dsn, "v1", "v2", k=5, sample=12, seed=0.5)
    assert report.queries == 12 and report.k == 5
    assert report.a.recall is not None and report.a.recall >= 0.9
    assert report.b.recall is not None and report.b.recall >= 0.9
    assert 0.0 <= report.overlap_min <= report.overlap_mean <= 1.0
    assert report.b.search_p95_ms >= report.b.search_p50_ms > 0
    assert report.settings["hnsw.ef_search"] == "40"
    same = models_cli.compare_models(dsn, "v2", "v2", k=5, sample=5)
    assert same.overlap_mean == 1.0

    queries = tmp_path / "queries.txt"
    queries.write_text("how are indexes built\n\nwhat does a swap do\n", encoding="utf-8")
    assert cli("compare", "v1", "v2", "--queries", str(queries), "--k", "3", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["queries"] == 2 and data["source"] == "file"
    assert set(data["b"]) >= {"recall", "search_p50_ms", "search_p95_ms", "index"}
    assert cli("compare", "v1", "v2", "--sample", "5") == 0
    text = capsys.readouterr().out
    assert "recall@10 vs exact" in text and "document overlap v1/v2" in text

    # The same from SQL, on stored vectors (no endpoint called).
    sql_rows = (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM pgingest.compare_models(%s, %s, %s, %s)", ("v1", "v2", 5, 10))
        .fetchall()
    )
    assert [r["model"] for r in sql_rows] == ["v1", "v2"]
    assert all(r["queries"] == 10 and r["recall"] >= 0.9 for r in sql_rows)
    assert all(0 < r["overlap"] <= 1 for r in sql_rows)  # the query chunk is found by both

    assert cli("swap", "v2") == 0
    assert "v2 active, v1 standby" in capsys.readouterr().out
    assert cli("retire", "v2", "--yes") == models_cli.EXIT_REFUSED
    assert "it is the active model" in capsys.readouterr().err
    assert cli("swap", "bad name") == models_cli.EXIT_INVALID
    assert cli("retire", "v1", "--yes") == 0
    assert "model v1: retired" in capsys.readouterr().out
    assert cli("list") == 0
    assert "v1     retired" in capsys.readouterr().out
