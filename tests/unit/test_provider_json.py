"""The providers' JSON codec (issue 19): orjson where installed, json where not (PL/Python's
system Python), the same documents either way."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from pgingest import providers


@pytest.fixture(params=["orjson", "json"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "json":
        monkeypatch.setattr(providers, "_orjson", None)
    else:
        assert providers._orjson is not None  # a dependency: the venv has it
    return str(request.param)


def test_a_request_body_is_utf8_json_of_the_payload(codec: str) -> None:
    payload: dict[str, Any] = {"model": "m", "input": ["Grüße, 東京", "x" * 800], "dimensions": 3}
    body = providers._json_request_body(payload)
    assert json.loads(body.decode("utf-8")) == payload
    assert "Grüße".encode() in body  # not escaped


def test_a_lone_surrogate_goes_escaped_for_the_server_to_judge(codec: str) -> None:
    payload = {"model": "m", "input": ["bad \ud800 text"]}
    body = providers._json_request_body(payload)
    assert b"\\ud800" in body
    assert json.loads(body) == payload


def test_an_answer_decodes_the_same(codec: str) -> None:
    vecs = np.arange(6, dtype="<f4").reshape(2, 3)
    doc = {
        "data": [
            {"index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
            for i, v in enumerate(vecs)
        ]
    }
    assert providers._json_loads(json.dumps(doc).encode()) == doc


def test_non_finite_numbers_are_read_either_way(codec: str) -> None:
    doc = providers._json_loads(b'{"embedding": [NaN, Infinity, -Infinity, 1.5]}')
    assert np.isnan(doc["embedding"][0]) and doc["embedding"][1:] == [np.inf, -np.inf, 1.5]


@pytest.mark.parametrize("content", [b"{", b"\xff", b"[1,]"])
def test_invalid_json_is_a_value_error_either_way(codec: str, content: bytes) -> None:
    with pytest.raises(ValueError):
        providers._json_loads(content)
