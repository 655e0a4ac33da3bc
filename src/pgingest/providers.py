"""Embedding providers: the protocol, the OpenAI-compatible HTTP client, and its policies.

What the worker gets from here
    * :class:`EmbeddingProvider`: ``name``, ``dimensions``, ``embed(inputs) -> float32 (n, d)``
      and ``embed_detailed(inputs) -> EmbedResult``.
    * :class:`OpenAICompatibleProvider`: ``POST {base_url}/embeddings`` (OpenAI, vLLM, TEI,
      Ollama, the bundled local model, the fake server), with retries inside ``embed``.
    * ``embed_detailed`` (:func:`embed_isolating`): never lets one bad input fail the others: a
      400/413/422 is bisected down to the rejected inputs, and an answer whose vectors differ
      in length is handed over row by row for the worker to check.
    * error classes, each with the ``error_class`` string used in dead letters and metrics:

      =============================== ======================= ==============================
      exception                       ``error_class``         what the worker should do
      =============================== ======================= ==============================
      :class:`RateLimited`            rate_limited            defer by ``retry_after``, no
                                                              attempt spent
      :class:`TransientProviderError` server_error, timeout,  defer, attempt spent; feeds
                                      connection              the circuit breaker
      :class:`BadResponse`            bad_response            as transient (a subclass)
      :class:`InputRejected`          rejected_input          dead-letter those inputs only
      :class:`AuthError`              auth                    pause the model
      :class:`ModelNotFound`          model_not_found         pause the model
      :class:`QuotaExceeded`          insufficient_quota      pause the model
      :class:`InvalidRequest`         invalid_request,        pause the model (the request
                                      client_error            is wrong, not an input)
      :class:`InvalidURL`             invalid_url             pause the model (its base_url
                                                              is refused; also a ValueError)
      :class:`CircuitOpen`            circuit_open            defer, no attempt spent
      =============================== ======================= ==============================

      :class:`ModelUnavailable` is the base of the four "pause the model" classes.
    * :class:`CircuitBreaker` (pure, fake clock in tests) and :func:`plan_requests`.

API keys are never logged and never appear in ``repr`` or in exception messages: the key is
held in a :class:`_Secret` and every message built from a server's answer is redacted.

Hostile answers: every provider-derived string that leaves this module (error messages, model
ids echoed back, ``Retry-After``) is made safe to store in PostgreSQL and to log
(:func:`clean_text`: ASCII with backslash escapes, no NUL, no lone surrogate, no control
character or newline; ``retry_after`` finite and at most :data:`MAX_RETRY_AFTER`). A base URL
with credentials (``user:pass@``) or a key-like query parameter is refused
(:class:`InvalidURL`), and URLs in messages have both redacted (:func:`redact_url`). An answer
is read within one wall-clock deadline (connect, headers and body together: ``timeout``) and up
to a size cap derived from inputs x dimensions (``max_response_bytes``), compressed or not.
"""

from __future__ import annotations

import binascii
import contextlib
import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast, runtime_checkable
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import numpy as np
import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

try:  # SIMD base64 (a dependency); PL/Python runs the system Python, which may lack it
    import pybase64 as _pybase64
except ImportError:  # pragma: no cover - the venv has it
    _pybase64 = None  # type: ignore[assignment]

try:  # native JSON (a dependency); the system Python of PL/Python may lack it: json then
    import orjson as _orjson
except ImportError:  # pragma: no cover - the venv has it
    _orjson = None  # type: ignore[assignment]


def _json_loads(content: bytes) -> Any:
    """An answer's JSON: ``orjson`` where installed (a 128-vector base64 answer ~1.9 against ~3.9
    us a vector; float answers ~40 against ~300), else ``json``. What orjson refuses goes to
    ``json``, which also reads ``NaN`` and ``Infinity`` (outside RFC 8259): a float answer with
    a non-finite vector is then that input's fault, as in a base64 answer, not the whole
    answer's. ``ValueError`` on invalid JSON, and on JSON nested too deeply to parse (``json``'s
    ``RecursionError``): every provider body is parsed here, so such an answer is a bad answer
    (or an error body read as text), never an exception the worker does not expect."""
    if _orjson is not None:
        try:
            return _orjson.loads(content)
        except ValueError:  # orjson.JSONDecodeError: invalid, NaN/Infinity, or too deep
            pass
    try:
        return json.loads(content)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _json_request_body(payload: dict[str, Any]) -> bytes:
    """A request's JSON, UTF-8: ``orjson`` where installed (~0.06 against ~2.4 us an input of
    800 characters); ``json`` for what orjson refuses (a lone surrogate, which json escapes and
    the server judges) and where orjson is missing."""
    if _orjson is not None:
        try:
            return _orjson.dumps(payload)
        except TypeError:  # orjson.JSONEncodeError: not valid UTF-8 (a lone surrogate)
            pass
    try:
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: let the server judge the escaped text
        return json.dumps(payload).encode("ascii")


if TYPE_CHECKING:
    from pgingest.db import Model

    ModelLike: TypeAlias = Model | Mapping[str, Any]
    """A registered model: ``db.Model``, or a ``pgingest.models`` row as a mapping (PL/Python)."""

__all__ = [
    "AuthError",
    "BadResponse",
    "CircuitBreaker",
    "CircuitOpen",
    "EmbedResult",
    "EmbeddingProvider",
    "InputRejected",
    "InvalidRequest",
    "InvalidURL",
    "ModelNotFound",
    "ModelUnavailable",
    "OpenAICompatibleProvider",
    "ProviderBase",
    "ProviderError",
    "QuotaExceeded",
    "RaggedResponse",
    "RateLimited",
    "TransientProviderError",
    "check_base_url",
    "clean_text",
    "decode_embedding",
    "embed_isolating",
    "embeddings_url",
    "for_model",
    "model_field",
    "parse_retry_after",
    "plan_requests",
    "redact_url",
]

logger = logging.getLogger("pgingest.providers")

_MAX_MESSAGE = 500

MAX_RETRY_AFTER = 3600.0
"""The longest wait a provider may ask for (``Retry-After``); longer asks are cut to this."""

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SPACES_RE = re.compile(r"\s+")


def clean_text(text: object) -> str:
    """Provider-derived text made safe to store in PostgreSQL (any server encoding), to log and
    to show: every run of whitespace (newlines, tabs, Unicode separators) becomes one space,
    every non-ASCII character a backslash escape (a lone surrogate too: ``\\ud800``), and
    every other control character a ``\\xNN`` escape (NUL: ``\\x00``)."""
    value = text if isinstance(text, str) else str(text)
    value = _SPACES_RE.sub(" ", value).strip()
    value = value.encode("ascii", "backslashreplace").decode("ascii")
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def _clamp_retry_after(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ProviderError(Exception):
    """Base of every embedding provider error.

    ``error_class`` is the short stable string stored in dead letters and used as a metric
    label; ``status`` the HTTP status when a response was received; ``retry_after`` the delay
    in seconds the provider asked for, if any. ``str(err)`` is safe to store: it never holds
    an API key, a credential of a URL, NUL, a lone surrogate, a newline or any non-ASCII
    character (:func:`clean_text`), and ``retry_after`` is None or within
    ``[0, MAX_RETRY_AFTER]``, so both can be written to PostgreSQL as they are.
    """

    error_class: str = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_class: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        message = redact_url(clean_text(message))
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.message = message
        self.status = None if status is None else int(status)
        self.retry_after = retry_after
        if error_class is not None:
            self.error_class = clean_text(error_class)

    @property
    def retry_after(self) -> float | None:
        return self._retry_after

    @retry_after.setter
    def retry_after(self, value: float | None) -> None:
        self._retry_after = _clamp_retry_after(value)

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.error_class}{status}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RateLimited(ProviderError):
    """429 that outlasted the provider's rate-limit budget: defer by ``retry_after`` seconds."""

    error_class = "rate_limited"


