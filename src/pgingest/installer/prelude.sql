-- Installer template (rendered by pgingest.install; see README.md): the start of every install.
-- The install lock, schema pgingest and its migrations table, the extensions (pgmq: the extension
-- or its SQL), the search_path the routines pin, the pgmq rights of the owner.
-- :install_lock_key             pg_advisory_xact_lock key (install.INSTALL_LOCK_KEY)
-- :pgmq_schema_privileges       install.PGMQ_SCHEMA_PRIVILEGES (USAGE, CREATE)
-- :pgmq_meta_privileges         install.PGMQ_META_PRIVILEGES (SELECT, INSERT, DELETE)
-- :pgmq_mode                    'auto', 'sql' or 'extension' (pgingest install --pgmq)
-- Lint: the search_path statement keeps trailing noqa comments (not rendered); it stays as the
-- installer printed it before the templates existed (INNER JOIN, TRUE, the layout: AM05, ST09,
-- CP04, LT02); the same statement ends plpython_prelude.sql.

SELECT pg_advisory_xact_lock(:install_lock_key);
-- Schema pgingest and its migrations table first: they record pgmq's SQL too (pgmq_sql.sql).
CREATE SCHEMA IF NOT EXISTS pgingest;
CREATE TABLE IF NOT EXISTS pgingest.schema_migrations (
    version text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
COMMENT ON TABLE pgingest.schema_migrations IS 'Migrations applied by the pgingest installer.';
-- Extensions: vector is created when missing (superuser only: pgvector is not a trusted
-- extension); a role that is not a superuser installs into a database where the service's admin
-- created it (docs/deployment.md). pgmq: the extension, or its SQL as plain objects in schema pgmq
-- owned by the installing role (:pgmq_mode: auto, sql or extension; pgmq_sql.sql applies the
-- SQL, told by the setting pgingest.pgmq_install).
DO $pgingest_install$
DECLARE
    v_mode text := :pgmq_mode;
    v_how text;
    v_missing text[] := '{}';
    -- The pgmq version that pgmq's recorded scripts left (the last part of pgmq--<from>--<to>).
    v_recorded text := (
        SELECT t.v FROM (
            SELECT regexp_replace(m.version, '^.*--', '') AS v FROM pgingest.schema_migrations AS m
            WHERE m.version LIKE 'pgmq--%'
        ) AS t
        ORDER BY string_to_array(t.v, '.')::integer[] DESC LIMIT 1
    );
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'vector') THEN
        BEGIN
            CREATE EXTENSION vector;
        EXCEPTION WHEN insufficient_privilege THEN
            v_missing := v_missing || 'vector'::text;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'pgmq') THEN
        IF v_mode = 'sql' THEN
            RAISE EXCEPTION 'pgingest: pgmq is an extension in database %: --pgmq=sql installs its SQL only where it is not', current_database()
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Install with --pgmq=auto (the default) or --pgmq=extension to use the extension.';
        END IF;
        v_how := 'extension';
    ELSIF v_recorded IS NOT NULL THEN
        IF v_mode = 'extension' THEN
            RAISE EXCEPTION 'pgingest: pgmq % was installed as plain SQL in database %, not as the extension', v_recorded, current_database()
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Install with --pgmq=auto (the default) or --pgmq=sql: the installer keeps it and applies its upgrades.';
        END IF;
        v_how := 'sql';
    ELSIF to_regnamespace('pgmq') IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: schema pgmq exists in database % but is neither the pgmq extension nor pgmq''s SQL installed by pgingest', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Drop or rename that schema (if nothing uses it), or create the pgmq extension, then install again.';
    ELSIF v_mode = 'sql' THEN
        v_how := 'sql';
    ELSIF v_mode = 'auto' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions AS a WHERE a.name = 'pgmq') THEN
        v_how := 'sql';
    ELSE
        BEGIN
            CREATE EXTENSION pgmq;
            v_how := 'extension';
        EXCEPTION WHEN insufficient_privilege OR feature_not_supported OR undefined_file THEN
            IF v_mode = 'extension' THEN
                v_missing := v_missing || 'pgmq'::text;
            ELSE
                RAISE NOTICE 'pgingest: CREATE EXTENSION pgmq was refused (%): pgmq''s SQL is installed instead', sqlerrm;
                v_how := 'sql';
            END IF;
        END;
    END IF;
    PERFORM set_config('pgingest.pgmq_install', coalesce(v_how, 'none'), true);
    PERFORM set_config('pgingest.pgmq_version', coalesce(v_recorded, ''), true);
    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'pgingest: the extension % is not installed in database % and % may not create it',
            array_to_string(v_missing, ' and '), current_database(), current_user
            USING ERRCODE = 'insufficient_privilege', HINT = format('A superuser (on a managed service: its admin role) runs, in database %s: CREATE EXTENSION IF NOT EXISTS vector;%s (all of it: pgingest install --print-superuser-setup; pgingest install --plan says what is missing; docs/deployment.md)', current_database(), CASE WHEN v_how = 'sql' THEN ' (pgmq: none needed, its SQL is installed as plain objects)' ELSE format(' CREATE EXTENSION IF NOT EXISTS pgmq; GRANT :pgmq_schema_privileges ON SCHEMA pgmq TO %I; GRANT :pgmq_meta_privileges ON pgmq.meta TO %I; (or without the pgmq extension: pgingest install --pgmq=sql)', current_user, current_user) END);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'plpython3u') THEN
        IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
            CREATE EXTENSION plpython3u;
        ELSE
            RAISE WARNING 'pgingest: plpython3u is not installed in database %: the PL/Python functions are skipped',
                current_database()
                USING HINT = 'Everything else works. Search with text from the client instead: pgingest search, or '
                             'pgingest.search.embed_query() then pgingest.search(vector) (docs/deployment.md, "Managed PostgreSQL"). '
                             'For embed_query(), search_text() and chunk_preview() in SQL, a superuser runs '
                             'CREATE EXTENSION plpython3u; then pgingest install --plpython-only.';
        END IF;
    END IF;
