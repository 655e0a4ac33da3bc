"""The Python behind the PL/Python functions (plpython/): thin bodies call these with ``plpy``.

They run inside the PostgreSQL server process, in the system Python; ``pgingest.config``'s
``python_path`` (written by ``pgingest install``) points them at this package and its
dependencies. Everything here takes ``plpy`` as an argument so that tests can call it too.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections import OrderedDict
from typing import Any

from pgingest import chunking, providers, search, vectors

DEFAULT_TIMEOUT_S = 10.0
MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 60.0
"""``pgingest.embedding_timeout`` is clamped to this range: any session may set it."""
PROVIDER_CACHE_SIZE = 8
"""Providers kept per session (one per model, endpoint and timeout), the oldest closed first."""
QUERY_CACHE_ENTRIES = 256
"""Query vectors kept per session (``pgingest.query_cache_entries`` overrides; 0 turns it off):
the same question asked again, in this backend, costs no request (issue 20, item 4)."""


def normalise_query(text: str) -> str:
    """The form a query is cached under: Unicode NFC, whitespace runs collapsed, ends stripped
    (what the embedding of a question cannot depend on)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def query_cache(store: dict[str, Any]) -> dict[str, Any]:
    """This session's query-vector cache: ``entries`` (an LRU of key -> vector text), ``hits``,
    ``misses``."""
    qc = store.get("pgingest_query_cache")
    if qc is None:
        qc = store["pgingest_query_cache"] = {"entries": OrderedDict(), "hits": 0, "misses": 0}
    return qc


def _query_cache_limit(plpy: Any, raw: str | None) -> int:
    if raw is None:
        return QUERY_CACHE_ENTRIES
    try:
        return max(0, min(int(raw), 100_000))
    except ValueError:
        plpy.error(
            f"pgingest: pgingest.query_cache_entries must be an integer, not {raw!r}",
            sqlstate="22023",
        )
        raise  # not reached: plpy.error raises


def _query_cache_settings(plpy: Any) -> tuple[int, bool]:
    """This session's cache size (``pgingest.query_cache_entries``) and whether it uses the shared
    cache table (``pgingest.query_cache_shared``, on unless ``off``), in one statement."""
    rows = plpy.execute(
        "SELECT current_setting('pgingest.query_cache_entries', true) AS n,"
        " current_setting('pgingest.query_cache_shared', true) AS s"
    )
    n = (rows[0]["n"] or None) if rows else None
    shared = (rows[0]["s"] or "on") if rows else "on"
    return _query_cache_limit(plpy, n), shared.strip().lower() not in ("off", "false", "0", "no")


def shared_cache_key(vkey: str) -> bytes:
    """The shared cache table's key for a per-backend cache key (model identity, endpoint,
    normalised text): its sha256, so that the table never holds the query text."""
    return hashlib.sha256(vkey.encode("utf-8", "surrogatepass")).digest()


def _shared_lookup(plpy: Any, qc: dict[str, Any], key: bytes, m: dict[str, Any]) -> str | None:
    """The vector the shared table holds for ``key`` (pgingest._query_cache_vector), or None: on
    any error too (the table locked, dropped, an older schema), which never fails a search."""
    try:
        plan = qc.get("shared_get")
        if plan is None:
            plan = qc["shared_get"] = plpy.prepare(
                "SELECT pgingest._query_cache_vector($1, $2, $3)::text AS v",
                ["bytea", "text", "integer"],
            )
        rows = plpy.execute(plan, [key, m["name"], m["dimensions"]])
    except plpy.SPIError:
        qc.pop("shared_get", None)
        return None
    value = rows[0]["v"] if rows else None
    return str(value) if value else None


def _shared_store(plpy: Any, qc: dict[str, Any], key: bytes, m: dict[str, Any], text: str) -> None:
    """Stores a vector in the shared table (the function skips it on a replica or in a
    read-only transaction); an error is ignored, never a search's failure."""
    try:
        plan = qc.get("shared_put")
        if plan is None:
            plan = qc["shared_put"] = plpy.prepare(
                "SELECT pgingest._query_cache_vector($1, $2, $3, $4::vector)",
                ["bytea", "text", "integer", "text"],
            )
        plpy.execute(plan, [key, m["name"], m["dimensions"], text])
    except plpy.SPIError:
        qc.pop("shared_put", None)


def _note_source(plpy: Any, qc: dict[str, Any] | None, source: str) -> None:
    """Where this search's query vector came from (``session``, ``shared`` or ``endpoint``),
    for the query log (``pgingest._log_search`` reads ``pgingest.query_vector``): the hit
    rate of the caches in ``traffic_status()``. An error is ignored."""
    if qc is None:
        return
    try:
        plan = qc.get("note")
        if plan is None:
            plan = qc["note"] = plpy.prepare(
                "SELECT set_config('pgingest.query_vector', $1, false)", ["text"]
            )
        plpy.execute(plan, [source])
    except plpy.SPIError:
        qc.pop("note", None)


