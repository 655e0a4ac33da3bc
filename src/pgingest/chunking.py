"""Token-aware, deterministic chunking of documents.

A pure module: text in, chunks out. The only I/O is reading the vendored tokenizer file once
(cached for the life of the process).

Algorithm (``pgingest-chunker/1``)
---------------------------------
1. The body is tokenized ONCE, with character offsets. From the offsets the chunker derives the
   *words* of the tokenizer's pre-tokenizer (for the MiniLM WordPiece tokenizer: runs split at
   whitespace and punctuation, one word per CJK character) and the *gaps* between consecutive
   words. A cut in a gap is exact: the text on each side tokenizes to exactly the tokens the
   whole body had there, so chunk sizes are prefix-sum arithmetic on token offsets, with no
   re-tokenization. (Not a gap: a place where a combining mark follows, or where only
   characters the tokenizer drops separate two words.)
2. Each gap gets a level: paragraph (a blank line) > line break > sentence end > whitespace
   (or next to a CJK character) > none (e.g. between ``foo`` and ``.`` in ``foo.bar``).
3. Greedy packing: from the start of a chunk, the window is everything that fits the budget
   (``max_tokens`` minus the special tokens minus the title). The chunk ends at the strongest gap
   of the window, the furthest one among equals, except that a gap leaving the chunk less than a
   quarter full (the tail of a paragraph) is used only when there is no other. This is the
   recursive paragraphs > lines > sentences > words split, merged greedily, in one pass: a
   paragraph that fits is never split.
4. When no gap fits (one word longer than the budget, e.g. a 5,000-character base64 blob), the
   chunk is cut hard at a token boundary (inside a word the tokenizer could not split: at a
   character, never before a combining mark or after a zero-width joiner when avoidable).
   Hard-cut chunks are the only ones re-tokenized, to verify and if needed shrink them.
5. The next chunk starts about ``overlap_tokens`` before the end of the previous one, at a
   word gap (never more than half the budget, so that every chunk brings at least as much new
   text as it repeats).

Invariants: ``body[c.char_start:c.char_end] == c.text``; every ``embed_input`` tokenizes to at
most ``max_tokens`` tokens, special tokens included; chunks never start or end with whitespace;
the same input gives the same chunks, byte for byte.

Over-long words: WordPiece turns a word of more than 100 characters (or one with a character not
in its vocabulary) into a single ``[UNK]``. Such a token is budgeted as ``ceil(utf8 bytes / 3)``
tokens, like the heuristic tokenizer, so that a blob never makes a huge chunk: the chunk profile
is shared by every model, and another model's tokenizer would see thousands of tokens there.
"""

from __future__ import annotations

import itertools
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CHUNKER_ALGORITHM",
    "DEFAULT_TOKENIZER",
    "MIN_BODY_TOKENS",
    "MIN_MAX_TOKENS",
    "TOKENIZER_NAMES",
    "Chunk",
    "ChunkerConfig",
    "Tokenizer",
    "chunk_document",
    "chunk_documents",
    "get_tokenizer",
]

CHUNKER_ALGORITHM: Final = "pgingest-chunker/1"
"""Name and version of the algorithm; bump the number whenever the output can change."""

DEFAULT_TOKENIZER: Final = "all-MiniLM-L6-v2"
HEURISTIC_TOKENIZER: Final = "heuristic"
TOKENIZER_NAMES: Final[tuple[str, ...]] = (DEFAULT_TOKENIZER, HEURISTIC_TOKENIZER)

MIN_BODY_TOKENS: Final = 16
"""A title is truncated so that at least this many tokens stay for the body of each chunk."""

MIN_MAX_TOKENS: Final = 8
"""Smallest ``max_tokens`` accepted: any single character must fit next to the special tokens."""

_SPECIAL_TOKENS: Final[dict[str, int]] = {DEFAULT_TOKENIZER: 2, HEURISTIC_TOKENIZER: 0}
_TOKENIZER_FILE: Final = "all-MiniLM-L6-v2.tokenizer.json"
_TITLE_SEPARATOR: Final = "\n\n"

# Internal cost unit: a third of a token. A WordPiece token costs 3 units; the heuristic
# tokenizer (and an over-long [UNK] word) costs one unit per UTF-8 byte.
_UNITS: Final = 3

