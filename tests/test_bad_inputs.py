"""A catalogue of bad inputs, each with the behaviour a user expects.

Three outcomes, never a fourth: refused at INSERT with an error naming the constraint; accepted
and embedded; or accepted and dead-lettered with a readable reason (never lost, never crashing
the worker, never blocking the other documents). Transient provider faults are retried, and end
in a dead letter only when they never stop. docs/reliability.md lists the same cases.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from pgingest import chunking, db, providers, worker
from pgingest.testing.fake_provider import FakeEmbeddingServer, RequestInfo
from tests.helpers import drain, insert_corpus, make_body, queue_count, register, settings

# -------------------------------------------------------------------------------- helpers


def insert(conn: psycopg.Connection[Any], key: str, body: str, title: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s) RETURNING id",
        (key, title, body),
    ).fetchone()
    assert row is not None
    return int(row[0])


def letters(conn: psycopg.Connection[Any]) -> dict[str | None, tuple[str, str]]:
    """doc_key -> (error_class, error_message) of every dead letter."""
    rows = conn.execute(
        "SELECT doc_key, error_class, error_message FROM pgingest.dead_letters"
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def count(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def assert_embedded(conn: psycopg.Connection[Any], keys: Sequence[str] | None = None) -> None:
    """The documents (all, or ``keys``) have exactly the predicted chunks of their current
    version, with 384-dim unit vectors, and an embedding_state naming that version."""
    rows = conn.execute(
        "SELECT id, key, title, body, content_hash FROM pgingest.documents"
        " WHERE %(keys)s::text[] IS NULL OR key = ANY (%(keys)s) ORDER BY id",
        {"keys": None if keys is None else list(keys)},
    ).fetchall()
    assert rows, "no documents to check"
    if keys is not None:
        assert {r[1] for r in rows} == set(keys)
    predicted = chunking.chunk_documents([(r[2], r[3]) for r in rows], chunking.ChunkerConfig())
    for (doc_id, key, _t, _b, content_hash), chunks in zip(rows, predicted, strict=True):
        got = conn.execute(
            "SELECT c.ordinal, c.content, c.char_start, c.char_end, c.token_count,"
            " vector_dims(s.embedding), vector_norm(s.embedding)"
            " FROM pgingest.chunks AS c JOIN pgingest.store_v1 AS s ON s.doc_id = c.doc_id"
            " AND s.ordinal = c.ordinal AND s.chunk_hash = c.chunk_hash"
            " WHERE c.doc_id = %s ORDER BY c.ordinal",
            (doc_id,),
        ).fetchall()
        assert [g[:5] for g in got] == [
            (c.ordinal, c.text, c.char_start, c.char_end, c.token_count) for c in chunks
        ], key
        assert all(g[5] == 384 and abs(g[6] - 1.0) < 1e-5 for g in got), key
        state = conn.execute(
            "SELECT content_hash, chunk_count FROM pgingest.embedding_state"
            " WHERE doc_id = %s AND model = 'v1'",
            (doc_id,),
        ).fetchone()
        assert state == (content_hash, len(chunks)), key


def assert_not_embedded(conn: psycopg.Connection[Any], key: str) -> None:
    assert (
        count(
            conn,
            "SELECT count(*) FROM pgingest.store_v1 c JOIN pgingest.documents d ON d.id = c.doc_id"
            " WHERE d.key = %s",
            (key,),
        )
        == 0
    )
    assert (
        count(
            conn,
            "SELECT count(*) FROM pgingest.embedding_state s JOIN pgingest.documents d"
            " ON d.id = s.doc_id WHERE d.key = %s",
            (key,),
        )
        == 0
    )


def fragile(timeout: float = 0.5) -> Any:
    """A provider_factory: no retries inside the provider, so every fault spends an attempt."""

    def factory(m: db.Model) -> providers.EmbeddingProvider:
        return providers.OpenAICompatibleProvider(
            base_url=m.base_url,
            model=m.model_id,
            dimensions=m.dimensions,
            timeout=timeout,
            max_retries=0,
            backoff_base=0.01,
        )

    return factory


# ================================================================================ refused at INSERT


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        pytest.param("body", "", "documents_body_not_blank", id="empty-body"),
        pytest.param("body", " \t\r\n\f  \n", "documents_body_not_blank", id="whitespace-body"),
        pytest.param("key", "   ", "documents_key_not_blank", id="blank-key"),
        pytest.param("key", "k" * 1025, "documents_key_length", id="key-over-1024-bytes"),
        pytest.param("title", "t" * 5000, "documents_title_length", id="title-5000-chars"),
        # 1,100 characters, but 4,400 bytes: the limit is in bytes.
        pytest.param(
            "title", "\U0001f600" * 1100, "documents_title_length", id="title-emoji-bytes"
        ),
    ],
)
def test_invalid_text_is_refused_at_insert_naming_the_constraint(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    column: str,
    value: str,
    constraint: str,
) -> None:
    register(conn, "v1", fake.url)
    row = {"key": "k1", "title": "A title", "body": "A body.", column: value}
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(
            "INSERT INTO pgingest.documents (key, title, body) VALUES (%(key)s, %(title)s, %(body)s)",
            row,
        )
    assert exc.value.diag.constraint_name == constraint
    assert constraint in str(exc.value)
    assert count(conn, "SELECT count(*) FROM pgingest.documents") == 0
    assert queue_count(conn, "v1") == 0  # nothing half-queued


def test_the_blank_body_check_means_whitespace_not_the_letter_v(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('v', 'v')")
    with pytest.raises(psycopg.errors.CheckViolation, match="documents_body_not_blank"):
        conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('vt', %s)", ("\v\v",))


@pytest.mark.parametrize("column", ["key", "body", "metadata"])
def test_null_required_column_is_refused_at_insert(
    conn: psycopg.Connection[Any], column: str
) -> None:
    row: dict[str, Any] = {"key": "k1", "body": "A body.", "metadata": Jsonb({})}
    row[column] = None
    with pytest.raises(psycopg.errors.NotNullViolation) as exc:
        conn.execute(
            "INSERT INTO pgingest.documents (key, body, metadata)"
            " VALUES (%(key)s, %(body)s, %(metadata)s)",
            row,
        )
    assert exc.value.diag.column_name == column


@pytest.mark.parametrize("metadata", ["[1, 2]", '"a string"', "42", "true", "null"])
def test_metadata_that_is_not_an_object_is_refused(
    conn: psycopg.Connection[Any], metadata: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(
            "INSERT INTO pgingest.documents (key, body, metadata) VALUES ('k', 'b', %s::jsonb)",
            (metadata,),
        )
    assert exc.value.diag.constraint_name == "documents_metadata_is_object"


def test_metadata_that_is_not_json_is_refused(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(
        psycopg.errors.InvalidTextRepresentation, match="invalid input syntax for type json"
    ):
        conn.execute(
            "INSERT INTO pgingest.documents (key, body, metadata) VALUES ('k', 'b', %s::jsonb)",
            ("{lang: en}",),
        )


def test_a_50_mb_body_is_refused_by_the_size_limit(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    """Built server-side with repeat(): nothing crosses the wire, and the error stays short
    (PostgreSQL cuts each value in the failing-row detail to 64 bytes)."""
    register(conn, "v1", fake.url)
    with pytest.raises(psycopg.errors.CheckViolation) as exc:
        conn.execute(
            "INSERT INTO pgingest.documents (key, body) VALUES ('big', repeat('x', 50 * 1024 * 1024))"
        )
    assert exc.value.diag.constraint_name == "documents_body_size"
    assert len(str(exc.value)) + len(exc.value.diag.message_detail or "") < 2000
    assert queue_count(conn, "v1") == 0


def test_the_body_limit_is_10_mib_of_utf8_bytes(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('at', repeat('x', 10485760))")
    with pytest.raises(psycopg.errors.CheckViolation, match="documents_body_size"):
        conn.execute(
            "INSERT INTO pgingest.documents (key, body) VALUES ('over', repeat('x', 10485761))"
        )
    # 5 Mi characters of two bytes each, plus one: under 10 Mi characters, over 10 MiB.
    with pytest.raises(psycopg.errors.CheckViolation, match="documents_body_size"):
        conn.execute(
            "INSERT INTO pgingest.documents (key, body) VALUES ('wide', repeat('é', 5242881))"
        )


def test_a_colliding_key_is_refused_and_the_whole_statement_rolls_back(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "faq-1", "The original text.")
    with pytest.raises(psycopg.errors.UniqueViolation) as exc:
        conn.execute(
            "INSERT INTO pgingest.documents (key, body) VALUES ('faq-2', 'new'), ('faq-1', 'dup')"
        )
    assert exc.value.diag.constraint_name == "documents_key_key"
    assert "faq-1" in (exc.value.diag.message_detail or "")
    assert [r[0] for r in conn.execute("SELECT key FROM pgingest.documents")] == ["faq-1"]
    assert queue_count(conn, "v1") == 1  # only the original's message
    # The way to replace a document by key is an upsert: it queues the new version.
    conn.execute(
        "INSERT INTO pgingest.documents (key, body) VALUES ('faq-1', 'The new text.')"
        " ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body"
    )
    drain(dsn)
    assert [r[0] for r in conn.execute("SELECT content FROM pgingest.chunks")] == ["The new text."]
    assert letters(conn) == {}


def test_nul_characters_cannot_reach_a_text_column(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.DataError, match="NUL"):  # refused by psycopg, client side
        conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('k', %s)", ("a\x00b",))
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="null character not permitted"):
        conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('k', 'a' || chr(0))")
    assert count(conn, "SELECT count(*) FROM pgingest.documents") == 0


def test_a_lone_surrogate_cannot_be_encoded(conn: psycopg.Connection[Any]) -> None:
    """Not UTF-8: the driver refuses it before anything is sent."""
    with pytest.raises(UnicodeEncodeError):
        conn.execute("INSERT INTO pgingest.documents (key, body) VALUES ('k', %s)", ("a\ud800b",))
    assert count(conn, "SELECT count(*) FROM pgingest.documents") == 0


# ================================================================================ accepted, embedded


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            "Bell\x07 escape\x1b[31m red\x1b[0m, backspace\x08, DEL\x7f, form\x0cfeed, "
            "unit\x1fseparator. A second sentence about vectors.",
            id="control-characters",
        ),
        pytest.param(
            "English text. Ελληνικά κείμενα. Русский текст. 日本語のテキストです。"
            "中文文本。한국어 텍스트. עברית מימין לשמאל. العربية من اليمين إلى اليسار. "
            "हिन्दी पाठ। Emoji 👩‍👩‍👧‍👦 🇫🇷 1️⃣ and e\u0301 combining marks.",
            id="mixed-scripts-emoji-rtl",
        ),
    ],
)
def test_unusual_but_valid_text_is_embedded(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, body: str
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    insert(conn, "odd", body, title="Odd \u202eTitle\u202c")
    drain(dsn)
    assert letters(conn) == {}
    assert_embedded(conn)
    assert queue_count(conn, "v1") == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(" ".join(f"word{i % 997} sentence." for i in range(20000)), id="40k-words"),
        pytest.param("QUJD" * 25000, id="100k-char-single-word"),
        pytest.param("\n".join(["x" * 300] * 100), id="long-lines-no-spaces"),
    ],
)
def test_text_longer_than_the_context_is_split_into_chunks_within_the_limit(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, body: str
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "long", body, title="A long document")
    drain(dsn)
    assert letters(conn) == {}
    assert_embedded(conn)
    cfg = chunking.ChunkerConfig()
    tok = chunking.get_tokenizer(cfg.tokenizer)
    max_input = count(conn, "SELECT max_input_tokens FROM pgingest.models WHERE name = 'v1'")
    rows = conn.execute(
        "SELECT c.content, c.token_count FROM pgingest.chunks c ORDER BY ordinal"
    ).fetchall()
    assert len(rows) > 5
    for content, tokens in rows:
        assert tokens <= cfg.max_tokens <= max_input
        assert tok.count_input(f"A long document\n\n{content}") <= cfg.max_tokens


def test_a_title_at_the_byte_limit_is_embedded_with_room_for_the_body(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "t", make_body(1), title="Title words " * 341 + "end.")  # 4,096 bytes
    drain(dsn)
    assert letters(conn) == {}
    assert_embedded(conn)
    assert all(r[0] <= 200 for r in conn.execute("SELECT token_count FROM pgingest.chunks"))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("\u200b\u200c\u200d\ufeff\u2060" * 20, id="zero-width-only"),
        # Not caught by the CHECK (it trims ASCII whitespace only): dead-lettered instead.
        pytest.param("\u00a0\u2003\u3000\u2028" * 5, id="unicode-spaces-only"),
    ],
)
def test_a_body_with_nothing_to_embed_is_dead_lettered_as_empty(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    worker_log: pytest.LogCaptureFixture,
    body: str,
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    insert(conn, "blank", body)
    drain(dsn)
    assert letters(conn) == {"blank": ("empty_document", "the document has no text to embed")}
    assert_embedded(conn, [f"doc-{i}" for i in range(5)])
    assert_not_embedded(conn, "blank")
    assert queue_count(conn, "v1") == 0
    assert any(
        r.getMessage() == "document dead-lettered" and getattr(r, "doc_key", None) == "blank"
        for r in worker_log.records
    )


def test_a_document_with_too_many_chunks_is_dead_lettered(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 3)
    insert(conn, "huge", make_body(7, sentences=200))
    drain(dsn, max_chunks_per_document=10)
    (error_class, message) = letters(conn)["huge"]
    assert error_class == "too_many_chunks"
    assert "exceed the limit of 10" in message
    assert len(letters(conn)) == 1
    assert fake.stats()["inputs"] > 0  # the others were embedded
    assert_embedded(conn, ["doc-0", "doc-1", "doc-2"])


# ================================================================================ bad vectors


@pytest.mark.parametrize(
    ("marker", "error_class", "fragment"),
    [
        ("__NAN__", "invalid_vector_non_finite", "non-finite value nan"),
        ("__INF__", "invalid_vector_non_finite", "non-finite value inf"),
        ("__ZERO__", "invalid_vector_zero_vector", "zero vector"),
        ("__DIM__", "invalid_vector_dimension", r"383 dimensions.*expects 384"),
        ("__REJECT__", "rejected_input", "HTTP 400"),
    ],
)
def test_one_bad_vector_dead_letters_its_document_only(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    marker: str,
    error_class: str,
    fragment: str,
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 6)  # one batch, one request: the bad input travels with good ones
    insert(conn, "bad", f"This text carries {marker} in it.")
    drain(dsn)
    got = letters(conn)
    assert set(got) == {"bad"}
    assert got["bad"][0] == error_class
    assert re.search(fragment, got["bad"][1]), got["bad"][1]
    assert_embedded(conn, [f"doc-{i}" for i in range(6)])
    assert_not_embedded(conn, "bad")
    # Fixing the document clears the letter and embeds the new version.
    conn.execute("UPDATE pgingest.documents SET body = 'A clean text.' WHERE key = 'bad'")
    drain(dsn)
    assert letters(conn) == {}
    assert_embedded(conn)


@pytest.mark.parametrize(
    ("mode", "error_class", "fragment"),
    [
        ("wrong_dims", "invalid_vector_dimension", r"385 dimensions.*expects 384"),
        ("nan", "invalid_vector_non_finite", "nan"),
        ("inf", "invalid_vector_non_finite", "inf"),
        ("zero", "invalid_vector_zero_vector", "zero vector"),
    ],
)
def test_a_provider_answering_bad_vectors_dead_letters_and_requeue_recovers(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    mode: str,
    error_class: str,
    fragment: str,
) -> None:
    """Every vector of every answer is bad (a misconfigured or broken model): each document is
    dead-lettered with the reason, none is written, and requeue_dead_letters() after the
    provider is fixed embeds them all."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 8)
    fake.configure(rates={mode: 1.0})
    drain(dsn)
    got = letters(conn)
    assert len(got) == 8
    assert {v[0] for v in got.values()} == {error_class}
    assert all(re.search(fragment, v[1]) for v in got.values()), got
    assert count(conn, "SELECT count(*) FROM pgingest.chunks") == 0
    fake.configure(rates={})
    assert (
        count(conn, "SELECT pgingest.requeue_dead_letters(p_error_class => %s)", (error_class,))
        == 8
    )
    drain(dsn)
    assert letters(conn) == {}
    assert_embedded(conn)


