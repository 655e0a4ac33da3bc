-- pgingest 0014: a provider's quota, shared by all workers of a model (issue 25).
--
-- Hosted embedding APIs give each key a quota in requests and tokens per minute. Each worker
-- used to learn it by hitting it (429s); several workers on several machines each hit it on
-- their own. Now a model's limits (configured with set_model_quota, or learned from the
-- x-ratelimit-* headers of the answers) and one token bucket per limit live here, and every
-- worker takes from the same buckets before it sends a request (quota_take_v1): N workers
-- together stay within one quota. The database's clock is the one clock.
-- Run once by the installer; never edit after release.

CREATE TABLE pgingest.provider_quota (
    model text NOT NULL,
    requests_per_minute double precision,
    tokens_per_minute double precision,
    -- 'configured' (set_model_quota: headers never change it) or 'headers' (learned)
    source text NOT NULL DEFAULT 'configured',
    -- the buckets: what may be sent now (negative: owed, the next sender waits it out)
    request_level double precision NOT NULL DEFAULT 0,
    token_level double precision NOT NULL DEFAULT 0,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the share of the limits never used: token counts are estimates (the chunker's tokenizer,
    -- not always the provider's), clocks and counting windows differ
    headroom double precision NOT NULL DEFAULT 0.05,
    -- the share of the limits used: cut by a 429, back to 1 over a minute
    pace double precision NOT NULL DEFAULT 1,
    rejected_at timestamptz,
    rejections bigint NOT NULL DEFAULT 0,
    taken_requests bigint NOT NULL DEFAULT 0,
    taken_tokens bigint NOT NULL DEFAULT 0,
    waited_seconds double precision NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT provider_quota_pkey PRIMARY KEY (model),
    CONSTRAINT provider_quota_model_fkey FOREIGN KEY (model)
    REFERENCES pgingest.models (name) ON DELETE CASCADE,
    CONSTRAINT provider_quota_limits CHECK (
        (requests_per_minute IS NULL OR requests_per_minute > 0)
        AND (tokens_per_minute IS NULL OR tokens_per_minute > 0)
    ),
    CONSTRAINT provider_quota_source CHECK (source IN ('configured', 'headers')),
    CONSTRAINT provider_quota_pace CHECK (pace > 0 AND pace <= 1),
    CONSTRAINT provider_quota_headroom CHECK (headroom >= 0 AND headroom < 1)
);

COMMENT ON TABLE pgingest.provider_quota IS
'Per model: the provider''s requests and tokens per minute (configured, or learned from x-ratelimit-* '
'headers) and the token buckets every worker of the model takes from before it sends (quota_take_v1).';
