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

import contextlib
import dataclasses
import itertools
import re
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    "chunk_structured",
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

# The heuristic tokenizer measures texts joined in groups of about this many characters: enough
# to spread numpy's overhead per call over many texts, few enough that the temporary arrays
# (some 20 bytes per character) stay small.
_GROUP_CHARS: Final = 1 << 17

# Gap levels (higher is a better place to end a chunk).
_LV_NONE: Final = 0
_LV_WORD: Final = 1
_LV_SENTENCE: Final = 2
_LV_LINE: Final = 3
_LV_PARAGRAPH: Final = 4
_LV_HEADING: Final = 5  # a line break before a heading the parser found (chunk_structured only)

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
CodePoints = npt.NDArray[np.uint8] | npt.NDArray[np.uint32]


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
    """A text measured once: prefix costs and the gaps where it can be cut.

    Texts may be measured together (``HeuristicTokenizer._joined_layouts``): the arrays and
    ``text`` are then those of all of them joined, shared by their layouts, and this text is
    ``text[base:stop]``. Positions are offsets in ``text``; a text's gaps are a contiguous range
    of the gap arrays, and positions and costs increase along the arrays, so a search for a
    position or a cost inside this text finds only this text's gaps.
    """

    text: str
    base: int  # where this text starts in ``text``
    stop: int  # where it ends
    start: int  # first non-whitespace character
    end: int  # one past the last non-whitespace character
    cost: IntArray  # cost[p]: cost units of text[:p] (len(text) + 1 entries)
    real: IntArray | None  # real[p]: tokens starting before p; None when cost is exact
    ge: IntArray  # per gap: where a chunk ending at the gap ends
    gs: IntArray  # per gap: where the next chunk starting at the gap starts
    levels: bytes  # per gap: its level (one byte per gap, searched with find/rfind)
    word_gaps: bytes  # per gap: 1 when its level is at least _LV_WORD, else 0
    pe: IntArray  # cost[ge]
    ps: IntArray  # cost[gs]
    hard_cuts: IntArray | None  # sorted positions allowed for a hard cut; None: any position

    @property
    def empty(self) -> bool:
        return self.start >= self.end


def _layouts_of(
    text: str,
    spans: Iterable[tuple[int, int, int, int]],
    cost: IntArray,
    real: IntArray | None,
    gaps: tuple[IntArray, IntArray, npt.NDArray[np.int8]],
    hard_cuts: IntArray | None,
) -> list[_Layout]:
    """The layouts of the texts ``(base, stop, start, end)`` of ``text``, sharing its arrays."""
    ge, gs, lv = gaps
    levels = lv.tobytes()
    word_gaps = (lv >= _LV_WORD).tobytes()
    pe = cost[ge]
    ps = cost[gs]
    return [
        _Layout(text, *span, cost, real, ge, gs, levels, word_gaps, pe, ps, hard_cuts)
        for span in spans
    ]


def _empty_layout(text: str) -> _Layout:
    z = np.zeros(0, dtype=np.int64)
    gaps = (z, z, z.astype(np.int8))
    cost = np.zeros(len(text) + 1, np.int64)
    return _layouts_of(text, [(0, len(text), 0, 0)], cost, None, gaps, None)[0]


def _classes(text: str) -> tuple[CodePoints, npt.NDArray[np.uint8]]:
    """Code points of ``text`` (one byte each when it is ASCII) and their character classes."""
    if text.isascii():
        cp: CodePoints = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        return cp, _CLASS_TABLE.take(cp)
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if int(cp.max()) <= 0xFFFF:
        return cp, _CLASS_TABLE.take(cp)
    cls = _CLASS_TABLE.take(np.minimum(cp, 0xFFFF))
    astral = cp > 0xFFFF
    # CJK extensions B..F and compatibility supplement
    cjk = ((cp >= 0x20000) & (cp <= 0x2CEAF)) | ((cp >= 0x2F800) & (cp <= 0x2FA1F))
    cls = np.where(astral, np.where(cjk, _C_CJK, 0), cls).astype(np.uint8)
    # Astral combining marks (Brahmi, musical symbols, variation selectors, ...); emoji
    # (U+1F000..) and CJK (U+20000..) have none.
    for i in np.flatnonzero(astral & ((cp < 0x1F000) | (cp >= 0xE0000))).tolist():
        if unicodedata.category(text[i])[0] == "M":
            cls[i] |= _C_MARK
    return cp, cls


