"""Tests of the chunker (pure: no database)."""

from __future__ import annotations

import ast
import hashlib
import math
import random
import re
import sysconfig
import unicodedata
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from pgingest.chunking import (
    CHUNKER_ALGORITHM,
    MIN_BODY_TOKENS,
    Chunk,
    ChunkerConfig,
    chunk_document,
    chunk_documents,
    get_tokenizer,
)

MINILM = "all-MiniLM-L6-v2"
HEURISTIC = "heuristic"


# --------------------------------------------------------------------------- references


@cache
def reference_tokenizer() -> HFTokenizer:
    """The vendored tokenizer loaded independently of pgingest.chunking."""
    data = resources.files("pgingest").joinpath("data", "all-MiniLM-L6-v2.tokenizer.json")
    tk = HFTokenizer.from_str(data.read_text(encoding="utf-8"))
    tk.no_truncation()
    tk.no_padding()
    return tk


def model_tokens(tokenizer: str, text: str) -> int:
    """What the model sees for ``text``: special tokens included."""
    if tokenizer == MINILM:
        return len(reference_tokenizer().encode(text).ids)
    return math.ceil(len(text.encode("utf-8")) / 3)


def bare_tokens(tokenizer: str, text: str) -> int:
    if tokenizer == MINILM:
        return len(reference_tokenizer().encode(text, add_special_tokens=False).ids)
    return math.ceil(len(text.encode("utf-8")) / 3)


@cache
def english_docstrings() -> tuple[str, ...]:
    """Real English text: docstrings of the standard library."""
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    out.append(doc)
    assert len(out) > 200, "the standard library should have plenty of docstrings"
    return tuple(out)


@cache
def english_words() -> tuple[str, ...]:
    return tuple(w for d in english_docstrings()[:400] for w in d.split())


def prose_paragraphs() -> list[str]:
    """Paragraphs of docstrings that are English prose (>= 90% letters and spaces)."""
    out = []
    for doc in english_docstrings():
        for para in re.split(r"\n\s*\n", doc):
            letters = sum(c.isalpha() or c.isspace() for c in para)
            if len(para) >= 200 and letters / len(para) >= 0.9:
                out.append(para)
    return out


def last_seen_char(text: str) -> str:
    """The last character of ``text`` that WordPiece does not drop (it drops marks, format,
    control and private-use characters)."""
    i = len(text)
    while (
        i
        and not text[i - 1].isspace()
        and unicodedata.category(text[i - 1]) in ("Mn", "Me", "Mc", "Cf", "Cc", "Co")
    ):
        i -= 1
    return text[i - 1 : i]


def is_cjk(ch: str) -> bool:
    """A CJK ideograph or full-width sentence end: a word of its own for the chunker."""
    if not ch:
        return False
    cp = ord(ch)
    return (
        0x3400 <= cp <= 0x4DBF
        or 0x4E00 <= cp <= 0x9FFF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x2CEAF
        or 0x2F800 <= cp <= 0x2FA1F
        or ch in "\u3002\uff01\uff1f\uff61"
    )


def assert_valid(title: str | None, body: str, cfg: ChunkerConfig, chunks: list[Chunk]) -> None:
    """Every invariant the worker and the checker rely on."""
    if not body.strip() or (cfg.tokenizer == MINILM and bare_tokens(MINILM, body) == 0):
        assert chunks == []
        return
    assert chunks, "a body with content gives chunks"
    title_part = None
    for i, c in enumerate(chunks):
        assert c.ordinal == i
        assert body[c.char_start : c.char_end] == c.text
        assert c.text and not c.text[0].isspace() and not c.text[-1].isspace()
        # The budget: what the model sees fits, and token_count is exactly that.
        assert c.token_count == model_tokens(cfg.tokenizer, c.embed_input), c
        assert c.token_count <= cfg.max_tokens, c
        if c.embed_input == c.text:
            part = ""
        else:
            assert c.embed_input.endswith("\n\n" + c.text)
            part = c.embed_input[: -len(c.text) - 2]
            assert part == part.strip() and part
        if title_part is None:
            title_part = part
        assert part == title_part, "every chunk of a document has the same title"
        if i:
            prev = chunks[i - 1]
            assert prev.char_start < c.char_start and prev.char_end < c.char_end
            # Nothing but whitespace is skipped between chunks.
            assert body[prev.char_end : c.char_start].strip() == ""
            if c.char_start < prev.char_end:  # overlap, within its budget
                # ... and starts at a word: after whitespace, or next to a CJK character.
                before = last_seen_char(body[: c.char_start])
                assert (
                    before.isspace()
                    or is_cjk(before)
                    or is_cjk(body[c.char_start - 1])
                    or is_cjk(body[c.char_start])
                )
                overlap = body[c.char_start : prev.char_end]
                assert bare_tokens(cfg.tokenizer, overlap) <= cfg.overlap_tokens
    assert chunks[0].char_start == len(body) - len(body.lstrip())
    assert chunks[-1].char_end == len(body.rstrip())
    stripped_title = (title or "").strip()
    if not cfg.include_title or not stripped_title:
        assert title_part == ""
    elif title_part:
        assert stripped_title.startswith(title_part)
    else:  # the title was dropped: when there is (almost) no room for it, or nothing to see
        room = cfg.max_tokens - get_tokenizer(cfg.tokenizer).special_tokens - MIN_BODY_TOKENS
        assert room < 8 or bare_tokens(cfg.tokenizer, stripped_title) == 0


