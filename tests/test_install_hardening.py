"""Issue 18, hardening of the installer and small fixes beside it (each test fails before its fix):

- item 4: where PL/Python imports pgingest from is a superuser's choice: baked into the bootstrap
  by ``--plpython-only`` (the DBA-managed mode), or pgingest.config's only while a superuser owns
  it and no one else may write it; entries after the standard library on sys.path; relative,
  foreign-owned or group/world-writable entries refused at install;
- item 8: a vector extension schema where others may create objects is refused
  (``--allow-public-create``: a WARNING);
- item 14: register_filter's lock wait is bounded, hybrid_search refuses rrf_k < 1, text logs
  keep one record on one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector import Vector
from psycopg import sql

from pgingest import install, logs
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import drain, insert_docs, register
from tests.test_dba_install import (  # noqa: F401 (scratch: a fixture)
    Scratch,
    one,
    scratch,
    superuser_setup,
)

# ---- item 4: python_path -------------------------------------------------------------------


def test_relative_or_unnormalised_python_path_entries_are_refused() -> None:
    for bad in ("python", "./x", "/opt/../tmp", "/opt/x/", "/opt/a\nb", ":"):
        with pytest.raises(install.InstallError, match="--python-path"):
            install.render_script(python_path=bad)
        with pytest.raises(install.InstallError, match="--python-path"):
            install.render_plpython_script(python_path=bad)
    assert install.python_path_entries("/opt/pgingest/python::/srv/x") == [
        "/opt/pgingest/python",
        "/srv/x",
    ]


@pytest.fixture
def server_dirs() -> Iterator[Path]:
    """A folder the server's user can reach (tmp_path is not: pytest makes it 0700)."""
    base = Path("/tmp") / f"pgingest-h4-{uuid.uuid4().hex[:10]}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _folder(base: Path, name: str, mode: int, uid: int | None = None) -> str:
    d = base / name
    d.mkdir()
    d.chmod(mode)
    if uid is not None:
        os.chown(d, uid, -1)
    return str(d)


def _plant_evil_pgingest(base: Path) -> str:
    """A pgingest package whose chunk_preview answers 'EVIL': whoever imports it runs our code."""
    evil = base / "evil"
    (evil / "pgingest").mkdir(parents=True)
    (evil / "pgingest" / "__init__.py").write_text("")
    (evil / "pgingest" / "plpy_support.py").write_text(
        "def chunk_preview(plpy, body, title=None, model=None):\n"
        "    return [(0, 'EVIL', 0, 0, 0, 'EVIL')]\n"
    )
    for p in (evil, evil / "pgingest"):
        p.chmod(0o755)
    return str(evil)


def _preview(dsn: str) -> str:
    """chunk_preview's first chunk, in a new session (the bootstrap runs once per session)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return str(one(c, "SELECT content FROM pgingest.chunk_preview('A short text.')"))


def _sys_path(dsn: str) -> list[str]:
    """sys.path of a new session's PL/Python after the bootstrap ran (superuser: a DO block)."""
    seen: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as c:
        c.add_notice_handler(lambda d: seen.append(str(d.message_primary)))
        c.execute("SELECT pgingest._plpy_bootstrap()")
        c.execute("DO $$ import sys; plpy.notice(repr(sys.path)) $$ LANGUAGE plpython3u")
    return list(eval(seen[-1]))