def _setting(plpy: Any, name: str) -> str | None:
    rows = plpy.execute(plpy.prepare("SELECT current_setting($1, true) AS v", ["text"]), [name])
    value = rows[0]["v"] if rows else None
    return value or None


def chunker_config(plpy: Any, model: str | None = None) -> chunking.ChunkerConfig:
    """The chunking profile of ``model`` (a live model), or the default profile (config
    ``chunk_*``, what register_model gives a model by default) when ``model`` is None."""
    if model is None:
        rows = plpy.execute("SELECT key, value FROM pgingest.config")
        return chunking.ChunkerConfig.from_settings({r["key"]: r["value"] for r in rows})
    plan = plpy.prepare(
        "SELECT p.tokenizer, p.max_tokens, p.overlap_tokens, p.title_in_chunks"
        " FROM pgingest.models AS m JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id"
        " WHERE m.name = $1 AND m.state <> 'retired'",
        ["text"],
    )
    found = plpy.execute(plan, [model])
    if not found:
        plpy.error(f"pgingest: no live model named {model!r}", sqlstate="42704")
    p = found[0]
    return chunking.ChunkerConfig(
        tokenizer=p["tokenizer"],
        max_tokens=p["max_tokens"],
        overlap_tokens=p["overlap_tokens"],
        include_title=p["title_in_chunks"],
    )


def chunk_preview(
    plpy: Any, body: str, title: str | None, model: str | None = None
) -> list[dict[str, Any]]:
    """The chunks the worker would store for this text with ``model``'s chunking profile (the
    default profile when None)."""
    return [
        {
            "ordinal": c.ordinal,
            "content": c.text,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "embed_input": c.embed_input,
        }
        for c in chunking.chunk_document(title, body or "", chunker_config(plpy, model))
    ]


def query_timeout(value: str | None) -> float:
    """Seconds for one query embedding from ``pgingest.embedding_timeout`` (None: the default):
    clamped to [MIN_TIMEOUT_S, MAX_TIMEOUT_S], since any session may set it. ``ValueError`` for
    what is not a positive finite number."""
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"pgingest.embedding_timeout must be a number of seconds > 0, got {value[:40]!r}"
        )
    return min(max(seconds, MIN_TIMEOUT_S), MAX_TIMEOUT_S)


def public_reason(exc: providers.ProviderError) -> str:
    """What a query's caller is told about a failed embedding: the HTTP status and the error
    class, never the endpoint's own words (any role that may search could otherwise read
    the answers of whatever the endpoint is)."""
    if exc.error_class == "bad_response":
        return "the endpoint's answer is not a valid embeddings answer (bad_response)"
    if exc.status is not None:
        return f"the endpoint answered HTTP {exc.status} ({exc.error_class})"
    if exc.error_class == "timeout":
        return "no complete answer in time (timeout)"
    if exc.error_class == "connection":
        return "the endpoint could not be reached (connection)"
    return f"the request failed ({exc.error_class})"


def _is_superuser(plpy: Any) -> bool:
    rows = plpy.execute("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user")
    return bool(rows and rows[0]["rolsuper"])


def _endpoint_override(plpy: Any, m: dict[str, Any]) -> str | None:
    """``pgingest.embedding_url`` if this session may use it, None when unset.

    Any session may SET a ``pgingest.*`` setting, so it is not trusted: for a role that is not
    a superuser it must name the endpoint of a live registered model (``pgingest.models``'
    ``base_url``, written only by admins), compared as the URL requests are posted to
    (``providers.embeddings_url``: a trailing ``?``, slash or ``/embeddings`` changes nothing,
    anything else is another endpoint). A superuser may name any endpoint (that role can
    already make the server run anything). The model's API key goes only to its own endpoint
    (``providers.for_model``).
    """
    override = _setting(plpy, "pgingest.embedding_url")
    if override is None:
        return None
    try:
        providers.check_base_url(override)
    except ValueError as exc:
        plpy.error(f"pgingest: pgingest.embedding_url is refused: {exc}", sqlstate="22023")
    target = providers.embeddings_url(override)
    if target == providers.embeddings_url(str(m["base_url"])) or _is_superuser(plpy):
        return override
    rows = plpy.execute("SELECT base_url FROM pgingest.models WHERE state <> 'retired'")
    if any(providers.embeddings_url(str(r["base_url"])) == target for r in rows):
        return override
    plpy.error(
        "pgingest: pgingest.embedding_url may only name the endpoint of a registered model",
        detail=f"{providers.redact_url(override)} is not the base_url of a live model in "
        "pgingest.models.",
        hint="RESET pgingest.embedding_url to use the model's own endpoint, or ask an "
        "administrator to register the endpoint.",
        sqlstate="42501",
    )
    return None  # not reached: plpy.error raises