# A chunk ends at the strongest gap in its window, unless that leaves it less than
# 1/_MIN_FILL full and a weaker gap further on exists (no tiny tails of paragraphs).
_MIN_FILL: Final = 4

# Gap levels (higher is a better place to end a chunk).
_LV_NONE: Final = 0
_LV_WORD: Final = 1
_LV_SENTENCE: Final = 2
_LV_LINE: Final = 3
_LV_PARAGRAPH: Final = 4

# Character classes, looked up in one table (one gather per text).
_C_SPACE: Final = 1  # str.isspace()
_C_BREAK: Final = 2  # line boundary of str.splitlines() ("\r" only when not before "\n")
_C_END: Final = 4  # sentence end
_C_CLOSER: Final = 8  # closing quote or bracket (may follow a sentence end)
_C_CJK_END: Final = 16  # full-width sentence end: a boundary even without a space after it
_C_CJK: Final = 32  # CJK ideograph (BERT's "Chinese character" ranges): a word on its own
_C_MARK: Final = 64  # combining mark (Mn, Mc, Me): never the first character after a cut


def _class_table() -> npt.NDArray[np.uint8]:
    table = np.zeros(0x10000, dtype=np.uint8)
    table[[c for c in range(0x3001) if chr(c).isspace()]] |= _C_SPACE  # none above U+3000
    table[[0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]] |= _C_BREAK
    table[[ord(c) for c in ".!?\u2026\u203c\u2047\u2048\u2049"]] |= _C_END
    table[[ord(c) for c in "\"')]}\u2019\u201d\u00bb\u300d\u300f\uff09"]] |= _C_CLOSER
    table[[ord(c) for c in "\u3002\uff01\uff1f\uff61"]] |= _C_CJK_END
    for lo, hi in ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF)):
        table[lo : hi + 1] |= _C_CJK
    table[[c for c in range(0x10000) if unicodedata.category(chr(c))[0] == "M"]] |= _C_MARK
    return table


_CLASS_TABLE: Final = _class_table()


