-- Backfills through the provider's Batch API (issue 25, point 4; table in migrations/0017).
--
-- A model with batch_api on gets its backfill messages hidden for a day and marked
-- {"backfill": "bulk"} (backfill_step_v1, _enqueue_versions). A worker gathers them into a
-- provider batch: provider_batch_open_v1 records the batch (state preparing) and marks its
-- messages {"bulk": <id>}, hidden for 26 hours, in one transaction; the worker uploads the input
-- file, creates the batch with the row's submission id in its metadata, and records the
-- provider's ids (submitted). Should it die in between, a successor leases the row
-- (provider_batch_lease_v1), looks for a batch with that submission id at the provider before it
-- uploads anything, and so never pays twice. Once the batch has ended, the worker takes the
-- row's messages back in slices (provider_batch_messages_v1: visible again after the worker's
-- visibility timeout, markers removed) and writes them back like any batch: the vectors of the
-- batch's output file, a rejected line's inputs dead-lettered, the inputs of expired, cancelled or
-- failed lines embedded online. Messages a provider batch never sends (stale, already done,
-- every input cached) go back to the online path at once (provider_batch_release_v1). Live
-- writes are never hidden: they stay on the online path.

CREATE OR REPLACE FUNCTION pgingest.set_model_batch_api(p_model text, p_enabled boolean DEFAULT TRUE)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_n bigint := 0;
BEGIN
    IF p_enabled IS NULL THEN
        RAISE EXCEPTION 'pgingest: set_model_batch_api needs true or false' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE pgingest.models AS m SET batch_api = p_enabled WHERE m.name = v_m.name;
    IF NOT p_enabled THEN
        -- The backfill messages no provider batch holds yet go back to the online path now.
        EXECUTE format(
            $sql$
            UPDATE pgmq.%I AS q
            SET vt = clock_timestamp(), message = jsonb_set(q.message, '{backfill}', 'true')
            WHERE q.message @> '{"backfill": "bulk"}' AND NOT q.message ? 'bulk'
            $sql$,
            'q_' || v_m.queue_name
        );
        GET DIAGNOSTICS v_n = ROW_COUNT;
        RETURN format(
            'model %s: backfills embedded online; %s waiting backfill messages made visible (provider batches '
            'in flight finish)',
            v_m.name, v_n
        );
    END IF;
    RETURN format(
        'model %s: its next backfills go through the provider''s Batch API (live writes stay online)', v_m.name
    );
END;
$$;

COMMENT ON FUNCTION pgingest.set_model_batch_api(text, boolean) IS
'Admin: the model''s backfills (its own, a newly attached source''s rows) go through the provider''s Batch '
'API (true) or online (false: the backfill messages waiting for a provider batch are made visible).';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_open_v1(
    p_model text, p_max_messages integer, p_worker text, p_lease_seconds integer DEFAULT 600
)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_id bigint;
    v_ids bigint[];
BEGIN
    IF p_max_messages < 1 OR p_lease_seconds < 1 THEN
        RAISE EXCEPTION 'pgingest: provider_batch_open_v1 needs positive sizes (got %, %)', p_max_messages,
            p_lease_seconds USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgingest.provider_batches (model, msg_ids, pending_msg_ids, leased_until, leased_by)
    VALUES (v_m.name, '{}', '{}', clock_timestamp() + make_interval(secs => p_lease_seconds), p_worker)
    RETURNING id INTO v_id;
    EXECUTE format(
        $sql$
        WITH c AS (
            SELECT q.msg_id FROM pgmq.%1$I AS q
            WHERE q.message @> '{"backfill": "bulk"}' AND NOT q.message ? 'bulk'
            ORDER BY q.msg_id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ),
        u AS (
            UPDATE pgmq.%1$I AS q
            SET vt = clock_timestamp() + interval '26 hours', message = q.message || jsonb_build_object('bulk', $2)
            FROM c WHERE q.msg_id = c.msg_id
            RETURNING q.msg_id
        )
        SELECT array_agg(u.msg_id ORDER BY u.msg_id) FROM u
        $sql$,
        'q_' || v_m.queue_name
    ) INTO v_ids USING p_max_messages, v_id;
    IF v_ids IS NULL THEN
        DELETE FROM pgingest.provider_batches AS b WHERE b.id = v_id;
        RETURN NULL;
    END IF;
    UPDATE pgingest.provider_batches AS b SET msg_ids = v_ids, pending_msg_ids = v_ids WHERE b.id = v_id;
    RETURN v_id;
