-- Model lifecycle, after register_model (030_models.sql): backfill progress, per-model index status
-- and DDL, model comparison, swap_model (the search view re-pointed in one transaction, rollback by
-- swapping back) and retire_model. The index itself is built with CREATE INDEX CONCURRENTLY, which
-- cannot run inside a function: `pgingest model index <name>`, or `SELECT pgingest.index_ddl(<name>)
-- \gexec` from psql.

CREATE OR REPLACE FUNCTION pgingest._backfill_progress(p_m pgingest.models)
RETURNS TABLE (
    documents bigint,
    embedded bigint,
    dead_lettered bigint,
    pending bigint,
    percent numeric,
    backfill_queued_all boolean,
    rate_per_s numeric,
    eta interval
)
LANGUAGE plpgsql
SECURITY DEFINER
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_window interval;
    v_recent bigint;
BEGIN
    -- A document counts once: embedded (its current version), else dead-lettered (that version), else pending.
    SELECT count(*), count(s.doc_id), count(l.doc_id) FILTER (WHERE s.doc_id IS NULL)
    INTO documents, embedded, dead_lettered
    FROM pgingest.source_documents AS d
    LEFT JOIN pgingest.embedding_state AS s
        ON s.doc_id = d.doc_id AND s.model = p_m.name AND s.content_hash = d.content_hash
    LEFT JOIN pgingest.dead_letters AS l
        ON l.doc_id = d.doc_id AND l.model = p_m.name AND l.content_hash = d.content_hash;
    pending := documents - embedded - dead_lettered;
    percent := round(100.0 * embedded / greatest(documents, 1), 1);
    backfill_queued_all := p_m.backfill_completed_at IS NOT NULL;
    -- The rate: over the last minute, or since the backfill started when that is shorter.
    v_window := greatest(least(interval '60 s', now() - coalesce(p_m.backfill_started_at, p_m.created_at)),
                         interval '1 s');
    SELECT count(*) INTO v_recent
    FROM pgingest.embedding_state AS s
    WHERE s.model = p_m.name AND s.embedded_at > now() - v_window;
    rate_per_s := round(v_recent / extract(EPOCH FROM v_window), 1);
    eta := CASE
        WHEN pending = 0 THEN interval '0 s'
        WHEN v_recent > 0 THEN make_interval(secs => round(pending * extract(EPOCH FROM v_window) / v_recent))
    END;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgingest._backfill_progress(pgingest.models) IS
'Backfill figures of one model (see the view pgingest.backfill_progress).';

CREATE OR REPLACE VIEW pgingest.backfill_progress AS
SELECT
    m.name AS model,
    m.state,
    m.paused,
    p.documents,
    p.embedded,
    p.dead_lettered,
    p.pending,
    p.percent,
    p.backfill_queued_all,
    m.backfill_queued,
    m.backfill_started_at,
    m.backfill_completed_at,
    p.rate_per_s,
    p.eta
FROM pgingest.models AS m
CROSS JOIN LATERAL pgingest._backfill_progress(m) AS p
WHERE m.state <> 'retired';

COMMENT ON VIEW pgingest.backfill_progress IS
'Per live model: documents whose current version is embedded, dead-lettered or pending, percent done, '
'whether the whole backfill is queued (backfill_queued_all, backfill_queued documents so far), the '
'embedding rate over the last minute (documents/s) and the estimated time left. swap_model() refuses '
'while pending > 0 or backfill_queued_all is false.';

CREATE OR REPLACE FUNCTION pgingest.model_index_status(p_model text DEFAULT NULL)
RETURNS TABLE (
    model text,
    state text,
    index_method text,
    index_name text,
    present boolean,
    valid boolean,
    on_column boolean,
    size_bytes bigint,
    size text,
    definition text,
    build_pid integer,
    build_phase text,
    build_done bigint,
    build_total bigint
)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH ix AS (
        SELECT
            m.name AS model,
            m.state,
            m.index_method,
            i.indexrelid,
            pgingest._index_name(m.name) AS index_name,
            i.indexrelid IS NOT NULL AS present,
            coalesce(i.indisvalid AND i.indisready, FALSE) AS valid,
            coalesce(
                i.indrelid = to_regclass(format('pgingest.%I', m.store_name)) AND i.indnatts = 1
                AND a.attname = 'embedding',
                FALSE
            ) AS on_column,
            -- A partitioned index (install --chunk-partitions) has no storage: its partitions' do.
            coalesce(
                (SELECT sum(pg_relation_size(t.relid))::bigint FROM pg_partition_tree(i.indexrelid) AS t),
                pg_relation_size(i.indexrelid)
            ) AS size_bytes,
            pg_size_pretty(coalesce(
                (SELECT sum(pg_relation_size(t.relid))::bigint FROM pg_partition_tree(i.indexrelid) AS t),
                pg_relation_size(i.indexrelid)
            )) AS size,
            pg_get_indexdef(i.indexrelid) AS definition
        FROM pgingest.models AS m
        LEFT JOIN pg_catalog.pg_index AS i
            ON to_regclass(format('pgingest.%I', pgingest._index_name(m.name))) = i.indexrelid
        LEFT JOIN pg_catalog.pg_attribute AS a ON i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
        WHERE (p_model IS NULL OR m.name = p_model) AND m.state <> 'retired'
    )

    SELECT
        ix.model,
        ix.state,
        ix.index_method,
        ix.index_name,
        ix.present,
        ix.valid,
        ix.on_column,
        ix.size_bytes,
        ix.size,
        ix.definition,
        p.pid AS build_pid,
        p.phase AS build_phase,
        coalesce(nullif(p.tuples_done, 0), p.blocks_done) AS build_done,
        coalesce(nullif(p.tuples_total, 0), p.blocks_total) AS build_total
    FROM ix
    LEFT JOIN pg_catalog.pg_stat_progress_create_index AS p
        ON ix.indexrelid = p.index_relid
    ORDER BY ix.model;
