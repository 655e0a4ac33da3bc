"""A fake OpenAI-compatible embedding provider: a real HTTP server on 127.0.0.1.

It speaks ``POST /v1/embeddings`` the way OpenAI does (request and response bodies, error
bodies, status codes), answers with deterministic vectors, and can be told to fail in every way
a real provider fails. Tests and benchmarks use it instead of a network service::

    with FakeEmbeddingServer() as srv:
        provider = OpenAICompatibleProvider(srv.url, "fake-768", 768)
        srv.fail_next("rate_limit", 2)          # the next two requests get a 429
        srv.configure(rates={"server_error": 0.1}, seed=7)
        srv.stats()["requests"]

A server in another process (a worker started by a test, ``python -m pgingest.testing.fake_provider``) is
driven the same way over HTTP with :func:`control` (``POST /_control``, ``GET /_control``).

Vectors
    ``fake_vectors(model, texts, dim)``: one vector per text, a pure function of (model, text):
    a 64-bit seed from blake2b(model, text) feeds a vectorised splitmix64 stream, scaled by a
    per-text factor so the vectors are *not* unit length (the worker must normalise them). A
    smaller ``dimensions`` request gives a prefix of the same stream.

Failure modes (``fail_next(mode, n)`` or ``rates={mode: p}``)
    ``rate_limit`` 429 + Retry-After, ``server_error`` 500, ``unavailable`` 503, ``bad_gateway``
    502 HTML page, ``timeout`` (no answer until ``hang_s`` or shutdown), ``trickle`` (a 200 whose
    body comes a byte every ``trickle_interval_s``), ``reset`` (TCP RST, no response),
    ``incomplete`` (Content-Length promises more than is sent), ``truncated`` (a 200 with cut JSON),
    ``error_body`` (a 200 with ``{"error": ...}``), ``too_large`` 413, ``bad_request`` 400 (on
    ``input``), ``bad_param`` 400 (on ``dimensions``: a request-level error), ``auth`` 401,
    ``forbidden`` 403, ``not_found`` 404, ``wrong_dims``, ``nan``, ``inf``, ``zero``,
    ``fewer``, ``more``, ``bad_index`` (duplicate index), ``shuffle`` (valid, data in reverse
    order), ``quota`` (429 ``insufficient_quota``), ``http_<code>`` (that status, with an
    OpenAI-style error body).

Hostile answers (a broken gateway, a compromised endpoint)
    ``error_message`` (a :class:`Behaviour` field) replaces the message of every injected error
    body: NUL, lone surrogates, newlines and control characters travel as JSON escapes.
    ``binary`` answers ``binary_status`` with a binary body (NUL bytes, a UTF-16 page, invalid
    UTF-8). ``huge`` is a valid 200 of ``huge_body_bytes`` (Content-Length sent),
    ``huge_unsized`` the same without Content-Length (the body ends when the connection
    closes), ``gzip_bomb`` a gzip body that inflates to ``huge_body_bytes`` (sent whatever the
    request accepts), ``slow_headers`` a valid answer whose status line and headers come a byte
    every ``trickle_interval_s``.

Slow answers
    ``slow`` holds a request ``slow_s`` seconds, then gives the valid answer (a provider slower
    than a worker's visibility timeout). While it is held, its inputs are *in flight*: an input
    of the same model that arrives meanwhile in any request is counted in
    ``stats()["slow_overlaps"]`` (the same work claimed twice; the last 50 of them, as
    ``model: input``, in ``stats()["slow_overlapped"]``); ``stats()["slow_held"]`` counts the
    requests held to the end.

Capacity mode (a CPU-bound server: self-hosted TEI or ``pgingest serve-model`` on a small machine)
    ``configure(capacity_inputs_per_s=N)`` (optionally ``capacity_tokens_per_s=M``; the two
    times add up: ``work = inputs / N + tokens / M``) computes ONE request at a time, in arrival
    order: the others queue, so a request's latency is (work queued ahead + its own work) / rate.
    One queue for the whole server, every model. The work is a sleep, not CPU. Tokens are
    counted as in quota mode. ``capacity_queue_limit_inputs=K`` (0: none) answers a request that
    would make more than K inputs queued or computing with a 503 ``overloaded`` at once.
    ``stats()``: ``capacity_requests`` / ``capacity_inputs`` (computed), ``capacity_busy_s``,
    ``capacity_max_queue_inputs`` (most inputs queued or computing when a request arrived, its
    own included), ``capacity_max_latency_s`` (arrival to answer computed), ``capacity_overloaded``,
    ``abandoned`` (answers computed whose client had gone: its connection closed or reset when
    the answer was to be written, or a broken pipe while writing it), ``abandoned_queued``
    (requests dropped before their turn because their client had closed the connection: checked
    every 50 ms while queued, never computed), ``resent`` (inputs that arrived while the same
    (model, input) was still queued or being computed: the client re-sent work the server was
    still doing), ``resent_requests`` and ``resent_inputs`` (the last 50, as ``model: input``).

Quota mode (hosted APIs' rate limits)
    ``configure(quota={"rpm": N, "tpm": M})``, per model ``{"rpm": .., "tpm": .., "models":
    {"fake-384": {"tpm": ..}}}`` (a model's entry overrides the defaults; a limit left out is
    unlimited and its headers are not sent; ``None`` turns the mode off): requests and tokens
    per minute per (API key, model), each a token bucket of the limit, refilled continuously
    (limit / 60 a second), full at first. A request takes 1 request and its tokens from both, or
    nothing: over either it gets OpenAI's 429 (``{"error": {"message": "Rate limit reached for
    <model> in organization org-fake on tokens per min (TPM): Limit X, Used Y, Requested Z.
    Please try again in 1.2s. ...", "type": "tokens" | "requests", "code":
    "rate_limit_exceeded"}}``, the kind whose wait is longer) with ``Retry-After`` (whole seconds,
    rounded up) and ``retry-after-ms`` until the buckets hold enough; a request larger than the
    TPM limit gets OpenAI's "Request too large" 429 with no ``Retry-After``. Rejected requests
    take nothing. Every answer after the check (200, 429 and any later error) carries
    ``x-ratelimit-limit-{requests,tokens}``, ``x-ratelimit-remaining-{requests,tokens}`` (after
    this request) and ``x-ratelimit-reset-{requests,tokens}`` (time until the bucket is full
    again, in OpenAI's Go-style durations: ``20ms``, ``1s``, ``17.28s``, ``6m0s``; see
    :func:`go_duration`). The check comes after authentication and parsing, before
    ``on_request``, latency, capacity and failure injection. A request's tokens:
    :func:`count_tokens`, the sum of ``pgingest.chunking.get_tokenizer(quota_tokenizer)
    .count_input(text)`` (default ``all-MiniLM-L6-v2``, special tokens included), i.e. exactly
    the ``token_count`` the chunker gave the chunks sent, so client-side pacing and server-side
    enforcement agree; ``usage`` reports the same count in quota mode. ``reset_quota()``
    refills every bucket. ``stats()``: ``quota_accepted_requests``, ``quota_accepted_tokens``,
    ``quota_rejected`` (``{"requests": n, "tokens": n}``), ``quota_by_key_model`` (``"<masked
    key> <model>"`` -> accepted_requests, accepted_tokens, rejected_requests, rejected_tokens);
    ``by_mode`` counts the 429s as ``quota_requests`` / ``quota_tokens``.

Batch API (OpenAI's, for ``/v1/embeddings``)
    ``POST /v1/files`` (multipart: ``purpose=batch``, ``file``: a JSONL of ``{"custom_id", "method":
    "POST", "url": "/v1/embeddings", "body": {embeddings request}}``), ``GET /v1/files``,
    ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
    ``POST /v1/batches`` (``input_file_id``, ``endpoint: "/v1/embeddings"``,
    ``completion_window: "24h"``, ``metadata``), ``GET /v1/batches``, ``GET /v1/batches/{id}``,
    ``POST /v1/batches/{id}/cancel``; the API key is checked as for ``/v1/embeddings``. Batch
    objects have OpenAI's fields (``status``, ``output_file_id``, ``error_file_id``,
    ``request_counts {total, completed, failed}``, ``errors``, ``*_at`` timestamps). A batch of
    ``batch_completion_s`` = T is ``validating`` for 0.1 T, ``in_progress`` until 0.9 T (its
    ``request_counts`` grow with the time, in file order), ``finalizing`` until T, then
    ``completed``. Output lines: ``{"id": "batch_req_...", "custom_id", "response":
    {"status_code": 200, "request_id", "body": <the /v1/embeddings answer: same vectors,
    encoding_format and dimensions honoured>}, "error": null}``; a failed request goes to the
    error file as ``{"response": {"status_code": 400, "body": {"error": ...}}, "error": null}``:
    a line whose inputs hold ``__REJECT__`` or are invalid (400), the custom_ids of
    ``batch_fail_custom_ids`` and a ``batch_fail_share`` of them drawn from (``seed``, custom_id)
    (``batch_fail_status``, default 500). The input file is checked when the batch is created
    (its lines, fates and the behaviour then in force are fixed there); a bad line (not JSON,
    no or a duplicate custom_id, not POST, another url, an unknown model), two models in one
    file, more than ``batch_max_requests`` requests or ``batch_max_inputs`` inputs, or an empty
    file make it ``failed`` after validating, with ``errors.data`` (``code``, ``message``,
    ``line``). ``batch_outcome`` (every new batch) or ``next_batch_outcome(outcome, n)`` (the
    next n) decide the fate: ``completed``; ``failed`` (after validating, code
    ``batch_failed``); ``expired`` (at T: the first ``batch_done_share`` of the requests in the
    output/error files, the rest as ``{"response": null, "error": {"code": "batch_expired"}}``
    in the error file, as OpenAI documents, and counted failed); ``cancelled`` (``cancelling`` from
    0.9 T, ``cancelled`` at T with the first ``batch_done_share`` run). ``POST .../cancel``:
    ``cancelling`` at once, ``cancelled`` min(0.1 T, 1 s) later; the requests run by then are
    in the output; a batch already ended gets a 409. ``batch(id)``, ``batches()``,
    ``cancel_batch(id)`` and ``file_content(id)`` do the same in process. ``reset()`` drops
    files and batches. ``stats()``: ``batch_submissions`` (batches created), ``files_uploaded``,
    ``batch_inputs`` (inputs embedded into output files), ``batches_by_status``.

Another process
    Every :class:`Behaviour` field (all the fields above) is a key of ``POST /_control``; so
    are ``reset_quota`` and ``next_batch_outcome`` (an outcome or ``{"outcome": o, "n": k}``).
    ``python -m pgingest.testing.fake_provider`` takes ``--capacity-inputs-per-s``,
    ``--capacity-tokens-per-s``, ``--capacity-queue-limit-inputs``, ``--quota-rpm``,
    ``--quota-tpm``, ``--quota-tokenizer``, ``--batch-completion-s``, ``--batch-outcome``,
    ``--batch-done-share``, ``--batch-fail-share`` and ``--batch-fail-custom-id`` (repeatable);
    they are the behaviour ``reset`` returns to. ``FakeEmbeddingServer(**fields)`` does the same
    in process.

Speed
    Measured with the server pinned to one core and the client in another process, 768 dims,
    base64: about 17,000 vectors/s in requests of 16 inputs, 25,000 in requests of 256 (2,000
    requests/s of one input). JSON floats (``encoding_format: float``) are ~2,000 vectors/s.

Per-input markers (one bad document among many)
    a text containing ``__REJECT__`` makes the whole request a 400 naming its index (as OpenAI
    does), ``__NAN__`` / ``__INF__`` put a NaN / +Inf in its vector, ``__DIM__`` gives its vector
    one component less, ``__ZERO__`` gives it an all-zero vector.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import email.message
import email.parser
import email.policy
import gzip
import hashlib
import json
import logging
import math
import os
import random
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from pgingest.chunking import DEFAULT_TOKENIZER, TOKENIZER_NAMES, get_tokenizer

__all__ = [
    "BATCH_OUTCOMES",
    "DEFAULT_MODELS",
    "DIM_MARKER",
    "FAILURE_MODES",
    "INF_MARKER",
    "NAN_MARKER",
    "REJECT_MARKER",
    "ZERO_MARKER",
    "Behaviour",
    "Counters",
    "FakeEmbeddingServer",
    "RequestInfo",
    "control",
    "count_tokens",
    "fake_vectors",
    "go_duration",
    "main",
]

logger = logging.getLogger("pgingest.testing.fake_provider")

DEFAULT_MODELS: Mapping[str, int] = {"fake-384": 384, "fake-768": 768}

REJECT_MARKER = "__REJECT__"
NAN_MARKER = "__NAN__"
INF_MARKER = "__INF__"
DIM_MARKER = "__DIM__"
ZERO_MARKER = "__ZERO__"

FAILURE_MODES: frozenset[str] = frozenset(
    {
        "rate_limit",
        "quota",
        "server_error",
        "unavailable",
        "bad_gateway",
        "timeout",
        "trickle",
        "reset",
        "incomplete",
        "truncated",
        "error_body",
        "too_large",
        "bad_request",
        "bad_param",
        "auth",
        "forbidden",
        "not_found",
        "wrong_dims",
        "nan",
        "inf",
        "zero",
        "fewer",
        "more",
        "bad_index",
        "shuffle",
        "binary",
        "huge",
        "huge_unsized",
        "gzip_bomb",
        "slow_headers",
        "slow",
    }
)

MAX_DIMENSIONS = 65_536


def _known_mode(mode: str) -> bool:
    """A named failure mode, or ``http_<code>``: that status with an OpenAI-style error body."""
    if mode.startswith("http_"):
        code = mode[len("http_") :]
        return code.isdigit() and 200 <= int(code) <= 599
    return mode in FAILURE_MODES


# --------------------------------------------------------------------------------------------
# Deterministic vectors
# --------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _seeds(model: str, texts: Sequence[str]) -> np.ndarray:
    prefix = hashlib.blake2b(model.encode("utf-8"), digest_size=16).digest()
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(
                    text.encode("utf-8", "surrogatepass"), digest_size=8, key=prefix
                ).digest(),
                "little",
            )
            for text in texts
        ),
        dtype=np.uint64,
        count=len(texts),
    )


def fake_vectors(model: str, texts: Sequence[str], dim: int) -> np.ndarray:
    """The fake server's raw (unnormalised) float32 vectors, shape ``(len(texts), dim)``.

    A pure function of (model, text): the same text always gets the same vector, different
    texts (or models) get unrelated ones. Vectorised splitmix64, about a microsecond per
    768-dim vector.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    seeds = _seeds(model, texts)
    steps = np.arange(1, dim + 1, dtype=np.uint64) * _GOLDEN
    z = seeds[:, None] + steps[None, :]
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    # 24 high bits -> float32 in [-1, 1), exact.
    out = (z >> np.uint64(40)).astype(np.float32)
    out *= np.float32(2.0**-23)
    out -= np.float32(1.0)
    # Per-text scale in [0.5, 10.5): never unit length, so normalisation is exercised.
    scale = np.float32(0.5) + (seeds % np.uint64(1000)).astype(np.float32) / np.float32(100.0)
    out *= scale[:, None]
    return out


