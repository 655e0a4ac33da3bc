"""The provider client against hostile or broken endpoints (issue 18, items 2, 11 and 13).

* Item 2: a NUL byte, a lone surrogate, a newline, an escape sequence or any non-ASCII character
  in a provider's answer (error message, binary body, model id echoed back, Retry-After) never
  reaches an exception's text unsanitised: the worker writes that text to PostgreSQL as a pause
  reason or a dead letter, where NUL raises DataError and a surrogate UnicodeEncodeError.
* Item 11: an answer is read up to a size cap derived from inputs x dimensions (compressed or
  not) within one wall-clock deadline (headers trickling in count too).
* Item 13: a base URL with credentials or a key in its query string is refused, and no URL
  credential appears in a message.

No database: the fake provider is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import requests

from pgingest import providers
from pgingest.providers import (
    AuthError,
    BadResponse,
    InputRejected,
    ModelNotFound,
    ModelUnavailable,
    OpenAICompatibleProvider,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    TransientProviderError,
)
from pgingest.testing.fake_provider import FakeEmbeddingServer

HOSTILE = (
    "bad\x00news \ud800 lone \udfff\n\rforged log line\x1b[31m red\x7f \u2028 caf\u00e9 \u65e5"
)


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # 127.0.0.1 only, never through a proxy
    return s


@pytest.fixture
def srv() -> Iterator[FakeEmbeddingServer]:
    with FakeEmbeddingServer() as server:
        yield server


MakeProvider = Callable[..., OpenAICompatibleProvider]


@pytest.fixture
def make(srv: FakeEmbeddingServer) -> Iterator[MakeProvider]:
    made: list[OpenAICompatibleProvider] = []

    def factory(**kw: Any) -> OpenAICompatibleProvider:
        args: dict[str, Any] = {
            "base_url": srv.url,
            "model": "fake-768",
            "dimensions": 768,
            "timeout": 5.0,
            "max_retries": 0,
            "max_rate_limit_retries": 0,
            "session_factory": _session,
            "sleep": lambda s: None,
        }
        args.update(kw)
        p = OpenAICompatibleProvider(**args)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


def assert_storable(text: str) -> None:
    """What PostgreSQL accepts as a text parameter in any server encoding, on one log line."""
    assert "\x00" not in text
    text.encode("ascii")  # no surrogate, nothing a LATIN1 or SQL_ASCII database refuses
    assert all(0x20 <= ord(c) < 0x7F for c in text), repr(text)


def assert_error_storable(err: ProviderError) -> None:
    for text in (str(err), err.message, repr(err), err.error_class, *map(str, err.args)):
        assert_storable(text)
    if err.retry_after is not None:
        assert 0 <= err.retry_after <= providers.MAX_RETRY_AFTER


# -------------------------------------------------------------------------- item 2


@pytest.mark.parametrize(
    ("mode", "exc_type"),
    [
        ("bad_request", InputRejected),  # -> dead letter
        ("http_422", InputRejected),
        ("auth", AuthError),  # -> pause reason
        ("forbidden", AuthError),
        ("not_found", ModelNotFound),
        ("quota", QuotaExceeded),
        ("server_error", TransientProviderError),  # -> deferral, then maybe a dead letter
        ("error_body", BadResponse),  # a 200 with an error body
        ("rate_limit", RateLimited),
    ],
)
def test_hostile_json_error_text_is_made_storable(
    srv: FakeEmbeddingServer, make: MakeProvider, mode: str, exc_type: type[ProviderError]
) -> None:
    srv.configure(error_message=HOSTILE)
    srv.fail_next(mode)
    with pytest.raises(exc_type) as info:
        make().embed(["a"])
    err = info.value
    assert_error_storable(err)
    # Still readable: the escapes say what was there.
    assert "bad\\x00news" in err.message
    assert "\\ud800 lone \\udfff" in err.message and "forged log line" in err.message
    assert "caf\\xe9" in err.message and "\\u65e5" in err.message


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 500])
def test_binary_and_utf16_bodies_are_made_storable(
    srv: FakeEmbeddingServer, make: MakeProvider, status: int
) -> None:
    srv.configure(binary_status=status)
    srv.fail_next("binary")
    with pytest.raises(ProviderError) as info:
        make().embed(["a"])
    assert info.value.status == status
    assert_error_storable(info.value)


def test_a_model_id_echoed_back_is_made_storable(make: MakeProvider) -> None:
    with pytest.raises(ModelNotFound) as info:
        make(model="no\x00such\ud800model\n").embed(["a"])
    assert_error_storable(info.value)
    assert "no\\x00such\\ud800model" in str(info.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1e308", "max"), ("99999999", "max"), ("-5", 0.0), ("nan", None)],
)
def test_retry_after_is_bounded(
    srv: FakeEmbeddingServer,
    make: MakeProvider,
    header: str,
    expected: float | str | None,
) -> None:
    if expected == "max":
        expected = providers.MAX_RETRY_AFTER
    srv.configure(retry_after=header)
    srv.fail_next("rate_limit")
    with pytest.raises(RateLimited) as info:
        make().embed(["a"])
    if expected is None:  # no usable value: the client's own backoff
        assert info.value.retry_after is not None
        assert 0 <= info.value.retry_after <= providers.MAX_RETRY_AFTER
    else:
        assert info.value.retry_after == expected


def test_every_provider_error_is_storable_whatever_it_is_given() -> None:
    err = providers.InvalidRequest(HOSTILE * 100, status=400, retry_after=float("inf"))
    assert_error_storable(err)
    assert len(err.message) <= 500
    err.retry_after = 1e300  # the worker and the retry loop set it too
    assert err.retry_after == providers.MAX_RETRY_AFTER
    err.retry_after = float("nan")
    assert err.retry_after is None
    assert providers.clean_text("a\x00b\ud800c\n\td") == "a\\x00b\\ud800c d"


# -------------------------------------------------------------------------- item 11


def peak_memory(call: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """(the exception ``call`` raised, the peak of Python allocations during it)."""
    tracemalloc.start()
    try:
        call()
    except Exception as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


@pytest.mark.parametrize("mode", ["huge", "huge_unsized", "gzip_bomb"])
def test_an_oversized_answer_is_refused_without_reading_it_all(
    srv: FakeEmbeddingServer, make: MakeProvider, mode: str
) -> None:
    srv.configure(huge_body_bytes=64 << 20)  # 64 MiB of valid JSON (gzip_bomb: ~64 KiB sent)
    srv.fail_next(mode)
    p = make()
    assert p.response_limit(1) == providers.MIN_RESPONSE_BYTES  # the floor: 4 MiB
    t0 = time.monotonic()
    exc, peak = peak_memory(lambda: p.embed(["a"]))
    assert isinstance(exc, BadResponse), exc
    assert "larger than the limit" in str(exc)
    assert_error_storable(exc)
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"
    assert time.monotonic() - t0 < 5
    assert p.embed(["after"]).shape == (1, 768)  # the next answer is read as usual


def test_the_cap_grows_with_inputs_and_dimensions(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    p = make()
    per_input = 768 * providers.RESPONSE_BYTES_PER_DIMENSION + providers.RESPONSE_BYTES_PER_INPUT
    assert p.response_limit(1000) == 1000 * per_input
    # A legitimate large answer passes: 300 inputs as JSON floats (~4.5 MB, over the floor).
    texts = [f"text {i}" for i in range(300)]
    out = make(encoding_format="float").embed(texts)
    assert out.shape == (300, 768)
    assert np.array_equal(out[299], srv.vector_for("text 299"))
    # ... and a cap set lower refuses it.
    with pytest.raises(BadResponse, match="larger than the limit of 100000 bytes"):
        make(encoding_format="float", max_response_bytes=100_000).embed(texts)


def test_gzip_answers_are_still_read(srv: FakeEmbeddingServer, make: MakeProvider) -> None:
    srv.configure(gzip=True)
    out = make().embed(["zipped", "answer"])
    assert np.array_equal(out[1], srv.vector_for("answer"))


def test_headers_trickling_in_are_cut_off_at_the_deadline(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    # ~150 bytes of status line and headers, a byte every 50 ms: 7 s without an overall
    # deadline, though no single read waits longer than the 0.5 s timeout.
    srv.configure(trickle_interval_s=0.05)
    srv.fail_next("slow_headers")
    t0 = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        make(timeout=0.5).embed(["a"])
    assert info.value.error_class == "timeout"
    assert time.monotonic() - t0 < 1.5


def test_slow_headers_within_the_deadline_are_fine(
    srv: FakeEmbeddingServer, make: MakeProvider
) -> None:
    srv.configure(trickle_interval_s=0.001)
    srv.fail_next("slow_headers")
    assert make(timeout=5).embed(["a"]).shape == (1, 768)


@pytest.fixture
def tls_srv(tmp_path: Path) -> Iterator[tuple[FakeEmbeddingServer, Path]]:
    """The fake provider over https:// with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with FakeEmbeddingServer(ssl_context=ctx) as server:
        yield server, cert


