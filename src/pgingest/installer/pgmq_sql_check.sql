-- Installer template: after the pgmq_sql.sql blocks. Where pgmq's SQL is installed, it must now
-- be at the version this package pins (an install recorded at a version from which no upgrade
-- script leads is refused rather than left behind silently).
-- :pgmq_version                 the version the vendored scripts lead to (install.PGMQ_VERSION)

DO $pgingest_install$
BEGIN
    IF current_setting('pgingest.pgmq_install') = 'sql'
        AND current_setting('pgingest.pgmq_version', true) IS DISTINCT FROM :pgmq_version THEN
        RAISE EXCEPTION 'pgingest: pgmq''s SQL is at version %, and no upgrade script leads to %',
            current_setting('pgingest.pgmq_version', true), :pgmq_version
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Add pgmq''s upgrade script (pgmq-extension/sql/pgmq--<from>--<to>.sql) to pgingest/installer/.';
    END IF;
END;
$pgingest_install$;