# --------------------------------------------------------------------------------------------
# Behaviour and counters
# --------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What the server does; change it at run time with :meth:`FakeEmbeddingServer.configure`.

    Every field can also be set over HTTP with ``POST /_control {"field": value}``.
    """

    models: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    """model name -> dimension; other names get OpenAI's 404 ``model_not_found``."""
    api_key: str | None = None
    """expected ``Authorization: Bearer`` key; ``None`` accepts any request."""
    echo_key_in_errors: bool = False
    """put the *whole* received key in 401 messages (to test client-side redaction)."""
    latency_ms: float = 0.0
    """added to every embeddings request (benchmarks)."""
    latency_per_input_ms: float = 0.0
    retry_after: float | str | None = 1
    """``Retry-After`` of injected 429s: seconds, an HTTP date string, or ``None`` (no header)."""
    retry_after_ms: float | None = None
    """also send OpenAI's ``retry-after-ms`` header on 429s."""
    rates: dict[str, float] = field(default_factory=dict)
    """failure mode -> probability per request, drawn from a ``random.Random(seed)``."""
    seed: int = 0
    hang_s: float = 30.0
    """how long ``timeout`` holds a request (interrupted at shutdown)."""
    trickle_interval_s: float = 0.05
    max_inputs: int = 2048
    """more inputs in one request -> 400 on ``input``, as OpenAI."""
    max_body_bytes: int = 16 * 1024 * 1024
    """a larger request body -> 413."""
    reject_empty: bool = True
    """an empty string input -> 400, as OpenAI."""
    gzip: bool = False
    """gzip every answer when the request accepts it (as OpenAI's front end does)."""
    error_message: str | None = None
    """replaces the message of every injected error body (hostile text: NUL, surrogates...)."""
    binary_status: int = 403
    """status of the ``binary`` failure mode."""
    huge_body_bytes: int = 64 * 1024 * 1024
    """size of the ``huge`` / ``huge_unsized`` body, and of the inflated ``gzip_bomb``."""
    slow_s: float = 10.0
    """how long ``slow`` holds a request before its valid answer."""
    capacity_inputs_per_s: float = 0.0
    """capacity mode: inputs computed per second, one request at a time (0: off)."""
    capacity_tokens_per_s: float = 0.0
    """capacity mode: also tokens (``quota_tokenizer``) per second; the two times add up."""
    capacity_queue_limit_inputs: int = 0
    """capacity mode: a request that would make more inputs queued or computing gets a 503
    ``overloaded`` at once (0: no limit)."""
    quota: dict[str, Any] | None = None
    """quota mode: ``{"rpm": N, "tpm": M, "models": {model: {"rpm": .., "tpm": ..}}}`` per
    (API key, model); a limit left out is unlimited; ``None``: off."""
    quota_tokenizer: str = DEFAULT_TOKENIZER
    """the :mod:`pgingest.chunking` tokenizer that counts a request's tokens (``count_input``,
    special tokens included: the chunker's ``token_count``)."""
    batch_completion_s: float = 1.0
    """Batch API: seconds from ``POST /v1/batches`` to the batch's end."""
    batch_outcome: str = "completed"
    """Batch API: the fate of new batches: completed, expired, failed or cancelled."""
    batch_done_share: float = 0.5
    """Batch API: the share of requests run before an ``expired`` or ``cancelled`` outcome."""
    batch_fail_custom_ids: list[str] = field(default_factory=list)
    """Batch API: these custom_ids fail (``batch_fail_status``) in the error file."""
    batch_fail_share: float = 0.0
    """Batch API: this share of the requests fails (drawn per custom_id from ``seed``)."""
    batch_fail_status: int = 500
    """Batch API: the status of the failures above."""
    batch_max_requests: int = 50_000
    """Batch API: more requests in an input file fail the batch's validation (as OpenAI)."""
    batch_max_inputs: int = 50_000
    """Batch API: more embedding inputs over all requests fail the validation (as OpenAI)."""


@dataclass
class RequestInfo:
    """What the ``on_request`` hook sees of an embeddings request."""

    model: str
    inputs: list[str]
    encoding_format: str
    dimensions: int
    headers: dict[str, str]


