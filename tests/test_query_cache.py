"""The query-vector cache of embed_query / search_text (issue 20, item 4): the same question asked
again in a session, or by another session of the same role (the shared table on the primary,
pgingest.query_cache), costs no request to the embedding endpoint, and a swap never serves the
previous model's vector."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register


def requests(fake: FakeEmbeddingServer) -> int:
    return int(fake.stats()["requests"])


def stats(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute("SELECT entries, hits, misses FROM pgingest.query_cache_stats()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_a_repeated_query_makes_no_second_request(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    drain(dsn)
    before = requests(fake)
    first = conn.execute(
        "SELECT doc_id FROM pgingest.search_text('vectors and stores', 3)"
    ).fetchall()
    assert requests(fake) == before + 1
    # The same question, and the same with other spacing: served from the cache.
    again = conn.execute(
        "SELECT doc_id FROM pgingest.search_text('vectors and stores', 3)"
    ).fetchall()
    spaced = conn.execute(
        "SELECT doc_id FROM pgingest.search_text(E'  vectors   and\\tstores ', 3)"
    ).fetchall()
    assert again == first == spaced
    assert requests(fake) == before + 1
    assert stats(conn) == (1, 2, 1)
    # Another session has its own cache (the shared table off for it).
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SET pgingest.query_cache_shared = off")
        other.execute("SELECT pgingest.embed_query('vectors and stores')")
    assert requests(fake) == before + 2


def test_after_a_swap_the_cache_never_serves_the_old_models_vector(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    insert_corpus(conn, 3)
    drain(dsn)
    assert conn.execute("SELECT vector_dims(pgingest.embed_query('hello'))").fetchone() == (384,)
    conn.execute("SELECT pgingest.swap_model('v2', force => true)")
    before = requests(fake)
    assert conn.execute("SELECT vector_dims(pgingest.embed_query('hello'))").fetchone() == (768,)
    assert requests(fake) == before + 1
    hits = conn.execute("SELECT model_name FROM pgingest.search_text('hello', 2)").fetchall()
    assert {h[0] for h in hits} == {"v2"}
    assert requests(fake) == before + 1  # the v2 vector, cached


def test_the_cache_is_bounded_and_can_be_turned_off(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SET pgingest.query_cache_entries = 2")
    for q in ("one", "two", "three", "one"):
        conn.execute("SELECT pgingest.embed_query(%s)", (q,))
    assert stats(conn) == (2, 0, 4)  # 'one' was evicted by 'three'
    conn.execute("SET pgingest.query_cache_entries = 0")
    conn.execute("SET pgingest.query_cache_shared = off")
    before = requests(fake)
    conn.execute("SELECT pgingest.embed_query('three')")
    conn.execute("SELECT pgingest.embed_query('three')")
    assert requests(fake) == before + 2


# --------------------------------------------------------------------------------------------
# The shared table (pgingest.query_cache, migration 0015)
# --------------------------------------------------------------------------------------------


def shared_stats(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("SELECT hits, misses FROM pgingest.query_cache_shared_stats()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def rows(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT count(*) FROM pgingest.query_cache").fetchone()[0])  # type: ignore[index]


def test_a_question_one_session_embedded_costs_another_no_request(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    drain(dsn)
    before = requests(fake)
    first = conn.execute(
        "SELECT doc_id FROM pgingest.search_text('vectors and stores', 3)"
    ).fetchall()
    assert requests(fake) == before + 1
    assert shared_stats(conn) == (0, 1)
    # The table holds the sha256 of the key and the vector, never the text.
    row = conn.execute(
        "SELECT cache_key, model, embedding::text FROM pgingest.query_cache"
    ).fetchone()
    assert row is not None and len(row[0]) == 32 and row[1] == "v1"
    dump = " ".join(str(r) for r in conn.execute("SELECT q.*::text FROM pgingest.query_cache AS q"))
    assert "vectors" not in dump
    with psycopg.connect(dsn, autocommit=True) as other:
        again = other.execute(
            "SELECT doc_id FROM pgingest.search_text(E' vectors  and stores', 3)"
        ).fetchall()
        assert again == first
        assert requests(fake) == before + 1  # no second request: the shared row
        assert shared_stats(other) == (1, 0)
        # Its own cache has it now: the next search does not read the table again.
        other.execute("SELECT pgingest.embed_query('vectors and stores')")
        assert shared_stats(other) == (1, 0)
        row = other.execute(
            "SELECT entries, hits, misses FROM pgingest.query_cache_stats()"
        ).fetchone()
        assert row == (1, 1, 1)
        # In a read-only transaction (as on a replica): read, never written.
        other.execute("SET default_transaction_read_only = on")
        other.execute("SELECT pgingest.embed_query('a question asked read-only')")
        assert requests(fake) == before + 2
    assert rows(conn) == 1


def test_a_swap_never_serves_the_previous_models_shared_vector(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    insert_corpus(conn, 3)
    drain(dsn)
    assert conn.execute("SELECT vector_dims(pgingest.embed_query('hello'))").fetchone() == (384,)
    conn.execute("SELECT pgingest.swap_model('v2', force => true)")
    before = requests(fake)
    with psycopg.connect(dsn, autocommit=True) as other:
        assert other.execute("SELECT vector_dims(pgingest.embed_query('hello'))").fetchone() == (
            768,
        )
        assert requests(fake) == before + 1
        served = other.execute("SELECT model_name FROM pgingest.search_text('hello', 2)").fetchall()
        assert {s[0] for s in served} == {"v2"}
    assert requests(fake) == before + 1
    # Each model's vector under its own key; a vector of another dimension is never stored.
    assert conn.execute(
        "SELECT model, vector_dims(embedding) FROM pgingest.query_cache ORDER BY 1"
    ).fetchall() == [("v1", 384), ("v2", 768)]
    conn.execute(
        "SELECT pgingest._query_cache_vector(%s, 'v2', 768, pgingest.embed_query('x', 'v1'))",
        (hashlib.sha256(b"x").digest(),),
    )
    assert rows(conn) == 3  # 'x' under v1's own key; nothing under the v2 key given
    assert conn.execute(
        "SELECT count(*) FROM pgingest.query_cache WHERE model = 'v2'"
    ).fetchone() == (1,)


def test_the_shared_cache_is_bounded_off_and_pruned_by_maintenance(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SET pgingest.query_cache_entries = 0")  # every lookup reaches the table
    for q in ("one", "two", "three"):
        conn.execute("SELECT pgingest.embed_query(%s)", (q,))
    assert rows(conn) == 3
    conn.execute("UPDATE pgingest.config SET value = '2' WHERE key = 'query_cache_max_rows'")
    conn.execute(
        "UPDATE pgingest.query_cache SET created_at = created_at - interval '1 minute' * octet_length(model)"
    )
    assert (
        int(conn.execute("SELECT pgingest.run_maintenance() ->> 'pruned_cache_rows'").fetchone()[0])
        >= 1
    )  # type: ignore[index]
    assert rows(conn) == 2
    # Past its age: neither served nor kept.
    conn.execute("UPDATE pgingest.query_cache SET created_at = now() - interval '8 days'")
    before = requests(fake)
    conn.execute("SELECT pgingest.embed_query('three')")
    assert requests(fake) == before + 1
    conn.execute("SELECT pgingest.run_maintenance()")
    assert rows(conn) == 1  # 'three', stored again just now
    # Off: 0 rows.
    conn.execute("UPDATE pgingest.config SET value = '0' WHERE key = 'query_cache_max_rows'")
    before = requests(fake)
    conn.execute("SELECT pgingest.embed_query('three')")
    conn.execute("SELECT pgingest.embed_query('four')")
    assert requests(fake) == before + 2
    conn.execute("SELECT pgingest.run_maintenance()")
    assert rows(conn) == 0


def test_a_locked_table_never_fails_or_holds_a_search(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE pgingest.query_cache IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        assert conn.execute(
            "SELECT vector_dims(pgingest.embed_query('locked out'))"
        ).fetchone() == (384,)
        assert time.monotonic() - t0 < 5
        locker.rollback()
    assert rows(conn) == 0


@pytest.fixture
def login(dsn: str) -> Iterator[Callable[[str], str]]:
    """make(group) -> the conninfo of a new LOGIN role IN ROLE group (dropped at the end)."""
    made: list[str] = []
    admin = psycopg.connect(dsn, autocommit=True)

    def make(group: str) -> str:
        name = f"pgingest_T qc_{uuid.uuid4().hex[:10]}"  # quoted: mixed case, a space
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(group)
            )
        )
        made.append(name)
        conninfo = psycopg.conninfo.make_conninfo(dsn, user=name, password=None)
        try:
            psycopg.connect(conninfo, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            pytest.skip(f"cannot log in as a new role on this server: {exc}")
        return conninfo

    yield make
    for name in made:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    admin.close()


def test_readers_get_hits_of_their_role_and_cannot_read_the_table(
    conn: psycopg.Connection[Any], login: Callable[[str], str], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    reader_a, reader_b = login("pgingest_reader"), login("pgingest_reader")
    before = requests(fake)
    with psycopg.connect(reader_a, autocommit=True) as a:
        a.execute("SELECT pgingest.embed_query('what readers ask')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute("SELECT * FROM pgingest.query_cache")
    assert requests(fake) == before + 1
    with psycopg.connect(reader_a, autocommit=True) as a2:  # another session of the same role
        a2.execute("SELECT pgingest.embed_query('what readers ask')")
        assert shared_stats(a2) == (1, 0)
    assert requests(fake) == before + 1
    with psycopg.connect(reader_b, autocommit=True) as b:  # another role: its own rows
        b.execute("SELECT pgingest.embed_query('what readers ask')")
        assert shared_stats(b) == (0, 1)
        # It cannot plant a vector under a key of the other role.
        key, planted = conn.execute(
            "SELECT cache_key, embedding::text FROM pgingest.query_cache"
        ).fetchone()  # type: ignore[misc]
        b.execute(
            "SELECT pgingest._query_cache_vector(%s, 'v1', 384, pgingest.embed_query('something else'))",
            (key,),
        )
    assert requests(fake) == before + 3
    assert conn.execute(
        "SELECT count(*) FROM pgingest.query_cache WHERE cache_key = %s AND embedding::text = %s",
        (key, planted),
    ).fetchone() == (2,)  # a's row and b's own, both the endpoint's vector
    assert conn.execute(
        "SELECT count(DISTINCT role_id), count(*) FROM pgingest.query_cache"
    ).fetchone() == (2, 3)