class QuotaWait(RateLimited):
    """The model's shared quota allows a batch only in ``retry_after`` seconds, longer than the
    worker will hold it (``worker/pacing.py``). Nothing was sent; the worker defers the work as
    for a 429."""


class TransientProviderError(ProviderError):
    """5xx (``server_error``), ``timeout`` or ``connection`` failure, after retries."""

    error_class = "server_error"


class BadResponse(TransientProviderError):
    """A response that is not a valid embeddings answer (HTML page, invalid or truncated JSON,
    a 200 carrying ``{"error": ...}``, wrong count of vectors, missing or duplicate indices).
    Retried like a transient error."""

    error_class = "bad_response"


class RaggedResponse(BadResponse):
    """The vectors of one response differ in length, so they cannot make one matrix.

    Raised by :meth:`OpenAICompatibleProvider.embed` without retrying (the answer is a function
    of the inputs); ``rows`` holds each input's raw vector. :func:`embed_isolating` turns it into
    per-input rows, so the worker's validation rejects only the odd ones.
    """

    def __init__(self, message: str, rows: list[np.ndarray], *, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.rows = rows


class InputRejected(ProviderError):
    """400/413/422 about the inputs of this request: bisect, then dead-letter the bad ones."""

    error_class = "rejected_input"


class ModelUnavailable(ProviderError):
    """The model cannot be used at all until an operator acts: pause it."""

    error_class = "model_unavailable"


class AuthError(ModelUnavailable):
    """401/403: missing, wrong or revoked key, or no access."""

    error_class = "auth"


class ModelNotFound(ModelUnavailable):
    """404: unknown model (or a base URL that does not serve ``/embeddings``)."""

    error_class = "model_not_found"


class QuotaExceeded(ModelUnavailable):
    """429 with OpenAI's ``insufficient_quota``: billing, not rate; waiting will not help."""

    error_class = "insufficient_quota"


class InvalidRequest(ModelUnavailable):
    """A 4xx about the request itself rather than the inputs (a 400 whose ``param`` is
    ``dimensions``, ``model``, ...; 405, 415, an unexpected 3xx): configuration to fix."""

    error_class = "invalid_request"


class InvalidURL(InvalidRequest, ValueError):
    """A base URL this client refuses to call: not ``http(s)://host...``, credentials in it
    (``user:pass@``), a key-like query parameter (``?api-key=``), a fragment, spaces or control
    characters. The message shows the URL redacted. A ``ValueError`` too (a bad argument)."""

    error_class = "invalid_url"


class CircuitOpen(ProviderError):
    """The model's circuit breaker is open: defer for ``retry_after`` seconds."""

    error_class = "circuit_open"


# --------------------------------------------------------------------------------------------
# Protocol and results
# --------------------------------------------------------------------------------------------


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Anything that embeds texts.

    ``embed`` returns a float32 array of shape ``(len(inputs), d)``, raw: neither validated nor
    normalised (the worker does both). It raises :class:`ProviderError` subclasses.
    ``embed_detailed`` never lets one bad input fail the others (see :func:`embed_isolating`);
    subclass :class:`ProviderBase` to get it from ``embed``.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, inputs: Sequence[str]) -> np.ndarray: ...

    def embed_detailed(self, inputs: Sequence[str]) -> EmbedResult: ...


@dataclass
class EmbedResult:
    """Per-input outcome of :func:`embed_isolating`.

    ``vectors[i]`` is input i's raw float32 1-D vector (any length, maybe non-finite: validate
    it) or None when ``errors[i]`` holds why the provider rejected that input.
    """

    vectors: list[np.ndarray | None]
    errors: dict[int, ProviderError] = field(default_factory=dict)
    requests: int = 0
    """HTTP-level calls of ``embed`` made (bisection adds some)."""
    block: np.ndarray | None = None
    """The ``(n, dims)`` array of the one call that answered every input, when there was one
    (``vectors`` are its rows): the batch copies it in one assignment."""

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def ok_indices(self) -> list[int]:
        return [i for i, v in enumerate(self.vectors) if v is not None]


class _Embeds(Protocol):
    def embed(self, inputs: Sequence[str]) -> np.ndarray: ...


def embed_isolating(provider: _Embeds, inputs: Sequence[str]) -> EmbedResult:
    """Embed ``inputs`` so that one bad input cannot fail the others.

    :class:`InputRejected` for a group of inputs splits it in halves until the rejected single
    inputs are found (``k`` bad inputs among ``n`` cost about ``2k·log2(n)`` extra requests);
    :class:`RaggedResponse` hands over its rows as they are. Every other error (rate limit,
    transient after retries, model unavailable) propagates: it is about the batch, not an input.
    """
    vectors: list[np.ndarray | None] = [None] * len(inputs)
    errors: dict[int, ProviderError] = {}
    calls = 0
    block: np.ndarray | None = None
    stack = [(0, len(inputs))] if inputs else []
    while stack:
        lo, hi = stack.pop()
        calls += 1
        try:
            matrix = provider.embed(inputs[lo:hi])
        except RaggedResponse as exc:
            for k, row in enumerate(exc.rows):
                vectors[lo + k] = row
            continue
        except InputRejected as exc:
            if hi - lo == 1:
                errors[lo] = exc
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))
                stack.append((lo, mid))
            continue
        if lo == 0 and hi == len(inputs):
            block = matrix
        for k in range(hi - lo):
            vectors[lo + k] = matrix[k]
    return EmbedResult(vectors, errors, calls, block)


