"""Raw-document sources in the schema (issue 22, phase 2: migrations/0022, sql/016_raw.sql).

``add_source(..., content => 'col')`` maps a bytea column, ``uri => 'col'`` a text column of URIs,
``mime => 'col'`` a MIME override. The queue holds only the doc_id and version; the worker reads
bytes and URIs through ``raw_documents_v1``. The allow-list is written by admins only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import queue_count, register

FILES = """
CREATE TABLE public.files (
    id integer PRIMARY KEY,
    name text,
    data bytea,
    uri text,
    mime text,
    n integer NOT NULL DEFAULT 0
)
"""


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def files(conn: psycopg.Connection[Any], fake: FakeEmbeddingServer) -> psycopg.Connection[Any]:
    register(conn, "v1", fake.url)
    conn.execute(FILES)
    return conn


def test_add_source_checks_the_raw_mapping(files: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="not bytea"):
        files.execute("SELECT pgingest.add_source('f', 'public.files', content => 'name')")
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="not text"):
        files.execute("SELECT pgingest.add_source('f', 'public.files', uri => 'data')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="either body"):
        files.execute(
            "SELECT pgingest.add_source('f', 'public.files', content => 'data', uri => 'uri')"
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="give content"):
        files.execute(
            "SELECT pgingest.add_source('f', 'public.files', body => 'name', mime => 'mime')"
        )
    with pytest.raises(psycopg.errors.UndefinedColumn, match="nope"):
        files.execute("SELECT pgingest.add_source('f', 'public.files', content => 'nope')")
    files.execute(
        "SELECT pgingest.add_source('f', 'public.files', content => 'data', mime => 'mime', title => 'name')"
    )
    row = files.execute(
        "SELECT content_column, uri_column, mime_column FROM pgingest.sources WHERE name = 'f'"
    ).fetchone()
    assert row == ("data", None, "mime")
    assert one(files, "SELECT mapping FROM pgingest.source_status WHERE source = 'f'") == (
        "content => data"
    )


def test_capture_queues_versions_without_bytes_and_only_when_the_bytes_change(
    files: psycopg.Connection[Any],
) -> None:
    files.execute(
        "SELECT pgingest.add_source('f', 'public.files', content => 'data', mime => 'mime')"
    )
    payload = b"%PDF-1.4 " + bytes(range(256)) * 64
    files.execute("INSERT INTO public.files (id, data) VALUES (1, %s), (2, NULL)", (payload,))
    assert queue_count(files, "v1") == 2
    messages = [r[0] for r in files.execute("SELECT message FROM pgmq.q_pgingest_v1").fetchall()]
    assert all(set(m) <= {"doc_id", "hash", "attempts"} for m in messages), messages
    assert all(len(str(m)) < 200 for m in messages)
    # Same bytes, another column changed: nothing queued; other bytes or MIME type: queued.
    files.execute("UPDATE public.files SET n = n + 1, data = %s WHERE id = 1", (payload,))
    assert queue_count(files, "v1") == 2
    files.execute("UPDATE public.files SET data = %s WHERE id = 1", (payload + b"x",))
    assert queue_count(files, "v1") == 3
    files.execute("UPDATE public.files SET mime = 'application/pdf' WHERE id = 1")
    assert queue_count(files, "v1") == 4

    ids = [
        r[0]
        for r in files.execute(
            "SELECT doc_id FROM pgingest.source_rows ORDER BY row_key"
        ).fetchall()
    ]
    rows = files.execute(
        "SELECT doc_id, source, content, content_bytes, uri, mime FROM pgingest.raw_documents_v1(%s, %s)"
        " ORDER BY doc_id",
        (ids, 1 << 20),
    ).fetchall()
    assert rows == [
        (ids[0], "f", payload + b"x", len(payload) + 1, None, "application/pdf"),
        (ids[1], "f", None, None, None, None),
    ]
    # Over the cap the bytes are not read, their size is.
    big = files.execute(
        "SELECT content, content_bytes FROM pgingest.raw_documents_v1(%s, 100)", ([ids[0]],)
    ).fetchone()
    assert big == (None, len(payload) + 1)
    # The read path of read_batch_v1 returns no text for a raw row (the worker reads the bytes).
    msgs = files.execute(
        "SELECT doc_id, body, status FROM pgingest.read_batch_v1('v1', 30, 10) ORDER BY msg_id"
    ).fetchall()
    assert {(d, b) for d, b, s in msgs if s == "current"} == {(ids[0], None), (ids[1], None)}


def test_uri_rows_record_fetches_and_refresh_restores_unchanged_versions(
    files: psycopg.Connection[Any],
) -> None:
    files.execute("SELECT pgingest.add_source('u', 'public.files', uri => 'uri')")
    files.execute("INSERT INTO public.files (id, uri) VALUES (1, 's3://b/k.pdf')")
    doc_id, version = files.execute(
        "SELECT doc_id, content_hash FROM pgingest.source_rows"
    ).fetchone()
    sha = hashlib.sha256(b"bytes").digest()
    n = one(
        files,
        "SELECT pgingest.raw_record_v1(%s, %s, %s, %s, %s, %s, %s::jsonb[])",
        ([doc_id], [version], [sha], ['"e1"'], [None], [None], ['{"pages": [[0, 1]]}']),
    )
    assert n == 1
    rec = files.execute(
        "SELECT sha256, etag, parsed_version, parse_error_class, fetched_at IS NOT NULL"
        " FROM pgingest.source_rows"
    ).fetchone()
    assert rec == (sha, '"e1"', version, None, True)
    # A failure keeps what the last success recorded and says its class.
    files.execute(
        "SELECT pgingest.raw_record_v1(%s, %s, %s, %s, %s, %s, %s::jsonb[])",
        ([doc_id], [version], [None], [None], [None], ["not_found"], [None]),
    )
    assert files.execute(
        "SELECT sha256, parse_error_class FROM pgingest.source_rows"
    ).fetchone() == (
        sha,
        "not_found",
    )
    assert one(files, "SELECT last_parse_error FROM pgingest.source_status WHERE source = 'u'") == (
        "not_found"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        files.execute(
            "SELECT pgingest.raw_record_v1(%s, %s, %s, %s, %s, %s, %s::jsonb[])",
            ([doc_id], [version], [None], [None], [None], ["Bad Class"], [None]),
        )

    before = queue_count(files, "v1")
    assert one(files, "SELECT pgingest.refresh_source_rows('u')") == 1
    assert queue_count(files, "v1") == before + 1
    new_version = one(files, "SELECT content_hash FROM pgingest.source_rows")
    assert new_version != version
    assert one(files, "SELECT refreshed_from FROM pgingest.source_rows") == version
    # A second refresh keeps the version to restore.
    files.execute("SELECT pgingest.refresh_source_rows('u', ARRAY['{\"id\": 1}'::jsonb])")
    newer = one(files, "SELECT content_hash FROM pgingest.source_rows")
    assert one(files, "SELECT refreshed_from FROM pgingest.source_rows") == version
    # A stale version restores nothing; the current one restores the version before the refresh.
    assert one(files, "SELECT pgingest.raw_unchanged_v1(%s, %s)", ([doc_id], [new_version])) == 0
    assert one(files, "SELECT pgingest.raw_unchanged_v1(%s, %s)", ([doc_id], [newer])) == 1
    assert files.execute(
        "SELECT content_hash, refreshed_from FROM pgingest.source_rows"
    ).fetchone() == (version, None)

    with pytest.raises(psycopg.errors.WrongObjectType):
        files.execute("CREATE TABLE public.t (id int PRIMARY KEY, b text)")
        files.execute("SELECT pgingest.add_source('t', 'public.t', body => 'b')")
        files.execute("SELECT pgingest.refresh_source_rows('t')")


def test_pause_and_resume_a_source(files: psycopg.Connection[Any]) -> None:
    files.execute("SELECT pgingest.add_source('u', 'public.files', uri => 'uri')")
    files.execute("SELECT pgingest.raw_pause_source_v1('u', 'access: bucket b refuses access')")
    assert one(files, "SELECT paused_reason FROM pgingest.source_status WHERE source = 'u'") == (
        "access: bucket b refuses access"
    )
    files.execute("SELECT pgingest.resume_source('u')")
    assert one(files, "SELECT paused_reason FROM pgingest.sources WHERE name = 'u'") is None
    files.execute("SELECT pgingest.raw_pause_source_v1('u', 'access: again')")
    files.execute("SET ROLE pgingest_worker")
    files.execute("SELECT pgingest.raw_resume_source_v1('u')")  # a probe that succeeded
    files.execute("RESET ROLE")
    assert one(files, "SELECT paused_at FROM pgingest.sources WHERE name = 'u'") is None
    with pytest.raises(psycopg.errors.UndefinedObject):
        files.execute("SELECT pgingest.resume_source('nope')")


def test_only_admins_write_the_allow_list(files: psycopg.Connection[Any]) -> None:
    files.execute("SELECT pgingest.allow_raw_location('root', '/srv/docs')")
    files.execute("SELECT pgingest.allow_raw_location('host', 'Docs.Example.com')")
    files.execute("SELECT pgingest.allow_raw_location('network', '127.0.0.1')")
    files.execute("SELECT pgingest.allow_raw_location('bucket', 'my-bucket')")
    files.execute("SELECT pgingest.allow_raw_location('bucket', 'my-bucket')")  # idempotent
    for kind, value in [
        ("root", "relative/dir"),
        ("root", "/srv/../etc"),
        ("host", "https://x.example.com/"),
        ("network", "not-a-net"),
        ("bucket", "Bad_Bucket"),
        ("scheme", "ftp"),
    ]:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            files.execute("SELECT pgingest.allow_raw_location(%s, %s)", (kind, value))
    files.execute("SET ROLE pgingest_worker")
    assert files.execute("SELECT kind, value FROM pgingest.raw_allowlist_v1()").fetchall() == [
        ("bucket", "my-bucket"),
        ("host", "docs.example.com"),
        ("network", "127.0.0.1/32"),
        ("root", "/srv/docs"),
    ]
    files.execute("RESET ROLE")
    for role in ("pgingest_writer", "pgingest_reader", "pgingest_worker"):
        files.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            files.execute("SELECT pgingest.allow_raw_location('host', 'evil.example')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            files.execute(
                "INSERT INTO pgingest.raw_allowlist (kind, value) VALUES ('host', 'evil')"
            )
        files.execute("RESET ROLE")
    files.execute("SET ROLE pgingest_admin")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        files.execute("INSERT INTO pgingest.raw_allowlist (kind, value) VALUES ('host', 'evil')")
    assert one(files, "SELECT pgingest.disallow_raw_location('host', 'docs.example.com')") is True
    assert one(files, "SELECT pgingest.disallow_raw_location('host', 'docs.example.com')") is False
    files.execute("RESET ROLE")


@pytest.mark.parametrize(
    "error_class",
    [
        "unsupported_type",
        "timeout",
        "oom",
        "too_large",
        "encrypted",
        "empty_text",
        "parse_error",
        "not_found",
        "forbidden",
    ],
)
def test_requeue_dead_letters_takes_the_raw_classes(
    files: psycopg.Connection[Any], error_class: str
) -> None:
    files.execute("SELECT pgingest.add_source('u', 'public.files', uri => 'uri')")
    files.execute("INSERT INTO public.files (id, uri) VALUES (1, 's3://b/k.pdf')")
    files.execute("DELETE FROM pgmq.q_pgingest_v1")
    doc_id, version = files.execute(
        "SELECT doc_id, content_hash FROM pgingest.source_rows"
    ).fetchone()
    files.execute(
        "INSERT INTO pgingest.dead_letters (model, doc_id, content_hash, error_class, error_message, attempts)"
        " VALUES ('v1', %s, %s, %s, 'x', 1)",
        (doc_id, version, error_class),
    )
    assert one(files, "SELECT pgingest.requeue_dead_letters('v1', %s)", (error_class,)) == 1
    assert queue_count(files, "v1") == 1
