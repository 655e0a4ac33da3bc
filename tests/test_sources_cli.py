"""`pgingest source add|list|show|remove|resync`, the SOURCES section of `pgingest status` and
`pgingest search --source`, against the real database (issue 17, item 1: the SQL side is
tests/test_sources.py).

The commands run through the parser the CLI uses (``cli.main``), as a user runs them; the table is
an application's own: ``articles`` keyed by (tenant_id uuid, id bigint), embedded through a
template.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import cli, sources_cli
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, register
from tests.test_status import status_cli

TENANT = uuid.UUID("00000000-0000-0000-0000-00000000000a")

ARTICLES = """
CREATE TABLE public.articles (
    tenant_id uuid NOT NULL,
    id bigint NOT NULL,
    title text,
    body text,
    tags text[],
    lang text,
    PRIMARY KEY (tenant_id, id)
)
"""

TEMPLATE = "{title}\n\n{body}\n\nTags: {tags}"


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def run(
    capsys: pytest.CaptureFixture[str], dsn: str, *argv: str, **kw: Any
) -> tuple[int, str, str]:
    """``pgingest <argv> --database-url dsn``: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([*argv, "--database-url", dsn])
    out, err = capsys.readouterr()
    return code, out, err


def add_articles(capsys: pytest.CaptureFixture[str], dsn: str, *extra: str) -> tuple[int, str, str]:
    return run(
        capsys,
        dsn,
        "source",
        "add",
        "articles",
        "public.articles",
        "--template",
        TEMPLATE,
        "--title",
        "title",
        "--metadata",
        "lang",
        *extra,
    )


def triggers(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.articles'::regclass"
            " AND NOT tgisinternal ORDER BY tgname"
        )
    ]


@pytest.fixture
def articles(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(ARTICLES)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO public.articles (tenant_id, id, title, body, tags, lang)"
            " VALUES (%s, %s, %s, %s, %s, 'en')",
            [
                (
                    TENANT,
                    i,
                    f"Article {i}",
                    f"Article {i} is about quarterly tenant reports. " * 6,
                    ["news", f"t{i % 3}"],
                )
                for i in range(1, 21)
            ],
        )
    return conn


