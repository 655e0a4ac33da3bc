"""Install review, findings 3 and 4: pgingest.replica_setup_sql() (sql/095_replication.sql).

- Finding 3: a raw-document source (``content =>``, ``uri =>``, ``mime =>``) is copied with its
  mapping; the generated INSERT used to leave those columns NULL and the replica's setup stopped
  on the CHECK sources_one_mapping.
- Finding 4: the replica's chunking profiles carry the primary's ids. A model registered and
  retired on the primary used up a profile id that the replica never numbered, so every later
  model's profile got another id there, and the replicated chunks (with the primary's
  profile_id) matched none of its searches.

The registry checks use a second database on the test cluster; the end-to-end check subscribes a
second cluster, as tests/test_replication.py does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgingest import install
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import insert_docs, register, wait_for
from tests.test_replication import chunk_rows, drain, one, start_second_cluster

SOURCES = (
    "SELECT id, name, table_name, key_columns, key_types, body_column, template, content_column,"
    " uri_column, mime_column, title_column, metadata_columns FROM pgingest.sources ORDER BY id"
)
PROFILES = (
    "SELECT m.name, m.state, m.profile_id, p.tokenizer, p.max_tokens, p.overlap_tokens,"
    " p.title_in_chunks FROM pgingest.models AS m"
    " JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id"
    " WHERE m.state <> 'retired' ORDER BY m.name"
)


def apply_setup(primary: psycopg.Connection[Any], replica: psycopg.Connection[Any]) -> None:
    replica.execute(one(primary, "SELECT pgingest.replica_setup_sql()").encode())


@pytest.fixture
def replica(empty_database: Callable[[str], str]) -> Iterator[psycopg.Connection[Any]]:
    """A second database of the test cluster with pgingest installed (no subscription)."""
    dsn = empty_database("replica")
    install.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as r:
        yield r


def _with_retired_trial(p: psycopg.Connection[Any], url: str) -> None:
    """v1, then a trial model with a profile of its own, retired, then v2: profiles 1, 2, 3."""
    register(p, "v1", url)
    register(p, "trial", url, chunk_max_tokens=100)
    p.execute("SELECT pgingest.retire_model('trial')")
    register(p, "v2", url, chunk_max_tokens=120)
    assert p.execute("SELECT name, profile_id FROM pgingest.models ORDER BY 1").fetchall() == [
        ("trial", 2),
        ("v1", 1),
        ("v2", 3),
    ]


# ---- finding 3 -------------------------------------------------------------------------------


def test_raw_sources_are_set_up_on_the_replica(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    replica: psycopg.Connection[Any],
) -> None:
    register(conn, "v1", fake.url)
    conn.execute("CREATE TABLE public.files (id integer PRIMARY KEY, blob bytea, kind text)")
    conn.execute("CREATE TABLE public.links (id integer PRIMARY KEY, url text, label text)")
    conn.execute("CREATE TABLE public.notes (id integer PRIMARY KEY, body text)")
    conn.execute(
        "SELECT pgingest.add_source('files', 'public.files', content => 'blob', mime => 'kind',"
        " backfill => false)"
    )
    conn.execute(
        "SELECT pgingest.add_source('links', 'public.links', uri => 'url', title => 'label',"
        " backfill => false)"
    )
    conn.execute(
        "SELECT pgingest.add_source('notes', 'public.notes', body => 'body', backfill => false)"
    )
    apply_setup(conn, replica)
    apply_setup(conn, replica)  # idempotent
    primary_sources = conn.execute(SOURCES).fetchall()
    assert [s[7:10] for s in primary_sources if s[0] != 0] == [
        ("blob", None, "kind"),
        (None, "url", None),
        (None, None, None),
    ]
    assert replica.execute(SOURCES).fetchall() == primary_sources
    # The replica's next install re-generates the sources' statements: still installable.
    install.install(replica.info.dsn)
    assert replica.execute(SOURCES).fetchall() == primary_sources


# ---- finding 4 -------------------------------------------------------------------------------


def test_profile_ids_are_the_primary_s_after_a_retire(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    replica: psycopg.Connection[Any],
) -> None:
    _with_retired_trial(conn, fake.url)
    apply_setup(conn, replica)
    apply_setup(conn, replica)  # idempotent
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()
    # A model registered later on both (the documented way: the replica first) gets the same id:
    # the replica's sequence of profile ids was moved up to the primary's.
    register(replica, "v3", fake.url, chunk_max_tokens=150)
    register(conn, "v3", fake.url, chunk_max_tokens=150)
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()
    apply_setup(conn, replica)
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()


def test_a_model_registered_on_the_replica_first_gets_the_primary_s_profile_id(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    replica: psycopg.Connection[Any],
) -> None:
    """The replica was set up, then the primary used up a profile id (a trial model registered and
    retired) and a new model was registered on both, replica first: the replica numbered its
    profile 2, the primary 3. Applying the setup again renumbers the replica's profile."""
    register(conn, "v1", fake.url)
    apply_setup(conn, replica)
    register(conn, "trial", fake.url, chunk_max_tokens=100)
    conn.execute("SELECT pgingest.retire_model('trial')")
    register(replica, "v2", fake.url, chunk_max_tokens=120)
    register(conn, "v2", fake.url, chunk_max_tokens=120)
    assert one(replica, "SELECT profile_id FROM pgingest.models WHERE name = 'v2'") == 2
    apply_setup(conn, replica)
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()
    apply_setup(conn, replica)
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()


