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
import gzip
import hashlib
import json
import logging
import os
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import urllib.request
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = [
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
    "fake_vectors",
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
            "by_status": dict(self.by_status),
            "by_mode": dict(self.by_mode),
            "inputs_seen": list(self.inputs_seen),
            "hook_errors": [repr(e) for e in self.hook_errors],
        }


_BEHAVIOUR_FIELDS = frozenset(f.name for f in dataclasses.fields(Behaviour))


class _ControlError(ValueError):
    pass


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
    ) -> None:
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
        """Back to the behaviour given at construction, no queued failures, zero counters."""
        with self._lock:
            self.behaviour = copy.deepcopy(self._initial)
            self._rng = random.Random(self.behaviour.seed)
            self._queue.clear()
        self.reset_counters()

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = Counters(inputs_seen=deque(maxlen=self._max_inputs_seen))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.counters.snapshot()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            behaviour = dataclasses.asdict(self.behaviour)
            behaviour["api_key"] = None if behaviour["api_key"] is None else "<set>"
            return {
                "behaviour": behaviour,
                "pending_failures": list(self._queue),
                "stats": self.counters.snapshot(),
            }

    def control(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a control payload (the body of ``POST /_control``) and return a snapshot.

        Keys: ``reset`` (bool), ``reset_counters`` (bool), any :class:`Behaviour` field, and
        ``fail_next``: a mode, ``{"mode": m, "n": k}``, or a list of those. Applied in that order.
        """
        payload = dict(payload)
        if payload.pop("reset", False):
            self.reset()
        if payload.pop("reset_counters", False):
            self.reset_counters()
        fail_next = payload.pop("fail_next", None)
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

    def _handle_embeddings(self, h: _Handler) -> None:
        b = self.behaviour
        with self._lock:
            self.counters.requests += 1
            if h.headers.get("Authorization"):
                self.counters.with_authorization += 1

        def reply(status: int, body: bytes, mode: str, **kw: Any) -> None:
            self._count(status, mode)
            h.send_body(status, body, **kw)

        raw = h.read_body(b.max_body_bytes)
        if raw is None:
            reply(413, _error("Request body too large.", "invalid_request_error"), "too_large")
            return

        if b.api_key is not None:
            auth = h.headers.get("Authorization") or ""
            if not auth.startswith("Bearer "):
                msg = (
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                )
                reply(401, _error(msg, "invalid_request_error"), "auth")
                return
            given = auth[len("Bearer ") :]
            if given != b.api_key:
                shown = given if b.echo_key_in_errors else _mask_key(given)
                msg = f"Incorrect API key provided: {shown}."
                reply(401, _error(msg, "invalid_request_error", "invalid_api_key"), "auth")
                return

        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            msg = (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly.)"
            )
            reply(400, _error(msg, "invalid_request_error"), "invalid_json")
            return

        model = req.get("model")
        if not isinstance(model, str):
            reply(
                400,
                _error(
                    "you must provide a model parameter", "invalid_request_error", None, "model"
                ),
                "invalid",
            )
            return
        with self._lock:
            model_dim = b.models.get(model)
        if model_dim is None:
            msg = f"The model `{model}` does not exist or you do not have access to it."
            reply(404, _error(msg, "invalid_request_error", "model_not_found"), "model_not_found")
            return

        inputs = req.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) for t in inputs)
        ):
            msg = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
            reply(400, _error(msg, "invalid_request_error", None, "input"), "invalid")
            return
        if len(inputs) > b.max_inputs:
            msg = f"'$.input' is invalid: at most {b.max_inputs} inputs per request, got {len(inputs)}."
            reply(400, _error(msg, "invalid_request_error", None, "input"), "invalid")
            return
        if b.reject_empty:
            for i, t in enumerate(inputs):
                if not t:
                    msg = f"'$.input[{i}]' is invalid: empty string."
                    reply(400, _error(msg, "invalid_request_error", None, "input"), "invalid")
                    return

        fmt = req.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            msg = f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: 'float' and 'base64'."
            reply(400, _error(msg, "invalid_request_error", None, "encoding_format"), "invalid")
            return
        dim = req.get("dimensions", model_dim)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIMENSIONS:
            msg = f"Invalid value for 'dimensions' = {dim!r}."
            reply(400, _error(msg, "invalid_request_error", None, "dimensions"), "invalid")
            return

        with self._lock:
            self.counters.inputs += len(inputs)
            self.counters.inputs_seen.extend(inputs)
            if self._held:
                again = [t for t in inputs if (model, t) in self._held]
                self.counters.slow_overlaps += len(again)
                self.counters.slow_overlapped.extend(f"{model}: {t}" for t in again)
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
        tokens = _tokens(inputs)
        resp = {
            "object": "list",
            "data": items,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        body = json.dumps(resp).encode()
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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeEmbeddingServer(
        args.host,
        args.port,
        models=models,
        api_key=api_key,
        latency_ms=args.latency_ms,
        seed=args.seed,
    ) as srv:
        print(srv.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