# --------------------------------------------------------------------------- configuration


def test_config_defaults_and_version() -> None:
    cfg = ChunkerConfig()
    assert (cfg.tokenizer, cfg.max_tokens, cfg.overlap_tokens, cfg.include_title) == (
        MINILM,
        200,
        20,
        True,
    )
    assert cfg.version == "pgingest-chunker/1 tok=all-MiniLM-L6-v2 max=200 overlap=20 title=1"
    assert cfg.version.startswith(CHUNKER_ALGORITHM + " ")
    variants = {
        ChunkerConfig(tokenizer=HEURISTIC).version,
        ChunkerConfig(max_tokens=128).version,
        ChunkerConfig(overlap_tokens=0).version,
        ChunkerConfig(include_title=False).version,
        cfg.version,
    }
    assert len(variants) == 5, "every field shows in the version"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"max_tokens": -5}, "max_tokens must be a positive integer"),
        ({"max_tokens": 7, "overlap_tokens": 0}, "max_tokens must be at least 8"),
        ({"max_tokens": 200.0}, "max_tokens must be a positive integer"),
        ({"max_tokens": True}, "max_tokens must be a positive integer"),
        ({"overlap_tokens": -1}, "overlap_tokens must be a non-negative integer"),
        ({"max_tokens": 50, "overlap_tokens": 50}, r"overlap_tokens \(50\) must be smaller"),
        ({"max_tokens": 50, "overlap_tokens": 80}, r"overlap_tokens \(80\) must be smaller"),
        ({"tokenizer": "cl100k_base"}, "unknown chunk tokenizer 'cl100k_base'"),
        ({"include_title": "yes"}, "include_title must be a bool"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkerConfig(**kwargs)  # type: ignore[arg-type]


def test_get_tokenizer() -> None:
    tok = get_tokenizer(MINILM)
    assert get_tokenizer(MINILM) is tok, "loaded once, cached"
    assert tok.special_tokens == 2
    assert tok.count("hello world") == 2
    assert tok.count_input("hello world") == 4
    assert get_tokenizer(HEURISTIC).count("abcd") == 2
    assert get_tokenizer(HEURISTIC).count_input("") == 0
    with pytest.raises(ValueError, match=r"unknown chunk tokenizer 'bert'.*all-MiniLM-L6-v2"):
        get_tokenizer("bert")


def test_vendored_tokenizer_is_pinned() -> None:
    """A different tokenizer file changes every chunk: it needs a new chunker version."""
    data = resources.files("pgingest").joinpath("data")
    digest = hashlib.sha256(data.joinpath("all-MiniLM-L6-v2.tokenizer.json").read_bytes())
    assert digest.hexdigest() == (
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
    )
    notice = data.joinpath("NOTICE").read_text(encoding="utf-8")
    assert "sentence-transformers/all-MiniLM-L6-v2" in notice and "Apache" in notice
    assert digest.hexdigest() in notice


def test_vendored_tokenizer_has_no_truncation() -> None:
    """The file truncates to 128 and pads to 128: the chunker must count without either."""
    text = " ".join(["word"] * 300)
    assert get_tokenizer(MINILM).count(text) == 300
    assert bare_tokens(MINILM, text) == 300


# --------------------------------------------------------------------------- basic behaviour


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
@pytest.mark.parametrize("body", ["", " ", "\n\n\t \r\n", "\u3000\xa0\u2028"])
def test_empty_or_whitespace_body(tokenizer: str, body: str) -> None:
    assert chunk_document("A title", body, ChunkerConfig(tokenizer=tokenizer)) == []


def test_body_the_model_cannot_see() -> None:
    """Only characters WordPiece drops: nothing to embed (heuristic: they count)."""
    body = "\x00\x01\u200b\x7f"
    assert chunk_document("Title", body, ChunkerConfig()) == []
    (chunk,) = chunk_document(None, body, ChunkerConfig(tokenizer=HEURISTIC))
    assert chunk.text == body


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_short_document_is_one_chunk(tokenizer: str) -> None:
    body = "\n\n  The quick brown fox jumps over the lazy dog.  \n"
    cfg = ChunkerConfig(tokenizer=tokenizer)
    (chunk,) = chunk_document("Foxes", body, cfg)
    assert chunk.text == body.strip()
    assert (chunk.char_start, chunk.char_end) == (4, 4 + len(body.strip()))
    assert chunk.embed_input == "Foxes\n\n" + body.strip()
    assert chunk.token_count == model_tokens(tokenizer, chunk.embed_input)
    if tokenizer == MINILM:
        assert chunk.token_count == 1 + 2 + 10  # title, [CLS] [SEP], 10 tokens


def test_title_handling() -> None:
    body = "Some body text."
    on = ChunkerConfig()
    off = ChunkerConfig(include_title=False)
    assert chunk_document("  My title \n", body, on)[0].embed_input == "My title\n\nSome body text."
    assert chunk_document("My title", body, off)[0].embed_input == body
    assert chunk_document(None, body, on)[0].embed_input == body
    assert chunk_document(" \t ", body, on)[0].embed_input == body
    with_title = chunk_document("My title", body, on)[0]
    without = chunk_document("My title", body, off)[0]
    assert with_title.token_count == without.token_count + 2
    assert with_title.text == without.text


def test_title_counts_against_the_budget() -> None:
    body = " ".join(english_words()[:3000])
    cfg = ChunkerConfig(max_tokens=64, overlap_tokens=0)
    plain = chunk_document(None, body, cfg)
    titled = chunk_document("A fairly long title of about twelve tokens for this test", body, cfg)
    assert len(titled) > len(plain)
    assert all(c.token_count <= 64 for c in titled)
    assert max(c.token_count for c in titled) >= 56, "chunks are still nearly full"


def test_long_title_is_truncated_at_a_word() -> None:
    words = english_words()
    title = " ".join(words[:400])
    body = " ".join(words[400:2400])
    cfg = ChunkerConfig(max_tokens=64, overlap_tokens=8)
    chunks = chunk_document(title, body, cfg)
    assert_valid(title, body, cfg, chunks)
    used = chunks[0].embed_input.split("\n\n", 1)[0]
    assert title.startswith(used) and title[len(used)].isspace(), "cut between two words"
    title_tokens = bare_tokens(MINILM, used)
    assert 64 - 2 - MIN_BODY_TOKENS - 3 <= title_tokens <= 64 - 2 - MIN_BODY_TOKENS
    # The body gets the rest of the budget: at least MIN_BODY_TOKENS, and it is used.
    body_tokens = [bare_tokens(MINILM, c.text) for c in chunks]
    assert max(body_tokens) == 64 - 2 - title_tokens >= MIN_BODY_TOKENS
    assert chunk_document(title, body, cfg) == chunks, "deterministic"


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_title_of_one_huge_word(tokenizer: str) -> None:
    title = "Z" * 3000
    body = "Short body."
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=32, overlap_tokens=4)
    chunks = chunk_document(title, body, cfg)
    assert_valid(title, body, cfg, chunks)
    used = chunks[0].embed_input.split("\n\n", 1)[0]
    assert used and set(used) == {"Z"} and len(used) < 3000


