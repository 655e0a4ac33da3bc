"""Fetching and source sync after the second review of 2026-12-07 (issue 22): userinfo that
urlsplit misreads, unreadable subdirectories under a sync's prefix, failed objects with recorded
validators, rows written through a symbolic link, URIs with spaces or controls at their ends,
name look-ups under the fetch's deadline."""

from __future__ import annotations

import errno
import functools
import http.server
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgingest.raw import fetch
from pgingest.raw.errors import RawDocumentError
from pgingest.raw.queries import RecordedObject
from pgingest.sources_cli import plan_sync

KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"

# -- A: userinfo in a URI, whatever it holds ----------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"s3://{KEY}:/{SECRET}@docs-bucket/reports/", "s3://docs-bucket/reports/"),  # the review's
        (f"s3://{KEY}:@docs-bucket/k", "s3://docs-bucket/k"),  # empty password
        (f"s3://{KEY}:12345@docs-bucket/k", "s3://docs-bucket/k"),  # numeric: a "port"
        (f"s3://{KEY}:12/{SECRET}@docs-bucket/k", "s3://docs-bucket/k"),  # numeric, then a '/'
        (f"s3://{KEY}:a/b@{SECRET}@docs-bucket/k", "s3://docs-bucket/k"),  # '/' and '@' inside
        (f"s3://{KEY}@docs-bucket/k", "s3://docs-bucket/k"),  # user only
        (f"https://{KEY}:/{SECRET}@h.example/a?sig=@x#@y", "https://h.example/a?<redacted>"),
        (f"{KEY}:/{SECRET}@docs-bucket/k", "docs-bucket/k"),  # no scheme
        (f"//{KEY}:/{SECRET}@docs-bucket/k", "docs-bucket/k"),  # no scheme, an authority
        ("file:///docs/jane@example.com.md", "file:///docs/jane@example.com.md"),  # a file name
        ("https://h.example/a?to=jane@example.com", "https://h.example/a?<redacted>"),
    ],
)
def test_redact_uri_cuts_any_userinfo(uri: str, shown: str) -> None:
    text = fetch.redact_uri(uri)
    assert text == shown
    assert SECRET not in text and KEY not in text


def test_an_s3_uri_with_an_empty_password_is_never_echoed() -> None:
    uri = f"s3://{KEY}:/{SECRET}@docs-bucket/reports/"
    policy = fetch.FetchPolicy(allowed_buckets=frozenset({"*"}))
    for call in (
        lambda: fetch.fetch(uri + "a.md", policy),
        lambda: list(fetch.list_objects(uri, policy)),
    ):
        with pytest.raises(RawDocumentError) as err:
            call()
        assert err.value.error_class == "bad_uri"
        assert SECRET not in str(err.value) and KEY not in str(err.value)


# -- B: a subdirectory that cannot be listed ----------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "vol"
    for sub, name in [("docs", "a.md"), ("lost+found", "x.md"), ("more", "b.md")]:
        (root / sub).mkdir(parents=True)
        (root / sub / name).write_text(f"# {name}\n")
    return root


def _deny(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path).rstrip("/").endswith(suffix):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _rec(*uris: str) -> dict[str, RecordedObject]:
    return {u: RecordedObject({"uri": u}, None, b"s", None, False) for u in uris}


def test_an_unreadable_subdirectory_is_reported_and_nothing_under_it_vanishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    lost = (root / "lost+found").as_uri()
    recorded = _rec(
        (root / "docs" / "a.md").as_uri(),
        (root / "docs" / "gone.md").as_uri(),  # really gone: deleted
        lost + "/x.md",  # not seen: kept
        lost + "/sub/y.md",
    )
    _deny(monkeypatch, "/vol/lost+found")
    with pytest.raises(RawDocumentError) as err:  # without a list to report it in: as before
        list(fetch.list_objects(root.as_uri(), policy))
    assert err.value.error_class == "forbidden"
    unlisted: list[str] = []
    plan = plan_sync(
        fetch.list_objects(root.as_uri(), policy, unlisted), recorded, root.as_uri(), None, unlisted
    )
    assert unlisted == [lost]
    assert plan.listed == 2 and plan.new == [(root / "more" / "b.md").as_uri()]
    assert plan.vanished == [(root / "docs" / "gone.md").as_uri()]