def _utf8_offsets(text: str) -> IntArray:
    """``out[p]``: UTF-8 bytes of ``text[:p]`` (``len(text) + 1`` entries)."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    lead = np.empty(data.shape[0] + 1, dtype=bool)  # the first byte of a character, or the end
    np.not_equal(data & 0xC0, 0x80, out=lead[:-1])
    lead[-1] = True
    return np.flatnonzero(lead)


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
    cp: CodePoints,
    cls: npt.NDArray[np.uint8],
    g0: IntArray,
    g1: IntArray,
    n_ws: IntArray,
) -> tuple[IntArray, IntArray, npt.NDArray[np.int8]]:
    """Cut positions and levels of the gaps ``[g0, g1)`` between consecutive words.

    ``n_ws`` is the number of whitespace characters in each gap. A gap may hold, besides
    whitespace, characters the tokenizer drops (control characters, zero-width spaces, stray
    combining marks): a chunk ends before the gap's first whitespace and the next starts after
    that run of whitespace, so that only whitespace ever falls between two chunks.

    Only the characters of a gap and those next to it are looked at (and the one before a
    closing quote or bracket that ends a word), so texts joined by a space (whitespace, not a
    line break, not a sentence end) can be measured at once, without the gaps around the
    spaces.
    """
    # Exact cuts only: at whitespace, or between two words that touch, unless a combining
    # mark follows (canonical reordering of marks would cross the cut). Gaps of dropped
    # characters only (e.g. "e\u0301.") are not cut at all.
    nxt = cls[np.minimum(g1, cls.shape[0] - 1)]  # class of the character after the gap
    keep = (n_ws > 0) | ((g1 == g0) & ((nxt & _C_MARK) == 0))
    if not keep.all():
        g0, g1, n_ws, nxt = g0[keep], g1[keep], n_ws[keep], nxt[keep]
    if g0.size == 0:
        return g0, g1, np.zeros(0, dtype=np.int8)
    mixed = np.flatnonzero((n_ws > 0) & (n_ws < g1 - g0))  # rare: not only whitespace
    ge, gs = (g0.copy(), g1.copy()) if mixed.size else (g0, g1)
    for i in mixed.tolist():
        a, b = int(g0[i]), int(g1[i])
        k = a
        while not text[k].isspace():
            k += 1
        ge[i] = k
        while k < b and text[k].isspace():
            k += 1
        gs[i] = k
    # The gap of each line break (they are few): the first gap ending after it, if it starts
    # at or before it. Sorted, so a gap with two breaks or more appears twice in a row.
    breaks = np.flatnonzero((cls & _C_BREAK) != 0)
    after = cp[np.minimum(breaks + 1, cp.shape[0] - 1)]
    breaks = breaks[(cp[breaks] != 0x0D) | (after != 0x0A)]  # "\r\n" is one line break
    gap = g1.searchsorted(breaks, side="right")
    inside = gap < g1.shape[0]
    gap = gap[inside]
    lines = gap[g0[gap] <= breaks[inside]]
    paragraphs = lines[1:][lines[1:] == lines[:-1]]
    prev = cls[g0 - 1]  # a gap always follows a word: g0 >= 1
    sentence = (prev & _C_END) != 0
    closed = np.flatnonzero(((prev & _C_CLOSER) != 0) & (g0 >= 2))  # e.g. 'end." next'
    sentence[closed] |= (cls[g0[closed] - 2] & _C_END) != 0
    has_ws = n_ws > 0
    lv = np.full(g0.shape[0], _LV_NONE, dtype=np.int8)
    lv[has_ws | (((prev | nxt) & _C_CJK) != 0)] = _LV_WORD
    lv[(has_ws & sentence) | ((prev & _C_CJK_END) != 0)] = _LV_SENTENCE
    lv[lines] = _LV_LINE
    lv[paragraphs] = _LV_PARAGRAPH
    return ge, gs, lv


# --------------------------------------------------------------------------- tokenizers


def _groups(texts: Sequence[str]) -> Iterator[Sequence[str]]:
    """Consecutive texts in groups of about ``_GROUP_CHARS`` characters (a longer text alone)."""
    i = 0
    while i < len(texts):
        j, size = i + 1, len(texts[i])
        while j < len(texts) and size + len(texts[j]) < _GROUP_CHARS:
            size += len(texts[j]) + 1
            j += 1
        yield texts[i:j]
        i = j


def _joined(texts: Sequence[str]) -> tuple[str, IntArray, IntArray]:
    """The texts joined by a space, and where each starts and stops in the joined text."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    stops = np.cumsum(lengths + 1) - 1  # text i is text[bases[i]:stops[i]]
    return " ".join(texts), stops - lengths, stops


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
        layouts: list[_Layout] = []
        for group in _groups(texts):
            layouts += self._joined_layouts(group)
        return layouts

    def _joined_layouts(self, texts: Sequence[str]) -> list[_Layout]:
        """The texts measured at once, joined by a space: each numpy call runs once for all of
        them rather than once per text. Nothing crosses a separator: it ends the word before it,
        the gap around it is dropped, and the levels of the other gaps see it at most as the
        character before a closing quote that starts a text, where it is no sentence end (as
        for the text alone)."""
        text, bases, stops = _joined(texts)
        cp, cls = _classes(text)
        ws = (cls & _C_SPACE).view(np.bool_)
        cost = _utf8_offsets(text)
        # Words: maximal runs of non-whitespace, and each CJK ideograph on its own (CJK text
        # has no spaces); gaps: the whitespace between words (empty between adjacent words).
        padded = np.ones(ws.shape[0] + 2, dtype=bool)  # whitespace before and after the text
        padded[1:-1] = ws
        runs = np.flatnonzero(padded[1:] != padded[:-1])  # a word starts, ends, starts, ...
        word_starts = runs[0::2]
        word_ends = runs[1::2]
        cjk = None if text.isascii() else (cls & (_C_CJK | _C_CJK_END)) != 0
        if cjk is not None and cjk.any():
            inner = np.flatnonzero(~ws[1:] & ~ws[:-1] & (cjk[:-1] | cjk[1:])) + 1
            word_starts = np.union1d(word_starts, inner)
            word_ends = np.union1d(word_ends, inner)
        first_word = word_starts.searchsorted(bases)  # the words of text i: [first, last)
        last_word = word_starts.searchsorted(stops)
        # Gap k lies between words k and k + 1; the one after each text's last word crosses
        # the separator.
        keep = np.ones(max(word_starts.shape[0] - 1, 0), dtype=bool)
        crossing = last_word[last_word > first_word] - 1
        keep[crossing[crossing < keep.shape[0]]] = False
        g0 = word_ends[:-1][keep]
        g1 = word_starts[1:][keep]
        gaps = _gaps(text, cp, cls, g0, g1, g1 - g0)  # gaps hold whitespace only
        spans = []
        for base, stop, first, last in zip(
            bases.tolist(), stops.tolist(), first_word.tolist(), last_word.tolist(), strict=True
        ):
            if first < last:
                spans.append((base, stop, word_starts.item(first), word_ends.item(last - 1)))
            else:  # empty or whitespace only
                spans.append((base, stop, base, base))
        return _layouts_of(text, spans, cost, None, gaps, None)

    def _measure(self, texts: list[str]) -> list[tuple[int, int] | None]:
        return [(len(t.encode("utf-8", "surrogatepass")), 0) for t in texts]


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
        self._table = _WordTable()  # words' pieces (see _encode_many)
        self._table_lock = threading.Lock()

    def count(self, text: str) -> int:
        return len(self._tk.encode(text, add_special_tokens=False).ids)

    @property
    def _separator_units(self) -> int:
        return 0  # whitespace: no token

    @property
    def _exact(self) -> bool:
        return False

    def _layouts(self, texts: Sequence[str]) -> list[_Layout]:
        layouts: list[_Layout] = []
        for group in _groups(texts):
            layouts += self._joined_layouts(group)
        return layouts

    def _encode_many(self, texts: Sequence[str]) -> list[_Encoding]:
        """What ``encode(text, add_special_tokens=False)`` gives for each text, as arrays, from
        the encodings of its words (runs of characters other than ASCII space, tab, CR and LF).

        Exact: the BERT normalizer works character by character (clean-up, CJK spacing, lower
        case, accents) and the pre-tokenizer splits at every whitespace character, these four
        included, so no token, added tokens included, spans one of them and a word's tokens
        depend on the word alone. Rather than the whole text (a whole text costs about 5 us per
        token: 90 ms for a 20-page PDF's 100 KB), each distinct word is encoded once, in one
        batch, and remembered (words up to ``_CACHED_WORD_CHARS`` characters, at most
        ``_CACHED_WORDS`` of them): prose repeats its words, so the text's arrays are gathered
        from a few thousand words' pieces (8 ms for the same PDF). Word ids only keep their
        grouping (numbered from 0 along each text), which is all ``_layout`` reads of them.
        """
        splits = list(map(_split_words, texts))
        with self._table_lock:  # the table is shared by the threads that chunk
            table = self._table
            with contextlib.suppress(KeyError):  # the common case: every word known
                return [table.gather(starts, words) for starts, words in splits]
            index = table.index
            distinct = dict.fromkeys(itertools.chain.from_iterable(w for _, w in splits))
            missing = [w for w in distinct if w not in index]
            kept = [w for w in missing if len(w) <= _CACHED_WORD_CHARS]
            if kept and table.count + len(kept) > _CACHED_WORDS:
                table.clear()  # rare: a corpus with that many distinct words
                missing = list(distinct)
                kept = [w for w in missing if len(w) <= _CACHED_WORD_CHARS]
            if missing:
                # the words kept first: the others (long words, rarely repeated) are dropped
                # after this call, by cutting the table back to where they start
                once = [w for w in missing if len(w) > _CACHED_WORD_CHARS]
                table.add(kept + once, self._tk.encode_batch(kept + once, add_special_tokens=False))
                out = [table.gather(starts, words) for starts, words in splits]
                table.truncate(min(table.count - len(once), _CACHED_WORDS))
            else:
                out = [table.gather(starts, words) for starts, words in splits]
        return out

    def _measure(self, texts: list[str]) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for enc in self._tk.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids
            if self._unk_id in ids:  # maybe an over-long word, budgeted by its bytes
                out.append(None)
            else:
                out.append((len(ids) * _UNITS, len(ids)))
        return out

    def _joined_layouts(self, texts: Sequence[str]) -> list[_Layout]:
        """The texts measured at once, joined by a space (as ``HeuristicTokenizer`` does): each
        numpy call runs once for all of them (per text, some 30 calls cost more than the
        measure of a short document). No token spans the separator (whitespace), the gap
        across it is dropped, and each text's content span and tokens are its own."""
        text, bases, stops = _joined(texts)
        ids, ts, te, words = self._encode_many([text])[0]
        if ids.shape[0] == 0:
            return [_empty_layout(t) for t in texts]  # nothing the model would see
        cp, cls = _classes(text)
        ws = (cls & _C_SPACE) != 0
        n = len(text)
        content = np.flatnonzero(~ws)
        c0, c1 = content.searchsorted(bases), content.searchsorted(stops)
        t0, t1 = ts.searchsorted(bases), ts.searchsorted(stops)
        spans = []
        for base, stop, a, b, x, y in zip(
            bases.tolist(),
            stops.tolist(),
            c0.tolist(),
            c1.tolist(),
            t0.tolist(),
            t1.tolist(),
            strict=True,
        ):
            if a < b and x < y:
                spans.append((base, stop, content.item(a), content.item(b - 1) + 1))
            else:  # empty, whitespace only, or only characters the tokenizer drops
                spans.append((base, stop, base, base))

        starts_per_char = np.bincount(ts, minlength=n)[:n]
        real = _prefix(starts_per_char)
        blob = (ids == self._unk_id) & (te - ts > 1)
        if blob.any():
            per_char = np.bincount(ts[~blob], minlength=n)[:n].astype(np.int64) * _UNITS
            lengths = np.diff(_utf8_offsets(text))
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

        # Words of the pre-tokenizer and the gaps between them (not across a separator).
        first = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
        w_start = np.minimum.reduceat(ts, first)
        w_end = np.maximum.reduceat(te, first)
        owner = bases.searchsorted(w_start, side="right")  # the text of each word, plus one
        same = owner[:-1] == owner[1:]
        g0 = w_end[:-1][same]
        g1 = w_start[1:][same]
        ok = g1 >= g0
        if not ok.all():  # overlapping words (never seen): do not cut there
            g0, g1 = g0[ok], g1[ok]
        ws_prefix = _prefix(ws)
        gaps = _gaps(text, cp, cls, g0, g1, ws_prefix[g1] - ws_prefix[g0])
        return _layouts_of(text, spans, cost, real, gaps, hard_cuts)