END;
$$;

COMMENT ON FUNCTION pgingest.provider_batch_open_v1(text, integer, text, integer) IS
'Worker: records a provider batch (state preparing, leased to p_worker) holding up to p_max_messages of the '
'model''s backfill messages that wait for one (hidden 26 hours more); NULL when none waits.';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_lease_v1(
    p_model text, p_worker text, p_lease_seconds integer DEFAULT 600
)
RETURNS TABLE (
    id bigint,
    submission uuid,
    state text,
    provider_batch_id text,
    input_file_id text,
    messages integer,
    input_hashes bytea[]
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_name text := (pgingest._model(p_model)).name;
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT b.id FROM pgingest.provider_batches AS b
        WHERE b.model = v_name AND b.state <> 'collected'
            AND (b.leased_until < clock_timestamp() OR b.leased_by = p_worker)
        ORDER BY b.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    )
    UPDATE pgingest.provider_batches AS b
    SET leased_until = clock_timestamp() + make_interval(secs => p_lease_seconds), leased_by = p_worker
    FROM c WHERE b.id = c.id
    RETURNING b.id, b.submission, b.state, b.provider_batch_id, b.input_file_id, cardinality(b.msg_ids),
        b.input_hashes;
END;
$$;

COMMENT ON FUNCTION pgingest.provider_batch_lease_v1(text, text, integer) IS
'Worker: leases the model''s oldest provider batch not yet collected whose lease ran out (or that p_worker '
'holds) for p_lease_seconds; no row when there is none.';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_update_v1(
    p_id bigint,
    p_worker text,
    p_state text DEFAULT NULL,
    p_provider_batch_id text DEFAULT NULL,
    p_input_file_id text DEFAULT NULL,
    p_provider_status text DEFAULT NULL,
    p_input_hashes bytea[] DEFAULT NULL,
    p_tokens bigint DEFAULT NULL,
    p_requests_completed integer DEFAULT NULL,
    p_requests_failed integer DEFAULT NULL,
    p_error text DEFAULT NULL,
    p_inputs_embedded integer DEFAULT NULL,
    p_inputs_rejected integer DEFAULT NULL,
    p_inputs_online integer DEFAULT NULL,
    p_lease_seconds integer DEFAULT 600
)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_state IS NOT NULL AND p_state NOT IN ('preparing', 'submitted', 'collecting', 'collected') THEN
        RAISE EXCEPTION 'pgingest: provider batch state % cannot be set', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE pgingest.provider_batches AS b
    SET state = coalesce(p_state, b.state),
        provider_batch_id = coalesce(p_provider_batch_id, b.provider_batch_id),
        input_file_id = coalesce(p_input_file_id, b.input_file_id),
        provider_status = coalesce(p_provider_status, b.provider_status),
        input_hashes = coalesce(p_input_hashes, b.input_hashes),
        inputs = coalesce(cardinality(p_input_hashes), b.inputs),
        tokens = coalesce(p_tokens, b.tokens),
        requests_completed = coalesce(p_requests_completed, b.requests_completed),
        requests_failed = coalesce(p_requests_failed, b.requests_failed),
        error = coalesce(left(p_error, 2000), b.error),
        inputs_embedded = coalesce(p_inputs_embedded, b.inputs_embedded),
        inputs_rejected = coalesce(p_inputs_rejected, b.inputs_rejected),
        inputs_online = coalesce(p_inputs_online, b.inputs_online),
        submitted_at = CASE WHEN p_state = 'submitted' THEN coalesce(b.submitted_at, now()) ELSE b.submitted_at END,
        ended_at = CASE WHEN p_state IN ('collecting', 'collected') THEN coalesce(b.ended_at, now()) ELSE b.ended_at END,
        collected_at = CASE WHEN p_state = 'collected' THEN now() ELSE b.collected_at END,
        polled_at = CASE WHEN p_provider_status IS NOT NULL THEN now() ELSE b.polled_at END,
        leased_until = clock_timestamp() + make_interval(secs => p_lease_seconds)
    WHERE b.id = p_id AND b.leased_by = p_worker AND b.state <> 'collected'
        -- collected (given up: nothing sent) only once every message went back to the online path
        AND (p_state IS DISTINCT FROM 'collected' OR cardinality(b.pending_msg_ids) = 0);
    RETURN FOUND;
