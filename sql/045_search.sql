-- Search over the active model (or a named one). Filters: promoted metadata keys (register_filter)
-- become typed predicates on their indexed columns, other keys a jsonb containment. A selective
-- filter is searched exactly over the matching documents; a broad one through the ANN index with
-- pgvector 0.8 iterative scans, so that k rows come back either way.

CREATE OR REPLACE FUNCTION pgingest._filter_predicate(p_filter jsonb)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key text;
    v_value jsonb;
    v_f pgingest.filters;
    v_parts text[] := '{}';
    v_contains text;
    v_json text;
    v_num numeric;
BEGIN
    IF p_filter IS NULL OR p_filter = '{}'::jsonb THEN
        RETURN 'true';
    END IF;
    IF jsonb_typeof(p_filter) <> 'object' THEN
        RAISE EXCEPTION 'pgingest: filter must be a JSON object, not %', jsonb_typeof(p_filter)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR v_key, v_value IN SELECT e.key, e.value FROM jsonb_each(p_filter) AS e ORDER BY e.key LOOP
        SELECT * INTO v_f FROM pgingest.filters AS f WHERE f.key = v_key;
        v_contains := format('d.metadata @> %L::jsonb', jsonb_build_object(v_key, v_value));
        v_json := jsonb_typeof(v_value);
        -- A promoted key's typed column narrows the search (its index) only where the value's JSON
        -- type is the one the column holds (pgingest._meta_cast); the answer stays what containment
        -- gives without the promotion: the same documents before and after register_filter, and a
        -- value no document of that key can hold (7.5 or 99999999999 for an integer) matches none,
        -- never a cast error.
        IF FOUND AND v_f.type = 'text[]' AND v_json = 'array' THEN
            -- the column holds the elements as text (1 and "1" alike): containment decides.
            v_parts := v_parts || format(
                'd.%I @> %L::text[] AND %s', v_f.column_name,
                (SELECT coalesce(array_agg(x), '{}') FROM jsonb_array_elements_text(v_value) AS x),
                v_contains
            );
        ELSIF FOUND AND v_f.type = 'text' AND v_json IN ('string', 'number', 'boolean') THEN
            -- the column holds strings, numbers and booleans as their text ("5" and 5 alike).
            v_parts := v_parts || format('d.%I = %L::text AND %s', v_f.column_name, v_value #>> '{}', v_contains);
        ELSIF FOUND AND v_f.type = 'boolean' AND v_json = 'boolean' THEN
            v_parts := v_parts || format('d.%I = %L::boolean', v_f.column_name, v_value #>> '{}');
        ELSIF FOUND AND v_f.type = 'numeric' AND v_json = 'number' THEN
            v_parts := v_parts || format('d.%I = %L::numeric', v_f.column_name, v_value #>> '{}');
        ELSIF FOUND AND v_f.type IN ('integer', 'bigint') AND v_json = 'number' THEN
            v_num := (v_value #>> '{}')::numeric;
            IF v_num <> trunc(v_num) OR v_f.type = 'integer' AND (v_num < -2147483648 OR v_num > 2147483647)
                OR v_num < -9223372036854775808 OR v_num > 9223372036854775807 THEN
                -- no document can hold it under this key (register_filter checks every value)
                v_parts := v_parts || 'false'::text;
            ELSE
                v_parts := v_parts || format('d.%I = %L::%s', v_f.column_name, trunc(v_num)::text, v_f.type);
            END IF;
        ELSE
            v_parts := v_parts || v_contains;
        END IF;
    END LOOP;
    RETURN array_to_string(v_parts, ' AND ');
END;
$$;

COMMENT ON FUNCTION pgingest._filter_predicate(jsonb) IS
'SQL predicate on pgingest.source_documents AS d for a search filter (promoted keys use their typed columns).';

-- Which sources a search spans: NULL for all; otherwise every name must exist.
CREATE OR REPLACE FUNCTION pgingest._sources_predicate(p_sources text[])
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_unknown text;
BEGIN
    IF p_sources IS NULL THEN
        RETURN 'true';
    END IF;
    SELECT string_agg(quote_literal(x.name), ', ') INTO v_unknown
    FROM unnest(p_sources) AS x (name)
    WHERE NOT EXISTS (SELECT 1 FROM pgingest.sources AS s WHERE s.name = x.name);
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: no source %', v_unknown
            USING ERRCODE = 'undefined_object', HINT = 'SELECT source FROM pgingest.source_status;';
    END IF;
    RETURN format('d.source_id = ANY (%L::integer[])',
                  (SELECT array_agg(s.id ORDER BY s.id) FROM pgingest.sources AS s WHERE s.name = ANY (p_sources)));
END;
$$;

COMMENT ON FUNCTION pgingest._sources_predicate(text[]) IS
'SQL predicate limiting a search to the named sources (all when NULL); 42704 for an unknown name.';

-- An older release's signature of a routine, dropped so that calls stay unambiguous (review
-- 2026-12-07, install finding 1: with CASCADE it took the application's views and BEGIN ATOMIC
-- functions that called it, without a word). pgingest's own dependants go with it (search_text and
-- hybrid_search_text are re-created after this folder); anything else that depends on it, directly
-- or through pgingest's objects, stops the install (2BP01) with its name, and nothing is changed.
CREATE OR REPLACE FUNCTION pgingest._drop_old_routine(p_signature text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_oid regprocedure := to_regprocedure(p_signature);
    v_theirs text;
BEGIN
    IF v_oid IS NULL THEN
        RETURN;
    END IF;
    WITH RECURSIVE dep (classid, objid, objsubid, ref_classid, ref_objid) AS (
        SELECT d.classid, d.objid, d.objsubid,
               CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN 'pg_catalog.pg_class'::regclass ELSE d.classid END,
               CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass
                    THEN (SELECT r.ev_class FROM pg_catalog.pg_rewrite AS r WHERE r.oid = d.objid) ELSE d.objid END
        FROM pg_catalog.pg_depend AS d
        WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid = v_oid AND d.deptype IN ('n', 'a')
        UNION
        SELECT d.classid, d.objid, d.objsubid,
               CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN 'pg_catalog.pg_class'::regclass ELSE d.classid END,
               CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass
                    THEN (SELECT r.ev_class FROM pg_catalog.pg_rewrite AS r WHERE r.oid = d.objid) ELSE d.objid END
        FROM dep INNER JOIN pg_catalog.pg_depend AS d
            ON d.refclassid = dep.ref_classid AND d.refobjid = dep.ref_objid AND d.deptype IN ('n', 'a')
    )
    SELECT string_agg(DISTINCT CASE
               WHEN dep.classid = 'pg_catalog.pg_rewrite'::regclass THEN 'view ' || dep.ref_objid::regclass::text
               ELSE o.type || ' ' || o.identity
           END, ', ')
    INTO v_theirs
    FROM dep
    CROSS JOIN LATERAL pg_catalog.pg_identify_object(dep.classid, dep.objid, dep.objsubid) AS o
    WHERE o.schema IS DISTINCT FROM 'pgingest';
    IF v_theirs IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: this release replaces %, which objects outside schema pgingest use: %', v_oid, v_theirs
            USING ERRCODE = 'dependent_objects_still_exist',
                  DETAIL = 'Nothing was changed: the install stopped here.',
                  HINT = 'Keep their definitions (pg_get_viewdef, pg_get_functiondef), drop them, run the install again, '
                         'and create them again: their calls resolve to the new signature.';
    END IF;
    EXECUTE format('DROP FUNCTION %s CASCADE', v_oid);
END;
$$;

COMMENT ON FUNCTION pgingest._drop_old_routine(text) IS
'Drops an older release''s signature of a routine with pgingest''s own dependants; refuses (2BP01, naming them) '
'when objects outside schema pgingest depend on it (internal: the install).';

-- The signatures before sources (issue 17): dropped so that calls stay unambiguous; search_text
-- and hybrid_search_text (plpython/) depend on them and are re-created after this folder.
SELECT pgingest._drop_old_routine('pgingest.search(vector, integer, jsonb, boolean, text)');
-- The signature before the query log (issue 20): search() took no query_text / started_at.
SELECT pgingest._drop_old_routine('pgingest.search(vector, integer, jsonb, boolean, text, text[])');
SELECT pgingest._drop_old_routine(
    'pgingest.hybrid_search(text, vector, integer, jsonb, double precision, double precision, integer, integer, '
    'boolean)'
);

CREATE OR REPLACE FUNCTION pgingest._nearest(
    query_vector vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    per_document boolean DEFAULT FALSE,
    model text DEFAULT NULL,
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
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
SET "hnsw.iterative_scan" = 'relaxed_order'
SET "ivfflat.iterative_scan" = 'relaxed_order'
AS $$
#variable_conflict use_column
DECLARE
    v_m pgingest.models;
    v_op text;
    v_type text;
    v_limit integer;
    v_pred text;
    v_matching bigint;
    v_exact_below constant integer := 5000;
    v_exact boolean;
    v_sql text;
    v_rows jsonb;
    v_n bigint;
    v_hits bigint;
    v_max_limit constant integer := 64000;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'pgingest: k must be between 1 and 1000, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF _nearest.model IS NULL THEN
        SELECT * INTO v_m FROM pgingest.models AS m WHERE m.state = 'active';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgingest: no active model'
                USING ERRCODE = 'undefined_object',
                      HINT = 'Register one with pgingest.register_model(...).';
        END IF;
    ELSE
        v_m := pgingest._model(_nearest.model);
    END IF;
    IF vector_dims(query_vector) <> v_m.dimensions THEN
        RAISE EXCEPTION 'pgingest: the query vector has % dimensions, model % has %',
            vector_dims(query_vector), v_m.name, v_m.dimensions
            USING ERRCODE = 'data_exception';
    END IF;
    v_op := pgingest._distance_operator(v_m.metric);
    v_type := pgingest._column_type(v_m);
    v_limit := CASE WHEN per_document THEN least(k * 8, 8000) ELSE k END;
    v_pred := pgingest._filter_predicate(filter);
    IF sources IS NOT NULL THEN
        v_pred := v_pred || ' AND ' || pgingest._sources_predicate(sources);
    END IF;

    IF v_pred <> 'true' THEN
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM pgingest.source_documents AS d WHERE %s LIMIT %s) AS s',
                       v_pred, v_exact_below)
        INTO v_matching;
    END IF;

    v_exact := coalesce(v_matching < v_exact_below, FALSE);
    v_sql := format(
        $sql$
        WITH %4$s hits AS MATERIALIZED (
            SELECT s.doc_id, s.ordinal, c.content, %2$s AS distance
            FROM %5$s
            -- OFFSET 0 keeps this a per-row lookup: as a plain join, the planner would multiply the
            -- selectivities of (doc_id, ordinal) and chunk_hash, expect about one row in all, and
            -- sort the whole store instead of walking its ANN index.
            CROSS JOIN LATERAL (
                SELECT c.content FROM pgingest.chunks AS c
                WHERE c.profile_id = %7$s AND c.doc_id = s.doc_id AND c.ordinal = s.ordinal
                    AND c.chunk_hash = s.chunk_hash
                OFFSET 0
            ) AS c
            %9$s
            WHERE %3$s
            ORDER BY %6$s
            LIMIT $2
        ), ranked AS (
            SELECT h.*, row_number() OVER (PARTITION BY h.doc_id ORDER BY h.distance) AS rn
            FROM hits AS h
        )
        SELECT r.doc_id, d.doc_key, d.title, r.ordinal, r.content, r.distance, d.metadata, %8$L::text,
               d.source, d.source_key, (SELECT count(*) FROM hits) AS hits
        FROM ranked AS r
        INNER JOIN pgingest.source_documents AS d ON d.doc_id = r.doc_id
        WHERE NOT $3 OR r.rn = 1
        ORDER BY r.distance
        LIMIT $4
        $sql$,
        v_m.store_name,
        CASE WHEN v_exact THEN 's.distance' ELSE format('(s.embedding %s $1::%s)::float8', v_op, v_type) END,
        CASE WHEN v_exact THEN 'true' ELSE v_pred END,
        -- Selective filter: the matching documents first (their index), then each one's chunks
        -- through the store's primary key, every distance computed and sorted: exact, never the
        -- ANN index (the subquery's OFFSET 0 hides the distance's expression from the planner).
        CASE WHEN v_exact
             THEN format('docs AS MATERIALIZED (SELECT d.doc_id FROM pgingest.source_documents AS d WHERE %s),', v_pred)
             ELSE '' END,
        -- Sorted before the chunks are looked up: only the nearest are (until k rows are found).
        CASE WHEN v_exact
             THEN format('(SELECT s.* FROM docs AS d CROSS JOIN LATERAL (SELECT s.doc_id, s.ordinal, s.chunk_hash, '
                         '(s.embedding %s $1::%s)::float8 AS distance FROM pgingest.%I AS s '
                         'WHERE s.doc_id = d.doc_id OFFSET 0) AS s ORDER BY s.distance) AS s',
                         v_op, v_type, v_m.store_name)
             ELSE format('pgingest.%I AS s', v_m.store_name) END,
        CASE WHEN v_exact THEN 's.distance'
             ELSE format('s.embedding %s $1::%s', v_op, v_type) END,
        v_m.profile_id, v_m.name,
        CASE WHEN v_exact THEN '' ELSE 'INNER JOIN pgingest.source_documents AS d ON d.doc_id = s.doc_id' END
    );
    IF NOT per_document THEN
        RETURN QUERY EXECUTE format('SELECT q.doc_id, q.doc_key, q.title, q.ordinal, q.content, q.distance, '
                                    'q.metadata, q.text, q.source, q.source_key FROM (%s) AS q', v_sql)
            USING query_vector, v_limit, per_document, k;
        RETURN;
    END IF;
    -- One row a document: the nearest v_limit chunks may come from fewer than k documents (a
    -- long one holds many of them). Widened (doubled) until k documents, the store's end (fewer
    -- chunks than asked for) or v_max_limit chunks.
    LOOP
        EXECUTE format('SELECT jsonb_agg(to_jsonb(q) ORDER BY q.distance, q.doc_id), count(*), max(q.hits) '
                       'FROM (%s) AS q', v_sql)
            INTO v_rows, v_n, v_hits
            USING query_vector, v_limit, per_document, k;
        EXIT WHEN v_n >= k OR coalesce(v_hits, 0) < v_limit OR v_limit >= v_max_limit;
        v_limit := least(v_limit * 2, v_max_limit);
    END LOOP;
    RETURN QUERY
        SELECT (e.r ->> 'doc_id')::bigint, e.r ->> 'doc_key', e.r ->> 'title', (e.r ->> 'ordinal')::integer,
               e.r ->> 'content', (e.r ->> 'distance')::float8, nullif(e.r -> 'metadata', 'null'),
               e.r ->> 'text', e.r ->> 'source', nullif(e.r -> 'source_key', 'null')
        FROM jsonb_array_elements(coalesce(v_rows, '[]')) WITH ORDINALITY AS e (r, n)
        ORDER BY e.n;
END;
$$;

COMMENT ON FUNCTION pgingest._nearest(vector, integer, jsonb, boolean, text, text[]) IS
'The engine of pgingest.search() (which logs; this does not): nearest chunks to a query vector under the '
'active model (or `model`): its store joined to the chunks of its profile on (doc_id, ordinal, chunk_hash), '
'so a vector is never served with another version''s text. Optionally filtered (jsonb: '
'promoted keys use their typed indexed columns, other keys containment) and grouped one row per '
'document (k documents while the store holds them). distance is the model''s metric (cosine distance, '
'negative inner product or L2). A filter matching fewer than 5000 documents is searched exactly, a broader '
'one or none through the ANN index. Spans every '
'source, or those named in `sources`; source and source_key (the row''s key as jsonb) say where each row '
'comes from: join back with, e.g., ON a.id = (s.source_key ->> ''id'')::bigint.';

-- The query log (issue 20, item 1): opt-in, sampled, never on a replica, never a reason for a
-- search to fail.

CREATE OR REPLACE FUNCTION pgingest._query_key(p_text text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
-- ASCII whitespace only, named (review 2026-12-07, item 8): `\s` depended on the database's
-- LC_CTYPE and disagreed with Python's `\s` (NBSP, EM SPACE, U+001C-U+001F).
RETURN regexp_replace(btrim(p_text, E' \t\r\n\f\x0b'), E'[ \t\r\n\f\x0b]+', ' ', 'g');

COMMENT ON FUNCTION pgingest._query_key(text) IS
'A query text or routing key as it is hashed: ends trimmed, runs of ASCII whitespace (space, tab, CR, LF, '
'FF, VT) collapsed to one space; any other character, Unicode spaces included, is kept as it is.';

CREATE OR REPLACE FUNCTION pgingest._route_bucket(p_key text)
RETURNS double precision
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN ('x' || substr(md5(pgingest._query_key(p_key)), 1, 8))::bit(32)::bigint / 4294967296.0;

COMMENT ON FUNCTION pgingest._route_bucket(text) IS
'Where a routing key falls in [0, 1): the first 32 bits of the md5 of its normalised text. Stable across '
'sessions, servers and PostgreSQL versions (pgingest.search.route_bucket computes the same in Python).';

CREATE OR REPLACE FUNCTION pgingest.route_model(routing_key text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_active text;
    v_candidate text;
    v_share double precision;
BEGIN
    SELECT m.name INTO v_active FROM pgingest.models AS m WHERE m.state = 'active';
    IF routing_key IS NULL THEN
        RETURN v_active;
    END IF;
    -- A paused candidate (its endpoint fails) serves nothing: its searches would fail.
    SELECT t.model, t.share INTO v_candidate, v_share
    FROM pgingest.traffic_shift AS t
    INNER JOIN pgingest.models AS m ON m.name = t.model
    WHERE m.state IN ('shadow', 'standby') AND NOT m.paused;
    IF v_candidate IS NULL OR v_active IS NULL THEN
        RETURN v_active;
    END IF;
    RETURN CASE WHEN pgingest._route_bucket(routing_key) < v_share THEN v_candidate ELSE v_active END;
END;
$$;

COMMENT ON FUNCTION pgingest.route_model(text) IS
'The model that serves a search with this routing key: the candidate of pgingest.shift_traffic when the '
'key''s bucket (md5 of the normalised key, in [0, 1)) is below its share, else the active model. The same key '
'always lands on the same model, and a key served by the candidate stays there while the share grows. '
'search_text and hybrid_search_text route by their routing_key (else the query text); an application '
'that embeds its own queries calls this first and passes the model to search(..., model => ...).';

CREATE OR REPLACE FUNCTION pgingest._query_log_sampled()
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rate text;
BEGIN
    SELECT c.value INTO v_rate FROM pgingest.config AS c WHERE c.key = 'query_log_sample_rate';
    -- Checked without casting: a hand-edited value turns the log off, it never fails a search.
    IF v_rate IS NULL OR v_rate !~ '^\s*(0(\.[0-9]+)?|1(\.0*)?|\.[0-9]+)\s*$' OR v_rate::double precision <= 0 THEN
        RETURN FALSE;
    END IF;
    -- A replay of the log by an admin (replay_query_log) is not logged again.
    IF current_setting('pgingest.query_log_skip', TRUE) = 'on' AND pg_has_role(session_user, 'pgingest_admin', 'MEMBER')
        THEN
        RETURN FALSE;
    END IF;
    -- Nothing can be written on a read replica or in a read-only transaction: not logged.
    IF pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on' THEN
        RETURN FALSE;
    END IF;
    RETURN random() < v_rate::double precision;
END;
$$;

COMMENT ON FUNCTION pgingest._query_log_sampled() IS
'Whether this search is logged: the log is on (query_log_sample_rate > 0), the draw falls under the rate, and '
'the server can write (not a read replica, not a read-only transaction).';

-- Where a search's query vector came from: embed_query (plpy_support._note_source) leaves it in the
-- session setting pgingest.query_vector; search() and hybrid_search() take it once and clear it, so
-- that a later search given its vector by the application is not logged with what a search_text
-- before it left there (review 2026-12-07, finding 9).
CREATE OR REPLACE FUNCTION pgingest._query_vector_source()
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_source text := current_setting('pgingest.query_vector', TRUE);
BEGIN
    IF v_source <> '' THEN
        PERFORM set_config('pgingest.query_vector', '', FALSE);
    END IF;
    RETURN CASE WHEN v_source IN ('session', 'shared', 'endpoint') THEN v_source END;
END;
$$;

COMMENT ON FUNCTION pgingest._query_vector_source() IS
'Where the query vector of the search being run came from (session, shared or endpoint: set by embed_query), '
'else NULL; clears it, so that the next search does not inherit it.';

-- The signature before review 2026-12-07 (finding 9): the vector's source read from the session.
DROP FUNCTION IF EXISTS pgingest._log_search(text, text, timestamptz, integer, jsonb, text[], text, bigint[], text[]);

CREATE OR REPLACE FUNCTION pgingest._log_search(
    p_kind text,
    p_model text,
    p_started timestamptz,
    p_k integer,
    p_filter jsonb,
    p_sources text[],
    p_query_text text,
    p_doc_ids bigint[],
    p_doc_keys text[],
    p_query_vector text DEFAULT NULL
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_text boolean;
BEGIN
    -- The log never makes a search fail: any error here (the table locked, full, dropped) skips it.
    BEGIN
        v_text := coalesce(
            (SELECT c.value IN ('on', 'true') FROM pgingest.config AS c WHERE c.key = 'query_log_text'), FALSE
        );
        INSERT INTO pgingest.query_log (
            kind, model, latency_ms, k, filter_keys, filter, sources, query_hash, query_text, doc_ids, doc_keys,
            query_vector
        ) VALUES (
            p_kind,
            coalesce(p_model, '?'),
            greatest(1000 * extract(EPOCH FROM clock_timestamp() - p_started), 0),
            p_k,
            coalesce((SELECT array_agg(e.key ORDER BY e.key) FROM jsonb_object_keys(
                CASE WHEN jsonb_typeof(p_filter) = 'object' THEN p_filter ELSE '{}'::jsonb END
            ) AS e (key)), '{}'),
            CASE WHEN v_text THEN p_filter END,
            p_sources,
            md5(pgingest._query_key(p_query_text)),
            CASE WHEN v_text THEN p_query_text END,
            coalesce(p_doc_ids, '{}'),
            coalesce(p_doc_keys, '{}'),
            -- the text searches' (pgingest._query_vector_source), never a plain search's
            CASE WHEN p_kind <> 'search' AND p_query_vector IN ('session', 'shared', 'endpoint') THEN p_query_vector END
        );
    EXCEPTION WHEN OTHERS THEN
        RAISE LOG 'pgingest: a search was not logged: % (SQLSTATE %)', sqlerrm, sqlstate;
    END;
END;
$$;

COMMENT ON FUNCTION pgingest._log_search(
    text, text, timestamptz, integer, jsonb, text[], text, bigint[], text[], text
) IS
'Writes one pgingest.query_log row (the query text and filter only with query_log_text = on, the md5 of the '
'normalised text always; query_vector: where the vector came from, pgingest._query_vector_source); an error '
'skips the row (a LOG line in the server log), never fails the search.';

-- The shared query-vector cache (issue 20, item 4): embed_query (plpy_support) looks a query up
-- here after its per-backend cache misses, and stores what it embedded. Read on primaries and
-- replicas alike, written on the primary only; rows hold a hash, never the query text.

CREATE OR REPLACE FUNCTION pgingest._query_cache_vector(
    p_key bytea,
    p_model text,
    p_dimensions integer,
    p_vector vector DEFAULT NULL
)
RETURNS vector
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
-- A row another open transaction is inserting, the table locked by DDL: given up on, never waited for.
SET lock_timeout = '100ms'
AS $$
DECLARE
    -- Rows belong to the login role that computed them: another role cannot plant a vector for them.
    v_role oid := (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = session_user);
    v_max text;
    v_keep text;
    v_found vector;
    v_counter text;
    v_count text;
    v_context text;
    v_lines text[];
    v_total bigint;
    v_victim oid;
BEGIN
    SELECT max(c.value) FILTER (WHERE c.key = 'query_cache_max_rows'),
           max(c.value) FILTER (WHERE c.key = 'query_cache_keep')
    INTO v_max, v_keep
    FROM pgingest.config AS c WHERE c.key IN ('query_cache_max_rows', 'query_cache_keep');
    -- Off (0 rows), or a hand-edited value that is not a row count: neither read nor written.
    IF v_max IS NULL OR v_max !~ '^\s*[0-9]{1,12}\s*$' OR v_max::bigint = 0 OR v_role IS NULL
        OR p_key IS NULL OR octet_length(p_key) <> 32 OR p_model IS NULL OR p_dimensions IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_vector IS NULL THEN
        SELECT q.embedding INTO v_found
        FROM pgingest.query_cache AS q
        WHERE q.cache_key = p_key AND q.role_id = v_role AND q.model = p_model
            AND vector_dims(q.embedding) = p_dimensions
            AND q.created_at > now() - coalesce(v_keep, '7 days')::interval;
        -- This session's counts (pgingest.query_cache_shared_stats()): custom settings, which a
        -- read replica can write too.
        v_counter := 'pgingest.query_cache_shared_' || CASE WHEN v_found IS NULL THEN 'misses' ELSE 'hits' END;
        v_count := current_setting(v_counter, TRUE);
        PERFORM set_config(
            v_counter, (CASE WHEN v_count ~ '^[0-9]{1,15}$' THEN v_count::bigint ELSE 0 END + 1)::text, FALSE
        );
        RETURN v_found;
    END IF;
    -- Stored only from embed_query, with what its endpoint call just returned (review 2026-12-07,
    -- finding 2): a reader may call this function (embed_query runs as the caller), and a vector of
    -- its choosing would be served to every session of its login. The call stack says who calls: the
    -- statement plpy_support._shared_store prepares, run by the PL/Python function embed_query; a
    -- role that may not create PL/Python functions cannot make that stack, nor forge its lines (the
    -- SQL statement line must end the first line of the statement, which no valid statement does).
    -- Read by what no translation of the messages changes (lc_messages: "SQL statement" and
    -- "PL/Python function" are translated): the quoted statement that ends line 2, the quoted
    -- function name that ends line 3 (a PL/Python function's line; the other languages' end
    -- otherwise: "... line N at EXECUTE", "... statement 1").
    GET DIAGNOSTICS v_context = PG_CONTEXT;
    v_lines := string_to_array(v_context, E'\n');
    IF cardinality(v_lines) < 3
        OR right(v_lines[2], 61) IS DISTINCT FROM '"SELECT pgingest._query_cache_vector($1, $2, $3, $4::vector)"'
        OR right(v_lines[3], 13) IS DISTINCT FROM '"embed_query"' THEN
        RETURN NULL;
    END IF;
    -- Nothing can be written on a read replica or in a read-only transaction: not stored.
    IF pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on' THEN
        RETURN NULL;
    END IF;
    -- Only a vector of a live model's dimension.
    IF vector_dims(p_vector) <> p_dimensions OR NOT EXISTS (
        SELECT 1 FROM pgingest.models AS m
        WHERE m.name = p_model AND m.state <> 'retired' AND m.dimensions = p_dimensions
    ) THEN
        RETURN NULL;
    END IF;
    -- The bound (query_cache_max_rows) is kept as rows come in, and a role makes room at the cost of
    -- the role that holds the most rows (itself when it holds as many): one role's many questions
    -- evict its own older rows, never those of a role that holds fewer, as a prune of the newest rows
    -- of all would. Rows past their age go first, whoever's they are.
    IF EXISTS (
        SELECT 1 FROM pgingest.query_cache AS q
        WHERE q.cache_key = p_key AND q.role_id = v_role
            AND q.created_at > now() - coalesce(v_keep, '7 days')::interval
    ) THEN
        RETURN NULL;  -- a fresh row stays as it is
    END IF;
    SELECT count(*) INTO v_total FROM pgingest.query_cache AS q;
    IF v_total >= v_max::bigint THEN
        DELETE FROM pgingest.query_cache AS q
        WHERE q.created_at <= now() - coalesce(v_keep, '7 days')::interval;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total - v_count::bigint;
    END IF;
    IF v_total >= v_max::bigint THEN
        SELECT q.role_id INTO v_victim
        FROM pgingest.query_cache AS q
        GROUP BY q.role_id
        ORDER BY count(*) DESC, q.role_id = v_role DESC, q.role_id
        LIMIT 1;
        DELETE FROM pgingest.query_cache AS q
        WHERE (q.cache_key, q.role_id) IN (
            SELECT o.cache_key, o.role_id FROM pgingest.query_cache AS o
            WHERE o.role_id = v_victim
            ORDER BY o.created_at, o.cache_key
            LIMIT v_total - v_max::bigint + 1
        );
    END IF;
    INSERT INTO pgingest.query_cache AS q (role_id, cache_key, model, embedding)
    VALUES (v_role, p_key, p_model, p_vector)
    ON CONFLICT (cache_key, role_id) DO UPDATE
        SET model = EXCLUDED.model, embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at
        -- Only a row past its age is rewritten: a fresh one stays as it is.
        WHERE q.created_at <= now() - coalesce(v_keep, '7 days')::interval;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgingest._query_cache_vector(bytea, text, integer, vector) IS
'The shared query-vector cache (pgingest.query_cache), for embed_query: without p_vector, the vector cached for '
'p_key (sha256 of the model''s identity, endpoint and normalised query text) by this login role, younger than '
'query_cache_keep, else NULL (counted in pgingest.query_cache_shared_stats()); with p_vector, stores it when '
'called by embed_query with what its endpoint returned (any other caller: nothing stored), on the primary only '
'(never in recovery or a read-only transaction) and only for a live model of that dimension; at '
'query_cache_max_rows, the role holding the most rows (the caller when it holds as many) gives up its oldest. '
'query_cache_max_rows = 0 turns it off.';

CREATE OR REPLACE FUNCTION pgingest.query_cache_shared_stats()
RETURNS TABLE (hits bigint, misses bigint)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT
        CASE WHEN h.v ~ '^[0-9]{1,15}$' THEN h.v::bigint ELSE 0 END,
        CASE WHEN m.v ~ '^[0-9]{1,15}$' THEN m.v::bigint ELSE 0 END
    FROM (SELECT current_setting('pgingest.query_cache_shared_hits', TRUE) AS v) AS h
    CROSS JOIN (SELECT current_setting('pgingest.query_cache_shared_misses', TRUE) AS v) AS m
$$;

COMMENT ON FUNCTION pgingest.query_cache_shared_stats() IS
'This session''s lookups of the shared query-vector cache (pgingest.query_cache) after a miss of its own cache '
'(pgingest.query_cache_stats()): hits (no request to the endpoint) and misses. On replicas as well.';

CREATE OR REPLACE FUNCTION pgingest.search(
    query_vector vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    per_document boolean DEFAULT FALSE,
    model text DEFAULT NULL,
    sources text[] DEFAULT NULL,
    query_text text DEFAULT NULL,
    started_at timestamptz DEFAULT NULL
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
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    -- A caller's start (search_text: before the query's embedding) counts from this statement at most.
    v_t0 timestamptz := greatest(coalesce(search.started_at, clock_timestamp()), statement_timestamp());
    v_r record;
    v_ids bigint[] := '{}';
    v_keys text[] := '{}';
    v_model text;
    -- Where the query vector came from (search_text: embed_query), taken once and cleared.
    v_source text := pgingest._query_vector_source();
BEGIN
    IF NOT pgingest._query_log_sampled() THEN
        RETURN QUERY SELECT * FROM pgingest._nearest(
            search.query_vector, search.k, search.filter, search.per_document, search.model, search.sources
        );
        RETURN;
    END IF;
    FOR v_r IN
        SELECT * FROM pgingest._nearest(
            search.query_vector, search.k, search.filter, search.per_document, search.model, search.sources
        )
    LOOP
        doc_id := v_r.doc_id;
        doc_key := v_r.doc_key;
        title := v_r.title;
        ordinal := v_r.ordinal;
        content := v_r.content;
        distance := v_r.distance;
        metadata := v_r.metadata;
        model_name := v_r.model_name;
        source := v_r.source;
        source_key := v_r.source_key;
        v_model := v_r.model_name;
        v_ids := v_ids || v_r.doc_id;
        v_keys := v_keys || v_r.doc_key;
        RETURN NEXT;
    END LOOP;
    IF v_model IS NULL THEN
        v_model := coalesce(search.model, pgingest.route_model(NULL));
    END IF;
    PERFORM pgingest._log_search(
        CASE WHEN search.query_text IS NULL THEN 'search' ELSE 'search_text' END, v_model, v_t0, search.k,
        search.filter, search.sources, search.query_text, v_ids, v_keys, v_source
    );
END;
$$;

COMMENT ON FUNCTION pgingest.search(vector, integer, jsonb, boolean, text, text[], text, timestamptz) IS
'Nearest chunks to a query vector under the active model (or `model`): its store joined to the chunks of its '
'profile on (doc_id, ordinal, chunk_hash), so a vector is never served with another version''s text. Optionally '
'filtered (jsonb: promoted keys use their typed indexed columns, other keys containment) and grouped one row '
'per document. distance is the model''s metric (cosine distance, negative inner product or L2); model_name '
'names the model that served. Spans every source, or those named in `sources`; source and source_key (the '
'row''s key as jsonb) say where each row comes from: join back with, e.g., ON a.id = (s.source_key ->> '
'''id'')::bigint. A sample of searches goes to pgingest.query_log when it is on (query_text: what was asked, '
'logged as a hash unless query_log_text is on; started_at: when the caller started, for the latency).';

-- Obsolete signature (before match_all): dropped so that calls stay unambiguous; hybrid_search_text
-- (plpython/) depends on it and is re-created after this folder.
SELECT pgingest._drop_old_routine(
    'pgingest.hybrid_search(text, vector, integer, jsonb, double precision, double precision, integer, integer)'
);
-- The signature before traffic shifting (issue 20): no model, no started_at, no model_name column.
SELECT pgingest._drop_old_routine(
    'pgingest.hybrid_search(text, vector, integer, jsonb, double precision, double precision, integer, integer, '
    'boolean, text[])'
);
-- The signature before issue 21 (point 2): no per_document, no text_ranking, no metadata column.
SELECT pgingest._drop_old_routine(
    'pgingest.hybrid_search(text, vector, integer, jsonb, double precision, double precision, integer, integer, '
    'boolean, text[], text, timestamptz)'
);

-- Hybrid search's defaults, chosen by `make eval`'s grid on the tuning half of the project's question set
-- (eval/hybrid_defaults.json records the choice, tests/test_hybrid_quality.py checks both agree;
-- docs/retrieval.md has the figures).
CREATE OR REPLACE FUNCTION pgingest.hybrid_search_defaults()
RETURNS TABLE (
    text_ranking text,
    vector_weight double precision,
    text_weight double precision,
    rrf_k integer,
    candidates integer
)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path FROM CURRENT
AS $$
    SELECT 'bm25'::text, 1.0::float8, 0.4::float8, 5, 100
$$;

COMMENT ON FUNCTION pgingest.hybrid_search_defaults() IS
'The defaults of hybrid_search / hybrid_search_text (a NULL argument takes them): the text side''s ranking '
'(bm25), the weights and k of the reciprocal rank fusion, the candidates taken from each side. Chosen by '
'make eval on the tuning half of the project''s question set (docs/retrieval.md).';

-- The text side's query terms: the question's lexemes (stop words dropped by the configuration), and the
-- parts of its dotted names as well as the names whole (chunks.tsv holds both: sql/060).
CREATE OR REPLACE FUNCTION pgingest._text_query_terms(p_config regconfig, p_query text)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path FROM CURRENT
RETURN (
    SELECT coalesce(array_agg(l.lexeme ORDER BY l.lexeme), '{}')
    FROM (
        SELECT l.lexeme
        FROM
            unnest(
                tsvector_to_array(to_tsvector(p_config, p_query) || to_tsvector(p_config, translate(p_query, '.', ' ')))
            ) AS l (lexeme)
        ORDER BY l.lexeme
        LIMIT 64
    ) AS l
);

COMMENT ON FUNCTION pgingest._text_query_terms(regconfig, text) IS
'Hybrid search''s text terms for a question: its lexemes under the configuration (stop words dropped), the '
'parts of its dotted names added to the names whole; at most 64.';

CREATE OR REPLACE FUNCTION pgingest.hybrid_search(
    query_text text,
    query_vector vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    vector_weight double precision DEFAULT NULL,
    text_weight double precision DEFAULT NULL,
    rrf_k integer DEFAULT NULL,
    candidates integer DEFAULT NULL,
    match_all boolean DEFAULT FALSE,
    sources text[] DEFAULT NULL,
    model text DEFAULT NULL,
    started_at timestamptz DEFAULT NULL,
    per_document boolean DEFAULT FALSE,
    text_ranking text DEFAULT NULL
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
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_cfg regconfig;
    v_pred text := pgingest._filter_predicate(filter) || ' AND ' || pgingest._sources_predicate(sources);
    v_def record;
    v_ranking text;
    v_wv double precision;
    v_wt double precision;
    v_rrf_k integer;
    v_candidates integer;
    v_terms text[];
    v_idf double precision[];
    v_n double precision;
    v_share double precision;
    v_query tsquery;
    v_m pgingest.models;
    v_t0 timestamptz := greatest(coalesce(hybrid_search.started_at, clock_timestamp()), statement_timestamp());
    v_log boolean := pgingest._query_log_sampled();
    v_r record;
    v_ids bigint[] := '{}';
    v_keys text[] := '{}';
    v_sql text;
    v_side integer;
    v_rows jsonb;
    v_got bigint;
    v_nv bigint;
    v_nt bigint;
    -- Where the query vector came from (hybrid_search_text: embed_query), taken once: see search().
    v_source text := pgingest._query_vector_source();
BEGIN
    SELECT * INTO v_def FROM pgingest.hybrid_search_defaults();
    v_ranking := lower(coalesce(hybrid_search.text_ranking, v_def.text_ranking));
    v_wv := coalesce(hybrid_search.vector_weight, v_def.vector_weight);
    v_wt := coalesce(hybrid_search.text_weight, v_def.text_weight);
    v_rrf_k := coalesce(hybrid_search.rrf_k, v_def.rrf_k);
    v_candidates := coalesce(hybrid_search.candidates, v_def.candidates);
    -- rrf_k + rank is a divisor (rank >= 1): rrf_k < 1 could make it 0 (issue 18, item 14).
    IF v_rrf_k < 1 THEN
        RAISE EXCEPTION 'pgingest: rrf_k must be at least 1, not %', v_rrf_k
            USING ERRCODE = 'invalid_parameter_value', HINT = format('NULL takes the default (%s).', v_def.rrf_k);
    END IF;
    IF v_ranking NOT IN ('bm25', 'ts_rank_cd') THEN
        RAISE EXCEPTION 'pgingest: text_ranking must be bm25 or ts_rank_cd, not %', hybrid_search.text_ranking
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_wv < 0 OR v_wt < 0 OR v_wv = 'NaN' OR v_wt = 'NaN' THEN
        RAISE EXCEPTION 'pgingest: vector_weight and text_weight must be at least 0, not % and %', v_wv, v_wt
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'pgingest: k must be between 1 and 1000, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_candidates < 1 OR v_candidates > 1000 THEN
        RAISE EXCEPTION 'pgingest: candidates must be between 1 and 1000, not %', v_candidates
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('The chunks taken from each side; NULL takes the default (%s). k larger than '
                                'candidates takes k from each side.', v_def.candidates);
    END IF;
    IF hybrid_search.model IS NULL THEN
        SELECT * INTO v_m FROM pgingest.models AS m WHERE m.state = 'active';
    ELSE
        v_m := pgingest._model(hybrid_search.model);
    END IF;
    SELECT c.value::regconfig INTO v_cfg FROM pgingest.config AS c WHERE c.key = 'text_search_config';
    IF v_cfg IS NULL THEN
        RAISE EXCEPTION 'hybrid search needs full-text search on chunks, which is off'
        USING ERRCODE = '55000',
              HINT = 'An admin runs SELECT pgingest.set_text_search_config(''english''); it adds chunks.tsv '
                     'and its index (rewrites pgingest.chunks).';
    END IF;
    v_terms := pgingest._text_query_terms(v_cfg, query_text);
    IF match_all THEN
        v_query := websearch_to_tsquery(v_cfg, query_text);
    ELSE
        -- Natural-language questions: any of the query's terms.
        SELECT coalesce(string_agg(quote_literal(t.lexeme), ' | '), '')::tsquery INTO v_query
        FROM unnest(v_terms) AS t (lexeme);
    END IF;
    IF v_ranking = 'bm25' THEN
        -- BM25 (k1 1.2, b 0: chunks are of bounded size, so no average length to keep right), over the
        -- chunks of the model's profile. Each term's document frequency is counted through the GIN index
        -- of chunks.tsv; the profile's number of chunks is PostgreSQL's own estimate (pg_class.reltuples
        -- times the profile's share among profile_id's most common values in pg_stats, both kept by
        -- ANALYZE and autovacuum), counted only while the table has no statistics. Never a scan of
        -- every chunk per search.
        SELECT sum(greatest(c.reltuples, 0)) INTO v_n
        FROM pg_catalog.pg_partition_tree('pgingest.chunks'::regclass) AS p
        INNER JOIN pg_catalog.pg_class AS c ON c.oid = p.relid
        WHERE p.isleaf;
        SELECT f.freq INTO v_share
        FROM pg_catalog.pg_stats AS s
        CROSS JOIN LATERAL unnest(s.most_common_vals::text::integer [], s.most_common_freqs) AS f (profile_id, freq)
        WHERE s.schemaname = 'pgingest' AND s.tablename = 'chunks' AND s.attname = 'profile_id'
            AND f.profile_id = v_m.profile_id
        ORDER BY s.inherited DESC
        LIMIT 1;
        v_n := v_n * v_share;
        IF coalesce(v_n, 0) < 1 THEN
            SELECT count(*) INTO v_n FROM pgingest.chunks AS c WHERE c.profile_id = v_m.profile_id;
        END IF;
        SELECT coalesce(array_agg(s.lexeme ORDER BY s.lexeme), '{}'),
               coalesce(array_agg(ln(1 + (greatest(v_n, s.df) - s.df + 0.5) / (s.df + 0.5)) ORDER BY s.lexeme), '{}')
        INTO v_terms, v_idf
        FROM (
            SELECT t.lexeme, (
                SELECT count(*) FROM pgingest.chunks AS c
                WHERE c.profile_id = v_m.profile_id AND c.tsv @@ quote_literal(t.lexeme)::tsquery
            )::float8 AS df
            FROM unnest(v_terms) AS t (lexeme)
        ) AS s
        WHERE s.df > 0;
    END IF;
    IF v_m.name IS NULL THEN
        RAISE EXCEPTION 'pgingest: no active model'
            USING ERRCODE = 'undefined_object', HINT = 'Register one with pgingest.register_model(...).';
    END IF;
    v_sql := format(
        $sql$
        WITH v AS (
            SELECT s.doc_id, s.ordinal, row_number() OVER (ORDER BY s.distance)::integer AS rnk
            FROM pgingest._nearest($1, $3, $4, FALSE, $12, $11) AS s
        ), t AS (
            SELECT x.doc_id, x.ordinal,
                   row_number() OVER (ORDER BY x.score DESC NULLS LAST, x.doc_id, x.ordinal)::integer AS rnk
            FROM (
                SELECT c.doc_id, c.ordinal, %2$s AS score
                FROM pgingest.chunks AS c
                -- Only the chunks the searching model holds, as the vector side: the profile's rows
                -- are shared by its models, and one of them may keep a version (text) this model
                -- no longer serves (dead-lettered, removed).
                INNER JOIN pgingest.%3$I AS s
                    ON s.doc_id = c.doc_id AND s.ordinal = c.ordinal AND s.chunk_hash = c.chunk_hash
                INNER JOIN pgingest.source_documents AS d ON d.doc_id = c.doc_id
                CROSS JOIN (SELECT $2::tsquery AS q) AS q
                WHERE c.profile_id = $10 AND c.tsv @@ q.q AND %1$s
            ) AS x
            ORDER BY x.score DESC NULLS LAST, x.doc_id, x.ordinal
            LIMIT $3
        ), fused AS (
            SELECT coalesce(v.doc_id, t.doc_id) AS doc_id, coalesce(v.ordinal, t.ordinal) AS ordinal,
                   coalesce($6 / ($8 + v.rnk), 0) + coalesce($7 / ($8 + t.rnk), 0) AS score,
                   v.rnk AS vector_rank, t.rnk AS text_rank
            FROM v FULL JOIN t ON v.doc_id = t.doc_id AND v.ordinal = t.ordinal
        ), per_doc AS (
            -- One row a document: its best rank on each side fused, shown with its best fused chunk.
            SELECT DISTINCT ON (f.doc_id) f.doc_id, f.ordinal,
                   coalesce($6 / ($8 + min(f.vector_rank) OVER w), 0)
                   + coalesce($7 / ($8 + min(f.text_rank) OVER w), 0) AS score,
                   (min(f.vector_rank) OVER w)::integer AS vector_rank,
                   (min(f.text_rank) OVER w)::integer AS text_rank
            FROM fused AS f
            WINDOW w AS (PARTITION BY f.doc_id)
            ORDER BY f.doc_id, f.score DESC, f.vector_rank NULLS LAST, f.ordinal
        ), ranked AS (
            SELECT * FROM fused WHERE NOT $15
            UNION ALL
            SELECT * FROM per_doc WHERE $15
        )
        SELECT f.doc_id, d.doc_key, d.title, f.ordinal, c.content, f.score, f.vector_rank, f.text_rank,
               d.source, d.source_key, $12 AS model_name, d.metadata,
               (SELECT count(*) FROM v) AS n_v, (SELECT count(*) FROM t) AS n_t
        FROM ranked AS f
        INNER JOIN pgingest.source_documents AS d ON d.doc_id = f.doc_id
        INNER JOIN pgingest.%3$I AS s ON s.doc_id = f.doc_id AND s.ordinal = f.ordinal
        INNER JOIN pgingest.chunks AS c
            ON c.profile_id = $10 AND c.doc_id = f.doc_id AND c.ordinal = f.ordinal AND c.chunk_hash = s.chunk_hash
        ORDER BY f.score DESC, f.doc_id, f.ordinal
        LIMIT $9
        $sql$,
        v_pred,
        CASE WHEN v_ranking = 'bm25'
            -- sum over the question's terms in the chunk of idf * tf * (k1 + 1) / (tf + k1); 0 for a
            -- chunk that holds none of them (matched through a negation: 'x or -y')
            THEN 'coalesce((SELECT sum(w.idf * (coalesce(array_length(u.positions, 1), 1) * 2.2)'
                 ' / (coalesce(array_length(u.positions, 1), 1) + 1.2))'
                 -- only the question's terms unnested: marked with weight A, then kept
                 ' FROM unnest(ts_filter(setweight(c.tsv, ''A'', $13::text[]), ''{a}''))'
                 ' AS u INNER JOIN unnest($13::text[], $14::float8[]) AS w (lexeme, idf)'
                 ' ON w.lexeme = u.lexeme), 0)'
            ELSE 'ts_rank_cd(c.tsv, q.q)' END,
        v_m.store_name
    );
    v_side := greatest(v_candidates, k);
    IF coalesce(per_document, FALSE) THEN
        -- One row a document: the candidates of both sides may come from fewer than k documents (a
        -- long one holds many of them). Widened (doubled) until k documents, both sides' end (fewer
        -- than asked for) or 1000 candidates a side. Ranks do not change as a side widens.
        LOOP
            EXECUTE format('SELECT jsonb_agg(to_jsonb(q) ORDER BY q.score DESC, q.doc_id, q.ordinal), count(*), '
                           'coalesce(max(q.n_v), 0), coalesce(max(q.n_t), 0) FROM (%s) AS q', v_sql)
                INTO v_rows, v_got, v_nv, v_nt
                USING query_vector, v_query, v_side, filter, query_text,
                      v_wv, v_wt, v_rrf_k::double precision, k, v_m.profile_id, sources, v_m.name, v_terms, v_idf,
                      TRUE;
            EXIT WHEN v_got >= k OR v_got = 0 OR (v_nv < v_side AND v_nt < v_side) OR v_side >= 1000;
            v_side := least(v_side * 2, 1000);
        END LOOP;
        v_sql := $sql$
            SELECT (e.r ->> 'doc_id')::bigint AS doc_id, e.r ->> 'doc_key' AS doc_key, e.r ->> 'title' AS title,
                   (e.r ->> 'ordinal')::integer AS ordinal, e.r ->> 'content' AS content,
                   (e.r ->> 'score')::float8 AS score, (e.r ->> 'vector_rank')::integer AS vector_rank,
                   (e.r ->> 'text_rank')::integer AS text_rank, e.r ->> 'source' AS source,
                   nullif(e.r -> 'source_key', 'null') AS source_key, e.r ->> 'model_name' AS model_name,
                   nullif(e.r -> 'metadata', 'null') AS metadata
            FROM jsonb_array_elements(coalesce($16, '[]')) WITH ORDINALITY AS e (r, n)
            ORDER BY e.n
        $sql$;
    END IF;
    FOR v_r IN EXECUTE v_sql
        USING query_vector, v_query, v_side, filter, query_text,
              v_wv, v_wt, v_rrf_k::double precision, k, v_m.profile_id, sources, v_m.name, v_terms, v_idf,
              coalesce(per_document, FALSE), v_rows
    LOOP
        doc_id := v_r.doc_id;
        doc_key := v_r.doc_key;
        title := v_r.title;
        ordinal := v_r.ordinal;
        content := v_r.content;
        score := v_r.score;
        vector_rank := v_r.vector_rank;
        text_rank := v_r.text_rank;
        source := v_r.source;
        source_key := v_r.source_key;
        model_name := v_r.model_name;
        metadata := v_r.metadata;
        IF v_log THEN
            v_ids := v_ids || v_r.doc_id;
            v_keys := v_keys || v_r.doc_key;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_log THEN
        PERFORM pgingest._log_search(
            'hybrid_search', v_m.name, v_t0, k, filter, sources, query_text, v_ids, v_keys, v_source
        );
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest.hybrid_search(
    text, vector, integer, jsonb, double precision, double precision,
    integer, integer, boolean, text[], text, timestamptz, boolean, text
) IS
'Hybrid search: vector search (the active model''s store, or `model`''s) and full-text search (chunks.tsv of '
'its profile) fused by weighted reciprocal rank fusion: score = vector_weight/(rrf_k + vector rank) + '
'text_weight/(rrf_k + text rank), over the best `candidates` chunks of each side. The text side matches any '
'of the question''s terms (its lexemes without stop words, dotted names whole and in parts), or all of them '
'in websearch syntax with match_all => true, ranked by BM25 (text_ranking ''bm25'': idf from each term''s '
'document frequency, tf saturated with k1 1.2) or by ts_rank_cd (''ts_rank_cd'', the ranking before issue '
'21). Either side serves only the chunks the model holds (its store). per_document => true: one row a '
'document, its best rank on each side fused, shown with its best chunk (the candidates widened, up to 1000 '
'a side, until k documents). candidates: 1 to 1000 (k when k is larger). A NULL weight, rrf_k, candidates '
'or text_ranking takes pgingest.hybrid_search_defaults() (chosen by make eval). Returns each document''s '
'metadata; model_name says which model served; logged to pgingest.query_log like search().';
