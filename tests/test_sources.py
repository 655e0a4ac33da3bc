"""Sources: attaching pgingest to the application's own tables (issue 17, item 1).

An application table is attached with ``pgingest.add_source()``, unchanged: its primary key (any
types, composite too), a body column or a template over columns, a title and metadata columns.
Statement-level triggers capture its changes; the worker reads its rows through a SECURITY DEFINER
path, so the worker role needs no grant on it; search returns the source and the row's key.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, queue_count, register

TENANT_A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
TENANT_B = uuid.UUID("00000000-0000-0000-0000-00000000000b")

ARTICLES = """
CREATE TABLE public.articles (
    tenant_id uuid NOT NULL,
    id bigint NOT NULL,
    title text,
    body text,
    tags text[],
    lang text,
    views integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
)
"""

TEMPLATE = "{title}\n\n{body}\n\nTags: {tags}"


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def article_body(i: int) -> str:
    return " ".join(
        f"Article {i} sentence {j} is about tenants, keys and their embeddings." for j in range(12)
    )


def insert_articles(conn: psycopg.Connection[Any], tenant: uuid.UUID, ids: range) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.articles (tenant_id, id, title, body, tags, lang)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (tenant, i, f"Article {i}", article_body(i), ["news", f"t{i % 3}"], "en")
                for i in ids
            ],
        )


def attach_articles(conn: psycopg.Connection[Any], **kw: Any) -> None:
    args = {"template": TEMPLATE, "title": "title", "metadata": ["lang"], **kw}
    conn.execute(
        sql.SQL("SELECT pgingest.add_source('articles', 'public.articles'::regclass, {})").format(
            sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v))
                for k, v in args.items()
            )
        )
    )


def embedded(conn: psycopg.Connection[Any], model: str = "v1", source: str = "articles") -> int:
    return int(
        one(
            conn,
            "SELECT count(*) FROM pgingest.embedding_state AS e"
            " JOIN pgingest.source_documents AS d ON d.doc_id = e.doc_id"
            " AND d.content_hash = e.content_hash WHERE e.model = %s AND d.source = %s",
            (model, source),
        )
    )


def source_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows pgingest keeps for the articles source: registry, chunks, vectors, state."""
    ids = "(SELECT doc_id FROM pgingest.source_rows)"
    return {
        "rows": one(conn, "SELECT count(*) FROM pgingest.source_rows"),
        "chunks": one(conn, f"SELECT count(*) FROM pgingest.chunks WHERE doc_id IN {ids}"),  # noqa: S608
        "vectors": one(conn, "SELECT count(*) FROM pgingest.store_v1"),
        "state": one(conn, f"SELECT count(*) FROM pgingest.embedding_state WHERE doc_id IN {ids}"),  # noqa: S608
    }


