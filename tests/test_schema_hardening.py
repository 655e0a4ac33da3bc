"""Schema hardening (issue 18, items 13 and 14): what a model's base_url may be
(migrations/0008_base_url_rules.sql, ``register_model``, ``pgingest model add``), the upgrade
of a database whose models break those rules, and a document's id that cannot change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import cli, install
from tests.helpers import insert_docs, register
from tests.test_upgrade import checkout, history, old_install, tree

SECRET = "s3cret"

REFUSED = {
    # url: a word of the rule the error must name
    "ftp://api.example.com/v1": "https://",
    "https:///v1": "https://",
    "api.example.com/v1": "https://",
    f"https://user:{SECRET}@api.example.com/v1": "credentials",
    f"https://{SECRET}@api.example.com/v1": "credentials",
    f"http://user:{SECRET}@127.0.0.1:9/v1": "credentials",
    f"https://api.example.com/v1?api-key={SECRET}": "key-like",
    f"https://api.example.com/v1?api_key={SECRET}": "key-like",
    f"https://api.example.com/v1?key={SECRET}": "key-like",
    f"https://api.example.com/v1?api-version=1&token={SECRET}": "key-like",
    f"https://api.example.com/v1?x=1;client_secret={SECRET}": "key-like",
    f"https://api.example.com/v1?Signature={SECRET}": "key-like",
    f"https://api.example.com/v1#{SECRET}": "fragment",
    "https://api.example.com/v 1": "spaces",
    "https://api.example.com\\@evil.example/v1": "credentials",
    "http://10.0.0.1/v1": "loopback",
    "http://api.example.com/v1": "loopback",
    "http://127.0.0.1.evil.example/v1": "loopback",
    "http://localhost.evil.example/v1": "loopback",
    "http://127.0.0.256/v1": "loopback",
    "http://[::2]/v1": "loopback",
    "http://0.0.0.0:9/v1": "loopback",
}

ACCEPTED = [
    "https://api.example.com/v1",
    "https://api.example.com/openai/deployments/d?api-version=2024-02-01",
    "https://10.0.0.1:8443/v1",
    "http://127.0.0.1:9/v1",
    "http://127.1.2.3/v1",
    "http://localhost:8080/v1",
    "http://LOCALHOST/v1",
    "http://[::1]:9/v1",
    "http://127.0.0.1:9?api-version=1",
]


def error_text(exc: psycopg.Error) -> str:
    d = exc.diag
    return " ".join(str(x) for x in (d.message_primary, d.message_detail, d.message_hint))


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_register_model_refuses_a_bad_base_url_with_its_rule(
    conn: psycopg.Connection[Any], url: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        register(conn, "v1", url)
    text = error_text(info.value)
    assert REFUSED[url] in text
    assert SECRET not in text
    assert conn.execute("SELECT count(*) FROM pgingest.models").fetchone() == (0,)


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_the_table_refuses_what_register_model_refuses(
    conn: psycopg.Connection[Any], url: str
) -> None:
    """The constraints are the backstop of a direct UPDATE (an admin editing the row)."""
    register(conn, "v1", "https://api.example.com/v1")
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        conn.execute("UPDATE pgingest.models SET base_url = %s WHERE name = 'v1'", (url,))
    assert info.value.diag.constraint_name in {
        "models_base_url_loopback_or_https",
        "models_base_url_no_secrets",
    }


@pytest.mark.parametrize("url", ACCEPTED)
def test_https_anywhere_and_http_to_loopback_are_accepted(
    conn: psycopg.Connection[Any], url: str
) -> None:
    register(conn, "v1", url)
    row = conn.execute(
        "SELECT base_url, allow_insecure_http FROM pgingest.models WHERE name = 'v1'"
    ).fetchone()
    assert row == (url, False)


def test_allow_insecure_http_admits_http_to_any_host(conn: psycopg.Connection[Any]) -> None:
    register(conn, "v1", "http://10.0.0.1:8000/v1", allow_insecure_http=True)
    assert conn.execute(
        "SELECT allow_insecure_http FROM pgingest.models WHERE name = 'v1'"
    ).fetchone() == (True,)
    # The flag admits cleartext, not credentials.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        register(conn, "v2", f"http://u:{SECRET}@10.0.0.1/v1", allow_insecure_http=True)
    # Taking the flag back from an http:// model on another host is refused by the table.
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE pgingest.models SET allow_insecure_http = false WHERE name = 'v1'")


def test_cli_model_add_takes_allow_insecure_http(
    dsn: str, conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["model", "add", "--database-url", dsn, "--model-id", "fake-384", "--dimensions", "384"]
    url = "http://10.0.0.1:8000/v1"
    assert cli.main([*base, "v1", "--base-url", url]) == 2
    err = capsys.readouterr().err
    assert "loopback" in err and "allow_insecure_http" in err
    assert cli.main([*base, "v1", "--base-url", url, "--allow-insecure-http"]) == 0
    assert conn.execute(
        "SELECT base_url, allow_insecure_http FROM pgingest.models WHERE name = 'v1'"
    ).fetchone() == (url, True)
    assert cli.main([*base, "v2", "--base-url", f"https://u:{SECRET}@api.example.com/v1"]) == 2
    out = capsys.readouterr()
    assert "credentials" in out.err and SECRET not in out.err + out.out


# --------------------------------------------------------------------------- the upgrade


def commit_before_0008() -> str:
    """The newest commit of the history without migrations/0008_base_url_rules.sql."""
    for c in reversed(history()):
        files = tree(c)
        if "migrations/0008_base_url_rules.sql" not in files and "src/pgingest/install.py" in files:
            return c
    pytest.fail("no commit before migrations/0008_base_url_rules.sql")


def test_upgrade_keeps_models_that_break_the_new_rules_working(
    empty_database: Any, tmp_path: Path
) -> None:
    """An http:// model on another host gets allow_insecure_http (NOTICE); the credentials,
    key-like parameters and fragment of a URL are removed (WARNING, the secret never shown); the
    constraints end validated and every model's row can still be updated."""
    commit = commit_before_0008()
    src = checkout(commit, tmp_path / commit[:12])
    dsn = empty_database("upgrade_0008")
    old_install(src, dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        register(c, "plain", "https://api.example.com/v1")
        register(c, "remote", "http://10.0.0.1:8000/v1")
        register(
            c,
            "keyed",
            f"https://user:{SECRET}@api.example.com/v1?api-version=1&api-key={SECRET}#{SECRET}",
        )
        register(c, "local", "http://127.0.0.1:9/v1")
    notices = install.install(dsn)
    assert not any(SECRET in n for n in notices), notices
    assert any(
        not n.startswith("WARNING") and "remote" in n and "allow_insecure_http" in n
        for n in notices
    )
    assert any(n.startswith("WARNING") and "keyed" in n for n in notices)
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = dict(
            (r[0], (r[1], r[2]))
            for r in c.execute("SELECT name, base_url, allow_insecure_http FROM pgingest.models")
        )
        assert rows == {
            "plain": ("https://api.example.com/v1", False),
            "remote": ("http://10.0.0.1:8000/v1", True),
            "keyed": ("https://api.example.com/v1?api-version=1", False),
            "local": ("http://127.0.0.1:9/v1", False),
        }
        validated = dict(
            c.execute(
                "SELECT conname, convalidated FROM pg_constraint"
                " WHERE conrelid = 'pgingest.models'::regclass AND conname LIKE 'models_base_url%'"
            ).fetchall()
        )
        assert validated == {
            "models_base_url_loopback_or_https": True,
            "models_base_url_no_secrets": True,
        }
        for name in rows:  # a pause (the worker's) still updates each row
            c.execute("SELECT pgingest.pause_model(%s, 'test')", (name,))


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