def test_title_dropped_when_max_tokens_too_small() -> None:
    cfg = ChunkerConfig(max_tokens=12, overlap_tokens=2)  # 10 tokens of content < 16
    chunks = chunk_document("A title", "A body of a few words that needs two chunks or more.", cfg)
    assert chunks and all(c.embed_input == c.text for c in chunks)


# --------------------------------------------------------------------------- boundaries


def make_paragraph(n_words: int, start: int) -> str:
    """A paragraph of real words made of sentences of 12 words."""
    words = english_words()[start : start + n_words]
    sentences = [" ".join(words[i : i + 12]).rstrip(".") + "." for i in range(0, len(words), 12)]
    return " ".join(sentences)


def test_prefers_paragraph_breaks() -> None:
    paragraphs = [make_paragraph(40, 100 * i) for i in range(12)]
    body = "\n\n".join(paragraphs)
    cfg = ChunkerConfig(max_tokens=128, overlap_tokens=0)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    assert len(chunks) >= 3
    for c in chunks:
        # Whole paragraphs: every chunk starts and ends at a paragraph boundary.
        assert c.char_start == 0 or body[c.char_start - 2 : c.char_start] == "\n\n"
        assert c.char_end == len(body) or body[c.char_end : c.char_end + 2] == "\n\n"