END;

COMMENT ON FUNCTION pgingest.model_index_status(text) IS
'ANN index of each live model (or of p_model): name, whether it exists, is valid (pg_index.indisvalid: a '
'failed or running CREATE INDEX CONCURRENTLY leaves it invalid) and is on its store''s embedding column '
'(on_column), its size '
'and definition, and the progress of a build running now (pg_stat_progress_create_index).';

CREATE OR REPLACE FUNCTION pgingest.index_ddl(name text, concurrent boolean DEFAULT TRUE)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_m pgingest.models := pgingest._model(pgingest._check_model_name(index_ddl.name));
    v_opts jsonb := pgingest._check_index_options(v_m.index_method, v_m.index_options);
    v_rows bigint;
    v_with text;
BEGIN
    IF v_m.index_method = 'none' THEN
        RAISE EXCEPTION 'pgingest: model % has index_method none: it is searched exactly, without an index',
            v_m.name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_m.index_method = 'hnsw' THEN
        v_with := format('m = %s, ef_construction = %s', (v_opts ->> 'm')::integer,
                         (v_opts ->> 'ef_construction')::integer);
    ELSE
        IF v_opts ? 'lists' THEN
            v_rows := (v_opts ->> 'lists')::integer;
        ELSE
            -- pgvector's advice: rows / 1000 up to a million rows, sqrt(rows) above.
            EXECUTE format('SELECT count(*) FROM pgingest.%I', v_m.store_name) INTO v_rows;
            v_rows := greatest(1, CASE WHEN v_rows <= 1000000 THEN v_rows / 1000 ELSE sqrt(v_rows)::bigint END);
        END IF;
        v_with := format('lists = %s', v_rows);
    END IF;
    RETURN format(
        'CREATE INDEX %s %I ON pgingest.%I USING %I (embedding %I) WITH (%s)',
        CASE WHEN concurrent THEN 'CONCURRENTLY' ELSE '' END,
        pgingest._index_name(v_m.name), v_m.store_name, v_m.index_method, pgingest._opclass(v_m), v_with
    );
END;
$$;

COMMENT ON FUNCTION pgingest.index_ddl(text, boolean) IS
'The CREATE INDEX [CONCURRENTLY] statement of a model''s ANN index on its store (method, operator class for its '
'storage and metric, m/ef_construction or lists). From psql: SELECT pgingest.index_ddl(''v2'') \gexec '
'(after SET maintenance_work_mem / max_parallel_maintenance_workers). `pgingest model index` runs it '
'with progress and replaces an invalid leftover.';

CREATE OR REPLACE FUNCTION pgingest._swap_problems(p_m pgingest.models)
RETURNS TABLE (blocking boolean, reason text, detail text, hint text)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_p pgingest.backfill_progress;
    v_ix record;
