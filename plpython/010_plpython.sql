-- PL/Python: query embedding and chunk preview, from psql. Thin bodies over pgingest.plpy_support.

CREATE OR REPLACE FUNCTION pgingest._plpy_bootstrap()
RETURNS void
LANGUAGE plpython3u
VOLATILE
SET search_path FROM CURRENT
AS $$
if GD.get("pgingest_path_ready"):
    return None
import sys
rows = plpy.execute("SELECT value FROM pgingest.config WHERE key = 'python_path'")
if rows:
    for path in reversed(rows[0]["value"].split(":")):
        if path and path not in sys.path:
            sys.path.insert(0, path)
GD["pgingest_path_ready"] = True
return None
$$;

COMMENT ON FUNCTION pgingest._plpy_bootstrap() IS
'Puts pgingest.config''s python_path on the PL/Python sys.path (once per session).';

-- The signature before chunking profiles per model: dropped so that calls stay unambiguous.
DROP FUNCTION IF EXISTS pgingest.chunk_preview(text, text);

CREATE OR REPLACE FUNCTION pgingest.chunk_preview(body text, title text DEFAULT NULL, model text DEFAULT NULL)
RETURNS TABLE (
    ordinal integer,
    content text,
    char_start integer,
    char_end integer,
    token_count integer,
    embed_input text
)
LANGUAGE plpython3u
STABLE
SET search_path FROM CURRENT
AS $$
if not GD.get("pgingest_path_ready"):
    plpy.execute("SELECT pgingest._plpy_bootstrap()")
from pgingest import plpy_support
return plpy_support.chunk_preview(plpy, body, title, model)
$$;

COMMENT ON FUNCTION pgingest.chunk_preview(text, text, text) IS
'How the worker would cut this text into chunks with `model`''s chunking profile (the default profile, '
'config chunk_*, when NULL): ordinal, content, span, token count and the exact text sent to the model.';

CREATE OR REPLACE FUNCTION pgingest.embed_query(query text, model text DEFAULT NULL)
RETURNS vector
LANGUAGE plpython3u
VOLATILE
SET search_path FROM CURRENT
AS $$
if not GD.get("pgingest_path_ready"):
    plpy.execute("SELECT pgingest._plpy_bootstrap()")
from pgingest import plpy_support
return plpy_support.embed_query(plpy, SD, query, model, GD)
$$;

COMMENT ON FUNCTION pgingest.embed_query(text, text) IS
'Embeds a query text through the active model''s endpoint (or `model`''s); unit-normalised; an empty '
'text is refused. pgingest.embedding_url overrides the endpoint (a superuser: any; other roles: only '
'a live model''s registered base_url); pgingest.embedding_timeout (s, clamped to 0.1-60, default 10) '
'bounds the whole call. Errors give the HTTP status, never the endpoint''s own text.';

CREATE OR REPLACE FUNCTION pgingest.query_cache_stats()
RETURNS TABLE (entries integer, hits bigint, misses bigint)
LANGUAGE plpython3u
VOLATILE
SET search_path FROM CURRENT
AS $$
if not GD.get("pgingest_path_ready"):
    plpy.execute("SELECT pgingest._plpy_bootstrap()")
from pgingest import plpy_support
qc = plpy_support.query_cache(GD)
return [(len(qc["entries"]), qc["hits"], qc["misses"])]
$$;

COMMENT ON FUNCTION pgingest.query_cache_stats() IS
'This session''s query-vector cache (embed_query, search_text, hybrid_search_text): entries kept, hits, '
'misses. Per session (it works on read replicas too); pgingest.query_cache_entries sets its size (256; 0: off).';

-- The signatures before sources (issue 17); sql/045_search.sql's drop of search() took them
-- already on that upgrade, this covers an install whose PL/Python part was skipped then.
DROP FUNCTION IF EXISTS pgingest.search_text(text, integer, jsonb, boolean);
DROP FUNCTION IF EXISTS pgingest.hybrid_search_text(text, integer, jsonb, double precision, double precision);
-- The signatures before traffic shifting (issue 20): no routing_key.
DROP FUNCTION IF EXISTS pgingest.search_text(text, integer, jsonb, boolean, text[]);
DROP FUNCTION IF EXISTS pgingest.hybrid_search_text(text, integer, jsonb, double precision, double precision, text[]);

CREATE OR REPLACE FUNCTION pgingest.search_text(
    query text,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    per_document boolean DEFAULT FALSE,
    sources text[] DEFAULT NULL,
    routing_key text DEFAULT NULL
)
RETURNS TABLE (
    doc_id bigint,
    doc_key text,
    title text,
    ordinal integer,
    content text,
    distance double precision,
    metadata jsonb,
    model_name text,
    source text,
    source_key jsonb
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_t0 timestamptz := clock_timestamp();
    -- The model that serves it: the active one, or the candidate of a traffic shift for this key.
    v_model text := pgingest.route_model(coalesce(search_text.routing_key, search_text.query));
BEGIN
    RETURN QUERY SELECT * FROM pgingest.search(
        pgingest.embed_query(search_text.query, v_model), search_text.k, search_text.filter,
        search_text.per_document, v_model, search_text.sources, search_text.query, v_t0
    );
END;
$$;

COMMENT ON FUNCTION pgingest.search_text(text, integer, jsonb, boolean, text[], text) IS
'Natural-language search from psql: embeds the query with the model that serves it (the active one, or the '
'candidate of pgingest.shift_traffic for this routing_key, else the query text: pgingest.route_model), then '
'pgingest.search() (every source, or those named in sources); model_name says which model served.';

-- The signature before issue 21 (point 2): no per_document, no metadata column.
DROP FUNCTION IF EXISTS pgingest.hybrid_search_text(
    text, integer, jsonb, double precision, double precision, text[], text
);

CREATE OR REPLACE FUNCTION pgingest.hybrid_search_text(
    query text,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    vector_weight double precision DEFAULT NULL,
    text_weight double precision DEFAULT NULL,
    sources text[] DEFAULT NULL,
    routing_key text DEFAULT NULL,
    per_document boolean DEFAULT FALSE
)
RETURNS TABLE (
    doc_id bigint,
    doc_key text,
    title text,
    ordinal integer,
    content text,
    score double precision,
    vector_rank integer,
    text_rank integer,
    source text,
    source_key jsonb,
    model_name text,
    metadata jsonb
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_t0 timestamptz := clock_timestamp();
    v_model text := pgingest.route_model(coalesce(hybrid_search_text.routing_key, hybrid_search_text.query));
BEGIN
    RETURN QUERY SELECT * FROM pgingest.hybrid_search(
        hybrid_search_text.query, pgingest.embed_query(hybrid_search_text.query, v_model), hybrid_search_text.k,
        hybrid_search_text.filter, hybrid_search_text.vector_weight, hybrid_search_text.text_weight,
        NULL, NULL, FALSE, hybrid_search_text.sources, v_model, v_t0, hybrid_search_text.per_document
    );
END;
$$;

COMMENT ON FUNCTION pgingest.hybrid_search_text(
    text, integer, jsonb, double precision, double precision, text[], text, boolean
) IS
'Hybrid (full-text BM25 + vector, weighted reciprocal rank fusion) search from psql: embeds the query with the '
'model that serves it (the active one, or the traffic shift''s candidate for this routing_key, else the query '
'text), then pgingest.hybrid_search() with its defaults (NULL weights: pgingest.hybrid_search_defaults()); '
'per_document => true gives one row a document, its best chunk.';
