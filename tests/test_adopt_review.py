"""Install review, finding 5: ``pgingest adopt pgai`` and pgai's HNSW ``opclass``.

pgai accepts ``vector_cosine_ops``, ``vector_ip_ops`` and ``vector_l1_ops``. pgingest ranks by
cosine, ip or l2: L1 used to fall through to cosine silently (no ``differs`` line, the dry-run
said nothing), so the adopted model's searches ranked otherwise than pgai's. Now the exact ones
are mapped; L1 is refused (naming the option, as for any setting pgingest cannot map) unless
``--metric`` chooses pgingest's metric explicitly, which the plan then lists as a difference.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgingest import adopt_pgai
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.test_adopt_pgai import NOTES, _adopt, _create_vectorizer, _install_pgai, _one


def _vectorizer_with_hnsw(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer, opclass: str
) -> str:
    _install_pgai(dsn)
    conn.execute(NOTES)
    conn.execute("INSERT INTO public.notes VALUES ('acme', 1, 'Note 1', 'Hello world.')")
    name = _create_vectorizer(conn, fake)
    # An HNSW index needs a TimescaleDB schedule in pgai (not here): the config such an install
    # holds, from pgai's own function (as tests/test_adopt_pgai.py does).
    conn.execute(
        "UPDATE ai.vectorizer SET config = jsonb_set(config, '{indexing}',"
        " ai.indexing_hnsw(opclass => %s, m => 32))",
        (opclass,),
    )
    return name


def test_an_l1_index_is_refused_without_an_explicit_metric(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    name = _vectorizer_with_hnsw(dsn, conn, fake, "vector_l1_ops")
    with pytest.raises(adopt_pgai.Refusal, match="vector_l1_ops") as refused:
        adopt_pgai.plan(conn, name)
    assert refused.value.option == "indexing"
    assert "L1" in str(refused.value) and "--metric" in str(refused.value)
    code, out, err = _adopt(dsn, "--dry-run")
    assert code == 3, out + err
    assert f"refused: vectorizer {name}: indexing:" in err
    assert "L1" in err
    code, _out, err = _adopt(dsn)
    assert code == 3, err
    assert _one(conn, "SELECT count(*) FROM pgingest.models") == 0
    assert _one(conn, "SELECT count(*) FROM pgingest.sources WHERE id <> 0") == 0
    assert _one(conn, "SELECT bool_and(NOT disabled) FROM ai.vectorizer")


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_an_explicit_metric_adopts_an_l1_index_and_says_so(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer, metric: str
) -> None:
    _vectorizer_with_hnsw(dsn, conn, fake, "vector_l1_ops")
    code, out, err = _adopt(dsn, "--dry-run", "--json", "--metric", metric)
    assert code == 0, err
    (p,) = json.loads(out)
    assert p["metric"] == metric
    assert p["index_options"] == {"m": 32}
    differs = [d for d in p["differences"] if d.startswith("indexing:")]
    assert len(differs) == 1
    assert "vector_l1_ops" in differs[0] and "L1" in differs[0] and metric in differs[0]
    code, out, err = _adopt(dsn, "--dry-run", "--metric", metric)
    assert code == 0, err
    assert any(
        line.startswith("  differs  indexing:") and "L1" in line for line in out.splitlines()
    )


@pytest.mark.parametrize(
    ("opclass", "metric"), [("vector_cosine_ops", "cosine"), ("vector_ip_ops", "ip")]
)
def test_pgai_s_other_opclasses_map_exactly(
    dsn: str, conn: psycopg.Connection[Any], fake: FakeEmbeddingServer, opclass: str, metric: str
) -> None:
    name = _vectorizer_with_hnsw(dsn, conn, fake, opclass)
    p = adopt_pgai.plan(conn, name)
    assert p.metric == metric
    assert not [d for d in p.differences if d.startswith("indexing:")]
    # --metric that changes pgai's metric is a difference too.
    other = "l2"
    p = adopt_pgai.plan(conn, name, metric=other)
    assert p.metric == other
    assert [d for d in p.differences if d.startswith("indexing:") and other in d]
    with pytest.raises(ValueError, match="--metric"):
        adopt_pgai.plan(conn, name, metric="l1")
