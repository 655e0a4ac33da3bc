-- Read replicas by logical replication (docs/deployment.md, "Read replicas").
--
-- The primary publishes the documents, their chunks, every live model's store and the
-- embedding state; a replica (another PostgreSQL with pgingest installed) subscribes and serves
-- pgingest.search() and the view pgingest.search_chunks with its own ANN index. No worker runs on a
-- replica, and nothing is queued there: the capture triggers are ordinary (ENABLE) triggers, which
-- the logical replication apply worker does not fire (it runs with session_replication_role =
-- replica). Do not make them ENABLE ALWAYS.
--
-- Not published, because they go with DDL that logical replication does not carry: the model
-- registry (register_model creates the store pgingest.store_<model>), the promoted filters
-- (columns of pgingest.documents) and the settings. The replica gets them from
-- pgingest.replica_setup_sql(), run on the primary and applied on the replica BEFORE the primary
-- registers a new model. register_model adds the new store to every publication of pgingest.chunks;
-- the replica then runs ALTER SUBSCRIPTION <name> REFRESH PUBLICATION to copy and follow it (until
-- then the replica has the model's empty store; nothing is lost).

CREATE OR REPLACE FUNCTION pgingest.replication_tables()
RETURNS regclass[]
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN ARRAY[
    'pgingest.documents'::regclass, 'pgingest.chunks'::regclass, 'pgingest.embedding_state'::regclass,
    'pgingest.source_rows'::regclass
]
|| (
    SELECT coalesce(array_agg(format('pgingest.%I', m.store_name)::regclass ORDER BY m.created_at, m.name), '{}')
    FROM pgingest.models AS m
    WHERE m.state <> 'retired' AND to_regclass(format('pgingest.%I', m.store_name)) IS NOT NULL
);

COMMENT ON FUNCTION pgingest.replication_tables() IS
'The tables a read replica subscribes to: documents, chunks, embedding_state, source_rows (what search shows '
'of attached tables: keys, titles, metadata; never the tables themselves) and every live model''s store.';

CREATE OR REPLACE FUNCTION pgingest.create_publication(
    p_name text DEFAULT 'pgingest',
    p_replication_role text DEFAULT NULL
)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_tables text;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pgingest: invalid publication name %', coalesce(quote_literal(p_name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Lower-case letters, digits and _, at most 63 characters.';
    END IF;
    SELECT string_agg(t::text, ', ' ORDER BY o) INTO v_tables
    FROM unnest(pgingest.replication_tables()) WITH ORDINALITY AS x (t, o);
    -- publish_via_partition_root: a hash-partitioned pgingest.chunks (install --chunk-partitions)
    -- is published as one table, so the replica may be partitioned differently, or not at all.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_publication AS p WHERE p.pubname = p_name) THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', p_name, v_tables);
        EXECUTE format(
            'ALTER PUBLICATION %I SET (publish = %L, publish_via_partition_root = TRUE)',
            p_name, 'insert, update, delete, truncate'
        );
    ELSE
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish_via_partition_root = TRUE)',
                       p_name, v_tables);
    END IF;
    IF p_replication_role IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = p_replication_role) THEN
            RAISE EXCEPTION 'pgingest: role % does not exist', quote_ident(p_replication_role)
                USING ERRCODE = 'undefined_object',
                      HINT = 'A superuser creates it: CREATE ROLE pgingest_replicator LOGIN REPLICATION PASSWORD ...;';
        END IF;
        -- The replica's initial copy reads the tables as this role (streaming needs no table rights).
        EXECUTE format('GRANT USAGE ON SCHEMA pgingest TO %I', p_replication_role);
        EXECUTE format('GRANT SELECT ON %s TO %I', v_tables, p_replication_role);
    END IF;
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE WARNING 'pgingest: wal_level is %, a replica cannot subscribe yet', current_setting('wal_level')
            USING HINT = 'A superuser runs ALTER SYSTEM SET wal_level = logical; and restarts the server.';
    END IF;
    RETURN p_name;
END;
$$;

COMMENT ON FUNCTION pgingest.create_publication(text, text) IS
'Creates (or brings up to date) the publication of pgingest.replication_tables() for read replicas, '
'published via the partition root; grants the initial copy''s SELECT to p_replication_role if given. '
'Owner only (CREATE on the database, ownership of the tables). Re-runnable.';

CREATE OR REPLACE FUNCTION pgingest.replica_setup_sql()
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
    v_p pgingest.chunk_profiles;
    v_f pgingest.filters;
    v_s pgingest.sources;
    v_sql text[] := ARRAY[
        '-- pgingest replica setup, generated on the primary ' || current_database() || ' at ' || now()::text
        || ': apply on the replica (psql -v ON_ERROR_STOP=1 -f), before a new model is registered on the primary.'
    ];
    v_active text;
    v_tsconfig text;
    v_seq bigint;
    v_want text;
