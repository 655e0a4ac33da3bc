-- Installer template: a branch of migration.sql's DO block (a PL/pgSQL fragment, not a statement:
-- listed in .sqlfluffignore). A migration amended before any release: its earlier checksums are
-- accepted as equivalent and the record gets the current one.
-- :earlier_checksums            the earlier checksums, as a list of literals
-- :checksum                     the file's current checksum
-- :version                      the file's name without .sql

    ELSIF v_checksum IN (:earlier_checksums) THEN
        UPDATE pgingest.schema_migrations SET checksum = :checksum WHERE version = :version;
        RAISE NOTICE 'pgingest: migration :version was recorded with the checksum of an earlier, equivalent text (amended before release): record updated';