# ================================================================================ transient faults

TRANSIENT_MODES = [
    "bad_gateway",  # a 502 HTML error page
    "truncated",  # a 200 with JSON cut in half
    "incomplete",  # Content-Length promises more than is sent
    "error_body",  # a 200 whose body is {"error": ...}
    "reset",  # TCP RST, no answer
    "trickle",  # a 200 whose body arrives a byte at a time, past the timeout
    "timeout",  # no answer at all
    "fewer",  # fewer vectors than inputs
    "more",  # more vectors than inputs
    "bad_index",  # a duplicated index in data[]
    "server_error",  # 500
    "unavailable",  # 503
]


@pytest.mark.parametrize("mode", TRANSIENT_MODES)
def test_a_transient_fault_is_retried_and_everything_is_embedded(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, mode: str
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    fake.configure(hang_s=3)
    fake.fail_next(mode, 2)
    drain(dsn, http_timeout=0.5, request_max_inputs=8)
    assert fake.stats()["by_mode"].get(mode) == 2
    assert letters(conn) == {}
    assert_embedded(conn)
    assert queue_count(conn, "v1") == 0


@pytest.mark.parametrize(
    ("mode", "error_class", "fragment"),
    [
        ("bad_gateway", "server_error", "502 Bad Gateway"),
        ("truncated", "bad_response", "not valid JSON"),
        ("error_body", "bad_response", "200 with an error body"),
        ("reset", "connection", "Connection reset by peer"),
        ("trickle", "timeout", "answer not complete within 0.5s"),
        ("timeout", "timeout", "no answer within 0.5s"),
        ("fewer", "bad_response", "0 vectors for 1 inputs"),
        ("more", "bad_response", "2 vectors for 1 inputs"),
    ],
)
def test_a_fault_that_never_stops_ends_in_a_dead_letter_after_max_attempts(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    mode: str,
    error_class: str,
    fragment: str,
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "doomed", "A short text that will never be embedded.")
    fake.configure(rates={mode: 1.0}, hang_s=3)
    drain(dsn, max_attempts=2, provider_factory=fragile(timeout=0.5))
    (got_class, message) = letters(conn)["doomed"]
    assert got_class == error_class
    assert fragment in message
    assert "(gave up after 2 attempts)" in message
    attempts = conn.execute("SELECT attempts FROM pgingest.dead_letters").fetchone()
    assert attempts == (2,)
    assert fake.stats()["requests"] == 2  # one request per attempt: bounded
    assert queue_count(conn, "v1") == 0
    # Once the provider recovers, requeueing that class embeds it.
    fake.configure(rates={})
    conn.execute("SELECT pgingest.requeue_dead_letters(p_error_class => %s)", (error_class,))
    drain(dsn)
    assert_embedded(conn)


def test_a_413_is_split_into_smaller_requests(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The provider's request size limit (413): the request is bisected until it fits."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 12)
    fake.configure(max_body_bytes=4000)  # a few inputs per request at most
    drain(dsn)
    assert fake.stats()["by_status"].get(413, 0) > 0
    assert letters(conn) == {}
    assert_embedded(conn)


def test_an_input_the_provider_always_finds_too_large_is_dead_lettered(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "big", "Always too large for this provider.")
    fake.configure(rates={"too_large": 1.0})
    drain(dsn)
    assert letters(conn) == {
        "big": ("rejected_input", "rejected_input (HTTP 413): Request entity too large.")
    }


# ================================================================================ model unavailable


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("auth", "auth (HTTP 401)"),
        ("forbidden", "auth (HTTP 403)"),
        ("quota", "insufficient_quota (HTTP 429)"),
        ("bad_param", "invalid_request (HTTP 400)"),
    ],
)
def test_a_provider_refusing_the_model_pauses_it_and_dead_letters_nothing(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, mode: str, reason: str
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 10)
    fake.configure(rates={mode: 1.0})
    drain(dsn)  # returns: a paused model is not a crash
    row = conn.execute("SELECT paused, paused_reason FROM pgingest.models").fetchone()
    assert row is not None and row[0] is True
    assert reason in row[1]
    assert letters(conn) == {}
    assert queue_count(conn, "v1") == 10  # every message kept
    assert count(conn, "SELECT count(*) FROM pgingest.embedding_state") == 0
    # Once the provider is fixed, the worker's probe resumes the model by itself, and a
    # --drain run goes on to drain it.
    fake.configure(rates={})
    drain(dsn)
    assert conn.execute("SELECT paused FROM pgingest.models").fetchone() == (False,)
    assert_embedded(conn)


