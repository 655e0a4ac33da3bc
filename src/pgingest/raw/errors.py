"""The one error type of the raw-document stages, with its classification."""

from __future__ import annotations

from typing import Literal

Scope = Literal["object", "source"]

# Permanent classes: the same bytes (or the same URI) fail the same way again, so the worker
# dead-letters at once. Transient ones are retried with backoff.
PERMANENT_CLASSES = frozenset(
    {
        "not_allowed",
        "not_found",
        "forbidden",
        "access",
        "too_large",
        "bad_uri",
        "http_error",
        "unsupported_type",
        "timeout",
        "oom",
        "encrypted",
        "empty_text",
        "parse_error",
    }
)
TRANSIENT_CLASSES = frozenset({"fetch_timeout", "throttled", "server_error", "connect_error"})

# Failures that prove nothing about a store's answer for the object: refused before any request
# (the allow-list, a malformed URI), the credentials refused for the whole source, or no answer
# (transient). Any other outcome (bytes read, whatever their parse gave, or the store's answer
# about the object: not_found, forbidden, too_large, http_error) shows the store answering. The
# one definition: a probe of a paused source resumes it on such an outcome (the worker), and a
# document refused source-wide again after another one of its source got such an outcome since
# has a refusal of its own (``raw_refused_alone_v2`` gets this list).
UNANSWERED_CLASSES = TRANSIENT_CLASSES | {"not_allowed", "bad_uri", "access"}


class RawDocumentError(Exception):
    """A document could not be fetched or parsed.

    ``error_class`` is a short stable name (the dead letter's class); ``permanent`` says whether
    retrying can help; ``retry_after`` is the server's ``Retry-After`` in seconds, if it sent one;
    ``scope`` is ``"source"`` for an error every document of the source would hit (its class is
    ``access``: one of ``UNANSWERED_CLASSES``).
    The message never contains credentials (none are ever passed in)."""

    def __init__(
        self,
        error_class: str,
        message: str,
        *,
        permanent: bool | None = None,
        retry_after: float | None = None,
        scope: Scope = "object",
    ) -> None:
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.detail = message
        self.permanent = (
            permanent if permanent is not None else error_class not in TRANSIENT_CLASSES
        )
        self.retry_after = retry_after
        self.scope: Scope = scope
