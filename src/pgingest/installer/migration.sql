-- Installer template: one file of migrations/, applied once (tracked by version and checksum).
-- :file_name                    the file's name (0001_initial.sql)
-- :version                      the file's name without .sql, the key in schema_migrations
-- :checksum                     sha256 of the file's text (hex)
-- :migration_body               the file's text, dollar-quoted
-- :amended                      migration_amended.sql for a migration with an earlier accepted
--                               checksum (install.AMENDED_MIGRATIONS); the line goes when empty

-- migration :file_name
DO $pgingest_install$
DECLARE
    v_checksum text;
BEGIN
    SELECT checksum INTO v_checksum FROM pgingest.schema_migrations WHERE version = :version;
    IF NOT FOUND THEN
        EXECUTE :migration_body;
        INSERT INTO pgingest.schema_migrations (version, checksum) VALUES (:version, :checksum);
        RAISE NOTICE 'pgingest: applied migration :version';
:amended
    ELSIF v_checksum <> :checksum THEN
        RAISE EXCEPTION 'pgingest: migration :version was edited after it was applied'
            USING ERRCODE = 'data_corrupted',
                  DETAIL = format('recorded checksum %s, file checksum :checksum', v_checksum),
                  HINT = 'Released migrations are never edited: restore the file and add a new migration.';
    END IF;
END;
$pgingest_install$;
