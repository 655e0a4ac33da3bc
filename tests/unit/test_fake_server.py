"""The fake embedding provider: a real HTTP server on 127.0.0.1 (no database needed)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import numpy as np
import pytest
import requests

from pgingest.testing.fake_provider import (
    DEFAULT_MODELS,
    FakeEmbeddingServer,
    RequestInfo,
    control,
    fake_vectors,
)


@pytest.fixture
def srv() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, never through a proxy
    yield session
    session.close()


def post(
    http: requests.Session,
    srv: FakeEmbeddingServer,
    inputs: Any,
    *,
    model: str = "fake-768",
    fmt: str = "base64",
    timeout: float = 5.0,
    **extra: Any,
) -> requests.Response:
    body = {"model": model, "input": inputs, "encoding_format": fmt, **extra}
    return http.post(srv.embeddings_url, json=body, timeout=timeout)


def vectors_of(resp: requests.Response) -> list[np.ndarray]:
    doc = resp.json()
    out = []
    for item in sorted(doc["data"], key=lambda d: d["index"]):
        emb = item["embedding"]
        if isinstance(emb, str):
            out.append(np.frombuffer(base64.b64decode(emb), dtype="<f4"))
        else:
            out.append(np.asarray(emb, dtype=np.float32))
    return out


# -- vectors -----------------------------------------------------------------------------------


def test_vectors_are_deterministic_distinct_and_unnormalised() -> None:
    texts = ["alpha", "beta", "alpha", "gamma"]
    a = fake_vectors("fake-768", texts, 768)
    b = fake_vectors("fake-768", texts, 768)
    assert a.dtype == np.float32 and a.shape == (4, 768)
    assert np.array_equal(a, b)
    assert np.array_equal(a[0], a[2])
    assert not np.allclose(a[0], a[1])
    assert np.isfinite(a).all()
    norms = np.linalg.norm(a, axis=1)
    assert not np.allclose(norms, 1.0, atol=0.05)
    assert len({round(float(n), 3) for n in norms[[0, 1, 3]]}) == 3  # norms vary
    # a shorter vector is a prefix of the same stream; another model gives another vector
    assert np.array_equal(fake_vectors("fake-768", ["alpha"], 100)[0], a[0, :100])
    assert not np.allclose(fake_vectors("fake-384", ["alpha"], 768)[0], a[0])
    # unrelated texts are nearly orthogonal, so nearest-neighbour search is meaningful
    unit = a / norms[:, None]
    assert abs(float(unit[0] @ unit[1])) < 0.2


def test_same_text_same_vector_over_http_in_both_encodings(
    srv: FakeEmbeddingServer, http: requests.Session
) -> None:
    texts = ["one", "two", "three"]
    r64 = post(http, srv, texts, fmt="base64")
    rfl = post(http, srv, texts, fmt="float")
    assert r64.status_code == rfl.status_code == 200
    v64, vfl = vectors_of(r64), vectors_of(rfl)
    for a, b, t in zip(v64, vfl, texts, strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(a, srv.vector_for(t))
    doc = r64.json()
    assert doc["object"] == "list" and doc["model"] == "fake-768"
    assert [d["index"] for d in doc["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in doc["data"])
    assert doc["usage"]["prompt_tokens"] > 0
    assert doc["usage"]["total_tokens"] == doc["usage"]["prompt_tokens"]
    assert isinstance(rfl.json()["data"][0]["embedding"], list)
    # a single string input is accepted, as by OpenAI
    single = vectors_of(post(http, srv, "two"))
    assert len(single) == 1 and np.array_equal(single[0], v64[1])


def test_dimension_from_model_map_and_request_field(
    srv: FakeEmbeddingServer, http: requests.Session
) -> None:
    assert len(vectors_of(post(http, srv, ["x"], model="fake-384"))[0]) == 384
    assert len(vectors_of(post(http, srv, ["x"], dimensions=64))[0]) == 64
    srv.configure(models={**DEFAULT_MODELS, "tiny": 3})
    assert len(vectors_of(post(http, srv, ["x"], model="tiny"))[0]) == 3
    for bad in (0, -1, "12", 10**9):
        r = post(http, srv, ["x"], dimensions=bad)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "dimensions"


def test_unknown_model_is_openai_404(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    r = post(http, srv, ["x"], model="no-such-model")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found"
    assert "no-such-model" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_request_validation(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    assert http.post(srv.embeddings_url, data=b"{nope", timeout=5).status_code == 400
    assert post(http, srv, []).status_code == 400
    assert post(http, srv, [1, 2]).status_code == 400
    assert post(http, srv, ["ok", ""]).status_code == 400
    assert post(http, srv, ["x"], fmt="int8").status_code == 400
    srv.configure(max_inputs=4)
    r = post(http, srv, ["a"] * 5)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    srv.configure(max_body_bytes=100)
    assert post(http, srv, ["y" * 200]).status_code == 413
    assert http.post(srv.root_url + "/nowhere", json={}, timeout=5).status_code == 404


def test_models_and_health(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    ids = [m["id"] for m in http.get(srv.url + "/models", timeout=5).json()["data"]]
    assert ids == sorted(DEFAULT_MODELS)
    assert http.get(srv.root_url + "/health", timeout=5).json() == {"status": "ok"}


# -- API key -----------------------------------------------------------------------------------


def test_api_key_check() -> None:
    key = "sk-test-0123456789abcdef"
    with FakeEmbeddingServer(api_key=key) as srv, requests.Session() as http:
        http.trust_env = False
        missing = post(http, srv, ["x"])
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "invalid_request_error"
        wrong = http.post(
            srv.embeddings_url,
            json={"model": "fake-768", "input": ["x"]},
            headers={"Authorization": "Bearer sk-wrong-key-999999"},
            timeout=5,
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert "sk-wrong-key-999999" not in wrong.text  # masked, as OpenAI does
        ok = http.post(
            srv.embeddings_url,
            json={"model": "fake-768", "input": ["x"]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        assert ok.status_code == 200
        assert srv.stats()["by_status"] == {401: 2, 200: 1}
        assert key not in json.dumps(srv.snapshot())


# -- counters, hook, control -------------------------------------------------------------------


def test_counters_and_keep_alive(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    post(http, srv, ["a", "b"])
    post(http, srv, ["c"])
    post(http, srv, ["d"], model="nope")
    stats = srv.stats()
    assert stats["requests"] == 3
    assert stats["inputs"] == 3
    assert stats["inputs_seen"] == ["a", "b", "c"]
    assert stats["by_status"] == {200: 2, 404: 1}
    assert stats["by_mode"] == {"ok": 2, "model_not_found": 1}
    assert stats["connections"] == 1  # HTTP/1.1 keep-alive
    srv.reset_counters()
    assert srv.stats()["requests"] == 0


def test_inputs_seen_is_bounded(http: requests.Session) -> None:
    with FakeEmbeddingServer(max_inputs_seen=5) as srv:
        post(http, srv, [f"t{i}" for i in range(8)])
        assert srv.stats()["inputs_seen"] == [f"t{i}" for i in range(3, 8)]
        assert srv.stats()["inputs"] == 8


def test_on_request_hook_runs_while_the_client_waits(
    srv: FakeEmbeddingServer, http: requests.Session
) -> None:
    seen: list[RequestInfo] = []
    answered = threading.Event()

    def hook(info: RequestInfo) -> None:
        assert not answered.is_set()
        seen.append(info)

    srv.on_request = hook
    post(http, srv, ["p", "q"], dimensions=8)
    answered.set()
    assert len(seen) == 1
    assert seen[0].inputs == ["p", "q"] and seen[0].dimensions == 8
    assert seen[0].model == "fake-768" and seen[0].encoding_format == "base64"
    assert "authorization" not in {k.lower() for k in seen[0].headers}

    def broken(info: RequestInfo) -> None:
        raise RuntimeError("hook failed")

    srv.on_request = broken
    assert post(http, srv, ["p"]).status_code == 500
    assert len(srv.counters.hook_errors) == 1


def test_fail_next_then_recovers(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.fail_next("server_error", 2)
    srv.fail_next("unavailable")
    codes = [post(http, srv, ["x"]).status_code for _ in range(4)]
    assert codes == [500, 500, 503, 200]
    assert srv.stats()["by_mode"] == {"server_error": 2, "unavailable": 1, "ok": 1}
    with pytest.raises(ValueError):
        srv.fail_next("no_such_mode")


def test_rates_are_deterministic_with_a_seed(http: requests.Session) -> None:
    def run(seed: int) -> list[int]:
        with FakeEmbeddingServer(seed=seed) as srv:
            srv.configure(rates={"server_error": 0.3, "unavailable": 0.2})
            return [post(http, srv, ["x"]).status_code for _ in range(30)]

    first = run(7)
    assert first == run(7)
    assert set(first) == {200, 500, 503}
    assert first != run(8)
    with FakeEmbeddingServer() as srv, pytest.raises(ValueError):
        srv.configure(rates={"server_error": 0.8, "timeout": 0.5})


def test_control_over_http(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    snap = control(srv.url, {"latency_ms": 5, "fail_next": {"mode": "rate_limit", "n": 2}})
    assert snap["behaviour"]["latency_ms"] == 5
    assert snap["pending_failures"] == ["rate_limit", "rate_limit"]
    control(srv.root_url, {"fail_next": ["server_error"], "retry_after": 3})
    assert post(http, srv, ["x"]).headers["Retry-After"] == "3"
    assert [post(http, srv, ["x"]).status_code for _ in range(3)] == [429, 500, 200]
    assert control(srv.url)["stats"]["requests"] == 4
    after = control(srv.url, {"reset": True})
    assert after["behaviour"]["latency_ms"] == 0 and after["stats"]["requests"] == 0
    bad = http.post(srv.control_url, json={"no_such_field": 1}, timeout=5)
    assert bad.status_code == 400
    assert http.post(srv.control_url, json={"fail_next": "bogus"}, timeout=5).status_code == 400
    with pytest.raises(ValueError):
        control("http://example.com:80/v1", {})


def test_reset_restores_constructor_settings(http: requests.Session) -> None:
    with FakeEmbeddingServer(models={"m": 4}, latency_ms=1) as srv:
        srv.configure(models={"m": 8}, latency_ms=0, rates={"server_error": 0.5})
        srv.fail_next("timeout", 3)
        srv.reset()
        assert srv.behaviour.models == {"m": 4}
        assert srv.behaviour.latency_ms == 1 and srv.behaviour.rates == {}
        assert srv.snapshot()["pending_failures"] == []


def test_latency(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    post(http, srv, ["warm"])
    srv.configure(latency_ms=60)
    t0 = time.perf_counter()
    post(http, srv, ["x"])
    assert time.perf_counter() - t0 >= 0.06


# -- failure modes, as seen on the wire --------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("rate_limit", 429, "rate_limit_exceeded"),
        ("quota", 429, "insufficient_quota"),
        ("server_error", 500, None),
        ("unavailable", 503, None),
        ("too_large", 413, None),
        ("bad_request", 400, None),
        ("bad_param", 400, None),
        ("auth", 401, "invalid_api_key"),
        ("forbidden", 403, "unsupported_country_region_territory"),
        ("not_found", 404, "model_not_found"),
        ("http_422", 422, None),
        ("http_408", 408, None),
    ],
)
def test_error_statuses_have_openai_bodies(
    srv: FakeEmbeddingServer, http: requests.Session, mode: str, status: int, code: str | None
) -> None:
    srv.fail_next(mode)
    r = post(http, srv, ["x"])
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert srv.stats()["by_mode"] == {mode: 1}


def test_rate_limit_headers(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.configure(retry_after=2.5, retry_after_ms=2500)
    srv.fail_next("rate_limit")
    r = post(http, srv, ["x"])
    assert r.headers["Retry-After"] == "2.5" and r.headers["retry-after-ms"] == "2500"
    date = format_datetime(datetime(2030, 1, 1, tzinfo=UTC), usegmt=True)
    srv.configure(retry_after=date, retry_after_ms=None)
    srv.fail_next("rate_limit")
    r = post(http, srv, ["x"])
    assert r.headers["Retry-After"] == date and "retry-after-ms" not in r.headers
    srv.configure(retry_after=None)
    srv.fail_next("rate_limit")
    assert "Retry-After" not in post(http, srv, ["x"]).headers


def test_html_502(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.fail_next("bad_gateway")
    r = post(http, srv, ["x"])
    assert r.status_code == 502
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.text.lstrip().startswith("<html>")


def test_bad_200_bodies(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.fail_next("truncated")
    r = post(http, srv, ["x", "y"])
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)
    srv.fail_next("error_body")
    r = post(http, srv, ["x"])
    assert r.status_code == 200 and "error" in r.json() and "data" not in r.json()


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("wrong_dims", lambda vs, d: all(len(v) == 769 for v in vs)),
        ("nan", lambda vs, d: all(np.isnan(v).any() for v in vs)),
        ("inf", lambda vs, d: all(np.isinf(v).any() for v in vs)),
        ("zero", lambda vs, d: all(not v.any() for v in vs)),
        ("fewer", lambda vs, d: len(d) == 2),
        ("more", lambda vs, d: len(d) == 4),
        ("bad_index", lambda vs, d: sorted(x["index"] for x in d) == [0, 0, 1]),
        ("shuffle", lambda vs, d: [x["index"] for x in d] == [2, 1, 0]),
    ],
)
@pytest.mark.parametrize("fmt", ["base64", "float"])
def test_bad_vectors(
    srv: FakeEmbeddingServer, http: requests.Session, mode: str, check: Any, fmt: str
) -> None:
    srv.fail_next(mode)
    r = post(http, srv, ["a", "b", "c"], fmt=fmt)
    assert r.status_code == 200
    data = r.json()["data"]
    vectors = [
        np.frombuffer(base64.b64decode(x["embedding"]), "<f4")
        if fmt == "base64"
        else np.asarray(x["embedding"], np.float32)
        for x in data
    ]
    assert check(vectors, data)
    if mode == "nan" and fmt == "float":
        assert b"NaN" in r.content  # the JSON literal a lax server sends


def test_per_input_markers(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    texts = ["fine", "x __NAN__", "y __INF__", "z __DIM__", "w __ZERO__", "also fine"]
    vs = vectors_of(post(http, srv, texts))
    assert np.isfinite(vs[0]).all() and np.isfinite(vs[5]).all()
    assert np.isnan(vs[1]).sum() == 1
    assert np.isinf(vs[2]).sum() == 1
    assert len(vs[3]) == 767 and all(len(v) == 768 for i, v in enumerate(vs) if i != 3)
    assert not vs[4].any()
    assert np.array_equal(vs[0], srv.vector_for("fine"))
    assert srv.stats()["by_mode"] == {"marker": 1}

    r = post(http, srv, ["fine", "bad __REJECT__ text", "fine"])
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "input" and "input[1]" in err["message"]


def test_reset_mode_sends_no_response(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.fail_next("reset")
    with pytest.raises(requests.ConnectionError):
        post(http, srv, ["x"])
    assert post(http, srv, ["x"]).status_code == 200  # the server itself is fine
    assert srv.stats()["by_mode"] == {"reset": 1, "ok": 1}


def test_incomplete_body(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.fail_next("incomplete")
    with pytest.raises(requests.RequestException):
        post(http, srv, ["x"])


def test_timeout_mode_is_interrupted_by_stop(http: requests.Session) -> None:
    srv = FakeEmbeddingServer().start()
    srv.fail_next("timeout")
    t0 = time.perf_counter()
    with pytest.raises(requests.Timeout):
        post(http, srv, ["x"], timeout=0.2)
    assert time.perf_counter() - t0 < 2
    t0 = time.perf_counter()
    srv.stop()  # a handler is still holding the request for hang_s = 30 s
    assert time.perf_counter() - t0 < 2
    with pytest.raises(requests.ConnectionError):
        post(http, srv, ["x"], timeout=1)


def test_trickle_sends_the_body_slowly(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    srv.configure(trickle_interval_s=0.01)
    srv.fail_next("trickle")
    body = {"model": "fake-384", "input": ["x"], "encoding_format": "base64"}
    with http.post(srv.embeddings_url, json=body, stream=True, timeout=5) as r:
        assert r.status_code == 200
        length = int(r.headers["Content-Length"])
        t0 = time.perf_counter()
        got = b""
        while time.perf_counter() - t0 < 0.15:
            got += r.raw.read1(1024)
        assert 0 < len(got) < length


# -- entry point and speed ---------------------------------------------------------------------


def test_module_entry_point(http: requests.Session) -> None:
    env = {**os.environ, "FAKE_KEY": "sk-cli-key-1234567890"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.testing.fake_provider",
            "--port",
            "0",
            "--dims",
            "fake-8=8",
            "--latency-ms",
            "0",
            "--api-key-env",
            "FAKE_KEY",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        r = http.post(
            url + "/embeddings",
            json={"model": "fake-8", "input": ["hello"], "encoding_format": "float"},
            headers={"Authorization": "Bearer sk-cli-key-1234567890"},
            timeout=5,
        )
        assert r.status_code == 200
        assert r.json()["data"][0]["embedding"] == fake_vectors("fake-8", ["hello"], 8)[0].tolist()
        control(url, {"fail_next": "server_error"})
        assert http.post(url + "/embeddings", json={}, timeout=5).status_code == 401
        assert control(url)["pending_failures"] == ["server_error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_throughput_sanity(srv: FakeEmbeddingServer, http: requests.Session) -> None:
    """Regression guard only (client and server share this process and its GIL); the number
    that matters is measured out of process: see the module docstring of fake_server."""
    texts = [f"document {i} " * 20 for i in range(128)]
    post(http, srv, texts)
    n, t0 = 0, time.perf_counter()
    while n < 2048:
        assert post(http, srv, texts).status_code == 200
        n += len(texts)
    rate = n / (time.perf_counter() - t0)
    assert rate > 2000, f"{rate:.0f} vectors/s"
