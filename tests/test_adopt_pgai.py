"""``pgingest adopt pgai`` (issue 24) against pgai's real catalog: ``pgai.install()`` (the ``pgai``
package from PyPI, extra ``[pgai]``) installs the ``ai`` schema into the test's database, and
``ai.create_vectorizer`` creates a vectorizer on an application table with a composite key and a
formatting template. pgai's worker is not run: its store is filled with rows of its exact shape
(``chunk`` is the formatted text pgai sends to the provider; the vector is the fake provider's
for that text), which is what its worker writes.

The only fake is the embedding provider: it counts every request, so "adoption embeds nothing"
is a count of 0, and "embedded exactly once" counts the inputs it received.
"""

from __future__ import annotations

import io
import json
import string
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import numpy as np
import pgai  # the dev extra installs it ([pgai]); missing, this module fails
import psycopg
import pytest
from psycopg import sql

from pgingest import adopt_pgai, cli, db
from pgingest.testing.fake_provider import FakeEmbeddingServer, fake_vectors
from tests.helpers import drain, wait_for

MODEL = "fake-384"
DIM = 384
TEMPLATE = "$title: $chunk"
TENANTS = ("acme", "globex")
TOPICS = (
    "postgres vacuum tuning and autovacuum thresholds",
    "vector search with hnsw indexes",
    "kubernetes operators for databases",
    "write ahead log archiving and point in time recovery",
    "logical replication slots and publications",
    "connection pooling with pgbouncer",
)

NOTES = """
CREATE TABLE public.notes (
    tenant text NOT NULL,
    id integer NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (tenant, id)
)
"""


def _body(tenant: str, i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return "\n\n".join(
        f"Paragraph {p} of {tenant} note {i} is about {topic}. More about {topic}, item {i}."
        for p in range(1 + i % 3)
    )


def _chunks(body: str) -> list[str]:
    """pgai's recursive character splitter on these bodies: one chunk per paragraph (each is
    shorter than chunk_size, two together are longer)."""
    return body.split("\n\n")


def _vec(text: str) -> np.ndarray:
    return fake_vectors(MODEL, [text], DIM)[0]


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    return int(_one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))))


def _install_pgai(dsn: str) -> None:
    pgai.install(dsn)


def _create_vectorizer(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    table: str = "public.notes",
    **cfg: str,
) -> str:
    args = {
        "loading": "ai.loading_column('body')",
        "embedding": f"ai.embedding_openai({MODEL!r}, {DIM}, base_url => {fake.url!r})",
        "formatting": f"ai.formatting_python_template({TEMPLATE!r})",
        "chunking": "ai.chunking_recursive_character_text_splitter(200, 20)",
    }
    args.update(cfg)
    call = ", ".join(f"{k} => {v}" for k, v in args.items())
    vid = _one(conn, f"SELECT ai.create_vectorizer({table!r}::regclass, {call})")
    return str(_one(conn, "SELECT name FROM ai.vectorizer WHERE id = %s", (vid,)))


def _pgai_worker(conn: psycopg.Connection[Any], queue: str = "_vectorizer_q_1") -> int:
    """What pgai's worker does for the queued keys: the store rows of the row's chunks (the
    formatted text and its vector), the queue items deleted. Returns the rows written."""
    n = 0
    with conn.transaction():
        keys = conn.execute(
            sql.SQL("DELETE FROM ai.{} RETURNING tenant, id").format(sql.Identifier(queue))
        ).fetchall()
        for tenant, id_ in sorted(set(keys)):
            conn.execute(
                "DELETE FROM public.notes_embedding_store WHERE tenant = %s AND id = %s",
                (tenant, id_),
            )
            row = conn.execute(
                "SELECT tenant, id, title, body FROM public.notes WHERE tenant = %s AND id = %s",
                (tenant, id_),
            ).fetchone()
            if row is None:
                continue
            item = dict(zip(("tenant", "id", "title", "body"), row, strict=True))
            for seq, chunk in enumerate(_chunks(row[3])):
                text = string.Template(TEMPLATE).substitute(chunk=chunk, **item)
                conn.execute(
                    "INSERT INTO public.notes_embedding_store (tenant, id, chunk_seq, chunk,"
                    " embedding) VALUES (%s, %s, %s, %s, %s)",
                    (tenant, id_, seq, text, _vec(text)),
                )
                n += 1
    return n


