-- pgingest 0001: schema, documents, models, chunks, embedding state, dead letters, config.
-- Run once by the installer (tracked in pgingest.schema_migrations); never edit after release.

CREATE SCHEMA IF NOT EXISTS pgingest;

COMMENT ON SCHEMA pgingest IS
'pgingest: embedding ingestion pipeline (documents -> pgmq -> worker -> chunks with per-model vectors).';

-- The content hash of a document version: what the embedding depends on (title and body).
-- convert_to() is only STABLE because of the encoding argument; with a fixed 'UTF8' it is
-- immutable in practice, which a generated column needs.
CREATE FUNCTION pgingest._content_hash(p_title text, p_body text)
RETURNS bytea
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN sha256(convert_to(coalesce(p_title, '') || chr(30) || p_body, 'UTF8'));

COMMENT ON FUNCTION pgingest._content_hash(text, text) IS
'sha256 of title || RS || body: identifies the embedded content of a document version.';

CREATE TABLE pgingest.config (
    key text NOT NULL,
    value text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT config_pkey PRIMARY KEY (key),
    CONSTRAINT config_key_format CHECK (key ~ '^[a-z][a-z0-9_]*$')
);

COMMENT ON TABLE pgingest.config IS
'Pipeline settings shared by all models (the chunker profile, limits). No secrets here.';

INSERT INTO pgingest.config (key, value) VALUES
('chunk_tokenizer', 'all-MiniLM-L6-v2'),
('chunk_max_tokens', '200'),
('chunk_overlap_tokens', '20'),
('chunk_include_title', 'true'),
('max_attempts', '5');

