-- pgingest 0013: the query log and gradual traffic shifting (issue 20, items 1 and 2).
--
-- query_log: a sample of searches (opt-in: config query_log_sample_rate, 0 by default), written by
-- the search functions on the primary (never on a read replica), pruned by age and rows
-- (query_log_keep, query_log_max_rows) by pgingest.run_maintenance(). The query text only with
-- query_log_text = 'on'; its md5 otherwise. No foreign key to pgingest.models: a search must not
-- lock the model's row to be logged. Readers cannot read it (admins can, monitors see aggregates).
--
-- traffic_shift: at most one candidate model serving a share of the text searches
-- (pgingest.shift_traffic), routed by a stable hash of a routing key.
-- Run once by the installer; never edit after release.

CREATE TABLE pgingest.query_log (
    id bigint GENERATED ALWAYS AS IDENTITY,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text NOT NULL,
    model text NOT NULL,
    latency_ms double precision NOT NULL,
    k integer NOT NULL,
    filter_keys text[] NOT NULL DEFAULT '{}',
    filter jsonb,
    sources text[],
    query_hash text,
    query_text text,
    doc_ids bigint[] NOT NULL DEFAULT '{}',
    doc_keys text[] NOT NULL DEFAULT '{}',
    CONSTRAINT query_log_pkey PRIMARY KEY (id),
    CONSTRAINT query_log_kind_check CHECK (kind IN ('search', 'search_text', 'hybrid_search'))
);

CREATE INDEX query_log_logged_at ON pgingest.query_log (logged_at);
CREATE INDEX query_log_model_logged_at ON pgingest.query_log (model, logged_at);

COMMENT ON TABLE pgingest.query_log IS
'A sample of searches (config query_log_sample_rate; 0, off, by default): when, which model served, latency '
'(ms, the query''s embedding included for the text searches), k, the filter keys (the filter itself and the '
'query text only with query_log_text = on; query_hash, the md5 of the normalised text, always), the sources '
'and the doc_ids/doc_keys returned in rank order. Pruned by pgingest.purge_query_log() (run_maintenance).';

CREATE TABLE pgingest.traffic_shift (
    model text NOT NULL,
    share double precision NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT traffic_shift_pkey PRIMARY KEY (model),
    CONSTRAINT traffic_shift_model_fkey FOREIGN KEY (model) REFERENCES pgingest.models (name),
    CONSTRAINT traffic_shift_share_range CHECK (share > 0 AND share <= 1)
);

-- One candidate at a time.
CREATE UNIQUE INDEX traffic_shift_one ON pgingest.traffic_shift ((TRUE));

COMMENT ON TABLE pgingest.traffic_shift IS
'The candidate model of a gradual traffic shift and the share of text searches it serves (set by '
'pgingest.shift_traffic, ended by a share of 0, swap_model or retire_model).';

INSERT INTO pgingest.config (key, value) VALUES
('query_log_sample_rate', '0'),
('query_log_text', 'off'),
('query_log_keep', '7 days'),
('query_log_max_rows', '100000')
ON CONFLICT (key) DO NOTHING;
