"""The worker's "document dead-lettered" log line names the document's key; a raw source's key
is a URI, which may carry credentials or a presigned URL's signature: they are cut, as in the
error messages."""

from __future__ import annotations

import json

import pytest

from pgingest.worker.writer import _loggable_key


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY@docs/q3.pdf", "wJal"),
        ("s3://AKIAIOSFODNN7EXAMPLE:/wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY@docs/q3.pdf", "wJal"),
        ("https://docs.example.com/q3 final.pdf?X-Amz-Signature=deadbeefSECRET", "SECRET"),
        ("https://user:hunter2@docs.example.com/a.pdf", "hunter2"),
        ('{"uri": "https://h.example/a.pdf?sig=SECRET", "id": 3}', "SECRET"),
        ('["https://h.example/a.pdf?sig=SECRET", 3]', "SECRET"),
        ("note https://h.example/a.pdf?sig=SECRET", "SECRET"),
    ],
)
def test_a_uri_in_a_key_loses_its_credentials_and_query(key: str, secret: str) -> None:
    got = _loggable_key(key)
    assert got is not None and secret not in got
    assert "AKIAIOSFODNN7EXAMPLE" not in got


def test_keys_without_a_uri_are_logged_as_they_are() -> None:
    assert _loggable_key("invoice-2026-001") == "invoice-2026-001"
    assert _loggable_key(None) is None
    composite = json.dumps({"tenant": 4, "id": "a:b"})
    assert _loggable_key(composite) == composite


def test_what_is_kept_of_a_uri() -> None:
    assert _loggable_key("s3://KEY:SECRET@docs/q3.pdf") == "s3://docs/q3.pdf"
    got = _loggable_key('{"uri": "https://h.example/a.pdf?sig=1", "id": 3}')
    assert got is not None and json.loads(got) == {
        "uri": "https://h.example/a.pdf?<redacted>",
        "id": 3,
    }
