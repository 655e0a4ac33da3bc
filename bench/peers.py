"""``make bench-peers``: pgingest against pgai's vectorizer worker, same run, same machine.

    .venv/bin/python bench/peers.py [--docs 20000] [--pgai-version 0.12.1] [--reinstall]

1. Installs pgai from PyPI into its own virtual environment, ``.cache/pgai-venv`` (ignored by
   git). pgai's ``vectorizer-worker`` extra pulls docling and with it torch and CUDA wheels
   (~6.8 GB) that the worker never loads for text columns; so this installs ``pgai`` without the
   extra, plus the extra's requirements that the worker imports on the path measured here
   (column loading, recursive character splitter, OpenAI-compatible embedder), read from the
   wheel's ``Requires-Dist`` (``pip download --no-deps pgai``): everything in the extra except
   ``EXCLUDED`` below.
2. Runs, in two fresh databases on ``$DATABASE_URL``'s server, with one fake embedding server
   (``python -m pgingest.testing.fake_provider``, 768 dimensions) and the same synthetic documents (1,000
   to 3,000 characters):

   * pgingest: ``pgingest worker --drain``, chunks of at most ~800 characters (heuristic
     tokenizer, 267 tokens of 3 bytes, no overlap), base64 vectors;
   * pgai: ``pgai vectorizer worker --once``, ``chunking_recursive_character_text_splitter(800,
     0)``, ``processing_default(batch_size => 200, concurrency => 1)`` (the best settings
     measured in issue 7), ``embedding_openai('text-embedding-3-small', 768, base_url => fake)``
     (pgai asks for JSON floats and tokenizes with tiktoken for OpenAI model names; its worker
     needs ``TIKTOKEN_CACHE_DIR`` pointed at the cache it ships, or it tries to download).

3. Prints documents/s, chunks/s, worker CPU seconds per document and peak RSS side by side with
   the ratios, and adds ``throughput_vs_pgai`` and ``rss_vs_pgai`` (plus the raw figures under
   ``peers``) to bench-results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/peers.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.common import (
    ROOT,
    BackendCpu,
    BenchError,
    Child,
    MachineLoad,
    copy_documents,
    drop_stale_databases,
    fake_server,
    fresh_database,
    log,
    ratio,
    retrying,
    server_url,
    synthetic_docs,
    tail,
    write_results,
)

PGAI_VERSION = "0.12.1"
VENV = ROOT / ".cache" / "pgai-venv"
DOWNLOADS = ROOT / ".cache" / "pgai-download"
EXTRA = "vectorizer-worker"
# In pgai's vectorizer-worker extra but not imported by the worker on the measured path (text
# column, recursive character splitter, OpenAI embedder): documents (docling, pymupdf4llm,
# S3/URI loading), other providers (litellm, ollama, voyageai, mistral, Vertex AI).
EXCLUDED = {
    "docling": "document parsing (PDF, DOCX...): pulls torch and CUDA wheels",
    "pymupdf4llm": "document parsing",
    "boto3": "loading_uri from S3",
    "boto3-stubs": "type stubs",
    "smart-open": "loading_uri",
    "google-cloud-aiplatform": "Vertex AI through litellm",
    "litellm": "embedding_litellm",
    "mistral-common": "Mistral through litellm",
    "ollama": "embedding_ollama",
    "voyageai": "embedding_voyageai",
}
# Imported at module level by pgai.vectorizer.embedders.voyageai (which the worker imports
# whatever the provider) and lazily by the vectorizer; voyageai/docling would bring them.
ADDED = ["tokenizers", "numpy"]
PGAI_MODEL = "text-embedding-3-small"  # an OpenAI name: pgai tokenizes it with tiktoken
DIMS = 768


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def worker_requirements(wheel: Path) -> tuple[list[str], list[str]]:
    """(requirements to install, excluded ones) from the wheel's METADATA: the extra's
    ``Requires-Dist`` entries minus ``EXCLUDED``, their other markers kept for pip."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    keep: list[str] = []
    skipped: list[str] = []
    extra_re = re.compile(r"""\s*(and\s+)?extra\s*==\s*["']([^"']+)["']\s*(and\s+)?""")
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        spec, _, marker = req.partition(";")
        m = extra_re.search(marker)
        if not m or m.group(2) != EXTRA:
            continue
        name = _norm(re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0])
        if name in EXCLUDED:
            skipped.append(spec.strip())
            continue
        rest = extra_re.sub(" ", marker).strip()  # other conditions stay: pip evaluates them
        keep.append(f"{spec.strip()}; {rest}" if rest else spec.strip())
    return keep, skipped


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _pgai_ok(version: str) -> bool:
    py = _venv_python()
    if not py.exists():
        return False
    probe = (
        "import importlib.metadata as m, pgai.vectorizer, openai, tiktoken, "
        "langchain_text_splitters; print(m.version('pgai'))"
    )
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == version


