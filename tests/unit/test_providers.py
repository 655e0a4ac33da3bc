"""The OpenAI-compatible provider against the real fake server on 127.0.0.1 (no database)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from pgingest.providers import (
    AuthError,
    BadResponse,
    CircuitBreaker,
    CircuitOpen,
    EmbeddingProvider,
    EmbedResult,
    InputRejected,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    OpenAICompatibleProvider,
    ProviderBase,
    ProviderError,
    QuotaExceeded,
    RaggedResponse,
    RateLimited,
    TransientProviderError,
    embed_isolating,
    parse_retry_after,
    plan_requests,
)
from pgingest.testing.fake_provider import FakeEmbeddingServer

KEY = "sk-test-SECRET-5f1d2c3b4a"


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # 127.0.0.1 only, never through a proxy
    return s


@pytest.fixture
def srv() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer(api_key=KEY) as server:
        yield server


class Recorder:
    """Injected sleep and observers."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.requests: list[tuple[str, float, int]] = []
        self.retries: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_request(self, status: str, seconds: float, n: int) -> None:
        self.requests.append((status, seconds, n))

    def on_retry(self, error_class: str) -> None:
        self.retries.append(error_class)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


MakeProvider = Callable[..., OpenAICompatibleProvider]


@pytest.fixture
def make(srv: FakeEmbeddingServer, rec: Recorder) -> Iterator[MakeProvider]:
    made: list[OpenAICompatibleProvider] = []

    def factory(**kw: Any) -> OpenAICompatibleProvider:
        args: dict[str, Any] = {
            "base_url": srv.url,
            "model": "fake-768",
            "dimensions": 768,
            "api_key": KEY,
            "timeout": 2.0,
            "max_retries": 2,
            "session_factory": _session,
            "sleep": rec.sleep,
            "rand": lambda: 1.0,  # full jitter at its cap: deterministic delays
            "on_request": rec.on_request,
            "on_retry": rec.on_retry,
        }
        args.update(kw)
        p = OpenAICompatibleProvider(**args)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


# -- the happy path ----------------------------------------------------------------------------


def test_embed_returns_raw_float32_rows_in_input_order(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    p = make()
    assert isinstance(p, EmbeddingProvider)
    assert p.name == "fake-768" and p.dimensions == 768
    texts = ["first", "second", "third"]
    srv.fail_next("shuffle")  # data in reverse order: rows must follow "index"
    out = p.embed(texts)
    assert out.dtype == np.float32 and out.shape == (3, 768)
    for row, text in zip(out, texts, strict=True):
        assert np.array_equal(row, srv.vector_for(text))
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)  # raw, not normalised
    assert [(s, n) for s, _, n in rec.requests] == [("200", 3)]
    assert rec.sleeps == [] and rec.retries == []


def test_base64_and_float_give_the_same_vectors(make: MakeProvider) -> None:
    texts = ["same", "vectors", "either way", "__NAN__ too"]
    a = make(encoding_format="base64").embed(texts)
    b = make(encoding_format="float").embed(texts)
    assert np.array_equal(a, b, equal_nan=True)
    assert np.isnan(a[3]).sum() == 1  # raw: NaN is passed on for the worker to reject