class ProviderBase:
    """Base for providers: implement ``name``, ``dimensions`` and ``embed``; ``embed_detailed``
    comes from :func:`embed_isolating`."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def dimensions(self) -> int:
        raise NotImplementedError

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_detailed(self, inputs: Sequence[str]) -> EmbedResult:
        """Per-input vectors and errors: see :func:`embed_isolating`."""
        return embed_isolating(self, inputs)


# --------------------------------------------------------------------------------------------
# Request planning
# --------------------------------------------------------------------------------------------


def plan_requests(token_counts: Sequence[int], max_inputs: int, max_tokens: int) -> list[range]:
    """Split inputs, in order, into requests of at most ``max_inputs`` inputs and
    ``max_tokens`` tokens in all. An input over ``max_tokens`` by itself gets a request of its
    own (the provider will accept or reject it; it is never dropped here)."""
    if max_inputs < 1:
        raise ValueError(f"max_inputs must be >= 1, got {max_inputs}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    plans: list[range] = []
    start = 0
    tokens = 0
    for i, count in enumerate(token_counts):
        if count < 0:
            raise ValueError(f"token count {count} at index {i} is negative")
        if i > start and (i - start >= max_inputs or tokens + count > max_tokens):
            plans.append(range(start, i))
            start, tokens = i, 0
        tokens += count
    if start < len(token_counts):
        plans.append(range(start, len(token_counts)))
    return plans


# --------------------------------------------------------------------------------------------
# Circuit breaker
# --------------------------------------------------------------------------------------------


class CircuitBreaker:
    """Closed / open / half-open breaker, one per model in the worker.

    * closed: calls allowed; ``failure_threshold`` consecutive failures open it.
    * open: calls refused for ``reset_timeout`` seconds, then it is half-open.
    * half-open: ``half_open_max_calls`` trial calls allowed; a success closes it, a failure
      opens it again for another ``reset_timeout``. A trial slot taken by :meth:`allow` that is
      followed by neither :meth:`record_success` nor :meth:`record_failure` within
      ``reset_timeout`` (the caller took it and then sent nothing, or its answer was never
      recorded) lapses, so a new trial is allowed: the breaker can never stay half-open for good.

    What counts as a failure is the caller's choice: transient errors and timeouts, not
    rejected inputs. Pure apart from a lock: time comes from ``clock``.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        if half_open_max_calls < 1:
            raise ValueError("half_open_max_calls must be >= 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self._trial_at = 0.0  # when the last half-open trial slot was taken

    def _advance(self) -> None:
        now = self._clock()
        if self._state == self.OPEN and now - self._opened_at >= self.reset_timeout:
            self._state = self.HALF_OPEN
            self._trials = 0
        elif (
            self._state == self.HALF_OPEN
            and self._trials
            and now - self._trial_at >= self.reset_timeout
        ):
            # the trials taken reported nothing for a whole reset_timeout: their slots lapse
            self._trials = 0

    @property
    def state(self) -> str:
        with self._lock:
            self._advance()
            return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open state this takes one of the trial slots."""
        with self._lock:
            self._advance()
            if self._state == self.CLOSED:
                return True
            if self._state == self.HALF_OPEN and self._trials < self.half_open_max_calls:
                self._trials += 1
                self._trial_at = self._clock()
                return True
            return False

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it would now)."""
        with self._lock:
            self._advance()
            if self._state == self.OPEN:
                return max(self.reset_timeout - (self._clock() - self._opened_at), 0.0)
            if self._state == self.HALF_OPEN and self._trials >= self.half_open_max_calls:
                # every trial slot is taken: the next frees when they lapse
                return max(self.reset_timeout - (self._clock() - self._trial_at), 0.0)
            return 0.0

    def check(self) -> None:
        """:meth:`allow` or raise :class:`CircuitOpen` with ``retry_after``."""
        if not self.allow():
            wait = self.retry_in()
            raise CircuitOpen(f"circuit open, retry in {wait:.1f}s", retry_after=wait)

    def record_success(self) -> None:
        with self._lock:
            self._state = self.CLOSED
            self._failures = 0
            self._trials = 0

    def record_failure(self) -> None:
        with self._lock:
            self._advance()
            if self._state == self.HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._state == self.CLOSED and self._failures >= self.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._state = self.OPEN
        self._opened_at = self._clock()
        self._trials = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures})"


# --------------------------------------------------------------------------------------------
# Retry-After
# --------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def retry_after_from(headers: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from an answer's ``retry-after-ms`` or ``Retry-After``, or None."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(value, 0.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now=now)