def test_long_paragraph_is_cut_at_sentence_ends() -> None:
    body = make_paragraph(1200, 0)
    cfg = ChunkerConfig(max_tokens=100, overlap_tokens=0)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    assert len(chunks) >= 5
    assert all(c.text.endswith(".") for c in chunks)
    # Greedy packing: chunks are at least half full.
    assert all(c.token_count >= 50 for c in chunks[:-1])


def test_lines_before_words() -> None:
    lines = [make_paragraph(9, 20 * i).rstrip(".") for i in range(60)]  # no sentence ends
    body = "\n".join(lines)
    cfg = ChunkerConfig(max_tokens=60, overlap_tokens=0)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    for c in chunks:
        assert c.char_end == len(body) or body[c.char_end] == "\n"


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_crlf_gives_the_same_boundaries(tokenizer: str) -> None:
    paragraphs = [make_paragraph(30, 90 * i) for i in range(10)]
    lf = "\n\n".join(p.replace(". ", ".\n", 1) for p in paragraphs)
    crlf = lf.replace("\n", "\r\n")
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=96, overlap_tokens=10)
    a = chunk_document("T", lf, cfg)
    b = chunk_document("T", crlf, cfg)
    assert_valid("T", crlf, cfg, b)
    assert [c.text.replace("\r\n", "\n") for c in b] == [c.text for c in a]
    assert all(not c.text.endswith("\r") for c in b)


# --------------------------------------------------------------------------- overlap


def test_overlap() -> None:
    body = make_paragraph(1500, 0)
    cfg = ChunkerConfig(max_tokens=100, overlap_tokens=20)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    overlaps = [bare_tokens(MINILM, body[b.char_start : a.char_end]) for a, b in pairwise(chunks)]
    assert all(1 <= n <= 20 for n in overlaps), overlaps
    assert sum(overlaps) / len(overlaps) >= 14, "about overlap_tokens of overlap"
    for a, b in pairwise(chunks):
        assert body[b.char_start - 1] == " ", "overlap starts at a word"
        assert a.text.endswith(body[b.char_start : a.char_end])

    none = chunk_document(None, body, ChunkerConfig(max_tokens=100, overlap_tokens=0))
    assert all(b.char_start > a.char_end for a, b in pairwise(none))
    assert len(none) < len(chunks)


def test_large_overlap_still_progresses() -> None:
    body = make_paragraph(600, 0)
    cfg = ChunkerConfig(max_tokens=40, overlap_tokens=39)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    # Capped at half the budget: each chunk brings at least as much new text as it repeats.
    for a, b in pairwise(chunks[:-1]):
        assert bare_tokens(MINILM, body[b.char_start : a.char_end]) <= (40 - 2) // 2


def test_no_overlap_across_an_unsplittable_word() -> None:
    body = "alpha " + "x" * 4000 + " omega"
    cfg = ChunkerConfig(max_tokens=64, overlap_tokens=10)
    assert_valid(None, body, cfg, chunk_document(None, body, cfg))


# --------------------------------------------------------------------------- hard cuts


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_one_huge_word(tokenizer: str) -> None:
    body = "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5000))
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=64, overlap_tokens=8)
    chunks = chunk_document("Blob", body, cfg)
    assert_valid("Blob", body, cfg, chunks)
    assert len(chunks) > 5, "cut into pieces, not one 5,000-character chunk"
    assert "".join(c.text for c in chunks) == body, "the pieces tile the word"
    assert all(len(c.text) <= 3 * 64 for c in chunks), "budgeted by its bytes"


def test_hard_cut_inside_a_wordpiece_word() -> None:
    """A word of many WordPiece tokens (under 100 characters) in a tiny budget."""
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2
    assert bare_tokens(MINILM, word) > 14
    body = f"{word} {word} end"
    cfg = ChunkerConfig(max_tokens=16, overlap_tokens=0)
    chunks = chunk_document(None, body, cfg)
    assert_valid(None, body, cfg, chunks)
    assert any(len(c.text) < len(word) and word.startswith(c.text) for c in chunks)


