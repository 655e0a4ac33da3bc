"""Installer: applies migrations/ once each (tracked, checksummed, under a lock), then sql/ and plpython/.

The CLI and ``pgingest install --print`` use one code path: :func:`render_script` builds a single SQL
script; the CLI runs it in one transaction, a DBA runs the printed copy with ``psql -f``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgingest import db

# pg_advisory_xact_lock key: "pgingest" folded into a bigint.
INSTALL_LOCK_KEY = 0x7067696E67657374 & 0x7FFFFFFFFFFFFFFF

EXTENSIONS = ("vector", "pgmq", "plpython3u")


class InstallError(RuntimeError):
    """The installation cannot proceed (for example an applied migration was edited)."""


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def project_root() -> Path:
    """Folder holding migrations/, sql/ and plpython/ (the checkout, or the installed share dir)."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "share", *here.parents):
        if (candidate / "migrations").is_dir() and (candidate / "sql").is_dir():
            return candidate
    raise InstallError("cannot find the migrations/ and sql/ folders next to the pgingest package")


def _read_folder(folder: Path) -> list[SqlFile]:
    return [SqlFile(p.name, p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.sql"))]


def migrations(root: Path | None = None) -> list[SqlFile]:
    return _read_folder((root or project_root()) / "migrations")


def idempotent_files(root: Path | None = None) -> list[SqlFile]:
    root = root or project_root()
    return _read_folder(root / "sql") + _read_folder(root / "plpython")


def _dollar_quote(text: str, tag: str) -> str:
    delim = f"${tag}$"
    if delim in text:
        raise InstallError(f"the file contains the reserved dollar-quote tag {delim}")
    return f"{delim}{text}{delim}"


def _migration_block(m: SqlFile) -> str:
    version = m.name.removesuffix(".sql")
    return f"""
-- migration {m.name}
DO $pgingest_install$
DECLARE
    v_checksum text;
BEGIN
    SELECT checksum INTO v_checksum FROM pgingest.schema_migrations WHERE version = '{version}';
    IF NOT FOUND THEN
        EXECUTE {_dollar_quote(m.text, "pgingest_migration")};
        INSERT INTO pgingest.schema_migrations (version, checksum) VALUES ('{version}', '{m.checksum}');
        RAISE NOTICE 'pgingest: applied migration {version}';
    ELSIF v_checksum <> '{m.checksum}' THEN
        RAISE EXCEPTION 'pgingest: migration {version} was edited after it was applied'
            USING ERRCODE = 'data_corrupted',
                  DETAIL = format('recorded checksum %s, file checksum {m.checksum}', v_checksum),
                  HINT = 'Released migrations are never edited: restore the file and add a new migration.';
    END IF;
END;
$pgingest_install$;
"""  # noqa: S608 - file names and sha256 hex from the project's own files


PRELUDE = f"""
SELECT pg_advisory_xact_lock({INSTALL_LOCK_KEY});
SET LOCAL client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pgmq;
CREATE EXTENSION IF NOT EXISTS plpython3u;
SET LOCAL client_min_messages = notice;
-- Routines pin their search_path FROM CURRENT: pg_catalog, the vector extension's schema, pg_temp.
SELECT set_config(
    'search_path',
    format('pg_catalog, %I, pg_temp', (
        SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector')),
    true);
CREATE SCHEMA IF NOT EXISTS pgingest;
CREATE TABLE IF NOT EXISTS pgingest.schema_migrations (
    version text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
COMMENT ON TABLE pgingest.schema_migrations IS 'Migrations applied by the pgingest installer.';
"""  # noqa: S608 - constant text, no input


def render_script(root: Path | None = None, *, upto: str | None = None, psql: bool = False) -> str:
    """The whole installation as one SQL script (without BEGIN/COMMIT unless ``psql``).

    ``upto`` stops after the named migration and skips sql/ (tests replay the chain with it).
    """
    parts: list[str] = []
    if psql:
        parts.append(
            "-- pgingest installation script: psql -v ON_ERROR_STOP=1 -f install.sql\n"
            "\\set ON_ERROR_STOP on\nBEGIN;\n"
        )
    parts.append(PRELUDE)
    for m in migrations(root):
        parts.append(_migration_block(m))
        if upto is not None and m.name.removesuffix(".sql") == upto:
            break
    for f in [] if upto is not None else idempotent_files(root):
        parts.append(f"\n-- {f.name}\n{f.text}\n")
    if upto is None:
        parts.append(_python_path_sql())
    if psql:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)


def python_path() -> str:
    """Where PL/Python finds this package and its dependencies (recorded in pgingest.config)."""
    import site

    package_parent = str(Path(__file__).resolve().parent.parent)
    paths = [package_parent, *site.getsitepackages()]
    return ":".join(dict.fromkeys(p for p in paths if ":" not in p))


def _python_path_sql() -> str:
    value = python_path().replace("'", "''")
    return (
        "\n-- Where PL/Python imports pgingest from (edit for another server layout).\n"
        "INSERT INTO pgingest.config (key, value) VALUES ('python_path', "
        f"'{value}') ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();\n"
    )


def install(conninfo: str | None = None, *, upto: str | None = None) -> list[str]:
    """Applies the installation in one transaction; returns the notices (applied migrations)."""
    script = render_script(upto=upto)
    notices: list[str] = []
    with db.connect(conninfo, register_vector=False) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        try:
            with conn.transaction():
                conn.execute(script.encode("utf-8"))
        except psycopg.errors.DataCorrupted as exc:
            raise InstallError(
                str(exc.diag.message_primary) + "\n" + str(exc.diag.message_hint)
            ) from exc
    return [n for n in notices if n.startswith("pgingest:")]