def test_request_dimensions(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    out = make(dimensions=32, request_dimensions=True).embed(["short"])
    assert out.shape == (1, 32)
    assert np.array_equal(out[0], srv.vector_for("short")[:32])
    assert make(dimensions=32).embed(["short"]).shape == (1, 768)  # not sent: model default


def test_empty_input_makes_no_request(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    assert make().embed([]).shape == (0, 768)
    assert make().embed_detailed([]).vectors == []
    assert srv.stats()["requests"] == 0


def test_base_url_forms(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    assert make(base_url=srv.url + "/").embed(["a"]).shape == (1, 768)
    assert make(base_url=srv.embeddings_url).embed(["a"]).shape == (1, 768)
    with pytest.raises(ValueError):
        make(base_url="ftp://127.0.0.1/v1")


def test_gzipped_answers(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    srv.configure(gzip=True)
    out = make().embed(["zipped", "answer"])
    assert np.array_equal(out[1], srv.vector_for("answer"))
    srv.fail_next("server_error", 5)
    with pytest.raises(TransientProviderError) as info:
        make(max_retries=0).embed(["a"])
    assert "Sorry about that" in str(info.value)  # the error body was decoded too


def test_connection_is_reused(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    p = make()
    for _ in range(5):
        p.embed(["x"])
    assert srv.stats()["connections"] == 1


# -- error classification ----------------------------------------------------------------------

RETRIED = 3  # max_retries=2 -> three attempts

CASES = [
    # mode, exception, error_class, HTTP attempts
    ("server_error", TransientProviderError, "server_error", RETRIED),
    ("unavailable", TransientProviderError, "server_error", RETRIED),
    ("bad_gateway", TransientProviderError, "server_error", RETRIED),
    ("http_408", TransientProviderError, "timeout", RETRIED),
    ("http_409", TransientProviderError, "server_error", RETRIED),
    ("reset", TransientProviderError, "connection", RETRIED),
    ("incomplete", TransientProviderError, "connection", RETRIED),
    ("truncated", BadResponse, "bad_response", RETRIED),
    ("error_body", BadResponse, "bad_response", RETRIED),
    ("fewer", BadResponse, "bad_response", RETRIED),
    ("more", BadResponse, "bad_response", RETRIED),
    ("bad_index", BadResponse, "bad_response", RETRIED),
    ("bad_request", InputRejected, "rejected_input", 1),
    ("too_large", InputRejected, "rejected_input", 1),
    ("http_422", InputRejected, "rejected_input", 1),
    ("bad_param", InvalidRequest, "invalid_request", 1),
    ("http_405", InvalidRequest, "client_error", 1),
    ("auth", AuthError, "auth", 1),
    ("forbidden", AuthError, "auth", 1),
    ("not_found", ModelNotFound, "model_not_found", 1),
    ("quota", QuotaExceeded, "insufficient_quota", 1),
]


@pytest.mark.parametrize(("mode", "exc_type", "error_class", "attempts"), CASES)
def test_failure_modes_map_to_error_classes(
    srv: FakeEmbeddingServer,
    make: MakeProvider,
    rec: Recorder,
    mode: str,
    exc_type: type[ProviderError],
    error_class: str,
    attempts: int,
) -> None:
    srv.fail_next(mode, 10)
    with pytest.raises(exc_type) as info:
        make().embed(["a", "b", "c"])
    err = info.value
    assert type(err) is exc_type
    assert err.error_class == error_class
    assert str(err).startswith(error_class)
    assert srv.stats()["requests"] == attempts  # retries are bounded
    assert rec.retries == [error_class] * (attempts - 1)
    assert len(rec.requests) == attempts
    if issubclass(exc_type, (AuthError, ModelNotFound, QuotaExceeded, InvalidRequest)):
        assert isinstance(err, ModelUnavailable)


def test_unknown_model_is_model_not_found(make: MakeProvider) -> None:
    with pytest.raises(ModelNotFound) as info:
        make(model="no-such-model").embed(["a"])
    assert info.value.status == 404 and "no-such-model" in str(info.value)


def test_html_page_message_is_readable(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    srv.fail_next("bad_gateway", 10)
    with pytest.raises(TransientProviderError) as info:
        make(max_retries=0).embed(["a"])
    assert info.value.status == 502 and "502 Bad Gateway" in str(info.value)
    assert "\n" not in str(info.value)


def test_connection_refused_is_connection(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    p = make(max_retries=1)
    srv.stop()
    with pytest.raises(TransientProviderError) as info:
        p.embed(["a"])
    assert info.value.error_class == "connection"


def test_timeout_and_trickle_are_timeouts_bounded_in_time(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(trickle_interval_s=0.02)
    for mode in ("timeout", "trickle"):
        srv.fail_next(mode, 2)
        t0 = time.monotonic()
        with pytest.raises(TransientProviderError) as info:
            make(timeout=0.25, max_retries=1).embed(["a", "b"])
        assert info.value.error_class == "timeout"
        assert time.monotonic() - t0 < 1.5  # two attempts of 0.25 s (+ one last read)
    assert [s for s, _, _ in rec.requests] == ["timeout"] * 4


def test_transient_then_success_with_jittered_backoff(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.fail_next("server_error", 2)
    out = make(max_retries=3, backoff_base=0.5, backoff_max=30).embed(["a"])
    assert out.shape == (1, 768)
    assert rec.sleeps == [0.5, 1.0]  # rand()=1: the cap of full jitter, base * 2**n
    assert rec.retries == ["server_error", "server_error"]
    assert [s for s, _, _ in rec.requests] == ["500", "500", "200"]


def test_full_jitter_is_random_below_a_capped_exponential(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    rng = random.Random(3)
    srv.fail_next("server_error", 8)
    with pytest.raises(TransientProviderError):
        make(max_retries=7, backoff_base=1.0, backoff_max=8.0, rand=rng.random).embed(["a"])
    caps = [1, 2, 4, 8, 8, 8, 8]
    assert len(rec.sleeps) == 7
    assert all(0 <= s <= c for s, c in zip(rec.sleeps, caps, strict=True))
    assert len(set(rec.sleeps)) == 7


# -- 429 and Retry-After -----------------------------------------------------------------------


def test_retry_after_is_honoured_and_429s_do_not_spend_retries(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=3)
    srv.fail_next("rate_limit", 4)
    out = make(max_retries=0, max_retry_after=60).embed(["a"])
    assert out.shape == (1, 768)
    assert rec.sleeps == [3.0, 3.0, 3.0, 3.0]
    assert rec.retries == ["rate_limited"] * 4


def test_retry_after_ms_and_http_date(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=9, retry_after_ms=1500)
    srv.fail_next("rate_limit")
    make().embed(["a"])
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    srv.configure(retry_after=later, retry_after_ms=None)
    srv.fail_next("rate_limit")
    make(wall_clock=now.timestamp).embed(["a"])
    assert rec.sleeps == [1.5, 7.0]


def test_rate_limit_budget_ends_in_rate_limited(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=10)
    srv.fail_next("rate_limit", 50)
    with pytest.raises(RateLimited) as info:
        make(max_retry_after=25).embed(["a"])
    assert rec.sleeps == [10.0, 10.0]  # a third wait would pass 25 s
    assert info.value.retry_after == 10.0 and info.value.status == 429
    assert info.value.error_class == "rate_limited"
    assert srv.stats()["requests"] == 3


def test_retry_after_longer_than_budget_raises_at_once(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=120)
    srv.fail_next("rate_limit")
    with pytest.raises(RateLimited) as info:
        make(max_retry_after=60).embed(["a"])
    assert info.value.retry_after == 120.0
    assert rec.sleeps == [] and srv.stats()["requests"] == 1


def test_rate_limit_retries_are_bounded_even_with_zero_retry_after(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=0)
    srv.fail_next("rate_limit", 100)
    with pytest.raises(RateLimited):
        make(max_rate_limit_retries=5).embed(["a"])
    assert rec.sleeps == [0.0] * 5 and srv.stats()["requests"] == 6


def test_rate_limit_without_retry_after_backs_off(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=None)
    srv.fail_next("rate_limit", 3)
    make(backoff_base=0.5).embed(["a"])
    assert rec.sleeps == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("1.5", 1.5),
        (" 0 ", 0.0),
        ("-4", 0.0),
        ("Wed, 01 Jan 2030 12:00:10 GMT", 10.0),
        ("Wed, 01 Jan 2030 11:00:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp
    assert parse_retry_after(value, now=now) == expected


# -- one bad input among many ------------------------------------------------------------------


def test_bisection_isolates_one_rejected_input_among_16(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    texts = [f"text {i}" for i in range(16)]
    texts[11] = "text 11 __REJECT__"
    result = make().embed_detailed(texts)
    assert isinstance(result, EmbedResult)
    assert list(result.errors) == [11]
    err = result.errors[11]
    assert isinstance(err, InputRejected) and err.error_class == "rejected_input"
    assert result.vectors[11] is None
    assert result.ok_indices == [i for i in range(16) if i != 11]
    for i in result.ok_indices:
        vec = result.vectors[i]
        assert vec is not None and np.array_equal(vec, srv.vector_for(texts[i]))
    # 1 + 2 per level of the path to the bad input: 1 + 2 * log2(16)
    assert result.requests == srv.stats()["requests"] == 9


def test_bisection_with_several_bad_inputs(make: MakeProvider) -> None:
    texts = [f"t{i}" + (" __REJECT__" if i in (0, 5, 6, 12) else "") for i in range(13)]
    result = make().embed_detailed(texts)
    assert sorted(result.errors) == [0, 5, 6, 12]
    assert len(result.ok_indices) == 9
    single = make().embed_detailed(["only __REJECT__"])
    assert list(single.errors) == [0] and single.requests == 1


def test_a_one_off_request_level_400_loses_nothing(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    srv.fail_next("bad_request")
    result = make().embed_detailed([f"t{i}" for i in range(8)])
    assert result.errors == {} and len(result.ok_indices) == 8 and result.requests == 3


def test_a_request_level_400_is_not_bisected(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    srv.fail_next("bad_param", 10)
    with pytest.raises(InvalidRequest):
        make().embed_detailed([f"t{i}" for i in range(8)])
    assert srv.stats()["requests"] == 1


def test_one_vector_of_another_length(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    texts = ["a", "b __DIM__", "c"]
    with pytest.raises(RaggedResponse) as info:
        make().embed(texts)
    assert isinstance(info.value, BadResponse)
    assert srv.stats()["requests"] == 1  # not retried: the answer follows from the inputs
    srv.reset_counters()
    result = make().embed_detailed(texts)
    assert [None if v is None else len(v) for v in result.vectors] == [768, 767, 768]
    assert result.errors == {} and srv.stats()["requests"] == 1


def test_other_errors_propagate_from_embed_detailed(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    srv.configure(retry_after=100)
    srv.fail_next("rate_limit")
    with pytest.raises(RateLimited):
        make().embed_detailed(["a", "b"])


def test_embed_isolating_works_on_any_provider() -> None:
    class Toy(ProviderBase):
        name = "toy"
        dimensions = 2
        calls = 0

        def embed(self, inputs: Any) -> np.ndarray:
            self.calls += 1
            if any("bad" in t for t in inputs):
                raise InputRejected("bad input")
            return np.ones((len(inputs), 2), np.float32)

    toy = Toy()
    assert isinstance(toy, EmbeddingProvider)
    result = embed_isolating(toy, ["ok", "bad", "ok", "ok"])
    assert list(result.errors) == [1] and toy.calls == result.requests == 5
    assert toy.embed_detailed(["ok"]).ok_indices == [0]


# -- API key -----------------------------------------------------------------------------------


def _all_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for r in caplog.records:
        parts.append(r.getMessage())
        parts.append(repr(r.args))
        parts.append(repr(r.__dict__))
    return "\n".join(parts)


def test_api_key_is_never_shown(
    srv: FakeEmbeddingServer, make: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv.configure(echo_key_in_errors=True, api_key="sk-the-real-key-0000")
    p = make()  # sends KEY, which the server now rejects and echoes back in full
    assert KEY not in repr(p) and KEY not in str(p)
    with pytest.raises(AuthError) as info:
        p.embed(["a"])
    err = info.value
    for text in (str(err), repr(err), err.message, repr(err.args)):
        assert KEY not in text
    assert "***" in str(err)
    # retries, rate limits and transient errors are logged: never with the key
    srv.configure(api_key=KEY, retry_after=0)
    srv.fail_next("rate_limit")
    srv.fail_next("server_error")
    srv.fail_next("bad_gateway")
    p.embed(["b"])
    assert caplog.records, "expected debug records of the retries"
    assert KEY not in _all_text(caplog)
    assert KEY not in caplog.text


def test_api_key_from_env_and_file(
    srv: FakeEmbeddingServer,
    make: MakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PGINGEST_TEST_KEY", KEY)
    p = make(api_key=None, api_key_env="PGINGEST_TEST_KEY")
    assert "env PGINGEST_TEST_KEY" in repr(p) and KEY not in repr(p)
    assert p.embed(["a"]).shape == (1, 768)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert make(api_key=None, api_key_file=key_file).embed(["a"]).shape == (1, 768)


def test_missing_key_explains_where_it_looked(
    make: MakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGINGEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(AuthError) as info:
        make(api_key=None, api_key_env="PGINGEST_NO_SUCH_KEY").embed(["a"])
    assert "PGINGEST_NO_SUCH_KEY" in str(info.value)
    # an unreadable key file fails the embedding (pausing the model), not the constructor
    p = make(api_key=None, api_key_file=tmp_path / "missing")
    with pytest.raises(AuthError) as info:
        p.embed(["a"])
    assert "missing" in str(info.value)


def test_rotated_key_file_is_reread_after_a_401(
    srv: FakeEmbeddingServer, make: MakeProvider, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    p = make(api_key=None, api_key_file=key_file)
    p.embed(["a"])
    srv.configure(api_key="sk-rotated-key-111111")
    key_file.write_text("sk-rotated-key-111111")
    assert p.embed(["b"]).shape == (1, 768)
    assert srv.stats()["by_status"] == {200: 2, 401: 1}
    srv.configure(api_key="sk-another-key-222222")  # file not updated: the 401 stands
    with pytest.raises(AuthError):
        p.embed(["c"])


# -- threads, observers --------------------------------------------------------------------------


def test_one_provider_shared_by_threads(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    p = make()
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(5):
                text = f"thread {k} item {j}"
                out = p.embed([text])
                assert np.array_equal(out[0], srv.vector_for(text))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert srv.stats()["requests"] == 30
    assert srv.stats()["connections"] == 6  # a session (and a connection) per thread


def test_observers_see_every_attempt(
    srv: FakeEmbeddingServer, make: MakeProvider, rec: Recorder
) -> None:
    srv.configure(retry_after=0)
    srv.fail_next("rate_limit")
    srv.fail_next("reset")
    srv.fail_next("truncated")
    make().embed(["a", "b"])
    assert [s for s, _, _ in rec.requests] == ["429", "connection", "200", "200"]
    assert all(n == 2 and secs >= 0 for _, secs, n in rec.requests)
    assert rec.retries == ["rate_limited", "connection", "bad_response"]


# -- circuit breaker ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_circuit_breaker_transitions() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock)
    assert cb.state == "closed" and cb.allow()
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # consecutive failures only
    cb.record_failure()
    cb.record_failure()
    assert cb.state == "closed"
    cb.record_failure()
    assert cb.state == "open" and not cb.allow()
    assert cb.retry_in() == 10
    clock.now += 4
    assert cb.retry_in() == 6
    with pytest.raises(CircuitOpen) as info:
        cb.check()
    assert info.value.retry_after == 6 and info.value.error_class == "circuit_open"
    clock.now += 6
    assert cb.state == "half_open"
    assert cb.allow()  # the one trial call
    assert not cb.allow()
    cb.record_failure()  # the trial failed: open again for a full reset_timeout
    assert cb.state == "open" and cb.retry_in() == 10
    clock.now += 10
    assert cb.allow()
    cb.record_success()
    assert cb.state == "closed" and cb.failures == 0 and cb.allow() and cb.allow()


def test_circuit_breaker_half_open_trials_and_validation() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, reset_timeout=5, half_open_max_calls=2, clock=clock)
    cb.record_failure()
    assert cb.state == "open"
    clock.now += 5
    assert cb.allow() and cb.allow() and not cb.allow()
    assert "half_open" in repr(cb)
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_timeout=-1)
    with pytest.raises(ValueError):
        CircuitBreaker(half_open_max_calls=0)


# -- request planning --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("counts", "max_inputs", "max_tokens", "expected"),
    [
        ([], 4, 100, []),
        ([1], 4, 100, [range(0, 1)]),
        ([1] * 10, 4, 100, [range(0, 4), range(4, 8), range(8, 10)]),
        ([40, 40, 40, 40], 10, 100, [range(0, 2), range(2, 4)]),
        ([50, 50, 1], 10, 100, [range(0, 2), range(2, 3)]),
        ([500], 10, 100, [range(0, 1)]),
        ([10, 500, 10], 10, 100, [range(0, 1), range(1, 2), range(2, 3)]),
        ([500, 500], 10, 100, [range(0, 1), range(1, 2)]),
        ([100, 0, 0, 1], 10, 100, [range(0, 3), range(3, 4)]),
        ([0] * 5, 2, 1, [range(0, 2), range(2, 4), range(4, 5)]),
    ],
)
def test_plan_requests(
    counts: list[int], max_inputs: int, max_tokens: int, expected: list[range]
) -> None:
    assert plan_requests(counts, max_inputs, max_tokens) == expected


def test_plan_requests_covers_everything_within_limits() -> None:
    rng = random.Random(42)
    for _ in range(200):
        counts = [rng.choice([0, 1, 5, 50, 300]) for _ in range(rng.randrange(0, 60))]
        max_inputs, max_tokens = rng.randrange(1, 9), rng.randrange(1, 400)
        plans = plan_requests(counts, max_inputs, max_tokens)
        assert [i for r in plans for i in r] == list(range(len(counts)))
        for r in plans:
            assert 1 <= len(r) <= max_inputs and r.step == 1
            total = sum(counts[i] for i in r)
            assert total <= max_tokens or len(r) == 1


def test_plan_requests_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plan_requests([1], 0, 10)
    with pytest.raises(ValueError):
        plan_requests([1], 1, 0)
    with pytest.raises(ValueError):
        plan_requests([1, -1], 4, 10)
