"""parse_results reads a provider batch's output lines: a line nested too deeply is skipped like
any invalid line (its input is embedded online), not a RecursionError for the whole file
(review 2026-12-07, provider fixes: left in worker/bulk.py)."""

from __future__ import annotations

import base64
import json

import numpy as np

from pgingest import providers
from pgingest.worker import bulk


def test_a_line_nested_too_deeply_is_skipped_and_the_others_are_read() -> None:
    provider = providers.OpenAICompatibleProvider(
        "http://127.0.0.1:9/v1", "fake-4", dimensions=4, api_key=None
    )
    good, bad = b"\x01" * 32, b"\x02" * 32
    vec = np.arange(1, 5, dtype=np.float32)
    line = {
        "custom_id": bulk.custom_id(good),
        "response": {
            "status_code": 200,
            "body": {"data": [{"index": 0, "embedding": base64.b64encode(vec.tobytes()).decode()}]},
        },
    }
    deep = (
        b'{"custom_id": "'
        + bulk.custom_id(bad).encode()
        + b'", "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}"
    )
    out = bulk.parse_results(provider, [deep + b"\n" + json.dumps(line).encode()], [good, bad])
    assert set(out.vectors) == {good}
    assert np.array_equal(out.vectors[good], vec)
    assert out.rejected == {}
