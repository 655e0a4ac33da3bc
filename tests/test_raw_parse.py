"""The fixture set through detection and the parse pool (a child process per slot, with its
limits): each file parses to text with page numbers and heading paths, or fails with its class.
A parser that hangs, allocates without bound or crashes is killed at its limit, and the pool
goes on with the next document."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgingest.raw import detect, parse
from pgingest.raw.errors import RawDocumentError
from tests.fixtures.raw.generate import Expected, build_fixtures, large_pdf

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    folder = tmp_path_factory.mktemp("raw")
    return folder, build_fixtures(folder)


@pytest.fixture(scope="module")
def pool() -> Iterator[parse.ParsePool]:
    with parse.ParsePool(2, parse.ParseOptions(timeout_s=20, memory_bytes=1 << 30)) as p:
        yield p


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?()[]*|#`'\"").casefold() for w in text.split()} - {""}


FIXTURE_NAMES = [
    "multipage.pdf",
    "table.pdf",
    "scan.pdf",
    "encrypted.pdf",
    "truncated.pdf",
    "empty.pdf",
    "handbook.docx",
    "page.html",
    "guide.md",
    "latin1.txt",
    "README",
]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture(
    name: str, fixtures: tuple[Path, dict[str, Expected]], pool: parse.ParsePool
) -> None:
    folder, expected = fixtures
    exp = expected[name]
    data = (folder / name).read_bytes()
    if exp.error is not None:
        with pytest.raises(RawDocumentError) as err:
            parse.parse_document(data, name=name, pool=pool)
        assert err.value.error_class == exp.error
        assert err.value.permanent
        return
    doc = parse.parse_document(data, name=name, pool=pool)
    assert doc.mime == exp.mime
    missing = _words(" ".join(exp.words)) - _words(doc.text())
    assert not missing
    for word in exp.absent:
        assert word.casefold() not in doc.text().casefold()
    headings = [b.heading_path for b in doc.blocks if b.kind == "heading"]
    if exp.headings:
        assert headings == exp.headings
    assert doc.pages == exp.pages
    for phrase, page in exp.page_of.items():
        [block] = [b for b in doc.blocks if b.kind == "text" and phrase in b.text]
        assert block.page == page, phrase
    if exp.pages:
        assert {b.page for b in doc.blocks} == set(range(1, exp.pages + 1))


def test_the_file_without_extension_and_latin1_decode(
    fixtures: tuple[Path, dict[str, Expected]], pool: parse.ParsePool
) -> None:
    folder, _ = fixtures
    doc = parse.parse_document((folder / "latin1.txt").read_bytes(), name="latin1.txt", pool=pool)
    assert "crème brûlée" in doc.text()
    doc = parse.parse_document((folder / "README").read_bytes(), name="file:///x/README", pool=pool)
    assert doc.mime == "text/plain"


@pytest.mark.parametrize("backend", ["pypdf", "pypdfium2"])
def test_both_pdf_backends_keep_pages_and_headings(
    backend: str, fixtures: tuple[Path, dict[str, Expected]]
) -> None:
    folder, expected = fixtures
    data = (folder / "multipage.pdf").read_bytes()
    doc = parse.parse_bytes(data, detect.PDF, parse.ParseOptions(pdf_backend=backend))
    assert doc.parser == backend
    assert [b.heading_path for b in doc.blocks if b.kind == "heading"] == (
        expected["multipage.pdf"].headings
    )
    for name in ("encrypted.pdf", "truncated.pdf", "scan.pdf"):
        with pytest.raises(RawDocumentError) as err:
            parse.parse_bytes(
                (folder / name).read_bytes(), detect.PDF, parse.ParseOptions(pdf_backend=backend)
            )
        assert err.value.error_class == expected[name].error, (backend, name)


@pytest.mark.parametrize("backend", ["trafilatura", "bs4"])
def test_both_html_backends_drop_the_chrome(
    backend: str, fixtures: tuple[Path, dict[str, Expected]]
) -> None:
    folder, expected = fixtures
    doc = parse.parse_bytes(
        (folder / "page.html").read_bytes(), detect.HTML, parse.ParseOptions(html_backend=backend)
    )
    exp = expected["page.html"]
    assert [b.heading_path for b in doc.blocks if b.kind == "heading"] == exp.headings
    for word in exp.absent:
        assert word.casefold() not in doc.text().casefold(), (backend, word)


def test_the_page_cap() -> None:
    data = large_pdf(25)
    with parse.ParsePool(1, parse.ParseOptions(max_pages=20)) as p:
        with pytest.raises(RawDocumentError) as err:
            p.parse(data, detect.PDF)
        assert err.value.error_class == "too_large"
    doc = parse.parse_bytes(data, detect.PDF, parse.ParseOptions(max_pages=25))
    assert doc.pages == 25


def test_a_hanging_parser_is_killed_at_its_timeout_and_the_pool_goes_on(
    fixtures: tuple[Path, dict[str, Expected]],
) -> None:
    folder, _ = fixtures
    md = (folder / "guide.md").read_bytes()
    with parse.ParsePool(1, parse.ParseOptions(timeout_s=2)) as p:
        assert p.parse(md, detect.MARKDOWN).blocks
        first_pid = p.child_pids[0]
        started = time.monotonic()
        with pytest.raises(RawDocumentError) as err:
            p.parse(b"x", detect.TEXT, test_hook="hang")
        elapsed = time.monotonic() - started
        assert err.value.error_class == "timeout" and err.value.permanent
        assert 2 <= elapsed < 10
        assert p.child_pids == []  # killed
        assert p.parse(md, detect.MARKDOWN).blocks  # a fresh child
        assert p.child_pids and p.child_pids[0] != first_pid


def test_a_parser_allocating_without_bound_is_stopped_at_the_memory_limit(
    fixtures: tuple[Path, dict[str, Expected]],
) -> None:
    folder, _ = fixtures
    md = (folder / "guide.md").read_bytes()
    with parse.ParsePool(1, parse.ParseOptions(timeout_s=30, memory_bytes=600 << 20)) as p:
        with pytest.raises(RawDocumentError) as err:
            p.parse(b"x", detect.TEXT, test_hook="alloc")
        assert err.value.error_class == "oom"
        assert p.parse(md, detect.MARKDOWN).blocks


def test_a_crashing_parser_costs_its_document_only(
    fixtures: tuple[Path, dict[str, Expected]],
) -> None:
    folder, _ = fixtures
    md = (folder / "guide.md").read_bytes()
    with parse.ParsePool(1) as p:
        with pytest.raises(RawDocumentError) as err:
            p.parse(b"x", detect.TEXT, test_hook="crash")
        assert err.value.error_class == "parse_error" and "SIGSEGV" in str(err.value)
        assert p.parse(md, detect.MARKDOWN).blocks


def test_submit_returns_futures_in_a_pool_of_its_own_size(
    fixtures: tuple[Path, dict[str, Expected]],
) -> None:
    folder, expected = fixtures
    items = [((folder / n).read_bytes(), expected[n].mime or "") for n in FIXTURE_NAMES]
    with parse.ParsePool(2) as p:
        results = list(p.map(items))
        assert len(p.child_pids) <= 2
    errors = {
        n: r.error_class
        for n, r in zip(FIXTURE_NAMES, results, strict=True)
        if isinstance(r, RawDocumentError)
    }
    assert errors == {n: e.error for n, e in expected.items() if e.error}


def test_unknown_test_hooks_are_refused() -> None:
    with parse.ParsePool(1) as p, pytest.raises(ValueError):
        p.parse(b"x", detect.TEXT, test_hook="rm -rf")


@pytest.mark.parametrize("backend", ["python-docx", "mammoth"])
def test_both_docx_backends_keep_headings_and_table_rows(
    backend: str, fixtures: tuple[Path, dict[str, Expected]]
) -> None:
    folder, expected = fixtures
    doc = parse.parse_bytes(
        (folder / "handbook.docx").read_bytes(),
        detect.DOCX,
        parse.ParseOptions(docx_backend=backend),
    )
    assert doc.parser == backend
    exp = expected["handbook.docx"]
    assert [b.heading_path for b in doc.blocks if b.kind == "heading"] == exp.headings
    [table_block] = [b for b in doc.blocks if "throttled" in b.text]
    assert table_block.heading_path == ("Handbook", "Operating")
    row = next(line for line in table_block.text.splitlines() if "throttled" in line)
    assert row.index("throttled") < row.index("always")


def test_an_asyncio_loop_is_not_blocked_while_a_parse_runs() -> None:
    import asyncio

    async def main(pool: parse.ParsePool) -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            await asyncio.wrap_future(pool.submit(b"x", detect.TEXT, test_hook="hang"))
        except RawDocumentError as exc:
            error_class = exc.error_class
        finally:
            task.cancel()
        return ticks, error_class

    with parse.ParsePool(1, parse.ParseOptions(timeout_s=1.5)) as p:
        ticks, error_class = asyncio.run(main(p))
    assert error_class == "timeout"
    assert ticks >= 15  # the loop ran all along (1.5 s / 0.05 s = 30 at best)
