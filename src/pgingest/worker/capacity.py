"""How much to ask of the provider at once: a latency-aware concurrency limit (pure).

A self-hosted embedding server on a CPU (``pgingest serve-model``, TEI, Ollama) computes one
request at a time: a second request in flight waits for the first, a fifth waits for four, and
with a fixed number in flight and a fixed HTTP timeout the last ones time out and are sent again
while the server is still computing them (issue 25: 0.23x of the server's own throughput). A
hosted API answers many requests in parallel at the same latency, and there more in flight is
simply faster. One fixed number cannot serve both, so the worker measures.

:class:`ConcurrencyLimit` is a gradient limiter in the manner of Netflix's concurrency-limits
(``Gradient2``), on the latency *per token* (requests differ in size):

* the **baseline** is the lowest per-token latency of the last ``window`` requests sent while
  nothing else of ours was in flight (*alone*): what the server gives when nothing of ours waits
  ahead. The first request of every batch goes alone; when ``probe_every`` times the limit
  answers came without one and they were slow (over ``fast_seconds``), :attr:`allowed` drops to
  1 until one has (a probe, as TCP Vegas and BBR take: about one round in ``probe_every``), so
  that a baseline measured under load cannot ratchet the limit up;
* after each answer, ``gradient = baseline / latency`` (clamped to [0.5, 1]): 1 when latency is
  flat, 1/2 when each request waits for one other; an answer within ``fast_seconds`` adds one
  to the limit at once (waiting that little costs nothing, and the per-token latency of small
  requests is mostly fixed overhead: a hosted API's tail requests would otherwise read as
  congestion; a restarted worker is at full speed after a few answers);
* the new limit is ``limit * gradient + queue`` (``queue`` = 1: one request may wait at the
  server, so that it never idles between two of ours), smoothed, between 1 and ``max_limit``.

A parallel server keeps latency flat, so the limit climbs to ``max_limit``; a serial one doubles
the latency of every extra request, so the limit settles at 2 (one computing, one waiting). A
client-side timeout halves the limit at once (:meth:`timed_out`), before anything is sent again.

:meth:`timeout_for` gives a request its HTTP timeout from what was observed: the expected time
for its own tokens and for the tokens of ours ahead of it, times ``safety``, never below the
configured floor (``--http-timeout``) nor above ``ceiling``. :meth:`seconds_per_token` is what
the batch sizer uses to keep a batch well inside the visibility timeout.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field


@dataclass
class ConcurrencyLimit:
    max_limit: int
    """The most requests in flight (``--in-flight``)."""
    floor_timeout: float = 30.0
    """The HTTP timeout before anything is known, and the least ever given (``--http-timeout``)."""
    ceiling_timeout: float = 600.0
    safety: float = 3.0
    window: int = 20
    probe_every: int = 50
    smoothing: float = 0.2
    fast_seconds: float | None = None
    """Answers within this count as flat (default: a tenth of the floor timeout, at most 1 s)."""
    queue: float = 1.0
    limit: float = field(default=0.0)
    timeouts: int = 0
    _alone: collections.deque[float] = field(default_factory=collections.deque, repr=False)
    _any_min: float = field(default=math.inf, repr=False)
    _since_alone: int = field(default=0, repr=False)
    _recent: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {self.max_limit}")
        if self.floor_timeout <= 0 or self.ceiling_timeout < self.floor_timeout:
            raise ValueError("need 0 < floor_timeout <= ceiling_timeout")
        if self.fast_seconds is None:
            self.fast_seconds = min(1.0, self.floor_timeout / 10)
        if self.limit <= 0:  # two: the first goes alone (the baseline), the second waits at most
            self.limit = float(min(2, self.max_limit))

    @property
    def probing(self) -> bool:
        """No request went alone in the last ``probe_every`` rounds of slow answers: the next
        one will."""
        return self._since_alone >= self.probe_every * max(1, int(self.limit))

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        if self.probing:
            return 1
        return max(1, min(self.max_limit, int(self.limit)))

    @property
    def baseline(self) -> float | None:
        """Seconds per token when nothing of ours waits ahead (the lowest of the recent requests
        sent alone; of any request before one went alone), None before any answer."""
        if self._alone:
            return min(self._alone)
        return None if self._any_min == math.inf else self._any_min

    def seconds_per_token(self) -> float | None:
        """The recent per-token latency (smoothed), None before any answer."""
        return self._recent

    def sample(self, tokens: int, seconds: float, *, alone: bool = False) -> None:
        """An answer to a request of ``tokens`` tokens (at least 1 counted) in ``seconds``;
        ``alone``: nothing else of ours was in flight when it was sent."""
        per_token = max(seconds, 1e-6) / max(1, tokens)
        self._any_min = min(self._any_min, per_token)
        if alone:
            self._alone.append(per_token)
            if len(self._alone) > self.window:
                self._alone.popleft()
            self._since_alone = 0
        elif seconds > (self.fast_seconds or 0.0):
            self._since_alone += 1
        self._recent = per_token if self._recent is None else 0.7 * self._recent + 0.3 * per_token
        baseline = self.baseline or per_token
        if seconds <= (self.fast_seconds or 0.0):
            # Waiting that little costs nothing: one more in flight per answer (a slow start,
            # as TCP's), so that a restarted worker is at full speed after a few answers.
            self.limit = min(float(self.max_limit), self.limit + 1.0)
            return
        gradient = min(1.0, max(0.5, baseline / per_token))
        target = self.limit * gradient + self.queue
        self.limit = min(
            float(self.max_limit),
            max(1.0, (1 - self.smoothing) * self.limit + self.smoothing * target),
        )

    def timed_out(self) -> None:
        """A request got no answer in time: half as many in flight, at once."""
        self.timeouts += 1
        self.limit = max(1.0, self.limit / 2)

    def expected_seconds(self, tokens: int, ahead_tokens: int = 0) -> float | None:
        """How long a request of ``tokens`` should take with ``ahead_tokens`` of ours before it
        at the server (the worst case of a server that computes one request at a time)."""
        recent, baseline = self._recent, self.baseline
        if recent is None or baseline is None:
            return None
        return max(baseline * (max(1, tokens) + max(0, ahead_tokens)), recent * max(1, tokens))

    def timeout_for(self, tokens: int, ahead_tokens: int = 0) -> float:
        """The HTTP timeout of a request: ``safety`` times its expected time, within the floor
        and the ceiling."""
        expected = self.expected_seconds(tokens, ahead_tokens)
        if expected is None:
            return self.floor_timeout
        return min(self.ceiling_timeout, max(self.floor_timeout, self.safety * expected))
