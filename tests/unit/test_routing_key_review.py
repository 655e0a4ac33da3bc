"""retrieve() routes by the key search_text routes by (review 2026-12-07, finding 8).

search_text and hybrid_search_text ask ``pgingest.route_model(coalesce(routing_key, query))``:
only a NULL key falls back to the query text, and '' (or a blank key) is a key like any other.
retrieve() took ``routing_key or query`` and routed '' by the query text. No database: a pool-like
object hands retrieve() a fake connection that records what route_model is asked.
(tests/test_routing_key_review.py compares the two APIs on a database.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pgingest import integrations
from pgingest.integrations import _routing_key
from pgingest.search import route_bucket

QUERY = "how are documents chunked"


def sql_coalesce(routing_key: str | None, query: str) -> str:
    """What plpython/010_plpython.sql's search_text passes to route_model."""
    return query if routing_key is None else routing_key


class FakeCursor:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.last = ""

    def execute(self, query: Any, params: Any = None) -> FakeCursor:
        self.last = str(query)
        self.log.append((self.last, params))
        return self

    def fetchone(self) -> tuple[str]:
        assert "route_model" in self.last, self.last
        return ("v1",)

    def fetchall(self) -> list[Any]:
        return []


class FakeConnection:
    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def cursor(self, row_factory: Any = None) -> FakeCursor:
        return FakeCursor(self.log)


class FakePool:
    def __init__(self) -> None:
        self.conn = FakeConnection()

    @contextmanager
    def connection(self) -> Iterator[FakeConnection]:
        yield self.conn


KEYS: list[str | None] = [None, "", "   ", "\t", "user-42", QUERY]


@pytest.mark.parametrize("key", KEYS)
def test_the_key_is_the_one_search_text_routes_by(key: str | None) -> None:
    assert _routing_key(key, QUERY) == sql_coalesce(key, QUERY)


@pytest.mark.parametrize("key", KEYS)
def test_retrieve_asks_route_model_with_that_key(key: str | None) -> None:
    pool = FakePool()
    assert integrations.retrieve(pool, QUERY, routing_key=key, query_embedding="sql") == []
    routed = [params for q, params in pool.conn.log if "route_model" in q]
    assert routed == [(sql_coalesce(key, QUERY),)]


def test_an_empty_key_is_not_the_query_text() -> None:
    # The reviewer's case: '' and the query fall on either side of a share of 0.5, so routing ''
    # by the query text sent the search to the other model.
    assert route_bucket("") != route_bucket(QUERY)
    pool = FakePool()
    integrations.retrieve(pool, QUERY, routing_key="", query_embedding="sql")
    assert [p for q, p in pool.conn.log if "route_model" in q] == [("",)]


def test_a_named_model_is_not_routed() -> None:
    pool = FakePool()
    integrations.retrieve(pool, QUERY, model="v2", routing_key="", query_embedding="sql")
    assert [q for q, _ in pool.conn.log if "route_model" in q] == []
