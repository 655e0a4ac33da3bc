"""Installer: applies migrations/ once each (tracked, checksummed, under a lock), then sql/ and plpython/.

The CLI and ``pgingest install --print`` use one code path: :func:`render_script` builds a single SQL
script; the CLI runs it in one transaction, a DBA runs the printed copy with ``psql -f``.

Order of the script: the prelude (lock, extensions, search_path, pgmq rights), migrations/ (each
once), sql/ except the privileges file, plpython/, and last the privileges file(s)
(``sql/*_privileges.sql``), so that the grants cover every routine, PL/Python ones included.

DBA-managed databases (docs/deployment.md): the installing role needs no superuser once a superuser
has created the extensions vector, pgmq and plpython3u and granted the pgmq rights below
(:func:`superuser_setup_sql`). PL/Python functions can only be created by a superuser (plpython3u
is untrusted): each plpython/ file runs in a DO block that skips it with a WARNING for any other
role, and :func:`render_plpython_script` (``pgingest install --plpython-only``) is the superuser's
follow-up that adds them and hands them to the schema's owner.

Install option: ``chunk_partitions`` hash-partitions ``pgingest.chunks`` by ``doc_id`` at the first
install (``SET LOCAL pgingest.chunk_partitions``, read by migrations/0001_initial.sql).

Importing this module is cheap (psycopg is imported when a database is used): ``pgingest --help``
builds the install options from :func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# pg_advisory_xact_lock key: "pgingest" folded into a bigint.
INSTALL_LOCK_KEY = 0x7067696E67657374 & 0x7FFFFFFFFFFFFFFF

EXTENSIONS = ("vector", "pgmq", "plpython3u")

# Rights on the pgmq extension's objects that the role owning pgingest needs when a superuser
# created pgmq: the queue of every model is a pair of tables in schema pgmq created (pgmq.create)
# and dropped (pgmq.drop_queue) by register_model / retire_model, which also write pgmq.meta.
PGMQ_SCHEMA_PRIVILEGES = "USAGE, CREATE"
PGMQ_META_PRIVILEGES = "SELECT, INSERT, DELETE"

MAX_CHUNK_PARTITIONS = 1024

# Migrations amended before any release: checksums of their earlier texts, accepted as equivalent
# (the database got the same objects) and replaced by the current checksum on the next install.
AMENDED_MIGRATIONS: dict[str, tuple[str, ...]] = {
    # 0001_initial gained the chunk-partitioning install option (a DO block that does nothing
    # unless pgingest.chunk_partitions is set); earlier installs are the unpartitioned default.
    "0001_initial": ("e359fcf0b24971fc0a693a29b7765f09ed8a2fcfb15b68712dd72a131fe9a1a1",),
}


class InstallError(RuntimeError):
    """The installation cannot proceed (an applied migration was edited, rights are missing...)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str
    folder: str = "sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def is_privileges(self) -> bool:
        return self.folder == "sql" and self.name.endswith("_privileges.sql")


def project_root() -> Path:
    """Folder holding migrations/, sql/ and plpython/ (the checkout, or the installed share dir)."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "share", *here.parents):
        if (candidate / "migrations").is_dir() and (candidate / "sql").is_dir():
            return candidate
    raise InstallError("cannot find the migrations/ and sql/ folders next to the pgingest package")


def _read_folder(folder: Path) -> list[SqlFile]:
    return [
        SqlFile(p.name, p.read_text(encoding="utf-8"), folder.name)
        for p in sorted(folder.glob("*.sql"))
    ]


def migrations(root: Path | None = None) -> list[SqlFile]:
    return _read_folder((root or project_root()) / "migrations")


def plpython_files(root: Path | None = None) -> list[SqlFile]:
    return _read_folder((root or project_root()) / "plpython")


def privileges_files(root: Path | None = None) -> list[SqlFile]:
    return [f for f in _read_folder((root or project_root()) / "sql") if f.is_privileges]


def idempotent_files(root: Path | None = None) -> list[SqlFile]:
    """The re-runnable files in the order they are applied: sql/, plpython/, then privileges."""
    root = root or project_root()
    sql_files = _read_folder(root / "sql")
    return (
        [f for f in sql_files if not f.is_privileges]
        + plpython_files(root)
        + [f for f in sql_files if f.is_privileges]
    )


def _dollar_quote(text: str, tag: str) -> str:
    delim = f"${tag}$"
    if delim in text:
        raise InstallError(f"the file contains the reserved dollar-quote tag {delim}")
    return f"{delim}{text}{delim}"


def _literal(text: str) -> str:
    """A SQL string literal of the project's own text (file names, function names)."""
    return "'" + text.replace("'", "''") + "'"


