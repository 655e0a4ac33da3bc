"""The query-vector cache of embed_query / search_text (issue 20, item 4, the per-session part):
the same question asked again in a session costs no request to the embedding endpoint, and a
swap never serves the previous model's vector."""

from __future__ import annotations

from typing import Any

import psycopg

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
    # Another session has its own cache.
    with psycopg.connect(dsn, autocommit=True) as other:
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
    before = requests(fake)
    conn.execute("SELECT pgingest.embed_query('three')")
    conn.execute("SELECT pgingest.embed_query('three')")
    assert requests(fake) == before + 2
