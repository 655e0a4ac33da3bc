"""``pgingest source add --uri``, ``source sync NAME PREFIX`` and ``source refresh`` against moto's
S3 server and a file root (issue 22, phase 2, step 5).

A sync inserts new objects, re-checks changed ones and deletes the rows of vanished ones (their
chunks go); a sync of an unchanged bucket makes no embedding request; ``--dry-run`` changes
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgingest import cli
from pgingest.testing.fake_provider import FakeEmbeddingServer
from tests import test_raw_worker as rw
from tests.fixtures.raw.generate import Expected
from tests.helpers import queue_count
from tests.test_raw_worker import _bucket, _drain, _state

# the fixtures of tests/test_raw_worker.py: moto's server, the fixture files, the environment
moto = rw.moto
fixture_files = rw.fixture_files
raw_env = rw.raw_env
model = rw.model

pytestmark = pytest.mark.timeout(300)


def run(capsys: pytest.CaptureFixture[str], dsn: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([*argv, "--database-url", dsn])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute("SELECT uri FROM public.objects ORDER BY uri")]


def test_sync_a_bucket_prefix(
    model: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,
    fixture_files: tuple[Path, dict[str, Expected]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn = model
    folder, _ = fixture_files
    client = _bucket(raw_env, "syncb", folder, ["multipage.pdf", "guide.md", "README"])
    client.put_object(Bucket="syncb", Key="elsewhere/skip.md", Body=b"# Not under the prefix\n")
    conn.execute("SELECT pgingest.allow_raw_location('bucket', 'syncb')")
    conn.execute("CREATE TABLE public.objects (uri text PRIMARY KEY, note text)")
    code, out, err = run(capsys, dsn, "source", "add", "objects", "public.objects", "--uri", "uri")
    assert code == 0, err

    code, out, err = run(capsys, dsn, "source", "sync", "objects", "s3://syncb/docs/", "--dry-run")
    assert code == 0, err
    assert "3 objects listed: 3 new, 0 changed, 0 unchanged; 0 vanished" in out
    assert "new       s3://syncb/docs/guide.md" in out
    assert _rows(conn) == []

    code, out, err = run(
        capsys, dsn, "source", "sync", "objects", "s3://syncb/docs/", "--progress-every", "2"
    )
    assert code == 0, err
    assert "2 objects listed" in err  # progress
    assert _rows(conn) == [f"s3://syncb/docs/{n}" for n in ["README", "guide.md", "multipage.pdf"]]
    _drain(dsn)
    assert set(_state(conn, "objects").values()) == {"embedded"}
    requests = fake.stats()["requests"]

    # Nothing changed: nothing queued, no request.
    code, out, err = run(capsys, dsn, "source", "sync", "objects", "s3://syncb/docs/")
    assert code == 0, err
    assert "3 objects listed: 0 new, 0 changed, 3 unchanged; 0 vanished" in out
    assert queue_count(conn, "v1") == 0
    # An explicit refresh of one URI: re-checked, unchanged, nothing embedded.
    code, out, err = run(capsys, dsn, "source", "refresh", "objects", "s3://syncb/docs/README")
    assert (code, out.strip()) == (0, "source objects: 1 rows queued for a re-check"), err
    w = _drain(dsn)
    assert w.raw.parsed == 0 and fake.stats()["requests"] == requests

    # One object changes, one vanishes, one appears.
    client.put_object(
        Bucket="syncb", Key="docs/guide.md", Body=b"# Guide\n\nRewritten after sync.\n"
    )
    client.delete_object(Bucket="syncb", Key="docs/README")
    client.put_object(Bucket="syncb", Key="docs/new.md", Body=b"# New\n\nA new object.\n")
    readme = conn.execute(
        "SELECT doc_id FROM pgingest.source_rows WHERE row_key ->> 'uri' LIKE '%%README'"
    ).fetchone()
    assert readme is not None
    code, out, err = run(capsys, dsn, "source", "sync", "objects", "s3://syncb/docs/")
    assert code == 0, err
    assert "3 objects listed: 1 new, 1 changed, 1 unchanged; 1 vanished" in out
    _drain(dsn)
    assert _state(conn, "objects") == {
        "s3://syncb/docs/guide.md": "embedded",
        "s3://syncb/docs/multipage.pdf": "embedded",
        "s3://syncb/docs/new.md": "embedded",
    }
    assert conn.execute(
        "SELECT count(*) FROM pgingest.chunks WHERE doc_id = %s", readme
    ).fetchone() == (0,)
    rewritten = conn.execute(
        "SELECT count(*) FROM pgingest.chunks AS c JOIN pgingest.source_rows AS r USING (doc_id)"
        " WHERE r.row_key ->> 'uri' = 's3://syncb/docs/guide.md' AND c.content LIKE '%%Rewritten%%'"
    ).fetchone()
    assert rewritten is not None and rewritten[0] >= 1


def test_sync_refusals(
    model: psycopg.Connection[Any],
    dsn: str,
    raw_env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn = model
    conn.execute("CREATE TABLE public.objects (id int PRIMARY KEY, uri text)")
    conn.execute("SELECT pgingest.add_source('objects', 'public.objects', uri => 'uri')")
    code, _, err = run(capsys, dsn, "source", "sync", "objects", "s3://syncb/docs/")
    assert code == 2 and "not keyed by a URI column alone" in err
    code, _, err = run(capsys, dsn, "source", "sync", "nope", "s3://syncb/docs/")
    assert code == 2 and "no source" in err
    conn.execute("CREATE TABLE public.files (uri text PRIMARY KEY)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', uri => 'uri')")
    code, _, err = run(capsys, dsn, "source", "sync", "files", tmp_path.as_uri())
    assert code == 2 and "outside the allowed roots" in err
    # A file root, allow-listed by an admin: listed and inserted.
    (tmp_path / "a.md").write_text("# A\n\ntext\n")
    conn.execute("SELECT pgingest.allow_raw_location('root', %s)", (str(tmp_path),))
    code, out, err = run(capsys, dsn, "source", "sync", "files", tmp_path.as_uri())
    assert code == 0, err
    assert "1 new" in out
    assert [r[0] for r in conn.execute("SELECT uri FROM public.files")] == [
        (tmp_path / "a.md").as_uri()
    ]


def test_source_show_of_a_raw_source(
    model: psycopg.Connection[Any], dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = model
    conn.execute("CREATE TABLE public.blobs (id int PRIMARY KEY, data bytea, kind text)")
    code, _, err = run(
        capsys, dsn, "source", "add", "blobs", "public.blobs", "--content", "data", "--mime", "kind"
    )
    assert code == 0, err
    conn.execute("SELECT pgingest.raw_pause_source_v1('blobs', 'access: bucket b refuses access')")
    code, out, err = run(capsys, dsn, "source", "show", "blobs")
    assert code == 0, err
    assert "content:" in out and "data (bytea: raw documents)" in out
    assert "mime:" in out and "kind" in out
    assert "waiting to be parsed:" in out
    assert "paused:" in out and "bucket b refuses access" in out
    code, out, err = run(capsys, dsn, "source", "show", "blobs", "--json")
    shown = json.loads(out)
    assert (shown["content_column"], shown["mime_column"], shown["raw_waiting"]) == (
        "data",
        "kind",
        0,
    )
    conn.execute("CREATE TABLE public.blobs2 (id int PRIMARY KEY, data bytea)")
    code, _, err = run(capsys, dsn, "source", "add", "b2", "public.blobs2", "--uri", "data")
    assert code == 2 and "not text" in err


def test_a_touched_file_is_rechecked_once_not_on_every_sync(
    model: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file whose mtime moves but whose bytes do not (a checkout, a copy without -t): the next
    sync re-checks it (same sha256: nothing parsed or embedded) and records the validators the
    re-check saw (raw_unchanged_v2), so the sync after that finds it unchanged. (With the
    validators of the first fetch kept, it was re-checked on every sync.)"""
    import os

    conn = model
    root = tmp_path / "root"
    root.mkdir()
    doc = root / "a.md"
    doc.write_text("# A\n\nSome text to embed.\n")
    conn.execute("SELECT pgingest.allow_raw_location('root', %s)", (str(root),))
    conn.execute("CREATE TABLE public.files (uri text PRIMARY KEY)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', uri => 'uri')")
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "1 new" in out, err
    _drain(dsn)
    assert set(_state(conn, "files").values()) == {"embedded"}
    requests = fake.stats()["requests"]

    st = doc.stat()
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # touched: same bytes
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "1 changed, 0 unchanged" in out, err
    w = _drain(dsn)
    assert w.raw.parsed == 0 and fake.stats()["requests"] == requests
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "0 changed, 1 unchanged" in out, err
    assert queue_count(conn, "v1") == 0


