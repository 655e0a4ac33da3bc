-- Installer template: one file of pgmq's SQL (installer/pgmq--<version>.sql, or an upgrade script
-- pgmq--<from>--<to>.sql) where pgmq is not an extension (prelude.sql set pgingest.pgmq_install to
-- 'sql'). Applied once, recorded in pgingest.schema_migrations under its file name and checksum,
-- like a migration: the base script on a database without pgmq, an upgrade script when pgmq is at
-- its <from> version (pgingest.pgmq_version, set by prelude.sql from the records).
-- :file_name                    the file's name (pgmq--1.13.0.sql)
-- :version                      the file's name without .sql, the key in schema_migrations
-- :checksum                     sha256 of the file's text (hex)
-- :from_version                 NULL for a base script, the version it upgrades from otherwise
-- :to_version                   the pgmq version the file leaves
-- :pgmq_body                    the file's text, dollar-quoted

-- pgmq :file_name
DO $pgingest_install$
DECLARE
    v_checksum text;
    v_current text := nullif(current_setting('pgingest.pgmq_version', true), '');
BEGIN
    IF current_setting('pgingest.pgmq_install') <> 'sql' THEN
        RETURN;
    END IF;
    SELECT m.checksum INTO v_checksum FROM pgingest.schema_migrations AS m WHERE m.version = :version;
    IF FOUND THEN
        IF v_checksum <> :checksum THEN
            RAISE EXCEPTION 'pgingest: pgmq''s SQL :version was edited after it was applied'
                USING ERRCODE = 'data_corrupted',
                      DETAIL = format('recorded checksum %s, file checksum :checksum', v_checksum),
                      HINT = 'The vendored pgmq scripts are never edited: restore the file; a new pgmq version comes as an upgrade script.';
        END IF;
        RETURN;
    END IF;
    IF v_current IS DISTINCT FROM :from_version THEN
        RETURN;
    END IF;
    EXECUTE :pgmq_body;
    INSERT INTO pgingest.schema_migrations (version, checksum) VALUES (:version, :checksum);
    PERFORM set_config('pgingest.pgmq_version', :to_version, true);
    RAISE NOTICE 'pgingest: pgmq % installed as plain SQL in schema pgmq, owned by % (:version)',
        :to_version, current_user;
END;
$pgingest_install$;
