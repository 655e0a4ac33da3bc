"""chunks.tsv counts a word that ends a sentence once (review 2026-12-07, finding 6).

The dotted-names pass of set_text_search_config (the parts of concurrent.futures.process, which the
parser keeps as one token) kept every token holding a dot until migration 0026: "quuxotron." was
split again and its word added a second time, so BM25 and ts_rank_cd ranked by punctuation. Now
only names with an inner dot give their parts; migration 0026 rebuilds the column of an install
that has it (the upgrade test installs the last commit without 0026, as tests/test_upgrade.py does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import install
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, register
from tests.test_upgrade import checkout, history, old_install, old_worker, tree

MIGRATION = "migrations/0026_text_search_dotted_names.sql"

# Texts without a dotted name: their chunk's tsv is the words of the parser, nothing added.
NO_DOTTED_NAME = [
    "We calibrate daily and log the quuxotron.",
    "Calibrate it (see the quuxotron.) and log it.",
    'He said "log the quuxotron." twice... Then left!',
    "a. b. c. End... .hidden and trailing. ",
    "Line one ends here.\nLine two ends here.\tTab.",
]

# Each counts quuxotron once: the first is the reference.
SAME_COUNT = [
    "log the quuxotron",
    "log the quuxotron.",
    "log the (quuxotron.)",
    "log the quuxotron...",
]


def _enable(conn: psycopg.Connection[Any], fake: FakeEmbeddingServer) -> None:
    register(conn, "v1", fake.url, index_method="none")
    conn.execute("SELECT pgingest.set_text_search_config('english')")


def _tsv(conn: psycopg.Connection[Any], key: str) -> str:
    row = conn.execute(
        "SELECT string_agg(c.tsv::text, ' ' ORDER BY c.ordinal) FROM pgingest.chunks AS c"
        " JOIN pgingest.documents AS d ON d.id = c.doc_id WHERE d.key = %s",
        (key,),
    ).fetchone()
    assert row is not None and row[0] is not None, key
    return str(row[0])


def _positions(conn: psycopg.Connection[Any], key: str, lexeme: str) -> int:
    """How many times ``lexeme`` is in the tsv of the chunks of document ``key``."""
    row = conn.execute(
        "SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 0)), 0)"
        " FROM pgingest.chunks AS c JOIN pgingest.documents AS d ON d.id = c.doc_id,"
        " unnest(c.tsv) AS u WHERE d.key = %s AND u.lexeme = %s",
        (key, lexeme),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _text_ranks(conn: psycopg.Connection[Any], query: str, ranking: str) -> list[str]:
    """The documents of the text side of hybrid_search, best first (the vector side weighs 0)."""
    vec = conn.execute("SELECT embedding::text FROM pgingest.store_v1 LIMIT 1").fetchone()
    assert vec is not None
    rows = conn.execute(
        "SELECT doc_key FROM pgingest.hybrid_search(%s, %s::vector, 10, vector_weight => 0,"
        " text_weight => 1, text_ranking => %s) WHERE text_rank IS NOT NULL ORDER BY text_rank",
        (query, vec[0], ranking),
    ).fetchall()
    return [r[0] for r in rows]


def test_a_text_without_dotted_names_gets_only_the_parsers_words(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _enable(conn, fake)
    insert_docs(conn, [(f"t{i}", None, t) for i, t in enumerate(NO_DOTTED_NAME)])
    drain(dsn)
    rows = conn.execute(
        "SELECT d.key, c.tsv = to_tsvector('english', c.content), c.tsv::text"
        " FROM pgingest.chunks AS c JOIN pgingest.documents AS d ON d.id = c.doc_id ORDER BY 1"
    ).fetchall()
    assert len(rows) == len(NO_DOTTED_NAME)
    assert [r for r in rows if not r[1]] == []


def test_a_sentence_final_word_counts_once(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _enable(conn, fake)
    insert_docs(conn, [(f"s{i}", None, t) for i, t in enumerate(SAME_COUNT)])
    drain(dsn)
    assert [_positions(conn, f"s{i}", "quuxotron") for i in range(len(SAME_COUNT))] == [1] * len(
        SAME_COUNT
    )
    assert len({_tsv(conn, f"s{i}") for i in range(len(SAME_COUNT))}) == 1
    ranks = conn.execute(
        "SELECT ts_rank(c.tsv, q), ts_rank_cd(c.tsv, q)"
        " FROM pgingest.chunks AS c, to_tsquery('english', 'quuxotron') AS q ORDER BY c.doc_id"
    ).fetchall()
    assert len(set(ranks)) == 1, ranks


def test_bm25_and_ts_rank_cd_do_not_rank_by_the_full_stop(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    # The same words, once at the end of a sentence: equal scores, so the text side keeps the
    # order of its tie-break (doc_id), the sentence-final one second. Before 0026 it came first.
    _enable(conn, fake)
    insert_docs(
        conn,
        [
            ("mid", "A", "We calibrate the quuxotron daily and log it"),
            ("end", "B", "We calibrate daily and log the quuxotron."),
            ("unrelated", "C", "Nothing to see here"),
        ],
    )
    drain(dsn)
    assert _positions(conn, "end", "quuxotron") == _positions(conn, "mid", "quuxotron") == 1
    for ranking in ("bm25", "ts_rank_cd"):
        assert _text_ranks(conn, "quuxotron", ranking) == ["mid", "end"], ranking


def test_dotted_names_are_still_found_by_their_parts(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    _enable(conn, fake)
    insert_docs(
        conn,
        [
            (
                "dotted",
                "Pools",
                "The pool raises concurrent.futures.process.BrokenProcessPool. Call "
                "os.path.join(a, b) or my_mod.func_name() and see (asyncio.Queue).",
            ),
            ("other", "Other", "A process pool of workers, and a queue."),
        ],
    )
    drain(dsn)
    tsv = _tsv(conn, "dotted")
    # The whole name (the parser's token) and its parts, each part once.
    assert "'concurrent.futures.process.brokenprocesspool'" in tsv
    for part in ("brokenprocesspool", "concurr", "futur", "join", "path", "func", "asyncio"):
        assert _positions(conn, "dotted", part) == 1, (part, tsv)
    # Words outside a dotted name are not added again.
    for word in ("pool", "call", "rais"):
        assert _positions(conn, "dotted", word) == 1, (word, tsv)
    for ranking in ("bm25", "ts_rank_cd"):
        assert _text_ranks(conn, "BrokenProcessPool", ranking) == ["dotted"]
        assert _text_ranks(conn, "asyncio", ranking) == ["dotted"]
        assert _text_ranks(conn, "futures", ranking) == ["dotted"]


# --------------------------------------------------------------------------- the upgrade


def _commit_before_the_fix() -> str:
    """The newest commit without migration 0026 (HEAD while it is not committed)."""
    for c in reversed(history()):
        if MIGRATION not in tree(c):
            return c
    pytest.fail(f"every commit has {MIGRATION}")


def _expression(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef AS d JOIN pg_attribute AS a"
        " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        " WHERE d.adrelid = 'pgingest.chunks'::regclass AND a.attname = 'tsv'"
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.slow
def test_an_upgrade_rebuilds_the_old_column(
    empty_database: Any, fake: FakeEmbeddingServer, tmp_path: Path
) -> None:
    commit = _commit_before_the_fix()
    src = checkout(commit, tmp_path / commit[:12])
    dsn = empty_database("tsv_upgrade")
    old_install(src, dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        _enable(c, fake)
        insert_docs(
            c,
            [
                ("mid", "A", "We calibrate the quuxotron daily and log it"),
                ("end", "B", "We calibrate daily and log the quuxotron."),
                ("dotted", "C", "It raises concurrent.futures.process.BrokenProcessPool."),
            ],
        )
        old_worker(src, dsn)
        assert _positions(c, "end", "quuxotron") == 2  # the old column's double count
        old_expression = _expression(c)

        install.install(dsn)

        new_expression = _expression(c)
        assert new_expression != old_expression
        assert _positions(c, "end", "quuxotron") == 1
        assert _positions(c, "dotted", "brokenprocesspool") == 1
        assert c.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'pgingest'"
            " AND indexname = 'chunks_tsv' AND indexdef LIKE '%USING gin (tsv)'"
        ).fetchone() == (1,)
        for ranking in ("bm25", "ts_rank_cd"):
            assert _text_ranks(c, "quuxotron", ranking) == ["mid", "end"]
            assert _text_ranks(c, "BrokenProcessPool", ranking) == ["dotted"]
        # The same column as set_text_search_config makes now.
        before = c.execute("SELECT doc_id, ordinal, tsv::text FROM pgingest.chunks ORDER BY 1, 2")
        rows = before.fetchall()
        c.execute("SELECT pgingest.set_text_search_config('english')")
        assert _expression(c) == new_expression
        assert (
            c.execute(
                "SELECT doc_id, ordinal, tsv::text FROM pgingest.chunks ORDER BY 1, 2"
            ).fetchall()
            == rows
        )


def test_an_upgrade_without_full_text_adds_no_column(empty_database: Any) -> None:
    dsn = empty_database("tsv_off")
    install.install(dsn, upto="0025_source_rows_without_fk")
    install.install(dsn)
    with psycopg.connect(dsn) as c:
        assert c.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pgingest.chunks'::regclass"
            " AND attname = 'tsv' AND NOT attisdropped"
        ).fetchone() == (0,)
