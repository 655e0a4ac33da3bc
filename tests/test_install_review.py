"""Install review, finding 2: an older pgingest refuses to install over a newer schema.

A database installed by a newer pgingest records a migration that this package does not ship.
Installing this (older) package over it used to exit 0 and replace every sql/ routine with the
older body, while schema_migrations still said "newer". The installer now refuses (SQLSTATE 55000,
exit 2 from the CLI) and changes nothing: ``pgingest install``, its ``--print`` script run with
psql, and ``--plpython-only``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from pgingest import install
from tests.conftest import ROOT
from tests.helpers import schema_dump

FUTURE = "9990_from_a_newer_pgingest"
MARKER = "fixed in the newer version"


def _as_newer(dsn: str) -> None:
    """What a newer pgingest left: one more migration recorded, one routine with a newer body."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "INSERT INTO pgingest.schema_migrations (version, checksum) VALUES (%s, 'abc')",
            (FUTURE,),
        )
        body = c.execute(
            "SELECT pg_get_functiondef('pgingest._refresh_search_view()'::regprocedure)"
        ).fetchone()
        assert body is not None
        newer = body[0].replace("BEGIN", f"BEGIN\n    PERFORM '{MARKER}';", 1)
        assert MARKER in newer
        c.execute(newer)


def _newer_routine_kept(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        row = c.execute(
            "SELECT prosrc LIKE %s FROM pg_proc"
            " WHERE oid = 'pgingest._refresh_search_view()'::regprocedure",
            (f"%{MARKER}%",),
        ).fetchone()
        assert row is not None
        return bool(row[0])


def test_install_over_a_newer_schema_is_refused_and_changes_nothing(dsn: str) -> None:
    _as_newer(dsn)
    before = schema_dump(dsn)
    with pytest.raises(install.InstallError) as refused:
        install.install(dsn)
    assert refused.value.sqlstate == "55000"
    message = str(refused.value)
    assert FUTURE in message
    assert install.schema_version() in message  # what this package ships
    assert "older than the database's schema" in message
    assert "upgrade the package" in message
    assert _newer_routine_kept(dsn)
    assert schema_dump(dsn) == before


def test_the_cli_exits_2_naming_the_versions(dsn: str) -> None:
    _as_newer(dsn)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "pgingest.cli", "install", "--database-url", dsn],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert FUTURE in done.stderr
    assert "older than the database's schema" in done.stderr
    assert "Traceback" not in done.stderr
    assert "pgingest: installed" not in done.stdout
    assert _newer_routine_kept(dsn)


def test_the_printed_script_stops_too(dsn: str) -> None:
    _as_newer(dsn)
    before = schema_dump(dsn)
    done = subprocess.run(
        ["psql", "-X", "-q", "-d", dsn, "-f", "-"],
        input=install.render_script(psql=True),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert FUTURE in done.stderr
    assert _newer_routine_kept(dsn)
    assert schema_dump(dsn) == before


def test_plpython_only_over_a_newer_schema_is_refused(dsn: str) -> None:
    _as_newer(dsn)
    with pytest.raises(install.InstallError, match=FUTURE):
        install.install_plpython(dsn)


def test_pgmq_scripts_are_not_taken_for_newer_migrations(dsn: str) -> None:
    """A recorded pgmq script (pgmq--<from>--<to>) is pgmq's, checked by pgmq_sql_check.sql, not a
    migration: it does not make the schema "newer"; a database at this package's own schema
    installs again as before."""
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pgmq'").fetchone() != (1,):
            pytest.skip("pgmq is not the extension here")
        c.execute(
            "INSERT INTO pgingest.schema_migrations (version, checksum)"
            " VALUES ('pgmq--1.13.0--9.9.9', 'abc')"
        )
    notices: list[Any] = install.install(dsn)
    assert not any("applied migration" in n for n in notices)