@dataclass
class Counters:
    requests: int = 0
    """embeddings requests received (any outcome, control requests excluded)."""
    connections: int = 0
    """TCP connections accepted (keep-alive reuse keeps this low)."""
    inputs: int = 0
    """inputs in the requests that got past authentication and parsing."""
    with_authorization: int = 0
    """embeddings requests that carried an ``Authorization`` header (a key was sent)."""
    streamed_bytes: int = 0
    """body bytes the ``huge`` / ``huge_unsized`` modes got out before the client stopped."""
    slow_held: int = 0
    """requests the ``slow`` mode held for ``slow_s`` to the end."""
    slow_overlaps: int = 0
    """inputs that arrived while a ``slow`` request held the same (model, input)."""
    slow_overlapped: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    """those inputs, as ``model: input`` (the last 50)."""
    capacity_requests: int = 0
    """capacity mode: requests computed (their work time spent)."""
    capacity_inputs: int = 0
    """capacity mode: inputs of those requests."""
    capacity_busy_s: float = 0.0
    """capacity mode: seconds spent computing."""
    capacity_max_queue_inputs: int = 0
    """capacity mode: most inputs queued or computing, the arriving request's included."""
    capacity_max_latency_s: float = 0.0
    """capacity mode: longest time from a request's arrival to its answer being computed."""
    capacity_overloaded: int = 0
    """capacity mode: requests refused by ``capacity_queue_limit_inputs``."""
    abandoned: int = 0
    """capacity mode: answers computed whose client had gone (closed, reset, broken pipe)."""
    abandoned_queued: int = 0
    """capacity mode: requests dropped before their turn because their client had gone."""
    resent: int = 0
    """capacity mode: inputs that arrived while the same (model, input) was queued or computing."""
    resent_requests: int = 0
    """capacity mode: requests with at least one such input."""
    resent_inputs: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    """those inputs, as ``model: input`` (the last 50)."""
    quota_accepted_requests: int = 0
    quota_accepted_tokens: int = 0
    quota_rejected: Counter[str] = field(default_factory=Counter)
    """429s of quota mode by kind: ``requests`` (RPM) or ``tokens`` (TPM)."""
    quota_by_key_model: dict[str, dict[str, int]] = field(default_factory=dict)
    """``"<masked key> <model>"`` -> accepted_requests, accepted_tokens, rejected_requests,
    rejected_tokens."""
    batch_submissions: int = 0
    """``POST /v1/batches`` accepted (batches created)."""
    files_uploaded: int = 0
    """``POST /v1/files`` accepted."""
    batch_inputs: int = 0
    """inputs embedded by batches (written to output files)."""
    by_status: Counter[int] = field(default_factory=Counter)
    by_mode: Counter[str] = field(default_factory=Counter)
    """``ok`` or the failure mode / marker that answered each request."""
    inputs_seen: deque[str] = field(default_factory=lambda: deque(maxlen=100_000))
    hook_errors: list[BaseException] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "inputs": self.inputs,
            "with_authorization": self.with_authorization,
            "streamed_bytes": self.streamed_bytes,
            "slow_held": self.slow_held,
            "slow_overlaps": self.slow_overlaps,
            "slow_overlapped": list(self.slow_overlapped),
            "capacity_requests": self.capacity_requests,
            "capacity_inputs": self.capacity_inputs,
            "capacity_busy_s": self.capacity_busy_s,
            "capacity_max_queue_inputs": self.capacity_max_queue_inputs,
            "capacity_max_latency_s": self.capacity_max_latency_s,
            "capacity_overloaded": self.capacity_overloaded,
            "abandoned": self.abandoned,
            "abandoned_queued": self.abandoned_queued,
            "resent": self.resent,
            "resent_requests": self.resent_requests,
            "resent_inputs": list(self.resent_inputs),
            "quota_accepted_requests": self.quota_accepted_requests,
            "quota_accepted_tokens": self.quota_accepted_tokens,
            "quota_rejected": {k: self.quota_rejected[k] for k in ("requests", "tokens")},
            "quota_by_key_model": copy.deepcopy(self.quota_by_key_model),
            "batch_submissions": self.batch_submissions,
            "files_uploaded": self.files_uploaded,
            "batch_inputs": self.batch_inputs,
            "by_status": dict(self.by_status),
            "by_mode": dict(self.by_mode),
            "inputs_seen": list(self.inputs_seen),
            "hook_errors": [repr(e) for e in self.hook_errors],
        }


_BEHAVIOUR_FIELDS = frozenset(f.name for f in dataclasses.fields(Behaviour))


class _ControlError(ValueError):
    pass


BATCH_OUTCOMES: frozenset[str] = frozenset({"completed", "expired", "failed", "cancelled"})