def _migration_block(m: SqlFile) -> str:
    version = m.name.removesuffix(".sql")
    earlier = [c for c in AMENDED_MIGRATIONS.get(version, ()) if c != m.checksum]
    amended = ""
    if earlier:
        checksums = ", ".join(f"'{c}'" for c in earlier)
        amended = f"""
    ELSIF v_checksum IN ({checksums}) THEN
        UPDATE pgingest.schema_migrations SET checksum = '{m.checksum}' WHERE version = '{version}';
        RAISE NOTICE 'pgingest: migration {version} was recorded with the checksum of an earlier, equivalent text (amended before release): record updated';"""  # noqa: S608 - sha256 hex and names of the project's files
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
        RAISE NOTICE 'pgingest: applied migration {version}';{amended}
    ELSIF v_checksum <> '{m.checksum}' THEN
        RAISE EXCEPTION 'pgingest: migration {version} was edited after it was applied'
            USING ERRCODE = 'data_corrupted',
                  DETAIL = format('recorded checksum %s, file checksum {m.checksum}', v_checksum),
                  HINT = 'Released migrations are never edited: restore the file and add a new migration.';
    END IF;
END;
$pgingest_install$;
"""  # noqa: S608 - file names and sha256 hex from the project's own files


def superuser_setup_sql(owner: str = "app_owner") -> str:
    """What a superuser runs once in the target database before ``owner`` installs pgingest.

    Printed by ``pgingest install --print-superuser-setup`` and quoted in docs/deployment.md; the
    installer's errors give the same statements with the real role name.
    """
    from psycopg import sql

    role = sql.Identifier(owner).as_string(None)
    return f"""-- pgingest: run once by a superuser, connected to the target database.
-- 1. The extensions (vector and plpython3u are not trusted extensions: superuser only).
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pgmq;
CREATE EXTENSION IF NOT EXISTS plpython3u;
-- 2. The owner of pgingest creates and drops one pgmq queue per model (tables in schema pgmq,
--    rows in pgmq.meta).
GRANT {PGMQ_SCHEMA_PRIVILEGES} ON SCHEMA pgmq TO {role};
GRANT {PGMQ_META_PRIVILEGES} ON pgmq.meta TO {role};
-- 3. The group roles (cluster-wide: once per cluster), which the owner then grants to logins.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[
        'pgingest_writer', 'pgingest_reader', 'pgingest_worker', 'pgingest_monitor', 'pgingest_admin'
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END;
$$;
GRANT pgingest_reader, pgingest_monitor TO pgingest_admin;
GRANT pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin
TO {role} WITH ADMIN OPTION;
-- 4. The owner needs CREATE on the database (to create schema pgingest): it has it when it owns
--    the database; otherwise: GRANT CREATE ON DATABASE <this database> TO {role};
-- Then, as {role}: pgingest install (or psql -f install.sql); afterwards, as a superuser:
-- pgingest install --plpython-only (the PL/Python functions).
"""  # noqa: S608 - the role name is quoted by sql.Identifier


def _hint_setup_sql() -> str:
    """The superuser statements of :func:`superuser_setup_sql`, for the current role (SQL text)."""
    return (
        "format('A superuser runs, in database %s: CREATE EXTENSION IF NOT EXISTS vector; "
        "CREATE EXTENSION IF NOT EXISTS pgmq; CREATE EXTENSION IF NOT EXISTS plpython3u; "
        f"GRANT {PGMQ_SCHEMA_PRIVILEGES} ON SCHEMA pgmq TO %I; "
        f"GRANT {PGMQ_META_PRIVILEGES} ON pgmq.meta TO %I; "
        "(all of it: pgingest install --print-superuser-setup; docs/deployment.md)', "
        "current_database(), current_user, current_user)"
    )


PRELUDE = f"""
SELECT pg_advisory_xact_lock({INSTALL_LOCK_KEY});
-- Extensions: created when missing (superuser only for vector and plpython3u); a role that is not
-- a superuser installs into a database where a superuser created them (docs/deployment.md).
DO $pgingest_install$
DECLARE
    v_ext text;
    v_missing text[] := '{{}}';
BEGIN
    FOREACH v_ext IN ARRAY ARRAY['vector', 'pgmq'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = v_ext);
        BEGIN
            EXECUTE format('CREATE EXTENSION %I', v_ext);
        EXCEPTION WHEN insufficient_privilege THEN
            v_missing := v_missing || v_ext;
        END;
    END LOOP;
    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'pgingest: the extension % is not installed in database % and % may not create it',
            array_to_string(v_missing, ' and '), current_database(), current_user
            USING ERRCODE = 'insufficient_privilege', HINT = {_hint_setup_sql()};
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'plpython3u') THEN
        IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
            CREATE EXTENSION plpython3u;
        ELSE
            RAISE WARNING 'pgingest: plpython3u is not installed in database %: the PL/Python functions are skipped',
                current_database()
                USING HINT = 'Everything else works. For embed_query(), search_text() and chunk_preview(), a '
                             'superuser runs CREATE EXTENSION plpython3u; then pgingest install --plpython-only.';
        END IF;
    END IF;
