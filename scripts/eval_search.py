"""Search quality on the demo corpus: vector-only vs keyword-only vs hybrid (RRF).

Run after ``make demo`` (the corpus embedded with the local model and the model server reachable,
e.g. ``make demo DEMO_ARGS=--keep-running``)::

    .venv/bin/python scripts/eval_search.py [--embedding-url http://127.0.0.1:8765/v1]

The questions were written by reading the documents they point at (a user's wording, not the
docstring's); each has one expected document. Prints hit@1, hit@5 and MRR@10 per method.
"""

from __future__ import annotations

import argparse
import sys

from pgingest import db, providers, search

QUESTIONS: list[tuple[str, str]] = [
    ("merge overlapping IP networks into the smallest list", "pydoc:ipaddress.collapse_addresses"),
    ("replace ~ with the user's home directory in a path", "pydoc:posixpath.expanduser"),
    ("make a name-based UUID with MD5", "pydoc:uuid.uuid3"),
    (
        "async queue that returns the lowest priority entry first",
        "pydoc:asyncio.queues.PriorityQueue",
    ),
    ("measure how long a small code snippet takes to run", "pydoc:timeit.Timer"),
    ("check whether a function is a generator function", "pydoc:inspect.isgeneratorfunction"),
    ("hex encode bytes with base16", "pydoc:base64.b16encode"),
    ("open a source file using its declared encoding", "pydoc:tokenize.open"),
    ("create a SAX XML parser", "pydoc:xml.sax.make_parser"),
    ("iterate over the direct children of an AST node", "pydoc:ast.iter_child_nodes"),
    (
        "save browser cookies in the Mozilla cookies.txt format",
        "pydoc:http.cookiejar.MozillaCookieJar",
    ),
    ("set up logging quickly with a default handler", "pydoc:logging.basicConfig"),
    ("format a date for an email header per RFC 2822", "pydoc:email.utils.formatdate"),
    ("run a module by name like python -m", "pydoc:runpy"),
    ("allocate a mutable C character buffer", "pydoc:ctypes.create_string_buffer"),
    (
        "create a temporary directory that is removed automatically",
        "pydoc:tempfile.TemporaryDirectory",
    ),
]


def rank_of(keys: list[str], expected: str) -> int | None:
    return keys.index(expected) + 1 if expected in keys else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--database-url", default=None)
    p.add_argument("--embedding-url", default=None)
    p.add_argument("--text-weight", type=float, default=1.0, help="hybrid: weight of the text side")
    args = p.parse_args()
    conn = db.connect(args.database_url)
    model = db.active_model(conn)
    if model is None:
        print("no active model: run make demo first", file=sys.stderr)
        return 2
    if "text_search_config" not in db.get_config(conn):  # full text is opt-in (migration 0005)
        print("full-text search is off: turning it on (rewrites pgingest.chunks)", file=sys.stderr)
        conn.execute("SELECT pgingest.set_text_search_config('english')")
    provider = providers.for_model(model, base_url=args.embedding_url)
    ranks: dict[str, list[int | None]] = {"vector": [], "keyword": [], "hybrid": []}
    for question, expected in QUESTIONS:
        qvec = search.embed_query(model, provider, question)
        vec = [r["doc_key"] for r in db.search(conn, qvec, 10, {}, True, None)]
        kw = [
            r["doc_key"]
            for r in db.hybrid_search_weighted(conn, question, qvec, 40, 0.0, 1.0)
            if r["text_rank"] is not None
        ]
        hy = [
            r["doc_key"]
            for r in db.hybrid_search_weighted(conn, question, qvec, 40, 1.0, args.text_weight)
        ]
        kw = list(dict.fromkeys(kw))[:10]
        hy = list(dict.fromkeys(hy))[:10]
        for name, keys in (("vector", vec), ("keyword", kw), ("hybrid", hy)):
            ranks[name].append(rank_of(keys, expected))
        print(
            f"{question[:60]:<60} vector={rank_of(vec, expected)} keyword={rank_of(kw, expected)}"
            f" hybrid={rank_of(hy, expected)}"
        )
    print(f"\n{'method':<8} {'hit@1':>6} {'hit@5':>6} {'MRR@10':>7}  ({len(QUESTIONS)} questions)")
    for name, rs in ranks.items():
        h1 = sum(1 for r in rs if r == 1) / len(rs)
        h5 = sum(1 for r in rs if r is not None and r <= 5) / len(rs)
        mrr = sum(1 / r for r in rs if r is not None) / len(rs)
        print(f"{name:<8} {h1:>6.2f} {h5:>6.2f} {mrr:>7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
