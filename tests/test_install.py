"""Installer: tracked, checksummed, idempotent, concurrent-safe; fresh install == migration chain."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import install
from tests.conftest import ROOT
from tests.helpers import columns_in_any_order, schema_dump


def _migration_rows(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as c:
        return [
            (r[0], r[1])
            for r in c.execute(
                "SELECT version, checksum FROM pgingest.schema_migrations ORDER BY 1"
            )
        ]


def test_migrations_are_tracked_with_checksums_and_install_is_idempotent(
    empty_database: Any,
) -> None:
    dsn = empty_database("idem")
    first = install.install(dsn)
    assert any("applied migration 0001_initial" in n for n in first)
    rows = _migration_rows(dsn)
    files = install.migrations()
    assert [r[0] for r in rows] == [f.name.removesuffix(".sql") for f in files]
    assert [r[1] for r in rows] == [f.checksum for f in files]
    second = install.install(dsn)
    assert not any("applied migration" in n for n in second)
    assert _migration_rows(dsn) == rows


def test_concurrent_installs_serialise(empty_database: Any) -> None:
    dsn = empty_database("conc")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            install.install(dsn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_migration_rows(dsn)) == len(install.migrations())


def test_edited_applied_migration_is_refused(empty_database: Any, tmp_path: Path) -> None:
    dsn = empty_database("edit")
    install.install(dsn)
    for folder in ("migrations", "sql", "plpython"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    m = tmp_path / "migrations" / "0001_initial.sql"
    m.write_text(m.read_text() + "\n-- an innocent edit\n")
    script = install.render_script(tmp_path)
    with (
        psycopg.connect(dsn, autocommit=True) as c,
        pytest.raises(psycopg.errors.DataCorrupted) as ei,
        c.transaction(),
    ):
        c.execute(script.encode())
    assert "0001_initial was edited" in str(ei.value)


def test_fresh_install_equals_the_migration_chain(empty_database: Any) -> None:
    fresh = empty_database("fresh")
    install.install(fresh)
    chain = empty_database("chain")
    for m in install.migrations():
        install.install(chain, upto=m.name.removesuffix(".sql"))
    install.install(chain)
    # One difference by design: the chain applied 0004 (full text on by default) in an earlier
    # run than 0005 (off by default for new installs), and an upgrade keeps it on. The chain's
    # chunks.tsv then sits before the columns later migrations add (0006: profile_id), a fresh
    # install's after them: the columns are compared in any order.
    with psycopg.connect(fresh, autocommit=True) as c:
        c.execute("SELECT pgingest.set_text_search_config('english')")
    assert columns_in_any_order(schema_dump(fresh)) == columns_in_any_order(schema_dump(chain))


def test_printed_script_installs_with_psql(empty_database: Any, tmp_path: Path) -> None:
    dsn = empty_database("psql")
    script = tmp_path / "install.sql"
    out = subprocess.run(
        [str(ROOT / ".venv/bin/pgingest"), "install", "--print"],
        capture_output=True,
        text=True,
        check=True,
    )
    script.write_text(out.stdout)
    for _ in range(2):  # the script is idempotent too
        subprocess.run(
            ["psql", "-X", "-q", "-d", dsn, "-f", str(script)], check=True, capture_output=True
        )
    assert [r[0] for r in _migration_rows(dsn)] == [
        f.name.removesuffix(".sql") for f in install.migrations()
    ]


# ---- the installer's templates (installer/*.sql): no database needed -------------------------


def test_template_values_are_quoted_where_they_land(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "-- as :who, for :ident\n"
        "SELECT :who, 'hi :who', :n, :ident, x::regclass;\n"
        ":gone\n"
        "DO $$ DECLARE v text := 'a'; BEGIN PERFORM :who; END; $$;\n"
    )
    monkeypatch.setattr(install, "_template", lambda name: text)
    out = install.render_template(
        "t.sql", who="O'Brien --x", n=3, ident=install.Sql('"My ""Role"""'), gone=""
    )
    assert out == (
        '-- as O\'Brien --x, for "My ""Role"""\n'
        "SELECT 'O''Brien --x', 'hi O''Brien --x', 3, \"My \"\"Role\"\"\", x::regclass;\n"
        "DO $$ DECLARE v text := 'a'; BEGIN PERFORM 'O''Brien --x'; END; $$;\n"
    )
    values: dict[str, Any] = {"who": "a", "n": 1, "ident": install.Sql("b"), "gone": ""}
    with pytest.raises(install.InstallError, match="no value for :n"):
        install.render_template("t.sql", **{k: v for k, v in values.items() if k != "n"})
    with pytest.raises(install.InstallError, match="no placeholder for"):
        install.render_template("t.sql", **values, extra="x")
    with pytest.raises(install.InstallError, match="line break in a comment"):
        install.render_template("t.sql", **{**values, "who": "a\nDROP TABLE t;"})
    with pytest.raises(install.InstallError, match="quote inside a literal"):
        install.render_template("t.sql", **{**values, "who": install.Sql("'x'")})


def test_templates_render_without_their_header_and_lint_comments() -> None:
    for template in (install.project_root() / "installer").glob("*.sql"):
        assert "-- noqa" in template.read_text() or template.name != "prelude.sql"
        assert "-- noqa" not in install._template(template.name), template.name
    for script in (
        install.render_script(psql=True, chunk_partitions=4),
        install.render_plpython_script(psql=True),
        install.render_uninstall_script(),
        install.superuser_setup_sql("app_owner"),
    ):
        assert "Installer template" not in script
    # python_path.sql: the path as a literal for pgingest.config, and baked (a JSON list, which
    # Python reads) into one of the two bootstraps; the other reads pgingest.config.
    rendered = install._python_path_sql("/opt/it's:/srv/a\"b")
    assert "VALUES ('python_path', '/opt/it''s:/srv/a\"b')" in rendered
    assert rendered.count("CREATE OR REPLACE FUNCTION pgingest._plpy_bootstrap()") == 2
    assert rendered.count("BAKED = []\n") == 1
    assert rendered.count('BAKED = ["/opt/it\'s", "/srv/a\\"b"]\n') == 1
    assert install.schema_version() == install.migrations()[-1].name.removesuffix(".sql")
