"""Fetching against real servers started here on 127.0.0.1: a plain HTTP server that counts its
connections (so a refused URI is shown to make none) and moto's standalone S3 server as the
S3-compatible store (a separate process, reached through boto3 like a real store)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pgingest.raw import fetch, parse
from pgingest.raw.errors import RawDocumentError

pytestmark = pytest.mark.timeout(120)

DOC = b"# Title\n\nSome markdown served over HTTP.\n"
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@dataclass
class Counter:
    connections: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    flaky_left: int = 2
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    counter: Counter

    def get_request(self) -> tuple[socket.socket, object]:
        conn = super().get_request()
        with self.counter.lock:
            self.counter.connections += 1
        return conn


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _send(self, status: int, body: bytes, head: bool, **headers: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        if "Content_Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        c = self.server.counter
        with c.lock:
            c.requests.append((self.command, self.path))
        path = self.path
        if path == "/doc.md":
            self._send(
                200,
                DOC,
                head,
                Content_Type="text/markdown; charset=utf-8",
                ETag='"v1"',
                Last_Modified="Mon, 07 Dec 2026 00:00:00 GMT",
            )
        elif path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            if not head:
                with contextlib.suppress(OSError):
                    self.wfile.write(b"x" * 1024 * 1024)
        elif path == "/stream":
            # no Content-Length anywhere: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            if not head:
                with contextlib.suppress(OSError):
                    for _ in range(64):
                        self.wfile.write(b"y" * 64 * 1024)
            self.close_connection = True
        elif path == "/slow":
            if head:
                self._send(200, b"", True)
                return
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.flush()
            time.sleep(3)
            with contextlib.suppress(OSError):
                self.wfile.write(b"0123456789")
        elif path == "/trickle":
            # a byte every 0.2 s: each read is within the read timeout, the whole is not
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(100 if not head else 0):
                    self.wfile.write(b"t")
                    self.wfile.flush()
                    time.sleep(0.2)
        elif path.startswith("/busy-bucket/"):
            # an S3-compatible store shedding load
            body = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
            self._send(503, body, head, Retry_After="3", Content_Type="application/xml")
        elif path == "/flaky":
            with c.lock:
                fail = self.command == "GET" and c.flaky_left > 0
                if fail:
                    c.flaky_left -= 1
            if fail:
                self._send(503, b"busy", head, Retry_After="1")
            else:
                self._send(200, DOC, head, Content_Type="text/markdown")
        elif path == "/throttle":
            self._send(429, b"slow down", head, Retry_After="2")
        elif path == "/missing":
            self._send(404, b"no", head)
        elif path == "/denied":
            self._send(403, b"no", head)
        elif path == "/redirect-local":
            self._send(302, b"", head, Location="/doc.md")
        elif path == "/redirect-metadata":
            self._send(302, b"", head, Location="http://169.254.169.254/latest/meta-data/")
        elif path == "/redirect-other-host":
            port = self.server.server_address[1]
            self._send(302, b"", head, Location=f"http://localhost:{port}/doc.md")
        elif path == "/etag-on-get-only":
            if head:
                self._send(200, b"", True, Content_Length=str(len(DOC)))
            elif self.headers.get("If-None-Match") == '"v2"':
                self._send(304, b"", True)
            else:
                self._send(200, DOC, False, ETag='"v2"')
        elif path == "/redirect-loop":
            self._send(302, b"", head, Location="/redirect-loop")
        elif path == "/redirect-space":
            self._send(302, b"", head, Location="/q3 final.pdf?sig=deadbeefSECRET")
        else:
            self._send(404, b"no", head)


@pytest.fixture
def http_server() -> Iterator[tuple[str, Counter]]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.counter = Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _http_policy(**kw: object) -> fetch.FetchPolicy:
    base: dict[str, object] = {
        "allowed_hosts": frozenset({"127.0.0.1"}),
        "http_hosts": frozenset({"127.0.0.1"}),
        "allowed_networks": LOOPBACK,
        "max_bytes": 1024 * 1024,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
    }
    base.update(kw)
    return fetch.FetchPolicy(**base)  # type: ignore[arg-type]


def test_http_fetch_returns_bytes_hash_and_validators(http_server: tuple[str, Counter]) -> None:
    base, counter = http_server
    got = fetch.fetch(f"{base}/doc.md", _http_policy())
    assert got.data == DOC
    assert got.sha256 == hashlib.sha256(DOC).hexdigest()
    assert got.etag == '"v1"'
    assert got.last_modified == "Mon, 07 Dec 2026 00:00:00 GMT"
    assert got.content_type == "text/markdown; charset=utf-8"
    assert counter.requests == [("HEAD", "/doc.md"), ("GET", "/doc.md")]
    with parse.ParsePool(1) as pool:
        doc = parse.parse_document(got.data, content_type=got.content_type, name=got.uri, pool=pool)
    assert doc.blocks[0].heading_path == ("Title",)


@pytest.mark.parametrize(
    ("make_uri", "policy_kw"),
    [
        # loopback not opened by the admin: refused, even though the host is allow-listed
        (lambda base: f"{base}/doc.md", {"allowed_networks": ()}),
        # a host name that is not allow-listed (it resolves to the same server)
        (lambda base: base.replace("127.0.0.1", "localhost") + "/doc.md", {}),
        # plain http to a host allow-listed for https only
        (lambda base: f"{base}/doc.md", {"http_hosts": frozenset()}),
        # a link-local address (cloud metadata)
        (lambda base: "http://169.254.169.254/latest/meta-data/", {}),
    ],
)
def test_a_refused_uri_makes_no_connection(
    http_server: tuple[str, Counter], make_uri: object, policy_kw: dict[str, object]
) -> None:
    base, counter = http_server
    # the metadata address is allow-listed as a host name: only its address class refuses it
    policy = dataclasses.replace(
        _http_policy(**policy_kw),
        allowed_hosts=_http_policy(**policy_kw).allowed_hosts | {"169.254.169.254"},
    )
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(make_uri(base), policy)  # type: ignore[operator]
    assert err.value.error_class == "not_allowed" and err.value.permanent
    assert counter.connections == 0


def test_redirects_are_checked_like_the_first_uri(http_server: tuple[str, Counter]) -> None:
    base, counter = http_server
    policy = _http_policy(allowed_hosts=frozenset({"127.0.0.1", "169.254.169.254"}))
    assert fetch.fetch(f"{base}/redirect-local", policy).data == DOC
    for path in ("/redirect-metadata", "/redirect-other-host"):
        before = counter.connections
        with pytest.raises(RawDocumentError) as err:
            fetch.fetch(f"{base}{path}", policy)
        assert err.value.error_class == "not_allowed"
        # the HEAD and the GET that answered the redirect; nothing to the target
        assert counter.connections - before == 2
        assert counter.requests[-1] == ("GET", path)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{base}/redirect-loop", policy)
    assert err.value.error_class == "http_error" and "redirects" in str(err.value)


def test_size_cap_before_the_download(http_server: tuple[str, Counter]) -> None:
    base, counter = http_server
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{base}/big", _http_policy())
    assert err.value.error_class == "too_large" and err.value.permanent
    assert counter.requests == [("HEAD", "/big")]  # no GET


def test_size_cap_during_the_download(http_server: tuple[str, Counter]) -> None:
    base, counter = http_server
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{base}/stream", _http_policy(max_bytes=256 * 1024))
    assert err.value.error_class == "too_large"
    assert "during the download" in str(err.value)
    assert ("GET", "/stream") in counter.requests


def test_read_timeout_is_transient(http_server: tuple[str, Counter]) -> None:
    base, _ = http_server
    started = time.monotonic()
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{base}/slow", _http_policy(read_timeout=0.5))
    assert err.value.error_class == "fetch_timeout" and not err.value.permanent
    assert time.monotonic() - started < 2.5


def test_a_trickling_download_is_cut_at_the_download_timeout(
    http_server: tuple[str, Counter],
) -> None:
    base, _ = http_server
    started = time.monotonic()
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{base}/trickle", _http_policy(read_timeout=1.0, download_timeout=1.0))
    assert err.value.error_class == "fetch_timeout" and not err.value.permanent
    assert time.monotonic() - started < 3


def test_transient_errors_are_retried_honouring_retry_after(
    http_server: tuple[str, Counter],
) -> None:
    base, counter = http_server
    slept: list[float] = []
    got = fetch.fetch_with_retry(f"{base}/flaky", _http_policy(), attempts=4, sleep=slept.append)
    assert got.data == DOC
    assert len(slept) == 2 and all(s >= 1.0 for s in slept)
    assert [r for r in counter.requests if r[0] == "GET"] == [("GET", "/flaky")] * 3
    slept.clear()
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch_with_retry(f"{base}/throttle", _http_policy(), attempts=3, sleep=slept.append)
    assert err.value.error_class == "throttled" and err.value.retry_after == 2.0
    assert len(slept) == 2 and all(s >= 2.0 for s in slept)


@pytest.mark.parametrize(("path", "cls"), [("/missing", "not_found"), ("/denied", "forbidden")])
def test_permanent_http_errors_are_not_retried(
    http_server: tuple[str, Counter], path: str, cls: str
) -> None:
    base, counter = http_server
    slept: list[float] = []
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch_with_retry(f"{base}{path}", _http_policy(), sleep=slept.append)
    assert err.value.error_class == cls and err.value.permanent
    assert slept == []
    assert [r for r in counter.requests if r[0] == "GET"] == [("GET", path)]


def test_a_closed_port_is_a_transient_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"http://127.0.0.1:{port}/x", _http_policy())
    assert err.value.error_class == "connect_error" and not err.value.permanent


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (DNS) and 127.0.0.1 (IP), and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[int, Counter, Path]]:
    import ssl

    cert, key = _self_signed(tmp_path, "docs.test")
    server = _Server(("127.0.0.1", 0), _Handler)
    server.counter = Counter()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.counter, cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    https_server: tuple[int, Counter, Path],
) -> None:
    port, counter, cert = https_server
    # docs.test resolves (by the policy's resolver) to the test server's address: the socket
    # goes there, TLS checks the certificate against the name docs.test
    policy = _http_policy(
        allowed_hosts=frozenset({"docs.test", "other.test"}),
        http_hosts=frozenset(),
        ca_file=str(cert),
        resolver=lambda host, p: ["127.0.0.1"],
    )
    got = fetch.fetch(f"https://docs.test:{port}/doc.md", policy)
    assert got.data == DOC
    # a name the certificate does not carry: refused by TLS (transient: connect_error)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"https://other.test:{port}/doc.md", policy)
    assert err.value.error_class == "connect_error" and "TLS" in str(err.value)
    # the system's CAs do not trust a self-signed certificate
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"https://docs.test:{port}/doc.md", dataclasses.replace(policy, ca_file=None))
    assert err.value.error_class == "connect_error"
    assert counter.requests == [("HEAD", "/doc.md"), ("GET", "/doc.md")]


def test_conditional_fetch_over_http(http_server: tuple[str, Counter]) -> None:
    base, counter = http_server
    policy = _http_policy()
    # HEAD says the ETag is the recorded one: no GET at all
    assert fetch.fetch_if_changed(f"{base}/doc.md", policy, fetch.Validators(etag='"v1"')) is None
    assert counter.requests == [("HEAD", "/doc.md")]
    # by Last-Modified when there is no recorded ETag
    known = fetch.Validators(last_modified="Mon, 07 Dec 2026 00:00:00 GMT")
    assert fetch.fetch_if_changed(f"{base}/doc.md", policy, known) is None
    # changed: downloaded
    got = fetch.fetch_if_changed(f"{base}/doc.md", policy, fetch.Validators(etag='"v0"'))
    assert got is not None and got.data == DOC and got.etag == '"v1"'
    # a server whose HEAD carries no validator answers the conditional GET with 304
    counter.requests.clear()
    path = f"{base}/etag-on-get-only"
    assert fetch.fetch_if_changed(path, policy, fetch.Validators(etag='"v2"')) is None
    assert counter.requests == [("HEAD", "/etag-on-get-only"), ("GET", "/etag-on-get-only")]
    assert fetch.fetch(path, policy).etag == '"v2"'


# --- S3: moto's standalone server ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _moto_server(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials in the environment only; no profile or instance role can leak in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with _moto_server() as url:
        yield url


def _s3_policy(endpoint: str, **kw: object) -> fetch.FetchPolicy:
    base: dict[str, object] = {
        "allowed_buckets": frozenset({"docs", "nobucket"}),
        "s3_endpoint": endpoint,
        "s3_region": "us-east-1",
        "max_bytes": 64 * 1024,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    base.update(kw)
    return fetch.FetchPolicy(**base)  # type: ignore[arg-type]


@pytest.fixture
def bucket(aws_env: None, moto_endpoint: str) -> str:
    client = fetch.s3_client(_s3_policy(moto_endpoint))
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="docs")
    client.put_object(Bucket="docs", Key="a/guide.md", Body=DOC, ContentType="text/markdown")
    client.put_object(Bucket="docs", Key="a/big.bin", Body=b"z" * (100 * 1024))
    return moto_endpoint


def test_s3_fetch(bucket: str) -> None:
    got = fetch.fetch("s3://docs/a/guide.md", _s3_policy(bucket))
    assert got.data == DOC
    assert got.sha256 == hashlib.sha256(DOC).hexdigest()
    assert got.etag == '"' + hashlib.md5(DOC).hexdigest() + '"'
    assert got.content_type == "text/markdown" and got.last_modified


def test_s3_permanent_errors(bucket: str) -> None:
    policy = _s3_policy(bucket)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://docs/a/missing.md", policy)
    assert (err.value.error_class, err.value.scope) == ("not_found", "object")
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://docs/a/big.bin", policy)
    assert err.value.error_class == "too_large" and "head_object" in str(err.value)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://other/a/guide.md", policy)
    assert err.value.error_class == "not_allowed"


def test_s3_a_missing_bucket_is_the_objects_not_found(bucket: str) -> None:
    # review bug 7: a bucket that does not exist is a typo in one row's URI; pausing the source
    # for it paused every other row, again at each resume
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://nobucket/a/guide.md", _s3_policy(bucket))
    assert (err.value.error_class, err.value.scope, err.value.permanent) == (
        "not_found",
        "object",
        True,
    )


def test_s3_no_credentials_pauses_the_source(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://docs/a/guide.md", _s3_policy(bucket))
    assert (err.value.error_class, err.value.scope) == ("access", "source")
    assert "testing" not in str(err.value)


def test_s3_rejected_credentials_pause_the_source(aws_env: None) -> None:
    # a store that checks signatures (moto with authentication on): the key is unknown to it
    with (
        _moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint,
        pytest.raises(RawDocumentError) as err,
    ):
        fetch.fetch("s3://docs/a/guide.md", _s3_policy(endpoint))
    assert (err.value.error_class, err.value.scope) == ("access", "source")
    assert err.value.permanent


def test_s3_endpoint_down_is_transient(aws_env: None) -> None:
    policy = _s3_policy(f"http://127.0.0.1:{_free_port()}", connect_timeout=1.0)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch("s3://docs/a/guide.md", policy)
    assert err.value.error_class == "connect_error" and not err.value.permanent


def test_s3_conditional_fetch(bucket: str) -> None:
    policy = _s3_policy(bucket)
    first = fetch.fetch("s3://docs/a/guide.md", policy)
    known = fetch.Validators(etag=first.etag, last_modified=first.last_modified)
    assert fetch.fetch_if_changed("s3://docs/a/guide.md", policy, known) is None
    client = fetch.s3_client(policy)
    client.put_object(Bucket="docs", Key="a/guide.md", Body=DOC + b"\nmore\n")
    try:
        got = fetch.fetch_if_changed("s3://docs/a/guide.md", policy, known)
        assert got is not None and got.data.endswith(b"more\n") and got.etag != first.etag
    finally:
        client.put_object(Bucket="docs", Key="a/guide.md", Body=DOC, ContentType="text/markdown")


def test_s3_listing(bucket: str) -> None:
    policy = _s3_policy(bucket)
    client = fetch.s3_client(policy)
    client.put_object(Bucket="docs", Key="b/one two.md", Body=b"one")
    client.put_object(Bucket="docs", Key="b/sub/", Body=b"")
    client.put_object(Bucket="docs", Key="b/sub/three.txt", Body=b"three")
    listed = list(fetch.list_objects("s3://docs/b/", policy))
    assert [o.uri for o in listed] == ["s3://docs/b/one%20two.md", "s3://docs/b/sub/three.txt"]
    assert [o.size for o in listed] == [3, 5]
    assert all(o.etag and o.last_modified for o in listed)
    # each listed URI fetches, with the same ETag
    got = fetch.fetch(listed[0].uri, policy)
    assert got.data == b"one" and got.etag == listed[0].etag
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects("s3://nobucket/", policy))
    assert (err.value.error_class, err.value.scope) == ("not_found", "object")
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects("s3://other/", policy))
    assert err.value.error_class == "not_allowed"


def test_file_listing_stays_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("a")
    (root / "sub" / "b.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "outside.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    listed = list(fetch.list_objects(root.as_uri(), policy))
    assert [o.uri for o in listed] == [(root / "a.md").as_uri(), (root / "sub" / "b.pdf").as_uri()]
    assert [fetch.fetch(o.uri, policy).data for o in listed] == [b"a", b"%PDF-1.4"]
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects(tmp_path.as_uri(), policy))
    assert err.value.error_class == "not_allowed"
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects("https://example.com/", policy))
    assert err.value.error_class == "bad_uri"


def test_a_file_rewritten_within_its_second_is_seen_as_changed(tmp_path: Path) -> None:
    """Last-Modified has whole seconds; a file's ETag (mtime in ns, size) does not: ``source
    sync`` sees a rewrite of the same size within the second of the last fetch. A row recorded
    without an ETag (fetched before files had one) is judged by Last-Modified, as before."""
    from pgingest.sources_cli import plan_sync

    root = tmp_path / "root"
    root.mkdir()
    doc = root / "a.md"
    doc.write_text("version 1")
    second = 1_700_000_000 * 10**9
    os.utime(doc, ns=(second + 100, second + 100))
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    got = fetch.fetch(doc.as_uri(), policy)
    (listed,) = fetch.list_objects(root.as_uri(), policy)
    assert got.etag == listed.etag and got.etag is not None
    recorded = {doc.as_uri(): ("k", got.etag, bytes.fromhex(got.sha256), got.last_modified)}
    assert plan_sync([listed], recorded, root.as_uri()).unchanged == 1

    doc.write_text("version 2")  # the same size, within the same second
    os.utime(doc, ns=(second + 900, second + 900))
    (relisted,) = fetch.list_objects(root.as_uri(), policy)
    assert relisted.last_modified == listed.last_modified and relisted.etag != listed.etag
    plan = plan_sync([relisted], recorded, root.as_uri())
    assert (plan.changed, plan.unchanged) == (["k"], 0)

    before = {doc.as_uri(): ("k", None, bytes.fromhex(got.sha256), got.last_modified)}
    assert plan_sync([relisted], before, root.as_uri()).unchanged == 1  # as before: no ETag
    os.utime(doc, ns=(second + 2 * 10**9, second + 2 * 10**9))
    (later,) = fetch.list_objects(root.as_uri(), policy)
    assert plan_sync([later], before, root.as_uri()).changed == ["k"]


def test_s3_throttling_is_transient_with_retry_after(
    aws_env: None, http_server: tuple[str, Counter]
) -> None:
    # boto3 against a store answering 503 SlowDown with Retry-After (the HTTP test server)
    base, counter = http_server
    policy = _s3_policy(base, allowed_buckets=frozenset({"busy-bucket"}))
    slept: list[float] = []
    with pytest.raises(RawDocumentError) as err:
        fetch.retrying(
            lambda: fetch.fetch("s3://busy-bucket/a.pdf", policy), attempts=2, sleep=slept.append
        )
    assert err.value.error_class in ("throttled", "server_error")
    assert not err.value.permanent and err.value.retry_after == 3.0
    assert slept and slept[0] >= 3.0
    # boto3's own retries are off: one HEAD per attempt
    assert counter.requests == [("HEAD", "/busy-bucket/a.pdf")] * 2
