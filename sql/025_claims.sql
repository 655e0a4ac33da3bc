-- Claims a worker gives back. A message whose claim expired (read_ct > 1 on its next read) was
-- delivered to a worker that died or hung; every such delivery counts as a crash. A release that
-- is not a failure (a paused model, a worker that stops, a crash redelivery set aside to be
-- processed in a smaller group) must not look like one: release_v2 gives the delivery back.

CREATE OR REPLACE FUNCTION pgingest.release_v2(
    p_model text, p_msg_ids bigint[], p_read_cts integer[], p_delay_seconds integer
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_n integer;
BEGIN
    IF cardinality(p_msg_ids) IS DISTINCT FROM cardinality(p_read_cts) THEN
        RAISE EXCEPTION 'pgingest: release_v2 needs one read_ct per message id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Only the claims this worker still holds (read_ct still the one it read): a message read
    -- again by another worker since is that worker's now. read_ct - 1: this delivery did not
    -- happen, as far as attempts go.
    EXECUTE format(
        'UPDATE pgmq.%I AS q'
        ' SET vt = clock_timestamp() + make_interval(secs => $3), read_ct = greatest(q.read_ct - 1, 0)'
        ' FROM unnest($1, $2) AS c (msg_id, read_ct)'
        ' WHERE q.msg_id = c.msg_id AND q.read_ct = c.read_ct',
        'q_' || v_m.queue_name
    ) USING p_msg_ids, p_read_cts, greatest(p_delay_seconds, 0);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.release_v2(text, bigint[], integer[], integer) IS
'Worker: makes the messages it still holds (read_ct still the one it read) visible again after '
'p_delay_seconds and gives the delivery back (read_ct - 1): a paused model, a worker that stops, or '
'crash redeliveries set aside charge no attempt. Returns how many it released. release_v1 (older '
'workers) releases without giving the delivery back.';