BEGIN
    SELECT * INTO v_p FROM pgingest.backfill_progress AS b WHERE b.model = p_m.name;
    blocking := TRUE;
    IF p_m.backfill_completed_at IS NULL THEN
        reason := 'its backfill is not fully queued yet';
        detail := format('backfill: %s documents queued so far (up to document id %s, last queued id %s)',
                         p_m.backfill_queued, coalesce(p_m.backfill_upto::text, '-'), p_m.backfill_cursor);
        hint := format('Run workers (they queue the backfill) or CALL pgingest.run_backfill(%L).', p_m.name);
        RETURN NEXT;
    END IF;
    IF v_p.pending > 0 THEN
        reason := format('%s documents are not embedded for it yet', v_p.pending);
        detail := format('backfill: %s of %s documents embedded (%s%%), %s pending, %s dead-lettered',
                         v_p.embedded, v_p.documents, v_p.percent, v_p.pending, v_p.dead_lettered);
        hint := 'Let the workers finish: SELECT * FROM pgingest.backfill_progress;';
        RETURN NEXT;
    END IF;
    IF p_m.paused THEN
        reason := 'it is paused';
        detail := format('paused: %s', coalesce(p_m.paused_reason, 'no reason given'));
        hint := format('Fix the provider, then SELECT pgingest.resume_model(%L);', p_m.name);
        RETURN NEXT;
    END IF;
    IF p_m.index_method <> 'none' THEN
        SELECT * INTO v_ix FROM pgingest.model_index_status(p_m.name) AS s;
        IF NOT v_ix.present THEN
            reason := format('its index %s does not exist', v_ix.index_name);
            detail := format('index %s (%s): missing', v_ix.index_name, p_m.index_method);
            hint := format('Build it: pgingest model index %s (or SELECT pgingest.index_ddl(%L) \gexec).',
                           p_m.name, p_m.name);
            RETURN NEXT;
        ELSIF v_ix.build_phase IS NOT NULL THEN
            reason := format('its index %s is still being built', v_ix.index_name);
            detail := format('index %s: %s, %s of %s (pid %s)', v_ix.index_name, v_ix.build_phase,
                             coalesce(v_ix.build_done::text, '?'), coalesce(v_ix.build_total::text, '?'),
                             v_ix.build_pid);
            hint := 'Wait for the build to end: SELECT * FROM pgingest.model_index_status();';
            RETURN NEXT;
        ELSIF NOT v_ix.valid THEN
            reason := format('its index %s is invalid', v_ix.index_name);
            detail := format('index %s: pg_index.indisvalid is false (a failed CREATE INDEX CONCURRENTLY)',
                             v_ix.index_name);
            hint := format('Rebuild it: pgingest model index %s (drops the invalid index first).', p_m.name);
            RETURN NEXT;
        ELSIF NOT v_ix.on_column THEN
            reason := format('its index %s is not on the embedding column of its store %s', v_ix.index_name,
                             p_m.store_name);
            detail := format('index %s: %s', v_ix.index_name, v_ix.definition);
            hint := format('Drop it (DROP INDEX CONCURRENTLY pgingest.%I) and run pgingest model index %s.',
                           v_ix.index_name, p_m.name);
            RETURN NEXT;
        END IF;
    END IF;
    IF v_p.dead_lettered > 0 THEN
        blocking := FALSE;
        reason := format('%s documents are dead-lettered for it: search will not find them', v_p.dead_lettered);
        detail := format('backfill: %s of %s documents embedded, %s dead-lettered',
                         v_p.embedded, v_p.documents, v_p.dead_lettered);
        hint := format('SELECT error_class, count(*) FROM pgingest.dead_letters WHERE model = %L GROUP BY 1;',
                       p_m.name);
        RETURN NEXT;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._swap_problems(pgingest.models) IS
'Why a model cannot become active yet (blocking: backfill not queued, documents pending, paused, index '
'missing, building, invalid or on another column) or what to know first (not blocking: dead letters), '
'one row per reason with details and a hint; none when ready.';

CREATE OR REPLACE FUNCTION pgingest.swap_model(name text, force boolean DEFAULT FALSE)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_name text := pgingest._check_model_name(swap_model.name);
    v_target pgingest.models;
    v_prev pgingest.models;
    v_reasons text[];
    v_details text[];
    v_hints text[];
    v_notes text[];
    v_note_details text[];
    v_note_hints text[];
    v_i integer;