def test_the_renumbered_profile_of_the_active_model_is_the_search_view_s(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    replica: psycopg.Connection[Any],
) -> None:
    """The same, for the active model: the view search_chunks (which names the profile id) is
    re-created with the primary's id."""
    assert register(conn, "trial", fake.url, chunk_max_tokens=100) == "active"
    assert register(conn, "v1", fake.url, chunk_max_tokens=120) == "shadow"
    conn.execute("SELECT pgingest.swap_model('v1', force => true)")
    conn.execute("SELECT pgingest.retire_model('trial')")
    assert register(replica, "v1", fake.url, chunk_max_tokens=120) == "active"
    view = "SELECT pg_get_viewdef('pgingest.search_chunks'::regclass)"
    assert "profile_id = 2" in one(replica, view)
    apply_setup(conn, replica)
    assert replica.execute(PROFILES).fetchall() == conn.execute(PROFILES).fetchall()
    assert "profile_id = 3" in one(replica, view)
    assert "profile_id = 3" in one(conn, view)


def test_a_profile_id_the_replica_cannot_take_is_refused(
    conn: psycopg.Connection[Any],
    fake: FakeEmbeddingServer,
    replica: psycopg.Connection[Any],
) -> None:
    """Models registered on the replica by hand in another order: the primary's profile id of v2
    is held there by another profile. The setup refuses, naming the model, and changes nothing."""
    register(conn, "v1", fake.url)
    register(conn, "v2", fake.url, chunk_max_tokens=120)
    register(replica, "v1", fake.url)
    register(replica, "x", fake.url, chunk_max_tokens=130)
    register(replica, "v2", fake.url, chunk_max_tokens=120)
    conn.execute("SELECT pgingest.register_filter('lang', 'text')")
    with pytest.raises(
        psycopg.errors.ObjectNotInPrerequisiteState,
        match=r"v2 \(profile 3 here, 2 on the primary\)",
    ):
        apply_setup(conn, replica)
    assert one(replica, "SELECT count(*) FROM pgingest.filters") == 0


# ---- finding 4, end to end: a subscribed replica searches the later model -------------------


@pytest.fixture(scope="module")
def second_cluster() -> Iterator[Callable[[str], str]]:
    yield from start_second_cluster()


@pytest.mark.slow
def test_a_subscribed_replica_finds_the_chunks_of_a_model_registered_after_a_retire(
    conn: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    second_cluster: Callable[[str], str],
) -> None:
    if one(conn, "SHOW wal_level") != "logical":
        pytest.skip("the primary's wal_level is not logical (scripts/pgcluster.sh sets it)")
    tag = uuid.uuid4().hex[:10]
    replica_dsn = second_cluster(f"replica_{tag}")
    subscription = f"pgingest_sub_{tag}"
    _with_retired_trial(conn, fake.url)
    insert_docs(conn, [(f"doc-{i}", f"Title {i}", f"Body of document {i}.") for i in range(8)])
    drain(dsn)
    assert len(chunk_rows(conn, "v2")) == 8
    assert one(conn, "SELECT pgingest.create_publication()") == "pgingest"

    install.install(replica_dsn)
    r = psycopg.connect(replica_dsn, autocommit=True)
    try:
        apply_setup(conn, r)
        r.execute("ALTER SYSTEM SET wal_retrieve_retry_interval = '500ms'")
        r.execute("SELECT pg_reload_conf()")
        primary_conninfo = psycopg.conninfo.make_conninfo(dsn, application_name=subscription)
        r.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION pgingest").format(
                sql.Identifier(subscription), sql.Literal(primary_conninfo)
            )
        )
        try:
            wait_for(
                lambda: chunk_rows(r, "v2") == chunk_rows(conn, "v2"), timeout=90, interval=0.3
            )
            assert chunk_rows(r, "v1") == chunk_rows(conn, "v1")
            q = one(
                r,
                "SELECT s.embedding::text FROM pgingest.store_v2 AS s JOIN pgingest.documents AS d"
                " ON d.id = s.doc_id WHERE d.key = 'doc-5'",
            )
            hits = r.execute(
                "SELECT doc_key FROM pgingest.search(%s::vector, 3, model => 'v2')", (q,)
            ).fetchall()
            assert hits and hits[0][0] == "doc-5"
        finally:
            r.execute(
                sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(subscription))
            )
    finally:
        r.close()
