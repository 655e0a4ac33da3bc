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

Managed services (docs/deployment.md, "Managed PostgreSQL"): where the pgmq extension is absent,
refused or not wanted (``--pgmq``), pgmq's own SQL, vendored in installer/pgmq--<version>.sql, is
installed as plain objects in schema pgmq owned by the installing role, each script once and
recorded in pgingest.schema_migrations like a migration (:func:`pgmq_scripts`). :func:`detect`
and :func:`plan` (``pgingest install --plan``) say what the server offers and, for each missing
prerequisite, the statement the service's admin runs.

Where the SQL is: sql/, migrations/ and plpython/ are package data of pgingest, read with
``importlib.resources`` (:func:`project_root`), so an installed wheel installs the schema with no
checkout; in a checkout, src/pgingest/{sql,migrations,plpython} are links to the folders at the
repository's root. The installer's own SQL (the prelude, the migration block, the PL/Python
prelude, uninstall, the superuser setup...) is in the templates installer/*.sql, which
:func:`render_template` fills in; this module orders, renders and runs.

Install option: ``chunk_partitions`` hash-partitions ``pgingest.chunks`` by ``doc_id`` at the first
install (``SET LOCAL pgingest.chunk_partitions``, read by migrations/0001_initial.sql).

Importing this module is cheap (psycopg is imported when a database is used): ``pgingest --help``
builds the install options from :func:`add_arguments`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.resources
import json
import posixpath
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources.abc import Traversable
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

# Where pgmq comes from (pgingest install --pgmq): the extension where it is available and may be
# created, else its SQL as plain objects in schema pgmq (auto); always its SQL (sql: a managed
# service whose allow list lacks pgmq); the extension or an error (extension).
PGMQ_MODES = ("auto", "sql", "extension")

# pgmq's own SQL, vendored in installer/: the base script pgmq--<version>.sql and the upgrade
# scripts pgmq--<from>--<to>.sql (pgmq-extension/sql of the pgmq project), applied once each.
_PGMQ_FILE = re.compile(r"pgmq--(\d+(?:\.\d+)*)(?:--(\d+(?:\.\d+)*))?\.sql")

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


def _package() -> Traversable:
    return importlib.resources.files("pgingest")


def project_root() -> Path:
    """The folder holding sql/, migrations/ and plpython/: the pgingest package itself.

    They are package data (``importlib.resources``): the files of an installed wheel, and in a
    checkout (editable install) the links src/pgingest/{sql,migrations,plpython} to the folders at
    the repository's root.
    """
    root = _package()
    if not isinstance(root, Path):  # a zip import: PL/Python could not import pgingest either
        raise InstallError(f"pgingest is not installed as files on disk: {root}")
    return root


def _read_folder(folder: Traversable) -> list[SqlFile]:
    return [
        SqlFile(p.name, p.read_text(encoding="utf-8"), folder.name)
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".sql") and p.is_file()
    ]


def migrations(root: Traversable | None = None) -> list[SqlFile]:
    return _read_folder((root or _package()) / "migrations")


def schema_version() -> str:
    """The schema this package installs: its latest migration (``0005_full_text_opt_in``)."""
    folder = _package() / "migrations"
    return max(p.name for p in folder.iterdir() if p.name.endswith(".sql")).removesuffix(".sql")


def plpython_files(root: Traversable | None = None) -> list[SqlFile]:
    return _read_folder((root or _package()) / "plpython")


def privileges_files(root: Traversable | None = None) -> list[SqlFile]:
    return [f for f in _read_folder((root or _package()) / "sql") if f.is_privileges]


def idempotent_files(root: Traversable | None = None) -> list[SqlFile]:
    """The re-runnable files in the order they are applied: sql/, plpython/, then privileges."""
    root = root or _package()
    sql_files = _read_folder(root / "sql")
    return (
        [f for f in sql_files if not f.is_privileges]
        + plpython_files(root)
        + [f for f in sql_files if f.is_privileges]
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class PgmqScript:
    """One vendored file of pgmq's SQL: a base script (``from_version`` None) or an upgrade."""

    file: SqlFile
    from_version: str | None
    to_version: str

    @property
    def key(self) -> str:
        """Its record in pgingest.schema_migrations: the file name without .sql."""
        return self.file.name.removesuffix(".sql")


def pgmq_scripts(folder: Traversable | None = None) -> list[PgmqScript]:
    """The vendored pgmq scripts in the order the installer offers them: the base scripts, then
    the upgrades, each by version (a database takes the base once, then the upgrade path)."""
    folder = folder or (_package() / "installer")
    out = []
    for p in folder.iterdir():
        m = _PGMQ_FILE.fullmatch(p.name)
        if m is None:
            continue
        f = SqlFile(p.name, p.read_text(encoding="utf-8"), "installer")
        out.append(PgmqScript(f, m[1] if m[2] else None, m[2] or m[1]))
    out.sort(
        key=lambda s: (
            s.from_version is not None,
            _version_key(s.from_version or "0"),
            _version_key(s.to_version),
        )
    )
    if not out:
        raise InstallError("installer/: no pgmq--<version>.sql (pgmq's SQL) in the package")
    return out


def pgmq_version(folder: Traversable | None = None) -> str:
    """The pgmq version the vendored scripts lead to (1.13.0: the extension version that the
    pinned PyPI package pgmq ships, which scripts/install-system.sh installs as the extension)."""
    return max((s.to_version for s in pgmq_scripts(folder)), key=_version_key)


def pgmq_body(script: PgmqScript) -> str:
    """The file's SQL: without the header pgingest put on top (the comment lines up to the first
    blank line), that is pgmq's text as its project ships it."""
    header, sep, body = script.file.text.partition("\n\n")
    if sep and all(line.startswith("--") for line in header.splitlines()):
        return body
    return script.file.text


# ---- templates: the installer's own SQL, in installer/*.sql --------------------------------


class Sql(str):
    """A piece of SQL the installer built itself (a quoted identifier, a dollar-quoted file, a
    constant): a template gets it as it is. A plain ``str`` is text: quoted as a literal."""

    __slots__ = ()


# A placeholder: sqlfluff's `colon` param_style (installer/.sqlfluff), so the linter sees the
# same placeholders. `::type` casts and `:=` do not match.
_PLACEHOLDER = re.compile(r"(?<![:\w\\]):(\w+)")
_LINE_PLACEHOLDER = re.compile(r"^[ \t]*:(\w+)[ \t]*\n", re.MULTILINE)
# sqlfluff's line directives, for the linter only.
_NOQA = re.compile(r"[ \t]+-- noqa\b[^\n]*$", re.MULTILINE)


@functools.cache
def _template(name: str) -> str:
    """installer/<name> without what is there for its readers and the linter: the header (the
    comment lines up to the first blank line) and trailing ``-- noqa`` comments."""
    text = (_package() / "installer" / name).read_text("utf-8")
    header, sep, body = text.partition("\n\n")
    if not sep or not all(line.startswith("--") for line in header.splitlines()):
        raise InstallError(f"installer/{name}: no header (comment lines, then a blank line)")
    return _NOQA.sub("", body)


def _contexts(text: str) -> list[tuple[int, int, str]]:
    """The spans of string literals and comments in ``text`` (start, end, "literal"|"comment").

    Dollar quotes are seen through: the installer's dollar-quoted bodies are PL/pgSQL, whose
    literals and comments are those of SQL.
    """
    spans: list[tuple[int, int, str]] = []
    i = 0
    while i < len(text):
        if text[i] in "'\"":
            quote = text[i]
            j = i + 1
            while True:
                j = text.find(quote, j)
                if j < 0:
                    raise InstallError(f"unterminated {quote} in an installer template")
                if not text.startswith(quote * 2, j):
                    break
                j += 2
            if quote == "'":
                spans.append((i + 1, j, "literal"))
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            spans.append((i, j, "comment"))
            i = j
        else:
            i += 1
    return spans


def _value(value: str | int, context: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InstallError(f"template value {name}: {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Sql):
        if context == "literal" and "'" in value:
            raise InstallError(f"template value {name}: SQL with a quote inside a literal")
        return str(value)
    if context == "comment":
        if "\n" in value:
            raise InstallError(f"template value {name}: a line break in a comment")
        return value
    escaped = value.replace("'", "''")
    return escaped if context == "literal" else f"'{escaped}'"


def render_template(name: str, **values: str | int) -> str:
    """installer/<name> with its ``:placeholders`` replaced, each once, in one pass.

    A ``str`` is text: a quoted literal in SQL, escaped inside a literal, as it is in a comment.
    :class:`Sql` and ``int`` go in as they are. A line holding only a placeholder whose value is
    empty is dropped. Every placeholder needs a value and every value a placeholder.
    """
    text = _LINE_PLACEHOLDER.sub(lambda m: "" if values.get(m[1]) == "" else m[0], _template(name))
    spans = _contexts(text)
    used: set[str] = set()

    def replace(m: re.Match[str]) -> str:
        key = m[1]
        if key not in values:
            raise InstallError(f"installer/{name}: no value for :{key}")
        used.add(key)
        context = next((kind for a, b, kind in spans if a <= m.start() < b), "code")
        return _value(values[key], context, key)

    out = _PLACEHOLDER.sub(replace, text)
    if unused := set(values) - used - {k for k, v in values.items() if v == ""}:
        raise InstallError(f"installer/{name}: no placeholder for {sorted(unused)}")
    return out


def _dollar_quote(text: str, tag: str) -> Sql:
    delim = f"${tag}$"
    if delim in text:
        raise InstallError(f"the file contains the reserved dollar-quote tag {delim}")
    return Sql(f"{delim}{text}{delim}")


def _literal(text: str) -> Sql:
    """A SQL string literal of the project's own text (checksums, function names)."""
    return Sql("'" + text.replace("'", "''") + "'")


_PRIVILEGES: dict[str, str | int] = {
    "pgmq_schema_privileges": Sql(PGMQ_SCHEMA_PRIVILEGES),
    "pgmq_meta_privileges": Sql(PGMQ_META_PRIVILEGES),
}


def _migration_block(m: SqlFile) -> str:
    version = m.name.removesuffix(".sql")
    earlier = [c for c in AMENDED_MIGRATIONS.get(version, ()) if c != m.checksum]
    amended = ""
    if earlier:
        amended = render_template(
            "migration_amended.sql",
            earlier_checksums=Sql(", ".join(_literal(c) for c in earlier)),
            checksum=m.checksum,
            version=version,
        ).removesuffix("\n")
    return "\n" + render_template(
        "migration.sql",
        file_name=m.name,
        version=version,
        checksum=m.checksum,
        migration_body=_dollar_quote(m.text, "pgingest_migration"),
        amended=Sql(amended),
    )


def _check_pgmq_mode(mode: str) -> None:
    if mode not in PGMQ_MODES:
        raise InstallError(f"--pgmq must be one of {', '.join(PGMQ_MODES)}, not {mode!r}")


def _pgmq_blocks(folder: Traversable | None = None) -> str:
    """pgmq's SQL, each script applied once where prelude.sql chose it (pgingest.pgmq_install
    = 'sql'), then the check that it is at the pinned version."""
    parts = []
    for s in pgmq_scripts(folder):
        parts.append(
            "\n"
            + render_template(
                "pgmq_sql.sql",
                file_name=s.file.name,
                version=s.key,
                checksum=s.file.checksum,
                from_version=s.from_version if s.from_version is not None else Sql("NULL"),
                to_version=s.to_version,
                pgmq_body=_dollar_quote(s.file.text, "pgingest_pgmq"),
            )
        )
    parts.append("\n" + render_template("pgmq_sql_check.sql", pgmq_version=pgmq_version(folder)))
    return "".join(parts)


def superuser_setup_sql(owner: str = "app_owner") -> str:
    """What a superuser runs once in the target database before ``owner`` installs pgingest.

    Printed by ``pgingest install --print-superuser-setup`` and quoted in docs/deployment.md; the
    installer's errors give the same statements with the real role name.
    """
    from psycopg import sql

    role = Sql(sql.Identifier(owner).as_string(None))
    return render_template("superuser_setup.sql", owner=role, **_PRIVILEGES)


def _public_functions(f: SqlFile) -> list[str]:
    names = re.findall(r"FUNCTION\s+pgingest\.([a-z_][a-z0-9_]*)\s*\(", f.text)
    return list(dict.fromkeys(n for n in names if not n.startswith("_")))


def _plpython_block(f: SqlFile) -> str:
    """A plpython/ file, applied only by a superuser; skipped with a WARNING otherwise."""
    # The first routine of the file tells whether a superuser installed the file earlier.
    first = re.search(r"FUNCTION\s+pgingest\.([a-z_][a-z0-9_]*)\s*\(", f.text)
    return "\n" + render_template(
        "plpython_block.sql",
        file_name=f.name,
        plpython_body=_dollar_quote(f.text, "pgingest_plpython"),
        probe=first.group(1) if first else Sql("NULL"),
        function_names=", ".join(f"{n}()" for n in _public_functions(f)) or "its functions",
    )


def python_path_entries(path: str) -> list[str]:
    """The entries of a ``--python-path`` (':'-separated), refused unless each is an absolute,
    normalised path without control characters (a relative entry would be looked up from the
    server's data directory). Ownership and modes are checked on the database server, where the
    entries are (plpy_bootstrap.sql)."""
    entries = [e for e in path.split(":") if e]
    if not entries:
        raise InstallError("--python-path: no entry")
    for entry in entries:
        if not entry.startswith("/") or posixpath.normpath(entry) != entry:
            raise InstallError(
                f"--python-path: {entry!r} is not an absolute, normalised path"
                " (PL/Python imports pgingest on the database server: give its folder there)"
            )
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in entry):
            raise InstallError(f"--python-path: {entry!r} holds a control character")
    return entries


def _bootstrap(entries: list[str]) -> Sql:
    body = render_template("plpy_bootstrap.sql", entries=Sql(json.dumps(entries)))
    return _dollar_quote(body, "pgingest_bootstrap_sql")


def _python_path_sql(path: str | None = None) -> str:
    """Where PL/Python imports pgingest from: recorded or baked, then checked (python_path.sql)."""
    entries = python_path_entries(path or python_path())
    return "\n" + render_template(
        "python_path.sql",
        python_path=":".join(entries),
        bootstrap_from_config=_bootstrap([]),
        bootstrap_baked=_bootstrap(entries),
        skipped_warning=_dollar_quote(
            render_template("python_path_skipped.sql"), "pgingest_skipped_sql"
        ),
    )


def _vector_schema_check(allow_public_create: bool) -> str:
    return "\n" + render_template(
        "vector_schema_check.sql",
        allow_public_create=Sql("TRUE" if allow_public_create else "FALSE"),
    )


def _newer_schema_check(root: Traversable | None = None) -> str:
    """The refusal to install over a schema a newer pgingest left (newer_schema_check.sql)."""
    shipped = [m.name.removesuffix(".sql") for m in migrations(root)]
    return "\n" + render_template(
        "newer_schema_check.sql",
        shipped_migrations=",".join(shipped),
        schema_version=max(shipped, default=""),
    )


def _file_section(f: SqlFile) -> str:
    return f"\n-- {f.folder}/{f.name}\n{f.text}\n"


def _check_partitions(chunk_partitions: int | None) -> None:
    if chunk_partitions is not None and not 0 <= chunk_partitions <= MAX_CHUNK_PARTITIONS:
        raise InstallError(
            f"chunk_partitions must be from 0 (not partitioned) to {MAX_CHUNK_PARTITIONS}, "
            f"not {chunk_partitions}"
        )


# psql framing of the printed scripts (psql meta-commands: not SQL, so not in the templates).
_PSQL_STOP = "\\set ON_ERROR_STOP on\n"
_INSTALL_HEADER = (
    "-- pgingest installation script: psql -v ON_ERROR_STOP=1 -f install.sql\n"
    "-- Needs no superuser where a superuser ran pgingest install --print-superuser-setup\n"
    "-- (docs/deployment.md); the PL/Python functions are then skipped with a WARNING.\n"
)
_PLPYTHON_HEADER = (
    "-- pgingest PL/Python functions, run by a superuser after the owner installed pgingest:\n"
    "-- psql -v ON_ERROR_STOP=1 -f plpython.sql\n"
)
_UNINSTALL_HEADER = (
    "-- pgingest uninstall: psql -v ON_ERROR_STOP=1 -f uninstall.sql"
    " (as the owner of schema pgingest)\n"
)


def render_script(
    root: Traversable | None = None,
    *,
    upto: str | None = None,
    psql: bool = False,
    chunk_partitions: int | None = None,
    python_path: str | None = None,
    allow_public_create: bool = False,
    pgmq: str = "auto",
    pgmq_folder: Traversable | None = None,
) -> str:
    """The whole installation as one SQL script (without BEGIN/COMMIT unless ``psql``).

    ``root``: the folder holding migrations/, sql/ and plpython/ (default: the package's).
    ``upto`` stops after the named migration and skips sql/ (tests replay the chain with it).
    ``chunk_partitions``: hash-partition pgingest.chunks into that many partitions (0: a plain
    table); it takes effect at the first install and must match on later ones.
    ``python_path``: where the database server's PL/Python finds this package (default: where
    it is on this machine, see :func:`python_path`); only a superuser's install sets it.
    ``allow_public_create``: install even where roles other than the installing one may create
    objects in the vector extension's schema (a WARNING instead of an error).
    ``pgmq``: where pgmq comes from (:data:`PGMQ_MODES`): ``auto`` creates the extension where
    the server has it and lets this role create it, and installs pgmq's SQL as plain objects
    owned by this role otherwise (``sql``: always; ``extension``: never). A database keeps what
    its first install chose; the SQL's upgrades are applied like migrations. ``pgmq_folder``:
    where the pgmq scripts are (default: the package's installer/; tests add upgrade scripts).
    """
    _check_partitions(chunk_partitions)
    _check_pgmq_mode(pgmq)
    python_path_sql = _python_path_sql(python_path) if upto is None else ""
    parts: list[str] = []
    if psql:
        parts.append(_INSTALL_HEADER + _PSQL_STOP + "BEGIN;\n")
    if chunk_partitions is not None:
        parts.append(
            render_template("chunk_partitions.sql", chunk_partitions=str(int(chunk_partitions)))
        )
    parts.append(
        "\n"
        + render_template(
            "prelude.sql", install_lock_key=INSTALL_LOCK_KEY, pgmq_mode=pgmq, **_PRIVILEGES
        )
    )
    parts.append(_newer_schema_check(root))
    parts.append(_pgmq_blocks(pgmq_folder))
    parts.append(_vector_schema_check(allow_public_create))
    for m in migrations(root):
        parts.append(_migration_block(m))
        if upto is not None and m.name.removesuffix(".sql") == upto:
            break
    parts.append("\n" + render_template("partitions_check.sql"))
    if upto is None:
        for f in idempotent_files(root):
            parts.append(_plpython_block(f) if f.folder == "plpython" else _file_section(f))
        parts.append(python_path_sql)
    if psql:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)


def render_plpython_script(
    root: Traversable | None = None,
    *,
    psql: bool = False,
    python_path: str | None = None,
    allow_public_create: bool = False,
) -> str:
    """The superuser's follow-up to a DBA install: plpython/, owner set, the path baked into the
    bootstrap (the owner is not a superuser), privileges re-applied."""
    python_path_sql = _python_path_sql(python_path)
    parts: list[str] = []
    if psql:
        parts.append(_PLPYTHON_HEADER + _PSQL_STOP + "BEGIN;\n")
    parts.append("\n" + render_template("plpython_prelude.sql", install_lock_key=INSTALL_LOCK_KEY))
    parts.append(_newer_schema_check(root))
    parts.append(_vector_schema_check(allow_public_create))
    parts += [_file_section(f) for f in plpython_files(root)]
    parts.append("\n" + render_template("plpython_ownership.sql"))
    parts.append(python_path_sql)
    parts += [_file_section(f) for f in privileges_files(root)]
    if psql:
        parts.append("\nCOMMIT;\n")
    return "".join(parts)


def render_uninstall_script() -> str:
    """Removes pgingest from a database (psql script): its queues, then schema pgingest."""
    return (
        _UNINSTALL_HEADER
        + _PSQL_STOP
        + render_template("uninstall.sql", install_lock_key=INSTALL_LOCK_KEY)
    )


def python_path() -> str:
    """Where PL/Python finds this package and its dependencies, on this machine: the default of
    ``--python-path``. The database server skips what it cannot reach and refuses what someone
    other than root or its own user could change (installer/plpy_bootstrap.sql)."""
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
    allow_public_create: bool = False,
    pgmq: str = "auto",
    root: Traversable | None = None,
    pgmq_folder: Traversable | None = None,
) -> list[str]:
    """Applies the installation in one transaction; returns pgingest's notices (applied
    migrations) and warnings (``WARNING: ...``, with their hint). ``pgmq``: see
    :func:`render_script`."""
    return _run(
        conninfo,
        render_script(
            root,
            upto=upto,
            chunk_partitions=chunk_partitions,
            python_path=python_path,
            allow_public_create=allow_public_create,
            pgmq=pgmq,
            pgmq_folder=pgmq_folder,
        ),
    )


def install_plpython(
    conninfo: str | None = None,
    *,
    python_path: str | None = None,
    allow_public_create: bool = False,
) -> list[str]:
    """The superuser's part of a DBA-managed install: the PL/Python functions (see module doc)."""
    return _run(
        conninfo,
        render_plpython_script(python_path=python_path, allow_public_create=allow_public_create),
    )


# ---- what the server offers, and the plan (pgingest install --plan) --------------------------

GROUP_ROLES = (
    "pgingest_writer",
    "pgingest_reader",
    "pgingest_worker",
    "pgingest_monitor",
    "pgingest_admin",
)
PLPYTHON_FEATURES = ("embed_query()", "search_text()", "hybrid_search_text()", "chunk_preview()")
CLIENT_SIDE_SEARCH = (
    "search with text from the client: pgingest search, or pgingest.search.embed_query() then "
    "pgingest.search() / hybrid_search() with the vector (docs/deployment.md)"
)


@dataclass(frozen=True)
class Extension:
    """An extension as the server offers it (``available``: its default version, None where the
    server has no such extension) and as this database has it (``installed``)."""

    name: str
    available: str | None = None
    installed: str | None = None
    superuser: bool = True
    trusted: bool = False


@dataclass(frozen=True)
class Offers:
    """What the server offers and what the connected role may do (:func:`detect`)."""

    server_version: str
    database: str
    role: str
    superuser: bool
    createrole: bool
    create_on_database: bool
    wal_level: str
    schema_owner: str | None
    pgmq_schema: bool
    pgmq_rights: bool
    roles: dict[str, dict[str, bool]]
    extensions: dict[str, Extension]
    pgmq_recorded: tuple[str, ...] = ()

    def extension(self, name: str) -> Extension:
        return self.extensions.get(name) or Extension(name)

    def may_create(self, name: str) -> bool:
        """Whether the catalog lets this role create the extension (superuser, trusted, or
        marked superuser = false). Managed services also let their admin role create the
        extensions of their allow list that the catalog marks superuser-only."""
        ext = self.extension(name)
        return ext.available is not None and (self.superuser or ext.trusted or not ext.superuser)


@dataclass(frozen=True)
class Step:
    """One line of the plan. ``state``: ``ok`` (present, or the installer does it), ``try`` (the
    installer tries; a managed service's admin role usually may, the catalog cannot tell),
    ``missing`` (the install is refused until ``statement`` runs) or ``skipped`` (optional:
    installed without it)."""

    what: str
    state: str
    detail: str
    statement: str | None = None


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    @property
    def missing(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.state == "missing")

    def lines(self) -> list[str]:
        out = []
        for s in self.steps:
            out.append(f"pgingest plan: {s.state:<8} {s.what}: {s.detail}")
            if s.statement:
                out.append(f"pgingest plan:          run: {s.statement}")
        verdict = (
            "installable"
            if not self.missing
            else "refused until the statements above marked missing have run"
        )
        out.append(f"pgingest plan: {verdict}")
        return out


def detect(conninfo: str | None) -> Offers:
    """What the server of ``conninfo`` offers to the connected role (installer/detect.sql);
    changes nothing."""
    from pgingest import db

    with db.connect(conninfo, register_vector=False) as conn:
        row = conn.execute(render_template("detect.sql").encode()).fetchone()
        assert row is not None
        d = row[0]
        recorded: tuple[str, ...] = ()
        if d["migrations_table"]:
            recorded = tuple(
                r[0] for r in conn.execute(render_template("detect_pgmq.sql").encode())
            )
    return Offers(
        server_version=d["server_version"],
        database=d["database"],
        role=d["role"],
        superuser=d["superuser"],
        createrole=d["createrole"],
        create_on_database=d["create_on_database"],
        wal_level=d["wal_level"],
        schema_owner=d["schema_owner"],
        pgmq_schema=d["pgmq_schema"],
        pgmq_rights=d["pgmq_rights"],
        roles=d["roles"],
        extensions={k: Extension(name=k, **v) for k, v in d["extensions"].items()},
        pgmq_recorded=recorded,
    )


def _ident(name: str) -> str:
    from psycopg import sql

    return sql.Identifier(name).as_string(None)


def _vector_step(o: Offers) -> Step:
    ext = o.extension("vector")
    if ext.installed:
        return Step("vector", "ok", f"pgvector {ext.installed} is installed")
    statement = "CREATE EXTENSION IF NOT EXISTS vector;"
    if ext.available is None:
        return Step(
            "vector",
            "missing",
            "the server offers no pgvector (pg_available_extensions): the service enables it "
            "(its extension allow list), then its admin role runs",
            statement,
        )
    if o.may_create("vector"):
        return Step("vector", "ok", f"pgvector {ext.available}: the installer creates it")
    return Step(
        "vector",
        "try",
        f"pgvector {ext.available} is available but only a superuser may create it: the "
        f"installer tries (a managed service's admin role usually may); where it is refused, "
        f"the service's admin role runs, in database {o.database}",
        statement,
    )


def _pgmq_step(o: Offers, mode: str) -> Step:
    ext = o.extension("pgmq")
    role = _ident(o.role)
    sql_detail = (
        f"pgmq's SQL {pgmq_version()} as plain objects in schema pgmq, owned by {o.role} "
        "(no extension; recorded in pgingest.schema_migrations)"
    )
    grants = (
        f"GRANT {PGMQ_SCHEMA_PRIVILEGES} ON SCHEMA pgmq TO {role}; "
        f"GRANT {PGMQ_META_PRIVILEGES} ON pgmq.meta TO {role};"
    )
    if ext.installed:
        if mode == "sql":
            return Step(
                "pgmq",
                "missing",
                f"pgmq {ext.installed} is an extension here: --pgmq=sql refuses it",
                "pgingest install --pgmq=auto",
            )
        if not o.pgmq_rights and not o.superuser:
            return Step(
                "pgmq",
                "missing",
                f"the extension pgmq {ext.installed} is installed but {o.role} lacks "
                "rights on its schema (the queues live there); a superuser runs",
                grants,
            )
        return Step("pgmq", "ok", f"the extension pgmq {ext.installed} is installed")
    if o.pgmq_recorded:
        if mode == "extension":
            return Step(
                "pgmq",
                "missing",
                f"pgmq's SQL was installed by pgingest ({', '.join(o.pgmq_recorded)}): "
                "--pgmq=extension refuses it",
                "pgingest install --pgmq=auto",
            )
        return Step(
            "pgmq",
            "ok",
            f"pgmq's SQL installed by pgingest ({', '.join(o.pgmq_recorded)}); "
            f"upgrades to {pgmq_version()} are applied once each",
        )
    if o.pgmq_schema:
        return Step(
            "pgmq",
            "missing",
            "schema pgmq exists but is neither the extension nor pgmq's SQL installed "
            "by pgingest; if nothing uses it",
            "DROP SCHEMA pgmq CASCADE;",
        )
    if mode == "sql":
        return Step("pgmq", "ok", sql_detail + " (--pgmq=sql)")
    if ext.available is None:
        if mode == "extension":
            return Step(
                "pgmq",
                "missing",
                "the server offers no pgmq extension (--pgmq=extension); install it "
                "(scripts/install-system.sh) or install without it",
                "pgingest install --pgmq=sql",
            )
        return Step("pgmq", "ok", sql_detail + ": the server offers no pgmq extension")
    if o.may_create("pgmq"):
        return Step("pgmq", "ok", f"the installer creates the extension pgmq {ext.available}")
    if mode == "extension":
        return Step(
            "pgmq",
            "try",
            f"pgmq {ext.available} is available but only a superuser may create it: the "
            "installer tries; where it is refused, a superuser runs",
            f"CREATE EXTENSION IF NOT EXISTS pgmq; {grants}",
        )
    return Step(
        "pgmq",
        "try",
        f"pgmq {ext.available} is available but only a superuser may create it: the "
        f"installer tries, and installs {sql_detail} where it is refused",
    )


def _database_step(o: Offers) -> Step:
    if o.schema_owner is not None:
        if o.schema_owner == o.role or o.superuser:
            return Step("schema pgingest", "ok", f"exists, owned by {o.schema_owner}: upgraded")
        return Step(
            "schema pgingest",
            "missing",
            f"exists, owned by {o.schema_owner}: install as that role "
            f"(or SET ROLE {_ident(o.schema_owner)})",
            None,
        )
    if o.create_on_database:
        return Step("schema pgingest", "ok", f"{o.role} creates it in database {o.database}")
    return Step(
        "schema pgingest",
        "missing",
        f"{o.role} may not create schemas in database {o.database}; its owner or the "
        "service's admin role runs",
        f"GRANT CREATE ON DATABASE {_ident(o.database)} TO {_ident(o.role)};",
    )


def _roles_steps(o: Offers) -> list[Step]:
    absent = [r for r in GROUP_ROLES if not o.roles.get(r, {}).get("exists")]
    can_create = o.superuser or o.createrole
    steps = []
    if not absent:
        steps.append(Step("group roles", "ok", ", ".join(GROUP_ROLES) + " exist"))
    elif can_create:
        steps.append(
            Step("group roles", "ok", f"{o.role} creates {', '.join(absent)} (CREATEROLE)")
        )
    else:
        statement = (
            " ".join(f"CREATE ROLE {r} NOLOGIN;" for r in absent)
            + " GRANT pgingest_reader, pgingest_monitor TO pgingest_admin;"
            + f" GRANT {', '.join(GROUP_ROLES)} TO {_ident(o.role)} WITH ADMIN OPTION;"
        )
        steps.append(
            Step(
                "group roles",
                "missing",
                f"{', '.join(absent)} do not exist and {o.role} may not create "
                "roles (no CREATEROLE); the service's admin role runs",
                statement,
            )
        )
    not_admin = [r for r in GROUP_ROLES if not o.roles.get(r, {}).get("admin")]
    if absent and not can_create:
        pass  # the logins get their roles once the admin created them (the statement above)
    elif can_create or not not_admin:
        granting = "may grant the group roles to logins" + (" (CREATEROLE)" if o.createrole else "")
        steps.append(Step("logins", "ok", f"{o.role} {granting}"))
    else:
        steps.append(
            Step(
                "logins",
                "skipped",
                f"{o.role} may not grant {', '.join(not_admin)} to logins; the service's admin "
                "role grants them, or runs",
                f"GRANT {', '.join(not_admin)} TO {_ident(o.role)} WITH ADMIN OPTION;",
            )
        )
    return steps


def _plpython_step(o: Offers) -> Step:
    ext = o.extension("plpython3u")
    features = ", ".join(PLPYTHON_FEATURES)
    if o.superuser:
        if ext.installed or ext.available:
            return Step("plpython3u", "ok", f"{features} are installed (superuser)")
        return Step(
            "plpython3u",
            "missing",
            "the server has no plpython3u (Debian: apt-get install postgresql-plpython3-<major>)",
            None,
        )
    return Step(
        "plpython3u",
        "skipped",
        f"{features} need a superuser (plpython3u is untrusted; no managed service "
        f"offers it): not installed; {CLIENT_SIDE_SEARCH}. Where a superuser exists, "
        "it runs",
        "CREATE EXTENSION IF NOT EXISTS plpython3u; then pgingest install --plpython-only",
    )


def _replication_step(o: Offers) -> Step:
    if o.wal_level == "logical":
        return Step("logical replication", "ok", "wal_level = logical: replicas may subscribe")
    return Step(
        "logical replication",
        "skipped",
        f"wal_level = {o.wal_level}: read replicas by logical replication need "
        "wal_level = logical (RDS/Aurora: rds.logical_replication = 1; Cloud SQL, "
        "AlloyDB: cloudsql.logical_decoding / alloydb.logical_decoding = on; Azure: "
        "wal_level = logical; then a restart); a superuser elsewhere runs",
        "ALTER SYSTEM SET wal_level = logical;",
    )


def plan(offers: Offers, pgmq: str = "auto") -> Plan:
    """What ``pgingest install --pgmq=<pgmq>`` does on a server that offers ``offers``, and for
    each missing prerequisite the statement that the service's admin role runs."""
    _check_pgmq_mode(pgmq)
    o = offers
    who = "a superuser" if o.superuser else "not a superuser"
    steps = [
        Step(
            "server",
            "ok",
            f"PostgreSQL {o.server_version}, database {o.database}, "
            f"role {o.role} ({who}{', CREATEROLE' if o.createrole else ''})",
        ),
        _database_step(o),
        _vector_step(o),
        _pgmq_step(o, pgmq),
        *_roles_steps(o),
        _plpython_step(o),
        _replication_step(o),
    ]
    return Plan(tuple(steps))


# ---- after the migrations: ANN indexes an upgrade left to rebuild (issue 17) ---------------


def rebuild_indexes_after_upgrade(conninfo: str | None) -> list[str]:
    """The ANN indexes migration 0006 dropped when it moved the vectors to the per-model stores,
    built ``CONCURRENTLY`` (with progress on stderr) once the install has committed; nothing on
    other installs. See ``index.rebuild_after_upgrade``."""
    from pgingest import index  # index imports db; the installer needs neither otherwise

    return [
        f"pgingest: index {r.index_name} of model {r.model} {r.action} in {r.seconds:.1f} s"
        for r in index.rebuild_after_upgrade(conninfo)
    ]


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
        help="superuser: where the database server's PL/Python imports pgingest from "
        "(':'-separated absolute paths that only root or the server's user can write; default: "
        "this machine's; /opt/pgingest/python in Dockerfile.postgres's image)",
    )
    p.add_argument(
        "--allow-public-create",
        action="store_true",
        help="install even if roles other than the installing one (PUBLIC, on clusters upgraded "
        "from PostgreSQL 14 or older) may create objects in the vector extension's schema, which "
        "pgingest's routines have on their search_path (a WARNING instead of an error; not advised)",
    )
    p.add_argument(
        "--pgmq",
        choices=PGMQ_MODES,
        default="auto",
        help="where pgmq comes from: auto (the default) creates the extension where the server "
        "has it and this role may create it, and installs pgmq's SQL as plain objects in schema "
        "pgmq owned by this role otherwise (a managed service); sql: always its SQL; extension: "
        "the extension or an error. A database keeps what its first install chose",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--plan",
        action="store_true",
        help="print what the install would do on this server and, for each missing "
        "prerequisite, the statement the service's admin role runs; install nothing "
        "(exit 0: installable, 2: something is missing)",
    )
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
        if args.plan:
            the_plan = plan(detect(args.database_url), args.pgmq)
            out("".join(line + "\n" for line in the_plan.lines()))
            return 2 if the_plan.missing else 0
        if args.plpython_only:
            if args.print:
                out(
                    render_plpython_script(
                        psql=True,
                        python_path=args.python_path,
                        allow_public_create=args.allow_public_create,
                    )
                )
                return 0
            lines = install_plpython(
                args.database_url,
                python_path=args.python_path,
                allow_public_create=args.allow_public_create,
            )
            done = "pgingest: PL/Python functions installed"
        else:
            if args.print:
                out(
                    render_script(
                        psql=True,
                        chunk_partitions=args.chunk_partitions,
                        python_path=args.python_path,
                        allow_public_create=args.allow_public_create,
                        pgmq=args.pgmq,
                    )
                )
                return 0
            out("".join(line + "\n" for line in plan(detect(args.database_url), args.pgmq).lines()))
            lines = install(
                args.database_url,
                chunk_partitions=args.chunk_partitions,
                python_path=args.python_path,
                allow_public_create=args.allow_public_create,
                pgmq=args.pgmq,
            )
            lines += rebuild_indexes_after_upgrade(args.database_url)
            done = "pgingest: installed (migrations applied, sql/ and plpython/ re-applied)"
    except InstallError as exc:
        print(f"pgingest install: {exc}", file=sys.stderr)
        if exc.sqlstate == "42501":
            print(
                "pgingest install: --plan lists what this server lacks for this role and the "
                'statement its admin runs for each (docs/deployment.md, "Managed PostgreSQL")',
                file=sys.stderr,
            )
        return 2
    for line in lines:
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    print(done)
    return 0
