-- pgingest 0018: chunks.tsv also holds the parts of dotted names (issue 21, hybrid search).
-- The english parser keeps concurrent.futures.process.BrokenProcessPool as one token, so a question
-- naming BrokenProcessPool never matched its document. Where full-text search is on, the generated
-- column is rebuilt with the expression sql/060 (set_text_search_config) now uses: this rewrites
-- pgingest.chunks and rebuilds its GIN index.

DO $$
DECLARE
    v_cfg text;
BEGIN
    SELECT c.value INTO v_cfg FROM pgingest.config AS c WHERE c.key = 'text_search_config';
    IF v_cfg IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = 'pgingest.chunks'::regclass AND a.attname = 'tsv' AND NOT a.attisdropped
    ) THEN
        RETURN;
    END IF;
    ALTER TABLE pgingest.chunks DROP COLUMN tsv;
    EXECUTE format(
        'ALTER TABLE pgingest.chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS ('
        'to_tsvector(%1$L::regconfig, content) || to_tsvector(%1$L::regconfig, '
        'translate(regexp_replace(content, %2$L, '' '', ''g''), ''.'', '' ''))) STORED',
        v_cfg, '(^|\s)[^.\s]+(?=\s|$)'
    );
    CREATE INDEX chunks_tsv ON pgingest.chunks USING gin (tsv);
END;
$$;