def test_unsafe_python_path_entries_are_refused_at_install(
    empty_database: Callable[[str], str], server_dirs: Path
) -> None:
    dsn = empty_database("h4_refused")
    unsafe = {
        "world-writable": _folder(server_dirs, "world", 0o777),
        "group-writable": _folder(server_dirs, "group", 0o775),
        "sticky /tmp itself": "/tmp",
    }
    if os.geteuid() == 0:
        unsafe["owned by nobody"] = _folder(server_dirs, "nobody", 0o755, uid=65534)
    for what, path in unsafe.items():
        with pytest.raises(install.InstallError) as ei:
            install.install(dsn, python_path=f"{install.python_path()}:{path}")
        assert ei.value.sqlstate == "42501", what
        assert f"python_path entry '{path}' refused" in str(ei.value), what
        assert "--python-path" in str(ei.value), what
        with psycopg.connect(dsn, autocommit=True) as c:  # one transaction: nothing left
            assert one(c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgingest'") == 0

    # An entry the server cannot see is no danger: skipped, with a WARNING.
    missing = str(server_dirs / "not-there")
    lines = install.install(dsn, python_path=f"{install.python_path()}:{missing}")
    assert any(line.startswith("WARNING") and f"'{missing}' skipped" in line for line in lines), (
        lines
    )
    assert _preview(dsn) == "A short text."


def test_python_path_entries_come_after_the_standard_library(
    empty_database: Callable[[str], str],
) -> None:
    """Not first (issue 18 asks for append: nothing on the path may stand in for a standard
    library module), but ahead of the server's site folders, so that pgingest keeps the
    dependencies it was installed with (Debian 12's urllib3 1.26 lacks what it uses)."""
    dsn = empty_database("h4_order")
    install.install(dsn)
    path = _sys_path(dsn)
    ours = [path.index(p) for p in install.python_path_entries(install.python_path())]
    stdlib = [
        i for i, p in enumerate(path) if p.rstrip("/").endswith(("python3.11", "lib-dynload"))
    ]
    site = [i for i, p in enumerate(path) if p.endswith("-packages") and i not in ours]
    assert stdlib and ours and site, path
    assert max(stdlib) < min(ours) and max(ours) < min(site), path


def test_a_config_others_may_write_is_not_trusted(
    empty_database: Callable[[str], str], server_dirs: Path
) -> None:
    """A superuser's own install records the path in pgingest.config; once someone else may
    write that table (a GRANT), its python_path is ignored."""
    dsn = empty_database("h4_config")
    install.install(dsn)
    evil = _plant_evil_pgingest(server_dirs)
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("GRANT UPDATE ON pgingest.config TO pgingest_admin")
        # What a member of pgingest_admin could now write (here written for it):
        su.execute("UPDATE pgingest.config SET value = %s WHERE key = 'python_path'", (evil,))
    # Nothing baked, config not trusted: no path at all (pgingest is not found), not the evil one.
    with pytest.raises(psycopg.errors.ExternalRoutineException, match="No module named 'pgingest'"):
        _preview(dsn)
    assert evil not in _sys_path(dsn)
    # A superuser's install that finds config writable by others bakes the path instead.
    install.install(dsn)
    assert _preview(dsn) == "A short text."


@pytest.mark.slow
def test_the_owner_cannot_choose_the_code_plpython_runs(
    scratch: Scratch,  # noqa: F811 (the imported fixture)
    server_dirs: Path,
) -> None:
    """DBA-managed mode: the owner is no superuser, yet owns pgingest.config. The superuser's
    --plpython-only bakes the path into the bootstrap; what the owner writes into config is
    not imported, and the owner cannot replace the bootstrap."""
    owner = scratch.role("pgingest_owner")
    dbname = scratch.database("pgingest_h4", owner=owner)
    superuser_setup(scratch, dbname, owner)
    owner_dsn = scratch.dsn(dbname, owner)
    install.install(owner_dsn)
    install.install_plpython(scratch.dsn(dbname))
    with psycopg.connect(owner_dsn, autocommit=True) as c:
        assert _preview(owner_dsn) == "A short text."
        # The owner points python_path at code of its choosing (a folder it got onto the server).
        evil = _plant_evil_pgingest(server_dirs)
        c.execute(
            "INSERT INTO pgingest.config (key, value) VALUES ('python_path', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (evil,),
        )
        assert _preview(owner_dsn) == "A short text."  # not 'EVIL'
        body = one(
            c, "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._plpy_bootstrap()'::regprocedure"
        )
        assert f'BAKED = ["{install.python_path().split(":")[0]}"' in body

        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(
                "CREATE OR REPLACE FUNCTION pgingest._plpy_bootstrap() RETURNS void"
                " LANGUAGE plpython3u AS $$ import sys; sys.path.insert(0, '/x') $$"
            )
    assert evil not in _sys_path(scratch.dsn(dbname))

    # A database installed before the rule: its bootstrap trusts pgingest.config. The owner's
    # install says so until a superuser refreshes the PL/Python functions.
    with psycopg.connect(scratch.dsn(dbname), autocommit=True) as su:
        su.execute(
            "CREATE OR REPLACE FUNCTION pgingest._plpy_bootstrap() RETURNS void"
            " LANGUAGE plpython3u AS $$ return None $$"
        )
    lines = install.install(owner_dsn)
    assert any("a superuser must refresh them" in line for line in lines), lines
    install.install_plpython(scratch.dsn(dbname))
    assert not any("must refresh" in line for line in install.install(owner_dsn))


# ---- item 8: who may create objects in the vector extension's schema -----------------------


def test_a_vector_schema_others_may_create_in_is_refused(
    empty_database: Callable[[str], str],
) -> None:
    dsn = empty_database("h8")
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("CREATE EXTENSION vector")
        # As on a cluster upgraded from PostgreSQL 14 or older.
        su.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        with pytest.raises(install.InstallError) as ei:
            install.install(dsn)
        assert ei.value.sqlstate == "55000"
        assert "PUBLIC may create objects in schema public" in str(ei.value)
        assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC;" in str(ei.value)
        assert "--allow-public-create" in str(ei.value)
        assert one(su, "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgingest'") == 0

        # A role of its own with CREATE there is refused too, by name.
        su.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        role = f"h8_app_{uuid.uuid4().hex[:8]}"
        su.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        try:
            su.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            with pytest.raises(install.InstallError, match=f"{role} may create objects"):
                install.install(dsn)

            # The opt-out: installed, with a WARNING.
            lines = install.install(dsn, allow_public_create=True)
            warning = [line for line in lines if line.startswith("WARNING")]
            assert any(f"{role} may create objects in schema public" in w for w in warning)
            assert any("--allow-public-create" in w for w in warning)
            assert one(su, "SELECT count(*) FROM pgingest.schema_migrations") > 0
            # And once the grant is gone, no WARNING.
            su.execute(
                sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(sql.Identifier(role))
            )
            assert not [line for line in install.install(dsn) if "may create objects" in line]
        finally:
            su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_allow_public_create_is_an_install_option() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    install.add_arguments(parser)
    out: list[str] = []
    args = parser.parse_args(["--print", "--allow-public-create"])
    assert install.command(args, out=out.append) == 0
    assert "ELSIF TRUE THEN" in "".join(out)
    assert "ELSIF FALSE THEN" in install.render_plpython_script()


# ---- item 14: register_filter's lock, rrf_k, text logs -------------------------------------


def test_register_filter_waits_for_its_lock_at_most_lock_timeout(dsn: str) -> None:
    with (
        psycopg.connect(dsn) as holder,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        holder.execute("SELECT count(*) FROM pgingest.documents")  # ACCESS SHARE, kept open
        admin.execute("SET statement_timeout = '30s'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            admin.execute("SELECT pgingest.register_filter('tenant', 'integer')")
        assert time.monotonic() - started < 15  # 5 s by default, not statement_timeout
        # The caller's own lock_timeout wins.
        admin.execute("SET lock_timeout = '200ms'")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            admin.execute("SELECT pgingest.register_filter('tenant', 'integer')")
        assert time.monotonic() - started < 3
        holder.rollback()
        admin.execute("RESET lock_timeout")
        assert one(admin, "SELECT pgingest.register_filter('tenant', 'integer')") == "meta_tenant"


def test_hybrid_search_refuses_rrf_k_below_one(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("SELECT pgingest.set_text_search_config('english')")
    insert_docs(conn, [("d1", "Calibration", "The quuxotron calibration is documented here.")])
    drain(dsn)
    query = Vector(np.ones(384, dtype=np.float32) / np.sqrt(384))
    # rrf_k = -rank made the fused score divide by zero (DivisionByZero before the fix).
    for rrf_k in (-1, 0, -60):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="rrf_k must be at least 1"):
            conn.execute(
                "SELECT * FROM pgingest.hybrid_search('quuxotron', %s, 5, rrf_k => %s)",
                (query, rrf_k),
            )
        conn.rollback()
    rows = conn.execute(
        "SELECT doc_key FROM pgingest.hybrid_search('quuxotron', %s, 5, rrf_k => 1)", (query,)
    ).fetchall()
    assert rows == [("d1",)]


def test_text_logs_keep_one_record_on_one_line() -> None:
    formatter = logs.TextFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.makeLogRecord(
        {
            "name": "pgingest.worker",
            "levelname": "WARNING",
            "msg": "document %s dead-lettered",
            "args": ("k1\nERROR pgingest.worker: forged line",),
            "doc_key": "k2\r\nERROR forged=1",
            "model": "v1",
        }
    )
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line, line
    assert line.startswith(
        "WARNING pgingest.worker: document k1\\nERROR pgingest.worker: forged line dead-lettered"
    )
    assert line.endswith(' doc_key="k2\\r\\nERROR forged=1" model=v1')