IntArray = npt.NDArray[np.int64]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    """The chunker profile, shared by every model of the pipeline.

    ``max_tokens`` counts everything the model sees for one chunk: special tokens, the title and
    the chunk's text. ``overlap_tokens`` is a target, taken at a whitespace boundary.
    """

    tokenizer: str = DEFAULT_TOKENIZER
    max_tokens: int = 200
    overlap_tokens: int = 20
    include_title: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or self.tokenizer not in TOKENIZER_NAMES:
            raise ValueError(
                f"unknown chunk tokenizer {self.tokenizer!r}; "
                f"expected one of: {', '.join(TOKENIZER_NAMES)}"
            )
        if not _is_int(self.max_tokens) or self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.max_tokens < MIN_MAX_TOKENS:
            raise ValueError(
                f"max_tokens must be at least {MIN_MAX_TOKENS} "
                f"(room for the special tokens and one character), got {self.max_tokens}"
            )
        if not _is_int(self.overlap_tokens) or self.overlap_tokens < 0:
            raise ValueError(
                f"overlap_tokens must be a non-negative integer, got {self.overlap_tokens!r}"
            )
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than "
                f"max_tokens ({self.max_tokens})"
            )
        if not isinstance(self.include_title, bool):
            raise ValueError(f"include_title must be a bool, got {self.include_title!r}")

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> ChunkerConfig:
        """The profile stored in ``pgingest.config`` (keys ``chunk_*``; defaults when absent)."""
        return cls(
            tokenizer=settings.get("chunk_tokenizer", DEFAULT_TOKENIZER),
            max_tokens=int(settings.get("chunk_max_tokens", "200")),
            overlap_tokens=int(settings.get("chunk_overlap_tokens", "20")),
            include_title=settings.get("chunk_include_title", "true") == "true",
        )

    @property
    def version(self) -> str:
        """Identifies the algorithm and this profile; stored with every chunk (``chunker``)."""
        return (
            f"{CHUNKER_ALGORITHM} tok={self.tokenizer} max={self.max_tokens} "
            f"overlap={self.overlap_tokens} title={int(self.include_title)}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a document's body.

    ``text`` is ``body[char_start:char_end]``; ``embed_input`` is exactly what is sent to the
    model (``f"{title}\\n\\n{text}"``, or ``text``); ``token_count`` is the number of tokens the
    model sees for ``embed_input``, special tokens included (for the heuristic tokenizer: its
    estimate).
    """

    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    embed_input: str


# --------------------------------------------------------------------------- text analysis


@dataclass(slots=True)
class _Layout:
    """A text measured once: prefix costs and the gaps where it can be cut."""

    text: str
    start: int  # first non-whitespace character
    end: int  # one past the last non-whitespace character
    cost: IntArray  # cost[p]: cost units of text[:p] (len(text) + 1 entries)
    real: IntArray | None  # real[p]: tokens starting before p; None when cost is exact
    ge: IntArray  # per gap: where a chunk ending at the gap ends
    gs: IntArray  # per gap: where the next chunk starting at the gap starts
    lv: npt.NDArray[np.int8]  # per gap: its level
    pe: IntArray  # cost[ge]
    ps: IntArray  # cost[gs]
    hard_cuts: IntArray | None  # sorted positions allowed for a hard cut; None: any position

    @property
    def empty(self) -> bool:
        return self.start >= self.end


def _empty_layout(text: str) -> _Layout:
    z = np.zeros(0, dtype=np.int64)
    return _Layout(
        text, 0, 0, np.zeros(len(text) + 1, np.int64), None, z, z, z.astype(np.int8), z, z, None
    )


def _classes(text: str) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint8]]:
    """Code points of ``text`` and their character classes."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    cls = _CLASS_TABLE[np.minimum(cp, 0xFFFF)]
    astral = cp > 0xFFFF
    if astral.any():  # CJK extensions B..F and compatibility supplement
        cjk = ((cp >= 0x20000) & (cp <= 0x2CEAF)) | ((cp >= 0x2F800) & (cp <= 0x2FA1F))
        cls = np.where(astral, np.where(cjk, _C_CJK, 0), cls).astype(np.uint8)
        # Astral combining marks (Brahmi, musical symbols, variation selectors, ...); emoji
        # (U+1F000..) and CJK (U+20000..) have none.
        for i in np.flatnonzero(astral & ((cp < 0x1F000) | (cp >= 0xE0000))).tolist():
            if unicodedata.category(text[i])[0] == "M":
                cls[i] |= _C_MARK
    return cp, cls


def _utf8_lengths(cp: npt.NDArray[np.uint32]) -> IntArray:
    return (
        1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800).astype(np.int64) + (cp >= 0x10000)
    ).astype(np.int64)


def _prefix(per_char: npt.NDArray[Any]) -> IntArray:
    out = np.zeros(per_char.shape[0] + 1, dtype=np.int64)
    np.cumsum(per_char, out=out[1:])
    return out


def _content_span(ws: npt.NDArray[np.bool_]) -> tuple[int, int]:
    idx = np.flatnonzero(~ws)
    if idx.size == 0:
        return 0, 0
    return int(idx[0]), int(idx[-1]) + 1