def test_a_file_whose_lstat_fails_is_reported_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    bad = (root / "more" / "b.md").as_uri()
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kw: Any) -> Any:
        if str(path).endswith("/more/b.md"):
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_lstat(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    unlisted: list[str] = []
    plan = plan_sync(
        fetch.list_objects(root.as_uri(), policy, unlisted),
        _rec(bad),
        root.as_uri(),
        None,
        unlisted,
    )
    assert unlisted == [bad] and plan.vanished == []


def test_the_prefix_itself_unreadable_still_stops_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    policy = fetch.FetchPolicy(allowed_roots=(root,))
    _deny(monkeypatch, "/vol/docs")
    unlisted: list[str] = []
    with pytest.raises(RawDocumentError) as err:
        list(fetch.list_objects((root / "docs").as_uri(), policy, unlisted))
    assert err.value.error_class == "forbidden" and "cannot list" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to uid 65534 in a child: needs root")
def test_a_real_lost_and_found_as_another_user(tmp_path: Path) -> None:
    """The review's case: a volume root synced by a user who cannot read lost+found (mode 700,
    root's), in a child process that drops to nobody."""
    import multiprocessing

    base = Path("/tmp") / f"pgingest-lf-{os.getpid()}"
    root = _tree(base)
    os.chmod(root / "lost+found", 0o700)
    for p in [base, *root.rglob("*"), root]:
        if p.name != "x.md" and p != root / "lost+found":
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_as_nobody, args=(root, out))
    child.start()
    child.join(30)
    try:
        result = out.get(timeout=5)
    finally:
        import shutil

        shutil.rmtree(base)
    assert result == (
        [(root / "lost+found").as_uri()],
        [(root / "docs" / "gone.md").as_uri()],
    ), result


def _as_nobody(root: Path, out: Any) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
        policy = fetch.FetchPolicy(allowed_roots=(root,))
        recorded = _rec((root / "docs" / "gone.md").as_uri(), (root / "lost+found/x.md").as_uri())
        unlisted: list[str] = []
        plan = plan_sync(
            fetch.list_objects(root.as_uri(), policy, unlisted),
            recorded,
            root.as_uri(),
            None,
            unlisted,
        )
        out.put((unlisted, plan.vanished))
    except BaseException as exc:
        out.put(repr(exc))


# -- C: a failed object with validators recorded ------------------------------------------------


def test_a_failed_object_with_recorded_validators_is_compared_like_any_other() -> None:
    listed = [
        fetch.ObjectInfo(
            "s3://b/etag", 1, etag='"e1"', last_modified="Mon, 07 Dec 2026 10:00:00 GMT"
        ),
        fetch.ObjectInfo("s3://b/moved", 1, etag='"e2"'),
        fetch.ObjectInfo("file:///r/lm", 1, last_modified="Mon, 07 Dec 2026 10:00:00 GMT"),
        fetch.ObjectInfo("file:///r/lm2", 1, last_modified="Mon, 07 Dec 2026 11:00:00 GMT"),
        fetch.ObjectInfo("s3://b/none", 1, etag='"e3"'),
    ]
    modified = "Mon, 07 Dec 2026 10:00:00 GMT"
    recorded = {
        # failed after its fetch: the fetched object's validators recorded
        "s3://b/etag": RecordedObject({"k": "etag"}, '"e1"', b"h", modified, True),
        "s3://b/moved": RecordedObject({"k": "moved"}, '"e1"', b"h", None, True),
        "file:///r/lm": RecordedObject({"k": "lm"}, None, b"h", modified, True),
        "file:///r/lm2": RecordedObject({"k": "lm2"}, None, b"h", modified, True),
        # failed before any fetch: nothing recorded, re-queued (once per sync)
        "s3://b/none": RecordedObject({"k": "none"}, None, None, None, True),
    }
    plan = plan_sync(listed, recorded, "s3://b/")
    assert plan.changed == [{"k": "moved"}, {"k": "lm2"}, {"k": "none"}]
    assert plan.unchanged == 2
    # an ETag in the listing, only a Last-Modified recorded: that is compared (once an ETag
    # against none recorded was "changed" at every sync)
    recorded["s3://b/etag"] = RecordedObject({"k": "etag"}, None, b"h", modified, True)
    assert {"k": "etag"} not in plan_sync(listed, recorded, "s3://b/").changed


# -- D: rows written through a symbolic link ----------------------------------------------------


def test_rows_written_through_a_link_match_the_listing(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "docs").mkdir(parents=True)
    (real / "docs" / "a.md").write_text("# a\n")
    (tmp_path / "link").symlink_to(real)
    policy = fetch.FetchPolicy(allowed_roots=(tmp_path / "link",))
    prefix = (tmp_path / "link" / "docs").as_uri() + "/"
    recorded = _rec(prefix + "a.md", prefix + "b.md")  # b.md is gone; its directory is not
    plan = plan_sync(fetch.list_objects(prefix, policy), recorded, prefix)
    assert plan.listed == 1 and plan.new == []  # not a second row in the real path's form
    assert plan.vanished == [prefix + "b.md"]  # the row as the application wrote it
    assert fetch.canonical_uri(prefix + "a.md") == (real / "docs" / "a.md").as_uri()
    # a directory that is gone: the URI as written
    assert fetch.canonical_uri(prefix + "gone/x.md") == prefix + "gone/x.md"


