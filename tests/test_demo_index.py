"""``pgingest demo`` builds the active model's ANN index before it searches, and prints each
search's latency (issue 21, point 4). The demo runs for real: this test's database, the bundled
model served on an ephemeral port (the demo finds it healthy there and uses it), a worker child
that drains a slice of the corpus."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgingest import db
from pgingest.demo import corpus
from pgingest.demo import run as demo

pytestmark = pytest.mark.local_model


@pytest.fixture(scope="module")
def model_port() -> Iterator[int]:
    from pgingest import local_model

    with local_model.LocalModelServer(local_model.load_encoder(), "127.0.0.1", 0) as srv:
        yield int(srv.url.split(":")[2].split("/")[0])


def test_demo_builds_the_ann_index_then_prints_search_latency(
    conn: psycopg.Connection[Any],
    dsn: str,
    model_port: int,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)  # the demo's worker child connects with it
    rc = demo.main(
        [
            "--database-url",
            dsn,
            "--port",
            str(model_port),
            "--limit",
            "30",
            "--skip-raw-benchmark",
            "--timeout",
            "240",
            "--log-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out

    status = db.model_index_status(conn, demo.MODEL_NAME)[0]
    assert status["present"] and status["valid"] and status["on_column"], status
    definition = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgingest' AND indexname = %s",
        (status["index_name"],),
    ).fetchone()
    assert definition is not None and "USING hnsw" in definition[0], definition

    # The index is reported before the first search, and every search has its latency.
    built_at = out.index(f"{status['index_name']}: built in ")
    assert built_at < out.index("searches (SELECT")
    latencies = re.findall(r"\(([0-9]+\.[0-9]) ms: the query embedded, then searched\)", out)
    assert len(latencies) == len(corpus.DEMO_QUERIES), out
    assert all(float(ms) > 0 for ms in latencies)
    assert "search latency: median " in out

    # A second run keeps the valid index instead of building another.
    monkeypatch.setenv("DATABASE_URL", dsn)
    assert (
        demo.main(
            [
                "--database-url",
                dsn,
                "--port",
                str(model_port),
                "--limit",
                "30",
                "--skip-raw-benchmark",
                "--log-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    again = capsys.readouterr().out
    assert f"{status['index_name']}: exists (already there, valid)" in again, again