def _gaps(
    text: str,
    cp: npt.NDArray[np.uint32],
    cls: npt.NDArray[np.uint8],
    g0: IntArray,
    g1: IntArray,
) -> tuple[IntArray, IntArray, npt.NDArray[np.int8]]:
    """Cut positions and levels of the gaps ``[g0, g1)`` between consecutive words.

    A gap may hold, besides whitespace, characters the tokenizer drops (control characters,
    zero-width spaces, stray combining marks): a chunk ends before the gap's first whitespace
    and the next starts after that run of whitespace, so that only whitespace ever falls
    between two chunks.
    """
    ws = (cls & _C_SPACE) != 0
    ws_prefix = _prefix(ws)
    n_ws = ws_prefix[g1] - ws_prefix[g0]
    # Exact cuts only: at whitespace, or between two words that touch, unless a combining
    # mark follows (canonical reordering of marks would cross the cut). Gaps of dropped
    # characters only (e.g. "e\u0301.") are not cut at all.
    keep = (n_ws > 0) | ((g1 == g0) & ((cls[np.minimum(g1, cls.shape[0] - 1)] & _C_MARK) == 0))
    if not keep.all():
        g0, g1, n_ws = g0[keep], g1[keep], n_ws[keep]
    if g0.size == 0:
        return g0, g1, np.zeros(0, dtype=np.int8)
    ge = g0.copy()
    gs = g1.copy()
    for i in np.flatnonzero((n_ws > 0) & (n_ws < g1 - g0)).tolist():  # rare: mixed gaps
        a, b = int(g0[i]), int(g1[i])
        k = a
        while not text[k].isspace():
            k += 1
        ge[i] = k
        while k < b and text[k].isspace():
            k += 1
        gs[i] = k
    breaks = (cls & _C_BREAK) != 0
    breaks[:-1] &= (cp[:-1] != 0x0D) | (cp[1:] != 0x0A)  # "\r\n" is one line break
    br_prefix = _prefix(breaks)
    n_breaks = br_prefix[g1] - br_prefix[g0]
    prev = cls[g0 - 1]  # a gap always follows a word: g0 >= 1
    prev2 = cls[np.maximum(g0 - 2, 0)]
    sentence = ((prev & _C_END) != 0) | (
        ((prev & _C_CLOSER) != 0) & ((prev2 & _C_END) != 0) & (g0 >= 2)
    )
    cjk_end = (prev & _C_CJK_END) != 0
    cjk_word = ((prev | cls[np.minimum(g1, cls.shape[0] - 1)]) & _C_CJK) != 0
    has_ws = n_ws > 0
    lv = np.where(
        n_breaks >= 2,
        _LV_PARAGRAPH,
        np.where(
            n_breaks == 1,
            _LV_LINE,
            np.where(
                (has_ws & sentence) | cjk_end,
                _LV_SENTENCE,
                np.where(has_ws | cjk_word, _LV_WORD, _LV_NONE),
            ),
        ),
    ).astype(np.int8)
    return ge, gs, lv


# --------------------------------------------------------------------------- tokenizers


class Tokenizer(ABC):
    """A token counter with what the chunker needs to cut text at token boundaries."""

    name: str
    special_tokens: int
    """Tokens the model adds around every input (e.g. [CLS] and [SEP])."""

    @abstractmethod
    def count(self, text: str) -> int:
        """Tokens of ``text``, without the special tokens."""

    def count_input(self, text: str) -> int:
        """Tokens the model sees for ``text``, special tokens included."""
        return self.count(text) + self.special_tokens

    @property
    @abstractmethod
    def _separator_units(self) -> int:
        """Cost units of the separator between the title and the text."""

    @property
    @abstractmethod
    def _exact(self) -> bool:
        """True when cost units are exact at every position (no verification needed)."""

    @abstractmethod
    def _layouts(self, texts: Sequence[str]) -> list[_Layout]:
        """Measure texts (all at once where the tokenizer can batch)."""

    @abstractmethod
    def _measure(self, texts: list[str]) -> list[tuple[int, int] | None]:
        """Fast path: ``(cost units, real tokens)`` of whole texts, None when a layout is needed."""