def _limits(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _ControlError(f"{where} must be an object with rpm and/or tpm")
    out: dict[str, float] = {}
    for kind in ("rpm", "tpm"):
        v = value.get(kind)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
            raise _ControlError(f"{where}.{kind} must be a positive number, got {v!r}")
        out[kind] = float(v)
    return out


def _normalise(fields: dict[str, Any]) -> None:
    """Check and normalise the Behaviour fields of the capacity, quota and batch modes."""
    for name in ("capacity_inputs_per_s", "capacity_tokens_per_s", "batch_completion_s"):
        if name in fields:
            v = float(fields[name])
            if not v >= 0 or math.isinf(v):
                raise _ControlError(f"{name} must be a finite number >= 0, got {v!r}")
            fields[name] = v
    for name in ("capacity_queue_limit_inputs", "batch_max_requests", "batch_max_inputs"):
        if name in fields:
            fields[name] = int(fields[name])
            if fields[name] < 0:
                raise _ControlError(f"{name} must be >= 0")
    for name in ("batch_done_share", "batch_fail_share"):
        if name in fields:
            v = float(fields[name])
            if not 0.0 <= v <= 1.0:
                raise _ControlError(f"{name} must be within [0, 1], got {v!r}")
            fields[name] = v
    if "batch_fail_status" in fields:
        fields["batch_fail_status"] = int(fields["batch_fail_status"])
        if not 400 <= fields["batch_fail_status"] <= 599:
            raise _ControlError("batch_fail_status must be an HTTP error status (400-599)")
    if "batch_fail_custom_ids" in fields:
        fields["batch_fail_custom_ids"] = [str(c) for c in fields["batch_fail_custom_ids"]]
    if "batch_outcome" in fields and fields["batch_outcome"] not in BATCH_OUTCOMES:
        raise _ControlError(
            f"batch_outcome must be one of {sorted(BATCH_OUTCOMES)}, got {fields['batch_outcome']!r}"
        )
    if "quota_tokenizer" in fields and fields["quota_tokenizer"] not in TOKENIZER_NAMES:
        raise _ControlError(f"quota_tokenizer must be one of {list(TOKENIZER_NAMES)}")
    if fields.get("quota") is not None:
        quota = fields["quota"]
        unknown = set(dict(quota)) - {"rpm", "tpm", "models"}
        if unknown:
            raise _ControlError(f"unknown quota key(s): {sorted(unknown)}")
        norm: dict[str, Any] = dict(_limits(quota, "quota"))
        models = quota.get("models")
        if models is not None:
            if not isinstance(models, Mapping):
                raise _ControlError("quota.models must map model names to limits")
            norm["models"] = {str(m): _limits(v, f"quota.models.{m}") for m, v in models.items()}
        fields["quota"] = norm


# --------------------------------------------------------------------------------------------
# OpenAI-shaped bodies
# --------------------------------------------------------------------------------------------


def _error(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(body).encode()


_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


_BINARY_BODY = (
    "<html><body>Access denied</body></html>".encode("utf-16")  # NUL every other byte
    + b"\x00\x01\x1b[31m\xff\xfe\xed\xa0\x80 binary \x00 tail\r\n"  # invalid UTF-8, CESU surrogate
)


def _padded_json(size: int) -> Iterable[bytes]:
    """A valid JSON object of exactly ``size`` bytes (at least 64), in 64 KiB pieces."""
    head = b'{"object": "list", "data": [], "pad": "'
    tail = b'"}'
    pad = max(size - len(head) - len(tail), 0)
    yield head
    block = b"x" * (1 << 16)
    while pad > 0:
        n = min(pad, len(block))
        yield block[:n]
        pad -= n
    yield tail


_BOMBS: dict[int, bytes] = {}


def _gzip_bomb(size: int) -> bytes:
    """A gzip member that inflates to ``_padded_json(size)`` (cached: about 1 KiB per MiB)."""
    bomb = _BOMBS.get(size)
    if bomb is None:
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        bomb = b"".join(z.compress(piece) for piece in _padded_json(size)) + z.flush()
        _BOMBS[size] = bomb
    return bomb


def _mask_key(key: str) -> str:
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "****"


def _tokens(texts: Iterable[str]) -> int:
    return sum(len(t) // 4 + 1 for t in texts)


def count_tokens(texts: Iterable[str], tokenizer: str = DEFAULT_TOKENIZER) -> int:
    """A request's tokens as quota and capacity modes count them: the sum of
    ``pgingest.chunking.get_tokenizer(tokenizer).count_input(text)``, special tokens included,
    which is the chunker's ``Chunk.token_count`` of a chunk whose ``embed_input`` is ``text``
    (so a worker pacing itself on its chunks' token counts agrees with the server)."""
    tok = get_tokenizer(tokenizer)
    return sum(tok.count_input(t) for t in texts)


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it (Go's format, to the
    millisecond): ``0s``, ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.004s``."""
    ms = max(math.ceil(seconds * 1000 - 1e-6), 0)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


@dataclass
class _Parsed:
    model: str
    inputs: list[str]
    fmt: str
    dim: int


@dataclass
class _Refusal:
    status: int
    body: bytes
    mode: str


@dataclass(eq=False)
class _Job:
    """capacity mode: a request queued or being computed."""

    inputs: int
    work_s: float
    arrived: float


@dataclass
class _Bucket:
    """quota mode: a token bucket of ``limit`` per minute, refilled continuously."""

    limit: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / 60.0)
        self.updated = now

    def wait_for(self, need: float) -> float:
        """Seconds until the bucket holds ``need``."""
        return max(need - self.level, 0.0) * 60.0 / self.limit


FILE_MAX_BYTES = 200 * 1024 * 1024
"""The largest file ``POST /v1/files`` takes (OpenAI's limit for batch input files)."""
FILE_PURPOSES: frozenset[str] = frozenset(
    {"batch", "assistants", "fine-tune", "vision", "user_data", "evals"}
)


class _ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass
class _File:
    id: str
    data: bytes
    filename: str
    purpose: str
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass
class _Line:
    """A request of a batch: what it asks, or the error it will end with."""

    custom_id: str
    parsed: _Parsed | None
    refusal: _Refusal | None


@dataclass(eq=False)
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, Any] | None
    created_at: float  # wall clock
    t0: float  # monotonic
    completion_s: float
    outcome: str
    done_share: float
    lines: list[_Line]
    errors: list[dict[str, Any]]
    status: str = "validating"  # set when it ends
    cancel_t: float | None = None
    cancel_done: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)


def _wall(bt: _Batch, mono: float) -> int:
    """A monotonic instant of a batch's life as a Unix timestamp (OpenAI's ``*_at`` fields)."""
    return int(bt.created_at + (mono - bt.t0))


def _share(seed: int, custom_id: str) -> float:
    """A draw in [0, 1) that depends only on (seed, custom_id)."""
    digest = hashlib.blake2b(f"{seed}\0{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _client_gone(sock: socket.socket) -> bool:
    """True when the client has closed (EOF) or reset its connection: a cheap peek."""
    if isinstance(sock, ssl.SSLSocket):
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeEmbeddingServer) -> None:
        self.fake = fake
        self.to_reset: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def shutdown_request(self, request: Any) -> None:
        if request in self.to_reset:
            # No FIN first: closing with SO_LINGER 0 sends a bare RST.
            self.to_reset.discard(request)
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away (reset, broken pipe, timeout)
            logger.debug("connection from %s ended: %r", client_address, exc)
        else:
            logger.exception("fake server: error while handling %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "pgingest-fake/0.1"
    timeout = 120  # idle keep-alive connections
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ------------------------------------------------------------------------

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        content_length: int | None = None,
    ) -> None:
        if (
            content_length is None
            and self.server.fake.behaviour.gzip
            and "gzip" in (self.headers.get("Accept-Encoding") or "")
        ):
            body = gzip.compress(body, compresslevel=1)
            headers = {**(headers or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self, limit: int) -> bytes | None:
        """The request body, or None when it is over ``limit`` (it is read and dropped)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            return None
        return self.rfile.read(length) if length else b""

    def reset_connection(self) -> None:
        """End the connection with a TCP RST and no response (done when the handler returns)."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.to_reset.add(self.connection)

    # -- routes --------------------------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0]
        if path == "/_control":
            self.send_body(200, json.dumps(fake.snapshot()).encode())
        elif fake._handle_api(self, "GET", path):
            pass
        elif path in ("/health", "/healthz"):
            self.send_body(200, b'{"status":"ok"}')
        elif path in ("/v1/models", "/models"):
            with fake._lock:
                names = sorted(fake.behaviour.models)
            data = [{"id": n, "object": "model", "owned_by": "pgingest-fake"} for n in names]
            self.send_body(200, json.dumps({"object": "list", "data": data}).encode())
        else:
            self.send_body(404, _error(f"Unknown path {path}", "invalid_request_error"))

    def do_POST(self) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0]
        if path in ("/v1/embeddings", "/embeddings"):
            fake._handle_embeddings(self)
        elif fake._handle_api(self, "POST", path):
            pass
        elif path == "/_control":
            raw = self.read_body(1 << 20) or b"{}"
            try:
                payload = json.loads(raw or b"{}")
                if not isinstance(payload, dict):
                    raise _ControlError("control body must be a JSON object")
                result = fake.control(payload)
            except (ValueError, TypeError) as exc:
                self.send_body(400, _error(str(exc), "invalid_request_error"))
                return
            self.send_body(200, json.dumps(result).encode())
        else:
            self.read_body(1 << 20)
            self.send_body(404, _error(f"Unknown path {path}", "invalid_request_error"))

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self.server.fake._handle_api(self, "DELETE", path):
            self.read_body(1 << 20)
            self.send_body(404, _error(f"Unknown path {path}", "invalid_request_error"))


class FakeEmbeddingServer:
    """The fake provider. ``start()`` (or ``with``) binds 127.0.0.1 and serves in a thread.

    ``url`` is the OpenAI-style base URL (``http://127.0.0.1:PORT/v1``, ``https://`` with an
    ``ssl_context`` holding the server's certificate); requests go to
    ``url + "/embeddings"``. ``behaviour`` is the live :class:`Behaviour`, ``counters`` the live
    :class:`Counters`; ``on_request`` is called in the handler thread while each embeddings
    request is being answered (after authentication and parsing, before latency and failure
    injection), so a test can look at the database while the worker waits on HTTP.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: Mapping[str, int] | None = None,
        api_key: str | None = None,
        latency_ms: float = 0.0,
        seed: int = 0,
        max_inputs_seen: int = 100_000,
        on_request: Callable[[RequestInfo], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        **behaviour: Any,
    ) -> None:
        unknown = set(behaviour) - _BEHAVIOUR_FIELDS
        if unknown:
            raise TypeError(f"unknown behaviour field(s): {sorted(unknown)}")
        _normalise(behaviour)
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._initial = Behaviour(
            models=dict(models if models is not None else DEFAULT_MODELS),
            api_key=api_key,
            latency_ms=latency_ms,
            seed=seed,
        )
        for name, value in behaviour.items():
            setattr(self._initial, name, value)
        self.behaviour = copy.deepcopy(self._initial)
        self._max_inputs_seen = max_inputs_seen
        self.counters = Counters(inputs_seen=deque(maxlen=max_inputs_seen))
        self._rng = random.Random(seed)
        self._queue: deque[str] = deque()
        self.on_request = on_request
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._held: Counter[tuple[str, str]] = Counter()  # inputs of the ``slow`` requests held
        self._turn = threading.Condition(self._lock)  # capacity mode: whose turn it is
        self._jobs: deque[_Job] = deque()  # capacity mode: queued, the head being computed
        self._computing: Counter[tuple[str, str]] = Counter()  # their (model, input)s
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}  # quota: (key, model, kind)
        self._batch_lock = threading.RLock()  # Batch API state (never taken under _lock)
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._outcomes: deque[str] = deque()  # next_batch_outcome

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeEmbeddingServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self._host, self._port), self)
        if self._ssl_context is not None:  # https://: the handshake runs at accept
            self._httpd.socket = self._ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self._bound_port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-embeddings-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests held by ``timeout``/``trickle``/latency end at once."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    close = stop

    def __enter__(self) -> FakeEmbeddingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self.counters.connections += 1
            else:
                self._connections.discard(conn)

    @property
    def port(self) -> int:
        """The bound port (still known after ``stop()``)."""
        if self._bound_port is None:
            raise RuntimeError("server not started")
        return self._bound_port

    @property
    def root_url(self) -> str:
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.root_url + "/v1"

    @property
    def embeddings_url(self) -> str:
        return self.url + "/embeddings"

    @property
    def control_url(self) -> str:
        return self.root_url + "/_control"

    # -- control -------------------------------------------------------------------------

    def configure(self, **fields: Any) -> None:
        """Set :class:`Behaviour` fields; setting ``seed`` or ``rates`` re-seeds the draws."""
        unknown = set(fields) - _BEHAVIOUR_FIELDS
        if unknown:
            raise _ControlError(f"unknown behaviour field(s): {sorted(unknown)}")
        if "rates" in fields:
            rates = {str(k): float(v) for k, v in dict(fields["rates"]).items() if float(v) > 0}
            bad = {m for m in rates if not _known_mode(m)}
            if bad:
                raise _ControlError(f"unknown failure mode(s): {sorted(bad)}")
            if sum(rates.values()) > 1.0 + 1e-9:
                raise _ControlError("failure rates add up to more than 1")
            fields["rates"] = rates
        if "models" in fields:
            fields["models"] = {str(k): int(v) for k, v in dict(fields["models"]).items()}
        _normalise(fields)
        with self._lock:
            for name, value in fields.items():
                setattr(self.behaviour, name, value)
            if "seed" in fields or "rates" in fields:
                self._rng = random.Random(self.behaviour.seed)

    def set_rate(self, mode: str, rate: float) -> None:
        with self._lock:
            rates = dict(self.behaviour.rates)
        rates[mode] = rate
        self.configure(rates=rates)

    def fail_next(self, mode: str, n: int = 1) -> None:
        """The next ``n`` embeddings requests fail with ``mode`` (queued after earlier ones)."""
        if not _known_mode(mode):
            raise _ControlError(f"unknown failure mode {mode!r}; known: {sorted(FAILURE_MODES)}")
        with self._lock:
            self._queue.extend([mode] * int(n))

    def reset(self) -> None:
        """Back to the behaviour given at construction, no queued failures, zero counters,
        full quota buckets, no files, batches or queued batch outcomes."""
        with self._batch_lock:
            self._files.clear()
            self._batches.clear()
        with self._lock:
            self.behaviour = copy.deepcopy(self._initial)
            self._rng = random.Random(self.behaviour.seed)
            self._queue.clear()
            self._outcomes.clear()
            self._buckets.clear()
        self.reset_counters()

    def reset_quota(self) -> None:
        """Quota mode: every (key, model) starts again with full buckets."""
        with self._lock:
            self._buckets.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = Counters(inputs_seen=deque(maxlen=self._max_inputs_seen))

    def stats(self) -> dict[str, Any]:
        by_status = self._batch_stats()
        with self._lock:
            return {**self.counters.snapshot(), "batches_by_status": by_status}

    def snapshot(self) -> dict[str, Any]:
        by_status = self._batch_stats()
        with self._lock:
            behaviour = dataclasses.asdict(self.behaviour)
            behaviour["api_key"] = None if behaviour["api_key"] is None else "<set>"
            return {
                "behaviour": behaviour,
                "pending_failures": list(self._queue),
                "pending_batch_outcomes": list(self._outcomes),
                "stats": {**self.counters.snapshot(), "batches_by_status": by_status},
            }

    def control(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control payload (the body of ``POST /_control``) and return a snapshot.

        Keys: ``reset`` (bool), ``reset_counters`` (bool), ``reset_quota`` (bool), any
        :class:`Behaviour` field, ``fail_next``: a mode, ``{"mode": m, "n": k}``, or a list of
        those, and ``next_batch_outcome``: an outcome or ``{"outcome": o, "n": k}``. Applied in
        that order.
        """
        payload = dict(payload)
        if payload.pop("reset", False):
            self.reset()
        if payload.pop("reset_counters", False):
            self.reset_counters()
        if payload.pop("reset_quota", False):
            self.reset_quota()
        fail_next = payload.pop("fail_next", None)
        outcome = payload.pop("next_batch_outcome", None)
        if isinstance(outcome, str):
            self.next_batch_outcome(outcome)
        elif isinstance(outcome, dict):
            self.next_batch_outcome(str(outcome["outcome"]), int(outcome.get("n", 1)))
        elif outcome is not None:
            raise _ControlError(f"bad next_batch_outcome {outcome!r}")
        if payload:
            self.configure(**payload)
        if fail_next is not None:
            items = fail_next if isinstance(fail_next, list) else [fail_next]
            for item in items:
                if isinstance(item, str):
                    self.fail_next(item)
                elif isinstance(item, dict):
                    self.fail_next(str(item["mode"]), int(item.get("n", 1)))
                else:
                    raise _ControlError(f"bad fail_next item {item!r}")
        return self.snapshot()

    def vector_for(
        self, text: str, model: str = "fake-768", dimensions: int | None = None
    ) -> np.ndarray:
        """The raw vector this server answers for ``text`` (no HTTP)."""
        dim = dimensions if dimensions is not None else self.behaviour.models[model]
        return fake_vectors(model, [text], dim)[0]

    # -- request handling ----------------------------------------------------------------

    def _pick_mode(self) -> str | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            rates = self.behaviour.rates
            if not rates:
                return None
            u = self._rng.random()
            acc = 0.0
            for mode in sorted(rates):
                acc += rates[mode]
                if u < acc:
                    return mode
            return None

    def _count(self, status: int | None, mode: str) -> None:
        with self._lock:
            if status is not None:
                self.counters.by_status[status] += 1
            self.counters.by_mode[mode] += 1

    def _check_auth(self, h: _Handler, reply: Callable[..., None]) -> str | None:
        """The API key the request carries ("" for none); None when refused (401 sent)."""
        auth = h.headers.get("Authorization") or ""
        given = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        expected = self.behaviour.api_key
        if expected is None:
            return given
        if not auth.startswith("Bearer "):
            msg = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            reply(401, _error(msg, "invalid_request_error"), "auth")
            return None
        if given != expected:
            shown = given if self.behaviour.echo_key_in_errors else _mask_key(given)
            msg = f"Incorrect API key provided: {shown}."
            reply(401, _error(msg, "invalid_request_error", "invalid_api_key"), "auth")
            return None
        return given

    def _parse_request(self, req: Any) -> _Parsed | _Refusal:
        """An embeddings request body checked as OpenAI does (online and in batch lines)."""
        b = self.behaviour
        if not isinstance(req, dict):
            msg = (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)"
            )
            return _Refusal(400, _error(msg, "invalid_request_error"), "invalid_json")
        model = req.get("model")
        if not isinstance(model, str):
            msg = "you must provide a model parameter"
            return _Refusal(400, _error(msg, "invalid_request_error", None, "model"), "invalid")
        with self._lock:
            model_dim = b.models.get(model)
        if model_dim is None:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            return _Refusal(
                404, _error(msg, "invalid_request_error", "model_not_found"), "model_not_found"
            )
        inputs = req.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) for t in inputs)
        ):
            msg = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
            return _Refusal(400, _error(msg, "invalid_request_error", None, "input"), "invalid")
        if len(inputs) > b.max_inputs:
            msg = f"'$.input' is invalid: at most {b.max_inputs} inputs per request, got {len(inputs)}."
            return _Refusal(400, _error(msg, "invalid_request_error", None, "input"), "invalid")
        if b.reject_empty:
            for i, t in enumerate(inputs):
                if not t:
                    msg = f"'$.input[{i}]' is invalid: empty string."
                    return _Refusal(
                        400, _error(msg, "invalid_request_error", None, "input"), "invalid"
                    )
        fmt = req.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            msg = f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: 'float' and 'base64'."
            return _Refusal(
                400, _error(msg, "invalid_request_error", None, "encoding_format"), "invalid"
            )
        dim = req.get("dimensions", model_dim)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIMENSIONS:
            msg = f"Invalid value for 'dimensions' = {dim!r}."
            return _Refusal(
                400, _error(msg, "invalid_request_error", None, "dimensions"), "invalid"
            )
        return _Parsed(model, inputs, fmt, dim)

    def _handle_embeddings(self, h: _Handler) -> None:
        b = self.behaviour
        with self._lock:
            self.counters.requests += 1
            if h.headers.get("Authorization"):
                self.counters.with_authorization += 1

        extra_headers: dict[str, str] = {}  # quota mode: x-ratelimit-* on every answer
        computed = False  # capacity mode: the answer's work was done

        def reply(status: int, body: bytes, mode: str, **kw: Any) -> None:
            self._count(status, mode)
            if extra_headers:
                kw["headers"] = {**extra_headers, **(kw.get("headers") or {})}
            if computed and _client_gone(h.connection):
                self._abandoned(h)
                return
            try:
                h.send_body(status, body, **kw)
            except OSError:
                if not computed:
                    raise
                self._abandoned(h)

        raw = h.read_body(b.max_body_bytes)
        if raw is None:
            reply(413, _error("Request body too large.", "invalid_request_error"), "too_large")
            return

        key = self._check_auth(h, reply)
        if key is None:
            return

        try:
            req = json.loads(raw)
        except ValueError:
            req = None
        parsed = self._parse_request(req)
        if isinstance(parsed, _Refusal):
            reply(parsed.status, parsed.body, parsed.mode)
            return
        model, inputs, fmt, dim = parsed.model, parsed.inputs, parsed.fmt, parsed.dim

        with self._lock:
            self.counters.inputs += len(inputs)
            self.counters.inputs_seen.extend(inputs)
            if self._held:
                again = [t for t in inputs if (model, t) in self._held]
                self.counters.slow_overlaps += len(again)
                self.counters.slow_overlapped.extend(f"{model}: {t}" for t in again)

        counted: int | None = None  # tokens, as pgingest's chunker counts them
        if b.quota is not None or b.capacity_tokens_per_s > 0:
            counted = count_tokens(inputs, b.quota_tokenizer)
        if b.quota is not None and counted is not None:
            refusal = self._quota_take(key, model, counted, extra_headers)
            if refusal is not None:
                reply(429, refusal[0], "quota_" + refusal[1], headers=refusal[2])
                return

        hook = self.on_request
        if hook is not None:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "authorization"}
            try:
                hook(RequestInfo(model, list(inputs), fmt, dim, headers))
            except Exception as exc:
                with self._lock:
                    self.counters.hook_errors.append(exc)
                logger.exception("fake server: on_request hook failed")
                reply(500, _error(f"on_request hook failed: {exc!r}", "server_error"), "hook_error")
                return

        delay = (b.latency_ms + b.latency_per_input_ms * len(inputs)) / 1000.0
        if delay > 0 and self._stopping.wait(delay):
            h.close_connection = True
            return

        if b.capacity_inputs_per_s > 0 or b.capacity_tokens_per_s > 0:
            outcome = self._compute(h, model, inputs, counted or 0)
            if outcome == "overloaded":
                msg = "The engine is currently overloaded, please try again later."
                reply(503, _error(msg, "server_error", "overloaded"), "overloaded")
                return
            if outcome != "done":  # the client went away in the queue, or the server stops
                h.close_connection = True
                return
            computed = True

        mode = self._pick_mode()
        if mode == "slow" and not self._hold(model, inputs):
            h.close_connection = True
            return
        if mode is not None and self._fail(h, mode, reply, model, dim):
            return

        for i, t in enumerate(inputs):
            if REJECT_MARKER in t:
                msg = f"'$.input[{i}]' is invalid: the input was rejected by the content filter."
                reply(
                    400,
                    _error(msg, "invalid_request_error", "invalid_input", "input"),
                    "reject_marker",
                )
                return

        tokens = counted if counted is not None and b.quota is not None else _tokens(inputs)
        body = json.dumps(self._embeddings_body(model, inputs, fmt, dim, tokens, mode)).encode()
        if mode == "truncated":
            reply(200, body[: max(len(body) // 2, 1)], "truncated")
        elif mode == "incomplete":
            self._count(200, "incomplete")
            h.close_connection = True
            h.send_body(200, body[: len(body) // 2], content_length=len(body))
        elif mode == "trickle":
            self._count(200, "trickle")
            self._trickle(h, body)
        elif mode == "slow_headers":
            self._count(200, "slow_headers")
            self._slow_headers(h, body)
        else:
            marked = any(
                m in t for t in inputs for m in (NAN_MARKER, INF_MARKER, DIM_MARKER, ZERO_MARKER)
            )
            reply(200, body, mode or ("marker" if marked else "ok"))

    def _embeddings_body(
        self,
        model: str,
        inputs: list[str],
        fmt: str,
        dim: int,
        tokens: int,
        mode: str | None = None,
    ) -> dict[str, Any]:
        rows = self._vectors(model, inputs, dim, mode)
        items = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")
                    if fmt == "base64"
                    else row.astype(np.float64).tolist()
                ),
            }
            for i, row in rows
        ]
        if mode == "shuffle":
            items.reverse()
        return {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # -- capacity mode ---------------------------------------------------------------------

    def _abandoned(self, h: _Handler) -> None:
        h.close_connection = True
        with self._lock:
            self.counters.abandoned += 1

    def _compute(self, h: _Handler, model: str, inputs: list[str], tokens: int) -> str:
        """Capacity mode: queue behind the requests ahead, then spend this request's work time.

        ``done``, ``overloaded``, ``gone`` (the client closed its connection while queued) or
        ``stopping``.
        """
        b = self.behaviour
        work = 0.0
        if b.capacity_inputs_per_s > 0:
            work += len(inputs) / b.capacity_inputs_per_s
        if b.capacity_tokens_per_s > 0:
            work += tokens / b.capacity_tokens_per_s
        keys = [(model, t) for t in inputs]
        job = _Job(len(inputs), work, time.monotonic())
        with self._lock:
            ahead = sum(j.inputs for j in self._jobs)
            limit = b.capacity_queue_limit_inputs
            if limit > 0 and self._jobs and ahead + len(inputs) > limit:
                self.counters.capacity_overloaded += 1
                return "overloaded"
            c = self.counters
            again = [t for t in inputs if (model, t) in self._computing]
            if again:
                c.resent += len(again)
                c.resent_requests += 1
                c.resent_inputs.extend(f"{model}: {t}" for t in again)
            c.capacity_max_queue_inputs = max(c.capacity_max_queue_inputs, ahead + len(inputs))
            self._computing.update(keys)
            self._jobs.append(job)
        try:
            while True:
                with self._turn:
                    if self._jobs[0] is job:
                        break
                    self._turn.wait(0.05)
                    if self._jobs[0] is job:
                        break
                if self._stopping.is_set():
                    return "stopping"
                if _client_gone(h.connection):
                    with self._lock:
                        self.counters.abandoned_queued += 1
                    return "gone"
            if self._stopping.wait(work):
                return "stopping"
            with self._lock:
                c = self.counters
                c.capacity_requests += 1
                c.capacity_inputs += len(inputs)
                c.capacity_busy_s += work
                c.capacity_max_latency_s = max(
                    c.capacity_max_latency_s, time.monotonic() - job.arrived
                )
            return "done"
        finally:
            with self._turn:
                self._jobs.remove(job)
                self._computing.subtract(keys)
                self._computing = +self._computing
                self._turn.notify_all()

    # -- quota mode ------------------------------------------------------------------------

    def _quota_limits(self, model: str) -> tuple[float | None, float | None]:
        quota = self.behaviour.quota or {}
        per_model = (quota.get("models") or {}).get(model) or {}
        rpm = per_model.get("rpm", quota.get("rpm"))
        tpm = per_model.get("tpm", quota.get("tpm"))
        return (None if rpm is None else float(rpm)), (None if tpm is None else float(tpm))

    def _quota_take(
        self, key: str, model: str, tokens: int, headers: dict[str, str]
    ) -> tuple[bytes, str, dict[str, str]] | None:
        """Quota mode: take one request and ``tokens`` from (key, model)'s buckets.

        Fills ``headers`` with the ``x-ratelimit-*`` headers; returns None when the request
        may go on, else (429 body, kind, headers of the 429).
        """
        rpm, tpm = self._quota_limits(model)
        now = time.monotonic()
        label = f"{_mask_key(key) if key else '(no key)'} {model}"
        with self._lock:
            stats = self.counters.quota_by_key_model.setdefault(
                label,
                {
                    "accepted_requests": 0,
                    "accepted_tokens": 0,
                    "rejected_requests": 0,
                    "rejected_tokens": 0,
                },
            )
            buckets = []
            for kind, limit, need in (("requests", rpm, 1.0), ("tokens", tpm, float(tokens))):
                if limit is None:
                    continue
                found = self._buckets.get((key, model, kind))
                if found is None or found.limit != limit:
                    found = self._buckets[(key, model, kind)] = _Bucket(limit, limit, now)
                found.refill(now)
                buckets.append((kind, found, need))
            short = [
                (bucket.wait_for(need), kind, bucket, need)
                for kind, bucket, need in buckets
                if bucket.level + 1e-9 < need
            ]
            if not short:
                for _, bucket, need in buckets:
                    bucket.level -= need
                self.counters.quota_accepted_requests += 1
                self.counters.quota_accepted_tokens += tokens
                stats["accepted_requests"] += 1
                stats["accepted_tokens"] += tokens
            else:
                wait, kind, bucket, need = max(short, key=lambda s: s[0])
                self.counters.quota_rejected[kind] += 1
                stats[f"rejected_{kind}"] += 1
            for name, bk, _ in buckets:
                headers[f"x-ratelimit-limit-{name}"] = str(int(bk.limit))
                headers[f"x-ratelimit-remaining-{name}"] = str(max(int(bk.level), 0))
                headers[f"x-ratelimit-reset-{name}"] = go_duration(bk.wait_for(bk.limit))
        if not short:
            return None
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        limit_n = int(bucket.limit)
        if need > bucket.limit:  # can never pass: OpenAI's "Request too large"
            msg = (
                f"Request too large for {model} in organization org-fake on {unit}: "
                f"Limit {limit_n}, Requested {int(need)}. The input or output tokens must be "
                "reduced in order to run successfully."
            )
            return _error(msg, kind, "rate_limit_exceeded"), kind, {}
        used = limit_n - max(int(bucket.level), 0)
        msg = (
            f"Rate limit reached for {model} in organization org-fake on {unit}: "
            f"Limit {limit_n}, Used {used}, Requested {int(need)}. Please try again in "
            f"{go_duration(wait)}. Visit https://platform.openai.com/account/rate-limits to "
            "learn more."
        )
        retry = {
            "Retry-After": str(max(math.ceil(wait), 1)),
            "retry-after-ms": str(max(math.ceil(wait * 1000), 1)),
        }
        return _error(msg, kind, "rate_limit_exceeded"), kind, retry

    # -- Batch API ---------------------------------------------------------------------------

    def _handle_api(self, h: _Handler, method: str, path: str) -> bool:
        """``/v1/files`` and ``/v1/batches``; False when ``path`` is none of theirs."""
        route = path[len("/v1") :] if path.startswith("/v1/") else path
        parts = route.strip("/").split("/")
        if parts[0] not in ("files", "batches"):
            return False

        def reply(status: int, body: Any) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.send_body(status, data)

        limit = FILE_MAX_BYTES if (method, route) == ("POST", "/files") else 1 << 20
        raw = h.read_body(limit) if method in ("POST", "DELETE") else b""
        if raw is None:
            reply(413, _error("Request body too large.", "invalid_request_error"))
            return True
        if self._check_auth(h, lambda status, body, mode: reply(status, body)) is None:
            return True
        try:
            answer = self._api(h, method, parts, raw)
        except _ApiError as exc:
            reply(exc.status, _error(str(exc), "invalid_request_error", exc.code, exc.param))
            return True
        if isinstance(answer, bytes):
            h.send_body(200, answer, content_type="application/octet-stream")
        else:
            reply(200, answer)
        return True

    def _api(self, h: _Handler, method: str, parts: list[str], raw: bytes) -> Any:
        kind, n = parts[0], len(parts)
        if kind == "files":
            if method == "POST" and n == 1:
                return self._upload(h, raw)
            if method == "GET" and n == 1:
                with self._batch_lock:
                    files = [f.object() for f in reversed(self._files.values())]
                return {"object": "list", "data": files, "has_more": False}
            if method == "GET" and n == 2:
                return self._file(parts[1]).object()
            if method == "GET" and n == 3 and parts[2] == "content":
                return self._file(parts[1]).data
            if method == "DELETE" and n == 2:
                with self._batch_lock:
                    f = self._file(parts[1])
                    del self._files[f.id]
                return {"id": f.id, "object": "file", "deleted": True}
        else:
            if method == "POST" and n == 1:
                return self._create_batch(raw)
            if method == "GET" and n == 1:
                return self._list_batches()
            if method == "GET" and n == 2:
                return self.batch(parts[1])
            if method == "POST" and n == 3 and parts[2] == "cancel":
                return self.cancel_batch(parts[1])
        raise _ApiError(404, f"Invalid URL ({method} /v1/{'/'.join(parts)})")

    def _file(self, file_id: str) -> _File:
        with self._batch_lock:
            f = self._files.get(file_id)
        if f is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return f

    def _upload(self, h: _Handler, raw: bytes) -> dict[str, Any]:
        ctype = h.headers.get("Content-Type") or ""
        if not ctype.startswith("multipart/form-data"):
            raise _ApiError(400, "Expected a multipart/form-data upload with purpose and file.")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw
        )
        purpose: str | None = None
        data: bytes | None = None
        filename = "upload.jsonl"
        if msg.is_multipart():
            for part in msg.iter_parts():
                assert isinstance(part, email.message.EmailMessage)
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    continue
                if name == "purpose":
                    purpose = payload.decode("utf-8", "replace").strip()
                elif name == "file":
                    data = payload
                    filename = part.get_filename() or filename
        if data is None:
            raise _ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in FILE_PURPOSES:
            raise _ApiError(
                400, f"Invalid value for 'purpose': {purpose!r}.", "invalid_value", "purpose"
            )
        f = _File(f"file-{uuid.uuid4().hex[:24]}", data, filename, purpose, int(time.time()))
        with self._batch_lock:
            self._files[f.id] = f
        with self._lock:
            self.counters.files_uploaded += 1
        return f.object()

    def _create_batch(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = None
        if not isinstance(req, dict):
            raise _ApiError(400, "We could not parse the JSON body of your request.")
        file_id = req.get("input_file_id")
        if not isinstance(file_id, str):
            raise _ApiError(
                400, "Missing required parameter: 'input_file_id'.", None, "input_file_id"
            )
        endpoint = req.get("endpoint")
        if endpoint != "/v1/embeddings":
            msg = f"Invalid value for 'endpoint': {endpoint!r}; this server supports '/v1/embeddings'."
            raise _ApiError(400, msg, "invalid_value", "endpoint")
        window = req.get("completion_window")
        if window != "24h":
            msg = f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'."
            raise _ApiError(400, msg, "invalid_value", "completion_window")
        metadata = req.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _ApiError(400, "'metadata' must be an object.", "invalid_value", "metadata")
        f = self._file(file_id)
        if f.purpose != "batch":
            msg = f"File {file_id} has purpose {f.purpose!r}; a batch needs purpose 'batch'."
            raise _ApiError(400, msg, "invalid_value", "input_file_id")
        with self._lock:
            b = copy.deepcopy(self.behaviour)
            outcome = self._outcomes.popleft() if self._outcomes else b.batch_outcome
            self.counters.batch_submissions += 1
        lines, errors = self._plan(f.data, b)
        now = time.time()
        batch = _Batch(
            id=f"batch_{uuid.uuid4().hex[:24]}",
            input_file_id=file_id,
            endpoint=endpoint,
            metadata=metadata,
            created_at=now,
            t0=time.monotonic(),
            completion_s=b.batch_completion_s,
            outcome=outcome,
            done_share=b.batch_done_share,
            lines=lines,
            errors=errors,
        )
        with self._batch_lock:
            self._batches[batch.id] = batch
            return self._batch_object(batch, time.monotonic())

    def _plan(self, data: bytes, b: Behaviour) -> tuple[list[_Line], list[dict[str, Any]]]:
        """Parse a batch input file: its lines and their fates, or the validation errors."""
        lines: list[_Line] = []
        errors: list[dict[str, Any]] = []

        def bad(code: str, message: str, line: int | None, param: str | None = None) -> None:
            errors.append({"code": code, "message": message, "param": param, "line": line})

        seen: set[str] = set()
        models: set[str] = set()
        n_inputs = 0
        fail_ids = set(b.batch_fail_custom_ids)
        for no, text in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except ValueError:
                item = None
            if not isinstance(item, dict):
                bad("invalid_json_line", "This line is not parseable as valid JSON.", no)
                continue
            cid = item.get("custom_id")
            if not isinstance(cid, str) or not cid:
                bad("missing_required_parameter", "Missing 'custom_id'.", no, "custom_id")
                continue
            if cid in seen:
                bad("duplicate_custom_id", f"The custom_id {cid!r} is duplicated.", no, "custom_id")
                continue
            seen.add(cid)
            if item.get("method") != "POST":
                bad("invalid_method", "Only the POST method is supported.", no, "method")
                continue
            if item.get("url") != "/v1/embeddings":
                msg = f"The url {item.get('url')!r} does not match the batch's endpoint."
                bad("mismatched_endpoint", msg, no, "url")
                continue
            body = item.get("body")
            if not isinstance(body, dict):
                bad("missing_required_parameter", "Missing 'body'.", no, "body")
                continue
            model = body.get("model")
            if not isinstance(model, str) or model not in b.models:
                msg = f"The model `{model}` does not exist or you do not have access to it."
                bad("model_not_found", msg, no, "body.model")
                continue
            models.add(model)
            parsed = self._parse_request(body)
            refusal = parsed if isinstance(parsed, _Refusal) else None
            if isinstance(parsed, _Parsed):
                n_inputs += len(parsed.inputs)
                hit = next((i for i, t in enumerate(parsed.inputs) if REJECT_MARKER in t), None)
                if hit is not None:
                    msg = f"'$.input[{hit}]' is invalid: the input was rejected by the content filter."
                    refusal = _Refusal(
                        400,
                        _error(msg, "invalid_request_error", "invalid_input", "input"),
                        "reject_marker",
                    )
                elif cid in fail_ids or _share(b.seed, cid) < b.batch_fail_share:
                    msg = "The server had an error while processing your request. Sorry about that!"
                    refusal = _Refusal(
                        b.batch_fail_status, _error(msg, "server_error"), "batch_fail"
                    )
            ok = parsed if isinstance(parsed, _Parsed) and refusal is None else None
            lines.append(_Line(cid, ok, refusal))
        if len(models) > 1:
            msg = f"The requests of a batch must all use one model, got {sorted(models)}."
            bad("mismatched_model", msg, None, "body.model")
        if not lines and not errors:
            bad("empty_file", "The input file has no requests.", None)
        if len(lines) > b.batch_max_requests:
            msg = f"The batch has {len(lines)} requests; the limit is {b.batch_max_requests}."
            bad("too_many_requests", msg, None)
        if n_inputs > b.batch_max_inputs:
            msg = f"The batch has {n_inputs} embedding inputs; the limit is {b.batch_max_inputs}."
            bad("too_many_inputs", msg, None)
        return lines, errors

    def _list_batches(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._batch_lock:
            data = [self._batch_object(bt, now) for bt in reversed(self._batches.values())]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch object (OpenAI's shape) of ``batch_id``, as ``GET /v1/batches/{id}``."""
        with self._batch_lock:
            bt = self._batches.get(batch_id)
            if bt is None:
                raise _ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
            return self._batch_object(bt, time.monotonic())

    def batches(self) -> list[dict[str, Any]]:
        """Every batch object, newest first."""
        result: list[dict[str, Any]] = self._list_batches()["data"]
        return result

    def file_content(self, file_id: str) -> bytes:
        """The content of a file (an uploaded input, or a batch's output or error file)."""
        return self._file(file_id).data

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """``POST /v1/batches/{id}/cancel``: cancelling now, cancelled a moment later."""
        now = time.monotonic()
        with self._batch_lock:
            bt = self._batches.get(batch_id)
            if bt is None:
                raise _ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
            status = self._batch_status(bt, now)
            if status not in ("validating", "in_progress", "finalizing"):
                msg = f"Cannot cancel a batch with status '{status}'."
                raise _ApiError(409, msg, "batch_not_cancellable")
            bt.cancel_t = now
            bt.cancel_done = self._run_by(bt, now)
            bt.times["cancelling_at"] = _wall(bt, now)
            return self._batch_object(bt, now)

    def next_batch_outcome(self, outcome: str, n: int = 1) -> None:
        """The next ``n`` batches created end ``outcome`` (then ``batch_outcome`` again)."""
        if outcome not in BATCH_OUTCOMES:
            raise _ControlError(
                f"unknown batch outcome {outcome!r}; known: {sorted(BATCH_OUTCOMES)}"
            )
        with self._lock:
            self._outcomes.extend([outcome] * int(n))

    def _run_by(self, bt: _Batch, now: float) -> int:
        """How many of the batch's requests have run at ``now`` (in file order)."""
        t = bt.completion_s
        if t <= 0:
            return len(bt.lines)
        progress = ((now - bt.t0) - 0.1 * t) / (0.8 * t)
        return int(len(bt.lines) * min(max(progress, 0.0), 1.0))

    def _batch_status(self, bt: _Batch, now: float) -> str:
        """The batch's status at ``now`` (under ``_batch_lock``); ends it when its time came."""
        if bt.status in BATCH_OUTCOMES:
            return bt.status
        t = bt.completion_s
        elapsed = now - bt.t0
        if bt.cancel_t is not None:
            if now >= bt.cancel_t + min(0.1 * t, 1.0):
                self._finish(bt, "cancelled", bt.cancel_done or 0, now)
                return bt.status
            return "cancelling"
        if elapsed < 0.1 * t:
            return "validating"
        if bt.errors or bt.outcome == "failed":
            if not bt.errors:
                bt.errors.append(
                    {
                        "code": "batch_failed",
                        "message": "The batch failed (injected by batch_outcome).",
                        "param": None,
                        "line": None,
                    }
                )
            self._finish(bt, "failed", 0, bt.t0 + 0.1 * t)
            return bt.status
        bt.times.setdefault("in_progress_at", _wall(bt, bt.t0 + 0.1 * t))
        if elapsed < 0.9 * t:
            return "in_progress"
        if bt.outcome == "cancelled":
            bt.times.setdefault("cancelling_at", _wall(bt, bt.t0 + 0.9 * t))
            if elapsed < t:
                return "cancelling"
        elif bt.outcome == "completed":
            bt.times.setdefault("finalizing_at", _wall(bt, bt.t0 + 0.9 * t))
            if elapsed < t:
                return "finalizing"
        elif elapsed < t:
            return "in_progress"
        done = len(bt.lines) if bt.outcome == "completed" else round(len(bt.lines) * bt.done_share)
        self._finish(bt, bt.outcome, done, bt.t0 + t)
        return bt.status

    def _finish(self, bt: _Batch, status: str, done: int, at: float) -> None:
        """End the batch: write its output and error files (the first ``done`` requests ran)."""
        ok_lines: list[str] = []
        err_lines: list[str] = []
        inputs = 0
        for i, line in enumerate(bt.lines):
            rid = uuid.uuid4().hex
            entry: dict[str, Any] = {"id": f"batch_req_{rid[:24]}", "custom_id": line.custom_id}
            if i >= done:
                if status != "expired":
                    break
                entry["response"] = None
                entry["error"] = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion "
                    "window expired.",
                }
                err_lines.append(json.dumps(entry))
                bt.failed += 1
                continue
            if line.parsed is not None:
                p = line.parsed
                # The cheap estimate even in quota mode: a batch's requests are not taken from the
                # online quota, and the real tokenizer on every line of a large batch (~0.5 ms
                # each) held the server for seconds (scripts/chaos.py's control calls timed out)
                tokens = _tokens(p.inputs)
                body = self._embeddings_body(p.model, p.inputs, p.fmt, p.dim, tokens)
                entry["response"] = {"status_code": 200, "request_id": rid, "body": body}
                entry["error"] = None
                ok_lines.append(json.dumps(entry))
                inputs += len(p.inputs)
                bt.completed += 1
            else:
                assert line.refusal is not None
                entry["response"] = {
                    "status_code": line.refusal.status,
                    "request_id": rid,
                    "body": json.loads(line.refusal.body),
                }
                entry["error"] = None
                err_lines.append(json.dumps(entry))
                bt.failed += 1
        created = int(time.time())
        for lines_, suffix in ((ok_lines, "output"), (err_lines, "error")):
            if not lines_:
                continue
            f = _File(
                f"file-{uuid.uuid4().hex[:24]}",
                ("\n".join(lines_) + "\n").encode(),
                f"{bt.id}_{suffix}.jsonl",
                "batch_output",
                created,
            )
            self._files[f.id] = f
            if suffix == "output":
                bt.output_file_id = f.id
            else:
                bt.error_file_id = f.id
        bt.status = status
        bt.times[f"{status}_at"] = _wall(bt, at)
        if status in ("completed", "expired", "cancelled") and "finalizing_at" not in bt.times:
            bt.times["finalizing_at"] = _wall(bt, at)
        with self._lock:
            self.counters.batch_inputs += inputs

    def _batch_object(self, bt: _Batch, now: float) -> dict[str, Any]:
        status = self._batch_status(bt, now)
        total = len(bt.lines) if not bt.errors else 0
        if status in BATCH_OUTCOMES:
            completed, failed = bt.completed, bt.failed
        else:
            run = bt.lines[: self._run_by(bt, now)] if status != "validating" else []
            if bt.cancel_t is not None:
                run = bt.lines[: bt.cancel_done or 0]
            completed = sum(1 for line in run if line.parsed is not None)
            failed = len(run) - completed
        created = int(bt.created_at)
        return {
            "id": bt.id,
            "object": "batch",
            "endpoint": bt.endpoint,
            "errors": {"object": "list", "data": list(bt.errors)} if bt.errors else None,
            "input_file_id": bt.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": bt.output_file_id,
            "error_file_id": bt.error_file_id,
            "created_at": created,
            "in_progress_at": bt.times.get("in_progress_at"),
            "expires_at": created + 24 * 3600,
            "finalizing_at": bt.times.get("finalizing_at"),
            "completed_at": bt.times.get("completed_at"),
            "failed_at": bt.times.get("failed_at"),
            "expired_at": bt.times.get("expired_at"),
            "cancelling_at": bt.times.get("cancelling_at"),
            "cancelled_at": bt.times.get("cancelled_at"),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "metadata": bt.metadata,
        }

    def _batch_stats(self) -> dict[str, int]:
        now = time.monotonic()
        with self._batch_lock:
            return dict(Counter(self._batch_status(bt, now) for bt in self._batches.values()))

    def _vectors(
        self, model: str, inputs: list[str], dim: int, mode: str | None
    ) -> list[tuple[int, np.ndarray]]:
        out_dim = dim + 1 if mode == "wrong_dims" else dim
        mat = fake_vectors(model, inputs, out_dim)
        if mode == "nan":
            mat[:, 0] = np.nan
        elif mode == "inf":
            mat[:, -1] = np.inf
        elif mode == "zero":
            mat[:] = 0.0
        rows: list[tuple[int, np.ndarray]] = list(enumerate(mat))
        for i, t in enumerate(inputs):
            if "__" not in t:
                continue
            row = rows[i][1]
            if NAN_MARKER in t:
                row[len(row) // 2] = np.nan
            if INF_MARKER in t:
                row[len(row) // 3] = np.inf
            if ZERO_MARKER in t:
                row[:] = 0.0
            if DIM_MARKER in t:
                rows[i] = (
                    i,
                    row[: max(len(row) - 1, 1)] if len(row) > 1 else np.ones(2, np.float32),
                )
        if mode == "fewer":
            rows = rows[:-1]
        elif mode == "more":
            rows.append((len(rows), fake_vectors(model, ["__extra__"], out_dim)[0]))
        elif mode == "bad_index" and len(rows) > 1:
            rows[-1] = (0, rows[-1][1])
        elif mode == "bad_index":
            rows[0] = (1, rows[0][1])
        return rows

    def _hold(self, model: str, inputs: list[str]) -> bool:
        """``slow``: hold the request ``slow_s`` with its inputs in flight; False at shutdown."""
        keys = [(model, t) for t in inputs]
        with self._lock:
            self._held.update(keys)
        try:
            if self._stopping.wait(self.behaviour.slow_s):
                return False
        finally:
            with self._lock:
                self._held.subtract(keys)
                self._held = +self._held  # drop the zero counts
        with self._lock:
            self.counters.slow_held += 1
        return True

    def _trickle(self, h: _Handler, body: bytes) -> None:
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        interval = self.behaviour.trickle_interval_s
        for i in range(len(body)):
            h.wfile.write(body[i : i + 1])
            if self._stopping.wait(interval):
                return

    def _fail(
        self,
        h: _Handler,
        mode: str,
        reply: Callable[..., None],
        model: str,
        dim: int,
    ) -> bool:
        """Answer with an injected failure; False for modes that alter a 200 answer instead."""
        b = self.behaviour

        def text(default: str) -> str:  # Behaviour.error_message: hostile provider text
            return default if b.error_message is None else b.error_message

        if mode == "rate_limit":
            headers: dict[str, str] = {}
            if b.retry_after is not None:
                ra = b.retry_after
                headers["Retry-After"] = (
                    ra
                    if isinstance(ra, str)
                    else (str(int(ra)) if float(ra).is_integer() else str(ra))
                )
            if b.retry_after_ms is not None:
                headers["retry-after-ms"] = str(b.retry_after_ms)
            msg = (
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3000, Used 3000, "
                "Requested 1. Please try again later."
            )
            reply(429, _error(text(msg), "requests", "rate_limit_exceeded"), mode, headers=headers)
        elif mode == "quota":
            msg = "You exceeded your current quota, please check your plan and billing details."
            reply(429, _error(text(msg), "insufficient_quota", "insufficient_quota"), mode)
        elif mode == "server_error":
            msg = "The server had an error while processing your request. Sorry about that!"
            reply(500, _error(text(msg), "server_error"), mode)
        elif mode == "unavailable":
            msg = "The engine is currently overloaded, please try again later."
            reply(503, _error(text(msg), "server_error"), mode)
        elif mode == "bad_gateway":
            reply(502, _HTML_502, mode, content_type="text/html")
        elif mode == "too_large":
            reply(413, _error(text("Request entity too large."), "invalid_request_error"), mode)
        elif mode == "bad_request":
            msg = "'$.input' is invalid. This model's maximum context length is 8192 tokens."
            reply(400, _error(text(msg), "invalid_request_error", None, "input"), mode)
        elif mode == "bad_param":
            msg = f"This model does not support specifying dimensions ({dim})."
            reply(400, _error(text(msg), "invalid_request_error", None, "dimensions"), mode)
        elif mode == "auth":
            msg = "Incorrect API key provided: sk-****. (injected)"
            reply(401, _error(text(msg), "invalid_request_error", "invalid_api_key"), mode)
        elif mode == "forbidden":
            msg = "You are not allowed to use this model. (injected)"
            reply(
                403,
                _error(text(msg), "invalid_request_error", "unsupported_country_region_territory"),
                mode,
            )
        elif mode == "not_found":
            msg = f"The model `{model}` does not exist or you do not have access to it."
            reply(404, _error(text(msg), "invalid_request_error", "model_not_found"), mode)
        elif mode == "error_body":
            msg = "The server had an error processing your request. (200 with an error body)"
            reply(200, _error(text(msg), "server_error"), mode)
        elif mode == "binary":
            reply(b.binary_status, _BINARY_BODY, mode, content_type="application/octet-stream")
        elif mode in ("huge", "huge_unsized"):
            self._count(200, mode)
            self._stream(h, _padded_json(b.huge_body_bytes), sized=mode == "huge")
        elif mode == "gzip_bomb":
            self._count(200, mode)
            bomb = _gzip_bomb(b.huge_body_bytes)
            h.close_connection = True
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Content-Length", str(len(bomb)))
            h.end_headers()
            with contextlib.suppress(OSError):
                h.wfile.write(bomb)
        elif mode == "timeout":
            self._count(None, mode)
            self._stopping.wait(b.hang_s)
            h.close_connection = True
        elif mode == "reset":
            self._count(None, mode)
            h.reset_connection()
        elif mode.startswith("http_"):
            status = int(mode[len("http_") :])
            reply(status, _error(text(f"injected HTTP {status}"), "invalid_request_error"), mode)
        else:
            return False
        return True

    def _stream(self, h: _Handler, pieces: Iterable[bytes], *, sized: bool) -> None:
        """A 200 sent piece by piece, until the client goes away or the server stops."""
        h.close_connection = True
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if sized:
            h.send_header("Content-Length", str(self.behaviour.huge_body_bytes))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        try:
            for piece in pieces:
                if self._stopping.is_set():
                    return
                h.wfile.write(piece)
                with self._lock:
                    self.counters.streamed_bytes += len(piece)
        except OSError:  # the client stopped reading: that is what a size cap does
            return

    def _slow_headers(self, h: _Handler, body: bytes) -> None:
        """A valid answer whose status line and headers trickle in a byte at a time."""
        h.close_connection = True
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"X-Slow: {'.' * 64}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        interval = self.behaviour.trickle_interval_s
        try:
            for i in range(len(head)):
                h.wfile.write(head[i : i + 1])
                h.wfile.flush()
                if self._stopping.wait(interval):
                    return
            h.wfile.write(body)
        except OSError:
            return


# --------------------------------------------------------------------------------------------
# Driving a server in another process
# --------------------------------------------------------------------------------------------


def control(
    url: str, payload: Mapping[str, Any] | None = None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """POST ``payload`` to a fake server's ``/_control`` (GET when ``payload`` is None).

    ``url`` is the server's base URL (``http://127.0.0.1:PORT/v1``) or its root.
    """
    root = url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    if not root.startswith("http://127.0.0.1:") and not root.startswith("http://localhost:"):
        raise ValueError(f"control() only talks to a local fake server, not {root!r}")
    data = None if payload is None else json.dumps(dict(payload)).encode()
    req = urllib.request.Request(
        root + "/_control",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


# --------------------------------------------------------------------------------------------
# python -m pgingest.testing.fake_provider
# --------------------------------------------------------------------------------------------


def _parse_dims(items: Sequence[str]) -> dict[str, int]:
    models = dict(DEFAULT_MODELS)
    for item in items:
        name, sep, dim = item.partition("=")
        if not sep or not name or not dim.isdigit() or int(dim) < 1:
            raise argparse.ArgumentTypeError(f"--dims wants MODEL=DIM, got {item!r}")
        models[name] = int(dim)
    return models


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgingest.testing.fake_provider",
        description="Fake OpenAI-compatible /v1/embeddings server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--dims",
        action="append",
        default=[],
        metavar="MODEL=DIM",
        help="add or override a model (repeatable); fake-384 and fake-768 always exist",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key-env", metavar="VAR", help="expect the key held in env VAR")
    parser.add_argument("--seed", type=int, default=0)
    cap = parser.add_argument_group("capacity mode (a CPU-bound server)")
    cap.add_argument("--capacity-inputs-per-s", type=float, default=0.0, metavar="N")
    cap.add_argument("--capacity-tokens-per-s", type=float, default=0.0, metavar="N")
    cap.add_argument("--capacity-queue-limit-inputs", type=int, default=0, metavar="N")
    quota = parser.add_argument_group("quota mode (per API key and model)")
    quota.add_argument("--quota-rpm", type=float, metavar="N", help="requests per minute")
    quota.add_argument("--quota-tpm", type=float, metavar="N", help="tokens per minute")
    quota.add_argument("--quota-tokenizer", choices=TOKENIZER_NAMES, default=DEFAULT_TOKENIZER)
    batch = parser.add_argument_group("Batch API")
    batch.add_argument("--batch-completion-s", type=float, default=1.0, metavar="S")
    batch.add_argument("--batch-outcome", choices=sorted(BATCH_OUTCOMES), default="completed")
    batch.add_argument("--batch-done-share", type=float, default=0.5, metavar="P")
    batch.add_argument("--batch-fail-share", type=float, default=0.0, metavar="P")
    batch.add_argument(
        "--batch-fail-custom-id", action="append", default=[], metavar="ID", dest="fail_ids"
    )
    args = parser.parse_args(argv)
    try:
        models = _parse_dims(args.dims)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is empty or unset")

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    quota_limits = {
        k: v for k, v in (("rpm", args.quota_rpm), ("tpm", args.quota_tpm)) if v is not None
    }
    behaviour: dict[str, Any] = {
        "capacity_inputs_per_s": args.capacity_inputs_per_s,
        "capacity_tokens_per_s": args.capacity_tokens_per_s,
        "capacity_queue_limit_inputs": args.capacity_queue_limit_inputs,
        "quota": quota_limits or None,
        "quota_tokenizer": args.quota_tokenizer,
        "batch_completion_s": args.batch_completion_s,
        "batch_outcome": args.batch_outcome,
        "batch_done_share": args.batch_done_share,
        "batch_fail_share": args.batch_fail_share,
        "batch_fail_custom_ids": args.fail_ids,
    }
    try:
        _normalise(behaviour)
    except _ControlError as exc:
        parser.error(str(exc))

    if behaviour["quota"] is not None or behaviour["capacity_tokens_per_s"] > 0:
        get_tokenizer(behaviour["quota_tokenizer"])  # loaded before the first request

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeEmbeddingServer(
        args.host,
        args.port,
        models=models,
        api_key=api_key,
        latency_ms=args.latency_ms,
        seed=args.seed,
        **behaviour,
    ) as srv:
        print(srv.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
