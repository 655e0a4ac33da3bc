-- Least privilege: five NOLOGIN group roles and everything granted on the pgingest schema.
-- Re-run on every install or upgrade, after every other routine exists: the end state is exactly
-- what this file says (everything is revoked from PUBLIC and from the five roles, then granted).
-- A DBA gives a login one of the groups: GRANT pgingest_writer TO app_user; (docs/operations.md)
--
--   pgingest_writer   INSERT/UPDATE/DELETE/SELECT on pgingest.documents, nothing else (the capture
--                     triggers are SECURITY DEFINER: writers need no pgmq rights)
--   pgingest_reader   search: the search view(s) and functions, the status views, models and config
--   pgingest_worker   the worker API (*_v1 functions), pause/resume, SELECT on models and config
--   pgingest_monitor  the status views only
--   pgingest_admin    model lifecycle and repair functions, SELECT on every table; member of
--                     pgingest_reader and pgingest_monitor

-- Roles are cluster-wide: create the missing ones (tolerating a concurrent install in another
-- database of the cluster), or say exactly what a superuser must run.
DO $$
DECLARE
    v_role text;
    v_missing text[] := '{}';
BEGIN
    FOREACH v_role IN ARRAY ARRAY[
        'pgingest_writer', 'pgingest_reader', 'pgingest_worker', 'pgingest_monitor', 'pgingest_admin'
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role) THEN
            v_missing := v_missing || v_role;
        END IF;
    END LOOP;
    IF cardinality(v_missing) = 0 THEN
        RETURN;
    END IF;
    IF NOT (SELECT r.rolsuper OR r.rolcreaterole FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'pgingest: the roles % do not exist and % may not create roles',
            array_to_string(v_missing, ', '), current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A superuser runs once (docs/deployment.md): '
                         || (SELECT string_agg(format('CREATE ROLE %I NOLOGIN;', m), ' ') FROM unnest(v_missing) AS m)
                         || ' GRANT pgingest_reader, pgingest_monitor TO pgingest_admin;'
                         || format(' GRANT pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, '
                                   'pgingest_admin TO %I WITH ADMIN OPTION;', current_user);
    END IF;
    FOREACH v_role IN ARRAY v_missing LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by an install into another database of this cluster
        END;
    END LOOP;
END;
$$;

-- Start from nothing: PUBLIC and the five roles lose every privilege on the schema's objects.
REVOKE ALL ON SCHEMA pgingest FROM PUBLIC;  -- noqa: CP02
REVOKE ALL ON ALL TABLES IN SCHEMA pgingest
FROM PUBLIC, pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;  -- noqa: CP02
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgingest
FROM PUBLIC, pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;  -- noqa: CP02
REVOKE ALL ON ALL ROUTINES IN SCHEMA pgingest
FROM PUBLIC, pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;  -- noqa: CP02

GRANT USAGE ON SCHEMA pgingest
TO pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;

-- Writers: the documents table. The generated content_hash column calls _content_hash() as the
-- writer; the capture triggers run as their owner.
GRANT SELECT, INSERT, UPDATE, DELETE ON pgingest.documents TO pgingest_writer;

-- Status views: monitors and readers (admins through membership).
GRANT SELECT ON
pgingest.model_status,
pgingest.dead_letter_summary,
pgingest.worker_status,
pgingest.vector_health,
pgingest.index_builds,
pgingest.source_status,
pgingest.quota_status,
pgingest.provider_batch_status
TO pgingest_monitor, pgingest_reader;

-- Readers and workers see the registry and the settings (no secret lives there: invariant 8).
GRANT SELECT ON pgingest.models, pgingest.config, pgingest.chunk_profiles TO pgingest_reader, pgingest_worker;

-- Admins read every table (dead letters in full, chunks, state) but write only through functions.
DO $$
DECLARE
    v_table regclass;
BEGIN
    -- Tables only: the views reach admins through pgingest_reader and pgingest_monitor, whatever
    -- existed when this file ran (swap_model() re-creates the search view).
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pgingest'::regnamespace AND c.relkind IN ('r', 'p')
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO pgingest_admin', v_table);
    END LOOP;
END;
$$;
-- ... and the view of every source's documents, which register_filter() re-creates with that grant
-- (docs/operations.md: admins read it; an install took it away until the next register_filter).
GRANT SELECT ON pgingest.source_documents TO pgingest_admin;

-- Routines, by role. Views call some functions as the caller (who needs EXECUTE on them); the
-- SECURITY DEFINER ones among them are listed in docs/operations.md and reviewed in tests.
DO $$
DECLARE
    v_grant record;
BEGIN
    FOR v_grant IN
        SELECT p.oid::regprocedure AS routine, g.rolname
        FROM pg_catalog.pg_proc AS p
        INNER JOIN (
            VALUES
            ('pgingest_writer', ARRAY['_content_hash', '_meta_cast', '_meta_text_array']),
            ('pgingest_reader', ARRAY[
                '_query_cache_vector', 'query_cache_shared_stats',  -- the shared query-vector cache (issue 20)
                'search', 'search_text', 'hybrid_search', 'hybrid_search_text', 'hybrid_search_defaults', 'embed_query',
                'chunk_preview', 'chunk_location',
                '_plpy_bootstrap', 'model_index_status', 'query_cache_stats', 'route_model'
            ]),
            ('pgingest_monitor', ARRAY['queue_stats_v1', 'traffic_status', 'query_log_status']),
            ('pgingest_worker', ARRAY[
                'pause_model', 'resume_model', 'run_maintenance', 'purge_dead_letters', 'prune_embedding_cache',
                'purge_query_log'
            ]),
            ('pgingest_admin', ARRAY[
                'register_model', 'swap_model', 'retire_model', 'compare_models', 'index_ddl',
                'requeue_dead_letters', 'pause_model', 'resume_model', 'run_backfill', 'backfill_step_v1',
                'forget_stale_workers', 'clear_embedding_cache', 'prune_embedding_cache', 'purge_dead_letters',
                'set_dead_letter_retention', 'run_maintenance', 'register_filter', 'set_text_search_config',
                -- The provider's quota, shared by the model's workers (issue 25).
                'set_model_quota',
                -- Backfills through the provider's Batch API (issue 25).
                'set_model_batch_api',
                -- Name checks and registry lookups of the admin functions that run as the caller
                -- (compare_models, replay_query_log): they read only what admins may read.
                '_check_model_name', '_model',
                -- Traffic shifting and the query log (issue 20).
                'shift_traffic', 'set_query_log', 'purge_query_log', 'replay_query_log', 'compare_models_on_log',
                -- Sources: add_source() and remove_source() run as the caller (who must own the table) and
                -- call these two to write pgingest's tables; creating the triggers needs _source_capture.
                'add_source', 'remove_source', 'resync_source', 'run_source_backfill', '_attach_source',
                '_detach_source', '_source_capture',
                -- The column names of a source's template (a regexp, nothing read): add_source calls it as
                -- the caller (only a superuser owner's tests ever passed without it).
                '_template_columns',
                -- run_source_backfill (a procedure, as the caller: it commits between steps) takes its steps with
                -- the worker's source_backfill_step_v1, as run_backfill takes backfill_step_v1.
                'source_backfill_step_v1',
                -- Raw-document sources (sql/016_raw.sql): the allow-list, re-checks, resuming a paused source.
                'allow_raw_location', 'disallow_raw_location', 'refresh_source_rows', 'resume_source'
            ])
        ) AS g (rolname, routines) ON p.proname = ANY (g.routines)
        WHERE p.pronamespace = 'pgingest'::regnamespace
        UNION
        -- The worker API: every versioned routine (read_batch_v1, complete_batch_v1, heartbeat_v1, ...).
        SELECT p.oid::regprocedure, 'pgingest_worker'
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pgingest'::regnamespace AND p.proname ~ '^[a-z][a-z0-9_]*_v[0-9]+$'
        ORDER BY 2, 1
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_grant.routine, v_grant.rolname);
    END LOOP;

    -- Search views (pgingest.search_chunks is re-created by swap_model(), which grants it again).
    FOR v_grant IN
        SELECT c.oid::regclass AS rel
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pgingest'::regnamespace AND c.relkind IN ('v', 'm') AND c.relname ~ '^search'
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO pgingest_reader', v_grant.rel);
    END LOOP;

    -- Other status views, where this version has them (backfill_progress: sql/040_lifecycle.sql).
    FOR v_grant IN
        SELECT c.oid::regclass AS rel
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pgingest'::regnamespace AND c.relkind = 'v' AND c.relname IN ('backfill_progress')
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO pgingest_monitor, pgingest_reader', v_grant.rel);
    END LOOP;

    -- Writers call the functions of the documents table's generated columns and defaults (content
    -- hash, promoted metadata filters) with their own rights.
    FOR v_grant IN
        SELECT DISTINCT d.refobjid::regprocedure AS routine
        FROM pg_catalog.pg_attrdef AS ad
        INNER JOIN pg_catalog.pg_depend AS d
            ON d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
            AND d.refclassid = 'pg_catalog.pg_proc'::regclass
        INNER JOIN pg_catalog.pg_proc AS p ON p.oid = d.refobjid
        WHERE ad.adrelid = 'pgingest.documents'::regclass AND p.pronamespace = 'pgingest'::regnamespace
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO pgingest_writer', v_grant.routine);
    END LOOP;

    -- Who may read a view may call the pgingest functions it calls (a view calls them with the
    -- caller's rights): queue_stats_v1 and _index_builds (SECURITY DEFINER), _config_seconds, ...
    FOR v_grant IN
        SELECT DISTINCT d.refobjid::regprocedure AS routine, g.rolname
        FROM pg_catalog.pg_class AS c
        INNER JOIN pg_catalog.pg_rewrite AS r ON r.ev_class = c.oid
        INNER JOIN pg_catalog.pg_depend AS d
            ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
            AND d.refclassid = 'pg_catalog.pg_proc'::regclass
        INNER JOIN pg_catalog.pg_proc AS p ON p.oid = d.refobjid
        CROSS JOIN LATERAL aclexplode(c.relacl) AS a
        INNER JOIN pg_catalog.pg_roles AS g ON g.oid = a.grantee
        WHERE c.relnamespace = 'pgingest'::regnamespace AND c.relkind = 'v'
            AND p.pronamespace = 'pgingest'::regnamespace
            AND a.privilege_type = 'SELECT' AND g.rolname IN ('pgingest_reader', 'pgingest_monitor')
        ORDER BY 2, 1
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO %I', v_grant.routine, v_grant.rolname);
    END LOOP;

    -- Admins can read and search everything the others can.
    IF NOT pg_has_role('pgingest_admin', 'pgingest_reader', 'MEMBER') THEN
        GRANT pgingest_reader TO pgingest_admin;
    END IF;
    IF NOT pg_has_role('pgingest_admin', 'pgingest_monitor', 'MEMBER') THEN
        GRANT pgingest_monitor TO pgingest_admin;
    END IF;
END;
$$;
