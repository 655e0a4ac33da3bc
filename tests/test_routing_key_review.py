"""The same routing key routes the same way through search_text / hybrid_search_text and through
retrieve() (review 2026-12-07, finding 8): '' and blank keys included, which retrieve() used to
route by the query text (``routing_key or query``) while the SQL functions route by the key."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgingest import integrations
from pgingest.search import route_bucket
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_corpus, register

SHARE = 0.5


def _models(rows: Any) -> set[str]:
    return {r[0] for r in rows}


@pytest.fixture
def shifted(conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer) -> str:
    """v1 active, v2 serving half the keys; returns a query whose own bucket is on the other side
    of the share from ''."""
    register(conn, "v1", fake.url, index_method="none")
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768, index_method="none")
    insert_corpus(conn, 4)
    drain(dsn)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    conn.execute("SELECT pgingest.shift_traffic('v2', %s)", (SHARE,))
    empty_side = route_bucket("") < SHARE
    return next(
        q
        for q in (f"documents question {i}" for i in range(200))
        if (route_bucket(q) < SHARE) != empty_side
    )


@pytest.mark.parametrize("key", [None, "", "   ", " \t", "user-42"])
@pytest.mark.parametrize("query_embedding", ["sql", "client"])
def test_search_text_and_retrieve_route_a_key_alike(
    conn: psycopg.Connection[Any], dsn: str, shifted: str, key: str | None, query_embedding: Any
) -> None:
    q = shifted
    expected = conn.execute("SELECT pgingest.route_model(coalesce(%s, %s))", (key, q)).fetchone()
    assert expected is not None
    by_sql = _models(
        conn.execute(
            "SELECT model_name FROM pgingest.search_text(%s, 3, routing_key => %s)", (q, key)
        )
    )
    by_sql_hybrid = _models(
        conn.execute(
            "SELECT model_name FROM pgingest.hybrid_search_text(%s, 3, routing_key => %s)",
            (q, key),
        )
    )
    hits = integrations.retrieve(dsn, q, k=3, routing_key=key, query_embedding=query_embedding)
    hybrid_hits = integrations.retrieve(
        dsn, q, k=3, routing_key=key, query_embedding=query_embedding, hybrid=True
    )
    assert hits and hybrid_hits
    assert (
        by_sql
        == by_sql_hybrid
        == {h.model for h in hits}
        == {h.model for h in hybrid_hits}
        == {expected[0]}
    )


def test_the_empty_key_and_the_query_text_route_apart(
    conn: psycopg.Connection[Any], shifted: str
) -> None:
    # The case above is only a check if '' and the query land on different models.
    assert _models(
        conn.execute("SELECT pgingest.route_model(k) FROM unnest(%s::text[]) k", (["", shifted],))
    ) == {"v1", "v2"}
