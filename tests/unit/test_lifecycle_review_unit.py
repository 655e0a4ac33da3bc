"""Review 2026-12-07 (model lifecycle), the parts that need no database: the routing bucket's
whitespace (item 8) and the share cell of `pgingest model list` (item 2)."""

from __future__ import annotations

import pytest

from pgingest import models_cli
from pgingest.search import route_bucket


def test_ascii_keys_keep_their_bucket() -> None:
    # The values of before the change: keys without non-ASCII whitespace are not re-routed.
    assert route_bucket("user 42") == pytest.approx(0.5286598925013095, abs=0)
    assert route_bucket("a  b\tc") == pytest.approx(0.027106645982712507, abs=0)
    assert route_bucket(" \t user \r\n 42 \f\v") == route_bucket("user 42")


@pytest.mark.parametrize(
    "space", ["\u00a0", "\u2003", "\u3000", "\x1c", "\x1f", "\u0085", "\u2028"]
)
def test_non_ascii_whitespace_is_part_of_the_key(space: str) -> None:
    assert route_bucket(f"user{space}42") != route_bucket("user 42")
    assert route_bucket(f"{space}user 42") != route_bucket("user 42")


def test_share_cell_shows_the_configured_share_when_it_is_not_served() -> None:
    cell = models_cli._share_cell
    assert cell({"share": None}) == "-"
    assert cell({"share": 0.3, "configured_share": 0.3}) == "30.0%"
    assert cell({"share": 0.3}) == "30.0%"
    assert cell({"share": 0.0, "configured_share": 0.3}) == "0.0% (30.0% set)"
    assert cell({"share": 1.0, "configured_share": 0.7}) == "100.0% (70.0% set)"