def embed_query(
    plpy: Any,
    cache: dict[str, Any],
    query: str,
    model: str | None,
    shared: dict[str, Any] | None = None,
) -> str:
    """Embeds one query text through the model's endpoint; returns pgvector's text form.

    Reader-facing: the endpoint is the model's own or another registered one
    (:func:`_endpoint_override`), the timeout is clamped (:func:`query_timeout`) and bounds the
    whole call (connect, answer, retries), the answer is size-capped by the client, and an
    error says what happened (HTTP status, error class) without the endpoint's own text.
    """
    if query is None or not query.strip():
        plpy.error(
            "pgingest: the query text is empty",
            hint="Search with some words: an empty text has no meaning to embed.",
            sqlstate="22023",
        )
    if model is None:
        rows = plpy.execute("SELECT * FROM pgingest.models WHERE state = 'active'")
        if not rows:
            plpy.error("pgingest: no active model", sqlstate="42704")
    else:
        plan = plpy.prepare(
            "SELECT * FROM pgingest.models WHERE name = $1 AND state <> 'retired'", ["text"]
        )
        rows = plpy.execute(plan, [model])
        if not rows:
            plpy.error(f"pgingest: no live model named {model!r}", sqlstate="42704")
    m = rows[0]
    override = _endpoint_override(plpy, m)
    base_url = override or str(m["base_url"])
    shown_url = providers.redact_url(base_url)
    try:
        timeout = query_timeout(_setting(plpy, "pgingest.embedding_timeout"))
    except ValueError as exc:
        plpy.error(f"pgingest: {exc}", sqlstate="22023")
    # A query waits in a SQL session: one deadline over the whole call, few retries. for_model
    # withholds the model's API key from an endpoint that pgingest.embedding_url points elsewhere.
    fields = ("name", "base_url", "model_id", "dimensions", "api_key_env", "request_dimensions")
    key = repr((*(m[f] for f in fields), override, timeout))
    # The query-vector cache: keyed by the model's identity and endpoint (a swap, a re-registered
    # model of another model_id or dimension, another endpoint: another key) and the query's
    # normalised text. Per session: it works on a read replica too.
    qc = query_cache(shared) if shared is not None else None
    limit, use_shared = _query_cache_settings(plpy) if qc is not None else (0, False)
    vkey = repr(
        (
            *(m[f] for f in ("name", "base_url", "model_id", "dimensions", "storage", "metric")),
            override,
            normalise_query(query),
        )
    )
    if qc is not None and limit > 0:
        hit = qc["entries"].pop(vkey, None)
        if hit is not None:
            qc["entries"][vkey] = hit  # most recently used last
            qc["hits"] += 1
            _note_source(plpy, qc, "session")
            return str(hit)
        qc["misses"] += 1
    # Then the shared table (on the primary, replicated to every replica): a question another
    # session of this role embedded costs an index lookup, not a request.
    skey = shared_cache_key(vkey) if qc is not None and use_shared else None
    if qc is not None and skey is not None:
        found = _shared_lookup(plpy, qc, skey, m)
        if found is not None:
            if limit > 0:
                qc["entries"][vkey] = found
                while len(qc["entries"]) > limit:
                    qc["entries"].popitem(last=False)
            _note_source(plpy, qc, "shared")
            return found
    provider = cache.pop(key, None)
    if provider is None:
        try:
            provider = providers.for_model(
                m,
                base_url=override,
                timeout=timeout,
                total_timeout=timeout,
                connect_timeout=min(timeout, 3.0),
                max_retries=1,
                max_retry_after=min(timeout, 5.0),
                max_rate_limit_retries=2,
            )
        except ValueError as exc:  # providers.InvalidURL: the model's base_url is refused
            plpy.error(
                f"pgingest: model {m['name']}'s endpoint cannot be called: {exc}",
                sqlstate="22023",
            )
        while len(cache) >= PROVIDER_CACHE_SIZE:
            cache.pop(next(iter(cache))).close()
    cache[key] = provider  # (re)inserted last: the cache drops the least recently used
    try:
        vec = search.embed_query(m, provider, query)
    except providers.ProviderError as exc:
        plpy.error(
            f"pgingest: embedding the query through model {m['name']} at {shown_url} failed: "
            f"{public_reason(exc)}",
            detail=f"error class: {exc.error_class}",
            hint="Is the embedding server running? A superuser can point the session elsewhere "
            "with SET pgingest.embedding_url = 'http://127.0.0.1:8765/v1' (other roles: "
            "only the base_url of a registered model).",
            sqlstate="08000",
        )
    except vectors.VectorError as exc:
        plpy.error(f"pgingest: the query vector is invalid: {exc}", sqlstate="22000")
    text = "[" + ",".join(repr(float(x)) for x in vec) + "]"
    if qc is not None and skey is not None:
        _shared_store(plpy, qc, skey, m, text)
    if qc is not None and limit > 0:
        entries = qc["entries"]
        entries[vkey] = text
        while len(entries) > limit:
            entries.popitem(last=False)
    _note_source(plpy, qc, "endpoint")
    return text
