"""Regression tests of the provider client review (findings 1, 4, 5 and 7): the circuit
breaker's half-open trial slot, redaction of a key in a cut error body, deeply nested JSON in a
provider's answer, and a 5xx's Retry-After in the worker's deferral. No database; the provider
is called over real HTTP (a small local server)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pgingest import providers
from pgingest.providers import (
    MAX_RETRY_AFTER,
    AuthError,
    BadResponse,
    CircuitBreaker,
    OpenAICompatibleProvider,
    TransientProviderError,
)
from pgingest.worker.batch import Batch, Job, classify, settle

# --------------------------------------------------------------------------- a local server


class Answer:
    """What the server answers next: status, headers and body (the same to every request)."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body = b"{}"
        self.content_type = "application/json"
        self.requests = 0


@pytest.fixture
def server() -> Iterator[tuple[str, Answer]]:
    answer = Answer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer.requests += 1
            self.send_response(answer.status)
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1", answer
    finally:
        srv.shutdown()
        srv.server_close()


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def provider(url: str, **kw: Any) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        url, "m", 4, max_retries=0, session_factory=_session, sleep=lambda s: None, **kw
    )


# --------------------------------------------------------------------------- finding 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_half_open_trial_that_reports_nothing_lapses() -> None:
    """The trial slot taken by a pass that then sent nothing (no record_success/failure) is
    free again after reset_timeout: the breaker never stays half-open for good."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, reset_timeout=5, clock=clock)
    cb.record_failure()
    clock.now += 5
    assert cb.allow()  # the trial: taken, and then nothing is sent or recorded
    assert not cb.allow()  # while it may still be in flight, no second trial
    assert cb.retry_in() == 5
    clock.now += 4.9
    assert not cb.allow()
    assert cb.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert cb.state == "half_open"
    assert cb.allow()  # lapsed: a new trial
    assert not cb.allow()
    cb.record_success()
    assert cb.state == "closed" and cb.allow()


def test_a_trial_that_reports_still_decides() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, reset_timeout=5, half_open_max_calls=2, clock=clock)
    cb.record_failure()
    clock.now += 5
    assert cb.allow() and cb.allow() and not cb.allow()
    clock.now += 6  # both lapsed, then one fails late: open again for a full reset_timeout
    cb.record_failure()
    assert cb.state == "open" and cb.retry_in() == 5 and not cb.allow()


# --------------------------------------------------------------------------- finding 4

LONG_KEY = "sk-proj-" + "".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(3))[:152]
assert len(LONG_KEY) == 160


def _key_parts(text: str, key: str, n: int = 12) -> list[str]:
    """Every piece of ``key`` of ``n`` characters found in ``text``."""
    return [key[i : i + n] for i in range(len(key) - n + 1) if key[i : i + n] in text]


def test_a_key_echoed_across_the_cut_of_an_html_error_page_is_redacted(
    server: tuple[str, Answer],
) -> None:
    url, answer = server
    answer.status = 401
    answer.content_type = "text/html"
    answer.body = (
        b"<html><head><title>401 Authorization Required</title></head><body>"
        b"<p>invalid api key: " + LONG_KEY.encode() + b"</p></body></html>"
    )
    assert answer.body.index(LONG_KEY.encode()) < 200 < answer.body.index(LONG_KEY.encode()) + 160
    with pytest.raises(AuthError) as info:
        provider(url, api_key=LONG_KEY).embed(["a"])
    text = str(info.value)
    assert "invalid api key: ***" in text
    assert _key_parts(text, LONG_KEY) == []


def test_a_cut_key_in_a_json_error_is_redacted(server: tuple[str, Answer]) -> None:
    """A server or proxy that echoes only the start or the end of the key (cut by itself), in
    the message, the code or the param: none of it is kept."""
    url, answer = server
    answer.status = 401
    answer.body = (
        b'{"error": {"message": "bad key '
        + LONG_KEY[:100].encode()
        + b"... and ..."
        + LONG_KEY[-30:].encode()
        + b'", "code": "'
        + LONG_KEY[:40].encode()
        + b'", "param": "'
        + LONG_KEY[-40:].encode()
        + b'"}}'
    )
    with pytest.raises(AuthError) as info:
        provider(url, api_key=LONG_KEY).embed(["a"])
    assert _key_parts(str(info.value), LONG_KEY) == []
    p = provider(url, api_key=LONG_KEY)
    message, code, param = p._error_info(answer.body)
    for text in (message, code or "", param or ""):
        assert _key_parts(text, LONG_KEY) == [], text
    assert message == "bad key ***... and ...***"


# --------------------------------------------------------------------------- finding 5

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_ERROR = b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_json_nested_too_deeply_is_invalid_json() -> None:
    with pytest.raises(ValueError):
        providers._json_loads(DEEP)


@pytest.mark.parametrize("body", [DEEP, DEEP_ERROR])
@pytest.mark.parametrize(
    ("status", "expected", "error_class"),
    [
        (200, BadResponse, "bad_response"),
        (500, TransientProviderError, "server_error"),
        (401, AuthError, "auth"),
    ],
)
def test_a_deeply_nested_answer_is_a_classified_provider_error(
    server: tuple[str, Answer], body: bytes, status: int, expected: type, error_class: str
) -> None:
    url, answer = server
    answer.status, answer.body = status, body
    with pytest.raises(providers.ProviderError) as info:
        provider(url).embed(["a"])
    assert type(info.value) is expected and info.value.error_class == error_class
    if status == 401:
        assert classify(info.value).kind == "auth"  # the worker pauses the model


def test_a_deeply_nested_batch_api_answer_is_a_bad_response(server: tuple[str, Answer]) -> None:
    url, answer = server
    answer.body = DEEP
    with pytest.raises(BadResponse):
        provider(url).upload_batch_file(b"{}\n")


# --------------------------------------------------------------------------- finding 7


def _job(doc_id: int, attempts: int = 0) -> Job:
    return Job(
        msg_ids=[doc_id * 10],
        doc_id=doc_id,
        doc_key=f"key-{doc_id}",
        content_hash=bytes([doc_id]) * 32,
        attempts_before=attempts,
        message={"doc_id": doc_id, "attempts": attempts},
    )


def test_a_5xx_retry_after_sets_the_least_deferral() -> None:
    down = TransientProviderError(
        "down for maintenance", status=503, error_class="server_error", retry_after=600
    )
    failure = classify(down)
    assert failure.kind == "transient" and failure.retry_after == 600
    b = Batch(jobs={1: _job(1), 2: _job(2, attempts=1)})
    b.jobs[1].fail(failure)
    b.jobs[2].fail(classify(TransientProviderError("502", status=502)))
    plan = settle(b, 5, lambda attempts: 2)
    assert plan.transient is not None
    assert plan.transient.delay == 600  # not the backoff's 2 s
    assert [m["attempts"] for m in plan.transient.messages] == [1, 2]  # an attempt spent
    # a longer backoff wins; without a Retry-After, the backoff as before
    assert settle(b, 5, lambda attempts: 900).transient.delay == 900  # type: ignore[union-attr]
    b.jobs[1].failure = None
    b.jobs[1].fail(classify(TransientProviderError("503", status=503)))
    assert settle(b, 5, lambda attempts: 2).transient.delay == 2  # type: ignore[union-attr]


def test_a_5xx_retry_after_is_capped(server: tuple[str, Answer]) -> None:
    url, answer = server
    answer.status = 503
    answer.headers = {"Retry-After": "31536000"}
    answer.body = b'{"error": {"message": "down"}}'
    with pytest.raises(TransientProviderError) as info:
        provider(url).embed(["a"])
    b = Batch(jobs={1: _job(1)})
    b.jobs[1].fail(classify(info.value))
    plan = settle(b, 5, lambda attempts: 2)
    assert plan.transient is not None and plan.transient.delay == int(MAX_RETRY_AFTER)
    answer.headers = {"Retry-After": "1.2"}
    with pytest.raises(TransientProviderError) as info:
        provider(url).embed(["a"])
    b = Batch(jobs={1: _job(1)})
    b.jobs[1].fail(classify(info.value))
    assert settle(b, 5, lambda attempts: 1).transient.delay == 2  # type: ignore[union-attr]
