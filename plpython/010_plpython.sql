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

-- In the two SQL functions below, the parameters are qualified by the function's name (query, k and
-- filter are also column names); sqlfluff takes the qualifier for a missing table (noqa: RF01).
-- The signatures before sources (issue 17); sql/045_search.sql's drop of search() took them
-- already on that upgrade, this covers an install whose PL/Python part was skipped then.
DROP FUNCTION IF EXISTS pgingest.search_text(text, integer, jsonb, boolean);
DROP FUNCTION IF EXISTS pgingest.hybrid_search_text(text, integer, jsonb, double precision, double precision);

CREATE OR REPLACE FUNCTION pgingest.search_text(
    query text,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    per_document boolean DEFAULT FALSE,
    sources text[] DEFAULT NULL
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
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT
        s.doc_id,
        s.doc_key,
        s.title,
        s.ordinal,
        s.content,
        s.distance,
        s.metadata,
        s.model_name,
        s.source,
        s.source_key
    FROM pgingest.search(
        pgingest.embed_query(search_text.query), search_text.k, search_text.filter,  -- noqa: RF01
        search_text.per_document, NULL, search_text.sources  -- noqa: RF01
    ) AS s;
END;

COMMENT ON FUNCTION pgingest.search_text(text, integer, jsonb, boolean, text[]) IS
'Natural-language search from psql: embeds the query with the active model, then pgingest.search() '
'(every source, or those named in sources).';

CREATE OR REPLACE FUNCTION pgingest.hybrid_search_text(
    query text,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    vector_weight double precision DEFAULT 1.0,
    text_weight double precision DEFAULT 1.0,
    sources text[] DEFAULT NULL
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
    source_key jsonb
)
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT
        h.doc_id,
        h.doc_key,
        h.title,
        h.ordinal,
        h.content,
        h.score,
        h.vector_rank,
        h.text_rank,
        h.source,
        h.source_key
    FROM pgingest.hybrid_search(
        hybrid_search_text.query, pgingest.embed_query(hybrid_search_text.query), hybrid_search_text.k,  -- noqa: RF01
        hybrid_search_text.filter, hybrid_search_text.vector_weight, hybrid_search_text.text_weight,  -- noqa: RF01
        60, 100, FALSE, hybrid_search_text.sources  -- noqa: RF01
    ) AS h;
END;

COMMENT ON FUNCTION pgingest.hybrid_search_text(text, integer, jsonb, double precision, double precision, text[]) IS
'Hybrid (full-text + vector, reciprocal rank fusion) search from psql: embeds the query with the active model.';
