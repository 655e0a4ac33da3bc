-- pgingest 0026: chunks.tsv no longer counts a word that ends a sentence twice (review 2026-12-07,
-- finding 6). The dotted-names pass of 0018 kept every whitespace-separated token holding a dot, so
-- "quuxotron." was split again and its word added a second time: BM25 and ts_rank_cd ranked by
-- punctuation. Now only dotted names (name characters with an inner dot, as in
-- concurrent.futures.process) give their parts; sql/060 (set_text_search_config) uses the same
-- expression. Where full-text search is on, the generated column is dropped and added again: the
-- upgrade rewrites pgingest.chunks and rebuilds its GIN index chunks_tsv, under an ACCESS EXCLUSIVE
-- lock, for a time proportional to the number of chunks (about that of set_text_search_config).
-- Where it is off (the default since 0005), nothing changes.

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
        'translate(regexp_replace(regexp_replace(content, %2$L, '' '', ''g''), %3$L, %4$L, ''g''), '
        '''.'', '' ''))) STORED',
        v_cfg, '(^|\s)[^.\s]+(?=\s|$)',
        '((?:_|[^[:space:][:punct:]])+(?:\.(?:_|[^[:space:][:punct:]])+)+)'
        '|(?:_|[^[:space:][:punct:]])+|[[:space:][:punct:]]+',
        ' \1'
    );
    CREATE INDEX chunks_tsv ON pgingest.chunks USING gin (tsv);
END;
$$;