def test_a_model_name_the_provider_does_not_know_pauses_the_model(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register(conn, "v1", fake.url, model_id="text-embedding-nope")
    insert_corpus(conn, 5)
    drain(dsn)
    row = conn.execute("SELECT paused, paused_reason FROM pgingest.models").fetchone()
    assert row is not None and row[0] is True
    assert "model_not_found (HTTP 404)" in row[1] and "text-embedding-nope" in row[1]
    assert letters(conn) == {}
    assert queue_count(conn, "v1") == 5
    # The operator fixes the model id; the worker's probe resumes the model.
    conn.execute("UPDATE pgingest.models SET model_id = 'fake-384' WHERE name = 'v1'")
    drain(dsn)
    assert_embedded(conn)


def test_a_wrong_api_key_pauses_without_leaking_it(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEmbeddingServer(api_key="sk-right-key-0123456789") as fake:
        fake.configure(echo_key_in_errors=True)  # a provider that repeats the key it got
        register(conn, "v1", fake.url, api_key_env="PGINGEST_TEST_KEY")
        insert_corpus(conn, 5)
        monkeypatch.setenv("PGINGEST_TEST_KEY", "sk-wrong-key-9876543210")
        drain(dsn)
    row = conn.execute("SELECT paused, paused_reason FROM pgingest.models").fetchone()
    assert row is not None and row[0] is True and "auth (HTTP 401)" in row[1]
    assert "sk-wrong-key-9876543210" not in row[1]
    assert letters(conn) == {}
    assert queue_count(conn, "v1") == 5


# ================================================================================ queue messages

GOOD_HASH = "0" * 64


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("oops", id="a-json-string"),
        pytest.param(42, id="a-number"),
        pytest.param([1, 2, 3], id="an-array"),
        pytest.param(None, id="json-null"),
        pytest.param({}, id="empty-object"),
        pytest.param({"doc_id": 1}, id="missing-hash"),
        pytest.param({"hash": GOOD_HASH}, id="missing-doc-id"),
        pytest.param({"doc_id": "abc", "hash": GOOD_HASH}, id="doc-id-not-a-number"),
        pytest.param({"doc_id": -5, "hash": GOOD_HASH}, id="negative-doc-id"),
        pytest.param({"doc_id": 10**20, "hash": GOOD_HASH}, id="doc-id-too-large"),
        pytest.param({"doc_id": 1, "hash": "zz" * 32}, id="hash-not-hex"),
        pytest.param({"doc_id": 1, "hash": "ab"}, id="hash-too-short"),
    ],
)
def test_an_unreadable_queue_message_is_dead_lettered_with_its_payload(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, message: Any
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 4)
    conn.execute("SELECT pgmq.send('pgingest_v1', %s::jsonb)", (json.dumps(message),))
    drain(dsn)
    rows = conn.execute(
        "SELECT doc_id, error_class, error_message, payload FROM pgingest.dead_letters"
    ).fetchall()
    assert len(rows) == 1
    doc_id, error_class, error_message, payload = rows[0]
    assert (doc_id, error_class) == (None, "invalid_message")
    assert "expected doc_id and hash" in error_message
    assert payload == {"message": message}
    assert_embedded(conn)  # the good documents of the same batch
    assert queue_count(conn, "v1") == 0