def test_base64_blob_is_cut_at_punctuation() -> None:
    rng = random.Random(5)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = "payload: " + "".join(rng.choice(alphabet) for _ in range(6000)) + "=="
    for tokenizer in (MINILM, HEURISTIC):
        cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=128, overlap_tokens=16)
        chunks = chunk_document("data", body, cfg)
        assert_valid("data", body, cfg, chunks)
        assert len(chunks) > 3


# --------------------------------------------------------------------------- unicode


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_cjk_without_spaces(tokenizer: str) -> None:
    sentence = "日本語の文章には空白がありません。中文句子也没有空格！"
    body = sentence * 80
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=48, overlap_tokens=6)
    chunks = chunk_document("標題", body, cfg)
    assert_valid("標題", body, cfg, chunks)
    assert len(chunks) > 5
    ends = sum(c.text.endswith(("。", "！")) for c in chunks[:-1])
    assert ends >= len(chunks[:-1]) * 0.8, "cut at sentence ends when one is in reach"


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_emoji_and_combining_marks_stay_whole(tokenizer: str) -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    accented = "e\u0301a\u0300o\u0302"
    body = (family + accented + "\U0001f44d\U0001f3fd") * 400  # one long "word"
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=32, overlap_tokens=4)
    chunks = chunk_document("Emoji", body, cfg)
    assert_valid("Emoji", body, cfg, chunks)
    assert len(chunks) > 3
    for c in chunks[1:]:
        assert c.text[0] not in "\u200d\u0301\u0300\u0302\U0001f3fd", repr(c.text[:3])
        assert body[c.char_start - 1] != "\u200d"


@pytest.mark.parametrize("tokenizer", [MINILM, HEURISTIC])
def test_mixed_scripts(tokenizer: str) -> None:
    parts = [
        "Ünïcödé façade naïve café",
        "Ελληνικά κείμενα εδώ",
        "Русский текст тоже",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "한국어 문장입니다.",
        "İstanbul ß ﬁ ǅ",
        "zero\u200bwidth and\u00a0nbsp and\u2028line sep",
        "control\x1cchars\x0band\x00nul",
    ]
    rng = random.Random(3)
    body = " ".join(rng.choice(parts) for _ in range(300))
    cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=40, overlap_tokens=8)
    assert_valid("Scripts", body, cfg, chunk_document("Scripts", body, cfg))


# --------------------------------------------------------------------------- determinism


def test_deterministic_and_batch_equals_single() -> None:
    docs = [(f"Doc {i}", d) for i, d in enumerate(english_docstrings()[:60])]
    docs += [(None, ""), ("Doc 0", docs[0][1]), (None, "  x  ")]
    for tokenizer in (MINILM, HEURISTIC):
        cfg = ChunkerConfig(tokenizer=tokenizer, max_tokens=64, overlap_tokens=12)
        batch = chunk_documents(docs, cfg)
        assert batch == chunk_documents(docs, cfg)
        assert batch == [chunk_document(t, b, cfg) for t, b in docs]
        assert [c.text for c in batch[-2]] == [c.text for c in batch[0]]
    assert chunk_documents([], ChunkerConfig()) == []


# --------------------------------------------------------------------------- heuristic


def test_heuristic_overestimates_minilm_on_english() -> None:
    paragraphs = prose_paragraphs()
    assert len(paragraphs) > 100
    heuristic = get_tokenizer(HEURISTIC)
    minilm = get_tokenizer(MINILM)
    low = [p for p in paragraphs if heuristic.count(p) < minilm.count(p)]
    assert low == []
    total_h = sum(heuristic.count(p) for p in paragraphs)
    total_m = sum(minilm.count(p) for p in paragraphs)
    assert total_h >= 1.2 * total_m


def test_heuristic_token_count_is_bytes_over_three() -> None:
    cfg = ChunkerConfig(tokenizer=HEURISTIC, max_tokens=30, overlap_tokens=0)
    body = "é" * 200  # 2 bytes each
    chunks = chunk_document("ab", body, cfg)
    assert_valid("ab", body, cfg, chunks)
    # 90 bytes of budget: "ab\n\n" is 4, so 86 bytes of text, 43 characters.
    assert [len(c.text) for c in chunks[:2]] == [43, 43]
    assert chunks[0].token_count == 30


# --------------------------------------------------------------------------- randomized


