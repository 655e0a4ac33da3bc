"""The fake provider's Batch API (``/v1/files``, ``/v1/batches``), over real HTTP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from pgingest.testing.fake_provider import FakeEmbeddingServer, control, fake_vectors

KEY = "sk-batch-test-key-0123456789"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only, never through a proxy
    yield session
    session.close()


def line(custom_id: str, inputs: list[str], **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "fake-768", "input": inputs, "encoding_format": "base64", **body},
    }


def upload(
    http: requests.Session, url: str, lines: list[Any], *, purpose: str = "batch", **kw: Any
) -> requests.Response:
    data = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    return http.post(
        url + "/files",
        files={"file": ("requests.jsonl", data.encode())},
        data={"purpose": purpose},
        timeout=5,
        **kw,
    )


def submit(
    http: requests.Session, url: str, lines: list[Any], **kw: Any
) -> tuple[dict[str, Any], float]:
    r = upload(http, url, lines, **kw)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    b = http.post(
        url + "/batches",
        json={
            "input_file_id": r.json()["id"],
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
            "metadata": {"job": "test"},
        },
        timeout=5,
        **kw,
    )
    assert b.status_code == 200, b.text
    return b.json(), t0


def poll(
    http: requests.Session, url: str, batch_id: str, *, timeout: float = 5.0, **kw: Any
) -> tuple[dict[str, Any], list[str]]:
    """Poll until the batch ends; its last object and the statuses seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"{url}/batches/{batch_id}", timeout=5, **kw)
        assert r.status_code == 200
        b = r.json()
        if not seen or seen[-1] != b["status"]:
            seen.append(b["status"])
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            return b, seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)


def content(http: requests.Session, url: str, file_id: str | None, **kw: Any) -> list[Any]:
    assert file_id is not None
    r = http.get(f"{url}/files/{file_id}/content", timeout=5, **kw)
    assert r.status_code == 200
    return [json.loads(x) for x in r.text.splitlines()]


def vectors(body: dict[str, Any]) -> list[np.ndarray]:
    out = []
    for item in sorted(body["data"], key=lambda d: d["index"]):
        emb = item["embedding"]
        if isinstance(emb, str):
            out.append(np.frombuffer(base64.b64decode(emb), dtype="<f4"))
        else:
            out.append(np.asarray(emb, dtype=np.float32))
    return out


def test_batch_lifecycle_and_vectors(http: requests.Session) -> None:
    lines = [
        line("a", ["alpha", "beta"]),
        line("b", ["gamma"], encoding_format="float"),
        line("c", ["delta"], dimensions=64),
        line("bad", ["fine", "not __REJECT__ fine"]),
        line("d", ["epsilon"], model="fake-768"),
    ]
    with FakeEmbeddingServer(batch_completion_s=0.6) as srv:
        batch, t0 = submit(http, srv.url, lines)
        assert batch["object"] == "batch" and batch["id"].startswith("batch_")
        assert batch["status"] == "validating"
        assert batch["endpoint"] == "/v1/embeddings" and batch["completion_window"] == "24h"
        assert batch["metadata"] == {"job": "test"}
        assert batch["output_file_id"] is None and batch["error_file_id"] is None
        assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
        assert batch["expires_at"] == batch["created_at"] + 24 * 3600
        done, seen = poll(http, srv.url, batch["id"])
        assert time.monotonic() - t0 >= 0.6
        assert seen[-1] == "completed" and "in_progress" in seen
        order = ["validating", "in_progress", "finalizing", "completed"]
        assert seen == sorted(seen, key=order.index)
        assert done["request_counts"] == {"total": 5, "completed": 4, "failed": 1}
        times = [done[k] for k in ("created_at", "in_progress_at", "finalizing_at", "completed_at")]
        assert None not in times and times == sorted(times)
        assert done["failed_at"] is None and done["errors"] is None

        out = {x["custom_id"]: x for x in content(http, srv.url, done["output_file_id"])}
        assert sorted(out) == ["a", "b", "c", "d"]
        for x in out.values():
            assert x["id"].startswith("batch_req_") and x["error"] is None
            assert x["response"]["status_code"] == 200 and x["response"]["request_id"]
        # the same vectors as /v1/embeddings gives for the same request
        for cid, req in ((x["custom_id"], x["body"]) for x in lines):
            if cid == "bad":
                continue
            online = http.post(srv.url + "/embeddings", json=req, timeout=5)
            assert online.status_code == 200
            got = out[cid]["response"]["body"]
            assert got["object"] == "list" and got["model"] == "fake-768"
            assert got["usage"] == online.json()["usage"]
            for a, b in zip(vectors(got), vectors(online.json()), strict=True):
                assert np.array_equal(a, b)
        assert isinstance(out["b"]["response"]["body"]["data"][0]["embedding"], list)
        (c_vec,) = vectors(out["c"]["response"]["body"])
        assert np.array_equal(c_vec, fake_vectors("fake-768", ["delta"], 64)[0])

        (err,) = content(http, srv.url, done["error_file_id"])
        assert err["custom_id"] == "bad" and err["error"] is None
        assert err["response"]["status_code"] == 400
        assert "'$.input[1]' is invalid" in err["response"]["body"]["error"]["message"]

        st = srv.stats()
        assert st["batch_submissions"] == 1 and st["files_uploaded"] == 1
        assert st["batches_by_status"] == {"completed": 1}
        assert st["batch_inputs"] == 5
        assert st["requests"] == 4  # the online requests above, none for the batch