def test_a_message_with_a_garbage_attempts_field_counts_as_a_first_attempt(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    doc_id = insert(conn, "k", "Some text.")
    conn.execute("DELETE FROM pgmq.q_pgingest_v1")
    conn.execute(
        "SELECT pgmq.send('pgingest_v1', jsonb_build_object('doc_id', id,"
        " 'hash', encode(content_hash, 'hex'), 'attempts', 'lots'))"
        " FROM pgingest.documents WHERE id = %s",
        (doc_id,),
    )
    drain(dsn, max_attempts=1)
    assert letters(conn) == {}
    assert_embedded(conn)


@pytest.mark.parametrize("case", ["deleted", "never-existed", "old-version"])
def test_a_message_for_a_missing_or_stale_document_is_acknowledged_and_writes_nothing(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, case: str
) -> None:
    register(conn, "v1", fake.url)
    doc_id = insert(conn, "k", "Version one.")
    if case == "deleted":
        conn.execute("DELETE FROM pgingest.documents WHERE id = %s", (doc_id,))
    elif case == "never-existed":
        # The backfill's first step queues a live version the model has no trace of (see
        # tests/test_backfill_fence.py): run it before the document's own message is removed.
        conn.execute("CALL pgingest.run_backfill('v1')")
        conn.execute("DELETE FROM pgmq.q_pgingest_v1")
        conn.execute(
            "SELECT pgmq.send('pgingest_v1', %s::jsonb)",
            (json.dumps({"doc_id": doc_id + 1000, "hash": GOOD_HASH, "attempts": 0}),),
        )
    else:  # the message of version one, after version two was embedded
        old = conn.execute("SELECT message FROM pgmq.q_pgingest_v1").fetchone()
        assert old is not None
        conn.execute("UPDATE pgingest.documents SET body = 'Version two.' WHERE id = %s", (doc_id,))
        drain(dsn)
        conn.execute("SELECT pgmq.send('pgingest_v1', %s)", (Jsonb(old[0]),))
        fake.reset_counters()
    assert queue_count(conn, "v1") == 1
    drain(dsn)
    assert queue_count(conn, "v1") == 0
    assert fake.stats()["requests"] == 0  # nothing embedded for it
    assert letters(conn) == {}
    contents = [r[0] for r in conn.execute("SELECT content FROM pgingest.chunks")]
    assert contents == (["Version two."] if case == "old-version" else [])


def test_duplicate_messages_leave_one_set_of_chunks(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    n_inputs = sum(
        len(c)
        for c in chunking.chunk_documents(
            [(r[0], r[1]) for r in conn.execute("SELECT title, body FROM pgingest.documents")],
            chunking.ChunkerConfig(),
        )
    )
    dup = "SELECT pgmq.send_batch('pgingest_v1', array_agg(message)) FROM pgmq.q_pgingest_v1"
    conn.execute(dup)  # duplicates in the same batch
    drain(dsn)
    assert fake.stats()["inputs"] == n_inputs  # each chunk embedded once
    conn.execute(
        "SELECT pgmq.send_batch('pgingest_v1', array_agg(jsonb_build_object('doc_id', id,"
        " 'hash', encode(content_hash, 'hex'), 'attempts', 0))) FROM pgingest.documents"
    )  # and again, after they were embedded
    drain(dsn)
    assert fake.stats()["inputs"] == n_inputs  # redeliveries of a done version: acknowledged
    assert_embedded(conn)
    assert (
        count(
            conn,
            "SELECT count(*) FROM (SELECT doc_id, ordinal FROM pgingest.chunks"
            " GROUP BY 1, 2 HAVING count(*) > 1) s",
        )
        == 0
    )
    assert queue_count(conn, "v1") == 0


def test_a_document_updated_20_times_quickly_embeds_only_its_last_version(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert(conn, "hot", "Version 0 of the hot document.")
    for v in range(1, 21):
        conn.execute(
            "UPDATE pgingest.documents SET body = %s WHERE key = 'hot'",
            (f"Version {v} of the hot document.",),
        )
    assert queue_count(conn, "v1") == 21
    drain(dsn)
    assert fake.stats()["inputs_seen"] == ["Version 20 of the hot document."]
    assert [r[0] for r in conn.execute("SELECT content FROM pgingest.chunks")] == [
        "Version 20 of the hot document."
    ]
    assert letters(conn) == {}
    assert queue_count(conn, "v1") == 0


def test_a_model_retired_with_messages_queued_drops_them_and_the_others_go_on(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    insert_corpus(conn, 5)
    assert queue_count(conn, "v2") == 5
    conn.execute("SELECT pgingest.retire_model('v2')")
    assert (
        count(conn, "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'pgingest_v2'") == 0
    )  # its queue went with it
    drain(dsn)
    assert_embedded(conn)
    assert letters(conn) == {}


def test_a_model_retired_while_its_batch_is_in_flight_does_not_crash_the_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """The operator retires v2 while the worker waits on the provider for a v2 batch: the batch
    is dropped (its queue is gone), and the worker goes on with v1."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, model_id="fake-768", dimensions=768)
    insert_corpus(conn, 5)
    retired = threading.Event()

    def hook(info: RequestInfo) -> None:
        if info.model == "fake-768" and not retired.is_set():
            retired.set()
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("SELECT pgingest.retire_model('v2')")

    fake.on_request = hook
    drain(dsn, models=["v2", "v1"])
    assert retired.is_set()
    assert_embedded(conn)
    assert letters(conn) == {}
    assert count(conn, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v2'") == 0


@pytest.mark.parametrize("table", ["store", "chunks"])
def test_a_missing_table_of_a_live_model_fails_its_batches_and_loses_nothing(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, table: str
) -> None:
    """An undefined table in a batch means "retired" only when the model is: a table of a live
    model renamed by hand (its store: the batch's preparation fails, on the main thread; the
    chunk table: its write-back fails, on the writer's) made the worker take it for a
    retirement: batches dropped, ``--drain`` exiting 0 with every message still queued. Now
    the batches fail, ``--drain`` gives up with an error, and once the table is back every
    document is embedded."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 6)
    name = "chunks"
    if table == "store":
        row = conn.execute("SELECT store_name FROM pgingest.models WHERE name = 'v1'").fetchone()
        assert row is not None
        name = row[0]
    renamed = sql.SQL("ALTER TABLE pgingest.{} RENAME TO {}")
    conn.execute(renamed.format(sql.Identifier(name), sql.Identifier("moved_by_hand")))
    w = worker.Worker(settings(dsn, visibility_timeout=1))
    assert w.run() != 0
    assert (w.failed_batches if table == "store" else w.writer.failures) >= 3
    assert queue_count(conn, "v1") == 6  # nothing acknowledged, nothing dropped
    conn.execute(renamed.format(sql.Identifier("moved_by_hand"), sql.Identifier(name)))
    time.sleep(1.1)  # the failed batches' claims expire
    drain(dsn)
    assert_embedded(conn)
    assert letters(conn) == {}


# ================================================================================ manual edits


def test_a_manual_edit_of_a_chunk_row_stays_until_the_document_changes(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    """Chunks are derived data, written only by the worker. pgingest does not watch them: a
    DBA's UPDATE or DELETE of a chunk row stays (a redelivered or requeued message of the same
    version is acknowledged as done) until the next real change of the document, which rewrites
    every chunk of it. To repair now: change the document, or delete its embedding_state row and
    send its message again (see docs/reliability.md)."""
    register(conn, "v1", fake.url)
    insert_corpus(conn, 2)
    drain(dsn)
    d0, d1 = (r[0] for r in conn.execute("SELECT id FROM pgingest.documents ORDER BY id"))
    conn.execute(
        "UPDATE pgingest.chunks SET content = 'edited by hand' WHERE doc_id = %s AND ordinal = 0",
        (d0,),
    )
    conn.execute("DELETE FROM pgingest.chunks WHERE doc_id = %s AND ordinal = 0", (d1,))
    resend = (
        "SELECT pgmq.send('pgingest_v1', jsonb_build_object('doc_id', id, 'hash',"
        " encode(content_hash, 'hex'), 'attempts', 0)) FROM pgingest.documents WHERE id = %s"
    )
    conn.execute(resend, (d0,))
    drain(dsn)  # same version: acknowledged, nothing rewritten
    assert conn.execute(
        "SELECT content FROM pgingest.chunks WHERE doc_id = %s AND ordinal = 0", (d0,)
    ).fetchone() == ("edited by hand",)
    # A real change of the documents rewrites their chunks.
    conn.execute("UPDATE pgingest.documents SET body = body || ' One more sentence.'")
    drain(dsn)
    assert_embedded(conn)
    # The repair without changing the document: forget its state, send its message again.
    conn.execute(
        "UPDATE pgingest.chunks SET content = 'edited again' WHERE doc_id = %s AND ordinal = 0",
        (d0,),
    )
    conn.execute("DELETE FROM pgingest.embedding_state WHERE doc_id = %s", (d0,))
    conn.execute(resend, (d0,))
    drain(dsn)
    assert_embedded(conn)


def test_truncating_the_documents_empties_chunks_and_acknowledges_queued_messages(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    insert_corpus(conn, 5)
    drain(dsn)
    insert_corpus(conn, 5, start=5)
    conn.execute("TRUNCATE pgingest.documents")
    assert count(conn, "SELECT count(*) FROM pgingest.chunks") == 0
    assert count(conn, "SELECT count(*) FROM pgingest.embedding_state") == 0
    fake.reset_counters()
    drain(dsn)
    assert fake.stats()["requests"] == 0
    assert queue_count(conn, "v1") == 0
    assert letters(conn) == {}
