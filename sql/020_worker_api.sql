-- Worker API: the only routines a worker calls. Versioned names (_v1): a breaking change adds _v2;
-- _v1 is kept until no old worker runs, or raises "upgrade the worker" where the schema cannot
-- serve it any more (complete_batch_v1 after migration 0006). Each runs as one short transaction.
-- Routines use `SET search_path FROM CURRENT`: the installer sets it to
-- pg_catalog, <the schema of the vector extension>, pg_temp before applying this folder.

CREATE OR REPLACE FUNCTION pgingest._model(p_model text)
RETURNS pgingest.models
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
BEGIN
    SELECT * INTO v_m FROM pgingest.models AS m WHERE m.name = p_model AND m.state <> 'retired';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no live model named %', quote_literal(p_model)
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name, state FROM pgingest.models; register one with pgingest.register_model(...)';
    END IF;
    RETURN v_m;
END;
$$;

COMMENT ON FUNCTION pgingest._model(text) IS
'The registry row of a live (not retired) model; raises undefined_object (42704) otherwise.';

CREATE OR REPLACE FUNCTION pgingest._column_type(p_m pgingest.models)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN format('%s(%s)', p_m.storage, p_m.dimensions);

COMMENT ON FUNCTION pgingest._column_type(pgingest.models) IS
'The SQL type of a model''s embedding column, e.g. vector(384) or halfvec(768).';

