"""Attached tables: the fixes of the security review of 2026-12-07 (docs/operations.md, "Hardening
after review (2026-12-07)"). Each test reproduces what the reviewer found, against the real
database with real roles (cluster-wide: unique names, dropped at the end)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import db, install
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.conftest import conninfo_for
from tests.helpers import queue_count, register
from tests.test_dba_install import Scratch, superuser_setup


def one(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def make_role(conn: psycopg.Connection[Any]) -> Iterator[Callable[..., str]]:
    """make_role(prefix, *groups) -> a new role (NOLOGIN: tests SET ROLE to it), member of the
    given group roles; its privileges in this database and the role are dropped at the end."""
    made: list[str] = []

    def make(prefix: str, *groups: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
        made.append(name)
        for group in groups:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
        return name

    yield make
    for name in reversed(made):
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(dsn: str, role: str) -> psycopg.Connection[Any]:
    c = db.connect(dsn)
    c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    return c


def grants_of(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str, str]]:
    """(owner, grantee, privilege) of every grant on ``table`` to someone but its owner."""
    return conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_get_userbyid(a.grantee), a.privilege_type"
        " FROM pg_class AS c, aclexplode(c.relacl) AS a WHERE c.oid = %s::regclass"
        " AND a.grantee <> c.relowner",
        (table,),
    ).fetchall()


PGINGEST_GROUPS = (
    "pgingest_admin",
    "pgingest_writer",
    "pgingest_worker",
    "pgingest_reader",
    "pgingest_monitor",
)


def assert_no_member_can_lock(
    dsn: str, make_role: Callable[..., str], tables: tuple[str, ...], modes: tuple[str, ...]
) -> None:
    """A member of each pgingest group role is refused each of ``modes`` on each table."""
    for group in PGINGEST_GROUPS:
        member = make_role("pgi_member", group)
        with as_role(dsn, member) as c:
            for table in tables:
                for mode in modes:
                    c.execute("BEGIN")
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        c.execute(f"LOCK TABLE {table} IN {mode} MODE")
                    c.execute("ROLLBACK")


def attach_notes(conn: psycopg.Connection[Any], name: str = "notes") -> int:
    conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, body text)")
    conn.execute(
        f"SELECT pgingest.add_source('{name}', 'public.{name}', body => 'body', backfill => false)"
    )
    return int(one(conn, "SELECT id FROM pgingest.sources WHERE name = %s", (name,)))


# -- 1: the lock between captures and backfill steps is no advisory lock anyone can take --------


def test_a_login_without_any_pgingest_role_cannot_hang_the_writes_of_an_attached_table(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    make_role: Callable[..., str],
) -> None:
    """Reviewer's finding 3: SELECT pg_advisory_lock(1886808435, <source id>) by any role that
    could connect hung every write to the attached table (the capture waited, lock_timeout 0)."""
    register(conn, "v1", fake.url)
    source_id = attach_notes(conn)
    nobody = make_role("pgi_nobody")
    with as_role(dsn, nobody) as attacker:
        assert not one(attacker, "SELECT has_schema_privilege('pgingest', 'USAGE')")
        attacker.execute("SELECT pg_advisory_lock(1886808435, %s)", (source_id,))
        attacker.execute("SELECT pg_advisory_lock(1886808435, -1)")  # not the compile's lock either
        attacker.execute("SELECT pg_advisory_lock(pg_catalog.hashtext('pgingest'))")
        # ... nor can it name the lock table that replaced the advisory lock
        attacker.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute(f"LOCK TABLE pgingest.source_lock_{source_id} IN ACCESS SHARE MODE")
        attacker.execute("ROLLBACK")
        attacker.execute("SELECT pg_advisory_unlock(1886808435, -1)")
        attacker.execute("SELECT pg_advisory_unlock(pg_catalog.hashtext('pgingest'))")
        with db.connect(dsn) as app:
            app.execute("SET statement_timeout = '5s'")  # before the fix: canceled here
            app.execute("INSERT INTO public.notes VALUES (1, 'written while locked')")
            app.execute("UPDATE public.notes SET body = 'changed while locked'")
        assert queue_count(conn, "v1") == 2
        # the backfill is not held back by it either
        conn.execute("SELECT pgingest.resync_source('notes')")
        assert one(conn, "SELECT pgingest.source_backfill_step_v1(100)") == 1


def test_the_lock_table_admits_no_conflicting_mode_but_the_owners(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    make_role: Callable[..., str],
) -> None:
    register(conn, "v1", fake.url)
    source_id = attach_notes(conn)
    lock = f"pgingest.source_lock_{source_id}"
    # Owned by pgingest's owner; admins read it (as every table of pgingest), nobody else.
    owner = one(
        conn, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'pgingest'"
    )
    assert grants_of(conn, lock) == [(owner, "pgingest_admin", "SELECT")]
    for group in (
        "pgingest_admin",
        "pgingest_writer",
        "pgingest_worker",
        "pgingest_reader",
        "pgingest_monitor",
    ):
        member = make_role("pgi_member", group)
        with as_role(dsn, member) as c:
            for mode in ("ROW EXCLUSIVE", "SHARE", "EXCLUSIVE", "ACCESS EXCLUSIVE"):
                c.execute("BEGIN")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(f"LOCK TABLE {lock} IN {mode} MODE")
                c.execute("ROLLBACK")
            if group == "pgingest_admin":
                # SELECT allows ACCESS SHARE, which conflicts with neither the capture nor a step
                c.execute("BEGIN")
                c.execute(f"LOCK TABLE {lock} IN ACCESS SHARE MODE")
                with db.connect(dsn) as app:
                    app.execute("SET statement_timeout = '5s'")
                    app.execute(
                        "INSERT INTO public.notes VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET body = 'y'"
                    )
                conn.execute("SELECT pgingest.resync_source('notes')")
                assert one(conn, "SELECT pgingest.source_backfill_step_v1(100)") == 1
                c.execute("ROLLBACK")


def test_a_capture_waits_for_a_backfill_step_holding_the_lock_table_and_never_fails_by_lock_timeout(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    source_id = attach_notes(conn)
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as app:
                app.execute("SET lock_timeout = '50ms'")
                app.execute("INSERT INTO public.notes VALUES (1, 'B')")
                assert one(app, "SHOW lock_timeout") == "50ms"
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    with psycopg.connect(dsn) as step:  # what a backfill step holds
        step.execute(f"LOCK TABLE pgingest.source_lock_{source_id} IN SHARE MODE")
        thread = threading.Thread(target=write)
        thread.start()
        assert not done.wait(0.5), errors  # waiting past its 50 ms, not failed
        step.commit()
    thread.join(10)
    assert done.is_set() and not errors, errors
    assert queue_count(conn, "v1") == 1


def test_the_lock_table_goes_with_its_source_and_every_install_makes_the_missing_ones(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    first = attach_notes(conn)
    second = attach_notes(conn, "memos")

    def locks() -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'pgingest'::regnamespace"
                " AND relname LIKE 'source\\_lock\\_%' ORDER BY relname"
            ).fetchall()
        ]

    assert locks() == sorted([f"source_lock_{first}", f"source_lock_{second}"])
    conn.execute("SELECT pgingest.remove_source('memos')")
    assert locks() == [f"source_lock_{first}"]
    conn.execute(f"DROP TABLE pgingest.source_lock_{first}")  # lost somehow (or an older install)
    conn.execute(f"CREATE TABLE pgingest.source_lock_{second + 1000} ()")  # of no source
    install.install(dsn)
    assert locks() == [f"source_lock_{first}"]
    body = one(
        conn, "SELECT prosrc FROM pg_proc WHERE oid = 'pgingest._source_capture()'::regprocedure"
    )
    assert f"LOCK TABLE pgingest.source_lock_{first} IN ROW EXCLUSIVE MODE" in body
    assert "pg_advisory" not in body
    conn.execute("INSERT INTO public.notes VALUES (1, 'after the install')")
    assert queue_count(conn, "v1") == 1


# -- a pgingest installed by an owner that is not a superuser (docs/deployment.md) ---------------


@dataclass
class Owned:
    """pgingest installed by ``owner`` (no superuser), a model m1, an application login ``app``
    (pgingest_admin) that owns schema appx (pgingest's owner may use it), a worker login."""

    scratch: Scratch
    dbname: str
    owner: str
    app: str
    worker: str

    def dsn(self, user: str | None = None) -> str:
        return self.scratch.dsn(self.dbname, user)

    def connect(self, user: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(user), autocommit=True)


@pytest.fixture
def owned(pg_server: Any) -> Iterator[Owned]:
    admin = psycopg.connect(conninfo_for("postgres"), autocommit=True)
    s = Scratch(admin)
    try:
        owner = s.role("pgi_owner")
        dbname = s.database("pgi_sec", owner=owner)
        superuser_setup(s, dbname, owner)
        install.install(s.dsn(dbname, owner))
        app = s.role("pgi_app")
        wk = s.role("pgi_wk")
        with psycopg.connect(s.dsn(dbname, owner), autocommit=True) as c:
            c.execute(sql.SQL("GRANT pgingest_admin TO {}").format(sql.Identifier(app)))
            c.execute(sql.SQL("GRANT pgingest_worker TO {}").format(sql.Identifier(wk)))
            c.execute(
                "SELECT pgingest.register_model('m1', 'fake-384', 384, 'http://127.0.0.1:9/v1')"
            )
        with psycopg.connect(s.dsn(dbname), autocommit=True) as su:
            su.execute(sql.SQL("CREATE SCHEMA appx AUTHORIZATION {}").format(sql.Identifier(app)))
        with psycopg.connect(s.dsn(dbname, app), autocommit=True) as a:
            a.execute(sql.SQL("GRANT USAGE ON SCHEMA appx TO {}").format(sql.Identifier(owner)))
            # What the table owner's code leaves behind when it runs, and as whom.
            a.execute("CREATE TABLE appx.proof (who text, at timestamptz DEFAULT now())")
            a.execute("GRANT INSERT ON appx.proof TO PUBLIC")
            a.execute(
                "CREATE FUNCTION appx.pol() RETURNS boolean LANGUAGE plpgsql AS"
                " $f$ BEGIN INSERT INTO appx.proof (who) VALUES (current_user); RETURN true; END $f$"
            )
        yield Owned(s, dbname, owner, app, wk)
    finally:
        s.cleanup()
        admin.close()


def ran_as(o: Owned, role: str) -> int:
    """How many times the table owner's function ran as ``role``."""
    with o.connect() as su:
        return int(one(su, "SELECT count(*) FROM appx.proof WHERE who = %s", (role,)))


# -- 2: row-level security: a policy (the table owner's function) never runs as pgingest's owner ---


def test_add_source_refuses_a_table_with_row_level_security(owned: Owned) -> None:
    o = owned
    with o.connect(o.app) as a:
        for force in (False, True):
            a.execute("DROP TABLE IF EXISTS appx.guarded")
            a.execute("CREATE TABLE appx.guarded (id int PRIMARY KEY, body text)")
            a.execute("INSERT INTO appx.guarded VALUES (1, 'first')")
            a.execute(
                "ALTER TABLE appx.guarded "
                + ("FORCE ROW LEVEL SECURITY" if force else "ENABLE ROW LEVEL SECURITY")
            )
            a.execute("CREATE POLICY p ON appx.guarded USING (appx.pol())")
            with pytest.raises(psycopg.errors.FeatureNotSupported) as ei:
                a.execute("SELECT pgingest.add_source('guarded', 'appx.guarded', body => 'body')")
            assert "row-level security is enabled on appx.guarded" in str(ei.value)
            assert "DISABLE ROW LEVEL SECURITY" in (ei.value.diag.message_hint or "")
            assert one(a, "SELECT count(*) FROM pgingest.sources WHERE name = 'guarded'") == 0
    assert ran_as(o, o.owner) == 0


def test_row_level_security_policies_never_run_as_the_owner_of_pgingest(owned: Owned) -> None:
    """Reviewer's finding 1, policy variant: RLS enabled (and forced) after add_source(), with a
    policy calling the table owner's function; the backfill, the read path and the raw read path
    ran it as the owner of pgingest."""
    o = owned
    with o.connect(o.app) as a:
        a.execute("CREATE TABLE appx.files (id int PRIMARY KEY, data bytea)")
        a.execute("INSERT INTO appx.files VALUES (1, 'raw bytes')")
        a.execute(
            "SELECT pgingest.add_source('files', 'appx.files', content => 'data', backfill => false)"
        )
        a.execute("UPDATE appx.files SET data = 'new raw bytes'")
        a.execute("ALTER TABLE appx.files ENABLE ROW LEVEL SECURITY")
        a.execute("CREATE POLICY p ON appx.files USING (appx.pol())")
        a.execute("CREATE TABLE appx.notes (id int PRIMARY KEY, body text)")
        a.execute("INSERT INTO appx.notes VALUES (1, 'first'), (2, 'second')")
        a.execute("SELECT pgingest.add_source('notes', 'appx.notes', body => 'body')")
        a.execute("ALTER TABLE appx.notes ENABLE ROW LEVEL SECURITY")
        a.execute("ALTER TABLE appx.notes FORCE ROW LEVEL SECURITY")
        a.execute("CREATE POLICY p ON appx.notes USING (appx.pol()) WITH CHECK (true)")
        a.execute("INSERT INTO appx.notes VALUES (3, 'third')")  # the application's statement works
        a.execute("UPDATE appx.notes SET body = 'third, changed' WHERE id = 3")
    with o.connect(o.owner) as c:
        raw_ids = [
            r[0]
            for r in c.execute(
                "SELECT r.doc_id FROM pgingest.source_rows AS r JOIN pgingest.sources AS s"
                " ON s.id = r.source_id WHERE s.name = 'files'"
            ).fetchall()
        ]
    assert len(raw_ids) == 1
    errors: dict[str, BaseException] = {}
    raw: list[Any] = []
    with o.connect(o.worker) as w:
        try:
            w.execute("SELECT pgingest.source_backfill_step_v1(100)")
        except psycopg.Error as exc:
            errors["backfill"] = exc
        rows = w.execute(
            "SELECT doc_id, status FROM pgingest.read_batch_v1('m1', 30, 10)"
        ).fetchall()
        try:
            raw = w.execute(
                "SELECT doc_id FROM pgingest.raw_documents_v1(%s, 1000000)", (raw_ids,)
            ).fetchall()
        except psycopg.Error as exc:
            errors["raw"] = exc
    # before the fix: the backfill, the read path and the raw read path ran it
    assert ran_as(o, o.owner) == 0
    # the capture queued the application's rows (no capture_failed), the backfill refused clearly
    with o.connect(o.owner) as c:
        assert (
            one(
                c, "SELECT count(*) FROM pgingest.dead_letters WHERE error_class = 'capture_failed'"
            )
            == 0
        )
    exc = errors.get("backfill")
    assert isinstance(exc, psycopg.errors.InsufficientPrivilege), errors
    assert "source notes: row-level security is enabled on table appx.notes: not read" in str(exc)
    # the read paths: the sources' rows are dead letters (source_unreadable), never read
    assert "raw" not in errors and raw == [], (errors, raw)
    assert all(r[1] != "current" for r in rows), rows
    with o.connect(o.owner) as c:
        letters = c.execute(
            "SELECT doc_id, error_class, error_message FROM pgingest.dead_letters"
            " WHERE doc_id IS NOT NULL"
        ).fetchall()
    assert {d for d, _, _ in letters} >= set(raw_ids), letters
    assert all(cls == "source_unreadable" for _, cls, _ in letters), letters
    assert all("row-level security is enabled on table appx." in m for _, _, m in letters)
    # And where a check would miss a policy, row_security = off makes the read raise instead.
    with o.connect(o.owner) as c:
        for routine in (
            "_read_source_rows",
            "source_backfill_step_v1",
            "_source_capture",
            "raw_documents_v1",
            "_raw_rows",
        ):
            config = one(
                c,
                "SELECT proconfig::text FROM pg_proc WHERE proname = %s"
                " AND pronamespace = 'pgingest'::regnamespace",
                (routine,),
            )
            assert "row_security=off" in config, (routine, config)


# -- 3: add_source() refuses a table whose schema the owner of pgingest may not use --------------


def test_add_source_refuses_a_schema_the_owner_of_pgingest_may_not_use(owned: Owned) -> None:
    o = owned
    with o.connect() as su:
        su.execute(sql.SQL("CREATE SCHEMA appy AUTHORIZATION {}").format(sql.Identifier(o.app)))
    with o.connect(o.app) as a:
        a.execute("CREATE TABLE appy.notes (id int PRIMARY KEY, body text)")
        a.execute("INSERT INTO appy.notes VALUES (1, 'first')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            a.execute("SELECT pgingest.add_source('notes', 'appy.notes', body => 'body')")
        assert f"the owner of pgingest, {o.owner}, may not use schema appy" in str(ei.value)
        assert f"GRANT USAGE ON SCHEMA appy TO {o.owner};" in (ei.value.diag.message_hint or "")
        # nothing left behind: no trigger, no source, no grant
        assert one(a, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'appy.notes'::regclass") == 0
        assert one(a, "SELECT count(*) FROM pgingest.sources WHERE name = 'notes'") == 0
        # with the grant the hint gives, it attaches and the backfill reads the table
        a.execute(sql.SQL("GRANT USAGE ON SCHEMA appy TO {}").format(sql.Identifier(o.owner)))
        a.execute("SELECT pgingest.add_source('notes', 'appy.notes', body => 'body')")
    with o.connect(o.worker) as w:
        assert one(w, "SELECT pgingest.source_backfill_step_v1(100)") == 1


# -- 4: the raw read path: a renamed table is read, a broken source fails no other ---------------


def test_raw_documents_reads_a_renamed_table_and_a_broken_source_fails_no_other(
    conn: psycopg.Connection[Any], fake: FakeEmbeddingServer
) -> None:
    register(conn, "v1", fake.url)
    ids: dict[str, int] = {}
    for name in ("files", "blobs"):
        conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, data bytea)")
        conn.execute(
            sql.SQL("INSERT INTO public.{} VALUES (1, %s)").format(sql.Identifier(name)),
            (f"bytes of {name}".encode(),),
        )
        conn.execute(f"SELECT pgingest.add_source('{name}', 'public.{name}', content => 'data')")
    conn.execute("CALL pgingest.run_source_backfill()")
    for name in ("files", "blobs"):
        ids[name] = one(
            conn,
            "SELECT r.doc_id FROM pgingest.source_rows AS r JOIN pgingest.sources AS s"
            " ON s.id = r.source_id WHERE s.name = %s",
            (name,),
        )

    def raw() -> dict[int, bytes]:
        return {
            r[0]: bytes(r[1])
            for r in conn.execute(
                "SELECT doc_id, content FROM pgingest.raw_documents_v1(%s, 1000000)",
                (list(ids.values()),),
            ).fetchall()
        }

    assert raw() == {ids["files"]: b"bytes of files", ids["blobs"]: b"bytes of blobs"}
    # renamed: read under its new name (before: 'relation "public.files" does not exist' until
    # the next install, for every source of the batch)
    conn.execute("ALTER TABLE public.files RENAME TO files_renamed")
    assert raw() == {ids["files"]: b"bytes of files", ids["blobs"]: b"bytes of blobs"}
    # a mapped column renamed: that source's rows are dead letters, the other's are read
    conn.execute("ALTER TABLE public.blobs RENAME COLUMN data TO payload")
    assert raw() == {ids["files"]: b"bytes of files"}
    letters = conn.execute(
        "SELECT doc_id, model, error_class, payload ->> 'source' FROM pgingest.dead_letters"
    ).fetchall()
    assert letters == [(ids["blobs"], "v1", "source_unreadable", "blobs")]
    # a dropped table too
    conn.execute("DROP TABLE public.blobs")
    assert raw() == {ids["files"]: b"bytes of files"}


# -- 5: the vector extension's schema, writable by others after the install ---------------------


def test_a_vector_schema_made_writable_after_the_install_refuses_compiling_the_capture(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    make_role: Callable[..., str],
) -> None:
    schema = one(
        conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'vector'"
    )
    register(conn, "v1", fake.url)
    attach_notes(conn)
    intruder = make_role("pgi_intruder")
    conn.execute(
        sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(intruder)
        )
    )
    conn.execute("CREATE TABLE public.memos (id int PRIMARY KEY, body text)")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as ei:
        conn.execute("SELECT pgingest.add_source('memos', 'public.memos', body => 'body')")
    assert f"{intruder} may create objects in schema {schema}" in str(ei.value)
    assert "--allow-public-create" in (ei.value.diag.message_hint or "")
    assert one(conn, "SELECT count(*) FROM pgingest.sources WHERE name = 'memos'") == 0
    # the compilation of register_model() too, while a source is attached
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        register(conn, "v2", fake.url)
    # the application's writes are still captured (the capture compiled before), and removing a
    # source is never refused
    conn.execute("INSERT INTO public.notes VALUES (1, 'still captured')")
    assert queue_count(conn, "v1") == 1
    conn.execute("SELECT pgingest.remove_source('notes')")
    # an install made with --allow-public-create records it: attaching works again
    with pytest.raises(install.InstallError):
        install.install(dsn)
    install.install(dsn, allow_public_create=True)
    conn.execute("SELECT pgingest.add_source('memos', 'public.memos', body => 'body')")
    # revoked and installed again: a later grant is refused again
    conn.execute(
        sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(
            sql.Identifier(schema), sql.Identifier(intruder)
        )
    )
    install.install(dsn)
    conn.execute(
        sql.SQL("GRANT CREATE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.Identifier(intruder)
        )
    )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        register(conn, "v2", fake.url)


# -- 6: the compile and lifecycle locks are no advisory locks anyone can take --------------------

LEGACY_ADVISORY_KEYS = ("1886808435, -1", "8099558377751147381")
"""The compilations' and the lifecycle's advisory locks before migration 0024."""


def test_a_login_without_any_pgingest_role_cannot_hold_up_the_lifecycle_or_attaching(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    make_role: Callable[..., str],
) -> None:
    """Review 2026-12-07 (left open then): a role with no pgingest role at all held the advisory
    lock of the capture's compilation or of the model lifecycle, and register_model, add_source,
    remove_source, swap_model and retire_model waited for as long as it liked (here: failed at
    lock_timeout)."""
    nobody = make_role("pgi_nobody")
    with as_role(dsn, nobody) as attacker:
        assert not one(attacker, "SELECT has_schema_privilege('pgingest', 'USAGE')")
        for key in LEGACY_ADVISORY_KEYS:
            attacker.execute(f"SELECT pg_advisory_lock({key})")
        # ... nor can it name the tables that replaced them
        for table in ("pgingest.compile_lock", "pgingest.lifecycle_lock"):
            attacker.execute("BEGIN")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                attacker.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
            attacker.execute("ROLLBACK")
        conn.execute("SET lock_timeout = '3s'")
        register(conn, "v1", fake.url)
        attach_notes(conn)
        register(conn, "v2", fake.url)
        conn.execute("SELECT pgingest.swap_model('v2', force => true)")
        conn.execute("SELECT pgingest.retire_model('v1')")
        conn.execute("SELECT pgingest.remove_source('notes')")
        conn.execute("RESET lock_timeout")
        for key in LEGACY_ADVISORY_KEYS:
            attacker.execute(f"SELECT pg_advisory_unlock({key})")
    assert one(conn, "SELECT state FROM pgingest.models WHERE name = 'v2'") == "active"


def test_the_compile_and_lifecycle_lock_tables_admit_no_conflicting_mode_but_the_owners(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    make_role: Callable[..., str],
) -> None:
    owner = one(
        conn, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'pgingest'"
    )
    for table in ("pgingest.compile_lock", "pgingest.lifecycle_lock"):
        assert grants_of(conn, table) == [(owner, "pgingest_admin", "SELECT")]
        assert one(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))) == 0
    assert_no_member_can_lock(
        dsn,
        make_role,
        ("pgingest.compile_lock", "pgingest.lifecycle_lock"),
        ("ROW SHARE", "ROW EXCLUSIVE", "SHARE", "EXCLUSIVE"),
    )
    # An admin reading them (ACCESS SHARE, which SELECT allows) holds up nothing.
    admin = make_role("pgi_admin", "pgingest_admin")
    with as_role(dsn, admin) as c:
        c.execute("BEGIN")
        for table in ("pgingest.compile_lock", "pgingest.lifecycle_lock"):
            c.execute(f"LOCK TABLE {table} IN ACCESS SHARE MODE")
        conn.execute("SET lock_timeout = '3s'")
        register(conn, "v1", fake.url)
        attach_notes(conn)
        conn.execute("RESET lock_timeout")
        c.execute("ROLLBACK")