END;
$pgingest_install$;
-- Routines pin their search_path FROM CURRENT: pg_catalog, the vector extension's schema, pg_temp.
SELECT set_config(
    'search_path',
    format('pg_catalog, %I, pg_temp', (
        SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace  -- noqa: AM05, ST09
        WHERE e.extname = 'vector')),  -- noqa: LT02
    true);  -- noqa: CP04, LT02
-- Load pgvector's library in this session: its settings (hnsw.iterative_scan) become known, and a
-- routine's SET clause naming an unknown (placeholder) setting is refused to a non-superuser.
DO $pgingest_install$ BEGIN PERFORM '[1]'::vector; END; $pgingest_install$;
-- The queues of the models live in schema pgmq: the owner creates and drops them. pgmq's SQL
-- about to be installed (pgmq_sql.sql) will belong to the installing role.
DO $pgingest_install$
BEGIN
    IF current_setting('pgingest.pgmq_install') = 'sql' AND to_regnamespace('pgmq') IS NULL THEN
        RETURN;
    END IF;
    IF NOT (has_schema_privilege('pgmq', ':pgmq_schema_privileges')
            AND has_table_privilege('pgmq.meta', ':pgmq_meta_privileges')) THEN
        RAISE EXCEPTION 'pgingest: % lacks rights on the pgmq extension''s schema (the queues of the models live there)',
            current_user
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Needed: :pgmq_schema_privileges on schema pgmq, :pgmq_meta_privileges on pgmq.meta.',
                  HINT = format('A superuser runs, in database %s: CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS pgmq; CREATE EXTENSION IF NOT EXISTS plpython3u; GRANT :pgmq_schema_privileges ON SCHEMA pgmq TO %I; GRANT :pgmq_meta_privileges ON pgmq.meta TO %I; (all of it: pgingest install --print-superuser-setup; docs/deployment.md)', current_database(), current_user, current_user);
    END IF;
END;
$pgingest_install$;
