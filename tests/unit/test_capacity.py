"""The concurrency limit and the batch cap against simulated servers (worker/capacity.py)."""

from __future__ import annotations

import heapq
import math

import pytest

from pgingest.worker.batch import BatchSizer
from pgingest.worker.capacity import ConcurrencyLimit


def simulate(
    lim: ConcurrencyLimit,
    *,
    serial: bool,
    seconds_per_token: float,
    requests: int = 300,
    tokens: int = 4000,
    overhead: float = 0.0,
) -> dict[str, float]:
    """Sends ``requests`` requests of ``tokens`` tokens through ``lim`` to a simulated server:
    ``serial``: it computes one request at a time (a CPU server), else each request takes the
    same time whatever else is in flight (a hosted API). Returns what the client saw."""
    now = 0.0
    server_free = 0.0  # serial: when the server finishes what it holds
    busy = 0.0
    events: list[tuple[float, int, float, bool]] = []  # (done at, id, sent at, alone)
    sent = done = timeouts = 0
    peak = 0
    limits: list[int] = []
    while done < requests:
        while sent < requests and len(events) < lim.allowed:
            work = overhead + tokens * seconds_per_token
            timeout = lim.timeout_for(tokens, tokens * len(events))
            if serial:
                start = max(now, server_free)
                server_free = start + work
                finish = server_free
            else:
                finish = now + work
            busy += work
            if finish - now > timeout:
                timeouts += 1
            heapq.heappush(events, (finish, sent, now, not events))
            sent += 1
            peak = max(peak, len(events))
        finish, _, started, alone = heapq.heappop(events)
        now = finish
        lim.sample(tokens, finish - started, alone=alone)
        limits.append(lim.allowed)
        done += 1
    return {
        "elapsed": now,
        "utilisation": busy / now if serial else math.nan,
        "timeouts": timeouts,
        "peak": peak,
        "final": limits[-1],
        "late_max": max(limits[len(limits) // 2 :]),
        "late_min": min(limits[len(limits) // 2 :]),
    }


def test_a_serial_server_settles_at_one_computing_and_one_waiting() -> None:
    """A CPU server (5,000 tokens/s, one request at a time, 0.8 s per request): the limit stays
    at 2 (never the 8 allowed), the server never idles, and no request outlasts its timeout
    (the floor, 2 s, is what the two first requests take; the default is 30 s)."""
    lim = ConcurrencyLimit(max_limit=8, floor_timeout=2.0)
    out = simulate(lim, serial=True, seconds_per_token=1 / 5000)
    assert out["late_max"] <= 3 and out["late_min"] >= 1
    assert out["utilisation"] > 0.99
    assert out["timeouts"] == 0


def test_a_parallel_server_gets_every_request_allowed() -> None:
    """A hosted API (latency flat whatever is in flight, 0.8 s or 2.4 s per request): the limit
    climbs to the maximum and stays there (a probe, if any, costs little)."""
    for per_token in (1 / 5000, 3 / 5000):
        lim = ConcurrencyLimit(max_limit=8)
        out = simulate(lim, serial=False, seconds_per_token=per_token, requests=2000)
        assert out["final"] == 8
        ideal = 2000 / 8 * 4000 * per_token
        assert out["elapsed"] < 1.1 * ideal


def test_latency_rising_backs_off_and_falling_grows_back() -> None:
    lim = ConcurrencyLimit(max_limit=8, limit=8.0)
    for _ in range(5):
        lim.sample(1000, 2.0, alone=True)  # baseline: 2 ms per token
    assert lim.allowed == 8
    for _ in range(20):
        lim.sample(1000, 8.0)  # four times slower: queueing
    assert lim.allowed <= 3
    low = lim.allowed
    for _ in range(40):
        lim.sample(1000, 2.0)  # flat again
    assert lim.allowed > low
    assert lim.allowed == 8


def test_fast_answers_never_read_as_congestion() -> None:
    """A hosted API's small tail requests have a high latency per token, all overhead: under
    ``fast_seconds`` that does not shrink the limit; and a new limit climbs one per answer."""
    lim = ConcurrencyLimit(max_limit=8, limit=8.0)
    lim.sample(10_000, 0.3, alone=True)
    for _ in range(30):
        lim.sample(100, 0.2)  # 66x the per-token latency, but 0.2 s
    assert lim.allowed == 8
    new = ConcurrencyLimit(max_limit=8)
    assert new.allowed == 2
    for n in (3, 4, 5):
        new.sample(1000, 0.05)
        assert new.allowed == n


def test_a_timeout_halves_the_limit_at_once() -> None:
    lim = ConcurrencyLimit(max_limit=8, limit=8.0)
    lim.timed_out()
    assert lim.allowed == 4
    lim.timed_out()
    lim.timed_out()
    lim.timed_out()
    assert lim.allowed == 1
    assert lim.timeouts == 4


def test_the_timeout_follows_the_observed_latency() -> None:
    lim = ConcurrencyLimit(max_limit=4, floor_timeout=30.0, ceiling_timeout=600.0, safety=3.0)
    assert lim.timeout_for(40_000) == 30.0  # nothing observed: the floor
    lim.sample(1000, 0.2, alone=True)  # 0.2 ms per token
    assert lim.timeout_for(1000) == 30.0  # 0.6 s expected: the floor
    # 40,000 tokens with 120,000 of ours ahead at 0.2 ms/token: 32 s expected, 96 s given
    assert lim.timeout_for(40_000, 120_000) == pytest.approx(96.0)
    assert lim.timeout_for(10_000_000) == 600.0  # the ceiling


def test_a_probe_sends_one_request_alone_after_a_long_run_under_load() -> None:
    """Ten rounds (of 8) of slow answers under load, none alone: the next request goes alone."""
    lim = ConcurrencyLimit(max_limit=8, limit=8.0, probe_every=10)
    lim.sample(1000, 2.0, alone=True)
    for _ in range(79):
        lim.sample(1000, 2.0)
    assert not lim.probing and lim.allowed == 8
    lim.sample(1000, 2.0)
    assert lim.probing and lim.allowed == 1
    lim.sample(1000, 2.0, alone=True)
    assert not lim.probing and lim.allowed == 8
    for _ in range(500):
        lim.sample(1000, 0.5)  # fast answers never call for a probe
    assert not lim.probing


def test_the_baseline_is_measured_alone() -> None:
    """Answers under load do not lower the baseline below what a request alone takes...
    unless none went alone yet."""
    lim = ConcurrencyLimit(max_limit=8)
    lim.sample(1000, 4.0)
    assert lim.baseline == pytest.approx(0.004)
    lim.sample(1000, 2.0, alone=True)
    lim.sample(1000, 1.0)  # under load, but faster: not the baseline (server noise)
    assert lim.baseline == pytest.approx(0.002)


def test_batches_fit_the_embedding_window() -> None:
    """At 0.5 s per message, a 40 s window fits 80 messages: a sizer at 256 drops to 80 and
    write-backs cannot grow it past that."""
    z = BatchSizer(256, 4, 512, 0.5, embed_window=40.0)
    assert z.cap == 512
    assert z.embedded(128.0, 256) == 80
    for _ in range(10):
        z.observe(0.01, z.size)
    assert z.size == 80
    for _ in range(10):  # the provider got fast: the cap rises, the AIMD grows again
        z.embedded(0.1, z.size)
    for _ in range(20):
        z.observe(0.01, z.size)
    assert z.size == 512


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimit(max_limit=0)
    with pytest.raises(ValueError):
        ConcurrencyLimit(max_limit=2, floor_timeout=10, ceiling_timeout=5)


# -- the x-ratelimit-* headers (providers.parse_rate_limits) ------------------------------------


def test_go_durations_as_openai_writes_them() -> None:
    from pgingest.providers import parse_duration

    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1s") == 1.0
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1h2m3.004s") == pytest.approx(3723.004)
    assert parse_duration("7") == 7.0
    for bad in (None, "", "soon", "5 minutes", "-1s", "1x", "nan"):
        assert parse_duration(bad) is None, bad


def test_rate_limit_headers() -> None:
    from pgingest.providers import RateLimits, parse_rate_limits

    headers = {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-remaining-tokens": "999000",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_rate_limits(headers) == RateLimits(3000, 1_000_000, 2999, 999_000, 0.02, 360.0)
    assert not parse_rate_limits({})
    partial = parse_rate_limits(
        {"x-ratelimit-limit-tokens": "oops", "x-ratelimit-remaining-tokens": "5"}
    )
    assert partial == RateLimits(remaining_tokens=5.0) and partial
