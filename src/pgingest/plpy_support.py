"""The Python behind the PL/Python functions (plpython/): thin bodies call these with ``plpy``.

They run inside the PostgreSQL server process, in the system Python; ``pgingest.config``'s
``python_path`` (written by ``pgingest install``) points them at this package and its
dependencies. Everything here takes ``plpy`` as an argument so that tests can call it too.
"""

from __future__ import annotations

from typing import Any

from pgingest import chunking, providers, search, vectors

DEFAULT_TIMEOUT_S = 10.0


def _setting(plpy: Any, name: str) -> str | None:
    rows = plpy.execute(plpy.prepare("SELECT current_setting($1, true) AS v", ["text"]), [name])
    value = rows[0]["v"] if rows else None
    return value or None


def chunker_config(plpy: Any) -> chunking.ChunkerConfig:
    rows = plpy.execute("SELECT key, value FROM pgingest.config")
    return chunking.ChunkerConfig.from_settings({r["key"]: r["value"] for r in rows})


def chunk_preview(plpy: Any, body: str, title: str | None) -> list[dict[str, Any]]:
    """The chunks the worker would store for this text (same chunker, same profile)."""
    return [
        {
            "ordinal": c.ordinal,
            "content": c.text,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "embed_input": c.embed_input,
        }
        for c in chunking.chunk_document(title, body or "", chunker_config(plpy))
    ]


def embed_query(plpy: Any, cache: dict[str, Any], query: str, model: str | None) -> str:
    """Embeds one query text through the model's endpoint; returns pgvector's text form."""
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
    override = _setting(plpy, "pgingest.embedding_url")
    base_url = override or m["base_url"]
    timeout = float(_setting(plpy, "pgingest.embedding_timeout") or DEFAULT_TIMEOUT_S)
    # A query waits in a SQL session: short timeouts, few retries. for_model withholds the
    # model's API key from an endpoint that pgingest.embedding_url points elsewhere.
    fields = ("name", "base_url", "model_id", "dimensions", "api_key_env", "request_dimensions")
    key = repr((*(m[f] for f in fields), override, timeout))
    provider = cache.get(key)
    if provider is None:
        provider = providers.for_model(
            m,
            base_url=override,
            timeout=timeout,
            connect_timeout=min(timeout, 3.0),
            max_retries=1,
            max_retry_after=min(timeout, 5.0),
            max_rate_limit_retries=2,
        )
        cache[key] = provider
    try:
        vec = search.embed_query(m, provider, query)
    except providers.ProviderError as exc:
        plpy.error(
            f"pgingest: embedding the query through model {m['name']} at {base_url} failed: {exc}",
            detail=f"error class: {exc.error_class}",
            hint="Is the embedding server running? Override the endpoint with "
            "SET pgingest.embedding_url = 'http://127.0.0.1:8765/v1'.",
            sqlstate="08000",
        )
    except vectors.VectorError as exc:
        plpy.error(f"pgingest: the query vector is invalid: {exc}", sqlstate="22000")
    return "[" + ",".join(repr(float(x)) for x in vec) + "]"
