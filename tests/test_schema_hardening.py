"""Schema hardening (issue 18, items 13 and 14): a document's id that cannot change."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.helpers import insert_docs


def error_text(exc: psycopg.Error) -> str:
    d = exc.diag
    return " ".join(str(x) for x in (d.message_primary, d.message_detail, d.message_hint))


# --------------------------------------------------------------------------- documents.id


def test_a_documents_id_cannot_change(conn: psycopg.Connection[Any]) -> None:
    """Issue 18, item 14: ``SET id = DEFAULT`` (the one change an identity GENERATED ALWAYS
    column lets through) would orphan the chunks, stores and embedding state keyed by the old
    id: refused with 0A000, and the document keeps its id."""
    insert_docs(conn, [("k1", "Title", "Some body text."), ("k2", "Title", "Another body.")])
    before = conn.execute("SELECT key, id FROM pgingest.documents ORDER BY key").fetchall()
    with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
        conn.execute("UPDATE pgingest.documents SET id = DEFAULT WHERE key = 'k1'")
    assert "cannot change" in error_text(info.value)
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("UPDATE pgingest.documents SET id = DEFAULT, title = 'T2'")
    conn.execute("UPDATE pgingest.documents SET title = 'T2' WHERE key = 'k1'")
    assert conn.execute("SELECT key, id FROM pgingest.documents ORDER BY key").fetchall() == before


def test_an_update_that_does_not_touch_id_never_calls_the_id_check(
    conn: psycopg.Connection[Any],
) -> None:
    """The trigger is ``BEFORE UPDATE OF id ... WHEN (new.id IS DISTINCT FROM old.id)``: an
    application's UPDATE of the other columns does not fire it at all."""
    insert_docs(conn, [("k1", "Title", "Some body text."), ("k2", "Title", "Another body.")])
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'all'")
        conn.execute("UPDATE pgingest.documents SET title = 'New', metadata = '{\"a\": 1}'")
        calls = conn.execute(
            "SELECT pg_stat_get_xact_function_calls('pgingest._refuse_id_change'::regproc),"
            " pg_stat_get_xact_function_calls('pgingest._touch_updated_at'::regproc)"
        ).fetchone()
    assert calls == (None, 2)  # tracking works (the other row trigger ran twice); ours never ran