def test_the_deadline_holds_over_tls_too(
    tls_srv: tuple[FakeEmbeddingServer, Path], make: MakeProvider
) -> None:
    srv, cert = tls_srv

    def verified() -> requests.Session:
        s = _session()
        s.verify = str(cert)
        return s

    p = make(base_url=srv.url, timeout=0.5, session_factory=verified)
    assert srv.url.startswith("https://")
    assert p.embed(["a"]).shape == (1, 768)
    srv.configure(trickle_interval_s=0.05)
    srv.fail_next("slow_headers")
    t0 = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        p.embed(["a"])
    assert info.value.error_class == "timeout"
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize(("jitter", "requests_made"), [(1.0, 1), (0.0, 2)])
def test_total_timeout_bounds_retries_and_waits(
    srv: FakeEmbeddingServer, make: MakeProvider, jitter: float, requests_made: int
) -> None:
    # Attempts of 0.4 s within 0.6 s in all: after the first, a 0.5 s backoff (jitter 1) would
    # end past the total, so none is made; with no backoff (jitter 0) a second attempt gets
    # the 0.2 s that are left, and no more.
    srv.configure(hang_s=5)
    srv.fail_next("timeout", 5)
    t0 = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        make(
            timeout=0.4, total_timeout=0.6, max_retries=4, sleep=time.sleep, rand=lambda: jitter
        ).embed(["a"])
    assert info.value.error_class == "timeout"
    assert time.monotonic() - t0 < 1.0
    assert srv.stats()["requests"] == requests_made