BEGIN
    -- The chunking profiles with this database's ids, before any model: pgingest.chunks is replicated
    -- with this database's profile_id, and every search joins it on the model's profile_id, so a
    -- model must have the same profile id on the replica. register_model() below then finds its
    -- profile by its parameters (pgingest._profile) instead of numbering a new one: the ids of the
    -- profiles of retired models (not registered there) are taken too. The replica's sequence is
    -- moved up to this one's, so that a profile a later register_model() creates on both servers in
    -- the same order gets the same id.
    FOR v_p IN SELECT * FROM pgingest.chunk_profiles AS p ORDER BY p.id LOOP
        v_sql := v_sql || format(
            'INSERT INTO pgingest.chunk_profiles (id, tokenizer, max_tokens, overlap_tokens, title_in_chunks) '
            'VALUES (%s, %L, %s, %s, %L) ON CONFLICT DO NOTHING;',
            v_p.id, v_p.tokenizer, v_p.max_tokens, v_p.overlap_tokens, v_p.title_in_chunks
        );
    END LOOP;
    v_seq := pg_sequence_last_value(pg_get_serial_sequence('pgingest.chunk_profiles', 'id')::regclass);
    IF v_seq >= 1 THEN
        v_sql := v_sql || format(
            'SELECT setval(pg_get_serial_sequence(%1$L, %2$L), %3$s) WHERE coalesce(pg_sequence_last_value('
            'pg_get_serial_sequence(%1$L, %2$L)::regclass), 0) < %3$s;',
            'pgingest.chunk_profiles', 'id', v_seq
        );
    END IF;
    -- Live models, oldest first: the replica's first model becomes active there, as it did here.
    FOR v_m IN
        SELECT * FROM pgingest.models AS m WHERE m.state <> 'retired' ORDER BY m.created_at, m.name
    LOOP
        SELECT * INTO v_p FROM pgingest.chunk_profiles AS p WHERE p.id = v_m.profile_id;
        v_sql := v_sql || format(
            'SELECT pgingest.register_model(%L, %L, %s, %L, storage => %L, metric => %L, max_input_tokens => %s, '
            'api_key_env => %L, index_method => %L, index_options => %L, request_dimensions => %L, '
            'chunk_tokenizer => %L, chunk_max_tokens => %s, chunk_overlap_tokens => %s, title_in_chunks => %L, '
            'allow_insecure_http => %L) WHERE NOT EXISTS (SELECT 1 FROM pgingest.models WHERE name = %L);',
            v_m.name, v_m.model_id, v_m.dimensions, v_m.base_url, v_m.storage, v_m.metric, v_m.max_input_tokens,
            v_m.api_key_env, v_m.index_method, v_m.index_options, v_m.request_dimensions,
            v_p.tokenizer, v_p.max_tokens, v_p.overlap_tokens, v_p.title_in_chunks, v_m.allow_insecure_http,
            v_m.name
        );
        IF v_m.state = 'active' THEN
            v_active := v_m.name;
        END IF;
    END LOOP;
    -- Each live model's profile id, as here. A model registered on the replica by hand (the documented
    -- way for a new model) may have got another id there (the primary's sequence moved on: a model
    -- registered and retired, a failed registration): its profile is renumbered to this database's
    -- id where that id is free on the replica and the parameters are the same (the models sharing
    -- the profile follow it; no replicated row holds the replica's own ids); anything else is refused,
    -- naming the models, before the script changes anything more.
    SELECT string_agg(
        format('(%L, %s, %L, %s, %s, %L::boolean)', m.name, p.id, p.tokenizer, p.max_tokens, p.overlap_tokens,
               p.title_in_chunks),
        ', ' ORDER BY m.created_at, m.name
    ) INTO v_want
    FROM pgingest.models AS m INNER JOIN pgingest.chunk_profiles AS p ON p.id = m.profile_id
    WHERE m.state <> 'retired';
    IF v_want IS NOT NULL THEN
        v_sql := v_sql || format(
            $sql$DO $pgingest_replica$
DECLARE
    v_r record;
    v_have integer;
    v_bad text;
BEGIN
    FOR v_r IN
        SELECT w.* FROM (VALUES %1$s) AS w (name, profile_id, tokenizer, max_tokens, overlap_tokens, title_in_chunks)
    LOOP
        SELECT m.profile_id INTO v_have FROM pgingest.models AS m WHERE m.name = v_r.name;
        IF v_have <> v_r.profile_id
            AND NOT EXISTS (SELECT 1 FROM pgingest.chunk_profiles AS p WHERE p.id = v_r.profile_id)
            AND EXISTS (
                SELECT 1 FROM pgingest.chunk_profiles AS p
                WHERE p.id = v_have AND p.tokenizer = v_r.tokenizer AND p.max_tokens = v_r.max_tokens
                    AND p.overlap_tokens = v_r.overlap_tokens AND p.title_in_chunks = v_r.title_in_chunks
            ) THEN
            -- One statement: the foreign key of models is checked at its end, when both moved.
            WITH moved AS (
                UPDATE pgingest.models AS m SET profile_id = v_r.profile_id WHERE m.profile_id = v_have RETURNING 1
            )
            UPDATE pgingest.chunk_profiles AS p SET id = v_r.profile_id WHERE p.id = v_have;
            RAISE NOTICE 'pgingest: chunking profile %% renumbered %% (the primary''s id) for model %%',
                v_have, v_r.profile_id, v_r.name;
            PERFORM pgingest._refresh_search_view();
        END IF;
    END LOOP;
    SELECT string_agg(format('%%s (profile %%s here, %%s on the primary)', w.name, m.profile_id, w.profile_id), ', ')
    INTO v_bad
    FROM (VALUES %1$s) AS w (name, profile_id, tokenizer, max_tokens, overlap_tokens, title_in_chunks)
    INNER JOIN pgingest.models AS m ON m.name = w.name
    WHERE m.profile_id <> w.profile_id;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: the chunking profiles of models %% on this replica do not have the primary''s ids: the replicated chunks would not match them', v_bad
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Another profile holds that id here, or the model was registered here with other chunking parameters. Set up the replica again: a new database, pgingest install, this script, then the subscription.';
    END IF;
END;
$pgingest_replica$;$sql$,
            v_want
        );
    END IF;
    -- The same active model (force: the replica runs no backfill; its index is checked by hand).
    IF v_active IS NOT NULL THEN
        v_sql := v_sql || format(
            'SELECT pgingest.swap_model(%L, force => TRUE) '
            'WHERE EXISTS (SELECT 1 FROM pgingest.models WHERE name = %L AND state <> ''active'');',
            v_active, v_active
        );
    END IF;
    -- Models retired here: retired there too (their column is no longer replicated).
    FOR v_m IN SELECT * FROM pgingest.models AS m WHERE m.state = 'retired' ORDER BY m.retired_at, m.name LOOP
        v_sql := v_sql || format(
            'SELECT pgingest.retire_model(%L) '
            'WHERE EXISTS (SELECT 1 FROM pgingest.models WHERE name = %L AND state NOT IN (''retired'', ''active''));',
            v_m.name, v_m.name
        );
    END LOOP;
    -- Attached tables (sources): their registry rows, so that the replicated source_rows have their
    -- source (names and keys for search). The tables themselves stay on the primary: no trigger,
    -- no statements there. Run as the owner of pgingest on the replica, before add_source() here.
    FOR v_s IN SELECT * FROM pgingest.sources AS s WHERE s.id <> 0 ORDER BY s.id LOOP
        v_sql := v_sql || format(
            'INSERT INTO pgingest.sources (id, name, relid, table_name, key_columns, key_types, body_column, '
            'template, content_column, uri_column, mime_column, title_column, metadata_columns, '
            'backfill_completed_at) VALUES '
            '(%s, %L, NULL, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, now()) ON CONFLICT (id) DO NOTHING;',
            v_s.id, v_s.name, v_s.table_name, v_s.key_columns, v_s.key_types, v_s.body_column, v_s.template,
            v_s.content_column, v_s.uri_column, v_s.mime_column, v_s.title_column, v_s.metadata_columns
        );
    END LOOP;
    -- Promoted filters (typed columns of documents, computed on the replica) and text search.
    FOR v_f IN SELECT * FROM pgingest.filters AS f ORDER BY f.created_at, f.key LOOP
        v_sql := v_sql || format(
            'SELECT pgingest.register_filter(%L, %L) WHERE NOT EXISTS (SELECT 1 FROM pgingest.filters WHERE key = %L);',
            v_f.key, v_f.type, v_f.key
        );
    END LOOP;
    SELECT c.value INTO v_tsconfig FROM pgingest.config AS c WHERE c.key = 'text_search_config';
    IF v_tsconfig IS NOT NULL THEN
        v_sql := v_sql || format(
            'SELECT pgingest.set_text_search_config(%L) '
            'WHERE NOT EXISTS (SELECT 1 FROM pgingest.config WHERE key = ''text_search_config'' AND value = %L);',
            v_tsconfig, v_tsconfig
        );
    ELSE
        v_sql := v_sql || format(
            'SELECT pgingest.set_text_search_config(NULL) '
            'WHERE EXISTS (SELECT 1 FROM pgingest.config WHERE key = %L);',
            'text_search_config'
        );
    END IF;
    RETURN array_to_string(v_sql, E'\n') || E'\n';
END;
$$;

COMMENT ON FUNCTION pgingest.replica_setup_sql() IS
'SQL to run on a read replica so that it mirrors this database''s DDL-bearing registry: the chunking profiles '
'with this database''s ids (the replicated chunks carry them; a model registered there by hand is renumbered, or '
'refused), register the live models (same names and chunking profiles, so the same stores), the same active '
'model, retire retired ones, the attached tables'' registry rows (raw sources with their mapping), the promoted '
'filters and the text search configuration. Idempotent. Run it on the replica before registering a new model here.';
