"""The real model on the real corpus: each demo query finds the document it was written from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgingest.demo import corpus
from tests.helpers import drain, register

pytestmark = pytest.mark.local_model


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    from pgingest import local_model

    with local_model.LocalModelServer(local_model.load_encoder(), "127.0.0.1", 0) as srv:
        yield srv.url


def test_demo_queries_rank_their_document_in_the_top_5(
    conn: psycopg.Connection[Any], dsn: str, model_url: str
) -> None:
    register(
        conn, "minilm", model_url, model_id="all-MiniLM-L6-v2", dimensions=384, max_input_tokens=256
    )
    wanted = {q.expected_key for q in corpus.DEMO_QUERIES}
    docs = [d for i, d in enumerate(corpus.iter_corpus()) if d.key in wanted or i % 10 == 0]
    assert wanted <= {d.key for d in docs}
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)",
            [(d.key, d.title, d.body) for d in docs],
        )
    drain(dsn, in_flight=2)
    assert conn.execute("SELECT count(*) FROM pgingest.dead_letters").fetchone() == (0,)
    for q in corpus.DEMO_QUERIES:
        keys = [
            r[0]
            for r in conn.execute(
                "SELECT doc_key FROM pgingest.search_text(%s, 5, per_document => true)", (q.query,)
            )
        ]
        assert q.expected_key in keys, (q.query, keys)
