-- A provider's quota, shared by all workers of a model (issue 25; table in migrations/0014).
--
-- One token bucket per limit (requests and tokens per minute), holding at most one minute of the
-- limit, refilled continuously at `pace` times the limit, on the database's clock. A worker takes
-- a request's tokens before it sends it (quota_take_v1); what it takes beyond the bucket is owed,
-- and the answer is how long to wait before sending: workers on every machine queue up behind
-- one another in the order they asked. A 429 cuts the pace and empties the buckets for its
-- Retry-After (quota_rejected_v1); the pace climbs back to 1 over a minute. Limits come from
-- set_model_quota (an admin) or, when none is configured, from the x-ratelimit-* headers of the
-- answers (quota_observe_v1: their remaining figures start the buckets of a quota learned).

-- The pace now: cut by the last 429, back to 1 over a minute.
CREATE OR REPLACE FUNCTION pgingest._quota_pace(p_pace double precision, p_rejected_at timestamptz)
RETURNS double precision
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN least(
    1.0,
    p_pace + coalesce(extract(EPOCH FROM clock_timestamp() - p_rejected_at)::double precision / 60.0, 1.0)
);

COMMENT ON FUNCTION pgingest._quota_pace(double precision, timestamptz) IS
'The share of a model''s quota used now: p_pace right after a 429 at p_rejected_at, back to 1 over a minute.';

-- What a bucket of p_limit per minute refills per second now (less the headroom, at the pace),
-- and what it holds at most (one minute, less the headroom). NULL limit: no bucket.
CREATE OR REPLACE FUNCTION pgingest._quota_rate(q pgingest.provider_quota, p_limit double precision)
RETURNS double precision
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN p_limit * (1 - q.headroom) * pgingest._quota_pace(q.pace, q.rejected_at) / 60.0;

COMMENT ON FUNCTION pgingest._quota_rate(pgingest.provider_quota, double precision) IS
'Per second, what a quota bucket of p_limit per minute refills now: less the headroom, at the pace.';

-- A bucket's level now: p_level at q.refilled_at, refilled since, at most one minute of the limit
-- less the headroom. 0 when the limit is NULL.
CREATE OR REPLACE FUNCTION pgingest._quota_level(
    q pgingest.provider_quota, p_level double precision, p_limit double precision
)
RETURNS double precision
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN CASE
    WHEN p_limit IS NULL THEN 0
    ELSE least(
        p_limit * (1 - q.headroom),
        p_level + extract(EPOCH FROM clock_timestamp() - q.refilled_at)::double precision
        * pgingest._quota_rate(q, p_limit)
    )
END;

COMMENT ON FUNCTION pgingest._quota_level(pgingest.provider_quota, double precision, double precision) IS
'A quota bucket''s level now: p_level at q.refilled_at, refilled since, at most one minute of the limit less the '
'headroom; 0 without a limit.';