_GO_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds from an ``x-ratelimit-reset-*`` value: Go's duration format as OpenAI writes it
    (``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``) or plain seconds; None when unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parts = _GO_DURATION_RE.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            return None
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        seconds = sum(float(n) * unit[u] for n, u in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class RateLimits:
    """What an answer's ``x-ratelimit-*`` headers said (OpenAI's, also sent by Azure OpenAI,
    LiteLLM and others); None where a header is absent or unreadable."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in astuple(self))


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimits:
    """The ``x-ratelimit-*`` headers of an answer (header names in any case)."""

    def number(name: str) -> float | None:
        raw = headers.get(name)
        if raw is None:
            return None
        try:
            v = float(str(raw).strip())
        except ValueError:
            return None
        return v if math.isfinite(v) and v >= 0 else None

    return RateLimits(
        number("x-ratelimit-limit-requests"),
        number("x-ratelimit-limit-tokens"),
        number("x-ratelimit-remaining-requests"),
        number("x-ratelimit-remaining-tokens"),
        parse_duration(headers.get("x-ratelimit-reset-requests")),
        parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


# --------------------------------------------------------------------------------------------
# API key
# --------------------------------------------------------------------------------------------


class _Secret:
    """Holds an API key; shows as ``***`` everywhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("API keys are not picklable")


# --------------------------------------------------------------------------------------------
# One wall-clock deadline per request
# --------------------------------------------------------------------------------------------

_deadline = threading.local()
"""``_deadline.value``: ``(clock, at)`` while this thread sends a request, else None."""


def _arm(sock: socket.socket) -> None:
    """Before a blocking socket call: time out at this thread's request deadline at the latest.

    A per-call socket timeout alone lets a server that sends a byte every few seconds (status
    line, headers or body) hold the call for ever; setting the socket's timeout to what is left
    of the deadline before each call bounds the whole exchange.
    """
    value = getattr(_deadline, "value", None)
    if value is None:
        return
    clock, at = value
    left = at - clock()
    if left <= 0:
        raise TimeoutError("the request's deadline has passed")
    sock.settimeout(left)


class _DeadlineSocket(socket.socket):
    """A plain socket whose reads and writes end at the request deadline (see :func:`_arm`)."""

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        _arm(self)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        _arm(self)
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self)
        super().sendall(data, flags)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS socket counterpart of :class:`_DeadlineSocket`."""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        _arm(self)
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        _arm(self)
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self)
        super().sendall(data, flags)


def _with_deadline(sock: Any) -> Any:
    """``sock`` made deadline-aware in place (plain and TLS sockets; others are left as they
    are and keep the per-call timeouts)."""
    if type(sock) is socket.socket:
        sock.__class__ = _DeadlineSocket
    elif type(sock) is ssl.SSLSocket:
        sock.__class__ = _DeadlineSSLSocket
    return sock


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _with_deadline(super()._new_conn())


class _DeadlineHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _with_deadline(self.sock)


class _DeadlineHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections honour the request deadline (proxies included)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


def _mount_deadline_adapters(session: requests.Session) -> None:
    """Replace a session's stock adapters by :class:`_DeadlineAdapter` (a custom adapter that
    a caller mounted is kept)."""
    for prefix in ("http://", "https://"):
        if type(session.adapters.get(prefix)) is requests.adapters.HTTPAdapter:
            session.mount(prefix, _DeadlineAdapter())


def _settle_environment(session: requests.Session, url: str) -> None:
    """The environment's proxies (``HTTPS_PROXY``, ``NO_PROXY``, ...) and CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) for ``url``, read once into the session, which
    then stops requests from reading them again: with ``trust_env`` it scans the environment and
    looks for ``~/.netrc`` on every request (0.15-0.25 ms of CPU a request here, about a
    microsecond an embedded chunk). ``~/.netrc`` is not used at all: its basic credentials would
    replace the ``Authorization: Bearer`` key, which comes from the model's variable or file
    only. A session made with ``trust_env`` off is left as it is."""
    if not session.trust_env:
        return
    for scheme, proxy in requests.utils.get_environ_proxies(url).items():
        session.proxies.setdefault(scheme, proxy)
    if session.verify is True:
        session.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
    session.trust_env = False


# --------------------------------------------------------------------------------------------
# The OpenAI-compatible client
# --------------------------------------------------------------------------------------------

_BEARER_RE = re.compile(r"(?i)(bearer\s+)\S+")

_KEY_PART_CHARS = 12
"""The shortest start or end of an API key that :meth:`OpenAICompatible._redact` removes when
the whole key is not there (a key cut by the server or proxy that echoed it)."""


def _redact_key(text: str, key: str) -> str:
    """``text`` with ``key``, and every run of at least ``_KEY_PART_CHARS`` characters that is
    a start or an end of ``key``, replaced by ``***``."""
    text = text.replace(key, "***")
    if len(key) <= _KEY_PART_CHARS:
        return text
    head, tail = key[:_KEY_PART_CHARS], key[-_KEY_PART_CHARS:]
    while (at := text.find(head)) >= 0:  # a start of the key, as long as it goes on agreeing
        end = at + _KEY_PART_CHARS
        while end < len(text) and end - at < len(key) and text[end] == key[end - at]:
            end += 1
        text = text[:at] + "***" + text[end:]
    while (at := text.find(tail)) >= 0:  # an end of the key, as far back as it agrees
        start = at
        back = len(key) - _KEY_PART_CHARS - 1
        while start > 0 and back >= 0 and text[start - 1] == key[back]:
            start -= 1
            back -= 1
        text = text[:start] + "***" + text[at + _KEY_PART_CHARS :]
    return text


MIN_RESPONSE_BYTES = 4 * 1024 * 1024
"""The floor of the response size cap (an answer for few inputs, an error page)."""
RESPONSE_BYTES_PER_DIMENSION = 48
"""Allowance per input and dimension: a float written out in JSON, pretty-printed, is < 40."""
RESPONSE_BYTES_PER_INPUT = 4096
ERROR_BODY_BYTES = 64 * 1024
"""Of an error answer (not 2xx) only this much is read: the message is an excerpt anyway."""


class OpenAICompatibleProvider(ProviderBase):
    """Client for ``POST {base_url}/embeddings`` (``base_url`` like ``https://api.openai.com/v1``).

    The API key comes from ``api_key``, else the environment variable named ``api_key_env``,
    else the file ``api_key_file`` (stripped); none of them is required (local servers). After
    a 401 the key is read again from its variable or file, once, in case it was rotated.

    ``encoding_format`` is ``"base64"`` (little-endian float32, the default: 4x smaller and
    exact) or ``"float"``; either form is accepted in the answer. ``request_dimensions`` sends
    ``dimensions`` (for models that can shorten their vectors, e.g. text-embedding-3-*).

    Retry policy, inside :meth:`embed`:

    * 5xx, 408/409, timeouts, connection errors and bad responses are retried up to
      ``max_retries`` times, with exponential backoff and full jitter:
      ``rand() * min(backoff_max, backoff_base * 2**n)``; a ``Retry-After`` on such an answer is
      used instead (capped at ``backoff_max``). Then the error is raised.
    * 429s do not count against ``max_retries``: the wait (``Retry-After``, OpenAI's
      ``retry-after-ms``, else the backoff) is taken while the total waited for 429s in this
      call stays within ``max_retry_after`` seconds and at most ``max_rate_limit_retries``
      times; past that :class:`RateLimited` is raised with ``retry_after`` so the worker can
      defer the work without spending an attempt. ``retry_rate_limited()`` answering False
      raises it at once (the worker's quota pacing: a retry would not wait its turn).
    * everything else is raised at once.

    The policy is written out here rather than taken from a library: urllib3's ``Retry`` (under
    requests) cannot see errors in a 200 body, keep 429s out of the attempt budget or end in a
    deferral, and ``tenacity`` is not a dependency and would need the same custom stop, wait and
    retry predicates, which are most of this code. ``sleep`` and ``rand`` are injectable.

    Timeouts: ``timeout`` is one wall-clock deadline per HTTP attempt, from the connect to the
    last byte of the body (status line, headers or body trickling in a byte at a time are cut
    off at the deadline: every socket call gets what is left of it); ``connect_timeout`` bounds
    the TCP connect within it. ``total_timeout`` (default None: no bound) bounds the whole
    :meth:`embed` call, retries and waits included: a retry or a wait that would end past it is
    not made, the error is raised instead. :meth:`call_timeout` sets another ``timeout`` for the
    calls of the current thread (the worker's, from the latency it observed). With
    ``retry_timeouts=False`` a timeout is raised at once instead of retried: the server may still
    be computing the request, and the worker backs off its concurrency before it sends it again
    (``worker/capacity.py``).

    Size: an answer is read up to ``max_response_bytes`` (default: ``MIN_RESPONSE_BYTES`` or
    ``inputs x (dimensions x RESPONSE_BYTES_PER_DIMENSION + RESPONSE_BYTES_PER_INPUT)``,
    whichever is larger), counted after decompression (only gzip is asked for, and decoded
    here within the cap); a larger answer is a :class:`BadResponse`. Of an error answer only
    ``ERROR_BODY_BYTES`` are read.

    Thread safety: one ``requests.Session`` per thread (``session_factory``), so a provider can
    be shared by the worker's request threads. ``close()`` closes them all.

    Observers (metrics): ``on_request(status, seconds, n_inputs)`` after every HTTP attempt,
    with ``status`` the HTTP status code as a string, or ``"timeout"`` / ``"connection"`` when
    no answer came; ``on_retry(error_class)`` before every retry wait; ``on_response(status,
    headers)`` for every answer (the worker reads the ``x-ratelimit-*`` headers:
    :func:`parse_rate_limits`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        dimensions: int,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        api_key_file: str | os.PathLike[str] | None = None,
        name: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        request_dimensions: bool = False,
        encoding_format: str = "base64",
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        max_rate_limit_retries: int = 20,
        session_factory: Callable[[], requests.Session] = requests.Session,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_request: Callable[[str, float, int], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
        user_agent: str = "pgingest",
        total_timeout: float | None = None,
        max_response_bytes: int | None = None,
        retry_timeouts: bool = True,
        retry_rate_limited: Callable[[], bool] | None = None,
        on_response: Callable[[int, Mapping[str, str]], None] | None = None,
    ) -> None:
        check_base_url(base_url)
        if dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        if encoding_format not in ("base64", "float"):
            raise ValueError(
                f"encoding_format must be 'base64' or 'float', got {encoding_format!r}"
            )
        if not (0 < timeout < math.inf and 0 < connect_timeout < math.inf):
            raise ValueError("timeouts must be finite and > 0")
        if total_timeout is not None and not 0 < total_timeout < math.inf:
            raise ValueError("total_timeout must be finite and > 0")
        if max_response_bytes is not None and max_response_bytes < 1:
            raise ValueError("max_response_bytes must be >= 1")
        if max_retries < 0 or max_rate_limit_retries < 0:
            raise ValueError("retry counts must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = embeddings_url(base_url)
        self.model = model
        self._dimensions = int(dimensions)
        self._name = name or model
        self.timeout = float(timeout)
        self.connect_timeout = min(float(connect_timeout), self.timeout)
        self.total_timeout = None if total_timeout is None else float(total_timeout)
        self.max_response_bytes = max_response_bytes
        self.retry_timeouts = retry_timeouts
        self.retry_rate_limited = retry_rate_limited
        self.on_response = on_response
        self.request_dimensions = request_dimensions
        self.encoding_format = encoding_format
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.max_rate_limit_retries = max_rate_limit_retries
        self.on_request = on_request
        self.on_retry = on_retry
        self.user_agent = user_agent
        self._session_factory = session_factory
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._wall_clock = wall_clock
        self._api_key_env = api_key_env
        self._api_key_file = None if api_key_file is None else Path(api_key_file)
        self._api_key: _Secret | None = None if api_key is None else _Secret(api_key)
        self._key_loaded = api_key is not None
        self._known_keys: list[_Secret] = [] if self._api_key is None else [self._api_key]
        self._key_source = (
            "given"
            if api_key is not None
            else f"env {api_key_env}"
            if api_key_env
            else "file"
            if api_key_file is not None
            else "none"
        )
        self._key_lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- identity --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, url={self.url!r}, model={self.model!r}, "
            f"dimensions={self._dimensions}, api_key=<{self._key_source}>)"
        )

    # -- keys ------------------------------------------------------------------------------

    def _key(self) -> _Secret | None:
        """The key, read from its variable or file on first use (not at construction, so that
        a missing file pauses this model instead of stopping the worker)."""
        if not self._key_loaded:
            with self._key_lock:
                if not self._key_loaded:
                    self._api_key = self._load_key()
                    if self._api_key is not None:
                        self._known_keys.append(self._api_key)
                    self._key_loaded = True
        return self._api_key

    def _key_hint(self) -> str:
        if self._key() is not None:
            return ""
        if self._api_key_env or self._api_key_file is not None:
            where = " or ".join(
                w
                for w in (
                    f"environment variable {self._api_key_env}" if self._api_key_env else "",
                    f"file {str(self._api_key_file)!r}" if self._api_key_file is not None else "",
                )
                if w
            )
            return f" (no API key found in {where})"
        return " (no API key configured)"

    def _load_key(self) -> _Secret | None:
        if self._api_key_env:
            value = os.environ.get(self._api_key_env)
            if value:
                return _Secret(value.strip())
        if self._api_key_file is not None:
            try:
                value = self._api_key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise AuthError(
                    f"cannot read the API key file {str(self._api_key_file)!r}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from None
            if value:
                return _Secret(value)
        return None

    def _reload_key(self) -> bool:
        """Re-read the key from its variable or file; True when it changed."""
        if not self._api_key_env and self._api_key_file is None:
            return False
        old_secret = self._key()
        with self._key_lock:
            old = old_secret.reveal() if old_secret is not None else None
            try:
                new = self._load_key()
            except AuthError:
                return False
            if new is None or new.reveal() == old:
                return False
            self._api_key = new
            self._known_keys.append(new)
            return True

    def _redact(self, text: str) -> str:
        """``text`` without any key this provider has held (a rotated one included) or URL
        credentials, made safe to store (:func:`clean_text`). A run of at least
        :data:`_KEY_PART_CHARS` characters that begins or ends a known key (a key some server
        or proxy cut when echoing it) goes too. Redact a whole text before cutting it: a cut
        key is only caught by the second rule."""
        for key in self._known_keys:
            if key.reveal():
                text = _redact_key(text, key.reveal())
        return clean_text(redact_url(_BEARER_RE.sub(r"\1***", text)))

    # -- sessions --------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            _mount_deadline_adapters(session)
            _settle_environment(session, self.url)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def __enter__(self) -> OpenAICompatibleProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- embedding -------------------------------------------------------------------------

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        """Raw float32 vectors, shape ``(len(inputs), d)``, with the retry policy applied."""
        inputs = list(inputs)
        if not inputs:
            return np.empty((0, self._dimensions), dtype=np.float32)
        attempt = 0
        rate_limit_waits = 0
        rate_limit_waited = 0.0
        key_reloaded = False
        call_deadline = None if self.total_timeout is None else self._clock() + self.total_timeout

        def past_deadline(delay: float) -> bool:
            """Would a wait of ``delay`` and one more attempt end past ``total_timeout``?"""
            return call_deadline is not None and self._clock() + delay >= call_deadline

        while True:
            try:
                return self._request(inputs, call_deadline)
            except RaggedResponse:
                raise
            except RateLimited as exc:
                delay = exc.retry_after
                if delay is None:
                    delay = self._backoff(rate_limit_waits)
                if (
                    rate_limit_waits >= self.max_rate_limit_retries
                    or rate_limit_waited + delay > self.max_retry_after
                    or past_deadline(delay)
                    or (self.retry_rate_limited is not None and not self.retry_rate_limited())
                ):
                    exc.retry_after = delay
                    raise
                rate_limit_waits += 1
                rate_limit_waited += delay
                self._wait(exc, delay, f"rate limit {rate_limit_waits}")
            except TransientProviderError as exc:
                if attempt >= self.max_retries or (
                    exc.error_class == "timeout" and not self.retry_timeouts
                ):
                    raise
                delay = self._backoff(attempt)
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, self.backoff_max)
                if past_deadline(delay):
                    raise
                attempt += 1
                self._wait(exc, delay, f"retry {attempt}/{self.max_retries}")
            except AuthError:
                if key_reloaded or not self._reload_key():
                    raise
                key_reloaded = True
                logger.info("embedding provider %s: API key re-read after a 401", self._name)

    @contextlib.contextmanager
    def call_timeout(self, seconds: float | None) -> Iterator[None]:
        """Within the block, this thread's HTTP attempts get ``seconds`` (None: ``timeout``)."""
        if seconds is not None and not 0 < seconds < math.inf:
            raise ValueError("a timeout must be finite and > 0")
        before = getattr(self._local, "timeout", None)
        self._local.timeout = seconds
        try:
            yield
        finally:
            self._local.timeout = before

    def _backoff(self, n: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2.0 ** min(n, 60)))
        return float(self._rand()) * cap

    def _wait(self, exc: ProviderError, delay: float, what: str) -> None:
        logger.debug(
            "embedding provider %s: %s, %s in %.2fs", self._name, exc.error_class, what, delay
        )
        if self.on_retry is not None:
            self.on_retry(exc.error_class)
        self._sleep(delay)

    # -- the Batch API (OpenAI's /v1/files and /v1/batches; worker/bulk.py) -----------------

    def _api_url(self, path: str) -> str:
        """``{base_url}/{path}``, the query string of the base URL kept (Azure's api-version)."""
        parts = urlsplit(self.base_url)
        base = parts.path.rstrip("/")
        if base.endswith("/embeddings"):
            base = base[: -len("/embeddings")]
        return urlunsplit((parts.scheme, parts.netloc, f"{base}/{path}", parts.query, ""))

    def _api(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        files: Any = None,
        form: dict[str, str] | None = None,
        limit: int = MIN_RESPONSE_BYTES,
        raw: bool = False,
    ) -> Any:
        """One call of the Batch API, with this provider's key, deadline and size cap: the
        parsed JSON (``raw``: the bytes), or a classified :class:`ProviderError` (not retried
        here: the worker polls again later)."""
        headers = self._headers()
        body: bytes | None = None
        if files is not None:
            del headers["Content-Type"]  # multipart: requests writes it with the boundary
        elif json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
        started = self._clock()
        deadline = started + (getattr(self._local, "timeout", None) or self.timeout)
        _deadline.value = (self._clock, deadline)
        try:
            try:
                resp = self._session().request(
                    method,
                    self._api_url(path),
                    data=body if files is None else form,
                    files=files,
                    headers=headers,
                    timeout=(self.connect_timeout, self.timeout),
                    stream=True,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise TransientProviderError(
                    f"no answer within {self.timeout:g}s: {type(exc).__name__}",
                    error_class="timeout",
                ) from None
            except requests.RequestException as exc:
                raise TransientProviderError(
                    self._describe(exc), error_class="connection"
                ) from None
            ok = 200 <= resp.status_code < 300
            try:
                content = self._read_body(
                    resp, deadline, limit if ok else ERROR_BODY_BYTES, truncate=not ok
                )
            finally:
                resp.close()
        finally:
            _deadline.value = None
        if not ok:
            raise self._classify(resp, content)
        if raw:
            return content
        try:
            return _json_loads(content)
        except (ValueError, UnicodeDecodeError):
            raise BadResponse(f"{method} {path}: not valid JSON", status=resp.status_code) from None

    def upload_batch_file(self, data: bytes, filename: str = "pgingest-batch.jsonl") -> str:
        """``POST /files`` (purpose ``batch``) of a JSONL of requests; the file's id."""
        doc = self._api(
            "POST",
            "files",
            files={"file": (filename, data, "application/jsonl")},
            form={"purpose": "batch"},
        )
        file_id = doc.get("id") if isinstance(doc, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise BadResponse("POST /files: no file id in the answer", status=200)
        return file_id

    def create_batch(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """``POST /batches`` of an uploaded file of ``/v1/embeddings`` requests (24 h window)."""
        doc = self._api(
            "POST",
            "batches",
            json_body={
                "input_file_id": input_file_id,
                "endpoint": "/v1/embeddings",
                "completion_window": "24h",
                "metadata": metadata,
            },
        )
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            raise BadResponse("POST /batches: no batch id in the answer", status=200)
        return doc

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        doc = self._api("GET", f"batches/{quote(batch_id, safe='')}")
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise BadResponse("GET /batches/{id}: no status in the answer", status=200)
        return doc

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """``POST /batches/{id}/cancel``: the batch stops (requests already run are billed)."""
        doc = self._api("POST", f"batches/{quote(batch_id, safe='')}/cancel")
        if not isinstance(doc, dict):
            raise BadResponse("POST /batches/{id}/cancel: no batch in the answer", status=200)
        return doc

    def find_batch(self, key: str, value: str, pages: int = 10) -> dict[str, Any] | None:
        """The batch whose ``metadata[key]`` is ``value`` among the newest ``pages`` x 100
        (``GET /batches``, newest first), or None."""
        after: str | None = None
        for _ in range(pages):
            path = "batches?limit=100" + (f"&after={quote(after, safe='')}" if after else "")
            doc = self._api("GET", path)
            data = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(data, list):
                raise BadResponse("GET /batches: no data list in the answer", status=200)
            for b in data:
                meta = b.get("metadata") if isinstance(b, dict) else None
                if isinstance(meta, dict) and meta.get(key) == value:
                    return b
            if not doc.get("has_more") or not data:
                return None
            last = data[-1].get("id") if isinstance(data[-1], dict) else None
            if not isinstance(last, str):
                return None
            after = last
        return None

    def file_content(self, file_id: str, limit: int) -> bytes:
        """``GET /files/{id}/content``, at most ``limit`` bytes."""
        content: bytes = self._api(
            "GET", f"files/{quote(file_id, safe='')}/content", limit=limit, raw=True
        )
        return content

    def batch_request(self, custom_id: str, inputs: Sequence[str]) -> dict[str, Any]:
        """One line of a batch input file: the request :meth:`embed` would send."""
        body: dict[str, Any] = {
            "model": self.model,
            "input": list(inputs),
            "encoding_format": self.encoding_format,
        }
        if self.request_dimensions:
            body["dimensions"] = self._dimensions
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}

    def batch_line_result(self, line: Any, n: int) -> np.ndarray | ProviderError:
        """The vectors of one line of a batch's output or error file (``n`` inputs), or the
        error it holds, classified as an answer with that status would be."""
        if not isinstance(line, dict):
            return BadResponse("batch result line is not an object", status=200)
        response = line.get("response")
        if not isinstance(response, dict):
            err = line.get("error")
            code = err.get("code") if isinstance(err, dict) else None
            msg = err.get("message") if isinstance(err, dict) else None
            text = self._redact(str(msg or code or "no response"))
            return TransientProviderError(
                f"batch request not run: {text}", error_class=clean_text(str(code or "batch_error"))
            )
        status = response.get("status_code")
        content = json.dumps(response.get("body")).encode("utf-8")
        if not isinstance(status, int) or not 200 <= status < 300:
            fake = requests.Response()
            fake.status_code = status if isinstance(status, int) else 500
            return self._classify(fake, content)
        try:
            return self._decode(content, n)
        except RaggedResponse as exc:  # vectors of several lengths: the right ones are used
            return exc
        except ProviderError as exc:
            return exc

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip",  # decoded by _read_body, within the size cap
            "User-Agent": self.user_agent,
        }
        key = self._key()
        if key is not None:
            headers["Authorization"] = "Bearer " + key.reveal()
        return headers

    def _observe(self, status: str, started: float, n_inputs: int) -> None:
        if self.on_request is not None:
            self.on_request(status, self._clock() - started, n_inputs)

    def response_limit(self, n_inputs: int) -> int:
        """The most bytes (decompressed) read of a 2xx answer for ``n_inputs`` inputs."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        per_input = self._dimensions * RESPONSE_BYTES_PER_DIMENSION + RESPONSE_BYTES_PER_INPUT
        return max(MIN_RESPONSE_BYTES, n_inputs * per_input)

    def _request(self, inputs: list[str], call_deadline: float | None = None) -> np.ndarray:
        """One HTTP attempt: the vectors, or a classified :class:`ProviderError`."""
        payload: dict[str, Any] = {
            "model": self.model,
            "input": inputs,
            "encoding_format": self.encoding_format,
        }
        if self.request_dimensions:
            payload["dimensions"] = self._dimensions
        body = _json_request_body(payload)
        started = self._clock()
        deadline = started + (getattr(self._local, "timeout", None) or self.timeout)
        if call_deadline is not None:
            deadline = min(deadline, call_deadline)
        budget = deadline - started
        n = len(inputs)
        if budget <= 0:
            self._observe("timeout", started, n)
            raise TransientProviderError(
                f"no time left for a request within {self.total_timeout:g}s",
                error_class="timeout",
            )
        _deadline.value = (self._clock, deadline)
        try:
            try:
                resp = self._session().post(
                    self.url,
                    data=body,
                    headers=self._headers(),
                    timeout=(min(self.connect_timeout, budget), budget),
                    stream=True,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                self._observe("timeout", started, n)
                raise TransientProviderError(
                    f"no answer within {budget:g}s: {type(exc).__name__}",
                    error_class="timeout",
                ) from None
            except requests.RequestException as exc:
                self._observe("connection", started, n)
                raise TransientProviderError(
                    self._describe(exc), error_class="connection"
                ) from None
            ok = 200 <= resp.status_code < 300
            if self.on_response is not None:
                try:
                    self.on_response(resp.status_code, resp.headers)
                except Exception:  # an observer never fails a request
                    logger.exception("embedding provider %s: on_response failed", self._name)
            try:
                content = self._read_body(
                    resp,
                    deadline,
                    self.response_limit(n) if ok else ERROR_BODY_BYTES,
                    budget=budget,
                    truncate=not ok,
                )
            except TransientProviderError as exc:
                self._observe(exc.error_class, started, n)
                raise
            finally:
                resp.close()
        finally:
            _deadline.value = None
        self._observe(str(resp.status_code), started, n)
        if not ok:
            raise self._classify(resp, content)
        return self._decode(content, n)

    def _read_body(
        self,
        resp: requests.Response,
        deadline: float,
        limit: int,
        *,
        budget: float | None = None,
        truncate: bool = False,
    ) -> bytes:
        """The body, decompressed, within the request's deadline (every socket read gets what
        is left of it, so a body trickling in a byte at a time is cut off too) and at most
        ``limit`` bytes: past it, a :class:`BadResponse`, or (``truncate``, for error answers)
        the first ``limit`` bytes. Content-Encoding is decoded here, with ``max_length``, so a
        small compressed body cannot inflate past the limit in memory."""
        seconds = self.timeout if budget is None else budget
        status = resp.status_code
        encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
        decoder: Any = None
        if encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decoder = zlib.decompressobj(zlib.MAX_WBITS)
        elif encoding != "identity":
            raise BadResponse(
                f"answer in an unsupported Content-Encoding {encoding!r}", status=status
            )
        too_large = BadResponse(f"answer larger than the limit of {limit} bytes", status=status)
        declared = resp.headers.get("Content-Length")
        if (
            decoder is None
            and not truncate
            and declared is not None
            and declared.isdigit()
            and int(declared) > limit
        ):
            raise too_large
        raw = resp.raw
        # urllib3 2 reads what has arrived (read1); 1.26 (Debian 12's python3-urllib3, which
        # PL/Python may import) has only read(amt), which waits for amt bytes or the end.
        read = getattr(raw, "read1", None) or raw.read
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= limit:
                if self._clock() > deadline:
                    raise TransientProviderError(
                        f"answer not complete within {seconds:g}s", error_class="timeout"
                    )
                data = read(1 << 16, decode_content=False)
                if not data:
                    break
                while data and total <= limit:
                    if decoder is None:
                        piece, data = data, b""
                    else:
                        piece = decoder.decompress(data, limit - total + 1)
                        data = decoder.unconsumed_tail
                    chunks.append(piece)
                    total += len(piece)
                    if decoder is not None and decoder.eof:
                        data = b""
        except (urllib3.exceptions.TimeoutError, requests.Timeout, TimeoutError) as exc:
            raise TransientProviderError(
                f"answer not complete within {seconds:g}s: {type(exc).__name__}",
                error_class="timeout",
            ) from None
        except zlib.error as exc:
            raise BadResponse(
                f"cannot decode the {encoding} answer: {exc}", status=status
            ) from None
        except urllib3.exceptions.DecodeError as exc:
            raise BadResponse(
                f"cannot decode the answer: {self._describe(exc)}", status=status
            ) from None
        except (
            urllib3.exceptions.HTTPError,
            requests.RequestException,
            http.client.HTTPException,
            OSError,
        ) as exc:
            raise TransientProviderError(
                f"connection broken while reading the answer: {self._describe(exc)}",
                error_class="connection",
            ) from None
        content = b"".join(chunks)
        if total > limit:
            if not truncate:
                raise too_large
            content = content[:limit]
        return content

    def _describe(self, exc: BaseException) -> str:
        return self._redact(f"{type(exc).__name__}: {exc}")

    def _error_info(self, content: bytes) -> tuple[str, str | None, str | None]:
        """(message, code, param) from an OpenAI-style error body, or a body excerpt."""
        try:
            doc = _json_loads(content)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if isinstance(doc, dict):
            err = doc.get("error")
            if isinstance(err, dict):
                message = str(err.get("message") or err.get("type") or "error")
                code = err.get("code")
                param = err.get("param")
                return (
                    self._redact(message),
                    None if code is None else self._redact(str(code))[:100],
                    None if param is None else self._redact(str(param))[:100],
                )
            if isinstance(err, str):
                return self._redact(err), None, None
            if isinstance(doc.get("detail"), str):  # FastAPI-style servers
                return self._redact(str(doc["detail"])), None, None
        # redacted whole, then cut: a key the cut went through would no longer match
        text = self._redact(content.decode("utf-8", "replace"))
        return (text[:200] or "(empty body)"), None, None

    def _classify(self, resp: requests.Response, content: bytes) -> ProviderError:
        status = resp.status_code
        message, code, param = self._error_info(content)
        retry_after = retry_after_from(resp.headers, self._wall_clock)
        if status == 429:
            if code == "insufficient_quota":
                return QuotaExceeded(message, status=status)
            return RateLimited(message, status=status, retry_after=retry_after)
        if status in (401, 403):
            return AuthError(message + self._key_hint(), status=status)
        if status == 404:
            return ModelNotFound(message, status=status)
        if status == 408:
            return TransientProviderError(message, status=status, error_class="timeout")
        if status == 409 or status >= 500:
            return TransientProviderError(
                message, status=status, error_class="server_error", retry_after=retry_after
            )
        if status in (400, 422):
            if param is not None and not param.lstrip("$.").startswith("input"):
                return InvalidRequest(f"{message} (param: {param})", status=status)
            return InputRejected(message, status=status)
        if status == 413:
            return InputRejected(message, status=status)
        return InvalidRequest(message, status=status, error_class="client_error")

    def _decode(self, content: bytes, n: int) -> np.ndarray:
        try:
            doc = _json_loads(content)
        except (ValueError, UnicodeDecodeError):
            message, _, _ = self._error_info(content)
            raise BadResponse(f"not valid JSON: {message}", status=200) from None
        if not isinstance(doc, dict):
            raise BadResponse("answer is not a JSON object", status=200)
        if "error" in doc and doc.get("data") is None:
            message, _, _ = self._error_info(content)
            raise BadResponse(f"200 with an error body: {message}", status=200)
        data = doc.get("data")
        if not isinstance(data, list):
            raise BadResponse("answer has no 'data' list", status=200)
        if len(data) != n:
            raise BadResponse(f"{len(data)} vectors for {n} inputs", status=200)
        rows: list[np.ndarray | None] = [None] * n
        raws: list[bytes | None] = [None] * n  # base64 embeddings, decoded, in order
        for pos, item in enumerate(data):
            if not isinstance(item, dict):
                raise BadResponse(f"data[{pos}] is not an object", status=200)
            index = item.get("index", pos)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
                raise BadResponse(f"data[{pos}] has a bad index {index!r}", status=200)
            if rows[index] is not None:
                raise BadResponse(f"index {index} appears twice", status=200)
            value = item.get("embedding")
            if isinstance(value, str):
                raws[index] = _b64decode(value, index)
                continue
            rows[index] = decode_embedding(value, index)
        if n and all(r is not None for r in raws):
            block = _block(cast("list[bytes]", raws))
            if block is not None:  # the common case: one copy, into one array
                return block
        for index, raw in enumerate(raws):
            if raw is not None:
                rows[index] = _float32(raw, index)
        complete = [r for r in rows if r is not None]
        if len(complete) != n:  # unreachable with n items and no duplicate, kept for safety
            raise BadResponse("missing indices", status=200)
        lengths = {len(r) for r in complete}
        if len(lengths) > 1:
            raise RaggedResponse(
                f"vectors of different lengths {sorted(lengths)} in one answer",
                complete,
                status=200,
            )
        return np.stack(complete) if complete else np.empty((0, self._dimensions), np.float32)


def _b64decode(value: str, index: int) -> bytes:
    """Strict base64 (only the alphabet and correct padding): ``pybase64`` (SIMD, ~4 us for a
    768-dimension vector against ~36 us for ``binascii``, docs/performance.md), same answers and
    the same refusals as ``binascii.a2b_base64(strict_mode=True)``."""
    try:
        if _pybase64 is None:
            return binascii.a2b_base64(value, strict_mode=True)
        return _pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadResponse(f"embedding {index} is not valid base64", status=200) from None


def _float32(raw: bytes, index: int) -> np.ndarray:
    if len(raw) % 4:
        raise BadResponse(
            f"embedding {index} has {len(raw)} bytes, not a float32 array", status=200
        )
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)


def _block(raws: list[bytes]) -> np.ndarray | None:
    """Decoded base64 embeddings of one length as one writable ``(n, dims)`` float32 array (one
    copy: the join), or None when their lengths differ or are not whole float32 arrays (the
    caller then decodes them one by one, which says what is wrong)."""
    size = len(raws[0])
    if size == 0 or size % 4 or any(len(r) != size for r in raws):
        return None
    joined = bytearray().join(raws)
    return (
        np.frombuffer(joined, dtype="<f4")
        .reshape(len(raws), size // 4)
        .astype(np.float32, copy=False)
    )


def decode_embedding(value: Any, index: int) -> np.ndarray:
    """One ``embedding`` of an answer as a 1-D float32 array: a base64 string (little-endian
    float32, ``encoding_format="base64"``) or a list of numbers. Not validated yet: the length,
    finiteness and norm are checked by ``vectors.validate_and_normalize``. ``index`` names the
    embedding in the ``BadResponse`` raised for anything else."""
    if isinstance(value, str):
        return _float32(_b64decode(value, index), index)
    if isinstance(value, list):
        try:
            with np.errstate(over="ignore"):  # 1e300 becomes inf: validation rejects it
                vector = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            vector = None
        if vector is None or vector.ndim != 1:
            raise BadResponse(f"embedding {index} is not a list of numbers", status=200)
        return vector
    raise BadResponse(f"embedding {index} is missing or of type {type(value).__name__}", status=200)


# --------------------------------------------------------------------------------------------
# The one way to reach a model's endpoint
# --------------------------------------------------------------------------------------------


_SECRET_PARAM = (
    r"(?:[a-z0-9_.-]*(?:key|token|secret|password|passwd|signature|credential)s?|sig|auth|pwd|pass)"
)
_SECRET_PARAM_RE = re.compile(rf"(?i){_SECRET_PARAM}")
_USERINFO_IN_TEXT_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
_SECRET_QUERY_IN_TEXT_RE = re.compile(rf"(?i)([?&;]{_SECRET_PARAM}=)[^&#\s'\"]*")
_URL_BAD_CHARS_RE = re.compile(r"[\x00-\x20\x7f\\]")


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``: the userinfo
    (``https://user:pass@host`` -> ``https://***@host``) and the values of key-like query
    parameters (``?api-key=...``, ``&token=...``)."""
    text = _USERINFO_IN_TEXT_RE.sub(r"\1***@", text)
    return _SECRET_QUERY_IN_TEXT_RE.sub(r"\1***", text)


def check_base_url(base_url: str) -> None:
    """Raises :class:`InvalidURL` unless ``base_url`` is one this client may call: ``http://``
    or ``https://`` with a host, no credentials (``user:pass@``: give the key with
    ``api_key_env``), no key-like query parameter (``?api-key=``, ``?key=``, ``?token=``), no
    fragment, no space, backslash or control character. Other query parameters
    (``?api-version=``) are kept."""
    if not isinstance(base_url, str):
        raise InvalidURL(f"base_url must be a string, got {type(base_url).__name__}")
    shown = redact_url(base_url)
    if not base_url.startswith(("http://", "https://")):
        raise InvalidURL(f"base_url must start with http:// or https://, got {shown!r}")
    if _URL_BAD_CHARS_RE.search(base_url):
        raise InvalidURL(
            f"base_url must not hold spaces, backslashes or control characters: {shown!r}"
        )
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018  (a bad port raises here)
    except ValueError as exc:
        raise InvalidURL(f"base_url is not a valid URL ({exc}): {shown!r}") from None
    if "@" in parts.netloc:
        raise InvalidURL(
            "base_url must not carry credentials (user:password@host); give the API key with "
            f"api_key_env: {shown!r}"
        )
    if not parts.hostname:
        raise InvalidURL(f"base_url has no host: {shown!r}")
    if "#" in base_url:
        raise InvalidURL(f"base_url must not have a fragment (#...): {shown!r}")
    secret = [
        name
        for name, _ in parse_qsl(parts.query, keep_blank_values=True)
        if _SECRET_PARAM_RE.fullmatch(name)
    ]
    if secret:
        raise InvalidURL(
            f"base_url must not carry a key in its query string ({', '.join(sorted(set(secret)))}"
            f"); give the API key with api_key_env: {shown!r}"
        )


def embeddings_url(base_url: str) -> str:
    """The URL that embedding requests are posted to: ``{base_url}/embeddings`` (a base URL that
    already ends in ``/embeddings`` is used as it is; trailing slashes do not count).

    ``/embeddings`` is added to the URL's *path*: a query string stays after it
    (``.../deployments/d?api-version=1`` -> ``.../deployments/d/embeddings?api-version=1``), and
    an empty query (a trailing ``?``) or a fragment cannot swallow it."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/embeddings"):
        path += "/embeddings"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def model_field(model: ModelLike, name: str) -> Any:
    """A field of a model: a ``db.Model`` (attribute) or a row mapping (PL/Python's dict)."""
    return model[name] if isinstance(model, Mapping) else getattr(model, name)


def for_model(
    model: ModelLike, *, base_url: str | None = None, **overrides: Any
) -> OpenAICompatibleProvider:
    """The client of a registered model: its endpoint, model id, dimensions, API key variable,
    ``request_dimensions`` and name, from a ``db.Model`` or a ``pgingest.models`` row as a dict.

    ``base_url`` overrides the model's endpoint (``pgingest search --embedding-url``, the
    ``pgingest.embedding_url`` setting, a test server). The model's API key goes only to the
    model's own endpoint: a ``base_url`` that posts elsewhere gets no ``api_key_env``, so an
    override cannot be used to collect the key.

    ``overrides`` are further keyword arguments of :class:`OpenAICompatibleProvider` (timeouts,
    retry limits, observers); they win over the values taken from the model.

    Raises :class:`InvalidURL` (a :class:`ModelUnavailable` and a ``ValueError``, its message
    redacted) when the model's URL or the override carries credentials or a key-like query
    parameter, or is not a plain ``http(s)://host/...`` URL (:func:`check_base_url`).
    """
    own_url = str(model_field(model, "base_url"))
    url = base_url or own_url
    own_endpoint = embeddings_url(url) == embeddings_url(own_url)
    kwargs: dict[str, Any] = {
        "api_key_env": model_field(model, "api_key_env") if own_endpoint else None,
        "request_dimensions": bool(model_field(model, "request_dimensions")),
        "name": model_field(model, "name"),
    }
    kwargs.update(overrides)
    return OpenAICompatibleProvider(
        url, str(model_field(model, "model_id")), int(model_field(model, "dimensions")), **kwargs
    )