CREATE TABLE pgingest.documents (
    id bigint GENERATED ALWAYS AS IDENTITY,
    key text NOT NULL,
    title text,
    body text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    content_hash bytea GENERATED ALWAYS AS (pgingest._content_hash(title, body)) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT documents_pkey PRIMARY KEY (id),
    CONSTRAINT documents_key_key UNIQUE (key),
    CONSTRAINT documents_key_not_blank CHECK (btrim(key) <> ''),
    CONSTRAINT documents_key_length CHECK (octet_length(key) <= 1024),
    CONSTRAINT documents_body_not_blank CHECK (btrim(body, E' \t\r\n\f\v') <> ''),
    CONSTRAINT documents_body_size CHECK (octet_length(body) <= 10485760),
    CONSTRAINT documents_title_length CHECK (title IS NULL OR octet_length(title) <= 4096),
    CONSTRAINT documents_metadata_is_object CHECK (jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE pgingest.documents IS
'Documents to embed. Applications INSERT, UPDATE and DELETE here with plain SQL; triggers queue the work.';
COMMENT ON COLUMN pgingest.documents.key IS 'Stable external key chosen by the application (unique).';
COMMENT ON COLUMN pgingest.documents.content_hash IS
'sha256 of the embedded content; an UPDATE that keeps it queues nothing.';

CREATE INDEX documents_metadata_gin ON pgingest.documents USING gin (metadata jsonb_path_ops);

CREATE TABLE pgingest.models (
    name text NOT NULL,
    provider text NOT NULL DEFAULT 'openai',
    model_id text NOT NULL,
    base_url text NOT NULL,
    api_key_env text,
    dimensions integer NOT NULL,
    storage text NOT NULL DEFAULT 'vector',
    metric text NOT NULL DEFAULT 'cosine',
    max_input_tokens integer NOT NULL DEFAULT 256,
    request_dimensions boolean NOT NULL DEFAULT FALSE,
    state text NOT NULL DEFAULT 'shadow',
    paused boolean NOT NULL DEFAULT FALSE,
    paused_reason text,
    column_name text NOT NULL,
    queue_name text NOT NULL,
    index_method text NOT NULL DEFAULT 'hnsw',
    index_options jsonb NOT NULL DEFAULT '{}'::jsonb,
    backfill_cursor bigint NOT NULL DEFAULT 0,
    backfill_upto bigint,
    backfill_queued bigint NOT NULL DEFAULT 0,
    backfill_started_at timestamptz,
    backfill_completed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at timestamptz,
    CONSTRAINT models_pkey PRIMARY KEY (name),
    CONSTRAINT models_name_format CHECK (name ~ '^[a-z][a-z0-9_]{0,29}$'),
    CONSTRAINT models_column_name_key UNIQUE (column_name),
    CONSTRAINT models_queue_name_key UNIQUE (queue_name),
    CONSTRAINT models_provider_check CHECK (provider IN ('openai')),
    CONSTRAINT models_dimensions_range CHECK (dimensions BETWEEN 1 AND 16000),
    CONSTRAINT models_storage_check CHECK (storage IN ('vector', 'halfvec')),
    CONSTRAINT models_metric_check CHECK (metric IN ('cosine', 'ip', 'l2')),
    CONSTRAINT models_state_check CHECK (state IN ('shadow', 'active', 'standby', 'retired')),
    CONSTRAINT models_max_input_tokens_positive CHECK (max_input_tokens > 0),
    CONSTRAINT models_index_method_check CHECK (index_method IN ('hnsw', 'ivfflat', 'none')),
    CONSTRAINT models_base_url_loopback_or_https CHECK (base_url ~ '^https?://'),
    CONSTRAINT models_api_key_env_format CHECK (api_key_env IS NULL OR api_key_env ~ '^[A-Z_][A-Z0-9_]*$')
);

-- At most one active model.
CREATE UNIQUE INDEX models_one_active ON pgingest.models ((TRUE)) WHERE state = 'active';

COMMENT ON TABLE pgingest.models IS
'Embedding models: provider endpoint, dimension, storage, metric and lifecycle state. '
'api_key_env names an environment variable of the worker; keys are never stored here.';

CREATE TABLE pgingest.chunks (
    doc_id bigint NOT NULL,
    ordinal integer NOT NULL,
    content text NOT NULL,
    chunk_hash bytea NOT NULL,
    token_count integer NOT NULL,
    char_start integer NOT NULL,
    char_end integer NOT NULL,
    chunker text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chunks_pkey PRIMARY KEY (doc_id, ordinal),
    CONSTRAINT chunks_ordinal_nonnegative CHECK (ordinal >= 0),
    CONSTRAINT chunks_span_valid CHECK (char_start >= 0 AND char_end >= char_start)
);

COMMENT ON TABLE pgingest.chunks IS
'Chunks of the current version of each document; one embedding column per model (emb_<model>). '
'Written only by pgingest.complete_batch_v1; removed with their document by triggers.';

-- Install option for large corpora: `pgingest install --chunk-partitions N` (or the custom setting
-- pgingest.chunk_partitions = 'N' in the installing session) hash-partitions the chunks by document
-- into chunks_p0 .. chunks_p<N-1>, re-created LIKE the table above (its single definition). Unset or
-- '0': nothing happens here and the table above stays as it is.
DO $chunk_partitions$
DECLARE
    v_setting text := nullif(btrim(current_setting('pgingest.chunk_partitions', TRUE)), '');
    v_n integer;
    v_comment text;
BEGIN
    IF v_setting IS NULL OR v_setting = '0' THEN
        RETURN;
    END IF;
    IF v_setting !~ '^[0-9]{1,4}$' OR v_setting::integer NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'pgingest: pgingest.chunk_partitions must be an integer from 0 to 1024, not %',
            quote_literal(v_setting)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_n := v_setting::integer;
    v_comment := obj_description('pgingest.chunks'::regclass, 'pg_class');
    ALTER TABLE pgingest.chunks RENAME TO _chunks_unpartitioned;
    ALTER TABLE pgingest._chunks_unpartitioned RENAME CONSTRAINT chunks_pkey TO _chunks_unpartitioned_pkey;
    CREATE TABLE pgingest.chunks (LIKE pgingest._chunks_unpartitioned INCLUDING ALL) PARTITION BY HASH (doc_id);
    DROP TABLE pgingest._chunks_unpartitioned;
    EXECUTE format('COMMENT ON TABLE pgingest.chunks IS %L',
                   v_comment || format(' Hash-partitioned by doc_id into %s partitions (chunks_p<i>).', v_n));
    FOR v_i IN 0 .. v_n - 1 LOOP
        EXECUTE format('CREATE TABLE pgingest.%I PARTITION OF pgingest.chunks FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
                       'chunks_p' || v_i, v_n, v_i);
        EXECUTE format('COMMENT ON TABLE pgingest.%I IS %L', 'chunks_p' || v_i,
                       format('Partition %s of %s of pgingest.chunks (hash of doc_id).', v_i, v_n));
    END LOOP;
END;
$chunk_partitions$;

CREATE TABLE pgingest.embedding_state (
    doc_id bigint NOT NULL,
    model text NOT NULL,
    content_hash bytea NOT NULL,
    chunk_count integer NOT NULL,
    embedded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT embedding_state_pkey PRIMARY KEY (doc_id, model),
    CONSTRAINT embedding_state_model_fkey FOREIGN KEY (model)
    REFERENCES pgingest.models (name) ON DELETE CASCADE
);

CREATE INDEX embedding_state_model_embedded_at ON pgingest.embedding_state (model, embedded_at);

COMMENT ON TABLE pgingest.embedding_state IS
'Which version (content hash) of each document is embedded for which model.';

CREATE TABLE pgingest.dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY,
    doc_id bigint,
    doc_key text,
    model text NOT NULL,
    content_hash bytea,
    error_class text NOT NULL,
    error_message text NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (id),
    CONSTRAINT dead_letters_error_class_format CHECK (error_class ~ '^[a-z][a-z0-9_]*$')
);

CREATE UNIQUE INDEX dead_letters_doc_model_key ON pgingest.dead_letters (doc_id, model)
WHERE doc_id IS NOT NULL;
CREATE INDEX dead_letters_model_class ON pgingest.dead_letters (model, error_class);

COMMENT ON TABLE pgingest.dead_letters IS
'Document versions that could not be embedded, with the reason. requeue_dead_letters() puts them back.';