@pytest.fixture
def articles(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(ARTICLES)
    return conn


def test_composite_key_and_template_embed_existing_and_new_rows_and_search_joins_back(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    insert_articles(conn, TENANT_A, range(1, 21))  # held before attaching: the backfill
    attach_articles(conn)
    insert_articles(conn, TENANT_B, range(1, 11))  # captured by the triggers
    assert one(conn, "SELECT backfill FROM pgingest.source_status WHERE source = 'articles'") != (
        "done"
    )
    drain(dsn)
    assert one(conn, "SELECT backfill FROM pgingest.source_status WHERE source = 'articles'") == (
        "done"
    )
    assert (
        one(conn, "SELECT rows_registered FROM pgingest.source_status WHERE source = 'articles'")
        == 30
    )
    assert embedded(conn) == 30
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0
    # The template: the title, the body and the tags, joined, are what was chunked.
    first = one(
        conn,
        "SELECT c.content FROM pgingest.chunks AS c JOIN pgingest.source_rows AS r USING (doc_id)"
        " WHERE r.row_key = jsonb_build_object('tenant_id', %s::uuid, 'id', 7)"
        " ORDER BY c.ordinal DESC LIMIT 1",
        (TENANT_B,),
    )
    assert first.rstrip().endswith("Tags: news, t1")

    # Search returns the source and the key; the application joins back on its own columns.
    text = f"Article 7\n\n{article_body(7)}\n\nTags: news, t1"
    qvec = fake.vector_for(text[:200], "fake-384")
    rows = conn.execute(
        "SELECT a.tenant_id, a.id, s.source, s.doc_key FROM pgingest.search(%s::real[]::vector, 50) AS s"
        " JOIN public.articles AS a ON a.tenant_id = (s.source_key ->> 'tenant_id')::uuid"
        " AND a.id = (s.source_key ->> 'id')::bigint",
        (qvec.tolist(),),
    ).fetchall()
    assert len(rows) == 50
    assert {r[2] for r in rows} == {"articles"}
    assert {(r[0], r[1]) for r in rows} <= {
        (t, i) for t in (TENANT_A, TENANT_B) for i in range(1, 21)
    }
    assert all(r[3].startswith("{") for r in rows)  # a composite key's text form is its jsonb


def test_update_of_unmapped_columns_queues_nothing_metadata_updates_filters_mapped_text_requeues(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    attach_articles(conn)
    insert_articles(conn, TENANT_A, range(1, 6))
    drain(dsn)
    assert embedded(conn) == 5 and queue_count(conn, "v1") == 0
    requests = fake.stats()["requests"]

    conn.execute("UPDATE public.articles SET views = views + 1")
    assert queue_count(conn, "v1") == 0
    conn.execute("UPDATE public.articles SET lang = 'fr' WHERE id = 2")
    assert queue_count(conn, "v1") == 0
    assert one(conn, "SELECT metadata FROM pgingest.source_rows WHERE row_key ->> 'id' = '2'") == {
        "lang": "fr"
    }
    assert (
        one(
            conn,
            'SELECT count(*) FROM pgingest.search(%s::real[]::vector, 10, \'{"lang": "fr"}\')',
            (fake.vector_for("x", "fake-384").tolist(),),
        )
        >= 1
    )
    conn.execute("UPDATE public.articles SET tags = '{changed}' WHERE id = 3")
    assert queue_count(conn, "v1") == 1
    drain(dsn)
    assert embedded(conn) == 5
    assert fake.stats()["requests"] > requests
    assert "Tags: changed" in one(
        conn,
        "SELECT string_agg(c.content, ' ') FROM pgingest.chunks AS c"
        " JOIN pgingest.source_rows AS r USING (doc_id) WHERE r.row_key ->> 'id' = '3'",
    )


def test_delete_truncate_and_key_change_remove_that_rows_chunks_and_vectors_only(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    attach_articles(conn)
    insert_articles(conn, TENANT_A, range(1, 7))
    insert_docs(conn, [("kept", "Kept", "A document of the built-in source stays embedded.")])
    drain(dsn)
    before = source_counts(conn)
    assert before["rows"] == 6 and before["state"] == 6
    per_row = before["chunks"] // 6

    conn.execute("DELETE FROM public.articles WHERE id IN (1, 2)")
    after = source_counts(conn)
    assert after["rows"] == 4 and after["state"] == 4
    assert after["chunks"] == before["chunks"] - 2 * per_row
    assert after["vectors"] == before["vectors"] - 2 * per_row

    conn.execute("UPDATE public.articles SET id = 100 WHERE id = 3")  # a new key: a new row
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows WHERE row_key ->> 'id' = '3'") == 0
    drain(dsn)
    assert embedded(conn) == 4

    conn.execute("TRUNCATE public.articles")
    after = source_counts(conn)
    assert after == {"rows": 0, "chunks": 0, "vectors": after["vectors"], "state": 0}
    # The built-in source's document keeps its chunks and vectors.
    assert embedded(conn, source="documents") == 1
    assert after["vectors"] == one(
        conn,
        "SELECT count(*) FROM pgingest.chunks WHERE doc_id = (SELECT id FROM pgingest.documents)",
    )

    # And TRUNCATE of pgingest.documents leaves the attached table's rows alone.
    insert_articles(conn, TENANT_A, range(1, 3))
    drain(dsn)
    conn.execute("TRUNCATE pgingest.documents")
    assert embedded(conn) == 2
    assert embedded(conn, source="documents") == 0


def test_remove_source_drops_pgingest_state_and_never_touches_the_table(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    attach_articles(conn)
    insert_articles(conn, TENANT_A, range(1, 9))
    drain(dsn)
    conn.execute("UPDATE public.articles SET body = body || ' more' WHERE id = 1")  # queued
    assert queue_count(conn, "v1") == 1
    table_before = conn.execute("SELECT * FROM public.articles ORDER BY tenant_id, id").fetchall()

    removed = one(conn, "SELECT pgingest.remove_source('articles')")
    assert removed == 8
    assert (
        conn.execute("SELECT * FROM public.articles ORDER BY tenant_id, id").fetchall()
        == table_before
    )
    assert (
        one(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.articles'::regclass")
        == 0
    )
    assert source_counts(conn) == {"rows": 0, "chunks": 0, "vectors": 0, "state": 0}
    assert queue_count(conn, "v1") == 0
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'articles'") == 0
    # Writes to the table go on, capturing nothing.
    insert_articles(conn, TENANT_B, range(1, 3))
    assert queue_count(conn, "v1") == 0
    # It can be attached again.
    attach_articles(conn, backfill=False)
    assert (
        one(conn, "SELECT backfill FROM pgingest.source_status WHERE source = 'articles'") == "done"
    )


def test_two_sources_searched_together_and_apart(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    attach_articles(conn)
    insert_articles(conn, TENANT_A, range(1, 6))
    insert_docs(conn, [(f"doc-{i}", f"Doc {i}", article_body(i)) for i in range(1, 6)])
    drain(dsn)
    q = fake.vector_for("Article 3 sentence 1", "fake-384").tolist()

    def sources_of(query: str) -> set[str]:
        return {r[0] for r in conn.execute(query, (q,)).fetchall()}

    assert sources_of("SELECT source FROM pgingest.search(%s::real[]::vector, 100)") == {
        "articles",
        "documents",
    }
    assert sources_of(
        "SELECT source FROM pgingest.search(%s::real[]::vector, 100, sources => '{articles}')"
    ) == {"articles"}
    assert sources_of(
        "SELECT source FROM pgingest.search(%s::real[]::vector, 100, sources => '{documents}')"
    ) == {"documents"}
    keys = sources_of(
        "SELECT source_key ->> 'key' FROM pgingest.search(%s::real[]::vector, 100,"
        " sources => '{documents}')"
    )
    assert keys == {f"doc-{i}" for i in range(1, 6)}
    with pytest.raises(psycopg.errors.UndefinedObject, match="no source 'nope'"):
        conn.execute(
            "SELECT * FROM pgingest.search(%s::real[]::vector, 5, sources => '{nope}')", (q,)
        )


def test_null_blank_and_unembeddable_rows_are_dead_lettered_and_never_fail_the_statement(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn.execute("CREATE TABLE public.notes (id text PRIMARY KEY, body text)")
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    conn.execute(
        "INSERT INTO public.notes VALUES ('null', NULL), ('blank', '   '), ('ok', 'Some real text.'),"
        " ('huge', repeat('word ', 2200000))"
    )
    drain(dsn)
    letters = dict(
        conn.execute(
            "SELECT doc_key, error_class FROM pgingest.dead_letters ORDER BY doc_key"
        ).fetchall()
    )
    assert letters == {
        "blank": "empty_document",
        "null": "empty_document",
        "huge": "document_too_large",
    }
    assert embedded(conn, source="notes") == 1

    # A capture that fails (a mapped column dropped) is a dead letter, not a failed INSERT.
    conn.execute("ALTER TABLE public.notes DROP COLUMN body")
    conn.execute("INSERT INTO public.notes VALUES ('after')")
    row = conn.execute(
        "SELECT error_class, error_message FROM pgingest.dead_letters WHERE doc_id IS NULL"
    ).fetchone()
    assert row is not None and row[0] == "capture_failed"
    assert "resync_source('notes')" in row[1]
    assert (
        one(conn, "SELECT capture_failures FROM pgingest.source_status WHERE source = 'notes'") == 1
    )


REFUSALS = [
    (
        "no such column",
        "SELECT pgingest.add_source('s', 'public.t', body => 'nope')",
        "42703",
        "nope",
    ),
    (
        "body not text",
        "SELECT pgingest.add_source('s', 'public.t', body => 'blob')",
        "42804",
        "bytea",
    ),
    (
        "body a number",
        "SELECT pgingest.add_source('s', 'public.t', body => 'n')",
        "42804",
        "integer",
    ),
    (
        "template unknown column",
        "SELECT pgingest.add_source('s', 'public.t', template => '{txt} {missing}')",
        "42703",
        "missing",
    ),
    (
        "template names nothing",
        "SELECT pgingest.add_source('s', 'public.t', template => 'plain words')",
        "22023",
        "names no column",
    ),
    (
        "body and template",
        "SELECT pgingest.add_source('s', 'public.t', body => 'txt', template => '{txt}')",
        "22023",
        "either",
    ),
    (
        "title unknown",
        "SELECT pgingest.add_source('s', 'public.t', body => 'txt', title => 'x')",
        "42703",
        "title",
    ),
    (
        "metadata unknown",
        "SELECT pgingest.add_source('s', 'public.t', body => 'txt', metadata => '{zz}')",
        "42703",
        "zz",
    ),
    (
        "second of a name",
        "SELECT pgingest.add_source('dup', 'public.t', body => 'txt')",
        "42710",
        "already exists",
    ),
    (
        "built-in name",
        "SELECT pgingest.add_source('documents', 'public.t', body => 'txt')",
        "42710",
        "exists",
    ),
    (
        "bad name",
        "SELECT pgingest.add_source('Bad Name', 'public.t', body => 'txt')",
        "22023",
        "invalid",
    ),
    ("a view", "SELECT pgingest.add_source('s', 'public.v', body => 'txt')", "42809", "view"),
    (
        "partitioned",
        "SELECT pgingest.add_source('s', 'public.p', body => 'txt')",
        "0A000",
        "partitioned",
    ),
    ("foreign", "SELECT pgingest.add_source('s', 'public.f', body => 'txt')", "0A000", "foreign"),
    (
        "no key",
        "SELECT pgingest.add_source('s', 'public.nokey', body => 'txt')",
        "55000",
        "primary key",
    ),
    (
        "pgingest's own",
        "SELECT pgingest.add_source('s', 'pgingest.chunks', body => 'content')",
        "42809",
        "schema",
    ),
    (
        "no such table",
        "SELECT pgingest.add_source('s', 'public.nope', body => 'txt')",
        "42P01",
        "nope",
    ),
]


@pytest.mark.parametrize(
    ("query", "sqlstate", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_bad_mappings_are_refused_with_a_sqlstate_and_a_message_naming_the_problem(
    conn: psycopg.Connection[Any], query: str, sqlstate: str, words: str
) -> None:
    conn.execute(
        "CREATE TABLE public.t (id bigint PRIMARY KEY, txt text, blob bytea, n integer);"
        "CREATE TABLE public.dupt (id bigint PRIMARY KEY, txt text);"
        "CREATE VIEW public.v AS SELECT * FROM public.t;"
        "CREATE TABLE public.p (id bigint PRIMARY KEY, txt text) PARTITION BY HASH (id);"
        "CREATE TABLE public.nokey (id bigint, txt text);"
        "CREATE FOREIGN DATA WRAPPER pgingest_test_fdw;"
        "CREATE SERVER pgingest_test_srv FOREIGN DATA WRAPPER pgingest_test_fdw;"
        "CREATE FOREIGN TABLE public.f (id bigint, txt text) SERVER pgingest_test_srv"
    )
    conn.execute("SELECT pgingest.add_source('dup', 'public.dupt', body => 'txt')")
    with pytest.raises(psycopg.Error, match=words) as exc:
        conn.execute(query)
    assert exc.value.sqlstate == sqlstate
    assert one(conn, "SELECT count(*) FROM pgingest.sources") == 2  # documents and dup
    assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.t'::regclass") == 0


def test_only_the_tables_owner_attaches_it_and_the_worker_role_needs_no_grant_on_it(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    suffix = uuid.uuid4().hex[:8]
    owner, other = f"pgingest_t_own_{suffix}", f"pgingest_t_oth_{suffix}"
    try:
        for role in (owner, other):
            conn.execute(
                sql.SQL("CREATE ROLE {} IN ROLE pgingest_admin").format(sql.Identifier(role))
            )
        # (no CREATE on the vector extension's schema for the owner: the capture's compile
        # refuses a schema where roles other than pgingest's owner may create objects)
        conn.execute(ARTICLES)
        conn.execute(
            sql.SQL("ALTER TABLE public.articles OWNER TO {}").format(sql.Identifier(owner))
        )
        register(conn, "v1", fake.url)
        insert_articles(conn, TENANT_A, range(1, 5))

        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(other)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
            attach_articles(conn)
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        attach_articles(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "SELECT pgingest._attach_source('x', 'pgingest.documents', 'body', NULL, NULL, '{}', true, NULL)"
            )
        conn.execute("RESET ROLE")

        assert not one(
            conn, "SELECT has_any_column_privilege('pgingest_worker', 'public.articles', 'SELECT')"
        )
        conn.execute("SET ROLE pgingest_worker")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1 FROM public.articles")
        while one(conn, "SELECT pgingest.source_backfill_step_v1(100)") > 0:
            pass
        msgs = conn.execute(
            "SELECT doc_key, body, status FROM pgingest.read_batch_v1('v1', 30, 10)"
        ).fetchall()
        conn.execute("RESET ROLE")
        assert len(msgs) == 4 and {m[2] for m in msgs} == {"current"}
        assert all("Article" in m[1] for m in msgs)
    finally:
        conn.execute("RESET ROLE")
        conn.execute("DROP TABLE IF EXISTS public.articles")
        for role in (owner, other):
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_register_model_backfills_the_rows_of_every_source(
    articles: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    attach_articles(conn)
    insert_articles(conn, TENANT_A, range(1, 11))
    insert_docs(conn, [(f"doc-{i}", None, article_body(i)) for i in range(3)])
    drain(dsn)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    drain(dsn)
    assert embedded(conn, "v2") == 10
    assert embedded(conn, "v2", source="documents") == 3
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0


def test_a_backfill_step_waits_for_an_open_write_and_registers_what_it_committed(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The race chaos found: a step reading the table before an application's transaction commits
    must not register the old text over the new one, nor a row that transaction deletes."""
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("INSERT INTO public.notes SELECT i, 'Note ' || i FROM generate_series(1, 5) AS i")
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    app = psycopg.connect(dsn)  # a transaction left open
    app.execute("UPDATE public.notes SET body = 'Rewritten note' WHERE id = 2")
    app.execute("DELETE FROM public.notes WHERE id = 4")
    result: list[int] = []
    step = threading.Thread(
        target=lambda: result.append(
            one(db.connect(dsn), "SELECT pgingest.source_backfill_step_v1(100)")
        )
    )
    step.start()
    time.sleep(0.4)
    assert step.is_alive()  # waiting for the application's transaction
    app.commit()
    app.close()
    step.join(10)
    assert result == [4]
    rows = dict(
        conn.execute(
            "SELECT (r.row_key ->> 'id')::bigint,"
            " r.content_hash = pgingest._source_hash(NULL, n.body)"
            " FROM pgingest.source_rows AS r"
            " LEFT JOIN public.notes AS n ON n.id = (r.row_key ->> 'id')::bigint"
        ).fetchall()
    )
    assert rows == {1: True, 2: True, 3: True, 5: True}

    # A transaction open longer than the step waits (1 s): the step answers -1 and tries later.
    conn.execute("SELECT pgingest.resync_source('notes')")
    app = psycopg.connect(dsn)
    app.execute("UPDATE public.notes SET body = 'Again' WHERE id = 1")
    try:
        assert one(db.connect(dsn), "SELECT pgingest.source_backfill_step_v1(100)") == -1
    finally:
        app.commit()
        app.close()
    assert one(conn, "SELECT pgingest.source_backfill_step_v1(100)") == 4


def test_a_dead_lettered_version_leaves_no_chunk_of_the_older_one(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Also found by chaos: full-text search reads the chunks directly; a row emptied after it was
    embedded must not keep serving its older text once every model of the profile gave up on
    the new version."""
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)  # the same profile
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    conn.execute(
        "INSERT INTO public.notes VALUES (1, 'Secret text the user will remove.'), (2, 'Kept.')"
    )
    drain(dsn)

    def chunks(note: int) -> int:
        return int(
            one(
                conn,
                "SELECT count(*) FROM pgingest.chunks AS c JOIN pgingest.source_rows AS r"
                " USING (doc_id) WHERE r.row_key ->> 'id' = %s",
                (str(note),),
            )
        )

    assert chunks(1) == 1 and chunks(2) == 1
    conn.execute("UPDATE public.notes SET body = NULL WHERE id = 1")
    drain(dsn)
    assert (
        one(conn, "SELECT count(*) FROM pgingest.dead_letters WHERE error_class = 'empty_document'")
        == 2
    )
    assert chunks(1) == 0
    assert chunks(2) == 1
    assert one(conn, "SELECT count(*) FROM pgingest.store_v1") == 1


def test_content_hashes_are_unambiguous_in_both_kinds_of_source(
    conn: psycopg.Connection[Any],
) -> None:
    """Issue 18, item 14: title || chr(30) || body let a title holding chr(30) move text across the
    boundary with the same hash (an UPDATE then queued nothing). Attached tables hash with a
    length prefix; pgingest.documents refuses chr(30) in new titles (no stored hash changes)."""
    moved = conn.execute(
        "SELECT pgingest._source_hash('a' || chr(30) || 'b', 'c') = pgingest._source_hash('a', 'b' || chr(30) || 'c'),"
        " pgingest._content_hash('a' || chr(30) || 'b', 'c') = pgingest._content_hash('a', 'b' || chr(30) || 'c')"
    ).fetchone()
    assert moved == (False, True)  # the old encoding's collision, gone from attached tables
    assert conn.execute(
        "SELECT pgingest._source_hash(NULL, 'x') <> pgingest._source_hash('', 'x')"
    ).fetchone() == (True,)
    with pytest.raises(psycopg.errors.CheckViolation, match="documents_title_no_record_separator"):
        conn.execute(
            "INSERT INTO pgingest.documents (key, title, body) VALUES ('k', 'a' || chr(30) || 'b', 'c')"
        )
    # An attached table's title may hold it: the row is registered, never refused.
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, title text, body text)")
    conn.execute(
        "SELECT pgingest.add_source('notes', 'public.notes', body => 'body', title => 'title')"
    )
    conn.execute("INSERT INTO public.notes VALUES (1, 'a' || chr(30) || 'b', 'c')")
    conn.execute("UPDATE public.notes SET title = 'a', body = 'b' || chr(30) || 'c'")
    assert conn.execute(
        "SELECT count(*) FROM pgingest.source_rows WHERE content_hash = pgingest._source_hash('a', 'b' || chr(30) || 'c')"
    ).fetchone() == (1,)


def capture_source(conn: psycopg.Connection[Any]) -> str:
    return str(
        one(
            conn,
            "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure",
        )
    )


def test_the_capture_of_attached_tables_is_compiled_per_source_and_per_live_model(
    conn: psycopg.Connection[Any],
) -> None:
    """Issue 19: pgingest._source_capture holds a branch of static statements per attached table
    (the registry upsert, every live model's queue rows and the wake-up check in one statement),
    recompiled by add_source, remove_source, register_model and retire_model."""
    url = "http://127.0.0.1:9/v1"
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    register(conn, "v1", url)
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    notes = one(conn, "SELECT id FROM pgingest.sources WHERE name = 'notes'")
    body = capture_source(conn)
    assert f"ELSIF v_id = {notes} THEN" in body and "pgmq.q_pgingest_v1" in body
    assert "q_pgingest_v2" not in body
    register(conn, "v2", url, model_id="fake-768", dimensions=768)
    assert "pgmq.q_pgingest_v2" in capture_source(conn)
    conn.execute("INSERT INTO public.notes VALUES (1, 'One.'), (2, 'Two.')")
    conn.execute("UPDATE public.notes SET body = 'One, again.' WHERE id = 1")
    conn.execute("UPDATE public.notes SET id = 3 WHERE id = 2")  # a key moved: forgotten, new
    for model in ("v1", "v2"):
        assert queue_count(conn, model) == 4
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows") == 2
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0
    conn.execute("SELECT pgingest.remove_source('notes')")
    assert f"v_id = {notes}" not in capture_source(conn)


def test_a_source_not_compiled_yet_is_captured_by_its_stored_statements(
    conn: psycopg.Connection[Any],
) -> None:
    """A source the compiled capture has no branch for (statements of an older release, before
    the install re-generates them) runs its stored statements by EXECUTE: the same rows, the
    same messages."""
    register(conn, "v1", "http://127.0.0.1:9/v1")
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    conn.execute(
        "UPDATE pgingest.sources SET statements = statements - 'capture_insert' WHERE name = 'notes'"
    )
    conn.execute("SELECT pgingest._compile_source_capture()")
    assert "ELSIF v_id = " not in capture_source(conn)
    conn.execute("INSERT INTO public.notes VALUES (1, 'One.'), (2, 'Two.')")
    conn.execute("UPDATE public.notes SET body = 'One, again.' WHERE id = 1")
    conn.execute("DELETE FROM public.notes WHERE id = 2")
    assert queue_count(conn, "v1") == 3
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows") == 1
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0


def test_columns_named_like_the_captures_variables_are_captured(
    conn: psycopg.Connection[Any],
) -> None:
    """The compiled capture is static PL/pgSQL: a column named like one of its variables
    (v_id, v_wake, v_gone, found, tg_op) must still be read as the column (every reference to the
    table is qualified), never as the variable."""
    register(conn, "v1", "http://127.0.0.1:9/v1")
    conn.execute(
        "CREATE TABLE public.odd (v_id bigint PRIMARY KEY, tg_op text, v_wake text, found text,"
        ' v_gone text, "x"" AS (" text)'
    )
    conn.execute(
        "SELECT pgingest.add_source('odd', 'public.odd', template => '{tg_op} {v_wake}',"
        " title => 'found', metadata => ARRAY['v_gone', 'x\" AS ('])"
    )
    conn.execute("INSERT INTO public.odd VALUES (1, 'first', 'words', 'T', 'g', 'q')")
    conn.execute("UPDATE public.odd SET v_wake = 'other words'")
    conn.execute("UPDATE public.odd SET v_gone = 'h'")  # metadata only: registered, not queued
    assert queue_count(conn, "v1") == 2
    row = conn.execute("SELECT row_key, title, metadata FROM pgingest.source_rows").fetchone()
    assert row == ({"v_id": 1}, "T", {"v_gone": "h", 'x" AS (': "q"})
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0
    conn.execute("DELETE FROM public.odd")
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows") == 0


def test_a_bulk_update_of_an_attached_table_after_a_single_row_one_is_not_quadratic(
    conn: psycopg.Connection[Any],
) -> None:
    """The compiled capture of an attached table plans its UPDATE statement (joins of the
    transition tables by key) once per session and table: never as a nested loop, which a first
    single-row UPDATE would leave to a later bulk one."""
    register(conn, "v1", "http://127.0.0.1:9/v1")
    conn.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    conn.execute("SELECT pgingest.add_source('notes', 'public.notes', body => 'body')")
    conn.execute(
        "INSERT INTO public.notes SELECT g, 'note ' || g FROM generate_series(1, 5000) AS g"
    )
    conn.execute("UPDATE public.notes SET body = 'one' WHERE id = 1")
    started = time.monotonic()
    conn.execute("UPDATE public.notes SET body = body || '!'")
    assert time.monotonic() - started < 3.0
    assert one(conn, "SHOW enable_nestloop") == "on"
    assert queue_count(conn, "v1") == 5000 + 1 + 5000
    assert one(conn, "SELECT count(*) FROM pgingest.dead_letters") == 0
