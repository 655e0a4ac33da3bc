"""Every metric that ops/prometheus/pgingest-rules.yml and ops/grafana/pgingest-dashboard.json
use exists on a running worker's ``/metrics``, and the dashboard's SQL runs against the status
views as ``pgingest_monitor``.

The worker runs as ``pgingest worker --metrics-port`` in its own process (the exporter of
production, the process-wide registry), against the fake provider, on documents that make it
embed, retry a 500, and dead-letter a wrong-dimension, a NaN and a zero vector.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgingest.metrics import Metrics
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests.helpers import insert_docs, register, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "pgingest-rules.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "pgingest-dashboard.json"

# Series that Prometheus itself makes (not the worker): the scrape's `up`, the rules' ALERTS.
NOT_EXPORTED = {"up", "ALERTS"}
# Labels that Prometheus adds at scrape time.
TARGET_LABELS = {"instance", "job"}

Scrape = dict[str, list[dict[str, str]]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", []) if "expr" in t]


def dashboard_sql() -> list[tuple[str, str]]:
    return [
        (p["title"], t["rawSql"])
        for p in panels(dashboard())
        for t in p.get("targets", [])
        if "rawSql" in t
    ]


_SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) of each series the PromQL expression selects: the
    identifiers that are neither functions, keywords, recording rules (with a colon) nor
    label names inside by/without/on/ignoring."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range durations
    expr = re.sub(r'"[^"]*"(?![^{]*\})', " ", expr)  # strings outside {...}
    out = []
    for m in _SELECTOR.finditer(expr):
        name, body = m.group(1), m.group(2)
        rest = expr[m.end() :].lstrip()
        if ":" in name or (rest.startswith("(") and not body):
            continue  # a recording rule, or a function call
        if name in {"and", "or", "unless", "offset", "bool", "inf", "nan"} or name[0].isdigit():
            continue
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        out.append((name, _MATCHER.findall(body or "")))
    return out


def test_selectors_parses_what_the_rules_use() -> None:
    got = selectors(
        'max by (model) (rate(pgingest_x_total{model=~"$model",status!~"200|ok"}[5m]))'
        " / on () pgingest:y:max > 0 and deriv(pgingest_z[30m]) > 0 or vector(1)"
    )
    assert got == [
        ("pgingest_x_total", [("model", "=~", "$model"), ("status", "!~", "200|ok")]),
        ("pgingest_z", []),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> Scrape:
    """{sample name: [labels of each sample]} (otel_scope_* and empty labels dropped)."""
    resp = requests.get(url, timeout=5)
    resp.raise_for_status()
    out: Scrape = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, []).append(
                {k: v for k, v in s.labels.items() if v and not k.startswith("otel_scope")}
            )
    return out


@pytest.fixture
def running_worker(
    conn: psycopg.Connection[Any], dsn: str, fake: FakeEmbeddingServer
) -> Iterator[Scrape]:
    """A worker process with --metrics-port that has embedded, retried and dead-lettered;
    yields its scrape once every figure the test waits for is in."""
    register(conn, "v1", fake.url)
    insert_docs(conn, [(f"doc-{i}", f"Title {i}", f"Document {i} body. " * 20) for i in range(30)])
    insert_docs(
        conn,
        [
            ("dim", None, "Has __DIM__ inside."),
            ("nan", None, "Has __NAN__ inside."),
            ("zero", None, "Is __ZERO__ entirely."),
        ],
    )
    fake.fail_next("server_error", 1)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "pgingest.cli",
        "worker",
        "--database-url",
        dsn,
        "--metrics-port",
        str(port),
        "--batch-size",
        "8",
        "--poll-interval",
        "0.2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    last: list[Scrape] = [{}]

    def ready() -> bool:
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
        try:
            s = scrape(url)
        except requests.ConnectionError:
            return False
        last[0] = s
        embedded = sum(
            1 for lbl in s.get("pgingest_documents_total", []) if lbl.get("outcome") == "embedded"
        )
        return bool(
            embedded
            and len(s.get("pgingest_dead_letters_total", [])) >= 3
            and "pgingest_ann_index_status" in s
            and any(
                lbl.get("status") == "500"
                for lbl in s.get("pgingest_embedding_request_duration_seconds_count", [])
            )
        )

    try:
        wait_for(ready, timeout=90, interval=0.3)
        yield last[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(running_worker: Scrape) -> None:
    exported = running_worker
    used = [("rules", e) for e in rule_exprs()] + [("dashboard", e) for e in dashboard_exprs()]
    names = {name for _, e in used for name, _ in selectors(e)}
    assert len(names - NOT_EXPORTED) >= 30, sorted(names)
    problems = []
    for where, expr in used:
        for name, matchers in selectors(expr):
            if name in NOT_EXPORTED:
                continue
            if name not in exported:
                problems.append(f"{where}: {name} is not exported")
                continue
            labels = {k for lbl in exported[name] for k in lbl}
            for key, op, value in matchers:
                if key in TARGET_LABELS or value.startswith("$"):
                    continue
                if key not in labels:
                    problems.append(f"{where}: {name} has no label {key}")
                elif op == "=" and value not in {lbl.get(key) for lbl in exported[name]}:
                    problems.append(f"{where}: no {name} with {key}={value!r}")
    assert not problems, problems


def test_the_database_side_gauges_match_the_status_views(
    running_worker: Scrape, conn: psycopg.Connection[Any]
) -> None:
    s = running_worker
    (model,) = s["pgingest_ann_index_status"]
    assert model["model"] == "v1" and model["state"] == "active"
    assert {lbl["status"] for lbl in s["pgingest_workers"]} == {"live", "stale", "stuck"}
    assert {lbl["table"] for lbl in s["pgingest_table_dead_tuples"]} == {"chunks", "store"}
    assert {lbl["reason"] for lbl in s["pgingest_vectors_invalid_total"]} >= {
        "dimension",
        "non_finite",
        "zero_vector",
    }
    assert s["pgingest_status_views_readable"] == [{}]
    assert "pgingest_postgres_connections_max" in s
    classes = {
        r[0] for r in conn.execute("SELECT error_class FROM pgingest.dead_letters").fetchall()
    }
    assert classes == {
        "invalid_vector_dimension",
        "invalid_vector_non_finite",
        "invalid_vector_zero_vector",
    }


def test_the_dashboards_sql_runs_as_pgingest_monitor(conn: psycopg.Connection[Any]) -> None:
    queries = dashboard_sql()
    assert {t for t, _ in queries} >= {
        "pgingest.model_status",
        "pgingest.dead_letter_summary",
        "pgingest.worker_status",
        "pgingest.vector_health",
    }
    for title, query in queries:
        with conn.transaction():
            conn.execute("SET LOCAL ROLE pgingest_monitor")
            conn.execute(query).fetchall()  # fails on a missing column or privilege
            assert title.split(".")[1] in query, (title, query)


def test_the_dashboard_is_well_formed() -> None:
    dash = dashboard()
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "postgres", "model"} <= variables
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in ("${datasource}", "${postgres}"), p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            for ref in re.findall(r"\$\{?(\w+)", json.dumps(t)):
                assert ref in variables or ref.startswith("__"), (p["title"], ref)
    # no two panels overlap
    cells = set()
    for p in panels(dash):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))


def read(
    metrics_registry: CollectorRegistry,
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics_registry).decode()):
        for s in family.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if v and "otel" not in k))
            out.setdefault(s.name, {})[key] = s.value
    return out


@pytest.fixture
def registry() -> Iterator[tuple[Metrics, CollectorRegistry]]:
    reg = CollectorRegistry()
    metrics = Metrics([PrometheusMetricReader(registry=reg)])
    yield metrics, reg
    metrics.provider.shutdown()


def test_a_worker_role_without_pgingest_monitor_says_so(
    conn: psycopg.Connection[Any], registry: tuple[Metrics, CollectorRegistry]
) -> None:
    metrics, reg = registry
    register(conn, "v1", "http://127.0.0.1:9/v1")
    conn.execute("SET ROLE pgingest_worker")
    assert metrics.refresh_database(conn, force=True)
    got = read(reg)
    assert got["pgingest_status_views_readable"] == {(): 0}
    assert got["pgingest_postgres_connections"][()] >= 1
    assert got["pgingest_postgres_connections_max"][()] >= 1
    assert "pgingest_ann_index_status" not in got
    conn.execute("RESET ROLE")
    assert not metrics.refresh_database(conn)  # at most every DATABASE_REFRESH_SECONDS
    assert metrics.refresh_database(conn, force=True)
    got = read(reg)
    assert got["pgingest_status_views_readable"] == {(): 1}
    # registered, active, never indexed: missing
    assert got["pgingest_ann_index_status"] == {
        (("index_method", "hnsw"), ("model", "v1"), ("state", "active")): 3
    }
    assert got["pgingest_dead_letters_stored"] == {(("model", "v1"),): 0}


def test_ann_index_status_and_dead_letters_from_the_view_rows(
    registry: tuple[Metrics, CollectorRegistry],
) -> None:
    metrics, reg = registry

    def h(model: str, method: str, status: str, name: str | None, building: bool) -> dict[str, Any]:
        return {
            "model": model,
            "state": "active",
            "index_method": method,
            "index_status": status,
            "index_name": name,
            "building": building,
            "store_live_tuples": 10,
            "store_dead_tuples": 5,
            "chunks_live_tuples": 100,
            "chunks_dead_tuples": 50,
        }

    health = [
        h("ok", "hnsw", "ok", "ix_ok", False),
        h("exact", "none", "not indexed (exact search)", None, False),
        h("building", "hnsw", "invalid or building", "ix_b", True),
        h("plain_build", "hnsw", "missing", None, False),  # CREATE INDEX, not concurrent
        h("invalid", "ivfflat", "invalid or building", "ix_i", False),
        h("missing", "hnsw", "missing", None, False),
    ]
    builds = [{"model": "plain_build"}]
    dead = [{"model": "invalid", "error_class": "http_400", "dead_letters": 4}]
    workers = [
        {"stale": False, "stuck": False},
        {"stale": True, "stuck": False},
        {"stale": False, "stuck": True},
        {"stale": False, "stuck": False},
    ]
    metrics._database_gauges(health, builds, dead, workers)
    got = read(reg)
    status = {dict(k)["model"]: v for k, v in got["pgingest_ann_index_status"].items()}
    assert status == {
        "ok": 0,
        "exact": 0,
        "building": 1,
        "plain_build": 1,
        "invalid": 2,
        "missing": 3,
    }
    stored = {
        tuple(sorted(dict(k).items())): v for k, v in got["pgingest_dead_letters_stored"].items()
    }
    assert stored[(("error_type", "http_400"), ("model", "invalid"))] == 4
    assert stored[(("model", "ok"),)] == 0 and (("model", "invalid"),) not in stored
    assert {dict(k)["status"]: v for k, v in got["pgingest_workers"].items()} == {
        "live": 2,
        "stale": 1,
        "stuck": 1,
    }
    assert got["pgingest_table_dead_tuples"][(("table", "chunks"),)] == 50
    assert got["pgingest_table_dead_tuples"][(("model", "ok"), ("table", "store"))] == 5
    # a model gone from the view: its series go too
    metrics._database_gauges(health[:1], [], [], [])
    assert set(read(reg)["pgingest_ann_index_status"]) == {
        (("index_method", "hnsw"), ("model", "ok"), ("state", "active"))
    }


def test_the_dashboards_promql_parses(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules; $model as Grafana's All)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/install-system.sh (make deps)"
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query:{i}", "expr": e.replace("$model", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout
