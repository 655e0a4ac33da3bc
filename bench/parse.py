"""Parsers alone, on the raw-document fixture set (tests/fixtures/raw/generate.py): text quality
and speed of each candidate backend, documents per second through the isolating pool, and the
peak RSS of the pool's child while a generated 200-page PDF is parsed.

    .venv/bin/python bench/parse.py [--repeat 20] [--pages 200] [--json out.json]

Standalone; docs/raw-documents.md reports its figures. ``bench_parse`` is ``make bench``'s
``parse`` case (``python -m bench.run --only parse``): ``parse_efficiency`` and
``parse_peak_rss_mib``. Quality:
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
    GOOD,
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


# --------------------------------------------------------------------------- make bench: parse


def _mix(folder: Path, copies: int, pdf_pages: int) -> list[tuple[str, bytes]]:
    """The 7 good fixtures and one ``pdf_pages``-page PDF per copy, each copy's bytes distinct
    (a trailing line; a PDF comment after %%EOF) except the DOCX: a realistic mix where the
    parsers' cost is a real share, not only tiny files."""
    big = large_pdf(pdf_pages)
    files = []
    for c in range(copies):
        tail = b"\n" * (c + 1)
        for n in GOOD:
            data = (folder / n).read_bytes()
            if n.endswith(".pdf"):
                data += b"\n%% copy %d\n" % c
            elif not n.endswith(".docx"):
                data += tail
            files.append((f"{c}-{n}", data))
        files.append((f"{c}-long.pdf", big + b"\n%% copy %d\n" % c))
    return files


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children (the parse pool's, once closed)."""
    import resource

    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _children_cpu(pids: list[int]) -> float:
    """CPU seconds the live processes ``pids`` spent so far (a parse pool's children)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _parsers_alone(items: list[tuple[bytes, str]], processes: int) -> float:
    """Seconds for ``items`` through a warm ``ParsePool(processes)`` (the worker's pool)."""
    with parse.ParsePool(processes) as pool:
        pool.start()
        list(pool.map(items[: processes * 2]))  # children started and warm
        t = time.perf_counter()
        results = list(pool.map(items))
        seconds = time.perf_counter() - t
    bad = [r for r in results if isinstance(r, RawDocumentError)]
    if bad:
        raise RuntimeError(f"{len(bad)} fixture documents failed to parse: {bad[0]}")
    return seconds


def _through_worker(
    conn: Any,
    dsn: str,
    files: list[tuple[str, bytes]],
    processes: int,
    cpu: dict[str, float],
    fake_pid: int | None = None,
) -> float:
    """Seconds for ``pgingest.worker.Worker(--drain)`` in this process over a bytea source of
    ``files``: fetch (read), detect, parse in the pool, chunk, embed (fake), write back. ``cpu``
    gets the CPU seconds of the worker process, of its parse children (their start excluded),
    of the database's backends and of the fake embedder's process (``fake_pid``)."""
    from bench.common import BackendCpu
    from pgingest import worker

    with conn.cursor() as cur:
        cur.executemany("INSERT INTO public.blobs VALUES (%s, %s)", files)
    settings = worker.WorkerSettings(
        conninfo=dsn,
        drain=True,
        install_signal_handlers=False,
        poll_interval=0.2,
        parse_processes=processes,
        heartbeat=False,
    )
    w = worker.Worker(settings)
    # Steady state, as the parsers alone are measured: the worker's parse children started
    # (a running worker's are; their start, 0.3-3 s on this loaded machine, is a one-off).
    w.raw.pool().start()
    started_cpu = _children_cpu(w.raw.pool().child_pids)  # their imports: not the parses'
    self0, kids0 = _cpu()
    fake0 = _children_cpu([fake_pid]) if fake_pid is not None else 0.0
    with BackendCpu(dsn) as backends:
        t = time.perf_counter()
        code = w.run()
        seconds = time.perf_counter() - t
    self1, kids1 = _cpu()
    cpu["worker_process_cpu_s"] = round(self1 - self0, 3)
    cpu["parse_children_cpu_s"] = round(kids1 - kids0 - started_cpu, 3)
    cpu["database_cpu_s"] = backends.seconds()
    if fake_pid is not None:
        cpu["fake_embedder_cpu_s"] = round(_children_cpu([fake_pid]) - fake0, 3)
    if code != 0:
        raise RuntimeError(f"the worker exited with {code}")
    return seconds


def _peak_rss(dsn: str, log_path: Path, processes: int) -> dict[str, Any]:
    """``pgingest worker --drain`` (a subprocess) over a source holding only the 200-page PDF:
    the peak RSS of the worker with its parse children (sum over the process tree), sampled
    every 10 ms, and of the worker process alone."""
    import threading

    import psutil

    from bench.common import start_worker

    child, fh = start_worker(dsn, log_path, "--drain", "--parse-processes", str(processes))
    me = psutil.Process(child.proc.pid)
    peak = {"tree": 0, "worker": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                own = me.memory_info().rss
                total = own
                for ch in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += ch.memory_info().rss
            except psutil.Error:
                return
            peak["worker"] = max(peak["worker"], own)
            peak["tree"] = max(peak["tree"], total)
            time.sleep(0.01)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        res = child.wait(300)
    finally:
        stop.set()
        th.join()
        fh.close()
    if res.rc != 0:
        raise RuntimeError(f"worker exited with {res.rc}")
    return {
        "parse_peak_rss_mib": round(peak["tree"] / 2**20, 1),
        "parse_peak_rss_worker_process_mib": round(peak["worker"] / 2**20, 1),
    }


def bench_parse(
    url: str,
    workdir: Path,
    copies: int = 12,
    pdf_pages: int = 20,
    processes: int = 2,
    rounds: int = 3,
    spare_rounds: int = 2,
) -> dict[str, Any]:
    """``make bench``'s parse case: documents per second through the worker (bytea source,
    fake embedder, ``processes`` parse processes) over documents per second of the parsers alone
    (a warm ``ParsePool(processes)``) on the same files, in this run: ``parse_efficiency``
    (target >= 0.8). ``rounds`` rounds, the parsers alone timed before the first and after each
    worker run; a round's ratio takes the mean of the parsers' runs on either side of it, and
    ``parse_efficiency`` is the median of the rounds' (the machine's load drifts). Each round's
    rows have their own keys and titles (the titles are in the model's input: no cache hit
    across rounds). ``pipeline_parse_cpu_share``: the parse children's CPU over the CPU of the
    children, the worker process, the database's backends and the fake embedder in the last
    round; where the cores are all busy it bounds ``parse_efficiency``. Then
    ``spare_rounds`` rounds with one parse process against the parsers alone in one:
    ``parse_efficiency_one_process``. Then ``parse_peak_rss_mib`` while a 200-page PDF is
    parsed."""
    import psycopg

    from bench.common import fake_server, fresh_database, log, register_model

    folder = workdir / "parse-fixtures"
    folder.mkdir(exist_ok=True)
    build_fixtures(folder)
    files = _mix(folder, copies, pdf_pages)
    items = [(d, detect.detect_type(d, name=n)) for n, d in files]
    out: dict[str, Any] = {
        "documents": len(files),
        "bytes": sum(len(d) for _, d in files),
        "pdf_pages_per_long_pdf": pdf_pages,
        "parse_processes": processes,
    }
    alone_runs = [_parsers_alone(items, processes)]
    through_runs: list[float] = []
    with fake_server(("fake-384=384",)) as (base, fake), fresh_database(url, "parse") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_model(conn, "v1", "fake-384", 384, base)
            conn.execute("CREATE TABLE public.blobs (name text PRIMARY KEY, data bytea)")
            conn.execute(
                "SELECT pgingest.add_source('blobs', 'public.blobs', content => 'data',"
                " title => 'name')"
            )
            # warm-up: imports, the tokenizer's vocabulary, the first connections
            cpu: dict[str, float] = {}
            _through_worker(conn, dsn, [(f"warm-{n}", d) for n, d in files[:8]], processes, cpu)
            for r in range(rounds):
                mine = [(f"r{r}-{n}", d) for n, d in files]
                through_runs.append(_through_worker(conn, dsn, mine, processes, cpu, fake.proc.pid))
                alone_runs.append(_parsers_alone(items, processes))
            # The same with one parse process against one (the pipeline's loop, the database and
            # the embedder then have a core of their own on a 2-core machine): how much of the
            # gap above is the pipeline's own waiting, how much the CPU the cores share.
            one_alone = [_parsers_alone(items, 1)]
            one_through: list[float] = []
            one_cpu: dict[str, float] = {}
            for r in range(spare_rounds):
                mine = [(f"s{r}-{n}", d) for n, d in files]
                one_through.append(_through_worker(conn, dsn, mine, 1, one_cpu, fake.proc.pid))
                one_alone.append(_parsers_alone(items, 1))
            row = conn.execute(
                "SELECT count(*) FROM pgingest.embedding_state WHERE model = 'v1'"
            ).fetchone()
            embedded = int(row[0]) - 8 if row else 0
            if embedded != len(files) * (rounds + spare_rounds):
                raise RuntimeError(
                    f"{embedded} of {len(files) * (rounds + spare_rounds)} documents embedded"
                )
            conn.execute("TRUNCATE public.blobs")
            big = large_pdf(200)
            conn.execute("INSERT INTO public.blobs VALUES ('big.pdf', %s)", (big,))
        out.update(_peak_rss(dsn, workdir / "parse-rss-worker.log", processes))
    ratios = [(alone_runs[r] + alone_runs[r + 1]) / 2 / through_runs[r] for r in range(rounds)]
    alone, through = statistics.median(alone_runs), statistics.median(through_runs)
    out["parsers_alone_s"] = [round(x, 3) for x in alone_runs]
    out["parsers_alone_docs_per_s"] = round(len(files) / alone, 1)
    out["pipeline_s"] = [round(x, 3) for x in through_runs]
    out["pipeline_docs_per_s"] = round(len(files) / through, 1)
    out["parse_efficiency_rounds"] = [round(x, 3) for x in ratios]
    out["parse_efficiency"] = round(statistics.median(ratios), 3)
    # Where the CPU went in the last round (the machine's cores are shared: on 2 cores the
    # pipeline is CPU-bound, and parse CPU over all CPU bounds parse_efficiency there).
    out.update(cpu)
    total = sum(cpu.values())
    out["pipeline_parse_cpu_share"] = (
        round(cpu["parse_children_cpu_s"] / total, 3) if total else None
    )
    one = [(one_alone[r] + one_alone[r + 1]) / 2 / one_through[r] for r in range(spare_rounds)]
    out["one_process"] = {
        "parsers_alone_s": [round(x, 3) for x in one_alone],
        "pipeline_s": [round(x, 3) for x in one_through],
        "rounds": [round(x, 3) for x in one],
        **one_cpu,
    }
    out["parse_efficiency_one_process"] = round(statistics.median(one), 3) if one else None
    log(
        f"parse: {len(files)} documents, parsers alone {out['parsers_alone_docs_per_s']} doc/s,"
        f" through the worker {out['pipeline_docs_per_s']} doc/s:"
        f" parse_efficiency {out['parse_efficiency']} (parse CPU share"
        f" {out['pipeline_parse_cpu_share']}; one process against one:"
        f" {out['parse_efficiency_one_process']}); peak RSS {out['parse_peak_rss_mib']} MiB"
    )
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
