-- Installer template: pgingest install --print-uninstall, after the psql header that
-- install.render_uninstall_script puts first. Drops the queues of the models, then the schema.
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
DROP SCHEMA IF EXISTS pgingest CASCADE;
COMMIT;
-- Left on purpose (they may serve others): publications (DROP PUBLICATION pgingest;), the group
-- roles, cluster-wide (a superuser, once no database uses them: DROP ROLE pgingest_writer,
-- pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin;), and the extensions
-- (DROP EXTENSION pgmq; DROP EXTENSION vector; DROP EXTENSION plpython3u;).
