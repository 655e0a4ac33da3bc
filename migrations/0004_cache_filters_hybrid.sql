-- pgingest 0004: chunk-level embedding cache, promoted metadata filters, full-text search on chunks,
-- dead-letter retention. Run once by the installer; never edit after release.

-- Reusing a stored vector needs the (exact input) hash indexed.
CREATE INDEX chunks_chunk_hash ON pgingest.chunks (chunk_hash);

-- Vectors of chunks that were replaced or deleted, kept for reuse (bounded: cache_max_rows).
-- Vectors of live chunks are reused straight from pgingest.chunks.
CREATE TABLE pgingest.embedding_cache (
    model text NOT NULL,
    chunk_hash bytea NOT NULL,
    embedding vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT embedding_cache_pkey PRIMARY KEY (model, chunk_hash),
    CONSTRAINT embedding_cache_model_fkey FOREIGN KEY (model)
    REFERENCES pgingest.models (name) ON DELETE CASCADE
);

CREATE INDEX embedding_cache_used_at ON pgingest.embedding_cache (model, used_at);

COMMENT ON TABLE pgingest.embedding_cache IS
'Vectors of replaced or deleted chunks, by model and sha256 of the exact model input, reused instead of '
'calling the provider again. Bounded by config cache_max_rows; clear with pgingest.clear_embedding_cache().';

-- Full-text search on chunks (hybrid search). The configuration is fixed per installation:
-- pgingest.set_text_search_config() rebuilds the column for another one.
ALTER TABLE pgingest.chunks
ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED;

CREATE INDEX chunks_tsv ON pgingest.chunks USING gin (tsv);

-- Promoted metadata keys: typed, indexed generated columns on documents (register_filter()).
CREATE TABLE pgingest.filters (
    key text NOT NULL,
    type text NOT NULL,
    column_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT filters_pkey PRIMARY KEY (key),
    CONSTRAINT filters_column_name_key UNIQUE (column_name),
    CONSTRAINT filters_key_format CHECK (key ~ '^[a-zA-Z_][a-zA-Z0-9_]{0,40}$'),
    CONSTRAINT filters_type_check CHECK (type IN (
        'text', 'integer', 'bigint', 'numeric', 'boolean',
        'date', 'timestamptz', 'text[]', 'jsonb'
    ))
);

COMMENT ON TABLE pgingest.filters IS
'Metadata keys promoted to typed, indexed columns of pgingest.documents (meta_<key>) by register_filter().';

-- Dead-letter retention per model: keep N days and/or N rows (NULL: keep everything).
ALTER TABLE pgingest.models
ADD COLUMN dead_letter_retention interval,
ADD COLUMN dead_letter_max_rows integer,
ADD CONSTRAINT models_dead_letter_max_rows_positive CHECK (dead_letter_max_rows IS NULL OR dead_letter_max_rows > 0);

INSERT INTO pgingest.config (key, value) VALUES
('cache_max_rows', '1000000'),
('text_search_config', 'english')
ON CONFLICT (key) DO NOTHING;