class HeuristicTokenizer(Tokenizer):
    """Conservative estimate for providers with no tokenizer available offline.

    ``count(text) = ceil(utf8_bytes(text) / 3)``; a chunk of ``max_tokens`` is thus at most
    ``3 * max_tokens`` bytes. Why it over-estimates English and code: byte-level BPE
    vocabularies such as OpenAI's cl100k_base (100k entries) merge frequent words, word pieces,
    runs of spaces and indentation into single tokens, averaging about 4 bytes per token on
    English prose and 3.5 or more on source code, and cl100k splits digit runs into groups of at
    most 3 digits; WordPiece (MiniLM) averages more than 4 characters per token on English. So
    3 bytes per token counts more tokens than those tokenizers produce on such text.

    It may under-estimate on high-entropy strings (hex, base64) and scripts a vocabulary covers
    poorly (some CJK, Indic), where BPE can fall back to one token per byte. Even then a
    chunk is at most ``3 * max_tokens`` bytes, hence at most ``3 * max_tokens`` tokens for
    any byte-level tokenizer: keep ``3 * max_tokens`` at or below the model's input limit.
    The count is also easy to reproduce elsewhere (``ceil(octet_length(x) / 3.0)`` in SQL).
    """

    name = HEURISTIC_TOKENIZER
    special_tokens = 0

    def count(self, text: str) -> int:
        return -(-len(text.encode("utf-8", "surrogatepass")) // _UNITS)

    @property
    def _separator_units(self) -> int:
        return len(_TITLE_SEPARATOR.encode("utf-8"))

    @property
    def _exact(self) -> bool:
        return True

    def _layouts(self, texts: Sequence[str]) -> list[_Layout]:
        return [self._layout(t) for t in texts]

    def _measure(self, texts: list[str]) -> list[tuple[int, int] | None]:
        return [(len(t.encode("utf-8", "surrogatepass")), 0) for t in texts]

    def _layout(self, text: str) -> _Layout:
        cp, cls = _classes(text)
        ws = (cls & _C_SPACE) != 0
        start, end = _content_span(ws)
        if start >= end:
            return _empty_layout(text)
        cost = _prefix(_utf8_lengths(cp))
        # Words: maximal runs of non-whitespace, and each CJK ideograph on its own (CJK text
        # has no spaces); gaps: the whitespace between words (empty between adjacent words).
        boundary = np.empty(ws.shape[0] + 1, dtype=bool)  # boundary[p]: a word starts/ends at p
        boundary[0] = boundary[-1] = True
        boundary[1:-1] = ws[1:] != ws[:-1]
        cjk = (cls & (_C_CJK | _C_CJK_END)) != 0
        if cjk.any():
            inner = ~ws[1:] & ~ws[:-1] & (cjk[:-1] | cjk[1:])
            boundary[1:-1] |= inner
        else:
            inner = None
        word_starts = np.flatnonzero(boundary[:-1] & ~ws).astype(np.int64)
        after = np.empty_like(ws)
        after[:-1] = boundary[1:-1]
        after[-1] = True
        word_ends = np.flatnonzero(after & ~ws).astype(np.int64) + 1
        ge, gs, lv = _gaps(text, cp, cls, word_ends[:-1], word_starts[1:])
        return _Layout(text, start, end, cost, None, ge, gs, lv, cost[ge], cost[gs], None)


class WordPieceTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer (BERT-style WordPiece) from a tokenizer.json."""

    def __init__(self, name: str, tokenizer_json: str, special_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        tk = HFTokenizer.from_str(tokenizer_json)
        tk.no_truncation()
        tk.no_padding()
        self.name = name
        self.special_tokens = special_tokens
        self._tk: Any = tk
        unk = tk.token_to_id("[UNK]")
        self._unk_id: int = -1 if unk is None else int(unk)

    def count(self, text: str) -> int:
        return len(self._tk.encode(text, add_special_tokens=False).ids)

    @property
    def _separator_units(self) -> int:
        return 0  # whitespace: no token

    @property
    def _exact(self) -> bool:
        return False

    def _layouts(self, texts: Sequence[str]) -> list[_Layout]:
        if not texts:
            return []
        if len(texts) == 1:
            encodings = [self._tk.encode(texts[0], add_special_tokens=False)]
        else:
            encodings = self._tk.encode_batch(list(texts), add_special_tokens=False)
        return [self._layout(t, e) for t, e in zip(texts, encodings, strict=True)]

    def _measure(self, texts: list[str]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for enc in self._tk.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids
            if self._unk_id in ids:  # maybe an over-long word, budgeted by its bytes
                out.append(None)
            else:
                out.append((len(ids) * _UNITS, len(ids)))
        return out

    def _layout(self, text: str, enc: Any) -> _Layout:
        ids_list = enc.ids
        cp, cls = _classes(text)
        ws = (cls & _C_SPACE) != 0
        start, end = _content_span(ws)
        n_tok = len(ids_list)
        if start >= end or n_tok == 0:
            return _empty_layout(text)  # nothing the model would see
        n = len(text)
        offsets = np.fromiter(
            itertools.chain.from_iterable(enc.offsets), dtype=np.int64, count=2 * n_tok
        ).reshape(n_tok, 2)
        ts = offsets[:, 0]
        te = offsets[:, 1]
        ids = np.array(ids_list, dtype=np.int64)
        words = np.array(enc.word_ids, dtype=np.int64)

        starts_per_char = np.bincount(ts, minlength=n)[:n]
        real = _prefix(starts_per_char)
        blob = (ids == self._unk_id) & (te - ts > 1)
        if blob.any():
            per_char = np.bincount(ts[~blob], minlength=n)[:n].astype(np.int64) * _UNITS
            lengths = _utf8_lengths(cp)
            interiors = []
            for a, b in zip(ts[blob].tolist(), te[blob].tolist(), strict=True):
                seg = lengths[a:b]
                per_char[a:b] += seg
                per_char[a] += max(0, _UNITS - int(seg.sum()))
                interiors.append(np.arange(a + 1, b, dtype=np.int64))
            hard_cuts = np.unique(np.concatenate([te, *interiors]))
        else:
            per_char = starts_per_char * _UNITS
            hard_cuts = te
        cost = _prefix(per_char)

        # Words of the pre-tokenizer and the gaps between them.
        first = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
        w_start = np.minimum.reduceat(ts, first)
        w_end = np.maximum.reduceat(te, first)
        g0 = w_end[:-1]
        g1 = w_start[1:]
        ok = g1 >= g0
        if not ok.all():  # overlapping words (never seen): do not cut there
            g0, g1 = g0[ok], g1[ok]
        ge, gs, lv = _gaps(text, cp, cls, g0, g1)
        return _Layout(text, start, end, cost, real, ge, gs, lv, cost[ge], cost[gs], hard_cuts)


_registry_lock = threading.Lock()
_registry: dict[str, Tokenizer] = {}


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` (loaded once per process, then cached)."""
    tok = _registry.get(name)
    if tok is not None:
        return tok
    if name not in TOKENIZER_NAMES:
        raise ValueError(
            f"unknown chunk tokenizer {name!r}; expected one of: {', '.join(TOKENIZER_NAMES)}"
        )
    with _registry_lock:
        tok = _registry.get(name)
        if tok is None:
            if name == HEURISTIC_TOKENIZER:
                tok = HeuristicTokenizer()
            else:
                data = resources.files("pgingest").joinpath("data", _TOKENIZER_FILE)
                tok = WordPieceTokenizer(
                    name, data.read_text(encoding="utf-8"), _SPECIAL_TOKENS[name]
                )
            _registry[name] = tok
    return tok


# --------------------------------------------------------------------------- chunking


def chunk_document(title: str | None, body: str, config: ChunkerConfig) -> list[Chunk]:
    """Split ``body`` into chunks; ``[]`` when the body has nothing to embed.

    A body that is empty, whitespace only, or only characters the tokenizer drops gives ``[]``
    (the caller dead-letters it).
    """
    return chunk_documents([(title, body)], config)[0]


def chunk_documents(
    docs: Iterable[tuple[str | None, str]], config: ChunkerConfig
) -> list[list[Chunk]]:
    """``chunk_document`` for many ``(title, body)`` pairs, tokenized in one batch."""
    items = list(docs)
    if not items:
        return []
    tok = get_tokenizer(config.tokenizer)
    layouts = tok._layouts([body for _, body in items])
    titles = _titles(tok, [t for t, _ in items], config)
    return [
        _chunk(tok, layout, title, config) for layout, title in zip(layouts, titles, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class _Title:
    text: str  # "" when the embed input has no title
    units: int  # cost units of the title and separator
    tokens: int  # real tokens of the title (0 for the heuristic tokenizer)


_NO_TITLE: Final = _Title("", 0, 0)


def _titles(tok: Tokenizer, titles: list[str | None], config: ChunkerConfig) -> list[_Title]:
    if not config.include_title:
        return [_NO_TITLE] * len(titles)
    stripped = [t.strip() if t is not None else "" for t in titles]
    distinct = sorted({t for t in stripped if t})
    if not distinct:
        return [_NO_TITLE] * len(titles)
    content_units = (config.max_tokens - tok.special_tokens) * _UNITS
    cap = content_units - MIN_BODY_TOKENS * _UNITS - tok._separator_units
    fitted: dict[str, _Title] = {}
    long_titles = []
    for t, measured in zip(distinct, tok._measure(distinct), strict=True):
        if measured is not None and 0 < measured[0] <= cap:
            fitted[t] = _Title(t, measured[0] + tok._separator_units, measured[1])
        else:
            long_titles.append(t)
    for t, layout in zip(long_titles, tok._layouts(long_titles), strict=True):
        fitted[t] = _fit_title(tok, layout, cap)
    return [fitted[t] if t else _NO_TITLE for t in stripped]


def _fit_title(tok: Tokenizer, layout: _Layout, cap: int) -> _Title:
    """The title, truncated (at a word when it can) to at most ``cap`` cost units."""
    while not layout.empty and cap > 0:
        units = int(layout.cost[layout.end] - layout.cost[layout.start])
        if units <= cap:
            text = layout.text[layout.start : layout.end]
            tokens = 0
            if layout.real is not None:
                tokens = int(layout.real[layout.end] - layout.real[layout.start])
            return _Title(text, units + tok._separator_units, tokens)
        limit = int(layout.cost[layout.start]) + cap
        hi = int(np.searchsorted(layout.pe, limit, side="right"))
        lo = int(np.searchsorted(layout.ge, layout.start, side="right"))
        cut = int(layout.ge[hi - 1]) if hi > lo else _hard_cut(layout, layout.start, limit)
        shorter = layout.text[:cut].rstrip()
        if len(shorter) >= len(layout.text):  # cannot shrink (defensive)
            break
        layout = tok._layouts([shorter])[0]  # re-measure: a cut word may tokenize differently
    return _NO_TITLE


def _chunk(tok: Tokenizer, layout: _Layout, title: _Title, config: ChunkerConfig) -> list[Chunk]:
    if layout.empty:
        return []
    content_tokens = config.max_tokens - tok.special_tokens
    budget = content_tokens * _UNITS - title.units
    overlap = min(config.overlap_tokens * _UNITS, budget // 2)
    real_budget = content_tokens - title.tokens  # for re-tokenized (hard-cut) chunks
    cost = layout.cost
    text = layout.text
    doc_end = layout.end

    spans: list[tuple[int, int, int]] = []  # (start, end, real text tokens or -1)
    start, start_hard = layout.start, False
    fallback: tuple[int, bool] | None = None  # the next start without overlap
    while True:
        end, gap = _pick_end(layout, start, budget)
        real = -1
        if not tok._exact and (start_hard or gap < 0 and end != doc_end):
            end, gap, real = _verify(tok, layout, start, end, real_budget)
        if spans and end <= spans[-1][1] and fallback is not None:
            start, start_hard = fallback  # the overlap left no room: start without it
            fallback = None
            continue
        spans.append((start, end, real))
        if end >= doc_end:
            break
        if gap >= 0:
            no_overlap = (int(layout.gs[gap]), False)
        else:  # after a hard cut, skip whitespace inside the word
            nxt = end
            while text[nxt].isspace():
                nxt += 1
            no_overlap = (nxt, True)
        ov = _overlap_start(layout, start, end, overlap) if overlap > 0 else -1
        if ov < 0:
            (start, start_hard), fallback = no_overlap, None
        else:
            start, start_hard, fallback = ov, False, no_overlap

    chunks: list[Chunk] = []
    prefix = title.text + _TITLE_SEPARATOR if title.text else ""
    for ordinal, (s, e, real) in enumerate(spans):
        piece = text[s:e]
        if tok._exact:
            n_tokens = -(-(title.units + int(cost[e] - cost[s])) // _UNITS)
        else:
            if real < 0:
                assert layout.real is not None
                real = int(layout.real[e] - layout.real[s])
            n_tokens = title.tokens + real
        chunks.append(
            Chunk(
                ordinal=ordinal,
                text=piece,
                char_start=s,
                char_end=e,
                token_count=n_tokens + tok.special_tokens,
                embed_input=prefix + piece,
            )
        )
    return chunks


def _pick_end(layout: _Layout, start: int, budget: int) -> tuple[int, int]:
    """End of the chunk starting at ``start``: ``(end, gap index)``, gap -1 for a hard cut."""
    limit = int(layout.cost[start]) + budget
    if layout.cost[layout.end] <= limit:
        return layout.end, -1
    lo = int(np.searchsorted(layout.ge, start, side="right"))
    hi = int(np.searchsorted(layout.pe, limit, side="right"))
    if hi > lo:
        # Strongest gap in the window, furthest among equals; but a gap that would leave the
        # chunk less than _MIN_FILL full (the tail of a paragraph) only when there is no other.
        fill = int(layout.cost[start]) + budget // _MIN_FILL
        first_full = lo + int(np.searchsorted(layout.pe[lo:hi], fill, side="left"))
        a = first_full if first_full < hi else lo
        levels = layout.lv[a:hi]
        best = levels.max()
        idx = a + int(levels.shape[0] - 1 - np.argmax(levels[::-1] == best))
        return int(layout.ge[idx]), idx
    return _hard_cut(layout, start, limit), -1


def _hard_cut(layout: _Layout, start: int, limit: int) -> int:
    """Furthest allowed position after ``start`` whose cost stays within ``limit``."""
    p_max = min(int(np.searchsorted(layout.cost, limit, side="right")) - 1, layout.end)
    text = layout.text
    if layout.hard_cuts is None:
        p = max(p_max, start + 1)
    else:
        cuts = layout.hard_cuts
        i = int(np.searchsorted(cuts, p_max, side="right"))
        if i > 0 and cuts[i - 1] > start:
            p = int(cuts[i - 1])
        else:  # the first allowed cut is over the limit (cannot happen with sane budgets)
            p = int(cuts[np.searchsorted(cuts, start, side="right")])
    # Do not separate a character from the marks and joiners that extend it (if possible),
    # and do not end on whitespace (a word the tokenizer did not split can hold some).
    while p > start + 1 and p < len(text) and _extends(text[p - 1], text[p]):
        p -= 1
    while p > start + 1 and text[p - 1].isspace():
        p -= 1
    return p


def _extends(before: str, after: str) -> bool:
    return (
        unicodedata.combining(after) != 0
        or unicodedata.category(after) in ("Mn", "Me", "Mc")
        or after in "\u200d\ufe0e\ufe0f"
        or before == "\u200d"
        or 0x1F3FB <= ord(after) <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= ord(after) <= 0xE007F  # tag characters (flags)
    )


def _verify(
    tok: Tokenizer, layout: _Layout, start: int, end: int, real_budget: int
) -> tuple[int, int, int]:
    """Re-tokenize a chunk with a hard edge; shrink it until it fits.

    Returns ``(end, gap index or -1, real tokens of the text)``.
    """
    assert isinstance(tok, WordPieceTokenizer)
    text = layout.text
    n = tok.count(text[start:end])
    if n > real_budget:
        ends = [int(x) for x in layout.ge[(layout.ge > start) & (layout.ge < end)]]
        if layout.hard_cuts is not None:
            ends += [
                int(x)
                for x in layout.hard_cuts[(layout.hard_cuts > start) & (layout.hard_cuts < end)]
            ]
        else:
            ends += list(range(start + 1, end))
        candidates = sorted({e for e in ends if not text[e - 1].isspace()})
        if not candidates:
            raise RuntimeError(f"chunker: cannot cut the text at offset {start} any shorter")
        # Binary search the largest fitting end (token counts grow with the end, almost always),
        # then step down until one really fits.
        lo, hi = 0, len(candidates) - 1
        best = -1
        while lo <= hi:
            mid = (lo + hi) // 2
            if tok.count(text[start : candidates[mid]]) <= real_budget:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        i = max(best, 0)
        while True:
            end = candidates[i]
            n = tok.count(text[start:end])
            if n <= real_budget or i == 0:
                break
            i -= 1
        if n > real_budget:
            raise RuntimeError(
                f"chunker: cannot fit text at offset {start} into {real_budget} tokens"
            )
    k = int(np.searchsorted(layout.ge, end, side="left"))
    gap = k if k < layout.ge.shape[0] and int(layout.ge[k]) == end else -1
    return end, gap, n


def _overlap_start(layout: _Layout, start: int, end: int, overlap: int) -> int:
    """Start of the next chunk: the earliest whitespace gap in ``(start, end)`` whose tail
    ``[gs, end)`` costs at most ``overlap``; -1 when there is none."""
    lo = max(
        int(np.searchsorted(layout.gs, start, side="right")),
        int(np.searchsorted(layout.ps, int(layout.cost[end]) - overlap, side="left")),
    )
    hi = int(np.searchsorted(layout.gs, end, side="left"))
    if hi <= lo:
        return -1
    word_gaps = np.flatnonzero(layout.lv[lo:hi] >= _LV_WORD)
    if word_gaps.size == 0:
        return -1
    return int(layout.gs[lo + int(word_gaps[0])])
