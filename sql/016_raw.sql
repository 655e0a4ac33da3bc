-- Raw-document sources (migrations/0022_raw_sources.sql, docs/raw-documents.md): the worker's
-- read path for bytes and URIs, what it records after a fetch and parse, the pause of a source
-- whose whole bucket or host refuses access, the admin-managed allow-list, re-checks
-- (refresh_source_rows) and where a chunk sits in its document (chunk_location).

-- The bytes (up to p_max_bytes) or URI of raw documents, with what was recorded of them. Rows of
-- other sources are not returned.
-- Each source is read on its own, as by the read path of text (_read_source_rows, review
-- 2026-12-07): a source whose table was dropped, or whose mapped column was renamed or dropped,
-- whose column changed to a type of its owner's (_source_type_refusal) or which enabled
-- row-level security (_source_rls) is not read: its rows become source_unreadable dead letters
-- (a WARNING names the source) and are left out, and the other sources' rows are returned (one
-- such source failed the whole batch). A renamed table is read under its new name (the statement
-- is compiled again for this call when statements ->> 'table' is not the table's name now: it
-- failed until the next install). row_security = off: a policy (its owner's functions) raises
-- instead of running as the owner of pgingest; the session settings the key's cast to text
-- depends on are pinned as in _read_source_rows.
CREATE OR REPLACE FUNCTION pgingest.raw_documents_v1(p_doc_ids bigint[], p_max_bytes bigint)
RETURNS TABLE (
    doc_id bigint,
    source text,
    paused_reason text,
    content bytea,
    content_bytes bigint,
    uri text,
    mime text,
    version bytea,
    sha256 bytea,
    etag text,
    last_modified text,
    parsed_version bytea,
    refreshed_from bytea
)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
SET timezone = 'UTC'
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
SET bytea_output = 'hex'
SET extra_float_digits = 1
SET lc_monetary = 'C'
SET row_security = off
AS $$
DECLARE
    v_s record;
    v_sql text;
BEGIN
    FOR v_s IN
        SELECT s AS src, s.id, s.name, s.paused_reason, s.key_columns, s.statements ->> 'raw' AS sql,
               s.statements ->> 'table' AS stored_table,
               (SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_catalog.pg_class AS c INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
                WHERE c.oid = s.relid) AS table_now,
               coalesce(pgingest._source_columns_refusal(
                   s.relid, s.key_columns, pgingest._source_text_columns(s) || s.metadata_columns
               ), CASE WHEN pgingest._source_rls(s.relid)
                       THEN format('row-level security is enabled on table %s', s.relid::regclass) END) AS refusal
        FROM pgingest.sources AS s
        WHERE s.statements ->> 'raw' IS NOT NULL
          AND s.id IN (SELECT DISTINCT r.source_id FROM pgingest.source_rows AS r WHERE r.doc_id = ANY (p_doc_ids))
        ORDER BY s.id
    LOOP
        BEGIN
            IF v_s.table_now IS NULL THEN
                RAISE EXCEPTION 'the table of source % was dropped', v_s.name USING ERRCODE = 'undefined_table';
            ELSIF v_s.refusal IS NOT NULL THEN
                RAISE EXCEPTION '%: not read', v_s.refusal USING ERRCODE = 'insufficient_privilege';
            END IF;
            v_sql := v_s.sql;
            IF v_s.stored_table IS DISTINCT FROM v_s.table_now THEN  -- renamed (or moved) since compiled
                v_sql := pgingest._source_statements(v_s.src) ->> 'raw';
            END IF;
            RETURN QUERY
            WITH t (doc_id, content, content_bytes, uri, mime) AS MATERIALIZED (
                SELECT * FROM pgingest._raw_rows(v_sql, p_doc_ids, p_max_bytes)
            )
            SELECT
                r.doc_id, v_s.name, v_s.paused_reason, t.content, t.content_bytes, t.uri, t.mime, r.content_hash,
                r.sha256, r.etag, r.last_modified, r.parsed_version, r.refreshed_from
            FROM pgingest.source_rows AS r
            INNER JOIN t ON t.doc_id = r.doc_id
            WHERE r.source_id = v_s.id;
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN
                RAISE;
            WHEN OTHERS THEN
                PERFORM pgingest._source_unreadable(v_s.id, v_s.name, v_s.key_columns, p_doc_ids, SQLSTATE, SQLERRM);
        END;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest.raw_documents_v1(bigint[], bigint) IS
'Worker: the raw documents among these doc_ids: their source (and why it is paused), their bytes (a bytea '
'column; NULL over p_max_bytes, whose size content_bytes gives) or URI, MIME override, current version, and '
'what was recorded of their last fetch (sha256, ETag, Last-Modified, the version parsed, the version before a '
'refresh). The rows of a source that cannot be read become source_unreadable dead letters and are left out.';

CREATE OR REPLACE FUNCTION pgingest._raw_rows(p_sql text, p_doc_ids bigint[], p_max_bytes bigint)
RETURNS TABLE (doc_id bigint, content bytea, content_bytes bigint, uri text, mime text)
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
SET row_security = off
AS $$
BEGIN
    RETURN QUERY EXECUTE p_sql USING p_doc_ids, p_max_bytes;
END;
$$;

COMMENT ON FUNCTION pgingest._raw_rows(text, bigint[], bigint) IS
'Runs a raw source''s compiled read statement (sources.statements ->> ''raw'') (internal: raw_documents_v1).';

-- After a fetch and parse: a success records the bytes' sha256, the store's validators, the
-- version parsed and the structure, and clears the error; a failure records its class, and when
-- it came after the bytes were fetched (a parse's failure), their sha256 and validators too, so
-- that source sync tells an unchanged broken object from a changed one; such a failure also ends
-- a pending re-check (refreshed_from: the bytes are not the ones parsed last, and the next
-- refresh must fetch and parse them, not find them unchanged). Otherwise (nothing fetched) it
-- keeps what the last success recorded. Only rows still at the given version are touched.
CREATE OR REPLACE FUNCTION pgingest.raw_record_v1(
    p_doc_ids bigint[],
    p_versions bytea[],
    p_sha256 bytea[],
    p_etags text[],
    p_last_modified text[],
    p_error_classes text[],
    p_structures jsonb[]
)
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH x AS (
        SELECT
            u.doc_id,
            u.version,
            u.sha,
            u.etag,
            u.last_modified,
            u.error_class,
            u.structure
        FROM unnest(
            p_doc_ids, p_versions, p_sha256, p_etags, p_last_modified, p_error_classes, p_structures
        ) AS u (doc_id, version, sha, etag, last_modified, error_class, structure)
    ),

    up AS (
        UPDATE pgingest.source_rows AS r
        SET
            sha256 = coalesce(x.sha, r.sha256),
            etag = CASE WHEN x.sha IS NULL THEN r.etag ELSE x.etag END,
            last_modified = CASE WHEN x.sha IS NULL THEN r.last_modified ELSE x.last_modified END,
            parsed_version = CASE WHEN x.error_class IS NULL THEN x.version ELSE r.parsed_version END,
            structure = CASE WHEN x.error_class IS NULL THEN x.structure ELSE r.structure END,
            refreshed_from = CASE WHEN x.error_class IS NULL OR x.sha IS NOT NULL THEN NULL ELSE r.refreshed_from END,
            parse_error_class = x.error_class,
            fetched_at = now()
        FROM x
        WHERE r.doc_id = x.doc_id AND r.content_hash = x.version
        RETURNING 1
    )

    SELECT count(*)::integer FROM up;
END;

COMMENT ON FUNCTION pgingest.raw_record_v1(bigint[], bytea[], bytea[], text[], text[], text[], jsonb[]) IS
'Worker: records the fetch and parse of raw documents (by doc_id, at the version read): on success (error '
'class NULL) the sha256, ETag, Last-Modified, version parsed and structure; on failure its class (and the '
'sha256 and validators of the bytes when they were fetched). Returns the rows updated.';

-- A source-wide refusal (class access: the store refuses the credentials) pauses the source, and
-- the refused document's row records it (raw_record_v1: parse_error_class, fetched_at). Of the
-- documents refused again now, those whose row recorded that refusal before, with another
-- document of the same source got through since (by any worker: read with no error, or with an
-- error class the worker does not list in p_unanswered: the store answered about that object),
-- have a refusal of their own (a URI naming a bucket the credentials cannot read): the worker
-- dead-letters them instead of pausing the source again and again. The classes that prove
-- nothing (refused before any request, or no answer from the store) come from the worker
-- (pgingest.raw.errors.UNANSWERED_CLASSES), the one place that defines them: the worker decides
-- with the same list whether a probe of a paused source resumes it.
-- Reads the source's rows once per call (at most one call per batch with such refusals).
CREATE OR REPLACE FUNCTION pgingest.raw_refused_alone_v2(
    p_doc_ids bigint[], p_versions bytea[], p_error_classes text[], p_unanswered text[]
)
RETURNS SETOF bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH x AS (
        SELECT
            u.doc_id,
            u.version,
            u.error_class
        FROM unnest(p_doc_ids, p_versions, p_error_classes) AS u (doc_id, version, error_class)
    ),

    mine AS (
        SELECT
            r.doc_id,
            r.source_id,
            r.fetched_at
        FROM x
        INNER JOIN pgingest.source_rows AS r
            ON x.doc_id = r.doc_id AND x.version = r.content_hash AND x.error_class = r.parse_error_class
        WHERE r.fetched_at IS NOT NULL
    ),

    answered AS (
        SELECT
            o.source_id,
            max(o.fetched_at) AS at
        FROM pgingest.source_rows AS o
        WHERE
            o.source_id IN (SELECT mine.source_id FROM mine)
            AND NOT o.doc_id = ANY(p_doc_ids)
            AND o.fetched_at IS NOT NULL
            AND (o.parse_error_class IS NULL OR NOT o.parse_error_class = ANY(coalesce(p_unanswered, '{}')))
        GROUP BY o.source_id
    )

    SELECT mine.doc_id
    FROM mine
    INNER JOIN answered ON mine.source_id = answered.source_id
    WHERE answered.at >= mine.fetched_at;
END;

COMMENT ON FUNCTION pgingest.raw_refused_alone_v2(bigint[], bytea[], text[], text[]) IS
'Worker: of these documents refused source-wide again, those that paused their source before while another '
'document of it got through since (no error, or a class not in p_unanswered): their refusal is their own '
'(dead-letter them, do not pause the source).';

-- The call of workers older than raw_refused_alone_v2, kept for a rolling upgrade: the classes
-- those workers treated as proving nothing.
CREATE OR REPLACE FUNCTION pgingest.raw_refused_alone_v1(p_doc_ids bigint[], p_versions bytea[], p_error_classes text[])
RETURNS SETOF bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT a.doc_id
    FROM pgingest.raw_refused_alone_v2(
        p_doc_ids, p_versions, p_error_classes,
        ARRAY[
            'access', 'not_allowed', 'bad_uri', 'fetch_timeout', 'throttled', 'server_error', 'connect_error',
            'raw_pending'
        ]
    ) AS a (doc_id);
END;

COMMENT ON FUNCTION pgingest.raw_refused_alone_v1(bigint[], bytea[], text[]) IS
'Worker (before raw_refused_alone_v2): raw_refused_alone_v2 with the classes those workers treated as '
'proving nothing.';

-- A re-check (refresh_source_rows) that found the same bytes: the version before the refresh
-- comes back, and is queued again for every live model (those that embedded it acknowledge it as
-- done: nothing is parsed or embedded). The validators the re-check saw (p_etags,
-- p_last_modified; NULL: keep the recorded one) are recorded: a file whose mtime moved but whose
-- bytes did not is then unchanged for the next source sync, not re-checked on every one.
CREATE OR REPLACE FUNCTION pgingest.raw_unchanged_v2(
    p_doc_ids bigint[], p_versions bytea[], p_etags text[], p_last_modified text[]
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_ids bigint[];
    v_hashes bytea[];
BEGIN
    WITH up AS (
        UPDATE pgingest.source_rows AS r
        SET content_hash = r.refreshed_from, refreshed_from = NULL, fetched_at = now(), parse_error_class = NULL,
            etag = coalesce(x.etag, r.etag), last_modified = coalesce(x.last_modified, r.last_modified)
        -- (unnest pads the shorter arrays with NULLs: NULL validators keep the recorded ones)
        FROM unnest(p_doc_ids, p_versions, p_etags, p_last_modified) AS x (doc_id, version, etag, last_modified)
        WHERE r.doc_id = x.doc_id AND r.content_hash = x.version AND r.refreshed_from IS NOT NULL
        RETURNING r.doc_id, r.content_hash
    )
    SELECT array_agg(up.doc_id ORDER BY up.doc_id), array_agg(up.content_hash ORDER BY up.doc_id)
    INTO v_ids, v_hashes FROM up;
    PERFORM pgingest._enqueue_versions(v_ids, v_hashes);
    RETURN coalesce(cardinality(v_ids), 0);
END;
$$;

COMMENT ON FUNCTION pgingest.raw_unchanged_v2(bigint[], bytea[], text[], text[]) IS
'Worker: raw documents whose re-check (pgingest.refresh_source_rows) found unchanged bytes go back to their '
'version before the refresh, queued again for every live model (already embedded: acknowledged as done), with '
'the ETag and Last-Modified the re-check saw (NULL: the recorded ones kept). Returns the rows restored.';

-- The call of workers before raw_unchanged_v2 (a rolling upgrade): the recorded validators kept.
CREATE OR REPLACE FUNCTION pgingest.raw_unchanged_v1(p_doc_ids bigint[], p_versions bytea[])
RETURNS integer
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT pgingest.raw_unchanged_v2(p_doc_ids, p_versions, NULL::text[], NULL::text[]);
END;

COMMENT ON FUNCTION pgingest.raw_unchanged_v1(bigint[], bytea[]) IS
'Worker (before raw_unchanged_v2): raw_unchanged_v2 with the recorded ETag and Last-Modified kept. Returns the '
'rows restored.';

CREATE OR REPLACE FUNCTION pgingest.raw_pause_source_v1(p_source text, p_reason text)
RETURNS void
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    UPDATE pgingest.sources AS s
    SET paused_at = coalesce(s.paused_at, now()), paused_reason = left(p_reason, 1000)
    WHERE s.name = p_source AND s.id <> 0;
END;

COMMENT ON FUNCTION pgingest.raw_pause_source_v1(text, text) IS
'Worker: pauses fetching for a raw source whose whole bucket or host refuses access, with the reason '
'(its documents wait, released, until pgingest.resume_source()).';

CREATE OR REPLACE FUNCTION pgingest.resume_source(name text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
BEGIN
    UPDATE pgingest.sources AS s SET paused_at = NULL, paused_reason = NULL
    WHERE s.name = resume_source.name AND s.id <> 0;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no source %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pg_notify('pgingest', '');
END;
$$;

COMMENT ON FUNCTION pgingest.resume_source(text) IS
'Resumes fetching for a raw source the worker paused (source_status.paused_reason says why).';

-- Re-check raw documents whose bytes may have changed behind the same URI: each row gets a new
-- version (the old one is kept in refreshed_from) queued for every live model. The worker
-- fetches it (conditionally where the store allows); unchanged bytes restore the old version
-- (raw_unchanged_v1) without a parse or an embedding request.
CREATE OR REPLACE FUNCTION pgingest.refresh_source_rows(name text, keys jsonb[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_s pgingest.sources;
    v_ids bigint[];
    v_hashes bytea[];
BEGIN
    SELECT * INTO v_s FROM pgingest.sources AS s WHERE s.name = refresh_source_rows.name AND s.id <> 0;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no source %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object';
    END IF;
    IF v_s.content_column IS NULL AND v_s.uri_column IS NULL THEN
        RAISE EXCEPTION 'pgingest: source % maps text, not raw documents: nothing to re-check', quote_literal(name)
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'pgingest.resync_source() walks a text source''s table again.';
    END IF;
    WITH up AS (
        UPDATE pgingest.source_rows AS r
        SET refreshed_from = coalesce(r.refreshed_from, r.content_hash),
            content_hash = sha256(r.content_hash || convert_to('refresh ' || clock_timestamp()::text, 'UTF8'))
        WHERE r.source_id = v_s.id AND (keys IS NULL OR r.row_key = ANY (keys))
        RETURNING r.doc_id, r.content_hash
    )
    SELECT array_agg(up.doc_id ORDER BY up.doc_id), array_agg(up.content_hash ORDER BY up.doc_id)
    INTO v_ids, v_hashes FROM up;
    PERFORM pgingest._enqueue_versions(v_ids, v_hashes);
    RETURN coalesce(cardinality(v_ids), 0);
END;
$$;

COMMENT ON FUNCTION pgingest.refresh_source_rows(text, jsonb[]) IS
'Queues a re-check of a raw source''s documents (keys: their row keys as jsonb, NULL: every row): the worker '
'fetches each again; changed bytes are parsed and embedded, unchanged ones (same sha256) are neither. '
'Returns the rows queued.';

-- The admin-managed allow-list (pgingest.raw_allowlist).
CREATE OR REPLACE FUNCTION pgingest.allow_raw_location(kind text, value text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_value text := btrim(value);
BEGIN
    IF kind IS NULL OR kind NOT IN ('root', 'host', 'http_host', 'network', 'bucket') THEN
        RAISE EXCEPTION 'pgingest: unknown allow-list kind %', coalesce(quote_literal(kind), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'root (a directory), host, http_host, network (CIDR) or bucket.';
    END IF;
    IF v_value IS NULL OR v_value = '' THEN
        RAISE EXCEPTION 'pgingest: an allow-list entry needs a value' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kind = 'root' AND (v_value !~ '^/' OR v_value ~ '(^|/)\.\.(/|$)' OR v_value = '/') THEN
        RAISE EXCEPTION 'pgingest: a file root is an absolute directory other than / without ..: %',
            quote_literal(v_value)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF kind IN ('host', 'http_host') AND v_value !~ '^\.?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$' THEN
        RAISE EXCEPTION 'pgingest: % is not a host name (no scheme, port or path)', quote_literal(v_value)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF kind = 'bucket' AND v_value !~ '^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9]|\*)$' THEN
        RAISE EXCEPTION 'pgingest: % is not an S3 bucket name', quote_literal(v_value)
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF kind = 'network' THEN
        BEGIN
            v_value := v_value::cidr::text;
        EXCEPTION WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'pgingest: % is not a network (CIDR)', quote_literal(v_value)
                USING ERRCODE = 'invalid_parameter_value';
        END;
    END IF;
    IF kind IN ('host', 'http_host') THEN
        v_value := lower(v_value);
    END IF;
    INSERT INTO pgingest.raw_allowlist AS a (kind, value) VALUES (kind, v_value)
    ON CONFLICT ON CONSTRAINT raw_allowlist_pkey DO NOTHING;
END;
$$;

COMMENT ON FUNCTION pgingest.allow_raw_location(text, text) IS
'Admin: lets the worker fetch raw documents from a file root (root), an https host (host; ".example.com" '
'for its subdomains), a host over plain http too (http_host), a non-public network (network, CIDR: '
'loopback, private and link-local addresses are refused otherwise) or an S3 bucket (bucket).';

CREATE OR REPLACE FUNCTION pgingest.disallow_raw_location(kind text, value text)
RETURNS boolean
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH d AS (
        DELETE FROM pgingest.raw_allowlist AS a
        WHERE
            a.kind = disallow_raw_location.kind
            AND a.value IN (btrim(disallow_raw_location.value), lower(btrim(disallow_raw_location.value)))
        RETURNING 1
    )

    SELECT count(*) > 0 FROM d;
END;

COMMENT ON FUNCTION pgingest.disallow_raw_location(text, text) IS
'Admin: removes an allow-list entry (true when there was one); workers stop using it within a minute.';

CREATE OR REPLACE FUNCTION pgingest.raw_allowlist_v1()
RETURNS TABLE (kind text, value text)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    SELECT
        a.kind,
        a.value
    FROM pgingest.raw_allowlist AS a
    ORDER BY a.kind, a.value;
END;

COMMENT ON FUNCTION pgingest.raw_allowlist_v1() IS
'Worker: the admin-managed allow-list of raw-document locations (pgingest.raw_allowlist).';

-- Where a chunk sits in its raw document: its page span and the heading path in effect where it
-- starts (NULL for a document without recorded structure).
CREATE OR REPLACE FUNCTION pgingest.chunk_location(p_model text, p_doc_id bigint, p_ordinal integer)
RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    WITH c AS (
        SELECT
            k.char_start,
            k.char_end,
            r.structure
        FROM pgingest.models AS m
        INNER JOIN pgingest.chunks AS k ON m.profile_id = k.profile_id
        INNER JOIN pgingest.source_rows AS r ON k.doc_id = r.doc_id
        WHERE m.name = p_model AND k.doc_id = p_doc_id AND k.ordinal = p_ordinal AND r.structure IS NOT NULL
    )

    SELECT
        jsonb_strip_nulls(jsonb_build_object(
            'page_start', (
                SELECT (p.e ->> 1)::integer FROM jsonb_array_elements(c.structure -> 'pages') AS p (e)
                WHERE (p.e ->> 0)::integer <= c.char_start
                ORDER BY (p.e ->> 0)::integer DESC LIMIT 1
            ),
            'page_end', (
                SELECT (p.e ->> 1)::integer FROM jsonb_array_elements(c.structure -> 'pages') AS p (e)
                WHERE (p.e ->> 0)::integer < greatest(c.char_end, c.char_start + 1)
                ORDER BY (p.e ->> 0)::integer DESC LIMIT 1
            ),
            'heading_path', (
                SELECT h.e -> 1 FROM jsonb_array_elements(c.structure -> 'headings') AS h (e)
                WHERE (h.e ->> 0)::integer <= c.char_start
                ORDER BY (h.e ->> 0)::integer DESC LIMIT 1
            )
        ))
    FROM c;
END;

COMMENT ON FUNCTION pgingest.chunk_location(text, bigint, integer) IS
'Where a chunk (a search result''s doc_id and ordinal, for a model) sits in its raw document: '
'{"page_start", "page_end", "heading_path"}, from the structure the worker recorded; NULL for other documents.';

CREATE OR REPLACE FUNCTION pgingest.raw_resume_source_v1(p_source text)
RETURNS void
LANGUAGE sql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
BEGIN ATOMIC
    UPDATE pgingest.sources AS s
    SET paused_at = NULL, paused_reason = NULL
    WHERE s.name = p_source AND s.id <> 0 AND s.paused_reason IS NOT NULL;
END;

COMMENT ON FUNCTION pgingest.raw_resume_source_v1(text) IS
'Worker: resumes a paused raw source after a probe (one of its documents fetched again) succeeded.';