BEGIN
    PERFORM pgingest._lifecycle_lock();
    SELECT * INTO v_target FROM pgingest.models AS m WHERE m.name = v_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no model named %', quote_literal(v_name)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name, state FROM pgingest.models;';
    END IF;
    IF v_target.state = 'retired' THEN
        RAISE EXCEPTION 'pgingest: model % is retired and cannot become active', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('retired at %s: its store and index were dropped', v_target.retired_at),
                  HINT = 'Register a new model (with a new name) and swap to it once it is backfilled.';
    END IF;
    IF v_target.state = 'active' THEN
        RAISE NOTICE 'pgingest: % is already the active model; nothing to do', v_name;
        RETURN format('%s is already active', v_name);
    END IF;

    -- Every check runs before the view is touched: readers wait on the view only for the swap itself.
    SELECT
        array_agg(p.reason) FILTER (WHERE p.blocking),
        array_agg(p.detail) FILTER (WHERE p.blocking),
        array_agg(p.hint) FILTER (WHERE p.blocking),
        array_agg(p.reason) FILTER (WHERE NOT p.blocking),
        array_agg(p.detail) FILTER (WHERE NOT p.blocking),
        array_agg(p.hint) FILTER (WHERE NOT p.blocking)
    INTO v_reasons, v_details, v_hints, v_notes, v_note_details, v_note_hints
    FROM pgingest._swap_problems(v_target) AS p;
    FOR v_i IN 1 .. coalesce(cardinality(v_notes), 0) LOOP
        RAISE WARNING 'pgingest: model %: %', v_name, v_notes[v_i]
            USING DETAIL = v_note_details[v_i], HINT = v_note_hints[v_i];
    END LOOP;
    IF v_reasons IS NOT NULL THEN
        IF NOT force THEN
            RAISE EXCEPTION 'pgingest: cannot swap to model %: %', v_name, array_to_string(v_reasons, '; ')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = array_to_string(v_details, E'\n'),
                      HINT = array_to_string(v_hints, ' ')
                      || format(' To swap anyway: SELECT pgingest.swap_model(%L, force => true);', v_name);
        END IF;
        RAISE WARNING 'pgingest: swapping to model % although %', v_name, array_to_string(v_reasons, '; ')
            USING DETAIL = array_to_string(v_details, E'\n');
    END IF;

    -- A change of storage type drops and re-creates the view: refused here, before anything
    -- changes, while other objects depend on it (review 2026-12-07, item 4).
    PERFORM pgingest._check_search_view_droppable(v_target.storage);
    SELECT * INTO v_prev FROM pgingest.models AS m WHERE m.state = 'active' FOR NO KEY UPDATE;
    IF FOUND THEN
        UPDATE pgingest.models AS m SET state = 'standby' WHERE m.name = v_prev.name;
    END IF;
    UPDATE pgingest.models AS m SET state = 'active', activated_at = now() WHERE m.name = v_name;
    -- The move is complete: a traffic shift (to this model or another) ends with it.
    DELETE FROM pgingest.traffic_shift AS t WHERE TRUE;
    PERFORM pgingest._refresh_search_view();
    RAISE NOTICE 'pgingest: % is the active model (pgingest.search_chunks reads %), % is standby',
        v_name, v_target.store_name, coalesce(v_prev.name, 'no model')
        USING HINT = CASE WHEN v_prev.name IS NOT NULL
            THEN format('Roll back with SELECT pgingest.swap_model(%L);', v_prev.name) END;
    RETURN format('%s active, %s standby', v_name, coalesce(v_prev.name, 'no model'));
END;
$$;

COMMENT ON FUNCTION pgingest.swap_model(text, boolean) IS
'Makes a model the active one in one transaction: the previous active model becomes standby (still '
'written: the rollback target, swap_model(<it>) rolls back) and pgingest.search_chunks is re-pointed. '
'Refuses (SQLSTATE 55000, with numbers in DETAIL and the remedy in HINT) while the model''s backfill is '
'incomplete, it is paused, or its index is missing or invalid, unless force => true. Ends a traffic shift '
'(pgingest.shift_traffic).';

CREATE OR REPLACE FUNCTION pgingest.shift_traffic(name text, share double precision, force boolean DEFAULT FALSE)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_name text := pgingest._check_model_name(shift_traffic.name);
    v_target pgingest.models;
    v_active text;
    v_other pgingest.traffic_shift;
    v_reasons text[];
    v_details text[];
    v_hints text[];
