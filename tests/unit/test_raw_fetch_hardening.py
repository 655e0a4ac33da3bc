"""The fetch policy hardened after the review of 2026-12-07 (issue 22): error classes and checks
made before any connection. Real servers: tests/test_raw_fetch_hardening.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import ParamValidationError

from pgingest.raw import fetch

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def test_boto_param_validation_is_a_permanent_bad_uri_without_its_message() -> None:
    exc = ParamValidationError(report=f"Invalid bucket name 'AKIA:{SECRET}@docs'")
    err = fetch.classify_s3_error(exc, "docs")
    assert (err.error_class, err.permanent, err.scope) == ("bad_uri", True, "object")
    assert SECRET not in str(err)


@pytest.mark.parametrize("name", ["docs", "my.bucket-1", "Legacy_Bucket"])
def test_bucket_names_boto_accepts_are_accepted(name: str) -> None:
    assert fetch.parse_s3_uri(f"s3://{name}/k") == (name, "k")


def test_plan_sync_requeues_a_failed_object_only_when_its_validators_differ() -> None:
    from pgingest.raw.queries import RecordedObject
    from pgingest.sources_cli import plan_sync

    listed = [fetch.ObjectInfo("s3://b/a", 1, etag='"e2"'), fetch.ObjectInfo("s3://b/c", 1)]
    recorded = {
        "s3://b/a": RecordedObject({"uri": "s3://b/a"}, None, None, None, failed=True),
        "s3://b/c": RecordedObject({"uri": "s3://b/c"}, None, None, None, failed=False),
    }
    plan = plan_sync(listed, recorded, "s3://b/")
    assert (plan.changed, plan.unchanged) == ([{"uri": "s3://b/a"}], 1)  # c: not fetched yet
    # failed after a success whose ETag is still the object's: nothing new to fetch
    recorded["s3://b/a"] = RecordedObject({"uri": "s3://b/a"}, '"e2"', b"h", None, failed=True)
    assert plan_sync(listed, recorded, "s3://b/").changed == []
