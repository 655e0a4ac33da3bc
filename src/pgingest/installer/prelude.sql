-- Installer template (rendered by pgingest.install; see README.md): the start of every install.
-- The install lock, the extensions, the search_path the routines pin, the pgmq rights of the
-- owner, schema pgingest and its migrations table.
-- :install_lock_key             pg_advisory_xact_lock key (install.INSTALL_LOCK_KEY)
-- :pgmq_schema_privileges       install.PGMQ_SCHEMA_PRIVILEGES (USAGE, CREATE)
-- :pgmq_meta_privileges         install.PGMQ_META_PRIVILEGES (SELECT, INSERT, DELETE)
-- Lint: the search_path statement keeps trailing noqa comments (not rendered); it stays as the
-- installer printed it before the templates existed (INNER JOIN, TRUE, the layout: AM05, ST09,
-- CP04, LT02); the same statement ends plpython_prelude.sql.

SELECT pg_advisory_xact_lock(:install_lock_key);
-- Extensions: created when missing (superuser only for vector and plpython3u); a role that is not
-- a superuser installs into a database where a superuser created them (docs/deployment.md).
DO $pgingest_install$
DECLARE
    v_ext text;
    v_missing text[] := '{}';
BEGIN
    FOREACH v_ext IN ARRAY ARRAY['vector', 'pgmq'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = v_ext);
        BEGIN
            EXECUTE format('CREATE EXTENSION %I', v_ext);
        EXCEPTION WHEN insufficient_privilege THEN
            v_missing := v_missing || v_ext;
        END;
    END LOOP;
    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION 'pgingest: the extension % is not installed in database % and % may not create it',
            array_to_string(v_missing, ' and '), current_database(), current_user
            USING ERRCODE = 'insufficient_privilege', HINT = format('A superuser runs, in database %s: CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS pgmq; CREATE EXTENSION IF NOT EXISTS plpython3u; GRANT :pgmq_schema_privileges ON SCHEMA pgmq TO %I; GRANT :pgmq_meta_privileges ON pgmq.meta TO %I; (all of it: pgingest install --print-superuser-setup; docs/deployment.md)', current_database(), current_user, current_user);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'plpython3u') THEN
        IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
            CREATE EXTENSION plpython3u;
        ELSE
            RAISE WARNING 'pgingest: plpython3u is not installed in database %: the PL/Python functions are skipped',
                current_database()
                USING HINT = 'Everything else works. For embed_query(), search_text() and chunk_preview(), a '
                             'superuser runs CREATE EXTENSION plpython3u; then pgingest install --plpython-only.';
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
-- The queues of the models live in schema pgmq: the owner creates and drops them.
DO $pgingest_install$
BEGIN
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
CREATE SCHEMA IF NOT EXISTS pgingest;
CREATE TABLE IF NOT EXISTS pgingest.schema_migrations (
    version text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
);
COMMENT ON TABLE pgingest.schema_migrations IS 'Migrations applied by the pgingest installer.';
