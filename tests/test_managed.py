"""Managed PostgreSQL (issue 23): pgingest on a database set up like a managed service's.

The installing role is not a superuser; it has CREATEDB and CREATEROLE, as the master user of RDS
has, and owns its database. The service's admin (here the superuser fixture) created the one
allow-listed extension pgingest needs, vector (pgvector 0.8.0 is not a trusted extension: a
non-superuser cannot create it on this server); plpython3u is not created; pgmq is not an
extension: the installer puts pgmq's SQL into schema pgmq as plain objects (``--pgmq=sql``).

An event trigger of the service (made by the superuser) refuses every ``CREATE EXTENSION`` in the
database with an error the installer does not catch: a test fails if the installer tries to
create pgmq or any other extension there, and anything needing a superuser fails by itself.

Roles are cluster-wide and tests run concurrently: every role and database is unique and dropped
at the end (``Scratch`` of test_dba_install).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import index, install
from pgingest.testing.fake_provider import FakeEmbeddingServer
from pgingest.testing.managed import ALLOW_LIST
from tests.conftest import ROOT
from tests.helpers import drain, register, schema_dump
from tests.test_dba_install import (
    PGINGEST,
    PLPYTHON_FUNCTIONS,
    Scratch,
    one,
    owned_by_others,
    plpython_functions,
    psql,
    scratch,  # noqa: F401 (the fixture)
)
from tests.test_upgrade import assert_same_catalog, checkout, previous_migrations_commit

pytestmark = pytest.mark.slow

# The service's allow list (ALLOW_LIST): CREATE EXTENSION is refused to everyone in the
# database once the admin created what the service allows (vector). P0001 is no SQLSTATE the
# installer catches.


@dataclass
class Managed:
    s: Scratch
    dbname: str
    owner: str

    @property
    def owner_dsn(self) -> str:
        return self.s.dsn(self.dbname, self.owner)

    @property
    def admin_dsn(self) -> str:
        return self.s.dsn(self.dbname)

    def login(self, prefix: str, group: str) -> str:
        """A LOGIN role (made by the owner's CREATEROLE would do as well) given ``group`` by the
        owner, as an application team does on a managed service."""
        name = self.s.role(prefix)
        with psycopg.connect(self.owner_dsn, autocommit=True) as c:
            c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
        return name

    def dsn(self, role: str) -> str:
        return self.s.dsn(self.dbname, role)


def managed_database(
    s: Scratch, label: str, *, refuse_code: str = "P0001", vector: bool = True
) -> Managed:
    owner = s.role(f"mgd_{label}")
    s.admin.execute(sql.SQL("ALTER ROLE {} CREATEDB CREATEROLE").format(sql.Identifier(owner)))
    dbname = s.database(f"pgingest_mgd_{label}", owner=owner)
    with psycopg.connect(s.dsn(dbname), autocommit=True) as su:
        if vector:
            su.execute("CREATE EXTENSION vector")
        su.execute(ALLOW_LIST.format(code=refuse_code).encode())
    return Managed(s, dbname, owner)


def q(name: str) -> str:
    """An identifier as the plan quotes it."""
    return sql.Identifier(name).as_string(None)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PGINGEST, *args], capture_output=True, text=True, timeout=300)


def extensions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("SELECT extname FROM pg_extension ORDER BY 1")]


def pgmq_routines(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc AS p"
            " WHERE p.pronamespace = 'pgmq'::regnamespace ORDER BY 1"
        )
    ]


def not_owned_in_pgmq(conn: psycopg.Connection[Any], owner: str) -> list[str]:
    rows = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class AS c"
        " WHERE c.relnamespace = 'pgmq'::regnamespace AND pg_get_userbyid(c.relowner) <> %s"
        " UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc AS p"
        " WHERE p.pronamespace = 'pgmq'::regnamespace AND pg_get_userbyid(p.proowner) <> %s",
        (owner, owner),
    ).fetchall()
    return sorted(r[0] for r in rows)


# --------------------------------------------------------------------------- the lifecycle


def test_whole_lifecycle_on_a_managed_like_database(
    scratch: Scratch,  # noqa: F811
    fake: FakeEmbeddingServer,
    tmp_path: Path,
) -> None:
    m = managed_database(scratch, "life")

    # The plan: nothing missing; pgmq from its SQL, the PL/Python functions skipped.
    planned = cli("install", "--plan", "--pgmq=sql", "--database-url", m.owner_dsn)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "pgmq's SQL 1.13.0 as plain objects in schema pgmq" in planned.stdout
    assert "skipped  plpython3u" in planned.stdout
    assert "pgingest plan: installable" in planned.stdout

    # 1. Install, as the owner, pgmq without its extension.
    done = cli("install", "--pgmq=sql", "--database-url", m.owner_dsn)
    assert done.returncode == 0, done.stderr
    assert "pgingest: installed" in done.stdout
    assert f"pgmq 1.13.0 installed as plain SQL in schema pgmq, owned by {m.owner}" in done.stdout
    assert "plpython/010_plpython.sql skipped" in done.stdout + done.stderr
    assert extensions(m.admin_dsn) == ["plpgsql", "vector"]
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert not one(c, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert one(
            c, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'pgmq'"
        ) == (m.owner)
        assert not_owned_in_pgmq(c, m.owner) == []
        assert owned_by_others(c, m.owner) == []
        assert plpython_functions(c) == []
        recorded = dict(c.execute("SELECT version, checksum FROM pgingest.schema_migrations"))
        base = install.pgmq_scripts()[0]
        assert recorded.pop("pgmq--1.13.0") == base.file.checksum
        assert recorded == {f.name.removesuffix(".sql"): f.checksum for f in install.migrations()}

    # Again, with the default --pgmq=auto: the database keeps pgmq's SQL, nothing re-applied,
    # no CREATE EXTENSION tried (the allow list would fail the install).
    again = cli("install", "--database-url", m.owner_dsn)
    assert again.returncode == 0, again.stderr
    assert "installed as plain SQL" not in again.stdout
    assert "applied migration" not in again.stdout

    # 2. Roles: the owner (CREATEROLE) grants the group roles to the logins.
    app = m.login("mgd_app", "pgingest_writer")
    wlogin = m.login("mgd_worker", "pgingest_worker")
    reader = m.login("mgd_reader", "pgingest_reader")
    monitor = m.login("mgd_monitor", "pgingest_monitor")

    # 3. Register (pgmq.create: a queue in schema pgmq), capture as a writer, drain as a worker,
    #    one poisoned document dead-lettered.
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert register(c, "v1", fake.url) == "active"
        assert one(c, "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'pgingest_v1'") == 1
    docs = [(f"doc-{i}", f"Title {i}", f"Body of managed document number {i}.") for i in range(8)]
    with psycopg.connect(m.dsn(app), autocommit=True) as a:
        with a.cursor() as cur:
            cur.executemany(
                "INSERT INTO pgingest.documents (key, title, body) VALUES (%s, %s, %s)", docs
            )
        a.execute(
            "INSERT INTO pgingest.documents (key, body) VALUES ('poison', 'a text with __NAN__')"
        )
    drain(m.dsn(wlogin))
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert one(c, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'") == 8
        assert one(c, "SELECT count(*) FROM pgmq.q_pgingest_v1") == 0
        letters = c.execute(
            "SELECT doc_key, error_class FROM pgingest.dead_letters ORDER BY 1"
        ).fetchall()
        assert letters == [("poison", "invalid_vector_non_finite")]
        # The dead-letter path: fixed, requeued, embedded.
        c.execute("UPDATE pgingest.documents SET body = 'a text, fixed' WHERE key = 'poison'")
    drain(m.dsn(wlogin))
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert one(c, "SELECT count(*) FROM pgingest.dead_letters") == 0
        assert one(c, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'") == 9

    # 4. Search with text, no PL/Python: the CLI embeds the query on the client side and calls
    #    pgingest.search(vector) as a reader login (filters, per-document results, sources).
    found = cli(
        "search",
        "--database-url",
        m.dsn(reader),
        "--json",
        "--k",
        "3",
        "--per-document",
        "Body of managed document number 3.",
    )
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["doc_key"] == "doc-3"
    assert len({h["doc_key"] for h in hits}) == len(hits) == 3
    with (
        psycopg.connect(m.dsn(reader)) as r,
        pytest.raises(psycopg.errors.UndefinedFunction),
    ):
        r.execute("SELECT * FROM pgingest.search_text('anything', 3)")
    # Hybrid (full text + vector) and a metadata filter, the same way.
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        c.execute("SELECT pgingest.set_text_search_config('english')")
        c.execute(
            "UPDATE pgingest.documents SET metadata = '{\"lang\": \"en\"}' WHERE key = 'doc-5'"
        )
    drain(m.dsn(wlogin))
    hybrid = cli(
        "search",
        "--database-url",
        m.dsn(reader),
        "--json",
        "--hybrid",
        "--k",
        "3",
        "Body of managed document number 3.",
    )
    assert hybrid.returncode == 0, hybrid.stderr
    assert json.loads(hybrid.stdout)[0]["doc_key"] == "doc-3"
    filtered = cli(
        "search",
        "--database-url",
        m.dsn(reader),
        "--json",
        "--filter",
        '{"lang": "en"}',
        "Body of managed document number 3.",
    )
    assert filtered.returncode == 0, filtered.stderr
    assert [h["doc_key"] for h in json.loads(filtered.stdout)] == ["doc-5"]

    # 5. Swap to a second model and retire the first (pgmq.drop_queue on the owner's pgmq).
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert register(c, "v2", fake.url, model_id="fake-768", dimensions=768) == "shadow"
        c.execute("CALL pgingest.run_backfill('v2')")
    drain(m.dsn(wlogin))
    assert index.build_index(m.owner_dsn, "v2", progress=False).valid
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert one(c, "SELECT pgingest.swap_model('v2')") == "v2 active, v1 standby"
        assert one(c, "SELECT pgingest.retire_model('v1')") == "retired"
        assert one(c, "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'pgingest_v1'") == 0
        assert one(c, "SELECT count(*) FROM pgmq.meta WHERE queue_name = 'pgingest_v2'") == 1
        # The replication publication (the owner owns the tables; CREATE on the database).
        assert "pgingest" in one(c, "SELECT pgingest.create_publication()")

    # 6. Status, as a monitor login.
    status = cli("status", "--database-url", m.dsn(monitor))
    assert status.returncode == 0, status.stderr
    assert "v2" in status.stdout
    with psycopg.connect(m.dsn(monitor)) as c:
        row = c.execute(
            "SELECT model, state FROM pgingest.model_status WHERE model = 'v2'"
        ).fetchone()
        assert row == ("v2", "active")

    # 7. Uninstall, as the owner: pgingest and the pgmq SQL it installed go; vector stays.
    script = tmp_path / "uninstall.sql"
    script.write_text(install.render_uninstall_script())
    psql(m.owner_dsn, script)
    with psycopg.connect(m.admin_dsn) as c:
        assert (
            c.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname IN ('pgingest', 'pgmq')"
            ).fetchall()
            == []
        )
        c.execute("DROP PUBLICATION IF EXISTS pgingest")
    assert extensions(m.admin_dsn) == ["plpgsql", "vector"]


def test_the_allow_list_fails_an_install_that_creates_an_extension(
    scratch: Scratch,  # noqa: F811
) -> None:
    """The guard of this suite works: the pgmq extension is available on this server and the
    owner may create it (its control file says superuser = false), so --pgmq=extension tries,
    and the allow list fails the install (the installer does not catch P0001)."""
    m = managed_database(scratch, "guard")
    with pytest.raises(psycopg.errors.RaiseException, match="CREATE EXTENSION is refused"):
        install.install(m.owner_dsn, pgmq="extension")
    assert extensions(m.admin_dsn) == ["plpgsql", "vector"]


def test_auto_falls_back_to_pgmq_sql_where_the_extension_is_refused(
    scratch: Scratch,  # noqa: F811
) -> None:
    """A service whose allow list refuses pgmq with "permission denied" (42501): the default
    install tries the extension and installs pgmq's SQL instead."""
    m = managed_database(scratch, "auto", refuse_code="42501")
    notices = install.install(m.owner_dsn)
    assert any("CREATE EXTENSION pgmq was refused" in n for n in notices)
    assert any("pgmq 1.13.0 installed as plain SQL" in n for n in notices)
    assert extensions(m.admin_dsn) == ["plpgsql", "vector"]
    with psycopg.connect(m.owner_dsn) as c:
        assert one(
            c, "SELECT count(*) FROM pgingest.schema_migrations WHERE version = 'pgmq--1.13.0'"
        )
    # Where pgmq's SQL is, --pgmq=extension is refused; where the extension is, --pgmq=sql.
    with pytest.raises(install.InstallError, match="installed as plain SQL"):
        install.install(m.owner_dsn, pgmq="extension")


# --------------------------------------------------------------------------- upgrades


def test_upgrade_to_the_next_schema_version_on_a_managed_like_database(
    scratch: Scratch,  # noqa: F811
    fake: FakeEmbeddingServer,
    tmp_path: Path,
) -> None:
    """The schema of the commit before the latest migration, installed managed-like (the current
    installer over that commit's migrations/ and sql/: earlier installers had no --pgmq=sql), with
    data, upgraded by the current install; the catalog equals a fresh managed install's."""
    old = checkout(previous_migrations_commit(), tmp_path / "old")
    m = managed_database(scratch, "upg")
    install.install(m.owner_dsn, pgmq="sql", root=old)
    wlogin = m.login("mgd_upw", "pgingest_worker")
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        older = {r[0] for r in c.execute("SELECT version FROM pgingest.schema_migrations")}
        assert register(c, "v1", fake.url) == "active"
        c.execute(
            "INSERT INTO pgingest.documents (key, body) SELECT 'doc-' || i, 'Body ' || i"
            " FROM generate_series(1, 6) AS i"
        )
    notices = install.install(m.owner_dsn)
    applied = {n.removeprefix("pgingest: applied migration ") for n in notices if "applied" in n}
    current = {f.name.removesuffix(".sql") for f in install.migrations()}
    assert applied == current - older
    assert not any("installed as plain SQL" in n for n in notices)  # pgmq: already there
    drain(m.dsn(wlogin))
    with psycopg.connect(m.owner_dsn, autocommit=True) as c:
        assert one(c, "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'") == 6
        assert one(c, "SELECT count(*) FROM pgmq.q_pgingest_v1") == 0
    upgraded = schema_dump(m.owner_dsn)

    fresh = managed_database(scratch, "upf")
    install.install(fresh.owner_dsn, pgmq="sql")
    with psycopg.connect(fresh.owner_dsn, autocommit=True) as c:
        register(c, "v1", fake.url)
    assert_same_catalog(schema_dump(fresh.owner_dsn), upgraded, column_order=False)


def test_pgmq_upgrade_scripts_are_applied_once_like_migrations(
    scratch: Scratch,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A later pgmq comes as an upgrade script pgmq--<from>--<to>.sql next to the base script:
    applied once where pgmq's SQL is at <from>, recorded, refused once edited."""
    folder = tmp_path / "installer"
    folder.mkdir()
    base = install.pgmq_scripts()[0].file
    (folder / base.name).write_text(base.text)
    m = managed_database(scratch, "pgmqup")
    install.install(m.owner_dsn, pgmq="sql", pgmq_folder=folder)

    upgrade = folder / "pgmq--1.13.0--1.13.1.sql"
    upgrade.write_text(
        "CREATE FUNCTION pgmq.pgingest_test_marker() RETURNS integer LANGUAGE sql RETURN 131;\n"
    )
    notices = install.install(m.owner_dsn, pgmq_folder=folder)
    assert any("pgmq 1.13.1 installed as plain SQL" in n for n in notices)
    assert not any("pgmq 1.13.0 installed" in n for n in notices)
    again = install.install(m.owner_dsn, pgmq_folder=folder)
    assert not any("installed as plain SQL" in n for n in again)  # nothing re-applied
    with psycopg.connect(m.owner_dsn) as c:
        assert one(c, "SELECT pgmq.pgingest_test_marker()") == 131
        assert [
            r[0]
            for r in c.execute(
                "SELECT version FROM pgingest.schema_migrations WHERE version LIKE 'pgmq--%'"
                " ORDER BY 1"
            )
        ] == ["pgmq--1.13.0", "pgmq--1.13.0--1.13.1"]

    # A fresh database takes the base script, then the upgrade.
    m2 = managed_database(scratch, "pgmqup2")
    notices = install.install(m2.owner_dsn, pgmq="sql", pgmq_folder=folder)
    assert [n for n in notices if "installed as plain SQL" in n] == [
        f"pgingest: pgmq 1.13.0 installed as plain SQL in schema pgmq, owned by {m2.owner}"
        " (pgmq--1.13.0)",
        f"pgingest: pgmq 1.13.1 installed as plain SQL in schema pgmq, owned by {m2.owner}"
        " (pgmq--1.13.0--1.13.1)",
    ]

    # Edited after it was applied: refused, like a migration.
    upgrade.write_text(upgrade.read_text() + "-- edited\n")
    with pytest.raises(install.InstallError, match="edited after it was applied") as ei:
        install.install(m.owner_dsn, pgmq_folder=folder)
    assert ei.value.sqlstate == "XX001"

    # Recorded at a version from which no script leads to the pinned one: refused.
    upgrade.unlink()
    with pytest.raises(install.InstallError, match="no upgrade script leads to 1.13.0"):
        install.install(m.owner_dsn, pgmq_folder=folder)


# --------------------------------------------------------------------------- the plan


def test_the_plan_names_every_missing_prerequisite_and_its_statements_suffice(
    scratch: Scratch,  # noqa: F811
) -> None:
    """A role with nothing yet: not the database's owner (no CREATE on it), vector not created,
    no CREATEROLE, no plpython3u. The plan names each missing prerequisite with the statement the
    admin runs; the install is refused; once the admin ran them, the install passes."""
    owner = scratch.role("mgd_bare")
    dbname = scratch.database("pgingest_mgd_bare")  # owned by the superuser
    owner_dsn = scratch.dsn(dbname, owner)
    with psycopg.connect(scratch.dsn(dbname), autocommit=True) as su:
        su.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    offers = install.detect(owner_dsn)
    assert not offers.superuser and not offers.createrole and not offers.create_on_database
    p = install.plan(offers, "sql")
    steps = {s.what: s for s in p.steps}
    assert steps["schema pgingest"].state == "missing"
    assert steps["schema pgingest"].statement == (
        f"GRANT CREATE ON DATABASE {q(dbname)} TO {q(owner)};"
    )
    assert steps["vector"].state == "try"
    assert steps["vector"].statement == "CREATE EXTENSION IF NOT EXISTS vector;"
    assert steps["pgmq"].state == "ok" and "plain objects in schema pgmq" in steps["pgmq"].detail
    assert steps["plpython3u"].state == "skipped"
    assert "pgingest search" in steps["plpython3u"].detail
    assert [s.what for s in p.missing] == ["schema pgingest"]

    # The group roles exist on this cluster; where they did not, a role without CREATEROLE
    # gets the statements that create them and give it ADMIN OPTION.
    no_roles = dataclasses.replace(
        offers, roles={r: {"exists": False, "admin": False} for r in install.GROUP_ROLES}
    )
    roles_step = {s.what: s for s in install.plan(no_roles, "sql").steps}["group roles"]
    assert roles_step.state == "missing"
    assert roles_step.statement is not None
    for r in install.GROUP_ROLES:
        assert f"CREATE ROLE {r} NOLOGIN;" in roles_step.statement
    assert f"TO {q(owner)} WITH ADMIN OPTION;" in roles_step.statement
    # And where the role may grant none of them to logins (existing roles, no CREATEROLE).
    logins = {s.what: s for s in p.steps}["logins"]
    assert logins.state == "skipped"
    assert logins.statement == (
        "GRANT " + ", ".join(install.GROUP_ROLES) + f" TO {q(owner)} WITH ADMIN OPTION;"
    )

    # The CLI prints the same plan and exits 2.
    printed = cli("install", "--plan", "--pgmq=sql", "--database-url", owner_dsn)
    assert printed.returncode == 2
    assert f"run: GRANT CREATE ON DATABASE {q(dbname)} TO {q(owner)};" in printed.stdout
    assert "run: CREATE EXTENSION IF NOT EXISTS vector;" in printed.stdout

    # Refused as planned; nothing left behind.
    with pytest.raises(install.InstallError, match="permission denied for database") as ei:
        install.install(owner_dsn, pgmq="sql")
    assert ei.value.sqlstate == "42501"
    refused = cli("install", "--pgmq=sql", "--database-url", owner_dsn)
    assert refused.returncode == 2
    assert "permission denied for database" in refused.stderr
    assert "--plan lists what this server lacks" in refused.stderr
    # The admin runs the statements of the plan (those marked missing, and vector: this server
    # lets no one but a superuser create it); then the install passes.
    with psycopg.connect(scratch.dsn(dbname), autocommit=True) as su:
        for step in (steps["schema pgingest"], steps["vector"], logins):
            assert step.statement is not None
            su.execute(step.statement.encode())
    assert install.plan(install.detect(owner_dsn), "sql").missing == ()
    install.install(owner_dsn, pgmq="sql")
    with psycopg.connect(owner_dsn) as c:
        assert (
            one(c, "SELECT count(*) FROM pgingest.schema_migrations")
            == len(install.migrations()) + 1
        )


# --------------------------------------------------------------------------- equivalence


def test_with_and_without_the_pgmq_extension_the_pgingest_schema_is_the_same(
    empty_database: Any, fake: FakeEmbeddingServer
) -> None:
    """Installed by a superuser with the pgmq extension and with pgmq's SQL: the same pgingest
    catalog (pg_dump of schema pgingest), with a model registered, and the same pgmq routines."""
    dumps, routines = [], []
    for mode, label in (("auto", "ext"), ("sql", "sql")):
        dsn = empty_database(f"mgd_same_{label}")
        install.install(dsn, pgmq=mode)
        with psycopg.connect(dsn, autocommit=True) as c:
            has_ext = one(c, "SELECT count(*) FROM pg_extension WHERE extname = 'pgmq'")
            assert has_ext == (1 if mode == "auto" else 0)
            register(c, "v1", fake.url)
            routines.append(pgmq_routines(c))
        dumps.append(schema_dump(dsn))
    assert dumps[0] == dumps[1]
    assert routines[0] == routines[1] and len(routines[0]) > 50


def test_the_vendored_pgmq_sql_is_the_pinned_package_s() -> None:
    """installer/pgmq--1.13.0.sql is pgmq/sql/pgmq.sql of the pgmq package pyproject.toml pins
    (the script scripts/install-system.sh installs as the extension), under a header."""
    import importlib.metadata
    import importlib.resources

    pinned = importlib.resources.files("pgmq") / "sql"
    assert importlib.metadata.version("pgmq") in (ROOT / "pyproject.toml").read_text()
    assert (pinned / "VERSION").read_text().strip() == install.pgmq_version() == "1.13.0"
    base = install.pgmq_scripts()[0]
    assert base.from_version is None and base.key == "pgmq--1.13.0"
    assert install.pgmq_body(base) == (pinned / "pgmq.sql").read_text()
    assert "PostgreSQL License" in base.file.text.partition("\n\n")[0]
    assert PLPYTHON_FUNCTIONS  # the PL/Python functions a managed install goes without
