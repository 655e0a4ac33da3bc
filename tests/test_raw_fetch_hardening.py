"""Fetching hardened after the review of 2026-12-07 (issue 22), against real servers on
127.0.0.1 (tests/test_raw_fetch.py's HTTP server and moto's S3 server): secrets in URIs never
reach an error message, a URI http.client cannot send is a permanent ``bad_uri``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgingest.raw import fetch
from pgingest.raw.errors import RawDocumentError
from pgingest.sources_cli import SyncPlan, plan_sync
from tests import test_raw_fetch as rf
from tests.test_raw_fetch import Counter, _http_policy

# tests/test_raw_fetch.py's fixtures: its HTTP server, moto's S3 server, the test credentials
http_server = rf.http_server
moto_endpoint = rf.moto_endpoint
aws_env = rf.aws_env
bucket = rf.bucket

pytestmark = pytest.mark.timeout(120)

SECRET = "deadbeefSECRET"


# -- bug 1: a space or control character in a URI --------------------------------------------


@pytest.mark.parametrize("bad", ["/q3 final.pdf", "/q3\tfinal.pdf", "/q3\x7ffinal.pdf", "/a\x00"])
def test_a_space_in_a_uri_is_a_permanent_bad_uri_without_its_query(
    http_server: tuple[str, Counter], bad: str
) -> None:
    url, counter = http_server
    uri = f"{url}{bad}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SECRET}"
    calls: list[int] = []

    def once() -> fetch.Fetched:
        calls.append(1)
        return fetch.fetch(uri, _http_policy())

    with pytest.raises(RawDocumentError) as err:
        fetch.retrying(once, sleep=lambda s: None)
    assert (err.value.error_class, err.value.permanent) == ("bad_uri", True)
    assert SECRET not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    assert calls == [1]  # not retried
    assert counter.connections == 0


def test_a_redirect_to_a_uri_with_a_space_is_refused(http_server: tuple[str, Counter]) -> None:
    url, counter = http_server
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{url}/redirect-space", _http_policy())
    assert (err.value.error_class, err.value.permanent) == ("bad_uri", True)
    assert SECRET not in str(err.value)


def test_a_non_ascii_path_is_percent_encoded(http_server: tuple[str, Counter]) -> None:
    url, counter = http_server
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{url}/caf\u00e9.md?q=\u00e9", _http_policy())
    assert err.value.error_class == "not_found"  # the server got the request
    assert ("HEAD", "/caf%C3%A9.md?q=%C3%A9") in counter.requests


def test_a_network_error_message_has_no_query(http_server: tuple[str, Counter]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"http://127.0.0.1:{port}/a.md?sig={SECRET}", _http_policy())
    assert err.value.error_class == "connect_error" and SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"https://u:{SECRET}@h.example/a b?sig={SECRET}#f", "https://h.example/a%20b?<redacted>"),
        (f"s3://AKIA:{SECRET}@bucket/k", "s3://bucket/k"),
        (f"s3://AKIA:SE/CR/{SECRET}@bucket/k", "s3://bucket/k"),
        ("file:///docs/a\x00.md", "file:///docs/a%00.md"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert fetch.redact_uri(uri) == shown


# -- bug 2: credentials in an s3:// URI -----------------------------------------------------


@pytest.mark.parametrize("buckets", [{"docs"}, {"*"}])
@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@docs/a/guide.md",
        f"s3://AKIAIOSFODNN7EXAMPLE:SE/CR/{SECRET}@docs/a/guide.md",
        "s3://AKIAIOSFODNN7EXAMPLE@docs/a/guide.md",
        "s3://docs:443/a/guide.md",
        "s3://do cs/a/guide.md",
    ],
)
def test_credentials_in_an_s3_uri_are_a_permanent_bad_uri_never_echoed(
    bucket: str, uri: str, buckets: set[str]
) -> None:
    policy = rf._s3_policy(bucket, allowed_buckets=frozenset(buckets))
    for call in (
        lambda: fetch.fetch(uri, policy),
        lambda: list(fetch.list_objects(uri.rsplit("/", 1)[0] + "/", policy)),
    ):
        with pytest.raises(RawDocumentError) as err:
            call()
        assert (err.value.error_class, err.value.permanent) == ("bad_uri", True)
        assert SECRET not in str(err.value) and "AKIA" not in str(err.value)
        assert "SE/CR" not in str(err.value)


# -- bugs 14 and 15: which recorded URIs a sync's prefix covers --------------------------------


def _plan(prefix: str, policy: fetch.FetchPolicy, recorded_uris: list[str]) -> SyncPlan:
    recorded = {u: ({"uri": u}, None, b"s", None) for u in recorded_uris}
    return plan_sync(fetch.list_objects(prefix, policy), recorded, prefix)


def test_a_deleted_file_vanishes_whatever_form_the_prefix_has(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "my docs").mkdir(parents=True)
    (root / "my docs2").mkdir()
    (tmp_path / "link").symlink_to(root)
    (root / "my docs" / "a.md").write_text("# a\n")
    (root / "my docs" / "b.md").write_text("# b\n")
    (root / "my docs2" / "c.md").write_text("# c\n")
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    listed = [o.uri for o in fetch.list_objects((root / "my docs").as_uri(), policy)]
    assert listed == [(root / "my docs" / n).as_uri() for n in ("a.md", "b.md")]
    recorded = [*listed, (root / "my docs2" / "c.md").as_uri()]
    (root / "my docs" / "b.md").unlink()
    for prefix in [
        f"file://{root}/my docs",  # a space, as typed
        (root / "my docs").as_uri(),  # %20
        f"file://localhost{root}/my%20docs",
        (tmp_path / "link" / "my docs").as_uri(),  # through a symbolic link
        (root / "my docs").as_uri() + "/",
    ]:
        plan = _plan(prefix, policy, recorded)
        assert plan.vanished == [(root / "my docs" / "b.md").as_uri()], prefix
        assert plan.new == [] and len(plan.changed) + plan.unchanged == 1, prefix


def test_recorded_uris_of_another_form_are_matched_not_duplicated(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "my docs").mkdir(parents=True)
    (root / "my docs" / "a.md").write_text("# a\n")
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    typed = f"file://localhost{root}/my docs/a.md"  # how an application wrote it
    plan = _plan((root / "my docs").as_uri(), policy, [typed])
    assert (plan.new, plan.vanished, plan.changed) == ([], [], [{"uri": typed}])


def test_an_s3_prefix_with_a_space_matches_the_listed_keys(bucket: str) -> None:
    policy = rf._s3_policy(bucket)
    client = fetch.s3_client(policy)
    client.put_object(Bucket="docs", Key="my docs/a.md", Body=b"# a\n")
    client.put_object(Bucket="docs", Key="my docs/b.md", Body=b"# b\n")
    listed = [o.uri for o in fetch.list_objects("s3://docs/my docs/", policy)]
    assert listed == ["s3://docs/my%20docs/a.md", "s3://docs/my%20docs/b.md"]
    client.delete_object(Bucket="docs", Key="my docs/b.md")
    for prefix in ["s3://docs/my docs/", "s3://docs/my%20docs/"]:
        plan = _plan(prefix, policy, listed)
        assert plan.vanished == ["s3://docs/my%20docs/b.md"], prefix


# -- bug 16: a listing error is never a subtree silently skipped --------------------------------


def test_a_directory_removed_during_the_listing_is_skipped_other_errors_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.md").write_text("# x\n")
    policy = fetch.FetchPolicy(allowed_roots=(tmp_path,))
    real_scandir = os.scandir
    fail = {"errno": errno.ENOENT}

    def scandir(path: object = ".") -> object:
        if str(path).endswith("/b"):
            raise OSError(fail["errno"], os.strerror(fail["errno"]), str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    listed = [o.uri for o in fetch.list_objects(tmp_path.as_uri(), policy)]
    assert listed == [(tmp_path / "a" / "x.md").as_uri()]
    fail["errno"] = errno.EIO
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects(tmp_path.as_uri(), policy))
    assert err.value.error_class == "server_error" and "cannot list" in str(err.value)


# -- bug 5: a FIFO under a file root --------------------------------------------------------


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    import os
    import threading
    import time

    os.mkfifo(tmp_path / "pipe.md")
    policy = fetch.FetchPolicy(allowed_roots=(tmp_path,), download_timeout=5, read_timeout=5)
    calls: list[int] = []
    result: list[BaseException] = []

    def go() -> None:
        def once() -> fetch.Fetched:
            calls.append(1)
            return fetch.fetch((tmp_path / "pipe.md").as_uri(), policy)

        try:
            fetch.retrying(once, sleep=lambda s: None)
        except BaseException as exc:
            result.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=go, daemon=True)  # a hung open must not hang pytest
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the fetch of a FIFO blocks in open()"
    assert time.monotonic() - started < 2
    (err,) = result
    assert isinstance(err, RawDocumentError)
    assert (err.error_class, err.permanent, calls) == ("not_allowed", True, [1])
    # a regular file is still read whole (O_NONBLOCK cleared)
    (tmp_path / "a.md").write_bytes(b"# a\n" * 50_000)
    assert fetch.fetch((tmp_path / "a.md").as_uri(), policy).data == b"# a\n" * 50_000


# -- bug 6: one deadline over the whole fetch, headers included -------------------------------


@pytest.fixture
def slow_headers() -> Iterator[str]:
    """A server that sends its status line, then a header byte every 0.2 s, for ever: each read
    is within the read timeout, the whole is not."""
    import socket
    import threading
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def handle(c: socket.socket) -> None:
        with contextlib.suppress(OSError), c:
            c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                for ch in b"X-Slow: a\r\n":
                    c.sendall(bytes([ch]))
                    time.sleep(0.2)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = srv.accept()
                threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()


def test_slow_response_headers_are_cut_at_the_download_timeout(slow_headers: str) -> None:
    import threading
    import time

    policy = _http_policy(read_timeout=1.0, download_timeout=2.0)
    result: list[BaseException] = []

    def go() -> None:
        try:
            fetch.fetch(f"{slow_headers}/doc.md", policy)
        except BaseException as exc:
            result.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive(), "slow headers escape the download timeout"
    assert time.monotonic() - started < 4
    (err,) = result
    assert isinstance(err, RawDocumentError)
    assert (err.error_class, err.permanent) == ("fetch_timeout", False)
    assert "download timeout" in str(err)


# -- bug 3: a directory swapped for a link between the check and the open ----------------------


def test_a_directory_swapped_for_a_link_after_the_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "doc.md").write_text("# inside\n")
    (outside / "doc.md").write_text("# SECRET outside the root\n")
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    real = os.path.realpath

    def racing_realpath(p: object, *args: object, **kw: object) -> str:
        out: str = real(p, *args, **kw)  # type: ignore[call-overload]
        if str(p).endswith("sub/doc.md"):
            # whoever can write in the root wins the race: after the check, before the open
            shutil.rmtree(root / "sub")
            (root / "sub").symlink_to(outside)
        return out

    monkeypatch.setattr(os.path, "realpath", racing_realpath)
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch((root / "sub" / "doc.md").as_uri(), policy)
    assert (err.value.error_class, err.value.permanent) == ("not_allowed", True)
    monkeypatch.undo()
    # no race: a file under the root is read, one through the link is refused by the check
    (root / "real.md").write_text("# real\n")
    assert fetch.fetch((root / "real.md").as_uri(), policy).data == b"# real\n"
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch((root / "sub" / "doc.md").as_uri(), policy)
    assert err.value.error_class == "not_allowed"


# -- bug 18: keys starting with '/', file names that are not UTF-8 -----------------------------


def test_an_s3_key_starting_with_a_slash_is_its_own_object(bucket: str) -> None:
    policy = rf._s3_policy(bucket)
    client = fetch.s3_client(policy)
    client.put_object(Bucket="docs", Key="/slash/a.md", Body=b"# the leading-slash key\n")
    client.put_object(Bucket="docs", Key="slash/a.md", Body=b"# another object\n")
    assert fetch.parse_s3_uri("s3://docs//slash/a.md") == ("docs", "/slash/a.md")
    listed = {o.uri for o in fetch.list_objects("s3://docs//slash/", policy)}
    assert listed == {"s3://docs//slash/a.md"}
    got = fetch.fetch("s3://docs//slash/a.md", policy)
    assert got.data == b"# the leading-slash key\n"
    assert fetch.fetch("s3://docs/slash/a.md", policy).data == b"# another object\n"


def test_a_file_name_that_is_not_utf8_is_listed_and_fetched(tmp_path: Path) -> None:
    import os

    name = os.fsdecode(b"caf\xe9.md")
    (tmp_path / name).write_bytes(b"# latin-1 name\n")
    policy = fetch.FetchPolicy(allowed_roots=(tmp_path,))
    (listed,) = fetch.list_objects(tmp_path.as_uri(), policy)
    assert listed.uri.endswith("/caf%E9.md")
    assert fetch.fetch(listed.uri, policy).data == b"# latin-1 name\n"
    # a UTF-8 name, encoded or not, still names its file
    (tmp_path / "th\u00e9.md").write_bytes(b"# utf-8 name\n")
    assert fetch.fetch((tmp_path / "th\u00e9.md").as_uri(), policy).data == b"# utf-8 name\n"
    assert fetch.fetch(f"file://{tmp_path}/th\u00e9.md", policy).data == b"# utf-8 name\n"
