"""Operator CLI review, against the real database: a raw source paused by the worker is a problem
of `pgingest status` (exit 1, as a paused model) and shows in `source list` (finding 6); `model
add` refused for its quota or Batch API options leaves no model behind (finding 7); `model
backfill|quota` of a name of no live model exits 2 saying so (finding 9).

The part that needs no database (passwords in messages, `--watch`, `adopt pgai
--max-input-tokens`, the quota options refused before connecting) is tests/unit/test_cli_review.py.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgingest import cli
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import register
from tests.test_status import status_cli

REASON = "access: 403 Forbidden from the bucket"


def run(capsys: pytest.CaptureFixture[str], dsn: str, *argv: str) -> tuple[int, str, str]:
    """``pgingest <argv> --database-url dsn``: (exit code, stdout, stderr); an argparse error is
    its SystemExit's code."""
    capsys.readouterr()
    try:
        code = cli.main([*argv, "--database-url", dsn])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# -- finding 6: a paused raw source ----------------------------------------------------------


@pytest.fixture
def paused_source(conn: psycopg.Connection[Any], fake: FakeEmbeddingServer) -> str:
    """A raw source ``files`` (bytea column) with one row, paused as the worker pauses one."""
    register(conn, "v1", fake.url)
    conn.execute("CREATE TABLE public.files (id integer PRIMARY KEY, data bytea)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', content => 'data')")
    conn.execute("INSERT INTO public.files VALUES (1, 'hello'::bytea)")
    conn.execute("SELECT pgingest.raw_pause_source_v1('files', %s)", (REASON,))
    return "files"


def test_status_reports_a_paused_source_as_a_problem(
    conn: psycopg.Connection[Any], dsn: str, paused_source: str
) -> None:
    code, out, err = status_cli(dsn, "--max-dead-letters", "100")
    assert code == 1, out + err  # as for a paused model
    assert out.startswith("pgingest status: UNHEALTHY\n")
    assert f"  problem: source files is paused: {REASON}" in out
    assert f"  files paused: {REASON}" in out  # under the SOURCES table
    section = out.split("\nSOURCES\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0].split()[-1] == "state"
    assert [line.split()[-1] for line in section if line.startswith("files ")] == ["PAUSED"]

    code, out, _ = status_cli(dsn, "--max-dead-letters", "100", "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["healthy"]
    assert any(p.startswith(f"source files is paused: {REASON}") for p in doc["problems"])

    conn.execute("SELECT pgingest.resume_source('files')")
    code, out, _ = status_cli(dsn, "--max-dead-letters", "100")
    assert "paused" not in out
    section = out.split("\nSOURCES\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section[0].split()[-1] == "failures"  # no state column while none is paused


def test_source_list_shows_a_paused_source_with_its_reason(
    conn: psycopg.Connection[Any],
    dsn: str,
    paused_source: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, dsn, "source", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[-1] == "state"
    rows = [line.split() for line in lines if line.split()[:2] == ["files", "files"]]
    assert [r[-1] for r in rows] == ["PAUSED"]
    assert f"\nfiles is paused: {REASON} (SELECT pgingest.resume_source('files')" in out
    code, out, _ = run(capsys, dsn, "source", "list", "--json")
    rows = {r["source"]: r for r in json.loads(out)}
    assert rows["files"]["paused_reason"] == REASON
    assert rows["documents"]["paused_reason"] is None


# -- finding 7: model add refused leaves nothing ---------------------------------------------

ADD = ["model", "add", "q1", "--model-id", "m", "--dimensions", "3"]


def models(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM pgingest.models ORDER BY name")]


@pytest.mark.parametrize(
    "bad", [["--rpm", "0"], ["--tpm", "0"], ["--headroom", "5"], ["--rpm", "10", "--headroom", "1"]]
)
def test_model_add_with_a_bad_quota_registers_nothing(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
    bad: list[str],
) -> None:
    code, out, err = run(capsys, dsn, *ADD, "--base-url", fake.url, *bad)
    assert code == 2, out + err
    assert "registered model" not in out
    assert models(conn) == []
    # the same command with a valid quota then works
    code, out, err = run(capsys, dsn, *ADD, "--base-url", fake.url, "--rpm", "100")
    assert code == 0, err
    assert "registered model q1 (active)" in out
    assert "model q1: quota 100 requests per minute, 3% never used" in out
    assert models(conn) == ["q1"]
    assert one(conn, "SELECT requests_per_minute FROM pgingest.provider_quota") == 100


def test_model_add_refused_by_the_server_after_registering_leaves_nothing(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The quota is set in the transaction that registers the model: a refusal at that step
    (here a trigger of the test's own) rolls the registration back."""
    conn.execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'planted refusal' USING ERRCODE = 'check_violation'; END$$"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON pgingest.provider_quota"
        " FOR EACH ROW EXECUTE FUNCTION public.refuse()"
    )
    code, out, err = run(capsys, dsn, *ADD, "--base-url", fake.url, "--rpm", "100")
    assert code == 2, out + err
    assert "planted refusal" in err
    assert "registered model" not in out
    assert models(conn) == []
    assert (
        one(conn, "SELECT count(*) FROM pgmq.list_queues() WHERE queue_name = 'pgingest_q1'") == 0
    )
    conn.execute("DROP TRIGGER refuse ON pgingest.provider_quota")
    code, out, err = run(capsys, dsn, *ADD, "--base-url", fake.url, "--rpm", "100", "--batch-api")
    assert code == 0, err
    assert models(conn) == ["q1"]
    assert one(conn, "SELECT batch_api FROM pgingest.models WHERE name = 'q1'") is True
    assert "Batch API" in out


# -- finding 9: backfill and quota of an unknown model ---------------------------------------


@pytest.mark.parametrize("command", ["backfill", "quota"])
def test_backfill_and_quota_of_no_live_model_exit_2(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url)
    conn.execute("SELECT pgingest.retire_model('v2')")
    for name in ("no_such_model", "v2"):
        code, out, err = run(capsys, dsn, "model", command, name)
        assert code == 2, out + err
        assert f"pgingest model {command}: no live model named {name!r}" in err
        assert out == ""
    code, out, err = run(capsys, dsn, "model", command, "v1")
    assert code == 0, err
    assert "v1" in out
