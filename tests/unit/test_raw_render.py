"""worker/raw.py's pure parts: the parsed document as text with its structure, the allow-list
rows added to the environment's policy, the parse limits from the environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pgingest.raw.fetch import FetchPolicy
from pgingest.raw.parse import Block, ParsedDocument
from pgingest.worker.raw import parse_options_from_env, render, with_allowlist


def test_render_keeps_pages_and_heading_paths_as_offsets() -> None:
    doc = ParsedDocument(
        mime="application/pdf",
        parser="pypdfium2",
        pages=2,
        blocks=(
            Block("1 Intro", "heading", 1, ("1 Intro",)),
            Block("First page text.", "text", 1, ("1 Intro",)),
            Block("  ", "text", 1, ("1 Intro",)),  # blank: dropped
            Block("1.1 Scope", "heading", 2, ("1 Intro", "1.1 Scope")),
            Block("Second page text.", "text", 2, ("1 Intro", "1.1 Scope")),
        ),
    )
    r = render(doc)
    assert r.text == "1 Intro\n\nFirst page text.\n\n1.1 Scope\n\nSecond page text."
    scope = r.text.index("1.1 Scope")
    assert r.heading_starts == (0, scope)
    assert r.structure["pages"] == [[0, 1], [scope, 2]]
    assert r.structure["headings"] == [[0, ["1 Intro"]], [scope, ["1 Intro", "1.1 Scope"]]]
    assert r.structure["page_count"] == 2
    assert r.structure["mime"] == "application/pdf"


def test_render_without_pages_or_headings() -> None:
    r = render(ParsedDocument("text/plain", "text", (Block("just text"),)))
    assert r.text == "just text"
    assert r.heading_starts == ()
    assert r.structure["pages"] == []
    assert r.structure["headings"] == [[0, []]]
    assert "page_count" not in r.structure


def test_allow_list_rows_widen_the_environment_policy() -> None:
    env = FetchPolicy(allowed_hosts=frozenset({"a.example"}), allowed_buckets=frozenset({"b1"}))
    assert with_allowlist(env, []) is env
    p = with_allowlist(
        env,
        [
            ("root", "/srv/docs"),
            ("host", "Docs.Example.org"),
            ("http_host", "intranet.local"),
            ("network", "10.0.0.0/8"),
            ("bucket", "b2"),
        ],
    )
    assert p.allowed_roots == (Path("/srv/docs"),)
    assert p.allowed_hosts == {"a.example", "docs.example.org", "intranet.local"}
    assert p.http_hosts == {"intranet.local"}
    assert p.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert p.allowed_buckets == {"b1", "b2"}
    assert p.address_allowed("10.1.2.3") and not env.address_allowed("10.1.2.3")
    assert not p.address_allowed("169.254.169.254")


def test_parse_limits_from_the_environment() -> None:
    o = parse_options_from_env(
        {
            "PGINGEST_RAW_PARSE_TIMEOUT": "5",
            "PGINGEST_RAW_PARSE_MEMORY": "0",
            "PGINGEST_RAW_MAX_PAGES": "9",
        }
    )
    assert (o.timeout_s, o.memory_bytes, o.max_pages) == (5.0, None, 9)
    d = parse_options_from_env({})
    assert d.timeout_s == 60.0 and d.memory_bytes == 1 << 30
