"""The fetch policy alone: allow-lists, address classes, URI checks (made before any connection),
backoff and Retry-After, S3 error classes. Real servers: tests/test_raw_fetch.py."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, NoCredentialsError, ReadTimeoutError

from pgingest.raw import fetch
from pgingest.raw.errors import RawDocumentError


def _policy(**kw: object) -> fetch.FetchPolicy:
    base: dict[str, object] = {
        "allowed_hosts": frozenset({"docs.example.com", ".cdn.example.net"}),
        "resolver": lambda host, port: ["93.184.216.34"],
    }
    base.update(kw)
    return fetch.FetchPolicy(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not _policy().address_allowed(address)


def test_public_addresses_and_explicit_networks() -> None:
    assert _policy().address_allowed("93.184.216.34")
    assert _policy().address_allowed("2606:4700::1111")
    opened = _policy(allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert opened.address_allowed("10.9.9.9")
    assert not opened.address_allowed("169.254.169.254")


def test_host_allow_list() -> None:
    p = _policy()
    assert p.host_allowed("docs.example.com")
    assert p.host_allowed("DOCS.example.com.")
    assert p.host_allowed("a.cdn.example.net")
    assert not p.host_allowed("cdn.example.net.evil.com")
    assert not p.host_allowed("example.com")


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://evil.example.org/x.pdf", "not allow-listed"),
        ("http://docs.example.com/x.pdf", "plain http"),
        ("https://user:pw@docs.example.com/x.pdf", "credentials"),
        ("ftp://docs.example.com/x", "scheme"),
        ("gopher://docs.example.com/x", "scheme"),
    ],
)
def test_refused_uris_resolve_nothing(uri: str, why: str) -> None:
    calls: list[str] = []
    p = _policy(resolver=lambda host, port: calls.append(host) or ["93.184.216.34"])
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(uri, p)
    assert err.value.error_class == "not_allowed" and err.value.permanent
    assert why in str(err.value)
    assert calls == []


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    # the allow-listed name points at the metadata service: refused, whatever the name
    p = _policy(resolver=lambda host, port: ["93.184.216.34", "169.254.169.254"])
    with pytest.raises(RawDocumentError, match="non-public") as err:
        fetch.check_http_uri("https://docs.example.com/x", p)
    assert err.value.error_class == "not_allowed"


def test_the_checked_address_is_the_one_connected_to() -> None:
    answers = iter([["93.184.216.34"], ["10.0.0.1"]])  # a rebinding resolver
    p = _policy(resolver=lambda host, port: next(answers))
    target = fetch.check_http_uri("https://docs.example.com:8443/a/b.pdf?v=1", p)
    assert (target.host, target.port, target.address, target.path) == (
        "docs.example.com",
        8443,
        "93.184.216.34",
        "/a/b.pdf?v=1",
    )


def test_file_uris_stay_under_the_roots(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    p = fetch.FetchPolicy(allowed_roots=(root,), max_bytes=10)
    got = fetch.fetch((root / "ok.txt").as_uri(), p)
    assert got.data == b"fine" and got.last_modified
    for uri in [
        (tmp_path / "secret.txt").as_uri(),
        (root / "link.txt").as_uri(),
        f"file://{root}/../secret.txt",
        "file:///etc/passwd",
    ]:
        with pytest.raises(RawDocumentError) as err:
            fetch.fetch(uri, p)
        assert err.value.error_class == "not_allowed", uri
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch((root / "missing.txt").as_uri(), p)
    assert err.value.error_class == "not_found"
    (root / "big.txt").write_bytes(b"x" * 11)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch((root / "big.txt").as_uri(), p)
    assert err.value.error_class == "too_large"
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("file://otherhost/etc/passwd", p)
    assert err.value.error_class == "bad_uri"


def test_nothing_is_allowed_by_default() -> None:
    p = fetch.FetchPolicy.from_env({})
    for uri in ["file:///tmp/x", "https://example.com/x", "s3://bucket/key"]:
        with pytest.raises(RawDocumentError) as err:
            fetch.fetch(uri, p)
        assert err.value.error_class == "not_allowed", uri


def test_policy_from_env() -> None:
    p = fetch.FetchPolicy.from_env(
        {
            "PGINGEST_RAW_ROOTS": "/srv/docs:/mnt/share",
            "PGINGEST_RAW_HOSTS": "Docs.Example.com, .cdn.example.net",
            "PGINGEST_RAW_NETWORKS": "10.0.0.0/8",
            "PGINGEST_RAW_BUCKETS": "reports",
            "PGINGEST_RAW_MAX_BYTES": "1000",
        }
    )
    assert p.allowed_roots == (Path("/srv/docs"), Path("/mnt/share"))
    assert p.allowed_hosts == frozenset({"docs.example.com", ".cdn.example.net"})
    assert p.allowed_buckets == frozenset({"reports"}) and p.max_bytes == 1000


def test_backoff_has_jitter_a_ceiling_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [fetch.backoff_delay(a, rng=rng, base=1, cap=8) for a in range(1, 8)]
    assert all(0 <= d <= min(8, 2 ** (a - 1)) for a, d in zip(range(1, 8), delays, strict=True))
    assert len(set(delays)) == len(delays)
    assert fetch.backoff_delay(1, 5.0, rng=rng, base=0.1) >= 5.0
    assert fetch.backoff_delay(1, 3600.0, rng=rng, cap=30) == 30


def test_parse_retry_after() -> None:
    assert fetch.parse_retry_after("7") == 7.0
    assert fetch.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert fetch.parse_retry_after("soon") is None
    assert fetch.parse_retry_after(None) is None


def _client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "cls", "permanent", "scope"),
    [
        (_client_error("NoSuchKey", 404), "not_found", True, "object"),
        (_client_error("AccessDenied", 403), "forbidden", True, "object"),
        (_client_error("NoSuchBucket", 404), "not_found", True, "object"),
        (_client_error("InvalidAccessKeyId", 403), "access", True, "source"),
        (_client_error("SignatureDoesNotMatch", 403), "access", True, "source"),
        (_client_error("SlowDown", 503), "throttled", False, "object"),
        (_client_error("InternalError", 500), "server_error", False, "object"),
        # review bug 10: 4xx codes that are transient
        (_client_error("RequestTimeout", 400), "fetch_timeout", False, "object"),
        (_client_error("RequestTimeoutException", 400), "fetch_timeout", False, "object"),
        (_client_error("OperationAborted", 409), "server_error", False, "object"),
        (_client_error("PriorRequestNotComplete", 503), "server_error", False, "object"),
        (_client_error("InvalidArgument", 400), "http_error", True, "object"),
        (NoCredentialsError(), "access", True, "source"),
        (ReadTimeoutError(endpoint_url="http://s3"), "fetch_timeout", False, "object"),
    ],
)
def test_s3_error_classes(exc: Exception, cls: str, permanent: bool, scope: str) -> None:
    err = fetch.classify_s3_error(exc, "bucket")
    assert (err.error_class, err.permanent, err.scope) == (cls, permanent, scope)


def test_s3_retry_after_is_kept() -> None:
    err = fetch.classify_s3_error(_client_error("SlowDown", 503, {"retry-after": "4"}), "b")
    assert err.retry_after == 4.0


def test_s3_uris() -> None:
    assert fetch.parse_s3_uri("s3://bucket/a/b%20c.pdf") == ("bucket", "a/b c.pdf")
    for bad in ["s3://bucket", "s3:///key", "s3://bucket/key?versionId=1"]:
        with pytest.raises(RawDocumentError):
            fetch.parse_s3_uri(bad)


def test_a_hanging_resolver_is_a_transient_timeout() -> None:
    import threading

    release = threading.Event()

    def hang(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.216.34"]

    try:
        with pytest.raises(RawDocumentError) as err:
            fetch.check_http_uri(
                "https://docs.example.com/x", _policy(resolver=hang, connect_timeout=0.2)
            )
        assert err.value.error_class == "fetch_timeout" and not err.value.permanent
    finally:
        release.set()


def test_a_failing_resolver_is_a_connect_error() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(RawDocumentError) as err:
        fetch.check_http_uri("https://docs.example.com/x", _policy(resolver=fail))
    assert err.value.error_class == "connect_error"