_Encoding = tuple[IntArray, IntArray, IntArray, IntArray]
"""A text's encoding: token ids, token starts, token ends (offsets in the text), word ids."""

_CACHED_WORDS: Final = 1 << 16
_CACHED_WORD_CHARS: Final = 48
_SPLITS_ASCII: Final = np.zeros(256, dtype=np.bool_)
_SPLITS_ASCII[[0x09, 0x0A, 0x0D, 0x20]] = True


_OTHER_SPACE: Final = re.compile(
    "[\x0b\x0c\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
"""The characters ``str.split()`` splits at besides ASCII space, tab, CR and LF."""


def _split_words(text: str) -> tuple[IntArray, list[str]]:
    """Where each word of ``text`` starts, and the words: maximal runs of characters other than
    ASCII space, tab, CR and LF (which every tokenizer here splits at)."""
    if text.isascii():
        split = _SPLITS_ASCII.take(np.frombuffer(text.encode("ascii"), dtype=np.uint8))
    else:
        cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        split = (cp == 0x20) | (cp == 0x0A) | (cp == 0x09) | (cp == 0x0D)
    padded = np.ones(split.shape[0] + 2, dtype=np.bool_)
    padded[1:-1] = split
    runs = np.flatnonzero(padded[1:] != padded[:-1])  # a word starts, ends, starts, ...
    starts = runs[0::2]
    if _OTHER_SPACE.search(text) is None:  # str.split() splits exactly there (in C)
        return starts, text.split()
    return starts, [text[a:b] for a, b in zip(starts.tolist(), runs[1::2].tolist(), strict=True)]


class _WordTable:
    """Distinct words' WordPiece encodings, flattened into arrays: word ``k``'s tokens are
    ``ids[first[k]:first[k] + lens[k]]`` (their offsets in the word ``starts``/``ends``, their
    pre-tokenizer word ids ``wids``, numbered from 0 in the word, ``nwords[k]`` of them). A text
    is then gathered with numpy alone, from its words' numbers (``index``)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.words: list[str] = []  # by number
        self.count = 0  # words
        self.flat = 0  # tokens
        self.lens = np.zeros(1024, np.int64)
        self.nwords = np.zeros(1024, np.int64)
        self.first = np.zeros(1025, np.int64)  # first[count] == flat
        self.ids = np.zeros(4096, np.int64)
        self.starts = np.zeros(4096, np.int64)
        self.ends = np.zeros(4096, np.int64)
        self.wids = np.zeros(4096, np.int64)

    def clear(self) -> None:
        self.index.clear()
        self.words.clear()
        self.count = self.flat = 0

    def add(self, words: list[str], encodings: Sequence[Any]) -> None:
        n = len(words)
        lens = np.fromiter((len(e.ids) for e in encodings), np.int64, n)
        total = int(lens.sum())
        self._reserve(self.count + n, self.flat + total)
        c, f = self.count, self.flat
        self.lens[c : c + n] = lens
        self.nwords[c : c + n] = np.fromiter(
            (e.word_ids[-1] + 1 if e.word_ids else 0 for e in encodings), np.int64, n
        )
        np.cumsum(lens, out=self.first[c + 1 : c + n + 1])
        self.first[c + 1 : c + n + 1] += f
        chain = itertools.chain.from_iterable
        self.ids[f : f + total] = np.fromiter(chain(e.ids for e in encodings), np.int64, total)
        offsets = np.fromiter(chain(chain(e.offsets for e in encodings)), np.int64, 2 * total)
        self.starts[f : f + total] = offsets[0::2]
        self.ends[f : f + total] = offsets[1::2]
        self.wids[f : f + total] = np.fromiter(
            chain(e.word_ids for e in encodings), np.int64, total
        )
        self.index.update(zip(words, range(c, c + n), strict=True))
        self.words += words
        self.count, self.flat = c + n, f + total

    def truncate(self, count: int) -> None:
        """Keeps the first ``count`` words only."""
        if count >= self.count:
            return
        for w in self.words[count:]:
            del self.index[w]
        del self.words[count:]
        self.count, self.flat = count, int(self.first[count])

    def _reserve(self, words: int, tokens: int) -> None:
        if words >= self.lens.shape[0]:
            size = max(words + 1, 2 * self.lens.shape[0])
            for name in ("lens", "nwords"):
                setattr(self, name, _grown(getattr(self, name), size))
            self.first = _grown(self.first, size + 1)
        if tokens > self.ids.shape[0]:
            size = max(tokens, 2 * self.ids.shape[0])
            for name in ("ids", "starts", "ends", "wids"):
                setattr(self, name, _grown(getattr(self, name), size))

    def gather(self, starts: IntArray, words: list[str]) -> _Encoding:
        """The encoding of a text whose words (each in the table) start at ``starts``."""
        occ = np.fromiter(map(self.index.__getitem__, words), np.int64, len(words))
        per_occ = self.lens[occ]
        out_first = _prefix(per_occ)  # occurrence i's tokens: out[out_first[i]:out_first[i + 1]]
        idx = np.arange(int(out_first[-1]), dtype=np.int64) + np.repeat(
            self.first[occ] - out_first[:-1], per_occ
        )
        shift = np.repeat(starts, per_occ)
        word_base = np.repeat(_prefix(self.nwords[occ])[:-1], per_occ)
        return (
            self.ids[idx],
            self.starts[idx] + shift,
            self.ends[idx] + shift,
            self.wids[idx] + word_base,
        )


def _grown(a: IntArray, size: int) -> IntArray:
    out = np.zeros(size, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


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


def chunk_structured(
    title: str | None, body: str, config: ChunkerConfig, heading_starts: Iterable[int]
) -> list[Chunk]:
    """``chunk_document`` for a parsed document whose headings start at the character offsets
    ``heading_starts`` of ``body`` (``pgingest.raw``): a line break before a heading is the
    strongest place to end a chunk (above a paragraph break), and the chunk after it starts at
    the heading, without overlap. Without headings it gives exactly ``chunk_document``'s chunks.
    """
    tok = get_tokenizer(config.tokenizer)
    layout = _with_headings(tok._layouts([body])[0], heading_starts)
    return _chunk(tok, layout, _titles(tok, [title], config)[0], config)


def _with_headings(layout: _Layout, heading_starts: Iterable[int]) -> _Layout:
    """``layout`` with the line-break gaps before the given offsets raised to _LV_HEADING."""
    starts = np.fromiter((int(h) + layout.base for h in heading_starts), dtype=np.int64)
    if starts.size == 0 or layout.gs.size == 0:
        return layout
    levels = np.frombuffer(layout.levels, dtype=np.int8).copy()
    hit = np.isin(layout.gs, starts) & (levels >= _LV_LINE)
    if not hit.any():
        return layout
    levels[hit] = _LV_HEADING
    return dataclasses.replace(layout, levels=levels.tobytes())


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
        units = layout.cost.item(layout.end) - layout.cost.item(layout.start)
        if units <= cap:
            text = layout.text[layout.start : layout.end]
            tokens = 0
            if layout.real is not None:
                tokens = layout.real.item(layout.end) - layout.real.item(layout.start)
            return _Title(text, units + tok._separator_units, tokens)
        limit = layout.cost.item(layout.start) + cap
        hi = int(layout.pe.searchsorted(limit, side="right"))
        lo = int(layout.ge.searchsorted(layout.start, side="right"))
        cut = layout.ge.item(hi - 1) if hi > lo else _hard_cut(layout, layout.start, limit)
        shorter = layout.text[layout.base : cut].rstrip()
        if len(shorter) >= layout.stop - layout.base:  # cannot shrink (defensive)
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

    # A chunk starts at a non-whitespace character, which no gap's [ge, gs) (whitespace) holds:
    # the gaps ending after it (``after``: the index of the first) also start after it.
    spans: list[tuple[int, int, int]] = []  # (start, end, real text tokens or -1)
    start, after, start_hard = layout.start, _first_gap_after(layout, layout.start), False
    fallback: tuple[int, int, bool] | None = None  # the next start without overlap
    while True:
        end, gap = _pick_end(layout, start, after, budget)
        real = -1
        if not tok._exact and (start_hard or gap < 0 and end != doc_end):
            end, gap, real = _verify(tok, layout, start, end, real_budget)
        if spans and end <= spans[-1][1] and fallback is not None:
            start, after, start_hard = fallback  # the overlap left no room: start without it
            fallback = None
            continue
        spans.append((start, end, real))
        if end >= doc_end:
            break
        if gap >= 0:
            no_overlap = (layout.gs.item(gap), gap + 1, False)
        else:  # after a hard cut, skip whitespace inside the word
            nxt = end
            while text[nxt].isspace():
                nxt += 1
            no_overlap = (nxt, _first_gap_after(layout, nxt), True)
        at_heading = gap >= 0 and layout.levels[gap] == _LV_HEADING
        ov = (
            _overlap_start(layout, after, end, gap, overlap)
            if overlap > 0 and not at_heading
            else -1
        )
        if ov < 0:
            (start, after, start_hard), fallback = no_overlap, None
        else:
            start, after, start_hard, fallback = layout.gs.item(ov), ov + 1, False, no_overlap

    chunks: list[Chunk] = []
    prefix = title.text + _TITLE_SEPARATOR if title.text else ""
    base = layout.base
    for ordinal, (s, e, real) in enumerate(spans):
        piece = text[s:e]
        if tok._exact:
            n_tokens = -(-(title.units + cost.item(e) - cost.item(s)) // _UNITS)
        else:
            if real < 0:
                assert layout.real is not None
                real = layout.real.item(e) - layout.real.item(s)
            n_tokens = title.tokens + real
        chunks.append(
            Chunk(
                ordinal=ordinal,
                text=piece,
                char_start=s - base,
                char_end=e - base,
                token_count=n_tokens + tok.special_tokens,
                embed_input=prefix + piece,
            )
        )
    return chunks


def _first_gap_after(layout: _Layout, start: int) -> int:
    """Index of the first gap that ends after ``start``."""
    return int(layout.ge.searchsorted(start, side="right"))


def _pick_end(layout: _Layout, start: int, lo: int, budget: int) -> tuple[int, int]:
    """End of the chunk starting at ``start`` (``lo``: its first gap after it): ``(end, gap
    index)``, gap -1 for a hard cut."""
    start_cost = layout.cost.item(start)
    limit = start_cost + budget
    if layout.cost.item(layout.end) <= limit:
        return layout.end, -1
    # The window is [lo, hi): the gaps after start that fit; ``full``: the first gap that
    # leaves the chunk at least 1/_MIN_FILL full. One search for both (costs are integers:
    # side="right" of limit is side="left" of limit + 1).
    full, hi = layout.pe.searchsorted((start_cost + budget // _MIN_FILL, limit + 1)).tolist()
    if hi > lo:
        # Strongest gap in the window, furthest among equals; but a gap that would leave the
        # chunk less than _MIN_FILL full (the tail of a paragraph) only when there is no other.
        a = full if lo <= full < hi else lo
        for level in range(_LV_HEADING, _LV_NONE, -1):
            idx = layout.levels.rfind(level, a, hi)
            if idx >= 0:
                break
        else:  # only gaps of level _LV_NONE
            idx = hi - 1
        return layout.ge.item(idx), idx
    return _hard_cut(layout, start, limit), -1


def _hard_cut(layout: _Layout, start: int, limit: int) -> int:
    """Furthest allowed position after ``start`` whose cost stays within ``limit``."""
    p_max = min(int(layout.cost.searchsorted(limit, side="right")) - 1, layout.end)
    text = layout.text
    if layout.hard_cuts is None:
        p = max(p_max, start + 1)
    else:
        cuts = layout.hard_cuts
        i = int(cuts.searchsorted(p_max, side="right"))
        if i > 0 and cuts[i - 1] > start:
            p = int(cuts[i - 1])
        else:  # the first allowed cut is over the limit (cannot happen with sane budgets)
            p = int(cuts[cuts.searchsorted(start, side="right")])
    # Do not separate a character from the marks and joiners that extend it (if possible),
    # and do not end on whitespace (a word the tokenizer did not split can hold some).
    while p > start + 1 and p < layout.stop and _extends(text[p - 1], text[p]):
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


def _overlap_start(layout: _Layout, after: int, end: int, gap: int, overlap: int) -> int:
    """Start of the next chunk: the earliest whitespace gap in ``(start, end)`` whose tail
    ``[gs, end)`` costs at most ``overlap`` (its index; -1 when there is none). ``after`` is
    the first gap after the chunk's start, ``gap`` the one it ends at (-1: a hard cut)."""
    hi = gap if gap >= 0 else int(layout.gs.searchsorted(end, side="left"))
    lo = max(after, int(layout.ps.searchsorted(layout.cost.item(end) - overlap)))
    if hi <= lo:
        return -1
    return layout.word_gaps.find(1, lo, hi)