def test_a_sync_of_a_directory_never_deletes_the_rows_of_a_sibling(
    model: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review bug 14 (data loss): ``source sync files file:///root/docs`` deleted the rows of
    ``docs2/`` (vanished was "the URI starts with the prefix string")."""
    conn = model
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs2").mkdir()
    (root / "docs" / "a.md").write_text("# A\n\nAlpha text.\n")
    (root / "docs2" / "b.md").write_text("# B\n\nBeta text.\n")
    conn.execute("SELECT pgingest.allow_raw_location('root', %s)", (str(root),))
    conn.execute("CREATE TABLE public.files (uri text PRIMARY KEY)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', uri => 'uri')")
    code, out, err = run(capsys, dsn, "source", "sync", "files", (root / "docs2").as_uri())
    assert code == 0 and "1 new" in out, err
    for prefix in [(root / "docs").as_uri(), (root / "docs").as_uri() + "/"]:
        code, out, err = run(capsys, dsn, "source", "sync", "files", prefix, "--dry-run")
        assert code == 0 and "0 vanished" in out and "vanished  " not in out, err
        code, out, err = run(capsys, dsn, "source", "sync", "files", prefix)
        assert code == 0 and "0 vanished" in out, err
    rows = [r[0] for r in conn.execute("SELECT uri FROM public.files ORDER BY uri")]
    assert rows == [(root / "docs" / "a.md").as_uri(), (root / "docs2" / "b.md").as_uri()]
    # A vanished file under the prefix still goes; its sibling's row stays.
    (root / "docs" / "a.md").unlink()
    code, out, err = run(capsys, dsn, "source", "sync", "files", (root / "docs").as_uri())
    assert code == 0 and "1 vanished" in out, err
    rows = [r[0] for r in conn.execute("SELECT uri FROM public.files ORDER BY uri")]
    assert rows == [(root / "docs2" / "b.md").as_uri()]


@pytest.mark.parametrize("fault", ["scandir", "lstat"])
def test_a_listing_error_never_deletes_what_was_not_seen(
    model: psycopg.Connection[Any],
    dsn: str,
    raw_env: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """Review bug 16: a directory that cannot be read (os.walk without onerror) or a file whose
    lstat fails (EIO on a flaky mount) was skipped silently, and the sync deleted its rows.
    Second review: then the whole sync stopped (a volume root with its root-owned lost+found
    never synced as another user); now the rest is synced, a warning names what was not listed,
    its rows stay, the exit status is 0. The prefix itself unreadable stops the sync.
    (The tests run as root, which reads any directory: the fault is injected into os.)"""
    import errno
    import os

    conn = model
    root = tmp_path / "root"
    for sub, name in [("a", "1.md"), ("b", "2.md")]:
        (root / sub).mkdir(parents=True)
        (root / sub / name).write_text(f"# {name}\n\ntext\n")
    conn.execute("SELECT pgingest.allow_raw_location('root', %s)", (str(root),))
    conn.execute("CREATE TABLE public.files (uri text PRIMARY KEY)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', uri => 'uri')")
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "2 new" in out, err
    rows = [r[0] for r in conn.execute("SELECT uri FROM public.files ORDER BY uri")]
    (root / "a" / "1.md").unlink()  # a real deletion: applied
    (root / "a" / "3.md").write_text("# 3\n\ntext\n")  # a new file: inserted

    if fault == "scandir":
        real_scandir = os.scandir

        def scandir(path: Any = ".") -> Any:
            if str(path).rstrip("/").endswith("/root/b"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        real_lstat = os.lstat

        def lstat(path: Any, *args: Any, **kw: Any) -> Any:
            if str(path).endswith("/b/2.md"):
                raise OSError(errno.EIO, "Input/output error", str(path))
            return real_lstat(path, *args, **kw)

        monkeypatch.setattr(os, "lstat", lstat)
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    unseen = (root / "b").as_uri() if fault == "scandir" else (root / "b" / "2.md").as_uri()
    assert code == 0 and "1 new" in out and "1 vanished" in out, (out, err)
    assert "warning: 1 paths could not be listed" in err and unseen in err, err
    assert [r[0] for r in conn.execute("SELECT uri FROM public.files ORDER BY uri")] == [
        (root / "a" / "3.md").as_uri(),
        rows[1],  # b/2.md: not seen, kept
    ]
    # The prefix itself unreadable: the sync stops, nothing changes.
    if fault == "scandir":
        (root / "b" / "2.md").unlink()
        code, out, err = run(capsys, dsn, "source", "sync", "files", (root / "b").as_uri())
        assert code != 0 and "cannot list" in err and "nothing was inserted" in err, (out, err)
        assert len(conn.execute("SELECT uri FROM public.files").fetchall()) == 2
    monkeypatch.undo()
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "warning" not in err, err


def test_an_object_whose_last_fetch_failed_is_requeued_only_when_changed(
    model: psycopg.Connection[Any],
    dsn: str,
    fake: FakeEmbeddingServer,
    raw_env: str,
    fixture_files: tuple[Path, dict[str, Expected]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review bug 17: a failure recorded no sha256 or validators, and sync skipped rows without a
    sha256 ("not fetched yet"): a dead-lettered object fixed since was never re-checked. Second
    review: then every sync re-queued every broken object left as it was (a failure recorded no
    validators); a failure after the fetch now records the fetched object's validators, and a
    sync finds it unchanged until it changes."""
    import os

    conn = model
    root = tmp_path / "root"
    root.mkdir()
    doc = root / "report.pdf"
    doc.write_bytes(b"%PDF-1.4\n1 0 obj\n<<")  # truncated: parse_error, dead-lettered
    conn.execute("SELECT pgingest.allow_raw_location('root', %s)", (str(root),))
    conn.execute("CREATE TABLE public.files (uri text PRIMARY KEY)")
    conn.execute("SELECT pgingest.add_source('files', 'public.files', uri => 'uri')")
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "1 new" in out, err
    _drain(dsn)
    assert _state(conn, "files") == {doc.as_uri(): "parse_error"}

    # Still there, still broken, unchanged since the failed fetch: not re-queued.
    for _ in range(2):
        code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
        assert code == 0 and "0 changed, 1 unchanged" in out, err
        assert queue_count(conn, "v1") == 0

    # Fixed: the next sync re-queues it, the worker embeds it, the sync after finds it unchanged.
    doc.write_bytes((fixture_files[0] / "multipage.pdf").read_bytes())
    st = doc.stat()
    os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "1 changed, 0 unchanged" in out, err
    _drain(dsn)
    assert _state(conn, "files") == {doc.as_uri(): "embedded"}
    code, out, err = run(capsys, dsn, "source", "sync", "files", root.as_uri())
    assert code == 0 and "0 changed, 1 unchanged" in out, err
    assert queue_count(conn, "v1") == 0