END;
$$;

COMMENT ON FUNCTION pgingest.provider_batch_update_v1(
    bigint, text, text, text, text, text, bytea[], bigint, integer, integer, text, integer, integer, integer, integer
) IS
'Worker: records what became of a provider batch it leases (state, the provider''s ids and status, the '
'inputs sent, request counts, the inputs embedded, rejected and left to the online path, an error) and renews '
'its lease; false when the lease is another worker''s (or collected is asked while messages are pending).';

-- The provider batch p_worker leases (locked for the rest of the transaction) with its model's
-- queue table; no row when the lease is another worker's or the batch is collected.
CREATE OR REPLACE FUNCTION pgingest._leased_batch(p_id bigint, p_worker text)
RETURNS TABLE (model text, state text, pending_msg_ids bigint[], queue_table text)
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT
        b.model,
        b.state,
        b.pending_msg_ids,
        'q_' || m.queue_name AS queue_table
    FROM pgingest.provider_batches AS b
    INNER JOIN pgingest.models AS m ON b.model = m.name
    WHERE b.id = p_id AND b.leased_by = p_worker AND b.state <> 'collected'
    FOR UPDATE OF b;
END;

COMMENT ON FUNCTION pgingest._leased_batch(bigint, text) IS
'The provider batch p_worker leases, locked, with its model''s queue table (internal: provider_batch_release_v1, '
'provider_batch_messages_v1).';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_release_v1(p_id bigint, p_worker text, p_msg_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_b record;
    v_n integer;
BEGIN
    SELECT * INTO v_b FROM pgingest._leased_batch(p_id, p_worker);
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    -- Only the batch's own messages still pending: back to the online path, as plain messages.
    EXECUTE format(
        $sql$
        UPDATE pgmq.%I AS q SET vt = clock_timestamp(), message = q.message - 'bulk' - 'backfill'
        WHERE q.msg_id = ANY ($1) AND q.msg_id = ANY ($2)
        $sql$,
        v_b.queue_table
    ) USING p_msg_ids, v_b.pending_msg_ids;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    UPDATE pgingest.provider_batches AS b
    SET pending_msg_ids = ARRAY(SELECT x FROM unnest(b.pending_msg_ids) AS x WHERE x <> ALL (p_msg_ids)),
        msg_ids = ARRAY(SELECT x FROM unnest(b.msg_ids) AS x WHERE x <> ALL (p_msg_ids))
    WHERE b.id = p_id;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.provider_batch_release_v1(bigint, text, bigint[]) IS
'Worker: gives messages of a provider batch it leases back to the online path at once (those it does not '
'send: stale, already embedded, every input cached) and drops them from the batch.';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_messages_v1(
    p_id bigint,
    p_worker text,
    p_vt integer,
    p_qty integer,
    p_take boolean DEFAULT TRUE
)
RETURNS TABLE (
    msg_id bigint,
    read_ct integer,
    message jsonb,
    doc_id bigint,
    doc_key text,
    title text,
    body text,
    status text
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_b record;
    v_queue text;
    v_take bigint[];
    v_msgs pgmq.message_record[];
BEGIN
    IF p_vt < 1 OR p_qty < 1 THEN
        RAISE EXCEPTION 'pgingest: visibility timeout and quantity must be positive (got %, %)', p_vt, p_qty
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_b FROM pgingest._leased_batch(p_id, p_worker);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_take AND v_b.state <> 'collecting' THEN
        RAISE EXCEPTION 'pgingest: provider batch % has not ended (state %)', p_id, v_b.state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    v_queue := v_b.queue_table;
    IF NOT p_take THEN
        -- To build the input file: every message of the batch, untouched.
        EXECUTE format(
            $sql$
            SELECT array_agg(
                ROW(q.msg_id, q.read_ct, q.enqueued_at, q.last_read_at, q.vt, q.message, q.headers)::pgmq.message_record
                ORDER BY q.msg_id
            )
            FROM pgmq.%I AS q WHERE q.msg_id = ANY ($1)
            $sql$,
            v_queue
        ) INTO v_msgs USING v_b.pending_msg_ids;
    ELSE
        v_take := v_b.pending_msg_ids[1:p_qty];
        -- Visible again after p_vt seconds (the worker extends its claims while it embeds), as plain
        -- messages: a deferral or a crash leaves them to the online path.
        EXECUTE format(
            $sql$
            WITH u AS (
                UPDATE pgmq.%I AS q
                SET vt = clock_timestamp() + make_interval(secs => $2), message = q.message - 'bulk' - 'backfill'
                WHERE q.msg_id = ANY ($1)
                RETURNING q.*
            )
            SELECT array_agg(
                ROW(u.msg_id, u.read_ct, u.enqueued_at, u.last_read_at, u.vt, u.message, u.headers)::pgmq.message_record
                ORDER BY u.msg_id
            )
            FROM u
            $sql$,
            v_queue
        ) INTO v_msgs USING v_take, p_vt;
        UPDATE pgingest.provider_batches AS b
        SET leased_until = greatest(b.leased_until, clock_timestamp() + make_interval(secs => p_vt)),
            pending_msg_ids = b.pending_msg_ids[p_qty + 1:],
            state = CASE WHEN cardinality(b.pending_msg_ids[p_qty + 1:]) = 0 THEN 'collected' ELSE b.state END,
            collected_at = CASE WHEN cardinality(b.pending_msg_ids[p_qty + 1:]) = 0 THEN now() END
        WHERE b.id = p_id;
    END IF;
    RETURN QUERY SELECT * FROM pgingest._read_messages(v_b.model, v_msgs);
END;
$$;

COMMENT ON FUNCTION pgingest.provider_batch_messages_v1(bigint, text, integer, integer, boolean) IS
'Worker: the messages of a provider batch it leases, with their documents (as read_batch_v1). p_take: the '
'next p_qty pending ones are taken out of the batch, visible again after p_vt seconds as plain messages '
'(the batch is collected once none is left); otherwise every pending one, untouched (to build the input '
'file).';

CREATE OR REPLACE FUNCTION pgingest.provider_batch_unlease_v1(p_worker text)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH u AS (
        UPDATE pgingest.provider_batches AS b SET leased_until = '-infinity'
        WHERE b.leased_by = p_worker AND b.state <> 'collected'
        RETURNING 1
    )

    SELECT count(*)::integer FROM u;
END;

COMMENT ON FUNCTION pgingest.provider_batch_unlease_v1(text) IS
'Worker: gives up the leases of p_worker (stopping), so that another worker takes its provider batches at once.';

CREATE OR REPLACE VIEW pgingest.provider_batch_status AS
SELECT
    b.model,
    b.id,
    b.state,
    b.provider_status,
    b.provider_batch_id,
    b.inputs,
    b.tokens,
    b.requests_completed,
    b.requests_failed,
    b.inputs_embedded,
    b.inputs_rejected,
    b.inputs_online,
    b.created_at,
    b.submitted_at,
    b.ended_at,
    b.collected_at,
    b.polled_at,
    b.leased_by,
    cardinality(b.msg_ids) AS messages,
    cardinality(b.pending_msg_ids) AS pending_messages,
    b.leased_until > clock_timestamp() AS leased,
    left(b.error, 300) AS error
FROM pgingest.provider_batches AS b;

COMMENT ON VIEW pgingest.provider_batch_status IS
'Backfills sent through the provider''s Batch API: one row per provider batch, in flight or collected.';
