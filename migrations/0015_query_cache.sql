-- pgingest 0015: the shared query-vector cache (issue 20, item 4, second part).
--
-- Each session keeps the vectors of the questions it embedded (plpy_support, per backend, on
-- primaries and replicas alike). This table shares them between sessions and, through
-- replication, with every read replica: a question embedded once by any session of a role on the
-- primary costs the others an index lookup (about 1 ms) instead of a call to the embedding
-- endpoint (76 ms against the local model; a cross-region API call on a remote replica).
--
-- - Written on the primary only (never in recovery or a read-only transaction), by
--   pgingest._query_cache_vector(), SECURITY DEFINER: readers have no right on the table.
-- - Never a query text: cache_key is the sha256 of the model's identity (name, base_url,
--   model_id, dimensions, storage, metric), the session's endpoint override and the normalised
--   text, the key of the per-backend cache: a swap, a re-registered model or another endpoint
--   is another key, never a vector of the wrong model or dimension.
-- - Scoped to the login role that computed the row (role_id): a role that may search cannot plant
--   a vector of its choosing under a question another role asks.
-- - Bounded by age and rows (config query_cache_keep, query_cache_max_rows; 0 rows: off), pruned
--   by pgingest.run_maintenance().
-- Run once by the installer; never edit after release.

CREATE TABLE pgingest.query_cache (
    role_id oid NOT NULL,
    cache_key bytea NOT NULL,
    model text NOT NULL,
    embedding vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT query_cache_pkey PRIMARY KEY (cache_key, role_id),
    CONSTRAINT query_cache_key_length CHECK (octet_length(cache_key) = 32)
);

CREATE INDEX query_cache_created_at ON pgingest.query_cache (created_at);

COMMENT ON TABLE pgingest.query_cache IS
'Query vectors shared by the sessions of a role (and its replicas): sha256 of (model identity, endpoint, '
'normalised query text) -> the vector, never the text. Written on the primary by '
'pgingest._query_cache_vector(); bounded by query_cache_keep and query_cache_max_rows (run_maintenance).';

INSERT INTO pgingest.config (key, value) VALUES
('query_cache_keep', '7 days'),
('query_cache_max_rows', '20000')
ON CONFLICT (key) DO NOTHING;