def test_files_endpoints(http: requests.Session) -> None:
    with FakeEmbeddingServer() as srv:
        r = upload(http, srv.url, [line("a", ["x"])])
        f = r.json()
        assert f["object"] == "file" and f["purpose"] == "batch" and f["id"].startswith("file-")
        assert f["filename"] == "requests.jsonl" and f["bytes"] > 0
        assert http.get(f"{srv.url}/files/{f['id']}", timeout=5).json() == f
        raw = http.get(f"{srv.url}/files/{f['id']}/content", timeout=5).content
        assert json.loads(raw) == line("a", ["x"]) and len(raw) == f["bytes"]
        assert [x["id"] for x in http.get(srv.url + "/files", timeout=5).json()["data"]] == [
            f["id"]
        ]
        d = http.delete(f"{srv.url}/files/{f['id']}", timeout=5)
        assert d.json() == {"id": f["id"], "object": "file", "deleted": True}
        assert http.get(f"{srv.url}/files/{f['id']}", timeout=5).status_code == 404
        assert upload(http, srv.url, [line("a", ["x"])], purpose="nonsense").status_code == 400
        r = http.post(srv.url + "/files", data={"purpose": "batch"}, timeout=5)
        assert r.status_code == 400


def test_batch_request_errors(http: requests.Session) -> None:
    with FakeEmbeddingServer() as srv:
        fid = upload(http, srv.url, [line("a", ["x"])]).json()["id"]
        other = upload(http, srv.url, [line("a", ["x"])], purpose="user_data").json()["id"]
        good = {"input_file_id": fid, "endpoint": "/v1/embeddings", "completion_window": "24h"}
        for change, status in (
            ({"input_file_id": "file-nope"}, 404),
            ({"input_file_id": other}, 400),
            ({"endpoint": "/v1/chat/completions"}, 400),
            ({"completion_window": "1h"}, 400),
        ):
            r = http.post(srv.url + "/batches", json={**good, **change}, timeout=5)
            assert r.status_code == status, change
            assert r.json()["error"]["message"]
        assert http.get(srv.url + "/batches/batch_nope", timeout=5).status_code == 404
        assert srv.stats()["batch_submissions"] == 0