# -------------------------------------------------------------------------- item 13

BAD_URLS = [
    "http://user:s3cret-pass@127.0.0.1:9/v1",
    "https://sk-live-s3cret@api.example/v1",
    "https://api.example/v1?api-key=s3cret-pass",
    "https://api.example/v1?api_key=s3cret-pass",
    "https://api.example/v1?key=s3cret-pass",
    "https://api.example/v1?api-version=1&access_token=s3cret-pass",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_urls_with_credentials_are_refused_and_not_shown(url: str) -> None:
    with pytest.raises(providers.InvalidURL) as info:
        OpenAICompatibleProvider(url, "m", 4)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ModelUnavailable)
    assert "s3cret" not in str(err) and "***" in str(err)
    assert "api_key_env" in str(err)


@pytest.mark.parametrize("url", BAD_URLS)
def test_for_model_refuses_them_as_the_model_url_or_as_an_override(url: str) -> None:
    # The fields for_model reads, as an object (db.Model) and as a row (PL/Python's dict).
    row = {
        "name": "v1",
        "model_id": "m",
        "base_url": "https://api.example/v1",
        "api_key_env": None,
        "dimensions": 4,
        "request_dimensions": False,
    }
    model: Any = SimpleNamespace(**row)
    for build in (
        lambda: providers.for_model(model, base_url=url),
        lambda: providers.for_model({**row, "base_url": url}),
        lambda: providers.for_model(cast(Any, SimpleNamespace(**{**row, "base_url": url}))),
    ):
        with pytest.raises(providers.InvalidURL) as info:
            build()
        assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/v1#/../../admin",
        "http://127.0.0.1:9/v1 /x",
        "http://127.0.0.1:9\\@evil/v1",
        "http:///v1",
        "ftp://127.0.0.1/v1",
        "http://127.0.0.1:99999/v1",
    ],
)
def test_other_url_tricks_are_refused(url: str) -> None:
    with pytest.raises(providers.InvalidURL):
        OpenAICompatibleProvider(url, "m", 4)


def test_a_query_string_cannot_swallow_the_path() -> None:
    assert providers.embeddings_url("http://h:1/v1/kv/x?") == "http://h:1/v1/kv/x/embeddings"
    assert (
        providers.embeddings_url("https://h/openai/deployments/d?api-version=2024-02-01")
        == "https://h/openai/deployments/d/embeddings?api-version=2024-02-01"
    )
    assert providers.embeddings_url("https://h/v1/embeddings/?") == "https://h/v1/embeddings"
    p = OpenAICompatibleProvider("https://h/v1?api-version=1", "m", 4)
    assert p.url == "https://h/v1/embeddings?api-version=1"


def test_url_credentials_never_appear_in_a_message() -> None:
    text = (
        "HTTPSConnectionPool: error at https://bob:hunter2@h/v1/embeddings?api-key=hunter3&x=1 "
        "and http://tok3n@h2/"
    )
    for err in (ProviderError(text), TransientProviderError(text, error_class="connection")):
        for shown in (str(err), repr(err)):
            assert "hunter2" not in shown and "hunter3" not in shown and "tok3n" not in shown
            assert "https://***@h/v1/embeddings?api-key=***&x=1" in shown


def test_a_connection_error_names_the_endpoint_without_secrets(make: MakeProvider) -> None:
    p = make(base_url="http://127.0.0.1:9/v1?api-version=7")
    with pytest.raises(TransientProviderError) as info:
        p.embed(["a"])
    assert info.value.error_class == "connection"
    assert_error_storable(info.value)