def ensure_pgai(version: str, reinstall: bool = False) -> dict[str, Any]:
    """The pgai virtualenv (created once, reused while it imports and has ``version``)."""
    if not reinstall and _pgai_ok(version):
        log(f"pgai {version}: reusing {VENV.relative_to(ROOT)}")
        return {"installed": False}
    t0 = time.perf_counter()
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    pip_q = ["-q", "--disable-pip-version-check"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", *pip_q, "--no-deps", f"pgai=={version}"]
        + ["-d", str(DOWNLOADS)],
        check=True,
    )
    wheel = next(DOWNLOADS.glob(f"pgai-{version}-*.whl"))
    keep, skipped = worker_requirements(wheel)
    log(f"pgai {version}: worker requirements {keep}; left out {skipped}")
    if reinstall and VENV.exists():
        import shutil

        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(_venv_python()), "-m", "pip", "install", *pip_q, str(wheel), *keep, *ADDED],
        check=True,
    )
    if not _pgai_ok(version):
        raise BenchError("pgai installed but does not import (see the pip output above)")
    seconds = time.perf_counter() - t0
    log(f"pgai {version}: installed in {seconds:.0f} s")
    return {"installed": True, "seconds": round(seconds, 1), "requirements": keep}


def tiktoken_cache_dir() -> str:
    out = subprocess.run(
        [
            str(_venv_python()),
            "-c",
            "import os, pgai; print(os.path.join(os.path.dirname(pgai.__file__),"
            " 'vectorizer', 'tiktoken_cache'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    path = out.stdout.strip()
    if not Path(path).is_dir():
        raise BenchError(f"pgai's tiktoken cache is not at {path}")
    return path


def run_pgai(
    url: str,
    docs: list[tuple[str, str, str]],
    fake: tuple[str, Child],
    workdir: Path,
    batch_size: int,
    concurrency: int,
) -> dict[str, Any]:
    fake_url, fake_child = fake
    n = len(docs)
    with fresh_database(url, "pgai", install_pgingest=False) as dsn:
        subprocess.run(
            [str(_venv_python()), "-c", "import pgai, sys; pgai.install(sys.argv[1])", dsn],
            check=True,
            capture_output=True,
        )
        with psycopg.connect(dsn, autocommit=True, application_name="pgingest-bench") as conn:
            conn.execute(
                "CREATE TABLE public.documents (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " key text NOT NULL UNIQUE, title text, body text NOT NULL)"
            )
            conn.execute(
                "SELECT ai.create_vectorizer('public.documents'::regclass, name => 'bench',"
                " loading => ai.loading_column('body'),"
                " embedding => ai.embedding_openai(%s, %s, base_url => %s),"
                " chunking => ai.chunking_recursive_character_text_splitter(800, 0),"
                " formatting => ai.formatting_python_template('$chunk'),"
                " processing => ai.processing_default(batch_size => %s, concurrency => %s),"
                " scheduling => ai.scheduling_none(), indexing => ai.indexing_none(),"
                " destination => ai.destination_table('documents_embeddings'))",
                (PGAI_MODEL, DIMS, fake_url, batch_size, concurrency),
            )
            fake_cpu0 = fake_child.cpu_s_now() or 0.0
            insert_s = copy_documents(conn, docs, table="public.documents")
            log(f"pgai: {n} documents inserted in {insert_s:.1f} s; pgai vectorizer worker --once")
            env = {
                **os.environ,
                "OPENAI_API_KEY": "bench-not-a-key",
                "TIKTOKEN_CACHE_DIR": tiktoken_cache_dir(),
                "NO_PROXY": "127.0.0.1,localhost",
                "DD_TRACE_ENABLED": "false",
            }
            log_path = workdir / "pgai-worker.log"
            with log_path.open("w") as fh, BackendCpu(dsn) as pg_cpu:
                child = Child(
                    "pgai worker",
                    [
                        str(VENV / "bin" / "pgai"),
                        "vectorizer",
                        "worker",
                        "-d",
                        dsn,
                        "--once",
                        "-c",
                        str(concurrency),
                        "--log-level",
                        "info",
                    ],
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
                res = child.wait(3600.0)
            if res.rc != 0:
                raise BenchError(f"pgai worker exited with {res.rc}:\n{tail(log_path)}")
            row = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM public.documents_embeddings_store"
            ).fetchone()
            chunks, embedded = (int(row[0]), int(row[1])) if row else (0, 0)
            errors = conn.execute("SELECT count(*) FROM ai.vectorizer_errors").fetchone()
            if embedded != n:
                raise BenchError(
                    f"pgai embedded {embedded} of {n} documents (errors: {errors}):\n"
                    f"{tail(log_path)}"
                )
            total = insert_s + res.wall_s
            return {
                "documents": n,
                "chunks": chunks,
                "chunks_per_document": round(chunks / n, 3),
                "insert_s": round(insert_s, 3),
                "worker_wall_s": round(res.wall_s, 3),
                "worker_cpu_s": round(res.cpu_s, 3),
                "worker_cpu_s_per_document": res.cpu_s / n,
                "worker_peak_rss_mb": round(res.maxrss_mb, 1),
                "postgres_cpu_s": pg_cpu.seconds(exclude="pgingest-bench"),
                "fake_server_cpu_s": round((fake_child.cpu_s_now() or 0.0) - fake_cpu0, 3),
                "documents_per_s": n / total,
                "chunks_per_s": chunks / total,
                "settings": {
                    "chunk_size": 800,
                    "chunk_overlap": 0,
                    "batch_size": batch_size,
                    "concurrency": concurrency,
                    "model": PGAI_MODEL,
                    "encoding_format": "float (pgai's choice)",
                },
            }


def mean_run(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The two pgingest runs averaged (numbers), each kept under ``runs``."""
    out: dict[str, Any] = {}
    for key, va in a.items():
        vb = b.get(key)
        if isinstance(va, int | float) and isinstance(vb, int | float):
            out[key] = (va + vb) / 2
        else:
            out[key] = va
    out["worker_peak_rss_mb"] = max(a["worker_peak_rss_mb"], b["worker_peak_rss_mb"])
    out["runs"] = [a, b]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/peers.py", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=20_000, help="documents (default 20,000)")
    p.add_argument("--pgai-version", default=PGAI_VERSION)
    p.add_argument("--batch-size", type=int, default=200, help="pgai processing batch_size")
    p.add_argument("--concurrency", type=int, default=1, help="pgai processing concurrency")
    p.add_argument("--reinstall", action="store_true", help="rebuild .cache/pgai-venv")
    p.add_argument("--install-only", action="store_true")
    args = p.parse_args(argv)

    from bench.run import CHUNK_PROFILE, e2e_once

    setup = ensure_pgai(args.pgai_version, args.reinstall)
    if args.install_only:
        return 0
    url = server_url()
    for name in drop_stale_databases(url):
        log(f"dropped {name} (left by a run that died)")
    workdir = Path(tempfile.mkdtemp(prefix="pgingest-peers-"))
    docs = synthetic_docs(args.docs)
    started = time.perf_counter()
    with fake_server([f"{PGAI_MODEL}={DIMS}"]) as fake, MachineLoad() as load:
        # pgingest before and after pgai (the mean is compared): a machine that gets busier or
        # quieter during the run does not favour either.
        def ours_once() -> dict[str, Any]:
            return retrying(
                "pgingest", lambda: e2e_once(url, args.docs, workdir, False, shared_fake=fake)
            )

        log(f"pgingest: {args.docs} documents")
        before = ours_once()
        log(f"pgingest: {before['documents_per_s']:.0f} documents/s; now pgai {args.pgai_version}")
        theirs = retrying(
            "pgai", lambda: run_pgai(url, docs, fake, workdir, args.batch_size, args.concurrency)
        )
        log(f"pgai: {theirs['documents_per_s']:.0f} documents/s; pgingest again")
        after = ours_once()
        ours = mean_run(before, after)
    results = {
        "pgingest": ours,
        "pgai": theirs,
        "pgai_version": args.pgai_version,
        "pgingest_chunk_profile": CHUNK_PROFILE,
        "setup": setup,
        "machine_busy_cores": load.busy_cores,
        "loadavg_1m": load.loadavg,
        "throughput_vs_pgai": ratio(ours["documents_per_s"], theirs["documents_per_s"]),
        "chunk_throughput_vs_pgai": ratio(ours["chunks_per_s"], theirs["chunks_per_s"]),
        "cpu_per_document_vs_pgai": ratio(
            ours["worker_cpu_s_per_document"], theirs["worker_cpu_s_per_document"]
        ),
        "rss_vs_pgai": ratio(ours["worker_peak_rss_mb"], theirs["worker_peak_rss_mb"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    rows = [
        ("documents/s (INSERT to stored vectors)", "documents_per_s", "{:,.0f}"),
        ("chunks/s", "chunks_per_s", "{:,.0f}"),
        ("chunks per document", "chunks_per_document", "{:.2f}"),
        ("worker wall s", "worker_wall_s", "{:.1f}"),
        ("worker CPU s per document (ms)", "worker_cpu_s_per_document", "{:.3f}"),
        ("worker peak RSS MB", "worker_peak_rss_mb", "{:.0f}"),
        ("PostgreSQL backend CPU s", "postgres_cpu_s", "{:.1f}"),
        ("fake embedder CPU s", "fake_server_cpu_s", "{:.1f}"),
    ]
    print()
    print(f"pgingest vs pgai {args.pgai_version}, {args.docs:,} documents, same fake embedder")
    print(f"{'':42} {'pgingest':>12} {'pgai':>12} {'ratio':>8}")
    for label, key, fmt in rows:
        a, b = ours[key], theirs[key]
        if key == "worker_cpu_s_per_document":
            a, b = a * 1000, b * 1000
        print(f"{label:42} {fmt.format(a):>12} {fmt.format(b):>12} {ratio(a, b):>8.2f}")
    print(
        f"throughput_vs_pgai = {results['throughput_vs_pgai']:.2f} (target >= 5), rss_vs_pgai ="
        f" {results['rss_vs_pgai']:.2f} (target < 1); machine {load.busy_cores} cores busy on"
        f" average"
    )
    write_results(
        {
            "throughput_vs_pgai": results["throughput_vs_pgai"],
            "rss_vs_pgai": results["rss_vs_pgai"],
            "peers": results,
        }
    )
    print("added throughput_vs_pgai and rss_vs_pgai to bench-results.json")
    with contextlib.suppress(OSError):
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