def test_add_list_show_remove_round_trip_with_a_composite_key_and_a_template(
    articles: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = articles
    code, out, err = add_articles(capsys, dsn)
    assert code == 0, err
    assert "source articles attached to articles (key: tenant_id, id" in out
    assert "paced batches" in out
    assert "source articles attached" in err  # the server's NOTICE
    assert len(triggers(conn)) == 4

    code, out, _ = run(capsys, dsn, "source", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["source", "table", "key", "mapping"]
    assert lines[2].split()[:3] == ["documents", "pgingest.documents", "key"]
    assert re.match(
        r"articles\s+articles\s+tenant_id, id\s+\{title\} \{body\} Tags: \{tags\}", lines[3]
    )
    assert "waiting" in lines[3]

    code, out, _ = run(capsys, dsn, "source", "list", "--json")
    rows = {r["source"]: r for r in json.loads(out)}
    assert list(rows) == ["documents", "articles"]
    assert rows["articles"]["key_columns"] == ["tenant_id", "id"]
    assert rows["articles"]["mapping"] == TEMPLATE
    assert rows["articles"]["backfill"] == "waiting"

    code, out, _ = run(capsys, dsn, "source", "show", "articles")
    assert code == 0
    shown = dict(re.split(r":\s+", line, maxsplit=1) for line in out.splitlines())
    assert shown["key"] == "tenant_id uuid, id bigint"
    assert shown["template"] == json.dumps(TEMPLATE)
    assert (shown["title"], shown["metadata"]) == ("title", "lang")
    assert shown["backfill"].startswith("waiting")
    assert shown["capture failures"] == "0"

    conn.execute("CALL pgingest.run_source_backfill()")
    code, out, _ = run(capsys, dsn, "source", "show", "articles", "--json")
    st = json.loads(out)
    assert (st["rows_registered"], st["backfill"], st["backfill_percent"]) == (20, "done", 100.0)
    assert (st["template"], st["body_column"], st["title_column"]) == (TEMPLATE, None, "title")
    assert (st["metadata_columns"], st["key_types"]) == (["lang"], ["uuid", "bigint"])

    code, out, err = run(capsys, dsn, "source", "remove", "articles", "--yes")
    assert code == 0, err
    assert "source articles removed: 20 rows forgotten; the table is untouched" in out
    assert one(conn, "SELECT count(*) FROM pgingest.source_status WHERE source = 'articles'") == 0
    assert one(conn, "SELECT count(*) FROM pgingest.source_rows") == 0
    assert triggers(conn) == []
    assert one(conn, "SELECT count(*) FROM public.articles") == 20

    code, _, err = run(capsys, dsn, "source", "show", "articles")
    assert code == sources_cli.EXIT_INVALID
    assert "no source 'articles'" in err


def test_resync_walks_the_table_again(
    articles: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_articles(capsys, dsn)[0] == 0
    articles.execute("CALL pgingest.run_source_backfill()")
    code, out, _ = run(capsys, dsn, "source", "resync", "articles")
    assert code == 0
    assert "walked again" in out
    assert one(
        articles, "SELECT backfill FROM pgingest.source_status WHERE source = 'articles'"
    ) == ("waiting")
    code, _, err = run(capsys, dsn, "source", "resync", "nope")
    assert code == sources_cli.EXIT_INVALID
    assert "no source 'nope'" in err and "sqlstate: 42704" in err


@pytest.mark.parametrize(
    ("setup", "argv", "sqlstate", "message", "exit_code"),
    [
        (None, ["--body", "nope"], "42703", "has no column nope (the body)", 2),
        (None, ["--template", "{title} {missing}"], "42703", "no column missing (the template)", 2),
        (None, ["--body", "tags", "--title", "id"], "42804", "is of type", 2),
        (
            "CREATE VIEW public.articles_v AS SELECT * FROM public.articles",
            ["--body", "body"],
            "42809",
            "is a view",
            2,
        ),
        (
            "ALTER TABLE public.articles DROP CONSTRAINT articles_pkey",
            ["--body", "body"],
            "55000",
            "has no primary key",
            3,
        ),
        (None, ["--body", "body", "--metadata", "lang", "lang"], "22023", "named twice", 2),
    ],
)
def test_a_refused_mapping_prints_the_servers_message_and_sqlstate_and_exits_non_zero(
    articles: psycopg.Connection[Any],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    setup: str | None,
    argv: list[str],
    sqlstate: str,
    message: str,
    exit_code: int,
) -> None:
    table = "public.articles"
    if setup is not None:
        articles.execute(setup)
        if "VIEW" in setup:
            table = "public.articles_v"
    code, out, err = run(capsys, dsn, "source", "add", "a2", table, *argv)
    assert code == exit_code != 0
    assert out == ""
    assert err.startswith("pgingest source add: pgingest: ")
    assert message in err
    assert f"  sqlstate: {sqlstate}" in err.splitlines()
    # Nothing was left behind: no source, no trigger on the table.
    assert one(articles, "SELECT count(*) FROM pgingest.source_status") == 1
    assert triggers(articles) == []


def test_a_duplicate_source_and_an_unknown_table_are_refused(
    articles: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_articles(capsys, dsn)[0] == 0
    code, _, err = add_articles(capsys, dsn)
    assert code == sources_cli.EXIT_INVALID
    assert "source 'articles' already exists" in err and "sqlstate: 42710" in err
    code, _, err = run(capsys, dsn, "source", "add", "a3", "public.nope", "--body", "body")
    assert code == sources_cli.EXIT_INVALID
    assert 'relation "public.nope" does not exist' in err and "sqlstate: 42P01" in err


def test_remove_without_yes_and_no_terminal_refuses(
    articles: psycopg.Connection[Any],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert add_articles(capsys, dsn)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal
    code, out, err = run(capsys, dsn, "source", "remove", "articles")
    assert code == sources_cli.EXIT_INVALID
    assert "add --yes to confirm" in err
    assert (
        one(articles, "SELECT count(*) FROM pgingest.source_status WHERE source = 'articles'") == 1
    )
    assert len(triggers(articles)) == 4

    # On a terminal, anything but yes keeps it.
    tty = io.StringIO("n\n")
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", tty)
    code, out, _ = run(capsys, dsn, "source", "remove", "articles")
    assert code != 0 and "not removed" in out
    assert len(triggers(articles)) == 4
    tty = io.StringIO("yes\n")
    tty.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", tty)
    code, out, _ = run(capsys, dsn, "source", "remove", "articles")
    assert code == 0 and "source articles removed" in out
    assert triggers(articles) == []


def test_status_shows_the_sources_section(
    articles: psycopg.Connection[Any],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    fake: FakeEmbeddingServer,
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    assert add_articles(capsys, dsn)[0] == 0
    code, out, _ = status_cli(dsn)
    section = out.split("\nSOURCES\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0].split() == ["source", "table", "rows", "backfill", "capture", "failures"]
    assert section[1].split() == ["documents", "pgingest.documents", "0", "done", "0"]
    assert section[2].split() == ["articles", "articles", "0", "waiting", "0"]
    assert out.index("\nMODELS\n") < out.index("\nSOURCES\n") < out.index("\nDEAD LETTERS\n")
    assert "source articles: its backfill is queued by running workers, and none runs" in out

    # Half the backfill, then all of it, then a failed capture (a capture_failed dead letter).
    conn.execute("SELECT pgingest.source_backfill_step_v1(10, NULL)")
    conn.execute("ANALYZE public.articles")
    code, out, _ = status_cli(dsn)
    assert re.search(r"\narticles\s+articles\s+10\s+running 50% \(10 of ~20 rows\)\s+0\n", out)
    drain(dsn)
    code, out, _ = status_cli(dsn)
    assert code == 0
    assert re.search(r"\narticles\s+articles\s+20\s+done\s+0\n", out)
    conn.execute("SELECT pgingest._capture_failed('articles', 'UPDATE', 'XX000', 'planted')")
    code, out, _ = status_cli(dsn)
    assert code == 1  # a dead letter
    assert re.search(r"\narticles\s+articles\s+20\s+done\s+1\n", out)
    assert (
        "warning: source articles: 1 failed capture(s) (dead letters capture_failed): fix the"
        " cause, then pgingest source resync articles"
    ) in out
    code, out, _ = status_cli(dsn, "--json")
    sources = {s["source"]: s for s in json.loads(out)["sources"]}
    assert sources["articles"]["capture_failures"] == 1
    assert sources["articles"]["key_columns"] == ["tenant_id", "id"]

    # A server from before sources (no view): the section is left out, the rest still works.
    conn.execute("DROP VIEW pgingest.source_status")
    code, out, _ = status_cli(dsn)
    assert "\nMODELS\n" in out and "SOURCES" not in out
    code, out, _ = status_cli(dsn, "--json")
    assert json.loads(out)["sources"] is None


def test_search_source_limits_results_and_prints_the_source_and_key(
    articles: psycopg.Connection[Any],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    fake: FakeEmbeddingServer,
) -> None:
    conn = articles
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")  # for --hybrid
    insert_docs(
        conn,
        [
            (f"doc-{i}", f"Report {i}", f"Report {i} is about quarterly tenant reports. " * 6)
            for i in range(10)
        ],
    )
    assert add_articles(capsys, dsn)[0] == 0
    drain(dsn)

    def search(*argv: str) -> list[dict[str, Any]]:
        code, out, err = run(
            capsys, dsn, "search", "quarterly tenant reports", "--k", "30", "--json", *argv
        )
        assert code == 0, err
        return list(json.loads(out))

    assert {r["source"] for r in search()} == {"documents", "articles"}
    only = search("--source", "articles")
    assert len(only) == 20 and {r["source"] for r in only} == {"articles"}
    assert {(r["source_key"]["tenant_id"], r["source_key"]["id"]) for r in only} == {
        (str(TENANT), i) for i in range(1, 21)
    }
    assert {r["source"] for r in search("--source", "documents")} == {"documents"}
    both = search("--source", "documents", "--source", "articles")
    assert {r["source"] for r in both} == {"documents", "articles"}
    hybrid = search("--hybrid", "--source", "articles")
    assert hybrid and {r["source"] for r in hybrid} == {"articles"}
    # A long document matches in several chunks; per document, it comes back once.
    insert_docs(conn, [("doc-long", "Long report", "Quarterly tenant reports, again. " * 300)])
    drain(dsn)
    chunks = search("--hybrid", "--source", "documents")
    assert sum(r["doc_key"] == "doc-long" for r in chunks) > 1
    docs = search("--hybrid", "--source", "documents", "--per-document")
    assert sum(r["doc_key"] == "doc-long" for r in docs) == 1
    assert len(docs) == len({r["doc_id"] for r in docs})

    # The text output names the source and the key an application joins back on.
    code, out, _ = run(
        capsys, dsn, "search", "quarterly tenant reports", "--k", "3", "--source", "articles"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["#", "score", "source", "document"]
    assert lines[2].split()[2] == "articles"
    key = json.loads(lines[3].split("key", 1)[1])
    assert key["tenant_id"] == str(TENANT) and 1 <= key["id"] <= 20
    code, out, _ = run(
        capsys, dsn, "search", "quarterly tenant reports", "--k", "1", "--source", "documents"
    )
    assert re.match(r"\s+key\s+doc-\d$", out.splitlines()[3])

    code, _, err = run(capsys, dsn, "search", "quarterly tenant reports", "--source", "nope")
    assert code == 2
    assert "no source 'nope'" in err


def test_a_monitor_lists_and_shows_sources_and_may_not_attach_one(
    articles: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_articles(capsys, dsn)[0] == 0
    role = f"pgingest_t_mon_{uuid.uuid4().hex[:8]}"
    articles.execute(
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE pgingest_monitor").format(sql.Identifier(role))
    )
    try:
        monitor = psycopg.conninfo.make_conninfo(dsn, user=role)
        code, out, err = run(capsys, monitor, "source", "list")
        assert code == 0, err
        assert re.search(r"\narticles\s+articles\s+tenant_id, id\s", out)
        # pgingest.sources is for admins: the mapping comes from the status view.
        code, out, err = run(capsys, monitor, "source", "show", "articles")
        assert code == 0, err
        assert "key:                tenant_id, id\n" in out
        assert f"mapping:            {json.dumps(TEMPLATE)}\n" in out
        code, out, err = run(
            capsys, monitor, "source", "add", "a2", "public.articles", "--body", "body"
        )
        assert code == sources_cli.EXIT_ERROR
        assert "permission denied for function add_source" in err
        assert "  sqlstate: 42501" in err.splitlines()
    finally:
        articles.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
