"""The fake provider's capacity mode (a CPU-bound server) and quota mode (RPM/TPM per key and
model), over real HTTP."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pgingest.chunking import ChunkerConfig, chunk_document
from pgingest.testing.fake_provider import (
    FakeEmbeddingServer,
    control,
    count_tokens,
    go_duration,
)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, never through a proxy
    yield session
    session.close()


def post(
    srv: FakeEmbeddingServer | str,
    inputs: list[str],
    *,
    http: requests.Session | None = None,
    model: str = "fake-768",
    key: str | None = None,
    timeout: float = 5.0,
) -> requests.Response:
    """One request; without ``http`` on a connection of its own (closed on a timeout)."""
    url = srv if isinstance(srv, str) else srv.url
    body = {"model": model, "input": inputs, "encoding_format": "base64"}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if http is not None:
        return http.post(url + "/embeddings", json=body, headers=headers, timeout=timeout)
    with requests.Session() as s:
        s.trust_env = False
        return s.post(url + "/embeddings", json=body, headers=headers, timeout=timeout)


def timed(srv: FakeEmbeddingServer, inputs: list[str], out: dict[str, Any], name: str) -> None:
    t0 = time.monotonic()
    try:
        r = post(srv, inputs)
        out[name] = (r.status_code, time.monotonic() - t0, time.monotonic())
    except requests.RequestException as exc:
        out[name] = (exc, time.monotonic() - t0, time.monotonic())


def near(value: float, expected: float, *, below: float = 0.03, above: float = 0.12) -> bool:
    """``value`` is ``expected`` give or take: timings run late on a busy machine, never early."""
    return expected - below <= value <= expected + above


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- capacity mode -----------------------------------------------------------------------------


def test_latency_is_the_work_queued_ahead_plus_its_own() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=100) as srv:
        out: dict[str, Any] = {}
        a = threading.Thread(target=timed, args=(srv, [f"a{i}" for i in range(20)], out, "a"))
        b = threading.Thread(target=timed, args=(srv, [f"b{i}" for i in range(10)], out, "b"))
        a.start()
        time.sleep(0.05)
        b.start()
        a.join()
        b.join()
        assert out["a"][0] == out["b"][0] == 200
        assert near(out["a"][1], 0.20)  # 20 inputs at 100/s
        # b waited for a's remaining 0.15 s, then its own 0.10 s
        assert near(out["b"][1], 0.25, below=0.05)
        assert near(out["b"][2] - out["a"][2], 0.10)
        st = srv.stats()
        assert st["capacity_requests"] == 2 and st["capacity_inputs"] == 30
        assert st["capacity_max_queue_inputs"] == 30
        assert near(st["capacity_max_latency_s"], 0.25, below=0.05)
        assert st["capacity_busy_s"] == pytest.approx(0.30, abs=1e-6)
        assert st["abandoned"] == st["resent"] == 0


def test_one_request_at_a_time_in_arrival_order() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=100) as srv:
        out: dict[str, Any] = {}
        threads = []
        for i in range(4):
            t = threading.Thread(
                target=timed, args=(srv, [f"{i}-{j}" for j in range(8)], out, str(i))
            )
            t.start()
            threads.append(t)
            time.sleep(0.01)
        for t in threads:
            t.join()
        done = [out[str(i)][2] for i in range(4)]
        assert done == sorted(done)  # first come, first served
        # each waits for all those before it: answers 0.08 s apart, the last after 0.32 s
        for first, then in zip(done, done[1:], strict=False):
            assert near(then - first, 0.08)
        assert near(out["3"][2] - out["0"][2] + out["0"][1], 0.32, below=0.05)
        assert srv.stats()["capacity_max_queue_inputs"] >= 24


def test_tokens_per_second_use_the_chunkers_counts() -> None:
    texts = ["The quick brown fox jumps over the lazy dog. " * 10, "short one"]
    tokens = count_tokens(texts)
    with FakeEmbeddingServer(capacity_tokens_per_s=tokens / 0.2) as srv:
        t0 = time.monotonic()
        assert post(srv, texts).status_code == 200
        assert near(time.monotonic() - t0, 0.2)
        # both rates: the two times add up
        srv.configure(capacity_inputs_per_s=20)  # 2 inputs: 0.1 s more
        t0 = time.monotonic()
        assert post(srv, texts).status_code == 200
        assert near(time.monotonic() - t0, 0.3)


def test_answer_abandoned_by_a_client_that_timed_out() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=10) as srv:
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(srv, [f"x{i}" for i in range(4)], timeout=0.1)  # 0.4 s of work
        wait_for(lambda: srv.stats()["abandoned"] == 1)
        st = srv.stats()
        assert st["capacity_requests"] == 1  # it was computed all the same, as a CPU server does
        assert st["abandoned_queued"] == 0
        # an answer that was waited for is not abandoned
        assert post(srv, ["y"]).status_code == 200
        assert srv.stats()["abandoned"] == 1


def test_queued_request_of_a_client_that_went_away_is_dropped() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=10) as srv:
        out: dict[str, Any] = {}
        a = threading.Thread(target=timed, args=(srv, [f"a{i}" for i in range(5)], out, "a"))
        a.start()
        time.sleep(0.05)
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(srv, ["b0", "b1"], timeout=0.1)  # queued behind 0.5 s of work
        a.join()
        assert out["a"][0] == 200
        wait_for(lambda: srv.stats()["abandoned_queued"] == 1)
        st = srv.stats()
        assert st["capacity_requests"] == 1 and st["capacity_inputs"] == 5  # b never computed
        assert st["abandoned"] == 0
        # the server is free again at once: b's 0.2 s of work was never spent
        t0 = time.monotonic()
        assert post(srv, ["c"]).status_code == 200
        assert time.monotonic() - t0 < 0.15


def test_resent_counts_inputs_still_queued_or_computing() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=20) as srv:
        out: dict[str, Any] = {}
        a = threading.Thread(target=timed, args=(srv, ["x", "y", "w", "v"], out, "a"))
        a.start()
        time.sleep(0.05)  # a is being computed (0.2 s)
        b = threading.Thread(target=timed, args=(srv, ["y", "z"], out, "b"))
        b.start()
        time.sleep(0.05)  # b is queued
        c = threading.Thread(target=timed, args=(srv, ["z", "q"], out, "c"))
        c.start()
        for t in (a, b, c):
            t.join()
        assert {out[k][0] for k in "abc"} == {200}
        st = srv.stats()
        assert st["resent"] == 2 and st["resent_requests"] == 2
        assert st["resent_inputs"] == ["fake-768: y", "fake-768: z"]
        # once answered, the same input again is new work, not a resend; another model is too
        assert post(srv, ["y"]).status_code == 200
        assert srv.stats()["resent"] == 2


def test_queue_limit_answers_overloaded() -> None:
    with FakeEmbeddingServer(capacity_inputs_per_s=20, capacity_queue_limit_inputs=10) as srv:
        out: dict[str, Any] = {}
        a = threading.Thread(target=timed, args=(srv, [f"a{i}" for i in range(8)], out, "a"))
        a.start()
        time.sleep(0.05)
        r = post(srv, [f"b{i}" for i in range(5)])
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "overloaded"
        assert post(srv, ["c0", "c1"]).status_code == 200  # 8 + 2 fit
        a.join()
        st = srv.stats()
        assert st["capacity_overloaded"] == 1 and st["capacity_requests"] == 2


def test_capacity_set_over_control(http: requests.Session) -> None:
    with FakeEmbeddingServer() as srv:
        t0 = time.monotonic()
        assert post(srv, ["a", "b"], http=http).status_code == 200
        assert time.monotonic() - t0 < 0.15
        snap = control(srv.url, {"capacity_inputs_per_s": 5})
        assert snap["behaviour"]["capacity_inputs_per_s"] == 5
        t0 = time.monotonic()
        assert post(srv, ["a", "b"], http=http).status_code == 200
        assert near(time.monotonic() - t0, 0.4)
        assert control(srv.url)["stats"]["capacity_inputs"] == 2
        with pytest.raises(ValueError):
            srv.configure(capacity_inputs_per_s=-1)


# -- quota mode --------------------------------------------------------------------------------

KEY_A = "sk-test-key-aaaaaaaaaaaa-1111"
KEY_B = "sk-test-key-bbbbbbbbbbbb-2222"
RATELIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


def test_go_durations() -> None:
    assert go_duration(0) == "0s"
    assert go_duration(0.02) == "20ms"
    assert go_duration(0.0004) == "1ms"
    assert go_duration(1) == "1s"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(17.28) == "17.28s"
    assert go_duration(360) == "6m0s"
    assert go_duration(90.25) == "1m30.25s"
    assert go_duration(3723.004) == "1h2m3.004s"


def test_requests_per_minute(http: requests.Session) -> None:
    with FakeEmbeddingServer(quota={"rpm": 3, "tpm": 100_000}) as srv:
        seen = []
        for _ in range(3):
            r = post(srv, ["hello world"], http=http, key=KEY_A)
            assert r.status_code == 200
            assert all(h in r.headers for h in RATELIMIT_HEADERS)
            seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert seen == [2, 1, 0]
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        assert r.headers["x-ratelimit-limit-tokens"] == "100000"
        # full again after 3 requests' worth of refill at 3/min: about a minute
        assert r.headers["x-ratelimit-reset-requests"].startswith("59.")
        r = post(srv, ["hello world"], http=http, key=KEY_A)
        assert r.status_code == 429
        assert all(h in r.headers for h in RATELIMIT_HEADERS)
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["Retry-After"] == "20"  # one request refills in 60/3 s
        assert 19_000 < int(r.headers["retry-after-ms"]) <= 20_000
        err = r.json()["error"]
        assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
        assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in err["message"]
        st = srv.stats()
        assert st["quota_accepted_requests"] == 3
        assert st["quota_rejected"] == {"requests": 1, "tokens": 0}
        (label,) = st["quota_by_key_model"]
        assert label.endswith("1111 fake-768") and KEY_A not in label  # the key is masked
        assert st["quota_by_key_model"][label]["rejected_requests"] == 1


def test_tokens_per_minute_refill_continuously(http: requests.Session) -> None:
    tpm = 6000  # 100 tokens a second
    big = ["lorem ipsum dolor sit amet " * 40] * 16
    t_big = count_tokens(big)
    assert 5000 < t_big < tpm
    small = ["consectetur adipiscing elit " * 30]
    with FakeEmbeddingServer(quota={"tpm": tpm}) as srv:
        r = post(srv, big, http=http, key=KEY_A)
        assert r.status_code == 200
        assert r.json()["usage"]["prompt_tokens"] == t_big  # charged what was counted
        left = int(r.headers["x-ratelimit-remaining-tokens"])
        assert left == tpm - t_big
        assert "x-ratelimit-limit-requests" not in r.headers  # no RPM limit set
        t_small = count_tokens(small)
        n = 0
        while True:  # spend the rest
            r = post(srv, small, http=http, key=KEY_A)
            if r.status_code == 429:
                break
            n += 1
            now_left = int(r.headers["x-ratelimit-remaining-tokens"])
            assert left - t_small <= now_left <= left - t_small + 5  # decrements (+ refill)
            left = now_left
        err = r.json()["error"]
        assert err["type"] == "tokens" and err["code"] == "rate_limit_exceeded"
        assert f"on tokens per min (TPM): Limit {tpm}, Used " in err["message"]
        assert f"Requested {t_small}." in err["message"]
        rem = int(r.headers["x-ratelimit-remaining-tokens"])
        wait_ms = int(r.headers["retry-after-ms"])
        assert wait_ms == pytest.approx((t_small - rem) * 10, abs=15)  # 10 ms a token
        assert r.headers["Retry-After"] == str(math.ceil(wait_ms / 1000))
        # not yet; then, after Retry-After-ms, enough budget again
        assert post(srv, small, http=http, key=KEY_A).status_code == 429
        time.sleep(wait_ms / 1000 + 0.05)
        assert post(srv, small, http=http, key=KEY_A).status_code == 200
        st = srv.stats()
        assert st["quota_rejected"] == {"requests": 0, "tokens": 2}
        assert st["quota_accepted_tokens"] == t_big + (n + 1) * t_small


def test_request_larger_than_the_tpm_limit(http: requests.Session) -> None:
    with FakeEmbeddingServer(quota={"tpm": 10}) as srv:
        r = post(srv, ["a sentence with more than ten tokens in it, surely, yes"], http=http)
        assert r.status_code == 429
        assert "Request too large for fake-768" in r.json()["error"]["message"]
        assert "Retry-After" not in r.headers  # waiting will not help


def test_limits_per_key_and_model(http: requests.Session) -> None:
    quota = {"rpm": 1, "models": {"fake-384": {"rpm": 2}}}
    with FakeEmbeddingServer(quota=quota) as srv:
        assert post(srv, ["x"], http=http, key=KEY_A).status_code == 200
        assert post(srv, ["x"], http=http, key=KEY_A).status_code == 429
        assert post(srv, ["x"], http=http, key=KEY_B).status_code == 200  # another key
        assert post(srv, ["x"], http=http).status_code == 200  # no key: a bucket of its own
        for status in (200, 200, 429):  # another model, its own limit
            assert post(srv, ["x"], http=http, key=KEY_A, model="fake-384").status_code == status
        by = srv.stats()["quota_by_key_model"]
        a768 = next(v for k, v in by.items() if k.endswith("1111 fake-768"))
        a384 = next(v for k, v in by.items() if k.endswith("1111 fake-384"))
        assert (a768["accepted_requests"], a768["rejected_requests"]) == (1, 1)
        assert (a384["accepted_requests"], a384["rejected_requests"]) == (2, 1)
        # reset_quota refills every bucket
        control(srv.url, {"reset_quota": True})
        assert post(srv, ["x"], http=http, key=KEY_A).status_code == 200


def test_token_count_agrees_with_the_chunker(http: requests.Session) -> None:
    body = "\n\n".join(
        f"Paragraph {i}: the pipeline chunks documents, counts tokens and embeds them." * 3
        for i in range(12)
    )
    chunks = chunk_document("A title", body, ChunkerConfig())
    assert len(chunks) > 1
    with FakeEmbeddingServer(quota={"tpm": 100_000}) as srv:
        r = post(srv, [c.embed_input for c in chunks], http=http)
        assert r.status_code == 200
        expected = sum(c.token_count for c in chunks)
        assert r.json()["usage"]["prompt_tokens"] == expected
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100_000 - expected


def test_quota_over_control_and_validation(http: requests.Session) -> None:
    with FakeEmbeddingServer() as srv:
        r = post(srv, ["x"], http=http)
        assert "x-ratelimit-limit-requests" not in r.headers  # off by default
        control(srv.url, {"quota": {"rpm": 1}})
        assert post(srv, ["x"], http=http).status_code == 200
        assert post(srv, ["x"], http=http).status_code == 429
        control(srv.url, {"quota": None})
        assert post(srv, ["x"], http=http).status_code == 200
        for bad in ({"rpm": 0}, {"rpm": "ten"}, {"rps": 3}, {"models": {"m": 3}}):
            resp = http.post(srv.control_url, json={"quota": bad}, timeout=5)
            assert resp.status_code == 400, bad


def test_command_line_flags(http: requests.Session) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.testing.fake_provider",
            "--capacity-inputs-per-s",
            "20",
            "--quota-rpm",
            "2",
            "--quota-tpm",
            "1000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert post(url, ["warm-up"], http=http, key=KEY_B).status_code == 200  # another key
        t0 = time.monotonic()
        r = post(url, ["a", "b"], http=http, key=KEY_A)
        assert r.status_code == 200
        assert near(time.monotonic() - t0, 0.1)  # 2 inputs at 20/s
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert post(url, ["c"], http=http, key=KEY_A).status_code == 200
        assert post(url, ["d"], http=http, key=KEY_A).status_code == 429
        stats = control(url)["stats"]
        assert stats["capacity_inputs"] == 4 and stats["quota_rejected"]["requests"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
