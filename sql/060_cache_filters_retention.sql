-- Embedding cache maintenance, promoted metadata filters, text search configuration, dead-letter
-- retention.

CREATE OR REPLACE FUNCTION pgingest.clear_embedding_cache(p_model text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_n bigint;
BEGIN
    DELETE FROM pgingest.embedding_cache AS e WHERE e.model = (pgingest._model(p_model)).name;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.clear_embedding_cache(text) IS
'Drops a model''s retained vectors (pgingest.embedding_cache). Vectors of live chunks are still reused '
'for identical inputs: register a new model when the provider''s model itself changed.';

-- The shared query-vector cache's bounds (issue 20, item 4): called by prune_embedding_cache(), so
-- run_maintenance() applies them for workers, admins and pg_cron.
CREATE OR REPLACE FUNCTION pgingest._prune_query_cache()
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_keep interval;
    v_max bigint;
    v_n bigint := 0;
    v_k bigint;
    v_cap bigint;
BEGIN
    SELECT c.value::interval INTO v_keep FROM pgingest.config AS c WHERE c.key = 'query_cache_keep';
    SELECT c.value::bigint INTO v_max FROM pgingest.config AS c WHERE c.key = 'query_cache_max_rows';
    -- Past their age, or of a model no longer live (its key can never match again).
    DELETE FROM pgingest.query_cache AS q
    WHERE q.created_at < now() - coalesce(v_keep, interval '7 days')
        OR NOT EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.name = q.model AND m.state <> 'retired');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    -- Over max_rows (0: the cache is off, every row goes), the roles holding the most rows give up
    -- their oldest, as at the store (_query_cache_vector, review 2026-12-07): each role keeps at
    -- most its newest v_cap rows, v_cap the largest that brings the table within the bound (the
    -- newest max_rows of all roles together would let one role's burst evict every other's).
    IF (SELECT count(*) FROM pgingest.query_cache) > coalesce(v_max, 20000) THEN
        WITH r AS (SELECT count(*) AS n FROM pgingest.query_cache GROUP BY role_id)
        SELECT max(c.cap) INTO v_cap
        FROM generate_series(0, (SELECT max(r.n) FROM r)) AS c (cap)
        WHERE (SELECT sum(least(r.n, c.cap)) FROM r) <= coalesce(v_max, 20000);
        DELETE FROM pgingest.query_cache AS q
        USING (
            SELECT o.cache_key, o.role_id,
                   row_number() OVER (PARTITION BY o.role_id ORDER BY o.created_at DESC, o.cache_key) AS k
            FROM pgingest.query_cache AS o
        ) AS x
        WHERE x.k > v_cap AND q.cache_key = x.cache_key AND q.role_id = x.role_id;
        GET DIAGNOSTICS v_k = ROW_COUNT;
        v_n := v_n + v_k;
    END IF;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest._prune_query_cache() IS
'Applies the shared query-vector cache''s bounds: rows older than query_cache_keep (7 days) or of a model no '
'longer live go, then, over query_cache_max_rows (20000), the oldest rows of the roles holding the most; returns '
'how many rows were deleted.';

CREATE OR REPLACE FUNCTION pgingest.prune_embedding_cache()
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_max bigint;
    v_n bigint;
BEGIN
    SELECT c.value::bigint INTO v_max FROM pgingest.config AS c WHERE c.key = 'cache_max_rows';
    WITH ranked AS (
        SELECT e.model, e.chunk_hash,
               row_number() OVER (PARTITION BY e.model ORDER BY e.used_at DESC, e.chunk_hash) AS rn
        FROM pgingest.embedding_cache AS e
    )
    DELETE FROM pgingest.embedding_cache AS e
    USING ranked AS r
    WHERE e.model = r.model AND e.chunk_hash = r.chunk_hash AND r.rn > coalesce(v_max, 1000000);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n + pgingest._prune_query_cache();
END;
$$;

COMMENT ON FUNCTION pgingest.prune_embedding_cache() IS
'Keeps the cache_max_rows most recently used cached vectors per model, and applies the shared query-vector '
'cache''s bounds (pgingest._prune_query_cache); returns how many rows of both were dropped.';

