"""What a role that may search can make the database server do over HTTP (issue 18, items 3, 2,
13 and 14), against the real database and fake providers on 127.0.0.1.

* Item 3: ``pgingest.embedding_url`` and ``pgingest.embedding_timeout`` are settings any session
  may SET. A reader may point ``embed_query`` only at a registered model's endpoint (a second
  fake server, on another port, must get no connection at all); the timeout is clamped and
  bounds the whole call (headers trickling in too); the answer is size-capped; errors carry the
  HTTP status, not the endpoint's text. A superuser may still point it anywhere.
* Item 2: a provider's hostile error text can be written to PostgreSQL (a pause reason).
* Item 13: ``pgingest search --embedding-url`` never sends the model's key to the override; a URL
  with credentials is refused and never shown.
* Item 14: an empty query is refused before any request; the CLI's help names only commands
  that exist.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import cli, db, providers
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import register

KEY_ENV = "PGINGEST_TEST_QUERY_SECURITY_KEY"
KEY = "sk-query-security-0123456789"
HOSTILE = "bad\x00news \ud800 lone\nforged line\x1b[31m"


@pytest.fixture
def other() -> Iterator[FakeEmbeddingServer]:
    """An endpoint nobody registered: a reader must not reach it."""
    with FakeEmbeddingServer() as srv:
        yield srv


@pytest.fixture
def model(conn: psycopg.Connection[Any], fake: FakeEmbeddingServer) -> str:
    """v1, the active model, at the fake server."""
    assert register(conn, "v1", fake.url) == "active"
    return "v1"


@contextmanager
def as_reader(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    c = db.connect(dsn)
    try:
        c.execute("SET ROLE pgingest_reader")
        yield c
    finally:
        c.close()


def set_url(c: psycopg.Connection[Any], url: str) -> None:
    c.execute("SELECT set_config('pgingest.embedding_url', %s, false)", (url,))


def embed(c: psycopg.Connection[Any], text: str = "hello") -> list[float]:
    row = c.execute("SELECT pgingest.embed_query(%s)::real[]", (text,)).fetchone()
    assert row is not None
    return list(row[0])


def error_text(exc: psycopg.Error) -> str:
    d = exc.diag
    return " | ".join(
        str(x) for x in (d.message_primary, d.message_detail, d.message_hint, d.context, exc)
    )


# -------------------------------------------------------------------------- item 3: where to


@pytest.mark.parametrize(
    "template",
    [
        "{other}/v1",
        "{other}/v1/",
        "{other}/v1?",
        "{other}/v1/kv/x?",
        "{other}/_control?",
        "{own}/_control?",  # the model's host, another path
        "{own}/v1/../_control",
        "{own}/v1/x/..?",
        "http://user:pw@{other_host}/v1",
        "{other}/v1#",
        "{other}/v1?api-key=x",
        "file:///etc/passwd",
    ],
)
def test_a_reader_cannot_point_embed_query_at_another_endpoint(
    dsn: str, model: str, fake: FakeEmbeddingServer, other: FakeEmbeddingServer, template: str
) -> None:
    url = template.format(
        other=other.root_url,
        own=fake.root_url,
        other_host=f"127.0.0.1:{other.port}",
    )
    with as_reader(dsn) as r:
        set_url(r, url)
        with pytest.raises(
            (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue)
        ) as info:
            embed(r)
    assert "pw@" not in error_text(info.value)
    assert other.stats()["connections"] == 0
    assert fake.stats()["connections"] == 0


def test_a_reader_may_use_the_models_own_endpoint_or_another_registered_one(
    conn: psycopg.Connection[Any],
    dsn: str,
    model: str,
    fake: FakeEmbeddingServer,
    other: FakeEmbeddingServer,
) -> None:
    with as_reader(dsn) as r:
        plain = embed(r)
        for same in (fake.url, fake.url + "/", fake.embeddings_url, fake.url + "?"):
            set_url(r, same)
            assert embed(r) == plain
    assert fake.stats()["requests"] == 5
    # An admin registers a second model at the other endpoint: now it is a known endpoint.
    register(conn, "v2", other.url)
    with as_reader(dsn) as r:
        set_url(r, other.url)
        assert embed(r) == plain  # same fake vectors: same model id and text
    assert other.stats()["requests"] == 1


def test_a_superuser_may_still_point_it_anywhere(
    conn: psycopg.Connection[Any], model: str, other: FakeEmbeddingServer
) -> None:
    set_url(conn, other.url)
    assert len(embed(conn)) == 384
    assert other.stats()["requests"] == 1
    set_url(conn, "http://user:pw@" + other.url.removeprefix("http://"))
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        embed(conn)  # credentials in a URL: refused for everyone, and not shown
    assert "pw@" not in error_text(info.value) and "***@" in error_text(info.value)
    assert other.stats()["requests"] == 1


def test_a_registered_url_with_credentials_is_refused_and_not_shown(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    # The table refuses it since migration 0008 (here its constraints are dropped, as in a
    # database where it stays NOT VALID): the client refuses it too.
    register(conn, "v1", fake.url)
    conn.execute(
        "ALTER TABLE pgingest.models DROP CONSTRAINT models_base_url_no_secrets,"
        " DROP CONSTRAINT models_base_url_loopback_or_https"
    )
    conn.execute(
        "UPDATE pgingest.models SET base_url = %s WHERE name = 'v1'",
        ("http://apiuser:s3cret@" + fake.url.removeprefix("http://"),),
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        embed(conn)
    assert "s3cret" not in error_text(info.value)
    assert "credentials" in error_text(info.value)
    assert fake.stats()["connections"] == 0


# -------------------------------------------------------------------------- item 3: how long


@pytest.mark.parametrize("value", ["inf", "nan", "abc", "-1", "0"])
def test_a_bad_timeout_is_refused(dsn: str, model: str, value: str) -> None:
    with as_reader(dsn) as r:
        r.execute("SELECT set_config('pgingest.embedding_timeout', %s, false)", (value,))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="embedding_timeout"):
            embed(r)


def test_one_deadline_bounds_the_whole_request(
    dsn: str, model: str, fake: FakeEmbeddingServer
) -> None:
    # Headers a byte every 50 ms: ~7 s in all, no single read slower than the 1 s timeout.
    fake.configure(trickle_interval_s=0.05)
    fake.fail_next("slow_headers", 2)
    with as_reader(dsn) as r:
        r.execute("SET pgingest.embedding_timeout = '1'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.errors.ConnectionException) as info:
            embed(r)
        assert time.monotonic() - t0 < 2.5  # one deadline, retries included
    assert "timeout" in error_text(info.value)


def test_an_oversized_answer_is_not_read_to_its_end(
    dsn: str, model: str, fake: FakeEmbeddingServer
) -> None:
    fake.configure(huge_body_bytes=64 << 20)
    fake.fail_next("huge", 2)
    with as_reader(dsn) as r, pytest.raises(psycopg.errors.ConnectionException) as info:
        embed(r)
    assert "bad_response" in error_text(info.value)
    # 4 MiB read per attempt (the floor of the cap), plus what the sockets buffer.
    assert fake.stats()["streamed_bytes"] < 32 << 20


# -------------------------------------------------------------------------- item 3: what is said


@pytest.mark.parametrize("mode", ["server_error", "binary", "bad_request", "error_body"])
def test_the_endpoints_text_stays_out_of_a_readers_error(
    dsn: str, model: str, fake: FakeEmbeddingServer, mode: str
) -> None:
    fake.configure(error_message="UPSTREAM-SECRET internal answer", binary_status=500)
    fake.fail_next(mode, 5)
    with as_reader(dsn) as r, pytest.raises(psycopg.errors.ConnectionException) as info:
        embed(r)
    text = error_text(info.value)
    assert "UPSTREAM-SECRET" not in text and "Access denied" not in text
    status = {"server_error": 500, "binary": 500, "bad_request": 400}.get(mode)
    if status is not None:
        assert f"the endpoint answered HTTP {status}" in text
    else:
        assert "not a valid embeddings answer" in text


def test_the_endpoint_down_still_names_it(conn: psycopg.Connection[Any], model: str) -> None:
    set_url(conn, "http://127.0.0.1:9/v1")
    conn.execute("SET pgingest.embedding_timeout = '2'")
    with pytest.raises(psycopg.errors.ConnectionException) as info:
        embed(conn)
    assert "127.0.0.1:9" in str(info.value) and "could not be reached" in str(info.value)
    assert info.value.diag.message_hint and "embedding_url" in info.value.diag.message_hint


# -------------------------------------------------------------------------- item 2


@pytest.mark.parametrize("mode", ["auth", "binary"])
def test_hostile_provider_text_can_be_written_as_a_pause_reason(
    conn: psycopg.Connection[Any], model: str, fake: FakeEmbeddingServer, mode: str
) -> None:
    fake.configure(error_message=HOSTILE, binary_status=401)
    fake.fail_next(mode)
    m = db.get_model(conn, model)
    assert m is not None
    with (
        providers.for_model(m, max_retries=0) as p,
        pytest.raises(providers.AuthError) as info,
    ):
        p.embed(["a"])
    reason = str(info.value)
    conn.execute("SELECT pgingest.pause_model(%s, %s)", (model, reason))
    row = conn.execute("SELECT paused_reason FROM pgingest.models WHERE name = %s", (model,))
    stored = row.fetchone()
    assert stored is not None and reason in stored[0]


# -------------------------------------------------------------------------- item 14


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM pgingest.search_text('')",
        "SELECT * FROM pgingest.search_text('   ')",
        "SELECT * FROM pgingest.hybrid_search_text(E'\\n\\t')",
        "SELECT pgingest.embed_query('')",
        "SELECT pgingest.embed_query(NULL)",
    ],
)
def test_an_empty_query_is_refused_before_any_request(
    dsn: str, model: str, fake: FakeEmbeddingServer, query: str
) -> None:
    with as_reader(dsn) as r, pytest.raises(psycopg.errors.InvalidParameterValue, match="empty"):
        r.execute(query)
    assert fake.stats()["connections"] == 0


def test_cli_help_names_only_commands_that_exist() -> None:
    parser = cli.build_parser()
    description = parser.description or ""
    listed = description.split(":", 1)[1].split(".", 1)[0]
    named = {word.strip() for word in listed.replace("\n", " ").split(",")}
    sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(sub[0].choices or ())
    assert named == commands
    assert "requeue" not in commands


def test_cli_search_refuses_an_empty_query(
    dsn: str, model: str, fake: FakeEmbeddingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["search", "--database-url", dsn, "  "]) == 2
    assert "empty" in capsys.readouterr().err
    assert fake.stats()["connections"] == 0


# -------------------------------------------------------------------------- item 13


@pytest.fixture
def keyed(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeEmbeddingServer]:
    """v1 at a fake server that wants KEY, read from KEY_ENV by the CLI."""
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeEmbeddingServer(api_key=KEY) as srv:
        conn.execute(
            sql.SQL(
                "SELECT pgingest.register_model('v1', 'fake-384', 384, {}, api_key_env => {})"
            ).format(sql.Literal(srv.url), sql.Literal(KEY_ENV))
        )
        yield srv


def test_cli_search_sends_the_key_to_the_models_own_endpoint_only(
    dsn: str,
    keyed: FakeEmbeddingServer,
    other: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["search", "--database-url", dsn, "hello"]) == 0
    assert keyed.stats()["with_authorization"] == 1
    for url in (other.url, other.url + "/"):
        assert cli.main(["search", "--database-url", dsn, "--embedding-url", url, "hello"]) == 0
    assert other.stats()["requests"] == 2
    assert other.stats()["with_authorization"] == 0
    assert KEY not in capsys.readouterr().out


@pytest.mark.parametrize(
    "template", ["http://user:s3cret@{host}/v1", "http://{host}/v1?api-key=s3cret"]
)
def test_cli_search_refuses_an_override_with_credentials(
    dsn: str,
    keyed: FakeEmbeddingServer,
    other: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
    template: str,
) -> None:
    url = template.format(host=f"127.0.0.1:{other.port}")
    assert cli.main(["search", "--database-url", dsn, "--embedding-url", url, "hello"]) == 2
    out = capsys.readouterr()
    assert "s3cret" not in out.err + out.out
    assert "api_key_env" in out.err
    assert other.stats()["connections"] == 0