CREATE OR REPLACE FUNCTION pgingest.set_model_quota(
    p_model text,
    p_requests_per_minute double precision DEFAULT NULL,
    p_tokens_per_minute double precision DEFAULT NULL,
    p_headroom double precision DEFAULT 0.03
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_name text := (pgingest._model(p_model)).name;
BEGIN
    IF p_requests_per_minute IS NOT NULL AND NOT p_requests_per_minute > 0
       OR p_tokens_per_minute IS NOT NULL AND NOT p_tokens_per_minute > 0 THEN
        RAISE EXCEPTION 'a quota must be > 0 (or NULL: no limit of that kind)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_headroom IS NULL OR NOT (p_headroom >= 0 AND p_headroom < 1) THEN
        RAISE EXCEPTION 'the headroom is a share of the quota never used: 0 <= headroom < 1, got %', p_headroom
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_requests_per_minute IS NULL AND p_tokens_per_minute IS NULL THEN
        -- No configured quota: the workers learn it from the provider's headers again.
        DELETE FROM pgingest.provider_quota AS q WHERE q.model = v_name;
        RETURN;
    END IF;
    -- Locked first, so that the buckets are refilled on the row as it is.
    PERFORM FROM pgingest.provider_quota AS q WHERE q.model = v_name FOR UPDATE;
    UPDATE pgingest.provider_quota AS q
    SET request_level = least(
            pgingest._quota_level(q, q.request_level, q.requests_per_minute),
            coalesce(p_requests_per_minute, 0) * (1 - p_headroom)
        ),
        token_level = least(
            pgingest._quota_level(q, q.token_level, q.tokens_per_minute),
            coalesce(p_tokens_per_minute, 0) * (1 - p_headroom)
        ),
        refilled_at = clock_timestamp(),
        requests_per_minute = p_requests_per_minute,
        tokens_per_minute = p_tokens_per_minute,
        headroom = p_headroom,
        source = 'configured',
        updated_at = clock_timestamp()
    WHERE q.model = v_name;
    IF NOT FOUND THEN
        INSERT INTO pgingest.provider_quota AS q
            (model, requests_per_minute, tokens_per_minute, headroom, source, request_level, token_level)
        VALUES (
            v_name, p_requests_per_minute, p_tokens_per_minute, p_headroom, 'configured',
            coalesce(p_requests_per_minute, 0) * (1 - p_headroom), coalesce(p_tokens_per_minute, 0) * (1 - p_headroom)
        )
        ON CONFLICT (model) DO NOTHING;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest.set_model_quota(text, double precision, double precision, double precision) IS
'The provider''s quota for a model: requests and tokens per minute (NULL: no limit of that kind), less a headroom '
'never used (default 3%: token counts are estimates). All the model''s workers together stay within it. Both '
'NULL: forget it (learned from the x-ratelimit-* headers again).';

CREATE OR REPLACE FUNCTION pgingest.quota_take_v1(
    p_model text, p_tokens integer, p_requests integer DEFAULT 1, p_max_wait double precision DEFAULT NULL
)
RETURNS double precision
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    q pgingest.provider_quota;
    v_requests double precision;
    v_tokens double precision;
    v_wait double precision;
BEGIN
    SELECT * INTO q FROM pgingest.provider_quota AS x WHERE x.model = p_model FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_requests := pgingest._quota_level(q, q.request_level, q.requests_per_minute)
        - CASE WHEN q.requests_per_minute IS NULL THEN 0 ELSE greatest(p_requests, 0) END;
    v_tokens := pgingest._quota_level(q, q.token_level, q.tokens_per_minute)
        - CASE WHEN q.tokens_per_minute IS NULL THEN 0 ELSE greatest(p_tokens, 0) END;
    -- greatest() ignores the NULL of a kind without a limit
    v_wait := greatest(
        0.0,
        -v_requests / pgingest._quota_rate(q, q.requests_per_minute),
        -v_tokens / pgingest._quota_rate(q, q.tokens_per_minute)
    );
    IF v_wait > p_max_wait THEN
        RETURN v_wait;  -- not taken: the caller defers the work instead of waiting that long
    END IF;
    UPDATE pgingest.provider_quota AS x
    SET request_level = v_requests,
        token_level = v_tokens,
        refilled_at = clock_timestamp(),
        taken_requests = x.taken_requests + greatest(p_requests, 0),
        taken_tokens = x.taken_tokens + greatest(p_tokens, 0),
        waited_seconds = x.waited_seconds + v_wait
    WHERE x.model = p_model;
    RETURN v_wait;
END;
$$;

COMMENT ON FUNCTION pgingest.quota_take_v1(text, integer, integer, double precision) IS
'Worker: takes a request''s tokens (and requests) from the model''s quota buckets before sending it. Returns the '
'seconds to wait before sending (0: at once), NULL when the model has no known quota (no pacing). A wait over '
'p_max_wait takes nothing (the worker defers the work instead of holding it).';

CREATE OR REPLACE FUNCTION pgingest.quota_observe_v1(
    p_model text,
    p_limit_requests double precision,
    p_limit_tokens double precision,
    p_remaining_requests double precision,
    p_remaining_tokens double precision
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_limit_requests IS NOT NULL AND NOT p_limit_requests > 0 THEN
        p_limit_requests := NULL;
    END IF;
    IF p_limit_tokens IS NOT NULL AND NOT p_limit_tokens > 0 THEN
        p_limit_tokens := NULL;
    END IF;
    IF p_limit_requests IS NULL AND p_limit_tokens IS NULL THEN
        RETURN;
    END IF;
    -- The remaining figures set the buckets of a quota first learned. Later ones are not used:
    -- they leave out what every worker has taken and not yet sent (requests waiting for their
    -- turn), so they would hand the same tokens out twice. Another user of the key shows as 429s.
    INSERT INTO pgingest.provider_quota AS q
        (model, requests_per_minute, tokens_per_minute, source, headroom, request_level, token_level)
    SELECT
        m.name, p_limit_requests, p_limit_tokens, 'headers', 0.03,
        least(coalesce(p_remaining_requests, p_limit_requests, 0), coalesce(p_limit_requests, 0)) * 0.97,
        least(coalesce(p_remaining_tokens, p_limit_tokens, 0), coalesce(p_limit_tokens, 0)) * 0.97
    FROM pgingest.models AS m WHERE m.name = p_model
    ON CONFLICT (model) DO UPDATE
    SET requests_per_minute = coalesce(excluded.requests_per_minute, q.requests_per_minute),
        tokens_per_minute = coalesce(excluded.tokens_per_minute, q.tokens_per_minute),
        updated_at = clock_timestamp()
    WHERE q.source = 'headers'
      AND (q.requests_per_minute IS DISTINCT FROM coalesce(excluded.requests_per_minute, q.requests_per_minute)
           OR q.tokens_per_minute IS DISTINCT FROM coalesce(excluded.tokens_per_minute, q.tokens_per_minute));
END;
$$;

COMMENT ON FUNCTION pgingest.quota_observe_v1(
    text, double precision, double precision, double precision, double precision
) IS
'Worker: what an answer''s x-ratelimit-* headers said (limits and remaining, NULL when absent). A quota none '
'configured is learned (its buckets start at what remains); a learned one follows the limits it is told.';

CREATE OR REPLACE FUNCTION pgingest.quota_rejected_v1(p_model text, p_retry_after double precision)
RETURNS void
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    UPDATE pgingest.provider_quota AS q
    SET
        -- several 429s of one burst (workers, requests in flight) cut it once
        pace = CASE
            WHEN q.rejected_at > clock_timestamp() - interval '2 seconds' THEN q.pace
            ELSE greatest(0.3, 0.8 * pgingest._quota_pace(q.pace, q.rejected_at))
        END,
        rejected_at = clock_timestamp(),
        rejections = q.rejections + 1,
        -- nothing is sent before the Retry-After has passed, at most an hour
        -- (providers.MAX_RETRY_AFTER): one answer must not hold every worker of the model for good
        request_level = CASE WHEN q.requests_per_minute IS NULL THEN 0 ELSE least(
            q.request_level, -least(greatest(coalesce(p_retry_after, 1.0), 0.0), 3600.0) * q.requests_per_minute / 60.0
        ) END,
        token_level = CASE WHEN q.tokens_per_minute IS NULL THEN 0 ELSE least(
            q.token_level, -least(greatest(coalesce(p_retry_after, 1.0), 0.0), 3600.0) * q.tokens_per_minute / 60.0
        ) END,
        refilled_at = clock_timestamp(),
        updated_at = clock_timestamp()
    WHERE q.model = p_model;
END;

COMMENT ON FUNCTION pgingest.quota_rejected_v1(text, double precision) IS
'Worker: the provider answered 429 (a rate limit, not an exhausted balance): the model''s pace is cut by a '
'fifth (to 0.3 at least, once per burst of 429s; back to 1 over a minute) '
'and nothing more is sent before p_retry_after seconds (at most 3600, as the worker caps it).';

-- What the operator looks at (pgingest status, pgingest model quota): the pace as it is now.
CREATE OR REPLACE VIEW pgingest.quota_status AS
SELECT
    q.model,
    q.source,
    q.requests_per_minute,
    q.tokens_per_minute,
    q.headroom,
    q.rejections,
    q.rejected_at,
    q.taken_requests,
    q.taken_tokens,
    q.waited_seconds,
    q.updated_at,
    least(1.0, q.pace + coalesce(extract(EPOCH FROM clock_timestamp() - q.rejected_at)::double precision / 60.0, 1.0))
        AS pace
FROM pgingest.provider_quota AS q;

COMMENT ON VIEW pgingest.quota_status IS
'Per model with a known quota: its limits (configured or learned from headers), headroom, pace now (cut by '
'429s), 429s seen, what the workers took and how long they waited for it.';