END;
$pgingest_install$;
-- Routines pin their search_path FROM CURRENT: pg_catalog, the vector extension's schema, pg_temp.
SELECT set_config(
    'search_path',
    format('pg_catalog, %I, pg_temp', (
        SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector')),
    true);
-- Load pgvector's library in this session: its settings (hnsw.iterative_scan) become known, and a
-- routine's SET clause naming an unknown (placeholder) setting is refused to a non-superuser.
DO $pgingest_install$ BEGIN PERFORM '[1]'::vector; END; $pgingest_install$;
-- The queues of the models live in schema pgmq: the owner creates and drops them.
DO $pgingest_install$
BEGIN
    IF NOT (has_schema_privilege('pgmq', '{PGMQ_SCHEMA_PRIVILEGES}')
            AND has_table_privilege('pgmq.meta', '{PGMQ_META_PRIVILEGES}')) THEN
        RAISE EXCEPTION 'pgingest: % lacks rights on the pgmq extension''s schema (the queues of the models live there)',
            current_user
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Needed: {PGMQ_SCHEMA_PRIVILEGES} on schema pgmq, {PGMQ_META_PRIVILEGES} on pgmq.meta.',
                  HINT = {_hint_setup_sql()};
    END IF;
END;
$pgingest_install$;
CREATE SCHEMA IF NOT EXISTS pgingest;
CREATE TABLE IF NOT EXISTS pgingest.schema_migrations (
    version text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
COMMENT ON TABLE pgingest.schema_migrations IS 'Migrations applied by the pgingest installer.';
"""  # noqa: S608 - constant text, no input

# After the migrations: an explicit partition count must match the table (it is fixed at the first
# install; an upgrade run with another count must not pass silently).
PARTITIONS_CHECK = """
DO $pgingest_install$
DECLARE
    v_want text := nullif(current_setting('pgingest.chunk_partitions', true), '');
    v_have integer;
BEGIN
    IF v_want IS NULL OR to_regclass('pgingest.chunks') IS NULL THEN
        RETURN;
    END IF;
    SELECT count(*) INTO v_have FROM pg_catalog.pg_inherits AS i WHERE i.inhparent = 'pgingest.chunks'::regclass;
    IF v_have <> v_want::integer THEN
        RAISE EXCEPTION 'pgingest: pgingest.chunks has % partitions, not %', v_have, v_want
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The partition count is chosen at the first install (--chunk-partitions); '
                         'install again without the option.';
    END IF;
END;
$pgingest_install$;
"""


def _public_functions(f: SqlFile) -> list[str]:
    names = re.findall(r"FUNCTION\s+pgingest\.([a-z_][a-z0-9_]*)\s*\(", f.text)
    return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def _plpython_block(f: SqlFile) -> str:
    """A plpython/ file, applied only by a superuser; skipped with a WARNING otherwise."""
    names = ", ".join(f"{n}()" for n in _public_functions(f)) or "its functions"
    # The first routine of the file tells whether a superuser installed the file earlier.
    first = re.search(r"FUNCTION\s+pgingest\.([a-z_][a-z0-9_]*)\s*\(", f.text)
    probe = _literal(first.group(1)) if first else "NULL"
    return f"""
-- plpython/{f.name}: PL/Python is untrusted, so only a superuser creates these functions.
DO $pgingest_install$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        EXECUTE {_dollar_quote(f.text, "pgingest_plpython")};
    ELSIF EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pgingest'::regnamespace AND p.proname = {probe}
    ) THEN
        RAISE WARNING 'pgingest: plpython/{f.name} not re-applied: % is not a superuser; the PL/Python functions installed earlier are kept as they are',
            current_user
            USING HINT = 'After an upgrade a superuser refreshes them: pgingest install --plpython-only '
                         '(or psql -f of pgingest install --plpython-only --print).';
    ELSE
        RAISE WARNING 'pgingest: plpython/{f.name} skipped: % is not a superuser (plpython3u is untrusted): {names} are not installed; everything else works',
            current_user
            USING HINT = 'A superuser adds them: pgingest install --plpython-only '
                         '(or psql -f of pgingest install --plpython-only --print).';
    END IF;
END;
$pgingest_install$;
"""  # noqa: S608 - the project's own file names and text


def _python_path_sql(path: str | None = None) -> str:
    value = (path or python_path()).replace("'", "''")
    return (
        "\n-- Where PL/Python imports pgingest from (edit for another server layout).\n"
        "INSERT INTO pgingest.config (key, value) VALUES ('python_path', "
        f"'{value}') ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();\n"
    )


def _check_partitions(chunk_partitions: int | None) -> None:
    if chunk_partitions is not None and not 0 <= chunk_partitions <= MAX_CHUNK_PARTITIONS:
        raise InstallError(
            f"chunk_partitions must be from 0 (not partitioned) to {MAX_CHUNK_PARTITIONS}, "
            f"not {chunk_partitions}"
        )


def render_script(
    root: Path | None = None,
    *,
    upto: str | None = None,
    psql: bool = False,
    chunk_partitions: int | None = None,
    python_path: str | None = None,
) -> str:
    """The whole installation as one SQL script (without BEGIN/COMMIT unless ``psql``).

    ``upto`` stops after the named migration and skips sql/ (tests replay the chain with it).
    ``chunk_partitions``: hash-partition pgingest.chunks into that many partitions (0: a plain
    table); it takes effect at the first install and must match on later ones.
    ``python_path``: where the database server's PL/Python finds this package (default: where
    it is on this machine, see :func:`python_path`).
    """
    _check_partitions(chunk_partitions)
    parts: list[str] = []
    if psql:
        parts.append(
            "-- pgingest installation script: psql -v ON_ERROR_STOP=1 -f install.sql\n"
            "-- Needs no superuser where a superuser ran pgingest install --print-superuser-setup\n"
            "-- (docs/deployment.md); the PL/Python functions are then skipped with a WARNING.\n"
            "\\set ON_ERROR_STOP on\nBEGIN;\n"
        )
    if chunk_partitions is not None:
        parts.append(f"SET LOCAL pgingest.chunk_partitions = '{int(chunk_partitions)}';\n")
    parts.append(PRELUDE)
    for m in migrations(root):
        parts.append(_migration_block(m))
        if upto is not None and m.name.removesuffix(".sql") == upto:
            break
    parts.append(PARTITIONS_CHECK)
    if upto is None:
        for f in idempotent_files(root):
            if f.folder == "plpython":
                parts.append(_plpython_block(f))
            else:
                parts.append(f"\n-- {f.folder}/{f.name}\n{f.text}\n")
        parts.append(_python_path_sql(python_path))
    if psql:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)


PLPYTHON_PRELUDE = f"""
SELECT pg_advisory_xact_lock({INSTALL_LOCK_KEY});
DO $pgingest_install$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'pgingest: the PL/Python functions can only be created by a superuser, not %', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'plpython3u is an untrusted language. Run this as a superuser.';
    END IF;
    IF to_regclass('pgingest.schema_migrations') IS NULL THEN
        RAISE EXCEPTION 'pgingest is not installed in database %', current_database()
            USING ERRCODE = 'undefined_object',
                  HINT = 'The owner installs it first: pgingest install (or psql -f install.sql).';
    END IF;
END;
$pgingest_install$;
CREATE EXTENSION IF NOT EXISTS plpython3u;
SELECT set_config(
    'search_path',
    format('pg_catalog, %I, pg_temp', (
        SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector')),
    true);
"""  # noqa: S608 - constant text, no input

# The routines a superuser created go to the owner of schema pgingest: its later installs then
# manage their grants (and DROP SCHEMA ... CASCADE removes them). Their bodies stay superuser-only.
PLPYTHON_OWNERSHIP = """
DO $pgingest_install$
DECLARE
    v_routine regprocedure;
    v_owner name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pgingest');
BEGIN
    FOR v_routine IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pgingest'::regnamespace AND pg_get_userbyid(p.proowner) <> v_owner
        ORDER BY 1
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_routine, v_owner);
    END LOOP;
END;
$pgingest_install$;
"""


def render_plpython_script(
    root: Path | None = None, *, psql: bool = False, python_path: str | None = None
) -> str:
    """The superuser's follow-up to a DBA install: plpython/, owner set, privileges re-applied."""
    parts: list[str] = []
    if psql:
        parts.append(
            "-- pgingest PL/Python functions, run by a superuser after the owner installed pgingest:\n"
            "-- psql -v ON_ERROR_STOP=1 -f plpython.sql\n\\set ON_ERROR_STOP on\nBEGIN;\n"
        )
    parts.append(PLPYTHON_PRELUDE)
    for f in plpython_files(root):
        parts.append(f"\n-- plpython/{f.name}\n{f.text}\n")
    parts.append(PLPYTHON_OWNERSHIP)
    parts.append(_python_path_sql(python_path))
    for f in privileges_files(root):
        parts.append(f"\n-- sql/{f.name}\n{f.text}\n")
    if psql:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)


def render_uninstall_script() -> str:
    """Removes pgingest from a database (psql script): its queues, then schema pgingest."""
    return f"""-- pgingest uninstall: psql -v ON_ERROR_STOP=1 -f uninstall.sql (as the owner of schema pgingest)
\\set ON_ERROR_STOP on
BEGIN;
SELECT pg_advisory_xact_lock({INSTALL_LOCK_KEY});
DO $pgingest_install$
DECLARE
    v_queue text;
BEGIN
    IF to_regclass('pgingest.models') IS NULL THEN
        RETURN;
    END IF;
    FOR v_queue IN
        SELECT m.queue_name FROM pgingest.models AS m
        INNER JOIN pgmq.meta AS q ON q.queue_name = m.queue_name
        ORDER BY 1
    LOOP
        PERFORM pgmq.drop_queue(v_queue);
    END LOOP;
END;
$pgingest_install$;
DROP SCHEMA IF EXISTS pgingest CASCADE;
COMMIT;
-- Left on purpose (they may serve others): publications (DROP PUBLICATION pgingest;), the group
-- roles, cluster-wide (a superuser, once no database uses them: DROP ROLE pgingest_writer,
-- pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;), and the extensions
-- (DROP EXTENSION pgmq; DROP EXTENSION vector; DROP EXTENSION plpython3u;).
"""  # noqa: S608 - constant text, no input


def python_path() -> str:
    """Where PL/Python finds this package and its dependencies (recorded in pgingest.config)."""
    import site

    package_parent = str(Path(__file__).resolve().parent.parent)
    paths = [package_parent, *site.getsitepackages()]
    return ":".join(dict.fromkeys(p for p in paths if ":" not in p))


def _format_notice(d: Any) -> str | None:
    message = str(d.message_primary or "")
    if not message.startswith("pgingest:"):
        return None
    if d.severity_nonlocalized in ("NOTICE", "INFO", "LOG", "DEBUG", None):
        return message
    hint = f"\nHINT: {d.message_hint}" if d.message_hint else ""
    return f"{d.severity_nonlocalized}: {message}{hint}"


def _run(conninfo: str | None, script: str) -> list[str]:
    import psycopg

    from pgingest import db

    notices: list[str] = []

    def collect(d: Any) -> None:
        line = _format_notice(d)
        if line is not None:
            notices.append(line)

    with db.connect(conninfo, register_vector=False) as conn:
        conn.add_notice_handler(collect)
        try:
            with conn.transaction():
                conn.execute(script.encode("utf-8"))
        except (
            psycopg.errors.DataCorrupted,
            psycopg.errors.InsufficientPrivilege,
            psycopg.errors.ObjectNotInPrerequisiteState,
            psycopg.errors.UndefinedObject,
        ) as exc:
            parts = [str(exc.diag.message_primary)]
            parts += [f"{k}: {v}" for k, v in (("DETAIL", exc.diag.message_detail),) if v]
            parts += [f"HINT: {exc.diag.message_hint}"] if exc.diag.message_hint else []
            raise InstallError("\n".join(parts), exc.sqlstate) from exc
    return notices


def install(
    conninfo: str | None = None,
    *,
    upto: str | None = None,
    chunk_partitions: int | None = None,
    python_path: str | None = None,
) -> list[str]:
    """Applies the installation in one transaction; returns pgingest's notices (applied
    migrations) and warnings (``WARNING: ...``, with their hint)."""
    return _run(
        conninfo,
        render_script(upto=upto, chunk_partitions=chunk_partitions, python_path=python_path),
    )


def install_plpython(conninfo: str | None = None, *, python_path: str | None = None) -> list[str]:
    """The superuser's part of a DBA-managed install: the PL/Python functions (see module doc)."""
    return _run(conninfo, render_plpython_script(python_path=python_path))


# ---- command line (wired into ``pgingest install`` by cli.py) ------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``pgingest install`` (besides --database-url)."""
    p.add_argument(
        "--print",
        action="store_true",
        help="write the installation as one SQL script to stdout (for psql -f)",
    )
    p.add_argument(
        "--chunk-partitions",
        type=int,
        default=None,
        metavar="N",
        help="first install only: hash-partition pgingest.chunks by document into N partitions",
    )
    p.add_argument(
        "--python-path",
        default=None,
        metavar="PATHS",
        help="where the database server's PL/Python imports pgingest from (':'-separated; "
        "default: this machine's; /opt/pgingest/python in Dockerfile.postgres's image)",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--plpython-only",
        action="store_true",
        help="superuser: add the PL/Python functions to a database a non-superuser installed",
    )
    what.add_argument(
        "--print-superuser-setup",
        metavar="OWNER",
        default=None,
        help="print what a superuser runs before OWNER installs (extensions, pgmq grants, roles)",
    )
    what.add_argument(
        "--print-uninstall", action="store_true", help="print the uninstall script (psql -f)"
    )


def command(args: argparse.Namespace, out: Callable[[str], Any] = sys.stdout.write) -> int:
    """``pgingest install``: 0 done, 2 refused (missing rights, edited migration...)."""
    try:
        if args.print_superuser_setup:
            out(superuser_setup_sql(args.print_superuser_setup))
            return 0
        if args.print_uninstall:
            out(render_uninstall_script())
            return 0
        if args.plpython_only:
            if args.print:
                out(render_plpython_script(psql=True, python_path=args.python_path))
                return 0
            lines = install_plpython(args.database_url, python_path=args.python_path)
            done = "pgingest: PL/Python functions installed"
        else:
            if args.print:
                out(
                    render_script(
                        psql=True,
                        chunk_partitions=args.chunk_partitions,
                        python_path=args.python_path,
                    )
                )
                return 0
            lines = install(
                args.database_url,
                chunk_partitions=args.chunk_partitions,
                python_path=args.python_path,
            )
            done = "pgingest: installed (migrations applied, sql/ and plpython/ re-applied)"
    except InstallError as exc:
        print(f"pgingest install: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    print(done)
    return 0
