-- Model lifecycle: register (shadow, dual write, backfill), swap (view + search re-pointed), retire.

CREATE OR REPLACE FUNCTION pgingest._check_model_name(p_name text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,29}$' THEN
        RAISE EXCEPTION 'pgingest: invalid model name %', coalesce(quote_literal(p_name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A model name is 1 to 30 characters: a lower-case letter, then letters, digits or _.';
    END IF;
    RETURN p_name;
END;
$$;

COMMENT ON FUNCTION pgingest._check_model_name(text) IS
'Validates a model name (it becomes part of a column and a queue name); raises 22023 otherwise.';

CREATE OR REPLACE FUNCTION pgingest._index_name(p_model text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN 'chunks_emb_' || p_model || '_idx';

COMMENT ON FUNCTION pgingest._index_name(text) IS 'Name of a model''s ANN index on pgingest.chunks.';

CREATE OR REPLACE FUNCTION pgingest._opclass(p_m pgingest.models)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN p_m.storage || CASE p_m.metric WHEN 'cosine' THEN '_cosine_ops' WHEN 'ip' THEN '_ip_ops' ELSE '_l2_ops' END;

COMMENT ON FUNCTION pgingest._opclass(pgingest.models) IS
'pgvector operator class matching a model''s storage and metric (e.g. halfvec_cosine_ops).';

CREATE OR REPLACE FUNCTION pgingest._distance_operator(p_metric text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN CASE p_metric WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' ELSE '<->' END;

COMMENT ON FUNCTION pgingest._distance_operator(text) IS 'pgvector distance operator for a metric.';

CREATE OR REPLACE FUNCTION pgingest._lifecycle_lock()
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
-- The installer's key (0x7067696E67657374) plus one.
RETURN pg_advisory_xact_lock(8099558377751147381);

COMMENT ON FUNCTION pgingest._lifecycle_lock() IS
'Serialises the model lifecycle (register_model, swap_model, retire_model) until the end of the '
'transaction.';

CREATE OR REPLACE FUNCTION pgingest._check_index_options(p_method text, p_options jsonb)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_opts jsonb := coalesce(p_options, '{}');
    v_key text;
    v_val jsonb;
    v_allowed text[];
    v_lo integer;
    v_hi integer;
BEGIN
    IF jsonb_typeof(v_opts) <> 'object' THEN
        RAISE EXCEPTION 'pgingest: index_options must be a JSON object, not %', v_opts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_allowed := CASE p_method
        WHEN 'hnsw' THEN ARRAY['m', 'ef_construction']
        WHEN 'ivfflat' THEN ARRAY['lists']
        ELSE '{}'::text[]
    END;
    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(v_opts) AS o LOOP
        IF NOT v_key = ANY (v_allowed) THEN
            RAISE EXCEPTION 'pgingest: unknown index option % for index_method %', quote_literal(v_key),
                quote_literal(p_method)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'hnsw takes m and ef_construction, ivfflat takes lists, none takes nothing.';
        END IF;
        v_lo := CASE v_key WHEN 'm' THEN 2 WHEN 'ef_construction' THEN 4 ELSE 1 END;
        v_hi := CASE v_key WHEN 'm' THEN 100 WHEN 'ef_construction' THEN 1000 ELSE 32768 END;
        IF jsonb_typeof(v_val) <> 'number' OR v_val::text !~ '^[0-9]+$'
           OR v_val::text::numeric NOT BETWEEN v_lo AND v_hi THEN
            RAISE EXCEPTION 'pgingest: index option % must be an integer from % to %, not %', v_key, v_lo,
                v_hi, v_val
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF p_method = 'hnsw' THEN
        v_opts := jsonb_build_object('m', 16, 'ef_construction', 64) || v_opts;
        IF (v_opts ->> 'ef_construction')::integer < 2 * (v_opts ->> 'm')::integer THEN
            RAISE EXCEPTION 'pgingest: hnsw ef_construction (%) must be at least twice m (%)',
                v_opts ->> 'ef_construction', v_opts ->> 'm'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN v_opts;
END;
$$;

COMMENT ON FUNCTION pgingest._check_index_options(text, jsonb) IS
'Validates a model''s index options for its index method (hnsw: m 2-100, ef_construction 4-1000 and at '
'least 2 m; ivfflat: lists 1-32768) and returns them with the hnsw defaults filled in; raises 22023.';

CREATE OR REPLACE FUNCTION pgingest._refresh_search_view()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
    v_active boolean;
BEGIN
    SELECT * INTO v_m FROM pgingest.models AS m WHERE m.state = 'active';
    v_active := FOUND;
    -- `embedding` has no typmod (vector, not vector(384)): a swap between two models of the same
    -- storage type keeps the view's row type, so it is replaced in place (same oid, grants and
    -- dependants kept) and statements prepared by clients survive the swap. Only a change of
    -- storage type (vector <-> halfvec) drops and re-creates it.
    IF to_regclass('pgingest.search_chunks') IS NOT NULL AND (
        NOT v_active OR NOT EXISTS (
            SELECT 1 FROM pg_attribute AS a
            WHERE a.attrelid = to_regclass('pgingest.search_chunks') AND a.attname = 'embedding'
              AND a.atttypid = v_m.storage::regtype AND a.atttypmod = -1 AND NOT a.attisdropped
        )
    ) THEN
        DROP VIEW pgingest.search_chunks;
    END IF;
    IF v_active THEN
        EXECUTE format(
            $sql$
            CREATE OR REPLACE VIEW pgingest.search_chunks WITH (security_barrier = false) AS
            SELECT c.doc_id, d.key AS doc_key, d.title, c.ordinal, c.content, c.%1$I::%3$s AS embedding,
                   %2$L::text AS model, d.metadata
            FROM pgingest.chunks AS c
            INNER JOIN pgingest.documents AS d ON d.id = c.doc_id
            WHERE c.%1$I IS NOT NULL
            $sql$,
            v_m.column_name, v_m.name, v_m.storage
        );
        EXECUTE format(
            'COMMENT ON VIEW pgingest.search_chunks IS %L',
            format('Chunks with the active model''s (%s, %s) vector as `embedding`. Re-pointed by swap_model().',
                   v_m.name, pgingest._column_type(v_m))
        );
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgingest_reader') THEN
            GRANT SELECT ON pgingest.search_chunks TO pgingest_reader;
        END IF;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._refresh_search_view() IS
'(Re)creates the view pgingest.search_chunks over the active model''s column.';

CREATE OR REPLACE FUNCTION pgingest.register_model(
    name text,
    model_id text,
    dimensions integer,
    base_url text,
    storage text DEFAULT 'vector',
    metric text DEFAULT 'cosine',
    max_input_tokens integer DEFAULT 256,
    api_key_env text DEFAULT NULL,
    index_method text DEFAULT 'hnsw',
    index_options jsonb DEFAULT '{}',
    request_dimensions boolean DEFAULT FALSE
)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_name text := pgingest._check_model_name(register_model.name);
    v_state text;
    v_chunk_max integer;
    v_m pgingest.models;
    v_options jsonb;
BEGIN
    PERFORM pgingest._lifecycle_lock();
    IF EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.name = v_name) THEN
        RAISE EXCEPTION 'pgingest: a model named % already exists', v_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Retired names cannot be reused; pick a new name such as v3.';
    END IF;
    SELECT c.value::integer INTO v_chunk_max FROM pgingest.config AS c WHERE c.key = 'chunk_max_tokens';
    IF max_input_tokens < v_chunk_max THEN
        RAISE EXCEPTION 'pgingest: model % accepts % tokens but chunks are up to % tokens', v_name,
            max_input_tokens, v_chunk_max
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Chunking is shared by all models (one chunk set, one vector column per model): '
                         'every model must accept the pipeline''s chunk size.';
    END IF;
    IF index_method IS NULL OR index_method NOT IN ('hnsw', 'ivfflat', 'none') THEN
        RAISE EXCEPTION 'pgingest: index_method must be hnsw, ivfflat or none, not %',
            coalesce(quote_literal(index_method), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF storage IS NULL OR storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'pgingest: storage must be vector or halfvec, not %', coalesce(quote_literal(storage), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF metric IS NULL OR metric NOT IN ('cosine', 'ip', 'l2') THEN
        RAISE EXCEPTION 'pgingest: metric must be cosine, ip or l2, not %', coalesce(quote_literal(metric), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_options := pgingest._check_index_options(index_method, index_options);
    IF index_method <> 'none' AND (storage = 'halfvec' AND dimensions > 4000 OR storage = 'vector' AND dimensions > 2000)
    THEN
        RAISE EXCEPTION 'pgingest: % dimensions is too many for an ANN index on %', dimensions, storage
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'vector indexes 2,000 dimensions at most, halfvec 4,000; use halfvec or index_method => ''none''.';
    END IF;

    -- ADD COLUMN would wait for a running CREATE INDEX CONCURRENTLY on the chunks (and deadlock with
    -- it) while holding the documents lock below, which stops every INSERT meanwhile.
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_stat_progress_create_index AS p
        WHERE p.relid = 'pgingest.chunks'::regclass
            OR p.relid IN (SELECT t.relid FROM pg_partition_tree('pgingest.chunks') AS t)
    ) THEN
        RAISE EXCEPTION 'pgingest: cannot register model % while an index is being built on pgingest.chunks', v_name
            USING ERRCODE = 'object_in_use',
                  HINT = 'Retry when it ends: SELECT * FROM pgingest.model_index_status();';
    END IF;

    -- Wait for in-flight writers and hold new ones until we commit: every document is then either
    -- visible to the backfill or queued by the capture trigger, which sees this model.
    LOCK TABLE pgingest.documents IN SHARE MODE;

    v_state := CASE WHEN EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.state = 'active')
                    THEN 'shadow' ELSE 'active' END;
    INSERT INTO pgingest.models AS m (
        name, model_id, base_url, api_key_env, dimensions, storage, metric, max_input_tokens,
        request_dimensions, state, column_name, queue_name, index_method, index_options,
        backfill_started_at, backfill_upto, activated_at
    ) VALUES (
        v_name, model_id, base_url, api_key_env, dimensions, storage, metric, max_input_tokens,
        request_dimensions, v_state, 'emb_' || v_name, 'pgingest_' || v_name, index_method,
        v_options, now(), (SELECT max(d.id) FROM pgingest.documents AS d),
        CASE WHEN v_state = 'active' THEN now() END
    )
    RETURNING * INTO v_m;

    EXECUTE format('ALTER TABLE pgingest.chunks ADD COLUMN %I %s', v_m.column_name, pgingest._column_type(v_m));
    EXECUTE format('COMMENT ON COLUMN pgingest.chunks.%I IS %L', v_m.column_name,
                   format('Embedding by model %s (%s, %s, %s).', v_name, model_id, storage, metric));
    PERFORM pgmq.create(v_m.queue_name);
    IF v_state = 'active' THEN
        PERFORM pgingest._refresh_search_view();
    END IF;
    PERFORM pg_notify('pgingest', v_name);
    RETURN v_state;
END;
$$;

COMMENT ON FUNCTION pgingest.register_model(
    text, text, integer, text, text, text, integer, text, text, jsonb, boolean
) IS
'Registers an embedding model: adds its column to pgingest.chunks and its queue, and queues a backfill of '
'every document (run by the workers in bounded batches, or CALL pgingest.run_backfill(name)). The first model '
'becomes active; later ones start in shadow (dual write) until swap_model(). Returns the new state.';

CREATE OR REPLACE FUNCTION pgingest.backfill_step_v1(p_model text, p_batch integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
    v_ids bigint[];
    v_hashes bytea[];
    v_max bigint;
    v_msgs jsonb[];
BEGIN
    SELECT * INTO v_m FROM pgingest.models AS m
    WHERE m.name = p_model AND m.state <> 'retired' AND m.backfill_completed_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT array_agg(d.id ORDER BY d.id), array_agg(d.content_hash ORDER BY d.id), max(d.id)
    INTO v_ids, v_hashes, v_max
    FROM (
        SELECT d.id, d.content_hash FROM pgingest.documents AS d
        WHERE d.id > v_m.backfill_cursor AND d.id <= v_m.backfill_upto
        ORDER BY d.id
        LIMIT greatest(p_batch, 1)
    ) AS d;
    IF v_ids IS NULL THEN
        UPDATE pgingest.models SET backfill_completed_at = now() WHERE name = v_m.name;
        RETURN 0;
    END IF;
    SELECT array_agg(jsonb_build_object('doc_id', x.id, 'hash', encode(x.h, 'hex'), 'attempts', 0))
    INTO v_msgs
    FROM unnest(v_ids, v_hashes) AS x (id, h);
    PERFORM pgmq.send_batch(v_m.queue_name, v_msgs);
    UPDATE pgingest.models
    SET backfill_cursor = v_max, backfill_queued = backfill_queued + cardinality(v_ids)
    WHERE name = v_m.name;
    RETURN cardinality(v_ids);
END;
$$;

COMMENT ON FUNCTION pgingest.backfill_step_v1(text, integer) IS
'Queues the next batch of existing documents for a model''s backfill and advances its cursor; marks the '
'backfill queued when nothing is left. Returns the number queued (0 when done or busy elsewhere).';

-- No SET clause here: a procedure with one cannot COMMIT. Every name is schema-qualified.
CREATE OR REPLACE PROCEDURE pgingest.run_backfill(p_model text, p_batch integer DEFAULT 5000)
LANGUAGE plpgsql
AS $$
DECLARE
    v_n integer;
BEGIN
    LOOP
        v_n := pgingest.backfill_step_v1(p_model, p_batch);
        COMMIT;
        EXIT WHEN v_n = 0;
    END LOOP;
END;
$$;

COMMENT ON PROCEDURE pgingest.run_backfill (text, integer) IS
'Queues a model''s whole backfill from psql, committing after each batch (workers also do this by themselves).';

-- The search view follows the current definition on every install and upgrade (a view created by
-- an earlier version would otherwise keep that version's definition until the next swap).
SELECT pgingest._refresh_search_view();