-- The messages read (by read_batch_v1, or taken from a provider batch by
-- provider_batch_messages_v1) with their documents' text and status. Called in a statement of its
-- own after the claim, so that its snapshot sees every document whose message was claimed (one
-- statement could claim a message committed after its own snapshot and report it as stale).
CREATE OR REPLACE FUNCTION pgingest._read_messages(p_model text, p_msgs pgmq.message_record[])
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
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY
    WITH msgs AS (
        SELECT
            r.msg_id,
            r.read_ct,
            r.message,
            CASE
                WHEN jsonb_typeof(r.message) = 'object' AND r.message ->> 'doc_id' ~ '^[0-9]{1,18}$'
                    THEN (r.message ->> 'doc_id')::bigint
            END AS doc_id,
            CASE
                WHEN jsonb_typeof(r.message) = 'object' AND r.message ->> 'hash' ~ '^[0-9a-f]{64}$'
                    THEN decode(r.message ->> 'hash', 'hex')
            END AS hash
        FROM unnest(p_msgs) AS r
    )
    SELECT
        m.msg_id,
        m.read_ct,
        m.message,
        m.doc_id,
        d.key,
        CASE WHEN d.content_hash = m.hash AND s.doc_id IS NULL THEN d.title END,
        CASE WHEN d.content_hash = m.hash AND s.doc_id IS NULL AND octet_length(d.body) <= 10485760 THEN d.body END,
        CASE
            WHEN m.doc_id IS NULL OR m.hash IS NULL THEN 'invalid'
            WHEN d.id IS NULL OR d.content_hash <> m.hash THEN 'stale'
            WHEN s.doc_id IS NOT NULL THEN 'done'
            -- (an attached table's row: documents.body has a CHECK) worker.batch.MAX_TEXT_BYTES
            WHEN octet_length(d.body) > 10485760 THEN 'too_large'
            ELSE 'current'
        END
    FROM msgs AS m
    LEFT JOIN (
        SELECT x.id, x.key, x.title, x.body, x.content_hash
        FROM pgingest.documents AS x
        WHERE x.id IN (SELECT u.doc_id FROM msgs AS u)
        UNION ALL
        -- Rows of attached tables, read through their source's mapping (sql/015_sources.sql).
        SELECT r.doc_id, r.doc_key, r.title, r.body, r.content_hash
        FROM pgingest._read_source_rows(ARRAY(SELECT u.doc_id FROM msgs AS u WHERE u.doc_id IS NOT NULL)) AS r
    ) AS d ON d.id = m.doc_id
    LEFT JOIN pgingest.embedding_state AS s
        ON s.doc_id = m.doc_id AND s.model = p_model AND s.content_hash = m.hash
    ORDER BY m.msg_id;
END;
$$;

COMMENT ON FUNCTION pgingest._read_messages(text, pgmq.message_record[]) IS
'The messages given with their documents'' text and status for a model (internal: read_batch_v1, '
'provider_batch_messages_v1).';

CREATE OR REPLACE FUNCTION pgingest.read_batch_v1(p_model text, p_vt integer, p_qty integer)
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
    v_m pgingest.models := pgingest._model(p_model);
    v_msgs pgmq.message_record[];
BEGIN
    IF p_vt < 1 OR p_qty < 1 THEN
        RAISE EXCEPTION 'pgingest: visibility timeout and quantity must be positive (got %, %)', p_vt, p_qty
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Two statements on purpose: the second one's snapshot is taken after the claim, so it sees
    -- every document whose message was claimed (one statement could claim a message committed
    -- after its own snapshot and report the document as stale).
    SELECT array_agg(r) INTO v_msgs FROM pgmq.read(v_m.queue_name, p_vt, p_qty) AS r;
    RETURN QUERY SELECT * FROM pgingest._read_messages(v_m.name, v_msgs);
END;
$$;

COMMENT ON FUNCTION pgingest.read_batch_v1(text, integer, integer) IS
'Worker: claims up to p_qty messages of a model''s queue for p_vt seconds and returns them with the '
'document text. status: current (to embed), stale (document changed or deleted), done (this version is '
'already embedded: a redelivery), invalid (unreadable message: dead-letter it), too_large (a row of an '
'attached table whose text exceeds 10 MiB: dead-letter it; its text is not sent).';

-- complete_batch_v1 wrote every model's vector into one wide chunk row (migrations before 0006).
-- A worker that still calls it is older than the schema: workers and schema are upgraded together.
CREATE OR REPLACE FUNCTION pgingest.complete_batch_v1(
    p_model text,
    p_msg_ids bigint[],
    p_doc_ids bigint[],
    p_hashes bytea[],
    p_chunk_doc_ids bigint[],
    p_ordinals integer[],
    p_contents text[],
    p_chunk_hashes bytea[],
    p_token_counts integer[],
    p_char_starts integer[],
    p_char_ends integer[],
    p_embeddings vector[],
    p_chunker text
)
RETURNS TABLE (written integer, stale integer, chunks integer)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    RAISE EXCEPTION 'pgingest: complete_batch_v1 is gone: this worker is older than the schema (per-model stores)'
        USING ERRCODE = 'feature_not_supported',
              DETAIL = format('model %s: %s messages left unacknowledged (they come back after their visibility timeout)',
                              p_model, coalesce(cardinality(p_msg_ids), 0)),
              HINT = 'Upgrade the worker to the version of the installed schema (it calls complete_batch_v2).';
END;
$$;

COMMENT ON FUNCTION pgingest.complete_batch_v1(
    text, bigint[], bigint[], bytea[], bigint[], integer[], text[], bytea[], integer[], integer[],
    integer[], vector[], text
) IS
'Retired worker API (one wide chunk row for every model): raises feature_not_supported (0A000) with '
'"upgrade the worker". Workers call complete_batch_v2.';

-- Locks the given versions that are still current (FOR SHARE), of any source, in doc_id order: a
-- concurrent UPDATE or DELETE of one of these rows (of pgingest.documents, or of an attached table,
-- whose capture updates pgingest.source_rows) waits for the caller's transaction, then queues its
-- own message or removes the caller's chunks. Returns their doc_ids.
CREATE OR REPLACE FUNCTION pgingest._lock_current_versions(p_doc_ids bigint[], p_hashes bytea[])
RETURNS bigint[]
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
RETURN (
    WITH docs AS (
        SELECT d.id
        FROM pgingest.documents AS d
        INNER JOIN unnest(p_doc_ids, p_hashes) AS x (id, h) ON d.id = x.id AND d.content_hash = x.h
        ORDER BY d.id
        FOR SHARE OF d
    ),

    rows AS (
        SELECT r.doc_id AS id
        FROM pgingest.source_rows AS r
        INNER JOIN unnest(p_doc_ids, p_hashes) AS x (id, h) ON r.doc_id = x.id AND r.content_hash = x.h
        ORDER BY r.doc_id
        FOR SHARE OF r
    )

    SELECT coalesce(array_agg(l.id ORDER BY l.id), '{}')
    FROM (
        SELECT docs.id FROM docs
        UNION ALL
        SELECT rows.id FROM rows
    ) AS l
);

COMMENT ON FUNCTION pgingest._lock_current_versions(bigint[], bytea[]) IS
'Locks FOR SHARE the document versions (of any source) that are still current; returns their doc_ids.';

-- Locks documents of any source (FOR NO KEY UPDATE, in doc_id order, whatever their version) before
-- a write that must not interleave with another model's write of the same documents' chunks.
CREATE OR REPLACE FUNCTION pgingest._lock_versions_for_chunks(p_doc_ids bigint[])
RETURNS integer
LANGUAGE sql
VOLATILE
SET search_path FROM CURRENT
RETURN (
    WITH docs AS (
        SELECT d.id FROM pgingest.documents AS d
        WHERE d.id = any(p_doc_ids)
        ORDER BY d.id
        FOR NO KEY UPDATE OF d
    ),

    rows AS (
        SELECT r.doc_id AS id FROM pgingest.source_rows AS r
        WHERE r.doc_id = any(p_doc_ids)
        ORDER BY r.doc_id
        FOR NO KEY UPDATE OF r
    )

    SELECT count(*)::integer
    FROM (
        SELECT docs.id FROM docs
        UNION ALL
        SELECT rows.id FROM rows
    ) AS l
);

COMMENT ON FUNCTION pgingest._lock_versions_for_chunks(bigint[]) IS
'Locks the documents (of any source) FOR NO KEY UPDATE in doc_id order; returns how many (internal: '
'dead_letter_v1 before it drops a profile''s chunks).';

CREATE OR REPLACE FUNCTION pgingest.complete_batch_v2(
    p_model text,
    p_msg_ids bigint[],
    p_doc_ids bigint[],
    p_hashes bytea[],
    p_chunk_doc_ids bigint[],
    p_ordinals integer[],
    p_contents text[],
    p_chunk_hashes bytea[],
    p_token_counts integer[],
    p_char_starts integer[],
    p_char_ends integer[],
    p_embeddings vector[],
    p_chunker text,
    p_profile_id integer
)
RETURNS TABLE (written integer, stale integer, chunks integer)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
-- No JIT: the store's per-document reads (LATERAL) are estimated at millions of rows while the
-- store has no statistics, and compiling them cost ~0.2 s a batch for ~5 ms of execution.
SET jit = off
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_current bigint[];
    v_chunks integer := 0;
    v_ids bigint[];
    v_counts integer[];
    v_new bigint[];
    v_all boolean;
    v_changed bigint[];
    v_gone bigint[];
    v_o record;
    v_msgs jsonb[];
    -- Whether another live model shares this model's profile (its chunk rows): only then can a
    -- write here change rows another model has embedded (review 2026-12-07, item 7).
    v_shared boolean := EXISTS (
        SELECT 1 FROM pgingest.models AS m
        WHERE m.profile_id = v_m.profile_id AND m.name <> v_m.name AND m.state <> 'retired'
    );
BEGIN
    IF p_profile_id IS DISTINCT FROM v_m.profile_id THEN
        RAISE EXCEPTION 'pgingest: batch of model % was chunked with profile %, the model uses profile %',
            v_m.name, p_profile_id, v_m.profile_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Lock the versions we write (FOR SHARE): a concurrent UPDATE or DELETE of one of these
    -- documents waits for this transaction, then queues its own message or removes our chunks.
    v_current := pgingest._lock_current_versions(p_doc_ids, p_hashes);

    IF cardinality(v_current) > 0 THEN
        -- Whether every document and every chunk row of the batch is one of the current versions
        -- (a batch without a stale document: nearly always). The filters `= ANY (v_current)`
        -- below are then skipped: these statements run on generic plans, in which `= ANY` of an
        -- array parameter searches the array row by row (1,415 chunk rows x 405 documents: ~2.5
        -- ms a statement, three statements a batch; the hashed search needs a constant array).
        v_all := NOT EXISTS (
            SELECT u.id FROM unnest(p_chunk_doc_ids) AS u (id)
            UNION ALL
            SELECT x.id FROM unnest(p_doc_ids) AS x (id)
            EXCEPT
            SELECT c.id FROM unnest(v_current) AS c (id)
        );
        -- This model's vectors about to be replaced or dropped go to the embedding cache. Only this
        -- model's store is read or written here: another model's rows are never touched.
        -- The store is read per document through its primary key (a LATERAL subquery behind OFFSET
        -- 0, so never a join the planner could turn into a scan of the whole store: `doc_id = ANY
        -- ($1)` was planned as one while the store had no statistics, which made every batch's
        -- write-back cost grow with the rows already stored, issue 19).
        EXECUTE format(
            $sql$
            INSERT INTO pgingest.embedding_cache AS e (model, chunk_hash, embedding)
            SELECT DISTINCT ON (s.chunk_hash) %1$L, s.chunk_hash, s.embedding::vector
            FROM unnest($1) AS x (id)
            CROSS JOIN LATERAL (
                SELECT o.chunk_hash, o.embedding FROM pgingest.%2$I AS o WHERE o.doc_id = x.id OFFSET 0
            ) AS s
            WHERE s.chunk_hash <> ALL ($2)
            ON CONFLICT (model, chunk_hash) DO UPDATE SET used_at = now()
            $sql$,
            v_m.name, v_m.store_name
        ) USING v_current, p_chunk_hashes;

        -- The profile's chunk rows, shared with the other models of the profile: a row whose text
        -- and span are unchanged is not written at all (a second model backfilling the versions
        -- another one already wrote writes nothing here). Rows are locked in (doc_id, ordinal) order.
        -- The documents of the rows updated (not inserted) are kept in v_changed: see below, after
        -- the surplus rows. An update stamps updated_at with clock_timestamp(), an insert with
        -- now() (the transaction's start, before this statement): RETURNING tells them apart (xmax
        -- cannot be returned from a partitioned table, install --chunk-partitions).
        IF v_shared THEN
            WITH w AS (
            INSERT INTO pgingest.chunks AS c
                (profile_id, doc_id, ordinal, content, chunk_hash, token_count, char_start, char_end, chunker, updated_at)
            SELECT v_m.profile_id, u.doc_id, u.ordinal, u.content, u.chunk_hash, u.token_count, u.char_start,
                   u.char_end, p_chunker, now()
            FROM unnest(p_chunk_doc_ids, p_ordinals, p_contents, p_chunk_hashes, p_token_counts, p_char_starts, p_char_ends)
                AS u (doc_id, ordinal, content, chunk_hash, token_count, char_start, char_end)
            WHERE (v_all OR u.doc_id = ANY (v_current))
                AND NOT EXISTS (
                    SELECT 1 FROM pgingest.chunks AS o
                    WHERE o.profile_id = v_m.profile_id AND o.doc_id = u.doc_id AND o.ordinal = u.ordinal
                        AND o.chunk_hash = u.chunk_hash AND o.char_start = u.char_start AND o.char_end = u.char_end
                        AND o.content = u.content
                )
            ORDER BY u.doc_id, u.ordinal
            ON CONFLICT (profile_id, doc_id, ordinal) DO UPDATE SET
                content = EXCLUDED.content,
                chunk_hash = EXCLUDED.chunk_hash,
                token_count = EXCLUDED.token_count,
                char_start = EXCLUDED.char_start,
                char_end = EXCLUDED.char_end,
                chunker = EXCLUDED.chunker,
                updated_at = clock_timestamp()
            WHERE (c.chunk_hash, c.char_start, c.char_end, c.content)
                IS DISTINCT FROM (EXCLUDED.chunk_hash, EXCLUDED.char_start, EXCLUDED.char_end, EXCLUDED.content)
            RETURNING c.doc_id, c.updated_at <> now() AS updated
            )

            SELECT array_agg(DISTINCT w.doc_id) FILTER (WHERE w.updated) INTO v_changed FROM w;
        ELSE
            -- No other live model reads these rows: nothing to tell apart, nothing returned.
            INSERT INTO pgingest.chunks AS c
                (profile_id, doc_id, ordinal, content, chunk_hash, token_count, char_start, char_end, chunker, updated_at)
            SELECT v_m.profile_id, u.doc_id, u.ordinal, u.content, u.chunk_hash, u.token_count, u.char_start,
                   u.char_end, p_chunker, now()
            FROM unnest(p_chunk_doc_ids, p_ordinals, p_contents, p_chunk_hashes, p_token_counts, p_char_starts, p_char_ends)
                AS u (doc_id, ordinal, content, chunk_hash, token_count, char_start, char_end)
            WHERE (v_all OR u.doc_id = ANY (v_current))
                AND NOT EXISTS (
                    SELECT 1 FROM pgingest.chunks AS o
                    WHERE o.profile_id = v_m.profile_id AND o.doc_id = u.doc_id AND o.ordinal = u.ordinal
                        AND o.chunk_hash = u.chunk_hash AND o.char_start = u.char_start AND o.char_end = u.char_end
                        AND o.content = u.content
                )
            ORDER BY u.doc_id, u.ordinal
            ON CONFLICT (profile_id, doc_id, ordinal) DO UPDATE SET
                content = EXCLUDED.content,
                chunk_hash = EXCLUDED.chunk_hash,
                token_count = EXCLUDED.token_count,
                char_start = EXCLUDED.char_start,
                char_end = EXCLUDED.char_end,
                chunker = EXCLUDED.chunker,
                updated_at = EXCLUDED.updated_at
            WHERE (c.chunk_hash, c.char_start, c.char_end, c.content)
                IS DISTINCT FROM (EXCLUDED.chunk_hash, EXCLUDED.char_start, EXCLUDED.char_end, EXCLUDED.content);
        END IF;

        -- This model's vectors. The documents with no row in the store yet (a first embedding, the
        -- common case; one probe of the primary key each, a subplan behind OFFSET 0, never a scan)
        -- get a plain INSERT: ON CONFLICT's speculative insertion costs more a row (issue 19). Should
        -- another transaction have written rows of one of them meanwhile (a batch claimed twice),
        -- the plain INSERT fails as a whole and every row goes through the upsert below instead.
        EXECUTE format(
            $sql$
            SELECT coalesce(array_agg(x.id), '{}') FROM unnest($1) AS x (id)
            WHERE NOT EXISTS (SELECT 1 FROM pgingest.%1$I AS o WHERE o.doc_id = x.id OFFSET 0)
            $sql$,
            v_m.store_name
        ) INTO v_new USING v_current;
        IF cardinality(v_new) > 0 THEN
            BEGIN
                EXECUTE format(
                    $sql$
                    INSERT INTO pgingest.%1$I (doc_id, ordinal, chunk_hash, embedding)
                    SELECT u.doc_id, u.ordinal, u.chunk_hash, u.emb::%2$s
                    FROM unnest($1, $2, $3, $4) AS u (doc_id, ordinal, chunk_hash, emb)
                    WHERE u.doc_id = ANY ($5)
                    ORDER BY u.doc_id, u.ordinal
                    $sql$,
                    v_m.store_name, pgingest._column_type(v_m)
                ) USING p_chunk_doc_ids, p_ordinals, p_chunk_hashes, p_embeddings, v_new;
            EXCEPTION WHEN unique_violation THEN
                v_new := '{}';
            END;
        END IF;
        -- The others: a row whose input is unchanged keeps its vector (not rewritten).
        IF cardinality(v_new) < cardinality(v_current) THEN
            EXECUTE format(
                $sql$
                INSERT INTO pgingest.%1$I AS s (doc_id, ordinal, chunk_hash, embedding)
                SELECT u.doc_id, u.ordinal, u.chunk_hash, u.emb::%2$s
                FROM unnest($1, $2, $3, $4) AS u (doc_id, ordinal, chunk_hash, emb)
                WHERE u.doc_id = ANY ($5) AND NOT u.doc_id = ANY ($6)
                ORDER BY u.doc_id, u.ordinal
                ON CONFLICT (doc_id, ordinal) DO UPDATE SET
                    chunk_hash = EXCLUDED.chunk_hash,
                    embedding = EXCLUDED.embedding
                WHERE s.chunk_hash IS DISTINCT FROM EXCLUDED.chunk_hash
                $sql$,
                v_m.store_name, pgingest._column_type(v_m)
            ) USING p_chunk_doc_ids, p_ordinals, p_chunk_hashes, p_embeddings, v_current, v_new;
        END IF;

        IF v_all THEN
            v_chunks := coalesce(cardinality(p_chunk_doc_ids), 0);
        ELSE
            SELECT count(*)::integer INTO v_chunks
            FROM unnest(p_chunk_doc_ids) AS u (doc_id) WHERE u.doc_id = ANY (v_current);
        END IF;

        -- Surplus rows of a shorter new version: the profile's chunks, this model's store.
        WITH d AS (
            DELETE FROM pgingest.chunks AS c
            USING (
                SELECT u.doc_id, count(*) AS n
                FROM unnest(p_chunk_doc_ids) AS u (doc_id)
                WHERE (v_all OR u.doc_id = ANY (v_current))
                GROUP BY u.doc_id
            ) AS k
            WHERE c.profile_id = v_m.profile_id AND c.doc_id = k.doc_id AND c.ordinal >= k.n
            RETURNING c.doc_id
        )

        SELECT array_agg(DISTINCT d.doc_id) INTO v_gone FROM d;
        -- Shared chunk rows rewritten for a version another live model of the profile has embedded
        -- (review 2026-12-07, item 7: a worker whose chunker cuts the same version differently, a
        -- newer release say): that model's store rows point at chunk hashes that are gone, and the
        -- document would vanish from its search for good while its embedding_state says current.
        -- Its state of that version is deleted and the version queued for it again, in this
        -- transaction. Only when rows of a current version were updated or deleted (a new version
        -- of a document is the usual case: no other model has embedded it yet, one probe of
        -- embedding_state's primary key per document and model finds nothing).
        v_changed := coalesce(v_changed, '{}') || coalesce(v_gone, '{}');
        IF v_shared AND cardinality(v_changed) > 0 THEN
            FOR v_o IN
                SELECT m.name, m.queue_name FROM pgingest.models AS m
                WHERE m.profile_id = v_m.profile_id AND m.name <> v_m.name AND m.state <> 'retired'
                ORDER BY m.name
            LOOP
                WITH gone AS (
                    DELETE FROM pgingest.embedding_state AS e
                    USING (
                        SELECT DISTINCT x.id, x.h
                        FROM unnest(p_doc_ids, p_hashes) AS x (id, h)
                        INNER JOIN unnest(v_changed) AS k (id) ON k.id = x.id
                    ) AS x
                    WHERE e.doc_id = x.id AND e.model = v_o.name AND e.content_hash = x.h
                    RETURNING e.doc_id, e.content_hash
                )

                SELECT array_agg(jsonb_build_object(
                    'doc_id', g.doc_id, 'hash', encode(g.content_hash, 'hex'), 'attempts', 0
                ) ORDER BY g.doc_id)
                INTO v_msgs
                FROM gone AS g;
                IF v_msgs IS NOT NULL THEN
                    PERFORM pgmq.send_batch(v_o.queue_name, v_msgs);
                    PERFORM pgingest._wake(v_o.name);
                    RAISE LOG 'pgingest: model % rewrote the shared chunks of % version(s) model % had embedded: queued again for %',
                        v_m.name, cardinality(v_msgs), v_o.name, v_o.name;
                END IF;
            END LOOP;
        END IF;
        -- The store's surplus rows are found per document through the primary key, then deleted by
        -- ctid (a join with the store was planned as a hash join over all of it, see above). On a
        -- hash-partitioned store a ctid names a row in every partition, so the ctid only finds
        -- candidates: a row goes only if it is itself a surplus row (its document is written here
        -- and its ordinal is past the new version's count).
        SELECT array_agg(x.id), array_agg(coalesce(k.n, 0)::integer) INTO v_ids, v_counts
        FROM unnest(v_current) AS x (id)
        LEFT JOIN (
            SELECT u.doc_id, count(*) AS n FROM unnest(p_chunk_doc_ids) AS u (doc_id) GROUP BY u.doc_id
        ) AS k ON k.doc_id = x.id;
        EXECUTE format(
            $sql$
            DELETE FROM pgingest.%1$I AS s
            WHERE s.ctid = ANY (ARRAY(
                SELECT o.ctid
                FROM unnest($1, $2) AS x (id, n)
                CROSS JOIN LATERAL (
                    SELECT t.ctid FROM pgingest.%1$I AS t
                    WHERE t.doc_id = x.id AND t.ordinal >= x.n OFFSET 0
                ) AS o
            ))
            AND s.ordinal >= $2[array_position($1, s.doc_id)]
            $sql$,
            v_m.store_name
        ) USING v_ids, v_counts;

        UPDATE pgingest.chunk_profiles AS p SET chunker = p_chunker
        WHERE p.id = v_m.profile_id AND p.chunker IS DISTINCT FROM p_chunker;

        INSERT INTO pgingest.embedding_state AS s (doc_id, model, content_hash, chunk_count, embedded_at)
        SELECT x.id, v_m.name, x.h, coalesce(k.n, 0), now()
        FROM unnest(p_doc_ids, p_hashes) AS x (id, h)
        LEFT JOIN (
            SELECT u.doc_id, count(*)::integer AS n FROM unnest(p_chunk_doc_ids) AS u (doc_id) GROUP BY u.doc_id
        ) AS k ON k.doc_id = x.id
        WHERE (v_all OR x.id = ANY (v_current))
        ON CONFLICT (doc_id, model) DO UPDATE SET
            content_hash = EXCLUDED.content_hash,
            chunk_count = EXCLUDED.chunk_count,
            embedded_at = EXCLUDED.embedded_at;

        DELETE FROM pgingest.dead_letters AS l
        WHERE l.model = v_m.name AND l.doc_id = ANY (v_current);
    END IF;

    IF cardinality(p_msg_ids) > 0 THEN
        PERFORM pgmq.delete(v_m.queue_name, p_msg_ids);
    END IF;

    written := cardinality(v_current);
    stale := coalesce(cardinality(p_doc_ids), 0) - cardinality(v_current);
    chunks := v_chunks;
    RETURN NEXT;
END;
$$;

COMMENT ON FUNCTION pgingest.complete_batch_v2(
    text, bigint[], bigint[], bytea[], bigint[], integer[], text[], bytea[], integer[], integer[],
    integer[], vector[], text, integer
) IS
'Worker: in one transaction, for the document versions that are still current, writes the chunks of '
'the model''s profile (rows whose text is unchanged are left alone) and the model''s vectors into its own '
'store (upsert), deletes their surplus rows of that profile and that store, records the embedding state '
'and acknowledges every message of the batch (stale ones included). p_profile_id: the profile the worker '
'chunked with (must be the model''s). No other model''s store is read or written; when the shared chunk rows '
'of a version another live model of the profile has embedded change (another chunker), that model''s '
'embedding_state of the version is deleted and the version queued for it again.';

CREATE OR REPLACE FUNCTION pgingest.dead_letter_v1(
    p_model text,
    p_msg_ids bigint[],
    p_doc_ids bigint[],
    p_hashes bytea[],
    p_error_classes text[],
    p_error_messages text[],
    p_attempts integer[],
    p_payloads jsonb[]
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
    v_n2 integer;
    v_dead bigint[];
BEGIN
    -- Document versions that are still current get (or update) a dead letter, unless another
    -- worker has embedded that very version meanwhile (a batch that outlived its visibility
    -- timeout): a dead letter never undoes a completed version.
    WITH x AS (
        SELECT u.*
        FROM unnest(p_doc_ids, p_hashes, p_error_classes, p_error_messages, p_attempts, p_payloads)
            AS u (doc_id, h, error_class, error_message, attempts, payload)
        INNER JOIN pgingest.source_documents AS d ON d.doc_id = u.doc_id AND d.content_hash = u.h
        WHERE NOT EXISTS (
            SELECT 1 FROM pgingest.embedding_state AS s
            WHERE s.model = v_m.name AND s.doc_id = u.doc_id AND s.content_hash = u.h
        )
    ), ins AS (
        INSERT INTO pgingest.dead_letters AS l
            (doc_id, doc_key, model, content_hash, error_class, error_message, attempts, payload)
        SELECT x.doc_id, d.doc_key, v_m.name, x.h, x.error_class, left(x.error_message, 2000),
               greatest(x.attempts, 1), x.payload
        FROM x INNER JOIN pgingest.source_documents AS d ON d.doc_id = x.doc_id
        ON CONFLICT (doc_id, model) WHERE doc_id IS NOT NULL DO UPDATE SET
            content_hash = EXCLUDED.content_hash,
            error_class = EXCLUDED.error_class,
            error_message = EXCLUDED.error_message,
            attempts = EXCLUDED.attempts,
            last_failed_at = now(),
            first_failed_at = CASE
                WHEN l.content_hash = EXCLUDED.content_hash THEN l.first_failed_at ELSE now()
            END,
            payload = EXCLUDED.payload
        RETURNING l.doc_id
    )
    SELECT count(*)::integer, array_agg(ins.doc_id) INTO v_n, v_dead FROM ins;

    -- This model's vectors of those documents belong to an older version: drop them.
    IF v_n > 0 THEN
        EXECUTE format('DELETE FROM pgingest.%I WHERE doc_id = ANY ($1)', v_m.store_name)
        USING v_dead;
        DELETE FROM pgingest.embedding_state AS s WHERE s.model = v_m.name AND s.doc_id = ANY (v_dead);
        -- The chunks of the profile hold an older version's text too. They go once no live model of
        -- the profile has a version of the document embedded: full-text search (hybrid_search) reads
        -- them directly, and would serve text the application removed. The documents are locked
        -- first (as complete_batch_v2 does, exclusively here): a model of the profile writing its
        -- version meanwhile commits first, and is then seen below.
        PERFORM pgingest._lock_versions_for_chunks(v_dead);
        DELETE FROM pgingest.chunks AS c
        WHERE c.profile_id = v_m.profile_id AND c.doc_id = ANY (v_dead)
          AND NOT EXISTS (
              SELECT 1 FROM pgingest.embedding_state AS s
              INNER JOIN pgingest.models AS o ON o.name = s.model
              WHERE s.doc_id = c.doc_id AND o.profile_id = v_m.profile_id AND o.state <> 'retired'
          );
    END IF;

    -- Unreadable messages (no document to attach to) are kept whole.
    INSERT INTO pgingest.dead_letters (doc_id, model, error_class, error_message, attempts, payload)
    SELECT NULL, v_m.name, u.error_class, left(u.error_message, 2000), greatest(u.attempts, 1), u.payload
    FROM unnest(p_doc_ids, p_error_classes, p_error_messages, p_attempts, p_payloads)
        AS u (doc_id, error_class, error_message, attempts, payload)
    WHERE u.doc_id IS NULL;
    GET DIAGNOSTICS v_n2 = ROW_COUNT;

    IF cardinality(p_msg_ids) > 0 THEN
        PERFORM pgmq.delete(v_m.queue_name, p_msg_ids);
    END IF;
    RETURN v_n + v_n2;
END;
$$;

COMMENT ON FUNCTION pgingest.dead_letter_v1(
    text, bigint[], bigint[], bytea[], text[], text[], integer[], jsonb[]
) IS
'Worker: records dead letters (error class, message, attempts) for the still-current document versions '
'and acknowledges the messages, in one transaction. Stale versions, and versions another worker has '
'already embedded for this model, are only acknowledged (a dead letter never undoes a completed version).';

CREATE OR REPLACE FUNCTION pgingest.defer_v1(
    p_model text,
    p_msg_ids bigint[],
    p_messages jsonb[],
    p_delay_seconds integer
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
    v_kept jsonb[];
BEGIN
    IF cardinality(p_msg_ids) IS DISTINCT FROM cardinality(p_messages) THEN
        RAISE EXCEPTION 'pgingest: defer_v1 needs one new message per message id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_msg_ids) = 0 THEN
        RETURN 0;
    END IF;
    -- A replacement only for each message this call really deleted: one that is gone already (its
    -- batch outlived the visibility timeout and another worker acknowledged it) is not sent again,
    -- which would double the job (issue 18, item 7).
    SELECT array_agg(x.msg ORDER BY x.n) INTO v_kept
    FROM unnest(p_msg_ids, p_messages) WITH ORDINALITY AS x (msg_id, msg, n)
    WHERE x.msg_id IN (SELECT d.id FROM pgmq.delete(v_m.queue_name, p_msg_ids) AS d (id));
    IF v_kept IS NOT NULL THEN
        PERFORM pgmq.send_batch(v_m.queue_name, v_kept, greatest(p_delay_seconds, 0));
    END IF;
    RETURN coalesce(cardinality(v_kept), 0);
END;
$$;

COMMENT ON FUNCTION pgingest.defer_v1(text, bigint[], jsonb[], integer) IS
'Worker: replaces messages by new ones (with an updated attempts count) visible after a delay, '
'in one transaction; only those it deleted (a message already acknowledged elsewhere is not sent again). '
'Used for backoff after transient errors and for 429 deferrals (no attempt spent). Returns how many.';

CREATE OR REPLACE FUNCTION pgingest.release_v1(p_model text, p_msg_ids bigint[], p_delay_seconds integer)
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
    SELECT count(*)::integer INTO v_n
    FROM pgmq.set_vt(v_m.queue_name, p_msg_ids, greatest(p_delay_seconds, 0));
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.release_v1(text, bigint[], integer) IS
'Worker: makes claimed messages visible again after p_delay_seconds (shutdown, paused model).';

CREATE OR REPLACE FUNCTION pgingest.extend_claims_v1(
    p_model text, p_msg_ids bigint[], p_read_cts integer[], p_vt_seconds integer
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
    -- Only the claims this worker still holds: a message read again by another worker since
    -- (its read_ct moved on) is that worker's now.
    EXECUTE format(
        'UPDATE pgmq.%I AS q SET vt = clock_timestamp() + make_interval(secs => $3)'
        ' FROM unnest($1, $2) AS c (msg_id, read_ct)'
        ' WHERE q.msg_id = c.msg_id AND q.read_ct = c.read_ct',
        'q_' || v_m.queue_name
    ) USING p_msg_ids, p_read_cts, greatest(p_vt_seconds, 1);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.extend_claims_v1(text, bigint[], integer[], integer) IS
'Worker: keeps the messages it is still embedding or writing invisible for p_vt_seconds more '
'(those whose read_ct is still the one it read); returns how many it extended.';

CREATE OR REPLACE FUNCTION pgingest.pause_model(p_model text, p_reason text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE pgingest.models
    SET paused = true, paused_reason = left(p_reason, 500)
    WHERE name = (pgingest._model(p_model)).name;
END;
$$;

COMMENT ON FUNCTION pgingest.pause_model(text, text) IS
'Pauses a model (workers stop embedding for it; its messages wait in the queue). '
'Workers do this themselves on 401/403/404 from the provider.';

CREATE OR REPLACE FUNCTION pgingest.resume_model(p_model text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE pgingest.models
    SET paused = false, paused_reason = NULL
    WHERE name = (pgingest._model(p_model)).name;
    PERFORM pg_notify('pgingest', p_model);
END;
$$;

COMMENT ON FUNCTION pgingest.resume_model(text) IS 'Resumes a paused model.';

CREATE OR REPLACE FUNCTION pgingest.requeue_dead_letters(
    p_model text DEFAULT NULL,
    p_error_class text DEFAULT NULL,
    p_older_than interval DEFAULT NULL,
    p_ids bigint[] DEFAULT NULL
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_model record;
    v_msgs jsonb[];
    v_gone bigint;
    v_invalid bigint;
    v_total integer := 0;
BEGIN
    FOR v_model IN
        SELECT m.name, m.queue_name FROM pgingest.models AS m
        WHERE m.state <> 'retired' AND (p_model IS NULL OR m.name = p_model)
        ORDER BY m.name
    LOOP
        -- Letters of no version (doc_id NULL: invalid_message, the message kept whole in payload)
        -- cannot be requeued: left alone (review 2026-12-07, item 5), unless the class filter
        -- names invalid_message, which deletes them (and says so).
        WITH picked AS (
            DELETE FROM pgingest.dead_letters AS l
            WHERE l.model = v_model.name
              AND (p_error_class IS NULL OR l.error_class = p_error_class)
              AND (p_older_than IS NULL OR l.last_failed_at < now() - p_older_than)
              AND (p_ids IS NULL OR l.id = ANY (p_ids))
              AND (l.doc_id IS NOT NULL OR p_error_class = 'invalid_message')
            RETURNING l.doc_id, l.content_hash
        )
        SELECT
            array_agg(jsonb_build_object('doc_id', d.doc_id, 'hash', encode(d.content_hash, 'hex'), 'attempts', 0))
                FILTER (WHERE d.doc_id IS NOT NULL),
            count(*) FILTER (WHERE d.doc_id IS NULL AND p.doc_id IS NOT NULL),
            count(*) FILTER (WHERE p.doc_id IS NULL)
        INTO v_msgs, v_gone, v_invalid
        FROM picked AS p
        LEFT JOIN pgingest.source_documents AS d ON d.doc_id = p.doc_id AND d.content_hash = p.content_hash;

        IF v_invalid > 0 THEN
            RAISE NOTICE 'pgingest: model %: % invalid_message dead letters deleted, not requeued: a queue message that is not a pgingest job cannot be requeued (its payload is gone with the letter)',
                v_model.name, v_invalid;
        ELSIF p_error_class IS DISTINCT FROM 'invalid_message' THEN
            SELECT count(*) INTO v_invalid
            FROM pgingest.dead_letters AS l
            WHERE l.model = v_model.name AND l.doc_id IS NULL
              AND (p_error_class IS NULL OR l.error_class = p_error_class)
              AND (p_older_than IS NULL OR l.last_failed_at < now() - p_older_than)
              AND (p_ids IS NULL OR l.id = ANY (p_ids));
            IF v_invalid > 0 THEN
                RAISE NOTICE 'pgingest: model %: % dead letters of no document version (invalid_message) left alone: they cannot be requeued; their payload stays in pgingest.dead_letters (requeue_dead_letters(p_error_class => ''invalid_message'') deletes them)',
                    v_model.name, v_invalid;
            END IF;
        END IF;
        IF v_gone > 0 THEN
            RAISE NOTICE 'pgingest: model %: % dead letters dropped, not requeued: their document was deleted or has changed since (a changed document was queued again when it changed)',
                v_model.name, v_gone;
        END IF;
        IF v_msgs IS NOT NULL THEN
            PERFORM pgmq.send_batch(v_model.queue_name, v_msgs);
            PERFORM pg_notify('pgingest', v_model.name);
            v_total := v_total + cardinality(v_msgs);
        END IF;
    END LOOP;
    RETURN v_total;
END;
$$;

COMMENT ON FUNCTION pgingest.requeue_dead_letters(text, text, interval, bigint[]) IS
'Puts dead letters back in their model''s queue with a fresh attempt budget, filtered by model, error '
'class, age and ids (NULL = any). Letters of versions that no longer exist are dropped, with a NOTICE '
'per model saying how many. Letters of no version (doc_id NULL: invalid_message) are left alone, with a '
'NOTICE, unless p_error_class is ''invalid_message'': then they are deleted (a NOTICE says how many). '
'Returns the count requeued.';

CREATE OR REPLACE FUNCTION pgingest.cached_vectors_v1(p_model text, p_hashes bytea[])
RETURNS TABLE (chunk_hash bytea, embedding vector)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET jit = off  -- see complete_batch_v2
AS $$
DECLARE
    v_m pgingest.models := pgingest._model(p_model);
BEGIN
    -- Per hash through the store's chunk_hash index (LATERAL behind OFFSET 0: never a scan of the
    -- whole store, whatever its statistics say; see complete_batch_v2).
    RETURN QUERY EXECUTE format(
        $sql$
        SELECT DISTINCT ON (h.chunk_hash) h.chunk_hash, s.embedding::vector
        FROM unnest($1) AS h (chunk_hash)
        CROSS JOIN LATERAL (
            SELECT o.embedding FROM pgingest.%1$I AS o WHERE o.chunk_hash = h.chunk_hash OFFSET 0
        ) AS s
        $sql$,
        v_m.store_name
    ) USING p_hashes;
    RETURN QUERY
    UPDATE pgingest.embedding_cache AS e SET used_at = now()
    WHERE e.model = v_m.name AND e.chunk_hash = ANY (p_hashes)
    RETURNING e.chunk_hash, e.embedding;
END;
$$;

COMMENT ON FUNCTION pgingest.cached_vectors_v1(text, bytea[]) IS
'Worker: vectors already computed by a model for these exact inputs (sha256 of the model input), from '
'its store (any document, any ordinal) and from the embedding cache, so the provider is called only for '
'inputs never seen.';