-- Typed accessors for promoted metadata keys: immutable (generated columns need it), and the error
-- names the key.
CREATE OR REPLACE FUNCTION pgingest._meta_cast(p_metadata jsonb, p_key text, p_type text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_value jsonb := p_metadata -> p_key;
BEGIN
    IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF p_type IN ('integer', 'bigint', 'numeric') AND jsonb_typeof(v_value) <> 'number'
       OR p_type = 'boolean' AND jsonb_typeof(v_value) <> 'boolean'
       OR p_type = 'text' AND jsonb_typeof(v_value) NOT IN ('string', 'number', 'boolean')
       OR p_type = 'text[]' AND jsonb_typeof(v_value) <> 'array' THEN
        RAISE EXCEPTION 'pgingest: metadata key "%" must be %, got %', p_key, p_type, v_value::text
            USING ERRCODE = 'invalid_text_representation',
                  HINT = 'The key was promoted with pgingest.register_filter(); fix the value or drop the filter.';
    END IF;
    IF p_type IN ('integer', 'bigint') AND (v_value #>> '{}') !~ '^-?[0-9]+$' THEN
        RAISE EXCEPTION 'pgingest: metadata key "%" must be %, got %', p_key, p_type, v_value::text
            USING ERRCODE = 'invalid_text_representation';
    END IF;
    RETURN v_value #>> '{}';
END;
$$;

COMMENT ON FUNCTION pgingest._meta_cast(jsonb, text, text) IS
'Checks a metadata value against a promoted key''s type; raises 22P02 naming the key.';

CREATE OR REPLACE FUNCTION pgingest._meta_text_array(p_metadata jsonb, p_key text)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN (
    SELECT array_agg(x.v ORDER BY x.n)
    FROM jsonb_array_elements_text(
        CASE
            WHEN pgingest._meta_cast(p_metadata, p_key, 'text[]') IS NULL THEN '[]'::jsonb
            ELSE p_metadata -> p_key
        END
    ) WITH ORDINALITY AS x (v, n)
);

COMMENT ON FUNCTION pgingest._meta_text_array(jsonb, text) IS
'A promoted text[] metadata key as an array (NULL when absent).';

CREATE OR REPLACE FUNCTION pgingest.register_filter(key text, type text DEFAULT 'text')
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_column text;
    v_expr text;
BEGIN
    IF key IS NULL OR key !~ '^[a-zA-Z_][a-zA-Z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'pgingest: invalid filter key %', coalesce(quote_literal(key), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A filter key is 1 to 41 letters, digits or _, not starting with a digit.';
    END IF;
    IF type NOT IN ('text', 'integer', 'bigint', 'numeric', 'boolean', 'text[]') THEN
        RAISE EXCEPTION 'pgingest: unsupported filter type %', quote_literal(type)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use text, integer, bigint, numeric, boolean or text[].';
    END IF;
    IF EXISTS (SELECT 1 FROM pgingest.filters AS f WHERE f.key = register_filter.key) THEN
        RAISE EXCEPTION 'pgingest: metadata key % is already promoted', quote_literal(key)
            USING ERRCODE = 'duplicate_object';
    END IF;
    v_column := 'meta_' || lower(key);
    v_expr := CASE type
        WHEN 'text[]' THEN format('pgingest._meta_text_array(metadata, %L)', key)
        ELSE format('pgingest._meta_cast(metadata, %L, %L)::%s', key, type, type)
    END;
    INSERT INTO pgingest.filters (key, type, column_name) VALUES (key, type, v_column);
    -- The column and index rewrite pgingest.documents under ACCESS EXCLUSIVE, which every
    -- application query would queue behind: wait at most the caller's lock_timeout for the lock,
    -- 5 s when the caller set none (docs/operations.md; issue 18, item 14).
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '5s', TRUE);
    END IF;
    EXECUTE format('ALTER TABLE pgingest.documents ADD COLUMN %I %s GENERATED ALWAYS AS (%s) STORED',
                   v_column, type, v_expr);
    EXECUTE format('CREATE INDEX %I ON pgingest.documents USING %s (%I)',
                   'documents_' || v_column || '_idx',
                   CASE WHEN type = 'text[]' THEN 'gin' ELSE 'btree' END, v_column);
    -- The rows of attached tables get it as an indexed expression over their metadata.
    PERFORM pgingest._refresh_source_documents_view();
    RETURN v_column;
END;
$$;

COMMENT ON FUNCTION pgingest.register_filter(text, text) IS
'Promotes a metadata key to a typed, indexed column of pgingest.documents (B-tree, GIN for text[]); '
'search() then filters on it through that index. Documents whose value fails the type are refused at '
'INSERT with an error naming the key.';

CREATE OR REPLACE FUNCTION pgingest.set_text_search_config(p_config regconfig)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
BEGIN
    -- Off by default (migration 0005): the column costs ~75 us of database CPU per chunk written.
    ALTER TABLE pgingest.chunks DROP COLUMN IF EXISTS tsv;
    IF p_config IS NULL THEN
        DELETE FROM pgingest.config WHERE key = 'text_search_config';
        RETURN;
    END IF;
    -- The words, plus the parts of dotted names (concurrent.futures.process.BrokenProcessPool is one
    -- token to the parser: its parts make brokenprocesspool findable); migration 0026 has the same.
    -- A dotted name is a run of name characters (anything but spaces and punctuation, plus _) with
    -- an inner dot: the second pass keeps only those. The first regular expression blanks the
    -- whitespace-separated tokens without a dot (cheap, most of the text); the second keeps the
    -- dotted names of what is left (\1) and blanks the rest, so a sentence-final "word." or a
    -- "(see word.)" adds nothing: until migration 0026 the second pass kept every token holding a
    -- dot, and counted each word that ends a sentence twice (review 2026-12-07, finding 6).
    EXECUTE format(
        'ALTER TABLE pgingest.chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS ('
        'to_tsvector(%1$L::regconfig, content) || to_tsvector(%1$L::regconfig, '
        'translate(regexp_replace(regexp_replace(content, %2$L, '' '', ''g''), %3$L, %4$L, ''g''), '
        '''.'', '' ''))) STORED',
        p_config::text, '(^|\s)[^.\s]+(?=\s|$)',
        '((?:_|[^[:space:][:punct:]])+(?:\.(?:_|[^[:space:][:punct:]])+)+)'
        '|(?:_|[^[:space:][:punct:]])+|[[:space:][:punct:]]+',
        ' \1'
    );
    CREATE INDEX chunks_tsv ON pgingest.chunks USING gin (tsv);
    INSERT INTO pgingest.config AS c (key, value) VALUES ('text_search_config', p_config::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
END;
$$;

COMMENT ON FUNCTION pgingest.set_text_search_config(regconfig) IS
'Full-text search on chunks (hybrid search), off by default: a configuration (e.g. ''english'') adds or '
'rebuilds the generated column chunks.tsv (the words, plus the parts of dotted names) and its GIN index '
'(rewrites pgingest.chunks, and costs database CPU for each chunk written afterwards: about 75 us for the '
'words, about 0.3 ms more for the dotted names'' parts, docs/retrieval.md); NULL removes them.';

CREATE OR REPLACE FUNCTION pgingest.set_dead_letter_retention(
    p_model text, p_keep interval DEFAULT NULL, p_max_rows integer DEFAULT NULL
)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    UPDATE pgingest.models
    SET dead_letter_retention = p_keep, dead_letter_max_rows = p_max_rows
    WHERE name = (pgingest._model(p_model)).name;
END;

COMMENT ON FUNCTION pgingest.set_dead_letter_retention(text, interval, integer) IS
'Retention policy of a model''s dead letters: keep those younger than p_keep and at most p_max_rows '
'(newest first); NULL keeps everything. Applied by pgingest.purge_dead_letters(), which never purges the '
'letter of a version that is still current.';

CREATE OR REPLACE FUNCTION pgingest.purge_dead_letters(p_model text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_n bigint := 0;
    v_k bigint;
    v_m record;
BEGIN
    FOR v_m IN
        SELECT m.name, m.dead_letter_retention, m.dead_letter_max_rows FROM pgingest.models AS m
        WHERE (p_model IS NULL OR m.name = p_model)
          AND (m.dead_letter_retention IS NOT NULL OR m.dead_letter_max_rows IS NOT NULL)
        ORDER BY m.name
    LOOP
        WITH ranked AS (
            SELECT l.id, l.last_failed_at,
                   row_number() OVER (ORDER BY l.last_failed_at DESC, l.id DESC) AS rn
            FROM pgingest.dead_letters AS l
            WHERE l.model = v_m.name
        )
        -- Never the letter of a version that is still current (review 2026-12-07, item 1): it is
        -- what counts the document as dead-lettered; without it the version counted as pending
        -- for good (swap_model and shift_traffic refused, requeue_dead_letters had nothing to put
        -- back). Such letters count towards dead_letter_max_rows but are kept.
        DELETE FROM pgingest.dead_letters AS l
        USING ranked AS r
        WHERE l.id = r.id
          AND (v_m.dead_letter_retention IS NOT NULL AND r.last_failed_at < now() - v_m.dead_letter_retention
               OR v_m.dead_letter_max_rows IS NOT NULL AND r.rn > v_m.dead_letter_max_rows)
          AND (l.doc_id IS NULL OR NOT EXISTS (
              SELECT 1 FROM pgingest.source_documents AS d
              WHERE d.doc_id = l.doc_id AND d.content_hash = l.content_hash
          ));
        GET DIAGNOSTICS v_k = ROW_COUNT;
        v_n := v_n + v_k;
    END LOOP;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.purge_dead_letters(text) IS
'Applies the dead-letter retention policies (all models, or one); returns how many letters were purged. '
'The letter of a document version that is still current is never purged (it keeps the document counted '
'as dead-lettered, and requeue_dead_letters() can put it back); letters of deleted or changed versions '
'and invalid_message letters are.';

CREATE OR REPLACE FUNCTION pgingest.set_query_log(
    sample_rate double precision,
    log_text boolean DEFAULT FALSE,
    keep interval DEFAULT '7 days',
    max_rows integer DEFAULT 100000
)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
BEGIN
    IF sample_rate IS NULL OR sample_rate < 0 OR sample_rate > 1 OR sample_rate = 'NaN' THEN
        RAISE EXCEPTION 'pgingest: the query log''s sample rate must be between 0 (off) and 1, not %',
            coalesce(sample_rate::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF keep IS NULL OR keep <= interval '0' OR max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'pgingest: the query log''s retention must be a positive age and row count (got %, %)',
            coalesce(keep::text, 'NULL'), coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgingest.config AS c (key, value) VALUES
    ('query_log_sample_rate', sample_rate::text),
    ('query_log_text', CASE WHEN log_text THEN 'on' ELSE 'off' END),
    ('query_log_keep', keep::text),
    ('query_log_max_rows', max_rows::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
    RETURN format('query log %s: %s of searches, query text %s, kept %s and at most %s rows',
                  CASE WHEN sample_rate > 0 THEN 'on' ELSE 'off' END, sample_rate,
                  CASE WHEN log_text THEN 'logged' ELSE 'hashed' END, keep, max_rows);
END;
$$;

COMMENT ON FUNCTION pgingest.set_query_log(double precision, boolean, interval, integer) IS
'The query log''s settings (pgingest.config query_log_*): the share of searches logged (0: off, the default), '
'whether the query text and filter are logged (off: only the md5 of the normalised text), how long rows are '
'kept and how many at most (applied by pgingest.purge_query_log, run by run_maintenance).';

CREATE OR REPLACE FUNCTION pgingest.purge_query_log()
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_keep interval;
    v_max bigint;
    v_n bigint := 0;
    v_k bigint;
    v_cut bigint;
BEGIN
    SELECT c.value::interval INTO v_keep FROM pgingest.config AS c WHERE c.key = 'query_log_keep';
    SELECT c.value::bigint INTO v_max FROM pgingest.config AS c WHERE c.key = 'query_log_max_rows';
    DELETE FROM pgingest.query_log AS q WHERE q.logged_at < now() - coalesce(v_keep, interval '7 days');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    -- The newest max_rows rows stay (ids grow with time).
    SELECT q.id INTO v_cut FROM pgingest.query_log AS q
    ORDER BY q.id DESC OFFSET coalesce(v_max, 100000) LIMIT 1;
    IF v_cut IS NOT NULL THEN
        DELETE FROM pgingest.query_log AS q WHERE q.id <= v_cut;
        GET DIAGNOSTICS v_k = ROW_COUNT;
        v_n := v_n + v_k;
    END IF;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.purge_query_log() IS
'Applies the query log''s retention: rows older than query_log_keep (7 days) go, then all but the newest '
'query_log_max_rows (100000); returns how many rows were deleted.';

CREATE OR REPLACE FUNCTION pgingest.run_maintenance()
RETURNS jsonb
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'purged_dead_letters', pgingest.purge_dead_letters(NULL),
        'pruned_cache_rows', pgingest.prune_embedding_cache(),
        'purged_query_log', pgingest.purge_query_log()
    );
END;

COMMENT ON FUNCTION pgingest.run_maintenance() IS
'Dead-letter retention, cache bounds and the query log''s retention in one call: for pgingest maintenance, '
'the workers, or pg_cron '
'(SELECT cron.schedule(''pgingest'', ''*/10 * * * *'', ''SELECT pgingest.run_maintenance()'')).';
