"""Parsers alone, on the raw-document fixture set (tests/fixtures/raw/generate.py): text quality
and speed of each candidate backend, documents per second through the isolating pool, and the
peak RSS of the pool's child while a generated 200-page PDF is parsed.

    .venv/bin/python bench/parse.py [--repeat 20] [--pages 200] [--json out.json]

Standalone (not part of ``bench/run.py``); docs/raw-documents.md reports its figures. Quality:
word recall against the text the generator wrote (case-folded, punctuation stripped), the heading
paths found, whether each table row comes out on one line in order, and for HTML the navigation
words that leaked. No database, no network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.raw.generate import (  # noqa: E402
    DOCX_TABLE,
    TABLE_ROWS,
    Expected,
    build_fixtures,
    large_pdf,
)

from pgingest.raw import detect, parse  # noqa: E402
from pgingest.raw.errors import RawDocumentError  # noqa: E402


def _words(text: str) -> list[str]:
    return [w for w in (t.strip(".,;:!?()[]*|#`'\"").casefold() for t in text.split()) if w]


def _quality(doc: parse.ParsedDocument, exp: Expected) -> dict[str, Any]:
    got = set(_words(doc.text()))
    want = set(_words(" ".join(exp.words)))
    heads = [b.heading_path for b in doc.blocks if b.kind == "heading"]
    out: dict[str, Any] = {
        "recall": round(len(want & got) / len(want), 3) if want else None,
        "extra_words": len(got - want),
        "headings_ok": (heads == exp.headings) if exp.headings else None,
    }
    if exp.absent:
        out["chrome_leaked"] = sum(1 for w in exp.absent if w.casefold() in doc.text().casefold())
    rows: list[Any] = {"table.pdf": TABLE_ROWS, "handbook.docx": DOCX_TABLE}.get(exp.name, [])
    if rows:
        lines = [" ".join(line.split()) for line in doc.text().splitlines()]
        out["table_rows_on_one_line"] = sum(
            1
            for row in rows
            if any(re.search(r"[\s|]+".join(map(re.escape, row)), line) for line in lines)
        )
    return out


def _time(fn: Any, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare_backends(folder: Path, expected: dict[str, Expected], repeat: int) -> dict[str, Any]:
    """Each candidate in this process, on the files of its format."""
    results: dict[str, Any] = {}
    candidates = [
        ("pdf", "pypdfium2", parse.ParseOptions(pdf_backend="pypdfium2")),
        ("pdf", "pypdf", parse.ParseOptions(pdf_backend="pypdf")),
        ("html", "trafilatura", parse.ParseOptions(html_backend="trafilatura")),
        ("html", "bs4", parse.ParseOptions(html_backend="bs4")),
        ("docx", "python-docx", parse.ParseOptions(docx_backend="python-docx")),
        ("docx", "mammoth", parse.ParseOptions(docx_backend="mammoth")),
    ]
    mimes = {"pdf": detect.PDF, "html": detect.HTML, "docx": detect.DOCX}
    for fmt, name, options in candidates:
        mime = mimes[fmt]
        per_file: dict[str, Any] = {}
        for fname, exp in expected.items():
            if exp.mime != mime:
                continue
            data = (folder / fname).read_bytes()

            def run(
                data: bytes = data, options: parse.ParseOptions = options, mime: str = mime
            ) -> Any:
                try:
                    return parse.parse_bytes(data, mime, options)
                except RawDocumentError as exc:
                    return exc

            got = run()
            entry: dict[str, Any] = {"ms": round(_time(run, repeat) * 1000, 2)}
            if isinstance(got, RawDocumentError):
                entry["error"] = got.error_class
                entry["error_ok"] = got.error_class == exp.error
            else:
                entry.update(_quality(got, exp))
            per_file[fname] = entry
        results[f"{fmt}:{name}"] = per_file
    return results


def large_pdf_speed(data: bytes, repeat: int) -> dict[str, Any]:
    out = {}
    for backend in ("pypdfium2", "pypdf"):
        options = parse.ParseOptions(pdf_backend=backend, max_pages=10_000)
        seconds = _time(lambda o=options: parse.parse_bytes(data, detect.PDF, o), repeat)
        pages = parse.parse_bytes(data, detect.PDF, options).pages or 0
        out[backend] = {"seconds": round(seconds, 3), "pages_per_s": round(pages / seconds, 1)}
    return out


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def pool_figures(
    folder: Path, expected: dict[str, Expected], big: bytes, repeat: int
) -> dict[str, Any]:
    """Docs per second through ParsePool (child processes) vs in-process, and the child's peak
    RSS (VmHWM) while the large PDF is parsed, per backend."""
    items = [((folder / n).read_bytes(), e.mime or detect.TEXT) for n, e in expected.items()]
    docs = items * repeat
    out: dict[str, Any] = {"documents": len(docs)}

    t = time.perf_counter()
    for data, mime in docs:
        with contextlib.suppress(RawDocumentError):
            parse.parse_bytes(data, mime)
    out["in_process_docs_per_s"] = round(len(docs) / (time.perf_counter() - t), 1)

    for size in (1, 2):
        with parse.ParsePool(size) as pool:
            list(pool.map(items))  # start and warm the children
            t = time.perf_counter()
            results = list(pool.map(docs))
            elapsed = time.perf_counter() - t
        out[f"pool{size}_docs_per_s"] = round(len(docs) / elapsed, 1)
        out[f"pool{size}_failures"] = sum(isinstance(r, RawDocumentError) for r in results)

    t = time.perf_counter()
    with parse.ParsePool(1) as pool:
        pool.parse(items[0][0], items[0][1])
    out["child_start_s"] = round(time.perf_counter() - t, 3)

    for backend in ("pypdfium2", "pypdf"):
        options = parse.ParseOptions(pdf_backend=backend, max_pages=10_000, timeout_s=300)
        with parse.ParsePool(1, options, recycle_after=10**6) as pool:
            pool.parse(items[0][0], items[0][1])  # warm: imports done
            [pid] = pool.child_pids
            idle = _vm(pid, "VmHWM")
            t = time.perf_counter()
            doc = pool.parse(big, detect.PDF)
            seconds = time.perf_counter() - t
            peak = _vm(pid, "VmHWM")
        out[f"rss_{backend}"] = {
            "pages": doc.pages,
            "seconds_in_pool": round(seconds, 3),
            "child_peak_rss_mib_before": round(idle / 2**20, 1),
            "child_peak_rss_mib": round(peak / 2**20, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        expected = build_fixtures(folder)
        big = large_pdf(args.pages)
        figures = {
            "backends": compare_backends(folder, expected, args.repeat),
            "large_pdf": large_pdf_speed(big, max(1, args.repeat // 10)),
            "pool": pool_figures(folder, expected, big, args.repeat),
        }
    for key, per_file in figures["backends"].items():
        print(f"== {key}")
        for fname, entry in per_file.items():
            print(f"  {fname:16} {json.dumps(entry)}")
    print(f"== large PDF ({args.pages} pages), in process")
    for backend, entry in figures["large_pdf"].items():
        print(f"  {backend:10} {json.dumps(entry)}")
    print("== pool")
    for key, value in figures["pool"].items():
        print(f"  {key:24} {json.dumps(value)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