SPECIALS = [
    "日本語のテキストです。",
    "中文句子，没有空格！",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1eb\U0001f1f7",
    "\U0001f44d\U0001f3fd",
    "e\u0301",
    " \u0301",
    "Z\u0351\u0352\u0353\u0354",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\x00",
    "\x1c",
    "\x0b",
    "\x0c",
    "\x85",
    "\xa0",
    "\u3000",
    "\u2028",
    "\u2029",
    "\r\n",
    "\r",
    "\t",
    "\n\n\n",
    " \r\n \r\n ",
    "x" * 150,
    "ab" * 45,
    "https://example.com/a/b?c=d&e=f#g",
    "3.14159265358979",
    "İ",
    "ß",
    "ﬁ",
    "مرحبا",
    "नमस्ते",
    "(a, b) -> [c]; {d: e}",
    "...",
    "?!",
    '."',
    "\U00020000\U00020001",
    "\ue000",
]


def random_text(rng: random.Random, max_len: int) -> str:
    words = english_words()
    parts: list[str] = []
    size = 0
    target = rng.randint(0, max_len)
    special_rate = rng.choice([0.0, 0.02, 0.1, 0.5])
    while size < target:
        piece = rng.choice(SPECIALS) if rng.random() < special_rate else rng.choice(words)
        sep = rng.choices(
            [" ", "  ", "\n", "\n\n", "", "\t", ". ", "\r\n\r\n"], [60, 5, 8, 5, 3, 2, 8, 2]
        )[0]
        parts.append(piece + sep)
        size += len(piece) + len(sep)
    return "".join(parts)


def random_title(rng: random.Random) -> str | None:
    kind = rng.randrange(8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice(["", "   ", "\n"])
    if kind == 2:
        return random_text(rng, 2000)  # long: truncated
    if kind == 3:
        return rng.choice(SPECIALS) * rng.randint(1, 40)
    return random_text(rng, 80)


# --------------------------------------------------------------------------- word pieces


def _reference_arrays(text: str) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    enc = reference_tokenizer().encode(text, add_special_tokens=False)
    words = enc.word_ids
    starts = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
    return enc.ids, [(a, b) for a, b in enc.offsets], starts


def _word_piece_arrays(
    texts: list[str],
) -> list[tuple[list[int], list[tuple[int, int]], list[bool]]]:
    tok = get_tokenizer(MINILM)
    out = []
    for ids, ts, te, words in tok._encode_many(texts):  # type: ignore[attr-defined]
        starts = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
        out.append((ids.tolist(), list(zip(ts.tolist(), te.tolist(), strict=True)), starts))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_word_pieces_equal_the_whole_text_encoding(seed: int) -> None:
    """The chunker encodes each distinct word once (cached) and gathers a text's tokens from
    its words': the ids, the offsets and the word grouping must be exactly what the tokenizer
    gives for the whole text, on every kind of character (controls that the normalizer drops
    between two words, Unicode spaces, CJK, accents, added tokens such as [MASK], words over
    the 100 characters WordPiece turns into [UNK], words over the cached length)."""
    rng = random.Random(seed)
    pieces = [*SPECIALS, "[MASK]", "[CLS]x", "y[SEP]", "Ünïcödé", "a\x1fb", "c\x0bd", "é" * 60]
    texts = []
    for _ in range(150):
        if rng.random() < 0.5:
            texts.append(random_text(rng, 600))
        else:
            seps = ["", " ", "\n", "\t", "\r\n", "  "]
            texts.append(
                "".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(0, 40)))
            )
    got = _word_piece_arrays(texts)  # one batch: words shared across texts
    assert got == [_reference_arrays(t) for t in texts]
    assert _word_piece_arrays(texts[:5]) == got[:5]  # again, from the cache


def test_word_piece_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgingest import chunking

    tok = get_tokenizer(MINILM)
    monkeypatch.setattr(chunking, "_CACHED_WORDS", 50)
    tok._table.clear()  # type: ignore[attr-defined]
    text = " ".join(f"word{i}" for i in range(40)) + " " + "z" * 60
    assert _word_piece_arrays([text]) == [_reference_arrays(text)]
    assert len(tok._table.index) == 40  # type: ignore[attr-defined]  # not the 60-character word
    text2 = " ".join(f"other{i}" for i in range(30))
    assert _word_piece_arrays([text2, text]) == [_reference_arrays(text2), _reference_arrays(text)]
    assert len(tok._table.index) <= 50  # type: ignore[attr-defined]
