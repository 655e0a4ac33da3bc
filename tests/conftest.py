"""Fixtures: a real PostgreSQL (the private cluster or $DATABASE_URL), a template database with
pgingest installed once per run and cloned for every test (pytest-postgresql), and the fake
embedding provider (a real HTTP server on 127.0.0.1).

Layout: ``tests/unit/`` needs no PostgreSQL (pure decisions, the chunker, vectors, providers
against the in-process fake); every other module talks to the database. A test that asks for a
database fixture gets the ``db`` marker automatically, so ``pytest -m "not db"`` runs everything
that needs no cluster."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories

from pgingest import db, install
from pgingest.testing.fake_provider import FakeEmbeddingServer

ROOT = Path(__file__).resolve().parent.parent


def _server_url() -> str:
    url = os.environ.get("PGINGEST_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        return url
    out = subprocess.run(
        [str(ROOT / "scripts" / "pgcluster.sh"), "url"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


_URL = urlparse(_server_url())
PG_HOST = _URL.hostname or "127.0.0.1"
PG_PORT = _URL.port or 5432
PG_USER = _URL.username or "postgres"
PG_PASSWORD = _URL.password or ""


_DB_FIXTURES = frozenset({"dsn", "conn", "pg_clone", "pg_server", "empty_database"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "db: needs the PostgreSQL cluster (added automatically)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
            if item.path.parent.name == "unit":
                raise pytest.UsageError(f"{item.nodeid}: tests/unit/ must not need the database")


def conninfo_for(dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(
        host=PG_HOST, port=PG_PORT, user=PG_USER, password=PG_PASSWORD or None, dbname=dbname
    )


def _load_pgingest(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    install.install(conninfo_for(dbname))


pg_server = factories.postgresql_noproc(
    host=PG_HOST,
    port=PG_PORT,
    user=PG_USER,
    password=PG_PASSWORD,
    dbname=f"pgingest_test_{os.getpid()}",
    load=[_load_pgingest],
)
pg_clone = factories.postgresql("pg_server")


@pytest.fixture
def dsn(pg_clone: psycopg.Connection[Any]) -> str:
    """Connection string of this test's own database (a clone of the installed template)."""
    return conninfo_for(pg_clone.info.dbname)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    c = db.connect(dsn)
    yield c
    c.close()


@pytest.fixture
def fake() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer() as srv:
        yield srv


@pytest.fixture
def empty_database(pg_server: Any) -> Iterator[Any]:
    """make(label) -> the conninfo of a new empty database, nothing installed (dropped at the
    end): for the tests that install pgingest themselves."""
    admin = psycopg.connect(conninfo_for("postgres"), autocommit=True)
    made: list[str] = []

    def make(label: str) -> str:
        name = f"pgingest_{label}_{uuid.uuid4().hex[:8]}"
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        made.append(name)
        return conninfo_for(name)

    yield make
    for name in made:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    admin.close()


@pytest.fixture
def worker_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on the worker's logger, even if logs.configure() stopped its propagation."""
    logger = logging.getLogger("pgingest")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="pgingest")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
def _pgingest_logging_restored() -> Iterator[None]:
    """``cli.main`` configures the ``pgingest`` logger (its own stderr handler, no propagation):
    each test gets it back as it was, so that a CLI test does not change what later tests'
    caplog sees (one of them counted every batch line twice)."""
    logger = logging.getLogger("pgingest")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
