"""docs/stack.md's snippets run as they are written (issue 26, point 4).

Each fenced block after a ``<!-- snippet: NAME -->`` line is taken from the page and run against
a real database: SQL with psql (``-v ON_ERROR_STOP=1``), Python with this interpreter in a
process of its own, ``DATABASE_URL`` set to the test database's URL as a user would have it.
The model is registered with the fake embedding server; the page's ``setup`` snippet inserts
its documents and the worker embeds them. Every snippet filters on ``lang = en``, so each must
print the two English documents' keys and never the French one's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, register

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "stack.md"
SNIPPET = re.compile(r"^<!-- snippet: ([a-z-]+) -->\n```(sql|python)\n(.*?)^```$", re.M | re.S)

# What each snippet prints, as the number of result lines with a document key in them.
EXPECTED_ROWS = {
    "psql": 4,  # two queries, two English documents each
    "psycopg": 2,
    "psycopg-client-side": 2,
    "sqlalchemy": 2,
    "langchain": 2,
    "llamaindex": 2,
}
ENGLISH = {"faq-1", "faq-2"}


def snippets() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for name, lang, code in SNIPPET.findall(PAGE.read_text()):
        assert name not in found, f"two snippets named {name}"
        found[name] = (lang, code)
    return found


def url_of(dsn: str) -> str:
    """The test database as a postgresql:// URL (what `make print-database-url` prints)."""
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = quote(str(p.get("user", "postgres")), safe="")
    if p.get("password"):
        auth += ":" + quote(str(p["password"]), safe="")
    dbname = quote(str(p["dbname"]), safe="")
    host, port = str(p.get("host", "")), str(p.get("port", "5432"))
    if host.startswith("/"):  # a socket directory
        return f"postgresql://{auth}@/{dbname}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


def run(lang: str, code: str, url: str, tmp_path: Path) -> str:
    env = {**os.environ, "DATABASE_URL": url}
    if lang == "sql":
        path = tmp_path / "snippet.sql"
        path.write_text(code)
        cmd = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)]
    else:
        cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, f"snippet failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_page_has_each_snippet_once_and_each_is_checked() -> None:
    found = snippets()
    assert set(found) == {"setup", *EXPECTED_ROWS}
    assert found["setup"][0] == "sql"


@pytest.fixture
def stack_db(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer, tmp_path: Path
) -> str:
    """The page's data: model v1 (the fake), the setup snippet run with psql, then drained."""
    register(conn, "v1", fake.url)
    url = url_of(dsn)
    run(*snippets()["setup"], url, tmp_path)
    drain(dsn)
    row = conn.execute("SELECT count(*) FROM pgingest.store_v1").fetchone()
    assert row is not None and row[0] >= 3
    return url


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_snippet_runs_and_prints_the_english_documents(
    name: str, stack_db: str, tmp_path: Path
) -> None:
    lang, code = snippets()[name]
    stdout = run(lang, code, stack_db, tmp_path)
    lines = [line for line in stdout.splitlines() if re.search(r"\bfaq-\d\b", line)]
    assert len(lines) == EXPECTED_ROWS[name], stdout
    assert set(re.findall(r"\bfaq-\d\b", stdout)) == ENGLISH, stdout