def test_invalid_input_file_fails_validation(http: requests.Session) -> None:
    with FakeEmbeddingServer(batch_completion_s=0.2) as srv:
        batch, _ = submit(http, srv.url, [line("a", ["x"]), "{not json", line("a", ["y"])])
        done, seen = poll(http, srv.url, batch["id"])
        assert seen == ["validating", "failed"]
        assert done["failed_at"] is not None and done["output_file_id"] is None
        codes = [(e["code"], e["line"]) for e in done["errors"]["data"]]
        assert codes == [("invalid_json_line", 2), ("duplicate_custom_id", 3)]
        mixed = [line("a", ["x"]), line("b", ["y"], model="fake-384")]
        done, _ = poll(http, srv.url, submit(http, srv.url, mixed)[0]["id"])
        assert done["status"] == "failed"
        assert done["errors"]["data"][0]["code"] == "mismatched_model"
        unknown = [line("a", ["x"], model="no-such-model")]
        done, _ = poll(http, srv.url, submit(http, srv.url, unknown)[0]["id"])
        assert done["errors"]["data"][0]["code"] == "model_not_found"
        srv.configure(batch_max_inputs=3)
        done, _ = poll(
            http, srv.url, submit(http, srv.url, [line("a", ["1", "2", "3", "4"])])[0]["id"]
        )
        assert done["errors"]["data"][0]["code"] == "too_many_inputs"
        assert srv.stats()["batches_by_status"] == {"failed": 4}


def test_configured_partial_failures(http: requests.Session) -> None:
    lines = [line(f"r{i}", [f"text {i}"]) for i in range(40)]
    with FakeEmbeddingServer(batch_completion_s=0.1, batch_fail_custom_ids=["r3", "r7"]) as srv:
        done, _ = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        errs = content(http, srv.url, done["error_file_id"])
        assert [e["custom_id"] for e in errs] == ["r3", "r7"]
        assert {e["response"]["status_code"] for e in errs} == {500}
        assert errs[0]["response"]["body"]["error"]["type"] == "server_error"
        assert done["request_counts"] == {"total": 40, "completed": 38, "failed": 2}

        srv.configure(batch_fail_custom_ids=[], batch_fail_share=0.5, batch_fail_status=503, seed=3)
        done, _ = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        failed = [e["custom_id"] for e in content(http, srv.url, done["error_file_id"])]
        assert 8 <= len(failed) <= 32
        ok = [x["custom_id"] for x in content(http, srv.url, done["output_file_id"])]
        assert sorted(failed + ok) == sorted(x["custom_id"] for x in lines)
        # the draw depends only on (seed, custom_id): the same batch fails the same lines
        again, _ = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert [e["custom_id"] for e in content(http, srv.url, again["error_file_id"])] == failed

        srv.configure(batch_fail_share=1.0)
        done, _ = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert done["output_file_id"] is None
        assert done["request_counts"] == {"total": 40, "completed": 0, "failed": 40}


def test_expired_batch_returns_the_completed_part(http: requests.Session) -> None:
    lines = [line(f"r{i}", [f"text {i}"]) for i in range(6)]
    with FakeEmbeddingServer(batch_completion_s=0.2, batch_done_share=0.5) as srv:
        srv.next_batch_outcome("expired")
        done, seen = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert seen[-1] == "expired" and "finalizing" not in seen
        assert done["expired_at"] is not None and done["completed_at"] is None
        assert done["request_counts"] == {"total": 6, "completed": 3, "failed": 3}
        ok = content(http, srv.url, done["output_file_id"])
        assert [x["custom_id"] for x in ok] == ["r0", "r1", "r2"]
        errs = content(http, srv.url, done["error_file_id"])
        assert [x["custom_id"] for x in errs] == ["r3", "r4", "r5"]
        for e in errs:
            assert e["response"] is None and e["error"]["code"] == "batch_expired"
        # the queued outcome was for one batch only
        done, _ = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert done["status"] == "completed"
        assert srv.stats()["batches_by_status"] == {"expired": 1, "completed": 1}


