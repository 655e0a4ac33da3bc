"""The fetch policy hardened after the review of 2026-12-07 (issue 22): error classes and checks
made before any connection. Real servers: tests/test_raw_fetch_hardening.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import ParamValidationError

from pgingest.raw import fetch

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def test_boto_param_validation_is_a_permanent_bad_uri_without_its_message() -> None:
    exc = ParamValidationError(report=f"Invalid bucket name 'AKIA:{SECRET}@docs'")
    err = fetch.classify_s3_error(exc, "docs")
    assert (err.error_class, err.permanent, err.scope) == ("bad_uri", True, "object")
    assert SECRET not in str(err)


@pytest.mark.parametrize("name", ["docs", "my.bucket-1", "Legacy_Bucket"])
def test_bucket_names_boto_accepts_are_accepted(name: str) -> None:
    assert fetch.parse_s3_uri(f"s3://{name}/k") == (name, "k")


def test_plan_sync_requeues_a_failed_object_only_when_its_validators_differ() -> None:
    from pgingest.raw.queries import RecordedObject
    from pgingest.sources_cli import plan_sync

    listed = [fetch.ObjectInfo("s3://b/a", 1, etag='"e2"'), fetch.ObjectInfo("s3://b/c", 1)]
    recorded = {
        "s3://b/a": RecordedObject({"uri": "s3://b/a"}, None, None, None, failed=True),
        "s3://b/c": RecordedObject({"uri": "s3://b/c"}, None, None, None, failed=False),
    }
    plan = plan_sync(listed, recorded, "s3://b/")
    assert (plan.changed, plan.unchanged) == ([{"uri": "s3://b/a"}], 1)  # c: not fetched yet
    # failed after a success whose ETag is still the object's: nothing new to fetch
    recorded["s3://b/a"] = RecordedObject({"uri": "s3://b/a"}, '"e2"', b"h", None, failed=True)
    assert plan_sync(listed, recorded, "s3://b/").changed == []


@pytest.mark.parametrize(
    "address",
    [
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "::ffff:0:7f00:1",  # SIIT
        "64:ff9b::7f00:1",  # NAT64 well-known prefix
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::5db8:d822",  # NAT64 local-use prefix
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "fec0::1",  # site-local
        "::",
        "::1",
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(address: str) -> None:
    assert not fetch.FetchPolicy().address_allowed(address)


@pytest.mark.parametrize("address", ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1"])
def test_ipv6_forms_of_public_addresses_are_allowed(address: str) -> None:
    assert fetch.FetchPolicy().address_allowed(address)


def test_an_allow_listed_ipv4_network_covers_its_ipv6_forms() -> None:
    import ipaddress

    policy = fetch.FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    assert policy.address_allowed("::ffff:127.0.0.1") and policy.address_allowed("::7f00:1")
    assert not policy.address_allowed("::7f00:2")


def test_slow_name_lookups_do_not_starve_the_others() -> None:
    """Review bug 13: look-ups ran on a pool of 4 threads and a timed-out one kept its thread:
    four names whose server never answers stopped every other look-up."""
    import threading
    import time

    from pgingest.raw.errors import RawDocumentError

    release = threading.Event()
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        if host.startswith("slow"):
            release.wait(30)  # a server that never answers (getaddrinfo's own retries)
        return ["93.184.216.34"]

    policy = fetch.FetchPolicy(
        allowed_hosts=frozenset({".example.com"}), resolver=resolver, connect_timeout=1.0
    )
    results: list[str] = []

    def go(host: str) -> None:
        try:
            fetch.check_http_uri(f"https://{host}/x", policy)
            results.append("resolved")
        except RawDocumentError as exc:
            results.append(exc.error_class)

    try:
        threads = [
            threading.Thread(target=go, args=(f"slow{i % 8}.example.com",), daemon=True)
            for i in range(40)
        ]
        for t in threads:
            t.start()
        time.sleep(0.2)
        started = time.monotonic()
        go("fast.example.com")
        assert results[-1:] == ["resolved"] and time.monotonic() - started < 0.5
        for t in threads:
            t.join(5)
        assert sorted(set(results)) == ["fetch_timeout", "resolved"]
        assert results.count("fetch_timeout") == 40  # each waited its connect_timeout
        assert sum(h.startswith("slow") for h in calls) == 8  # one look-up a name
        # still pending (the 8 threads hung): another name resolves at once
        started = time.monotonic()
        go("fast2.example.com")
        assert results[-1] == "resolved" and time.monotonic() - started < 0.5
        # the pending look-ups are bounded: past the cap, a new name fails at once
        hung = [
            threading.Thread(target=go, args=(f"slowmore{i}.example.com",), daemon=True)
            for i in range(fetch._DNS_MAX_PENDING)
        ]
        for t in hung:
            t.start()
        time.sleep(0.2)
        started = time.monotonic()
        go("slowest.example.com")
        assert results[-1] == "fetch_timeout" and time.monotonic() - started < 0.5
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while fetch._dns_pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not fetch._dns_pending
    go("fast3.example.com")
    assert results[-1] == "resolved"
