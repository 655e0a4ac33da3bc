-- pgingest 0016: where a logged text search's query vector came from (issue 20): this session's
-- cache, the shared table (pgingest.query_cache) or the endpoint; traffic_status() reports the
-- share served by a cache. NULL for vector searches (and rows logged before this column).
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.query_log
ADD COLUMN query_vector text,
ADD CONSTRAINT query_log_query_vector_check CHECK (query_vector IN ('session', 'shared', 'endpoint'));

COMMENT ON COLUMN pgingest.query_log.query_vector IS
'A text search''s query vector: from this session''s cache (session), the shared table (shared) or the endpoint.';