def test_failed_and_cancelled_outcomes(http: requests.Session) -> None:
    lines = [line(f"r{i}", [f"text {i}"]) for i in range(4)]
    with FakeEmbeddingServer(batch_completion_s=0.2, batch_outcome="failed") as srv:
        done, seen = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert seen == ["validating", "failed"]
        assert done["errors"]["data"][0]["code"] == "batch_failed"
        assert done["output_file_id"] is None and done["error_file_id"] is None
        srv.configure(batch_outcome="cancelled", batch_done_share=0.25, batch_completion_s=1.0)
        done, seen = poll(http, srv.url, submit(http, srv.url, lines)[0]["id"])
        assert seen[-2:] == ["cancelling", "cancelled"]
        assert done["cancelling_at"] is not None and done["cancelled_at"] is not None
        assert [x["custom_id"] for x in content(http, srv.url, done["output_file_id"])] == ["r0"]
        assert done["error_file_id"] is None
        assert done["request_counts"] == {"total": 4, "completed": 1, "failed": 0}


def test_cancel_a_batch_in_progress(http: requests.Session) -> None:
    lines = [line(f"r{i}", [f"text {i}"]) for i in range(100)]
    with FakeEmbeddingServer(batch_completion_s=2.0) as srv:
        batch, t0 = submit(http, srv.url, lines)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))  # half way: about 50 have run
        r = http.post(f"{srv.url}/batches/{batch['id']}/cancel", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "cancelling"
        ran = r.json()["request_counts"]["completed"]
        assert 40 <= ran <= 65
        done, seen = poll(http, srv.url, batch["id"])
        assert seen == ["cancelling", "cancelled"]
        assert time.monotonic() - t0 < 1.6  # well before the batch would have completed
        out = content(http, srv.url, done["output_file_id"])
        assert [x["custom_id"] for x in out] == [f"r{i}" for i in range(ran)]
        assert done["request_counts"] == {"total": 100, "completed": ran, "failed": 0}
        r = http.post(f"{srv.url}/batches/{batch['id']}/cancel", timeout=5)
        assert r.status_code == 409


def test_batch_endpoints_need_the_key(http: requests.Session) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    with FakeEmbeddingServer(api_key=KEY, batch_completion_s=0.1) as srv:
        assert upload(http, srv.url, [line("a", ["x"])]).status_code == 401
        wrong = {"Authorization": "Bearer sk-wrong-key-000000000"}
        assert upload(http, srv.url, [line("a", ["x"])], headers=wrong).status_code == 401
        batch, _ = submit(http, srv.url, [line("a", ["x"])], headers=auth)
        assert http.get(f"{srv.url}/batches/{batch['id']}", timeout=5).status_code == 401
        done, _ = poll(http, srv.url, batch["id"], headers=auth)
        assert len(content(http, srv.url, done["output_file_id"], headers=auth)) == 1
        fid = done["output_file_id"]
        assert http.get(f"{srv.url}/files/{fid}/content", timeout=5).status_code == 401
        listed = http.get(srv.url + "/batches", headers=auth, timeout=5).json()
        assert [b["id"] for b in listed["data"]] == [batch["id"]]


def test_batches_over_control_and_command_line(http: requests.Session) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgingest.testing.fake_provider",
            "--batch-completion-s",
            "0.2",
            "--batch-outcome",
            "expired",
            "--batch-done-share",
            "0.5",
            "--batch-fail-custom-id",
            "r0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        lines = [line(f"r{i}", [f"text {i}"]) for i in range(4)]
        done, _ = poll(http, url, submit(http, url, lines)[0]["id"])
        assert done["status"] == "expired"
        errs = content(http, url, done["error_file_id"])
        assert [(e["custom_id"], e["response"] and e["response"]["status_code"]) for e in errs] == [
            ("r0", 500),
            ("r2", None),
            ("r3", None),
        ]
        snap = control(url, {"next_batch_outcome": {"outcome": "completed", "n": 1}})
        assert snap["pending_batch_outcomes"] == ["completed"]
        done, _ = poll(http, url, submit(http, url, lines)[0]["id"])
        assert done["status"] == "completed"
        stats = control(url)["stats"]
        assert stats["batch_submissions"] == 2 and stats["files_uploaded"] == 2
        assert stats["batches_by_status"] == {"expired": 1, "completed": 1}
        bad = http.post(url.removesuffix("/v1") + "/_control", json={"batch_outcome": "x"})
        assert bad.status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