@pytest.fixture
def pgai_db(dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer) -> str:
    """The test's database with pgai's catalog, ``public.notes`` (36 rows, composite key), a
    vectorizer with a template on it, and its store filled as pgai's worker fills it."""
    _install_pgai(dsn)
    conn.execute(NOTES)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.notes VALUES (%s, %s, %s, %s)",
            [(t, i, f"Note {i}", _body(t, i)) for t in TENANTS for i in range(18)],
        )
    _create_vectorizer(conn, fake)
    assert _pgai_worker(conn) > 36
    return dsn


def _adopt(dsn: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["adopt", "pgai", *argv, "--database-url", dsn])
    return code, out.getvalue(), err.getvalue()


def _pgai_search(conn: psycopg.Connection[Any], query: str, k: int = 8) -> list[tuple[str, int]]:
    rows = conn.execute(
        "SELECT tenant, id FROM public.notes_embedding ORDER BY embedding <=> %s, tenant, id,"
        " chunk_seq LIMIT %s",
        (_vec(query), k),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _pgingest_search(
    conn: psycopg.Connection[Any], query: str, k: int = 8
) -> list[tuple[str, int]]:
    v = _vec(query)
    rows = conn.execute(
        "SELECT source_key FROM pgingest.search(%s, %s)", (v / np.linalg.norm(v), k)
    ).fetchall()
    return [(r[0]["tenant"], r[0]["id"]) for r in rows]


def _inputs(fake: FakeEmbeddingServer) -> list[str]:
    return list(fake.counters.inputs_seen)


def _state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What a rerun must leave unchanged: pgingest's rows and pgai's."""
    return {
        "sources": conn.execute(
            "SELECT name, relid::regclass::text, template, body_column FROM pgingest.sources"
            " ORDER BY id"
        ).fetchall(),
        "models": conn.execute(
            "SELECT name, model_id, dimensions, state, profile_id FROM pgingest.models ORDER BY name"
        ).fetchall(),
        "rows": _one(conn, "SELECT count(*) FROM pgingest.source_rows"),
        "chunks": _one(conn, "SELECT count(*) FROM pgingest.chunks"),
        "state": _one(conn, "SELECT count(*) FROM pgingest.embedding_state"),
        "queue": _rows(conn, "pgmq", f"q_pgingest_{MODEL_NAME}"),
        "pgai": conn.execute("SELECT id, disabled FROM ai.vectorizer ORDER BY id").fetchall(),
        "triggers": conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'public.notes'::regclass"
            " ORDER BY tgname"
        ).fetchall(),
    }


MODEL_NAME = "pgai_1_notes"  # pgai_<vectorizer id>_<table>


def test_dry_run_prints_the_plan_and_changes_nothing(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    before = _one(conn, "SELECT count(*) FROM pgingest.models")
    code, out, err = _adopt(pgai_db, "--dry-run")
    assert code == 0, err
    assert "vectorizer public_notes_embedding_store (id 1) on public.notes (key tenant, id)" in out
    assert "template '{title}: {body}'" in out
    assert f"model    {MODEL_NAME}: fake-384, 384 dimensions, cosine" in out
    assert "differs  chunking: pgai's recursive_character_text_splitter (200 characters" in out
    assert "differs  formatting:" in out
    assert _one(conn, "SELECT count(*) FROM pgingest.models") == before
    assert _one(conn, "SELECT disabled FROM ai.vectorizer") is False
    code, out, _ = _adopt(pgai_db, "--dry-run", "--json")
    plan = json.loads(out)[0]
    assert plan["key_columns"] == ["tenant", "id"]
    assert plan["store_rows"] == plan["store_rows"] > 36 and plan["queued"] == 0
    assert fake.counters.requests == 0


def test_adoption_keeps_vectors_and_hands_writes_to_pgingest(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    # A change pgai had queued and not embedded yet when adoption starts.
    conn.execute("UPDATE public.notes SET body = body || ' Pending edit.' WHERE id = 3")
    queries = ["vector search with hnsw indexes", "pgbouncer pooling", "replication slots"]
    before = {q: _pgai_search(conn, q) for q in queries}
    store_rows = _one(conn, "SELECT count(*) FROM public.notes_embedding_store")

    code, out, err = _adopt(pgai_db, "--compat-view")
    assert code == 0, err
    assert "adopted as source notes" in out
    assert fake.counters.requests == 0  # nothing embedded during adoption

    # Every store row became a chunk and a vector of the model; both pending rows are queued.
    assert _rows(conn, "pgingest", f"store_{MODEL_NAME}") == store_rows
    assert _one(conn, "SELECT count(*) FROM pgingest.source_rows") == 36
    assert _one(conn, "SELECT count(*) FROM pgingest.embedding_state") == 34
    assert _rows(conn, "pgmq", f"q_pgingest_{MODEL_NAME}") == 2
    assert _one(conn, "SELECT count(*) FROM ai._vectorizer_q_1") == 0
    assert _one(conn, "SELECT disabled FROM ai.vectorizer") is True
    # The model's own backfill ends below the adopted rows: it never queues them.
    assert _one(
        conn,
        "SELECT coalesce(m.backfill_upto, 0) < (SELECT min(doc_id) FROM pgingest.source_rows)"
        " FROM pgingest.models AS m WHERE m.backfill_fence = '{}'",
    )
    # The same keys, in the same order, from pgingest's search and from the compat view.
    for q in queries:
        assert _pgingest_search(conn, q) == before[q], q
        assert _pgai_search(conn, q) == before[q], q  # public.notes_embedding is pgingest's now
    assert _one(conn, "SELECT count(*) FROM public.notes_embedding_pgai") == store_rows
    # The ANN index was built.
    assert _one(
        conn,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
        (f"pgingest.store_{MODEL_NAME}_idx",),
    )

    # The worker embeds the two pending rows only.
    drain(pgai_db)
    assert sorted({t.split(":")[0] for t in _inputs(fake)}) == ["Note 3"]
    assert _rows(conn, "pgmq", f"q_pgingest_{MODEL_NAME}") == 0
    sent = fake.counters.requests

    # Writes after the cut-over are pgingest's: INSERT, UPDATE, DELETE.
    conn.execute("INSERT INTO public.notes VALUES ('acme', 100, 'Note 100', 'A new note on wal.')")
    conn.execute(
        "UPDATE public.notes SET body = 'Rewritten body.' WHERE tenant = 'globex' AND id = 5"
    )
    conn.execute("DELETE FROM public.notes WHERE tenant = 'acme' AND id = 7")
    assert _one(conn, "SELECT count(*) FROM ai._vectorizer_q_1") == 0
    drain(pgai_db)
    assert fake.counters.requests > sent
    new_inputs = _inputs(fake)[-2:]
    assert sorted(new_inputs) == ["Note 100: A new note on wal.", "Note 5: Rewritten body."]
    hits = conn.execute(
        "SELECT source_key FROM pgingest.search(%s, 1)",
        (_unit("Note 100: A new note on wal."),),
    ).fetchall()
    assert hits[0][0] == {"tenant": "acme", "id": 100}
    assert (
        _one(
            conn,
            "SELECT count(*) FROM pgingest.source_rows WHERE row_key = %s::jsonb",
            ('{"tenant": "acme", "id": 7}',),
        )
        == 0
    )

    # A second run changes nothing.
    state = _state(conn)
    code, out, err = _adopt(pgai_db)
    assert code == 0, err
    assert "adopted already" in out
    assert _state(conn) == state


def _unit(text: str) -> np.ndarray:
    v = _vec(text)
    return v / np.linalg.norm(v)


def test_write_committed_concurrently_with_the_cutover_is_embedded_once(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """One write holds its row lock when adoption asks for the table's lock (it commits through
    pgai's trigger, while the cut-over waits); another is issued while the cut-over waits (it
    waits behind it, then goes through pgingest's capture). Each is embedded exactly once."""
    early = db.connect(pgai_db)
    late = db.connect(pgai_db)
    try:
        early.execute("BEGIN")
        early.execute(
            "UPDATE public.notes SET body = 'Early edit.' WHERE tenant = 'acme' AND id = 1"
        )
        result: dict[str, Any] = {}

        def run_adopt() -> None:
            result["code"] = _adopt(pgai_db, "--no-index", "--lock-timeout", "30s")

        t = threading.Thread(target=run_adopt)
        t.start()

        def waiting(app: str) -> bool:
            return bool(
                _one(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                    " AND wait_event_type = 'Lock'",
                    (app,),
                )
            )

        wait_for(lambda: waiting(adopt_pgai.APPLICATION_NAME))

        def late_write() -> None:
            late.execute(
                "UPDATE public.notes SET body = 'Late edit.' WHERE tenant = 'globex' AND id = 2"
            )

        lw = threading.Thread(target=late_write)
        lw.start()
        wait_for(
            lambda: (
                _one(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND"
                    " wait_event_type = 'Lock'",
                    (late.info.backend_pid,),
                )
                == 1
            )
        )
        time.sleep(0.2)
        early.execute("COMMIT")
        t.join(60)
        lw.join(60)
        assert result["code"][0] == 0, result["code"]
    finally:
        early.close()
        late.close()
    assert fake.counters.requests == 0
    drain(pgai_db)
    inputs = _inputs(fake)
    assert inputs.count("Note 1: Early edit.") == 1
    assert inputs.count("Note 2: Late edit.") == 1
    assert len(inputs) == 2
    assert _one(conn, "SELECT count(*) FROM ai._vectorizer_q_1") == 0
    drain(pgai_db)
    assert len(_inputs(fake)) == 2


@pytest.mark.parametrize(
    ("setup", "cfg", "option"),
    [
        (None, {"loading": "ai.loading_uri('body')"}, "loading"),
        (
            "CREATE TABLE public.files (id int PRIMARY KEY, doc bytea NOT NULL)",
            {"loading": "ai.loading_column('doc')", "parsing": "ai.parsing_pymupdf()"},
            "loading",
        ),
        (
            None,
            {"destination": "ai.destination_column('emb')", "chunking": "ai.chunking_none()"},
            "destination",
        ),
        (None, {"embedding": "ai.embedding_voyageai('voyage-3', 1024)"}, "embedding"),
        (None, {"embedding": "ai.embedding_litellm('cohere/embed', 1024)"}, "embedding"),
        (None, {"formatting": "ai.formatting_python_template('{x} $chunk')"}, "formatting"),
    ],
)
def test_refusals_name_what_cannot_be_mapped(
    dsn: str,
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    setup: str | None,
    cfg: dict[str, str],
    option: str,
) -> None:
    _install_pgai(dsn)
    conn.execute(NOTES)
    table = "public.notes"
    if setup is not None:
        conn.execute(setup)
        table = "public.files"
    name = _create_vectorizer(conn, fake, table, **cfg)
    code, _out, err = _adopt(dsn, "--dry-run")
    assert code == 3, err
    assert f"refused: vectorizer {name}: {option}:" in err
    code, _out, err = _adopt(dsn)
    assert code == 3
    assert _one(conn, "SELECT count(*) FROM pgingest.models") == 0
    assert _one(conn, "SELECT count(*) FROM pgingest.sources WHERE id <> 0") == 0
    assert _one(conn, "SELECT bool_and(NOT disabled) FROM ai.vectorizer")


def test_refusals_on_pgingest_side(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    # The table is attached to pgingest already.
    conn.execute("SELECT pgingest.add_source('mine', 'public.notes', body => 'body')")
    code, _out, err = _adopt(pgai_db)
    assert code == 3
    assert "source: public.notes is already attached to pgingest as source 'mine'" in err
    conn.execute("SELECT pgingest.remove_source('mine')")
    # The primary key changed since pgai made its store.
    conn.execute("ALTER TABLE public.notes DROP CONSTRAINT notes_pkey")
    conn.execute("ALTER TABLE public.notes ADD PRIMARY KEY (id, tenant)")
    code, _out, err = _adopt(pgai_db)
    assert code == 3
    assert "source_pk: the primary key of public.notes is no longer (tenant, id)" in err
    conn.execute("ALTER TABLE public.notes DROP CONSTRAINT notes_pkey")
    conn.execute("ALTER TABLE public.notes ADD PRIMARY KEY (tenant, id)")
    # pgai's vectorizer is disabled: its store may be behind the table.
    conn.execute("UPDATE ai.vectorizer SET disabled = true")
    code, _out, err = _adopt(pgai_db)
    assert code == 3
    assert "disabled: the vectorizer is disabled in pgai" in err
    conn.execute("UPDATE ai.vectorizer SET disabled = false")
    # A model of that name exists and is not this adoption's.
    conn.execute("SELECT pgingest.register_model('taken', 'other-model', 8, %s)", (fake.url,))
    code, _out, err = _adopt(pgai_db, "--model", "taken")
    assert code == 3
    assert "--model: a pgingest model named 'taken' exists and is not this adoption's" in err
    # A live model uses the chunking profile the vectorizer maps to.
    conn.execute(
        "SELECT pgingest.register_model('other', 'fake-384', 384, %s, chunk_tokenizer =>"
        " 'heuristic', chunk_max_tokens => 67, chunk_overlap_tokens => 7, title_in_chunks =>"
        " false)",
        (fake.url,),
    )
    code, _out, err = _adopt(pgai_db)
    assert code == 3
    assert "chunking: the chunking profile it maps to is used by model(s) other" in err
    assert fake.counters.requests == 0


def test_drop_pgai_only_after_verification(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    code, _out, err = _adopt(pgai_db, "--drop-pgai")
    assert code == 3
    assert "not adopted yet" in err
    assert _adopt(pgai_db, "--no-index")[0] == 0
    # Not verified while pgai's trigger is enabled again by someone.
    conn.execute("ALTER TABLE public.notes ENABLE TRIGGER _vectorizer_src_trg_1")
    code, _out, err = _adopt(pgai_db, "--drop-pgai")
    assert code == 3
    assert "enabled again" in err
    conn.execute("ALTER TABLE public.notes DISABLE TRIGGER _vectorizer_src_trg_1")
    code, out, err = _adopt(pgai_db, "--drop-pgai")
    assert code == 0, err
    assert "dropped table public.notes_embedding_store" in out
    assert _one(conn, "SELECT count(*) FROM ai.vectorizer") == 0
    assert _one(conn, "SELECT to_regclass('public.notes_embedding')") is None
    assert (
        _one(
            conn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.notes'::regclass"
            " AND tgname LIKE '\\_vectorizer%%'",
        )
        == 0
    )
    # pgingest keeps serving.
    assert _pgingest_search(conn, "vector search with hnsw indexes")
    assert fake.counters.requests == 0


def test_a_failed_cutover_changes_nothing_and_a_rerun_completes(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    blocker = db.connect(pgai_db)
    try:
        blocker.execute("BEGIN")
        blocker.execute(
            "UPDATE public.notes SET body = 'Blocked edit.' WHERE tenant = 'acme' AND id = 0"
        )
        code, _out, err = _adopt(pgai_db, "--no-index", "--lock-timeout", "300ms")
        assert code != 0
        assert "lock timeout" in err
        # Nothing of the cut-over happened: pgai still runs the table (the model is kept for the rerun).
        assert _one(conn, "SELECT count(*) FROM pgingest.sources WHERE id <> 0") == 0
        assert _one(conn, "SELECT disabled FROM ai.vectorizer") is False
        assert _one(
            conn,
            "SELECT bool_and(tgenabled = 'O') FROM pg_trigger"
            " WHERE tgrelid = 'public.notes'::regclass AND tgname LIKE '\\_vectorizer%%'",
        )
        blocker.execute("COMMIT")
    finally:
        blocker.close()
    assert _one(conn, "SELECT count(*) FROM ai._vectorizer_q_1") == 1  # pgai queued the edit
    code, out, err = _adopt(pgai_db, "--no-index")
    assert code == 0, err
    assert "1 rows queued (1 moved from pgai's queue)" in out
    drain(pgai_db)
    assert _inputs(fake) == ["Note 0: Blocked edit."]


def test_changes_between_the_copy_and_the_lock_are_reconciled(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """pgai's vectors are copied before the table's lock: a row deleted meanwhile leaves no
    adopted chunk behind, and a row pgai's worker re-embedded meanwhile (its store rows
    rewritten, its queue item gone) is embedded again by pgingest, not served as current."""
    other = db.connect(pgai_db)

    def meanwhile() -> None:
        other.execute("DELETE FROM public.notes WHERE tenant = 'acme' AND id = 4")
        other.execute(
            "UPDATE public.notes SET body = 'Rewritten.' WHERE tenant = 'globex' AND id = 6"
        )
        assert _pgai_worker(other) == 1  # pgai's worker catches up before pgai is switched off
        # A change whose queue item pgai's worker took without writing anything (no trace in
        # pgai's store or queue): the content hash tells.
        other.execute(
            "UPDATE public.notes SET title = 'Retitled 9' WHERE tenant = 'acme' AND id = 9"
        )
        other.execute("DELETE FROM ai._vectorizer_q_1")

    try:
        with db.connect(pgai_db) as c:
            p = adopt_pgai.plan(c, "public_notes_embedding_store")
        res = adopt_pgai.adopt(pgai_db, p, build_index=False, before_lock=meanwhile)
    finally:
        other.close()
    assert res.rows_registered == 35
    assert res.documents_embedded == 33  # 35 rows, less the two whose recorded version is stale
    assert res.queued == 2  # globex/6, acme/9: their copied vectors are the old versions'
    store_rows = _one(conn, "SELECT count(*) FROM public.notes_embedding_store")
    # acme/4's two chunks are gone from both; globex/6's one old chunk was copied, pgai now holds
    # its one new chunk: as many as pgai's store holds.
    assert res.chunks_adopted == store_rows
    orphans = _one(
        conn,
        "SELECT count(*) FROM pgingest.chunks AS c WHERE NOT EXISTS"
        " (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = c.doc_id)",
    )
    assert orphans == 0
    assert (
        _one(
            conn,
            sql.SQL(
                "SELECT count(*) FROM pgingest.{} AS v WHERE NOT EXISTS"
                " (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = v.doc_id)"
            ).format(sql.Identifier(f"store_{MODEL_NAME}")),
        )
        == 0
    )
    drain(pgai_db)
    assert sorted(_inputs(fake)) == [
        "Note 6: Rewritten.",
        "Retitled 9: " + _body("acme", 9),
    ]


def test_plan_maps_ollama_and_wide_openai_models(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    _install_pgai(dsn)
    conn.execute(NOTES)
    conn.execute("CREATE TABLE public.wide (LIKE public.notes INCLUDING ALL)")
    _create_vectorizer(
        conn,
        fake,
        embedding="ai.embedding_ollama('nomic-embed-text', 768, base_url => 'http://127.0.0.1:11434')",
        formatting="ai.formatting_python_template()",
        chunking="ai.chunking_character_text_splitter(900, 600)",
    )
    _create_vectorizer(
        conn,
        fake,
        "public.wide",
        embedding="ai.embedding_openai('text-embedding-3-large', 3072)",
    )
    # An HNSW index needs a TimescaleDB schedule in pgai (not here): the config such an install
    # holds, from pgai's own function.
    conn.execute(
        "UPDATE ai.vectorizer SET config = jsonb_set(config, '{indexing}',"
        " ai.indexing_hnsw(opclass => 'vector_ip_ops', m => 32)) WHERE id = 2"
    )
    code, out, err = _adopt(dsn, "--dry-run", "--json")
    assert code == 0, err
    ollama, wide = json.loads(out)
    assert (ollama["base_url"], ollama["api_key_env"], ollama["body"], ollama["template"]) == (
        "http://127.0.0.1:11434/v1",
        None,
        "body",
        None,
    )
    assert (ollama["chunk_max_tokens"], ollama["chunk_overlap_tokens"]) == (300, 150)
    assert any("more than half a chunk" in d for d in ollama["differences"])
    assert (wide["base_url"], wide["api_key_env"], wide["storage"]) == (
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        "halfvec",
    )
    assert (wide["metric"], wide["index_options"], wide["max_input_tokens"]) == (
        "ip",
        {"m": 32},
        8191,
    )
    assert wide["model"] == "pgai_2_wide" and wide["source"] == "wide"


def test_compat_view_on_a_later_run_and_drop_pgai_keeps_it(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    before = _pgai_search(conn, "logical replication slots")
    assert _adopt(pgai_db, "--no-index")[0] == 0
    code, out, err = _adopt(pgai_db, "--compat-view")
    assert code == 0, err
    assert "adopted already (source notes, model pgai_1_notes); view public.notes_embedding" in out
    assert _adopt(pgai_db, "--compat-view")[1].count("view") == 0  # there already: nothing
    code, out, err = _adopt(pgai_db, "--drop-pgai")
    assert code == 0, err
    assert "dropped view public.notes_embedding_pgai" in out
    assert _one(conn, "SELECT to_regclass('public.notes_embedding_store')") is None
    # The application's query on pgai's view name still answers, from pgingest's data.
    assert _pgai_search(conn, "logical replication slots") == before
    assert fake.counters.requests == 0


def test_next_to_an_active_model_the_adopted_one_is_shadow_and_the_other_backfills(
    pgai_db: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """pgingest already runs a model: the adopted model starts in shadow with pgai's vectors,
    and the other model gets every row of the table queued (its own backfill of the source)."""
    conn.execute(
        "SELECT pgingest.register_model('mini', 'fake-384', 384, %s, max_input_tokens => 512)",
        (fake.url,),
    )
    query = "write ahead log archiving"
    before = _pgai_search(conn, query)
    code, out, err = _adopt(pgai_db, "--no-index")
    assert code == 0, err
    assert fake.counters.requests == 0
    assert (
        _one(conn, "SELECT state FROM pgingest.models WHERE name = %s", (MODEL_NAME,)) == "shadow"
    )
    assert _rows(conn, "pgmq", "q_pgingest_mini") == 36
    assert _rows(conn, "pgmq", f"q_pgingest_{MODEL_NAME}") == 0
    v = _unit(query)
    rows = conn.execute(
        "SELECT source_key FROM pgingest.search(%s, 8, model => %s)", (v, MODEL_NAME)
    ).fetchall()
    assert [(r[0]["tenant"], r[0]["id"]) for r in rows] == before
    drain(pgai_db)
    # Only 'mini' embedded: 36 rows, each once (its own chunking: title in chunks).
    assert len(_inputs(fake)) == len(set(_inputs(fake))) >= 36
    assert _one(conn, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'mini'") == 36
    assert _rows(conn, "pgmq", f"q_pgingest_{MODEL_NAME}") == 0
