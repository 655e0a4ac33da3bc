-- pgingest 0005: the chunks' full-text column (chunks.tsv, hybrid search) becomes opt-in.
-- Computing to_tsvector() and inserting into its GIN index cost about 75 microseconds of database
-- CPU per chunk, three times the rest of the write-back (docs/performance.md): a vector-only
-- deployment should not pay for it. SELECT pgingest.set_text_search_config('english') turns it
-- on (adds the column and its index, rewriting pgingest.chunks); set_text_search_config(NULL)
-- turns it off.
-- New installations start without it. An installation where an earlier install run applied 0004
-- had it on by default and keeps it as it is: an upgrade never switches off a feature that may be
-- in use. (The installer runs in one transaction: a migration applied by this run has
-- applied_at = now().) Run once by the installer; never edit after release.

DO $full_text$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pgingest.schema_migrations AS m
        WHERE m.version = '0004_cache_filters_hybrid' AND m.applied_at < now()
    ) THEN
        ALTER TABLE pgingest.chunks DROP COLUMN tsv;
        DELETE FROM pgingest.config WHERE key = 'text_search_config';
    END IF;
END;
$full_text$;