BEGIN
    IF share IS NULL OR share < 0 OR share > 1 OR share = 'NaN' THEN
        RAISE EXCEPTION 'pgingest: a traffic share is between 0 and 1, not %', coalesce(share::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. SELECT pgingest.shift_traffic(''v2'', 0.10); for 10% of the searches.';
    END IF;
    PERFORM pgingest._lifecycle_lock();
    SELECT * INTO v_target FROM pgingest.models AS m WHERE m.name = v_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no model named %', quote_literal(v_name)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name, state FROM pgingest.models;';
    END IF;
    IF share = 0 THEN
        -- Rollback: the next search routes to the active model.
        DELETE FROM pgingest.traffic_shift AS t WHERE t.model = v_name;
        IF NOT FOUND THEN
            RAISE NOTICE 'pgingest: % serves no share of the searches; nothing to do', v_name;
        ELSE
            RAISE NOTICE 'pgingest: traffic shift to % ended: the active model serves every search', v_name;
        END IF;
        RETURN format('%s serves 0%% of searches', v_name);
    END IF;
    IF v_target.state = 'retired' THEN
        RAISE EXCEPTION 'pgingest: model % is retired and cannot serve searches', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_target.state = 'active' THEN
        RAISE EXCEPTION 'pgingest: model % is the active model: it serves every search already', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Shift traffic to a candidate (a standby or shadow model).';
    END IF;
    SELECT m.name INTO v_active FROM pgingest.models AS m WHERE m.state = 'active';
    IF v_active IS NULL THEN
        RAISE EXCEPTION 'pgingest: there is no active model to shift traffic from'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Make %s active: SELECT pgingest.swap_model(%L);', v_name, v_name);
    END IF;
    SELECT * INTO v_other FROM pgingest.traffic_shift AS t WHERE t.model <> v_name;
    IF FOUND THEN
        RAISE EXCEPTION 'pgingest: model % serves % of the searches already: one candidate at a time',
            v_other.model, v_other.share
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('End that shift first: SELECT pgingest.shift_traffic(%L, 0);', v_other.model);
    END IF;
    -- The checks of swap_model(), and its force.
    SELECT
        array_agg(p.reason) FILTER (WHERE p.blocking),
        array_agg(p.detail) FILTER (WHERE p.blocking),
        array_agg(p.hint) FILTER (WHERE p.blocking)
    INTO v_reasons, v_details, v_hints
    FROM pgingest._swap_problems(v_target) AS p;
    IF v_reasons IS NOT NULL THEN
        IF NOT force THEN
            RAISE EXCEPTION 'pgingest: cannot shift traffic to model %: %', v_name, array_to_string(v_reasons, '; ')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = array_to_string(v_details, E'\n'),
                      HINT = array_to_string(v_hints, ' ')
                      || format(' To shift anyway: SELECT pgingest.shift_traffic(%L, %s, force => true);',
                                v_name, share);
        END IF;
        RAISE WARNING 'pgingest: shifting traffic to model % although %', v_name, array_to_string(v_reasons, '; ')
            USING DETAIL = array_to_string(v_details, E'\n');
    END IF;
    INSERT INTO pgingest.traffic_shift AS t (model, share) VALUES (v_name, share)
    ON CONFLICT (model) DO UPDATE SET share = EXCLUDED.share, updated_at = now();
    RAISE NOTICE 'pgingest: % serves % of the text searches (by routing key), % the rest', v_name, share, v_active
        USING HINT = format('Roll back with SELECT pgingest.shift_traffic(%L, 0); complete with '
                            'SELECT pgingest.swap_model(%L);', v_name, v_name);
    RETURN format('%s serves %s%% of searches, %s the rest', v_name, round((100 * share)::numeric, 2), v_active);
END;
$$;

COMMENT ON FUNCTION pgingest.shift_traffic(text, double precision, boolean) IS
'Gradual traffic shifting: the candidate model serves `share` (0-1) of the text searches (search_text, '
'hybrid_search_text, and whoever routes with pgingest.route_model), chosen by a stable hash of the routing '
'key (the caller''s routing_key, else the query text): a key stays on its model while the share grows. '
'Refused with swap_model''s checks (backfill incomplete, paused, index missing or invalid) unless force. '
'share 0 ends it at once (the next search routes to the active model); swap_model completes the move; one '
'candidate at a time.';

CREATE OR REPLACE FUNCTION pgingest.retire_model(name text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_name text := pgingest._check_model_name(retire_model.name);
    v_m pgingest.models;
    v_pid integer;
    v_states bigint;
    v_letters bigint;
    v_chunks bigint := 0;
BEGIN
    PERFORM pgingest._lifecycle_lock();
    -- Waits for a backfill_step_v1 running on this model (FOR UPDATE); NO KEY so that the foreign key
    -- checks of the workers' writes (FOR KEY SHARE on this row) are not blocked, which would deadlock
    -- with the DROP TABLE below.
    SELECT * INTO v_m FROM pgingest.models AS m WHERE m.name = v_name FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no model named %', quote_literal(v_name)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name, state FROM pgingest.models;';
    END IF;
    IF v_m.state = 'retired' THEN
        RAISE NOTICE 'pgingest: model % is already retired', v_name;
        RETURN 'retired';
    END IF;
    IF v_m.state = 'active' THEN
        RAISE EXCEPTION 'pgingest: cannot retire model %: it is the active model', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'pgingest.search_chunks reads its store.',
                  HINT = 'Swap to another model first (SELECT pgingest.swap_model(''<name>'');), then retire this one.';
    END IF;
    -- DROP TABLE needs an exclusive lock on the store: it would wait for the whole build.
    SELECT p.pid INTO v_pid FROM pg_catalog.pg_stat_progress_create_index AS p
    WHERE p.relid = to_regclass(format('pgingest.%I', v_m.store_name))
        OR p.relid IN (
            SELECT t.relid FROM pg_partition_tree(to_regclass(format('pgingest.%I', v_m.store_name))) AS t
        )
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgingest: cannot retire model % while an index is being built on its store %', v_name,
            v_m.store_name
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('CREATE INDEX running in backend %s', v_pid),
                  HINT = 'Retry when it ends: SELECT * FROM pgingest.model_index_status();';
    END IF;

    -- Wait for in-flight writers of documents and hold new ones until we commit: a capture trigger
    -- that saw this model live must finish sending to its queue before the queue is dropped, and
    -- later ones see it retired and skip it. EXCLUSIVE (not SHARE) also waits for the worker batches
    -- being written (complete_batch_v2 locks documents FOR SHARE first) and holds new ones, which
    -- then read the model list after the store is gone. Plain reads go on.
    LOCK TABLE pgingest.documents, pgingest.source_rows IN EXCLUSIVE MODE;
    DELETE FROM pgingest.traffic_shift AS t WHERE t.model = v_name;
    UPDATE pgingest.models AS m
    SET state = 'retired', retired_at = now(), paused = FALSE, paused_reason = NULL,
        backfill_completed_at = coalesce(m.backfill_completed_at, now())
    WHERE m.name = v_name;
    -- The capture stops writing to its queue (before the queue is dropped below).
    PERFORM pgingest._compile_enqueue();
    -- One statement: the store, its partitions and its indexes (the ANN index included).
    EXECUTE format('DROP TABLE IF EXISTS pgingest.%I', v_m.store_name);
    -- The chunks of its profile go too when no live model uses that profile any more.
    IF NOT EXISTS (
        SELECT 1 FROM pgingest.models AS m WHERE m.state <> 'retired' AND m.profile_id = v_m.profile_id
    ) THEN
        DELETE FROM pgingest.chunks AS c WHERE c.profile_id = v_m.profile_id;
        GET DIAGNOSTICS v_chunks = ROW_COUNT;
    END IF;
    IF EXISTS (SELECT 1 FROM pgmq.meta AS q WHERE q.queue_name = v_m.queue_name) THEN
        PERFORM pgmq.drop_queue(v_m.queue_name);
    END IF;
    DELETE FROM pgingest.embedding_state AS s WHERE s.model = v_name;
    GET DIAGNOSTICS v_states = ROW_COUNT;
    DELETE FROM pgingest.dead_letters AS l WHERE l.model = v_name;
    GET DIAGNOSTICS v_letters = ROW_COUNT;
    IF to_regclass('pgingest.embedding_cache') IS NOT NULL THEN  -- cached vectors (migration 0004)
        EXECUTE 'DELETE FROM pgingest.embedding_cache WHERE model = $1' USING v_name;
    END IF;
    RAISE NOTICE 'pgingest: model % retired: dropped store % (and its index %), queue %, % embedding states, '
                 '% dead letters, % chunks of its profile % (no other live model uses it)',
        v_name, v_m.store_name, pgingest._index_name(v_name), v_m.queue_name, v_states, v_letters, v_chunks,
        v_m.profile_id;
    RETURN 'retired';
END;
$$;

COMMENT ON FUNCTION pgingest.retire_model(text) IS
'Retires a model that is not active: drops its store with its ANN index (one DROP TABLE), its queue, its '
'embedding states, dead letters and cached vectors, and the chunks of its profile when no live model uses '
'that profile any more; new documents are no longer queued for it. The name is not reusable.';

CREATE OR REPLACE FUNCTION pgingest.compare_models(a text, b text, k integer DEFAULT 10, sample integer DEFAULT 50)
RETURNS TABLE (
    model text,
    queries integer,
    top_k integer,
    overlap numeric,
    recall numeric,
    p50_ms numeric,
    p95_ms numeric
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_a pgingest.models;
    v_b pgingest.models;
    v_m pgingest.models;
    v_q record;
    v_sql text;
    v_t0 timestamptz;
    v_ann text[];
    v_exact text[];
    v_docs bigint[];
    v_docs_a bigint[];
    v_exact_docs bigint[];
    v_ms_a double precision[] := '{}';
    v_ms_b double precision[] := '{}';
    v_rec_a double precision[] := '{}';
    v_rec_b double precision[] := '{}';
    v_ov double precision[] := '{}';
    v_ms double precision;
    v_rec double precision;
    v_n integer := 0;
    v_i integer;
    v_idxscan text := current_setting('enable_indexscan');
BEGIN
    -- _check_model_name() and _model() run as the caller: admins may (sql/090_privileges.sql).
    v_a := pgingest._model(pgingest._check_model_name(compare_models.a));
    v_b := pgingest._model(pgingest._check_model_name(compare_models.b));
    IF k IS NULL OR k NOT BETWEEN 1 AND 1000 OR sample IS NULL OR sample NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'pgingest: k must be 1-1000 and sample 1-10000 (got %, %)', k, sample
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Queries: sampled chunk positions (doc_id, ordinal) with a vector in both stores; each model
    -- searches its own store with its own vector of that position (the same chunk when the two
    -- models share a chunking profile).
    FOR v_q IN EXECUTE format(
        'SELECT a.doc_id, a.ordinal FROM pgingest.%I AS a INNER JOIN pgingest.%I AS b '
        'ON a.doc_id = b.doc_id AND a.ordinal = b.ordinal ORDER BY random() LIMIT $1', v_a.store_name, v_b.store_name
    ) USING sample LOOP
        v_n := v_n + 1;
        FOR v_i IN 1 .. 2 LOOP
            v_m := CASE v_i WHEN 1 THEN v_a ELSE v_b END;
            -- The query vector is a scalar subquery (an InitPlan parameter), so the ANN index can
            -- order the scan.
            v_sql := format(
                $sql$
                SELECT array_agg(x.doc_id ORDER BY x.rn), array_agg(x.doc_id || ':' || x.ordinal ORDER BY x.rn)
                FROM (
                    SELECT c.doc_id, c.ordinal, row_number() OVER () AS rn
                    FROM (
                        SELECT c.doc_id, c.ordinal FROM pgingest.%1$I AS c
                        ORDER BY c.embedding %2$s (
                            SELECT q.embedding FROM pgingest.%1$I AS q WHERE q.doc_id = $1 AND q.ordinal = $2
                        )
                        LIMIT $3
                    ) AS c
                ) AS x
                $sql$,
                v_m.store_name, CASE v_m.metric WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' ELSE '<->' END
            );
            v_t0 := clock_timestamp();
            EXECUTE v_sql INTO v_docs, v_ann USING v_q.doc_id, v_q.ordinal, k;
            v_ms := 1000 * extract(EPOCH FROM clock_timestamp() - v_t0);
            PERFORM set_config('enable_indexscan', 'off', TRUE);
            EXECUTE v_sql INTO v_exact_docs, v_exact USING v_q.doc_id, v_q.ordinal, k;
            PERFORM set_config('enable_indexscan', v_idxscan, TRUE);
            SELECT count(*)::double precision / greatest(cardinality(v_exact), 1) INTO v_rec
            FROM (SELECT unnest(v_ann) INTERSECT SELECT unnest(v_exact)) AS i;
            IF v_i = 1 THEN
                v_ms_a := v_ms_a || v_ms;
                v_rec_a := v_rec_a || v_rec;
                v_docs_a := v_docs;
            ELSE
                v_ms_b := v_ms_b || v_ms;
                v_rec_b := v_rec_b || v_rec;
                -- Overlap: documents of A's top k chunks also among B's, over the larger of the two sets.
                v_ov := v_ov || (
                    SELECT count(*)::double precision / greatest(
                        (SELECT count(DISTINCT d) FROM unnest(v_docs_a) AS d),
                        (SELECT count(DISTINCT d) FROM unnest(v_docs) AS d), 1)
                    FROM (SELECT unnest(v_docs_a) INTERSECT SELECT unnest(v_docs)) AS i
                );
            END IF;
        END LOOP;
    END LOOP;
    FOR v_i IN 1 .. 2 LOOP
        model := CASE v_i WHEN 1 THEN v_a.name ELSE v_b.name END;
        queries := v_n;
        top_k := k;
        overlap := (SELECT round(avg(o)::numeric, 3) FROM unnest(v_ov) AS o);
        SELECT
            round(avg(x.r)::numeric, 3),
            round((percentile_cont(0.5) WITHIN GROUP (ORDER BY x.t))::numeric, 2),
            round((percentile_cont(0.95) WITHIN GROUP (ORDER BY x.t))::numeric, 2)
        INTO recall, p50_ms, p95_ms
        FROM unnest(
            CASE v_i WHEN 1 THEN v_rec_a ELSE v_rec_b END, CASE v_i WHEN 1 THEN v_ms_a ELSE v_ms_b END
        ) AS x (r, t);
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest.compare_models(text, text, integer, integer) IS
'Compares two models from psql without calling any endpoint: `sample` random chunks are used as queries '
'(each model searches its own store with its own vector of the chunk). Per model: overlap (mean share '
'of the documents of the top-k chunks found by both models), recall (ANN top k against exact search on '
'the same store) and ANN query latency p50/p95 in ms. `pgingest model compare` embeds real query texts.';

CREATE OR REPLACE FUNCTION pgingest.replay_query_log(a text, b text, k integer DEFAULT 10, sample integer DEFAULT 100)
RETURNS TABLE (
    query text,
    asked bigint,
    overlap numeric,
    recall numeric,
    a_ms numeric,
    b_ms numeric,
    a_doc_keys text[],
    b_doc_keys text[]
)
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_a pgingest.models;
    v_b pgingest.models;
    v_q record;
    v_t0 timestamptz;
    v_ids_a bigint[];
    v_ids_b bigint[];
BEGIN
    IF k IS NULL OR k NOT BETWEEN 1 AND 1000 OR sample IS NULL OR sample NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'pgingest: k must be 1-1000 and sample 1-10000 (got %, %)', k, sample
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- _check_model_name() and _model() run as the caller: admins may (sql/090_privileges.sql).
    v_a := pgingest._model(pgingest._check_model_name(replay_query_log.a));
    v_b := pgingest._model(pgingest._check_model_name(replay_query_log.b));
    IF NOT EXISTS (SELECT 1 FROM pgingest.query_log AS l WHERE l.query_text IS NOT NULL) THEN
        RAISE EXCEPTION 'pgingest: the query log holds no query text to replay'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Query texts are logged only with query_log_text on (a hash otherwise).',
                  HINT = 'SELECT pgingest.set_query_log(0.05, log_text => true); then let searches run.';
    END IF;
    -- The replay's own searches are not logged.
    PERFORM set_config('pgingest.query_log_skip', 'on', TRUE);
    FOR v_q IN
        WITH texts AS (
            SELECT DISTINCT ON (l.query_text)
                l.query_text, coalesce(l.filter, '{}') AS filter, l.sources,
                count(*) OVER (PARTITION BY l.query_text) AS n, l.id
            FROM pgingest.query_log AS l
            WHERE l.query_text IS NOT NULL
            ORDER BY l.query_text, l.id DESC
        )
        SELECT t.query_text, t.filter, t.sources, t.n FROM texts AS t ORDER BY t.n DESC, t.id DESC LIMIT sample
    LOOP
        query := v_q.query_text;
        asked := v_q.n;
        v_t0 := clock_timestamp();
        SELECT array_agg(s.doc_id ORDER BY s.distance), array_agg(s.doc_key ORDER BY s.distance)
        INTO v_ids_a, a_doc_keys
        FROM pgingest.search(
            pgingest.embed_query(v_q.query_text, v_a.name), k, v_q.filter, TRUE, v_a.name, v_q.sources
        ) AS s;
        a_ms := round((1000 * extract(EPOCH FROM clock_timestamp() - v_t0))::numeric, 2);
        v_t0 := clock_timestamp();
        SELECT array_agg(s.doc_id ORDER BY s.distance), array_agg(s.doc_key ORDER BY s.distance)
        INTO v_ids_b, b_doc_keys
        FROM pgingest.search(
            pgingest.embed_query(v_q.query_text, v_b.name), k, v_q.filter, TRUE, v_b.name, v_q.sources
        ) AS s;
        b_ms := round((1000 * extract(EPOCH FROM clock_timestamp() - v_t0))::numeric, 2);
        -- Overlap: documents found by both over the larger list; recall: A's documents that B finds.
        SELECT
            round((count(*)::double precision / greatest(
                coalesce(cardinality(v_ids_a), 0), coalesce(cardinality(v_ids_b), 0), 1
            ))::numeric, 3),
            round((count(*)::double precision / greatest(coalesce(cardinality(v_ids_a), 0), 1))::numeric, 3)
        INTO overlap, recall
        FROM (SELECT unnest(v_ids_a) INTERSECT SELECT unnest(v_ids_b)) AS i;
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('pgingest.query_log_skip', '', TRUE);
END;
$$;

COMMENT ON FUNCTION pgingest.replay_query_log(text, text, integer, integer) IS
'Replays the logged query texts (the `sample` most asked, with the filter and sources last used) through '
'models a (usually the active one) and b (the candidate): each embeds the query through its own endpoint '
'and searches its own store, one row per document. Per query: how often it was asked, the top-k document '
'overlap, b''s recall of a''s documents, each side''s latency in ms (embedding included) and both result '
'lists; sort by overlap to read the queries on which they disagree most. Needs query_log_text on. Its own '
'searches are not logged.';

CREATE OR REPLACE FUNCTION pgingest.compare_models_on_log(
    a text, b text, k integer DEFAULT 10, sample integer DEFAULT 100
)
RETURNS TABLE (
    model text,
    queries integer,
    top_k integer,
    overlap numeric,
    recall numeric,
    p50_ms numeric,
    p95_ms numeric
)
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH r AS MATERIALIZED (
        SELECT
            q.overlap,
            q.recall,
            q.a_ms,
            q.b_ms
        FROM pgingest.replay_query_log(compare_models_on_log.a, compare_models_on_log.b, k, sample) AS q  -- noqa: RF01
    )

    -- The columns in the order of compare_models().
    SELECT  -- noqa: ST06
        s.model,
        (SELECT count(*)::integer FROM r) AS queries,
        k AS top_k,
        (SELECT round(avg(r.overlap), 3) FROM r) AS overlap,
        CASE WHEN s.side = 2 THEN (SELECT round(avg(r.recall), 3) FROM r) END AS recall,
        (
            SELECT round((percentile_cont(0.5) WITHIN GROUP (
                ORDER BY CASE WHEN s.side = 1 THEN r.a_ms ELSE r.b_ms END
            ))::numeric, 2) FROM r
        ) AS p50_ms,
        (
            SELECT round((percentile_cont(0.95) WITHIN GROUP (
                ORDER BY CASE WHEN s.side = 1 THEN r.a_ms ELSE r.b_ms END
            ))::numeric, 2) FROM r
        ) AS p95_ms
    FROM (VALUES (1, compare_models_on_log.a), (2, compare_models_on_log.b)) AS s (side, model)  -- noqa: RF01
    ORDER BY s.side;
END;

COMMENT ON FUNCTION pgingest.compare_models_on_log(text, text, integer, integer) IS
'Compares two models on the queries users asked (pgingest.replay_query_log): per model, the queries replayed, '
'the mean top-k document overlap, b''s recall of a''s documents (on b''s row) and the latency p50/p95 in ms '
'(the query''s embedding through the model''s endpoint included). Needs query_log_text on.';