# -- E: spaces and controls at a URI's ends -----------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, fetch.FetchPolicy, Path]]:
    (tmp_path / "a.md").write_text("# doc\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    policy = fetch.FetchPolicy(
        allowed_roots=(tmp_path,),
        allowed_hosts=frozenset({"127.0.0.1"}),
        http_hosts=frozenset({"127.0.0.1"}),
        allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    try:
        yield f"http://127.0.0.1:{srv.server_port}", policy, tmp_path
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("form", ["{}\r", "{}\n", "{}\r\n", " {}", "\t{}", " {} ", "{}#a b"])
def test_spaces_and_controls_at_the_ends_are_stripped(
    served: tuple[str, fetch.FetchPolicy, Path], form: str
) -> None:
    url, policy, root = served
    for uri in (form.format(f"{url}/a.md"), form.format((root / "a.md").as_uri())):
        if uri.startswith("file:") and "#" in uri:
            continue  # a file:// URI has no fragment
        assert fetch.fetch(uri, policy).data == b"# doc\n"


@pytest.mark.parametrize("inner", ["/a b.md", "/a\r.md", "/a\t.md", "/a.md?x=1 2"])
def test_a_space_or_control_inside_is_still_refused(
    served: tuple[str, fetch.FetchPolicy, Path], inner: str
) -> None:
    url, policy, _ = served
    with pytest.raises(RawDocumentError) as err:
        fetch.fetch(f"{url}{inner}", policy)
    assert (err.value.error_class, err.value.permanent) == ("bad_uri", True)


def test_a_recorded_uri_with_a_line_end_matches_the_listing(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# a\n")
    policy = fetch.FetchPolicy(allowed_roots=(tmp_path,))
    uri = (tmp_path / "a.md").as_uri()
    plan = plan_sync(
        fetch.list_objects(tmp_path.as_uri(), policy), _rec(uri + "\r\n"), tmp_path.as_uri()
    )
    assert plan.listed == 1 and plan.new == [] and plan.vanished == []


# -- F: name look-ups ---------------------------------------------------------------------------


def _policy(**kw: Any) -> fetch.FetchPolicy:
    return fetch.FetchPolicy(allowed_hosts=frozenset({".example.com"}), **kw)


def test_a_lookup_failure_is_a_fresh_error_in_each_waiting_thread() -> None:
    gate = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        gate.wait(5)
        return fetch._system_resolver(host, port)  # a label over 63 characters: UnicodeError

    host = "a" * 64 + ".example.com"
    policy = _policy(resolver=resolver, connect_timeout=5)
    errs: list[BaseException] = []

    def go() -> None:
        try:
            fetch.check_http_uri(f"https://{host}/x", policy)
        except BaseException as exc:
            errs.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # all three wait for the one look-up
    gate.set()
    for t in threads:
        t.join(10)
    assert len(errs) == 3 and len({id(e) for e in errs}) == 3
    for e in errs:
        assert isinstance(e, RawDocumentError)
        assert (e.error_class, e.permanent) == ("bad_uri", True)


def test_another_lookup_failure_is_a_connect_error() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver bug")

    with pytest.raises(RawDocumentError) as err:
        fetch.check_http_uri("https://docs.example.com/x", _policy(resolver=resolver))
    assert err.value.error_class == "connect_error"


def test_a_lookup_waits_no_longer_than_the_fetch_deadline() -> None:
    release = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.216.34"]

    policy = _policy(resolver=resolver, connect_timeout=10, download_timeout=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(RawDocumentError) as err:
            fetch.fetch("https://docs.example.com/a.pdf", policy)
    finally:
        release.set()
    assert err.value.error_class == "fetch_timeout" and not err.value.permanent
    assert time.monotonic() - t0 < 3


# -- G: an S3 endpoint trickling its headers ----------------------------------------------------


@pytest.fixture
def trickling_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An "S3 endpoint" that sends its status line, then a header byte every 0.2 s, for ever."""
    import socket

    for name, value in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]:
        monkeypatch.setenv(name, value)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.is_set():
                    for ch in b"X-Slow: a\r\n":
                        conn.sendall(bytes([ch]))
                        time.sleep(0.2)
            except OSError:
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        srv.close()


def test_an_s3_fetch_ends_at_its_deadline_while_headers_trickle(trickling_endpoint: str) -> None:
    policy = fetch.FetchPolicy(
        allowed_buckets=frozenset({"b"}),
        s3_endpoint=trickling_endpoint,
        s3_region="us-east-1",
        read_timeout=1,
        download_timeout=1.5,
    )
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fetch.fetch("s3://b/doc.md", policy))
        except RawDocumentError as exc:
            outcome.append(exc)

    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the fetch outlived its deadline"
    assert time.monotonic() - t0 < 4
    (err,) = outcome
    assert isinstance(err, RawDocumentError), err  # not the headers so far as an empty object
    assert err.error_class == "fetch_timeout" and not err.permanent
