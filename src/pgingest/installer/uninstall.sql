-- Installer template: pgingest install --print-uninstall, after the psql header that
-- install.render_uninstall_script puts first. Drops the queues of the models, pgmq's SQL where
-- pgingest installed it (not the extension), then the schema.
-- :install_lock_key             pg_advisory_xact_lock key (install.INSTALL_LOCK_KEY)

BEGIN;
SELECT pg_advisory_xact_lock(:install_lock_key);
DO $pgingest_install$
DECLARE
    v_queue text;
BEGIN
    IF to_regclass('pgingest.models') IS NULL THEN
        RETURN;
    END IF;
    FOR v_queue IN
        SELECT m.queue_name FROM pgingest.models AS m
        INNER JOIN pgmq.meta AS q ON q.queue_name = m.queue_name
        ORDER BY 1
    LOOP
        PERFORM pgmq.drop_queue(v_queue);
    END LOOP;
END;
$pgingest_install$;
-- pgmq's SQL that pgingest installed (no extension; recorded in schema_migrations) goes with it,
-- unless queues other than pgingest's remain in it.
DO $pgingest_install$
BEGIN
    IF to_regclass('pgingest.schema_migrations') IS NULL
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_extension AS e WHERE e.extname = 'pgmq')
        OR NOT EXISTS (SELECT 1 FROM pgingest.schema_migrations AS m WHERE m.version LIKE 'pgmq--%') THEN
        RETURN;
    END IF;
    IF to_regclass('pgmq.meta') IS NOT NULL AND EXISTS (SELECT 1 FROM pgmq.meta) THEN
        RAISE WARNING 'pgingest: schema pgmq (pgmq''s SQL, installed by pgingest) is kept: other queues use it'
            USING HINT = 'Once nothing uses it: DROP SCHEMA pgmq CASCADE;';
        RETURN;
    END IF;
    DROP SCHEMA IF EXISTS pgmq CASCADE;
END;
$pgingest_install$;
DROP SCHEMA IF EXISTS pgingest CASCADE;
COMMIT;
-- Left on purpose (they may serve others): publications (DROP PUBLICATION pgingest;), the group
-- roles, cluster-wide (a superuser, once no database uses them: DROP ROLE pgingest_writer,
-- pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;), and the extensions
-- (DROP EXTENSION pgmq; DROP EXTENSION vector; DROP EXTENSION plpython3u;).
-- The default privileges pgmq's SQL gave pg_monitor in schema pgmq go with the schema.
