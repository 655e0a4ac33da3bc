-- Operations: worker heartbeats, queue statistics and the status views that `pgingest status`,
-- psql users holding pgingest_monitor and the worker's metrics read.
-- Views are plain SQL over the tables (they run with their owner's rights); the two figures that
-- need more (the pgmq queue tables, other sessions' index builds) come from SECURITY DEFINER
-- functions with a pinned search_path.

-- ---------------------------------------------------------------------------------------------
-- Heartbeats (worker API)
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgingest._config_seconds(p_key text, p_default integer)
RETURNS integer
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT coalesce(
        (
            SELECT c.value::integer FROM pgingest.config AS c
            WHERE c.key = p_key AND c.value ~ '^[0-9]{1,9}$'
        ),
        p_default
    );
END;

COMMENT ON FUNCTION pgingest._config_seconds(text, integer) IS
'An integer setting of pgingest.config (seconds), or p_default when it is missing or not a number.';

CREATE OR REPLACE FUNCTION pgingest.heartbeat_v1(
    p_worker_id uuid,
    p_host text,
    p_pid integer,
    p_version text,
    p_models text[] DEFAULT '{}',
    p_in_flight integer DEFAULT 0,
    p_batch_size integer DEFAULT NULL,
    p_documents bigint DEFAULT 0,
    p_seconds_since_batch double precision DEFAULT NULL,
    p_details jsonb DEFAULT '{}'
)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH forgotten AS (
        DELETE FROM pgingest.workers AS w
        WHERE
            w.last_seen < now() - make_interval(secs => pgingest._config_seconds('worker_forget_after_seconds', 900))
            AND w.id <> p_worker_id
        RETURNING w.id
    )

    INSERT INTO pgingest.workers AS w (
        id, host, pid, version, started_at, last_seen, models, in_flight, batch_size, documents,
        last_batch_at, details
    ) VALUES (
        p_worker_id, left(p_host, 255), p_pid, left(p_version, 64), now(), now(), coalesce(p_models, '{}'),
        greatest(coalesce(p_in_flight, 0), 0), p_batch_size, greatest(coalesce(p_documents, 0), 0),
        now() - make_interval(secs => p_seconds_since_batch), coalesce(p_details, '{}')
    )
    ON CONFLICT (id) DO UPDATE SET
        host = excluded.host,
        pid = excluded.pid,
        version = excluded.version,
        last_seen = excluded.last_seen,
        models = excluded.models,
        in_flight = excluded.in_flight,
        batch_size = excluded.batch_size,
        documents = excluded.documents,
        last_batch_at = coalesce(excluded.last_batch_at, w.last_batch_at),
        details = excluded.details;
    SELECT pgingest._config_seconds('worker_heartbeat_seconds', 10);
END;

COMMENT ON FUNCTION pgingest.heartbeat_v1(
    uuid, text, integer, text, text[], integer, integer, bigint, double precision, jsonb
) IS
'Worker: records that this worker process is alive (upsert into pgingest.workers; started_at and '
'last_seen come from the database clock) and deletes rows silent for worker_forget_after_seconds. '
'Returns the heartbeat interval in seconds (config worker_heartbeat_seconds).';

CREATE OR REPLACE FUNCTION pgingest.heartbeat_v2(
    p_worker_id uuid,
    p_host text,
    p_pid integer,
    p_version text,
    p_models text[] DEFAULT '{}',
    p_in_flight integer DEFAULT 0,
    p_batch_size integer DEFAULT NULL,
    p_documents bigint DEFAULT 0,
    p_seconds_since_batch double precision DEFAULT NULL,
    p_details jsonb DEFAULT '{}',
    p_seconds_since_tick double precision DEFAULT NULL
)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH forgotten AS (
        DELETE FROM pgingest.workers AS w
        WHERE
            w.last_seen < now() - make_interval(secs => pgingest._config_seconds('worker_forget_after_seconds', 900))
            AND w.id <> p_worker_id
        RETURNING w.id
    )

    INSERT INTO pgingest.workers AS w (
        id, host, pid, version, started_at, last_seen, models, in_flight, batch_size, documents,
        last_batch_at, details, last_tick_at
    ) VALUES (
        p_worker_id, left(p_host, 255), p_pid, left(p_version, 64), now(), now(), coalesce(p_models, '{}'),
        greatest(coalesce(p_in_flight, 0), 0), p_batch_size, greatest(coalesce(p_documents, 0), 0),
        now() - make_interval(secs => p_seconds_since_batch), coalesce(p_details, '{}'),
        now() - make_interval(secs => greatest(p_seconds_since_tick, 0))
    )
    ON CONFLICT (id) DO UPDATE SET
        host = excluded.host,
        pid = excluded.pid,
        version = excluded.version,
        last_seen = excluded.last_seen,
        models = excluded.models,
        in_flight = excluded.in_flight,
        batch_size = excluded.batch_size,
        documents = excluded.documents,
        last_batch_at = coalesce(excluded.last_batch_at, w.last_batch_at),
        details = excluded.details,
        last_tick_at = coalesce(excluded.last_tick_at, w.last_tick_at);
    SELECT pgingest._config_seconds('worker_heartbeat_seconds', 10);
END;

COMMENT ON FUNCTION pgingest.heartbeat_v2(
    uuid, text, integer, text, text[], integer, integer, bigint, double precision, jsonb, double precision
) IS
'Worker: heartbeat_v1 plus p_seconds_since_tick, how long ago the worker''s main loop last completed a '
'pass (stored as workers.last_tick_at: a fresh heartbeat with an old tick is a stuck worker). '
'heartbeat_v1 stays for workers older than this schema (their last_tick_at stays NULL).';

CREATE OR REPLACE FUNCTION pgingest.worker_exit_v1(p_worker_id uuid)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH gone AS (
        DELETE FROM pgingest.workers AS w
        WHERE w.id = p_worker_id
        RETURNING w.id
    )

    SELECT count(*) > 0 FROM gone;
END;

COMMENT ON FUNCTION pgingest.worker_exit_v1(uuid) IS
'Worker: removes the heartbeat row of a worker that stops cleanly (a killed one goes stale instead).';

CREATE OR REPLACE FUNCTION pgingest.forget_stale_workers(p_older_than interval DEFAULT NULL)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH gone AS (
        DELETE FROM pgingest.workers AS w
        WHERE
            w.last_seen < now() - coalesce(
                p_older_than, make_interval(secs => pgingest._config_seconds('worker_stale_after_seconds', 60))
            )
        RETURNING w.id
    )

    SELECT count(*)::integer FROM gone;
END;

COMMENT ON FUNCTION pgingest.forget_stale_workers(interval) IS
'Admin: deletes the heartbeat rows of workers silent for p_older_than (default: the stale threshold, '
'config worker_stale_after_seconds), e.g. after a crashed worker was replaced. Returns the count.';

-- ---------------------------------------------------------------------------------------------
-- Queue statistics (the pgmq tables are closed to everyone but their owner)
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgingest.queue_stats_v1(p_model text DEFAULT NULL)
RETURNS TABLE (
    model text,
    queue_name text,
    queue_length bigint,
    ready bigint,
    in_flight bigint,
    delayed bigint,
    oldest_enqueued_at timestamptz,
    oldest_age_seconds double precision
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m record;
    v_n bigint;
    -- Exact counts up to this many messages; above, an estimate (issue 18, item 12: the heartbeat
    -- and the status views read this every few seconds, and a count of millions of rows is not
    -- free).
    v_cap constant integer := pgingest._config_seconds('queue_count_limit', 100000);
BEGIN
    FOR v_m IN
        SELECT m.name, m.queue_name FROM pgingest.models AS m
        WHERE m.state <> 'retired' AND (p_model IS NULL OR m.name = p_model)
        ORDER BY m.name
    LOOP
        model := v_m.name;
        queue_name := v_m.queue_name;
        IF to_regclass(format('pgmq.%I', 'q_' || v_m.queue_name)) IS NULL THEN
            queue_length := NULL; ready := NULL; in_flight := NULL; delayed := NULL;
            oldest_enqueued_at := NULL; oldest_age_seconds := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM pgmq.%I LIMIT $1) AS q', 'q_' || v_m.queue_name)
        INTO v_n USING v_cap + 1;
        IF v_n > v_cap THEN
            -- Too many to count on every call: the planner's estimate (at least what was seen), no
            -- split by state, the oldest message by its id (the primary key).
            queue_length := greatest(
                v_n, (SELECT c.reltuples::bigint FROM pg_catalog.pg_class AS c
                      WHERE c.oid = format('pgmq.%I', 'q_' || v_m.queue_name)::regclass)
            );
            ready := NULL; in_flight := NULL; delayed := NULL;
            EXECUTE format('SELECT q.enqueued_at FROM pgmq.%I AS q ORDER BY q.msg_id LIMIT 1', 'q_' || v_m.queue_name)
            INTO oldest_enqueued_at;
        ELSE
            EXECUTE format(
                $sql$
                SELECT count(*),
                       count(*) FILTER (WHERE q.vt <= now()),
                       count(*) FILTER (WHERE q.vt > now() AND q.read_ct > 0),
                       count(*) FILTER (WHERE q.vt > now() AND q.read_ct = 0),
                       min(q.enqueued_at)
                FROM pgmq.%I AS q
                $sql$,
                'q_' || v_m.queue_name
            ) INTO queue_length, ready, in_flight, delayed, oldest_enqueued_at;
        END IF;
        oldest_age_seconds := greatest(extract(EPOCH FROM now() - oldest_enqueued_at)::double precision, 0);
        RETURN NEXT;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest.queue_stats_v1(text) IS
'Messages in each live model''s pgmq queue (or p_model''s): total, ready (visible now), in_flight '
'(claimed by a worker, or released with a delay), delayed (deferred after a failure or a 429, not yet '
'visible), and the age of the oldest one (the freshness lag). Exact up to config queue_count_limit '
'messages (100,000); above, queue_length is an estimate and ready, in_flight and delayed are NULL.';

CREATE OR REPLACE FUNCTION pgingest.queue_has_messages_v1(p_model text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_any boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM pgmq.%I)', 'q_' || v_m.queue_name) INTO v_any;
    RETURN v_any;
END;
$$;

COMMENT ON FUNCTION pgingest.queue_has_messages_v1(text) IS
'Worker: whether a model''s queue holds any message (visible or not): the cheap question its main loop '
'asks after an empty read (issue 18, item 12), where queue_stats_v1 would count the queue.';

-- ---------------------------------------------------------------------------------------------
-- Index builds in progress (other sessions' progress rows need pg_read_all_stats: definer rights)
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION pgingest._index_builds()
RETURNS TABLE (
    pid integer,
    model text,
    index_name text,
    command text,
    phase text,
    blocks_done bigint,
    blocks_total bigint,
    tuples_done bigint,
    tuples_total bigint,
    started_at timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT  -- noqa: ST06
        p.pid,
        coalesce(
            (
                SELECT m.name FROM pgingest.models AS m
                WHERE
                    m.state <> 'retired'
                    AND (
                        -- pg_partition_tree() lists nothing for a table that is not partitioned
                        p.relid = to_regclass(format('pgingest.%I', m.store_name))
                        OR p.relid IN (
                            SELECT t.relid FROM pg_partition_tree(to_regclass(format('pgingest.%I', m.store_name))) AS t
                        )
                    )
                ORDER BY m.name
                LIMIT 1
            ),
            (
                SELECT m.name FROM pgingest.models AS m
                WHERE ic.relname = pgingest._index_name(m.name)
            )
        ) AS model,
        ic.relname::text,
        p.command,
        p.phase,
        p.blocks_done,
        p.blocks_total,
        p.tuples_done,
        p.tuples_total,
        a.query_start
    FROM pg_stat_progress_create_index AS p
    LEFT JOIN pg_class AS ic ON p.index_relid = ic.oid
    LEFT JOIN pg_stat_activity AS a ON p.pid = a.pid
    WHERE
        p.relid = 'pgingest.chunks'::regclass
        OR p.relid IN (SELECT t.relid FROM pg_partition_tree('pgingest.chunks') AS t)
        OR p.relid IN (
            SELECT to_regclass(format('pgingest.%I', m.store_name))
            FROM pgingest.models AS m
            WHERE m.state <> 'retired'
            UNION ALL
            SELECT t.relid
            FROM pgingest.models AS m
            CROSS JOIN LATERAL pg_partition_tree(to_regclass(format('pgingest.%I', m.store_name))) AS t
            WHERE m.state <> 'retired'
        )
    ORDER BY p.pid;
END;

COMMENT ON FUNCTION pgingest._index_builds() IS
'CREATE INDEX / REINDEX runs on pgingest.chunks or a model''s store now, with their progress '
'(pg_stat_progress_create_index), '
'seen with the rights of the function''s owner. Feeds the view pgingest.index_builds.';

-- ---------------------------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE VIEW pgingest.model_status AS
WITH settings AS (
    -- Settings are read here rather than through _config_seconds(): a view reads tables with its
    -- owner's rights but calls functions with the caller's, and monitors cannot read config.
    SELECT
        greatest(
            coalesce(
                (
                    SELECT c.value::integer FROM pgingest.config AS c
                    WHERE c.key = 'throughput_window_seconds' AND c.value ~ '^[0-9]{1,9}$'
                ),
                300
            ),
            1
        ) AS window_s
),

docs AS (
    SELECT count(*) AS n FROM pgingest.source_documents
),

base AS (
    SELECT
        m.name,
        m.state,
        m.paused,
        m.paused_reason,
        m.model_id,
        m.dimensions,
        m.storage,
        m.metric,
        m.backfill_upto,
        m.backfill_started_at,
        m.backfill_completed_at,
        docs.n AS documents,
        settings.window_s,
        e.embedded,
        e.recent,
        e.backfill_embedded,
        e.backfill_recent,
        l.dead_lettered,
        l.backfill_dead,
        l.dead_letters,
        coalesce(
            (
                SELECT count(*) FROM pgingest.source_documents AS d
                WHERE d.doc_id <= m.backfill_upto
            ), 0
        ) AS backfill_documents
    FROM pgingest.models AS m
    CROSS JOIN docs
    CROSS JOIN settings
    CROSS JOIN
        LATERAL (
            SELECT
                count(*) AS embedded,
                count(*) FILTER (
                    WHERE s.embedded_at > now() - make_interval(secs => settings.window_s)
                ) AS recent,
                count(*) FILTER (WHERE d.doc_id <= m.backfill_upto) AS backfill_embedded,
                count(*) FILTER (
                    WHERE d.doc_id <= m.backfill_upto
                    AND s.embedded_at > now() - make_interval(secs => settings.window_s)
                ) AS backfill_recent
            FROM pgingest.embedding_state AS s
            INNER JOIN pgingest.source_documents AS d ON s.doc_id = d.doc_id AND s.content_hash = d.content_hash
            WHERE s.model = m.name
        ) AS e
    CROSS JOIN
        LATERAL (
            SELECT
                count(d.doc_id) AS dead_lettered,
                count(d.doc_id) FILTER (WHERE d.doc_id <= m.backfill_upto) AS backfill_dead,
                count(*) AS dead_letters
            FROM pgingest.dead_letters AS dl
            LEFT JOIN pgingest.source_documents AS d ON dl.doc_id = d.doc_id AND dl.content_hash = d.content_hash
            WHERE dl.model = m.name
        ) AS l
    WHERE m.state <> 'retired'
)

SELECT  -- noqa: ST06
    b.name AS model,
    b.state,
    b.paused,
    b.paused_reason,
    b.model_id,
    b.dimensions,
    b.storage,
    b.metric,
    b.documents,
    b.embedded,
    b.dead_lettered,
    greatest(b.documents - b.embedded - b.dead_lettered, 0) AS pending,
    b.dead_letters,
    CASE
        WHEN b.documents = 0 THEN 100.0
        ELSE round(100.0 * b.embedded / b.documents, 2)
    END AS coverage_pct,
    q.queue_length,
    q.ready AS queue_ready,
    q.in_flight AS queue_in_flight,
    q.delayed AS queue_delayed,
    q.oldest_enqueued_at,
    now() - q.oldest_enqueued_at AS oldest_pending_age,
    round(coalesce(q.oldest_age_seconds, 0)::numeric, 3) AS freshness_lag_seconds,
    b.window_s AS throughput_window_seconds,
    b.recent AS embedded_in_window,
    round(b.recent::numeric / b.window_s, 3) AS docs_per_second,
    CASE
        WHEN b.backfill_upto IS NULL THEN 'none'
        WHEN b.backfill_completed_at IS NULL THEN 'queueing'
        WHEN b.backfill_documents - b.backfill_embedded - b.backfill_dead > 0 THEN 'running'
        ELSE 'done'
    END AS backfill_state,
    b.backfill_started_at,
    b.backfill_completed_at AS backfill_queued_at,
    b.backfill_documents,
    b.backfill_embedded,
    b.backfill_dead,
    greatest(b.backfill_documents - b.backfill_embedded - b.backfill_dead, 0) AS backfill_pending,
    CASE
        WHEN b.backfill_documents = 0 THEN 100.0
        ELSE round(100.0 * (b.backfill_embedded + b.backfill_dead) / b.backfill_documents, 2)
    END AS backfill_pct,
    round(b.backfill_recent::numeric / b.window_s, 3) AS backfill_docs_per_second,
    CASE
        WHEN b.backfill_documents - b.backfill_embedded - b.backfill_dead <= 0 THEN interval '0'
        WHEN b.backfill_recent > 0
            THEN make_interval(
                secs => ceil(
                    (b.backfill_documents - b.backfill_embedded - b.backfill_dead)::numeric
                    * b.window_s / b.backfill_recent
                )::double precision
            )
    END AS backfill_eta
FROM base AS b
LEFT JOIN pgingest.queue_stats_v1() AS q ON b.name = q.model;

COMMENT ON VIEW pgingest.model_status IS
'One row per live model: lifecycle state, pause and its reason; documents, embedded (current version), '
'dead_lettered (current version), pending (neither yet), dead_letters (all rows), coverage; the queue '
'(ready, in flight, delayed, oldest message age = freshness lag); throughput over the last '
'throughput_window_seconds (config); backfill progress (documents that existed at registration: '
'embedded, dead, pending, percent handled, rate, ETA).';

CREATE OR REPLACE VIEW pgingest.dead_letter_summary AS
SELECT
    dl.model,
    dl.error_class,
    count(*) AS dead_letters,
    count(dl.doc_id) AS documents,
    min(dl.first_failed_at) AS oldest,
    max(dl.last_failed_at) AS newest,
    max(dl.attempts) AS max_attempts,
    (array_agg(dl.error_message ORDER BY dl.last_failed_at DESC, dl.id DESC))[1] AS sample_message,
    (array_agg(dl.doc_key ORDER BY dl.last_failed_at DESC, dl.id DESC))[1] AS sample_doc_key,
    (array_agg(dl.doc_id ORDER BY dl.last_failed_at DESC, dl.id DESC))[1] AS sample_doc_id
FROM pgingest.dead_letters AS dl
GROUP BY dl.model, dl.error_class;

COMMENT ON VIEW pgingest.dead_letter_summary IS
'Dead letters by model and error class: how many (and of how many documents), the oldest first failure, '
'the newest failure, the most attempts, and the newest message as a sample. '
'Requeue with pgingest.requeue_dead_letters(model, error_class).';

CREATE OR REPLACE VIEW pgingest.worker_status AS
WITH settings AS (
    SELECT
        coalesce(
            (
                SELECT c.value::integer FROM pgingest.config AS c
                WHERE c.key = 'worker_stale_after_seconds' AND c.value ~ '^[0-9]{1,9}$'
            ),
            60
        ) AS stale_s,
        coalesce(
            (
                SELECT c.value::integer FROM pgingest.config AS c
                WHERE c.key = 'worker_stuck_after_seconds' AND c.value ~ '^[0-9]{1,9}$'
            ),
            600
        ) AS stuck_s
)

SELECT  -- noqa: ST06
    w.id,
    w.host,
    w.pid,
    w.version,
    w.started_at,
    w.last_seen,
    now() - w.last_seen AS last_seen_age,
    w.last_seen < now() - make_interval(secs => settings.stale_s) AS stale,
    w.models,
    w.in_flight,
    w.batch_size,
    w.documents,
    w.last_batch_at,
    now() - w.started_at AS uptime,
    w.details,
    w.last_tick_at,
    now() - w.last_tick_at AS last_tick_age,
    coalesce(
        w.last_seen >= now() - make_interval(secs => settings.stale_s)
        AND w.last_tick_at < now() - make_interval(secs => settings.stuck_s),
        FALSE
    ) AS stuck
FROM pgingest.workers AS w
CROSS JOIN settings;

COMMENT ON VIEW pgingest.worker_status IS
'Worker heartbeats: host, pid, version, started, last seen (and how long ago), stale (silent for more '
'than config worker_stale_after_seconds: the process died or hangs), models served, messages in flight, '
'current batch size, documents embedded since start, last batch; last_tick_at, when its main loop last '
'completed a pass, and stuck (heartbeat fresh, main loop silent for more than config '
'worker_stuck_after_seconds: a hung call, the heartbeat thread alone alive).';

CREATE OR REPLACE VIEW pgingest.index_builds AS
SELECT  -- noqa: ST06
    b.pid,
    b.model,
    b.index_name,
    b.command,
    b.phase,
    b.blocks_done,
    b.blocks_total,
    b.tuples_done,
    b.tuples_total,
    CASE
        WHEN b.blocks_total > 0 THEN round(100.0 * b.blocks_done / b.blocks_total, 1)
        WHEN b.tuples_total > 0 THEN round(100.0 * b.tuples_done / b.tuples_total, 1)
    END AS pct,
    b.started_at,
    now() - b.started_at AS elapsed
FROM pgingest._index_builds() AS b;

COMMENT ON VIEW pgingest.index_builds IS
'Index builds running on pgingest.chunks or the models'' stores (CREATE INDEX [CONCURRENTLY], REINDEX): '
'model, phase and '
'progress in blocks or tuples (pg_stat_progress_create_index).';

CREATE OR REPLACE VIEW pgingest.vector_health AS
SELECT  -- noqa: ST06
    m.name AS model,
    m.state,
    m.index_method,
    ix.index_name,
    ix.access_method,
    ix.valid,
    ix.ready,
    ix.index_name IN (SELECT b.index_name FROM pgingest.index_builds AS b) AS building,
    ix.size_bytes,
    pg_size_pretty(ix.size_bytes) AS size,
    ix.options,
    CASE
        WHEN m.index_method = 'none' THEN 'not indexed (exact search)'
        WHEN ix.index_name IS NULL THEN 'missing'
        WHEN NOT ix.valid THEN 'invalid or building'
        ELSE 'ok'
    END AS index_status,
    coalesce(current_setting('hnsw.ef_search', TRUE), '40') AS hnsw_ef_search,
    coalesce(current_setting('ivfflat.probes', TRUE), '1') AS ivfflat_probes,
    coalesce(
        current_setting(
            CASE WHEN m.index_method = 'ivfflat' THEN 'ivfflat.iterative_scan' ELSE 'hnsw.iterative_scan' END,
            TRUE
        ),
        'off'
    ) AS iterative_scan,
    t.n_live_tup AS chunks_live_tuples,
    t.n_dead_tup AS chunks_dead_tuples,
    CASE
        WHEN t.n_live_tup + t.n_dead_tup > 0
            THEN round(100.0 * t.n_dead_tup / (t.n_live_tup + t.n_dead_tup), 1)
    END AS chunks_dead_pct,
    pg_total_relation_size('pgingest.chunks'::regclass) AS chunks_total_bytes,
    t.last_vacuum AS chunks_last_vacuum,
    t.last_autovacuum AS chunks_last_autovacuum,
    t.last_analyze AS chunks_last_analyze,
    t.last_autoanalyze AS chunks_last_autoanalyze,
    st.n_live_tup AS store_live_tuples,
    st.n_dead_tup AS store_dead_tuples,
    pg_total_relation_size(to_regclass(format('pgingest.%I', m.store_name))) AS store_total_bytes
FROM pgingest.models AS m
LEFT JOIN LATERAL (
    SELECT  -- noqa: ST06
        ic.relname::text AS index_name,
        am.amname::text AS access_method,
        i.indisvalid AS valid,
        i.indisready AS ready,
        pg_relation_size(i.indexrelid) AS size_bytes,
        ic.reloptions AS options
    FROM pg_index AS i
    INNER JOIN pg_class AS ic ON i.indexrelid = ic.oid
    INNER JOIN pg_am AS am ON ic.relam = am.oid
    INNER JOIN pg_attribute AS att
        ON i.indrelid = att.attrelid AND att.attname = 'embedding' AND att.attnum = ANY(i.indkey)
    WHERE i.indrelid = to_regclass(format('pgingest.%I', m.store_name)) AND am.amname IN ('hnsw', 'ivfflat')
    ORDER BY i.indisvalid DESC, ic.oid DESC
    LIMIT 1
) AS ix ON TRUE
LEFT JOIN pg_stat_user_tables AS t ON t.relid = 'pgingest.chunks'::regclass
LEFT JOIN pg_stat_user_tables AS st ON st.relid = to_regclass(format('pgingest.%I', m.store_name))
WHERE m.state <> 'retired';

COMMENT ON VIEW pgingest.vector_health IS
'pgvector health per live model: its ANN index on its store (name, access method, valid, ready, '
'being built, size, options, a status line), the search settings in effect in this session '
'(hnsw.ef_search, ivfflat.probes, iterative scan; pgvector''s defaults when unset), and the chunks '
'table''s dead tuples and (auto)vacuum/analyze times, and the live and dead tuples and total size of the '
'model''s store (store_*).';

-- Traffic shifting and the query log (issue 20): figures for monitors, never the log's rows.
-- Its columns grew (cached_share, then configured_share): an older definition is dropped first
-- (090 grants it again).
DO $$
BEGIN
    IF to_regprocedure('pgingest.traffic_status(interval)') IS NOT NULL
       AND NOT EXISTS (
           SELECT 1 FROM pg_catalog.pg_proc AS p
           WHERE p.oid = to_regprocedure('pgingest.traffic_status(interval)')
             AND 'configured_share' = ANY (p.proargnames)
       ) THEN
        DROP FUNCTION pgingest.traffic_status(interval);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgingest.traffic_status(recent interval DEFAULT '15 minutes')
RETURNS TABLE (
    model text,
    state text,
    share double precision,
    shift_since timestamptz,
    logged_searches bigint,
    est_searches bigint,
    p50_ms numeric,
    p95_ms numeric,
    p99_ms numeric,
    cached_share double precision,
    configured_share double precision
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    v_rate double precision;
    v_shift pgingest.traffic_shift;
    v_serves boolean;
BEGIN
    IF recent IS NULL OR recent <= interval '0' OR recent > interval '31 days' THEN
        RAISE EXCEPTION 'pgingest: the window must be positive and at most 31 days, not %',
            coalesce(recent::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT CASE WHEN c.value ~ '^\s*(0(\.[0-9]+)?|1(\.0*)?|\.[0-9]+)\s*$' THEN c.value::double precision END
    INTO v_rate
    FROM pgingest.config AS c WHERE c.key = 'query_log_sample_rate';
    SELECT * INTO v_shift FROM pgingest.traffic_shift AS t;
    -- What route_model does (review 2026-12-07, item 2): a paused candidate serves nothing, the
    -- active model everything; configured_share keeps the share the shift was given.
    v_serves := EXISTS (
        SELECT 1 FROM pgingest.models AS m
        WHERE m.name = v_shift.model AND m.state IN ('shadow', 'standby') AND NOT m.paused
    );
    RETURN QUERY
    SELECT
        m.name,
        m.state,
        CASE
            WHEN m.name = v_shift.model THEN CASE WHEN v_serves THEN v_shift.share ELSE 0 END
            WHEN m.state = 'active' THEN 1 - CASE WHEN v_serves THEN v_shift.share ELSE 0 END
            ELSE 0
        END,
        CASE WHEN m.name = v_shift.model THEN v_shift.started_at END,
        coalesce(l.n, 0),
        CASE WHEN v_rate > 0 THEN round(coalesce(l.n, 0) / v_rate)::bigint END,
        round(l.p50::numeric, 2),
        round(l.p95::numeric, 2),
        round(l.p99::numeric, 2),
        l.cached,
        CASE
            WHEN m.name = v_shift.model THEN v_shift.share
            WHEN m.state = 'active' THEN 1 - coalesce(v_shift.share, 0)
            ELSE 0
        END
    FROM pgingest.models AS m
    LEFT JOIN LATERAL (
        SELECT
            count(*) AS n,
            percentile_cont(0.5) WITHIN GROUP (ORDER BY q.latency_ms) AS p50,
            percentile_cont(0.95) WITHIN GROUP (ORDER BY q.latency_ms) AS p95,
            percentile_cont(0.99) WITHIN GROUP (ORDER BY q.latency_ms) AS p99,
            (count(*) FILTER (WHERE q.query_vector IN ('session', 'shared')))::double precision
            / nullif(count(q.query_vector), 0) AS cached
        FROM pgingest.query_log AS q
        WHERE q.model = m.name AND q.logged_at > now() - recent
    ) AS l ON TRUE
    WHERE m.state <> 'retired'
    ORDER BY m.name;
END;
$$;

COMMENT ON FUNCTION pgingest.traffic_status(interval) IS
'Per live model: its share of the text searches as route_model serves them (the active model serves what '
'the shift''s candidate does not; a paused candidate serves nothing: 0, the active model 1), the share '
'shift_traffic configured (configured_share: the candidate''s even while paused), since when it is '
'shifted, and over the `recent` window the searches the query log recorded '
'(logged_searches; est_searches divides by the sample rate) with their latency p50/p95/p99 in ms, and the '
'share of the logged text searches whose query vector came from a cache (cached_share). Figures '
'only: the log''s rows (query texts) stay readable by admins alone. Empty figures with the log off.';

CREATE OR REPLACE FUNCTION pgingest.query_log_status()
RETURNS TABLE (
    sample_rate text,
    log_text boolean,
    keep text,
    max_rows text,
    logged_rows bigint,
    oldest timestamptz,
    newest timestamptz,
    writable boolean
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT
        coalesce(max(c.value) FILTER (WHERE c.key = 'query_log_sample_rate'), '0') AS sample_rate,
        coalesce(bool_or(c.value IN ('on', 'true')) FILTER (WHERE c.key = 'query_log_text'), FALSE) AS log_text,
        coalesce(max(c.value) FILTER (WHERE c.key = 'query_log_keep'), '7 days') AS keep,
        coalesce(max(c.value) FILTER (WHERE c.key = 'query_log_max_rows'), '100000') AS max_rows,
        (SELECT count(*) FROM pgingest.query_log) AS logged_rows,
        (SELECT min(q.logged_at) FROM pgingest.query_log AS q) AS oldest,
        (SELECT max(q.logged_at) FROM pgingest.query_log AS q) AS newest,
        NOT pg_is_in_recovery() AS writable
    FROM pgingest.config AS c
    WHERE c.key LIKE 'query\_log\_%';
END;

COMMENT ON FUNCTION pgingest.query_log_status() IS
'The query log''s settings (config query_log_*), its size and time span, and whether this server writes it '
'(a read replica does not: its searches are logged nowhere).';
