-- Sources: application tables attached with pgingest.add_source() (migrations/0009_sources.sql).
--
-- The mapping of a source (key, body column or template, title, metadata columns) is compiled
-- once into the SQL statements its capture triggers, its backfill and the worker's read path run
-- (pgingest.sources.statements, re-generated on every install). Every statement reaches the
-- application's table only through those, as the owner of pgingest: the worker role has no
-- privilege on it, and add_source() grants the owner SELECT on the mapped columns only.

-- Forgetting documents: their vectors go to the embedding cache (a re-inserted or restored row
-- reuses them), then the stores, chunks, state and dead letters lose them. Queued messages of
-- theirs are acknowledged later as stale.
CREATE OR REPLACE FUNCTION pgingest._forget_docs(p_doc_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_model record;
    -- The cache copy is bounded: a DELETE of millions of rows pays for at most this many vectors per
    -- model (the first ones; the others are simply not reusable), not for every one (issue 18, 12).
    v_cache_max constant integer := pgingest._config_seconds('delete_cache_max_chunks', 10000);
BEGIN
    IF coalesce(cardinality(p_doc_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    FOR v_model IN
        SELECT m.name, m.store_name FROM pgingest.models AS m WHERE m.state <> 'retired' ORDER BY m.name
    LOOP
        EXECUTE format(
            $sql$
            INSERT INTO pgingest.embedding_cache AS e (model, chunk_hash, embedding)
            SELECT DISTINCT ON (s.chunk_hash) %1$L, s.chunk_hash, s.embedding::vector
            FROM pgingest.%2$I AS s WHERE s.doc_id = ANY ($1)
            LIMIT $2
            ON CONFLICT (model, chunk_hash) DO UPDATE SET used_at = now()
            $sql$,
            v_model.name, v_model.store_name
        ) USING p_doc_ids, v_cache_max;
        EXECUTE format('DELETE FROM pgingest.%I AS s WHERE s.doc_id = ANY ($1)', v_model.store_name)
        USING p_doc_ids;
    END LOOP;
    DELETE FROM pgingest.chunks AS c WHERE c.doc_id = ANY (p_doc_ids);
    DELETE FROM pgingest.embedding_state AS s WHERE s.doc_id = ANY (p_doc_ids);
    DELETE FROM pgingest.dead_letters AS l WHERE l.doc_id = ANY (p_doc_ids);
    RETURN cardinality(p_doc_ids);
END;
$$;

COMMENT ON FUNCTION pgingest._forget_docs(bigint[]) IS
'Removes the chunks (every profile), the vectors (every live model''s store, copied to the embedding cache '
'first), the state and the dead letters of deleted documents of any source (internal).';

-- The content hash of an attached table's row: sha256 of the title's length in bytes (or 'null'),
-- ':', the title and the text. The length prefix makes it unambiguous whatever the title holds
-- (pgingest.documents' hash separates with chr(30), which its titles may not contain: 0011).
CREATE OR REPLACE FUNCTION pgingest._source_hash(p_title text, p_body text)
RETURNS bytea
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN sha256(convert_to(
    coalesce(octet_length(p_title)::text, 'null') || ':' || coalesce(p_title, '') || coalesce(p_body, ''), 'UTF8'
));

COMMENT ON FUNCTION pgingest._source_hash(text, text) IS
'Content hash of an attached table''s row: sha256 of octet_length(title) (or null) || '':'' || title || text.';

-- The same hash as an expression over two SQL expressions, for the statements a source's mapping
-- compiles to (its capture, its backfill). Issue 19, attached tables' capture: a LANGUAGE sql
-- function with a SET clause is never inlined, and fmgr_sql decompressed, parsed and planned
-- _source_hash's body for every statement that called it (~30 us of every single-row INSERT or
-- UPDATE of an attached table); written into the statement, the expression costs what sha256
-- costs. Those statements run with search_path pg_catalog first (their functions' SET clause).
-- tests/test_source_capture_cost.py checks that both give the same bytes.
CREATE OR REPLACE FUNCTION pgingest._source_hash_sql(p_title text, p_body text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN format(
    'sha256(convert_to(coalesce(octet_length(%1$s)::text, ''null'') || '':'' || coalesce(%1$s, '''') '
    || '|| coalesce(%2$s, ''''), ''UTF8''))',
    p_title, p_body
);

COMMENT ON FUNCTION pgingest._source_hash_sql(text, text) IS
'pgingest._source_hash(title, body) as an SQL expression over the given expressions, for compiled statements '
'(internal).';

-- The columns a template names, in order ('{title} {body}' -> {title, body}): the one parser of
-- the placeholder syntax (the mapping's checks, its grant, its text columns and its body expression).
CREATE OR REPLACE FUNCTION pgingest._template_columns(p_template text)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN (
    SELECT coalesce(array_agg(m.match[1] ORDER BY m.n), '{}')
    FROM regexp_matches(coalesce(p_template, ''), '\{([A-Za-z_][A-Za-z0-9_$]*)\}', 'g') WITH ORDINALITY AS m (match, n)
);

COMMENT ON FUNCTION pgingest._template_columns(text) IS
'The column names a source template''s {column} placeholders name, in order (internal).';

-- Raised by the guard of a source's capture statements (_source_expr 'guard'): never folded
-- (VOLATILE), evaluated only when a column's type is not what the guard allows.
CREATE OR REPLACE FUNCTION pgingest._source_type_changed(p_source integer)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
BEGIN
    RAISE EXCEPTION 'pgingest: source %: a key or mapped column of its table changed type since its statements were '
                    'compiled, to a type neither built in nor an extension''s (or from an extension''s): not read',
        (SELECT s.name FROM pgingest.sources AS s WHERE s.id = p_source)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Change the column back to a built-in type (or run pgingest install again if its new type is an '
                     'extension''s), or pgingest.remove_source() it.';
END;
$$;

COMMENT ON FUNCTION pgingest._source_type_changed(integer) IS
'Raises insufficient_privilege for a source whose key or mapped column changed type (internal: the guard of its '
'capture statements).';

-- The expression a source's mapping gives, over a row of its table aliased t.
CREATE OR REPLACE FUNCTION pgingest._source_expr(p_s pgingest.sources, p_what text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_parts text[];
    v_names text[];
    v_sql text := '';
    v_col text;
    v_type regtype;
BEGIN
    CASE p_what
    WHEN 'key' THEN
        RETURN format('jsonb_build_object(%s)', (
            SELECT string_agg(format('%L, t.%I', k.col, k.col), ', ' ORDER BY k.n)
            FROM unnest(p_s.key_columns) WITH ORDINALITY AS k (col, n)
        ));
    WHEN 'key_match' THEN
        -- t's key equals the jsonb key in r.row_key (typed: the primary key's index applies).
        RETURN (
            SELECT string_agg(format('t.%I = (r.row_key ->> %L)::%s', k.col, k.col, k.typ), ' AND ' ORDER BY k.n)
            FROM unnest(p_s.key_columns, p_s.key_types) WITH ORDINALITY AS k (col, typ, n)
        );
    WHEN 'guard', 'guard_key' THEN
        -- A filter over t (the transition tables of the capture) that fails the statement when a
        -- column read (the key's; 'guard': the mapped and metadata ones too) is not of a type
        -- built in (or of the extension type it had when compiled): a type changed by ALTER TABLE
        -- after add_source() to one whose casts are its owner's code is never read by the capture
        -- (_source_type_refusal: add_source() refuses them). pg_typeof runs no code of the type's.
        SELECT string_agg(
            CASE WHEN a.atttypid < 16384 THEN format('pg_catalog.pg_typeof(t.%I)::pg_catalog.oid < 16384', a.attname)
                 ELSE format('pg_catalog.pg_typeof(t.%I)::pg_catalog.oid = %s', a.attname, a.atttypid) END,
            ' AND ' ORDER BY a.attnum)
        INTO v_sql
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = p_s.relid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attname = ANY (p_s.key_columns || CASE WHEN p_what = 'guard'
                                                      THEN pgingest._source_text_columns(p_s) || p_s.metadata_columns
                                                      ELSE '{}' END);
        RETURN format('CASE WHEN %s THEN TRUE ELSE pgingest._source_type_changed(%s) END', coalesce(v_sql, 'TRUE'),
                      p_s.id);
    WHEN 'key_order' THEN
        RETURN (SELECT string_agg(format('t.%I', k.col), ', ' ORDER BY k.n)
                FROM unnest(p_s.key_columns) WITH ORDINALITY AS k (col, n));
    WHEN 'key_after' THEN
        -- Keyset: t's key comes after the key in $1 (jsonb).
        RETURN format('(%s) > (%s)',
            (SELECT string_agg(format('t.%I', k.col), ', ' ORDER BY k.n)
             FROM unnest(p_s.key_columns) WITH ORDINALITY AS k (col, n)),
            (SELECT string_agg(format('($1 ->> %L)::%s', k.col, k.typ), ', ' ORDER BY k.n)
             FROM unnest(p_s.key_columns, p_s.key_types) WITH ORDINALITY AS k (col, typ, n)));
    WHEN 'doc_key' THEN
        -- The text form of the key (documents.key for the built-in source): the value of a
        -- one-column key, the jsonb text of a composite one. Over r (pgingest.source_rows).
        IF cardinality(p_s.key_columns) = 1 THEN
            RETURN format('(r.row_key ->> %L)', p_s.key_columns[1]);
        END IF;
        RETURN '(r.row_key::text)';
    WHEN 'title' THEN
        IF p_s.title_column IS NULL THEN
            RETURN 'NULL::text';
        END IF;
        RETURN format('t.%I::text', p_s.title_column);
    WHEN 'metadata' THEN
        IF cardinality(p_s.metadata_columns) = 0 THEN
            RETURN '''{}''::jsonb';
        END IF;
        RETURN format('jsonb_strip_nulls(jsonb_build_object(%s))', (
            SELECT string_agg(format('%L, t.%I', m.col, m.col), ', ' ORDER BY m.n)
            FROM unnest(p_s.metadata_columns) WITH ORDINALITY AS m (col, n)
        ));
    WHEN 'compare' THEN
        -- What an UPDATE must change to be embedded again: the mapped text columns (a raw
        -- source's bytea column by its sha256, not by its bytes).
        RETURN format('ROW(%s, NULL::text)', (
            SELECT string_agg(
                CASE WHEN c = p_s.content_column THEN format('sha256(t.%I)::text', c) ELSE format('t.%I::text', c) END,
                ', ')
            FROM unnest(pgingest._source_text_columns(p_s)) AS c
        ));
    WHEN 'read_body' THEN
        -- What the worker's read path returns as the text: none for a raw source (the worker
        -- reads the bytes or fetches the URI itself: raw_documents_v1).
        IF p_s.content_column IS NOT NULL OR p_s.uri_column IS NOT NULL THEN
            RETURN 'NULL::text';
        END IF;
        RETURN pgingest._source_expr(p_s, 'body');
    WHEN 'raw' THEN
        -- A raw source's row: (bytea up to $2 bytes, its size, URI, MIME type) over t.
        RETURN format('%s, %s, %s, %s',
            CASE WHEN p_s.content_column IS NULL THEN 'NULL::bytea'
                 ELSE format('CASE WHEN octet_length(t.%1$I) <= $2 THEN t.%1$I END', p_s.content_column) END,
            CASE WHEN p_s.content_column IS NULL THEN 'NULL::bigint'
                 ELSE format('octet_length(t.%I)::bigint', p_s.content_column) END,
            CASE WHEN p_s.uri_column IS NULL THEN 'NULL::text' ELSE format('t.%I::text', p_s.uri_column) END,
            CASE WHEN p_s.mime_column IS NULL THEN 'NULL::text' ELSE format('t.%I::text', p_s.mime_column) END);
    WHEN 'body' THEN
        -- A raw source's version: the sha256 of its bytes, or its URI, with its MIME type (the
        -- bytes themselves are never copied: the worker reads them).
        IF p_s.content_column IS NOT NULL OR p_s.uri_column IS NOT NULL THEN
            RETURN format('CASE WHEN %1$s IS NOT NULL THEN concat_ws(%2$L, %3$s, %4$s) END',
                format('t.%I', coalesce(p_s.content_column, p_s.uri_column)),
                E'\n',
                CASE WHEN p_s.content_column IS NOT NULL
                     THEN format('''content:'' || encode(sha256(t.%I), ''hex'')', p_s.content_column)
                     ELSE format('''uri:'' || t.%I::text', p_s.uri_column) END,
                CASE WHEN p_s.mime_column IS NULL THEN 'NULL::text'
                     ELSE format('''mime:'' || t.%I::text', p_s.mime_column) END);
        END IF;
        IF p_s.body_column IS NOT NULL THEN
            RETURN format('t.%I::text', p_s.body_column);
        END IF;
        -- A template: '{column}' placeholders between literal text. Arrays are joined with ', '.
        v_parts := regexp_split_to_array(p_s.template, '\{[A-Za-z_][A-Za-z0-9_$]*\}');
        v_names := pgingest._template_columns(p_s.template);
        FOR v_i IN 1 .. cardinality(v_parts) LOOP
            IF v_parts[v_i] <> '' THEN
                v_sql := v_sql || ', ' || quote_literal(v_parts[v_i]);
            END IF;
            IF v_i <= cardinality(v_names) THEN
                v_col := v_names[v_i];
                SELECT a.atttypid::regtype INTO v_type FROM pg_catalog.pg_attribute AS a
                WHERE a.attrelid = p_s.relid AND a.attname = v_col AND NOT a.attisdropped;
                v_sql := v_sql || ', ' || CASE
                    WHEN v_type::text LIKE '%[]' THEN format('array_to_string(t.%I, '', '')', v_col)
                    ELSE format('t.%I::text', v_col)
                END;
            END IF;
        END LOOP;
        -- Every column NULL: no text (the row is dead-lettered as empty, not embedded as the
        -- template's literal words).
        RETURN format('CASE WHEN num_nonnulls(%s) > 0 THEN concat(%s) END',
                      (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(v_names) AS c),
                      substr(v_sql, 3));
    ELSE
        RAISE EXCEPTION 'pgingest: _source_expr: unknown part %', p_what;
    END CASE;
END;
$$;

COMMENT ON FUNCTION pgingest._source_expr(pgingest.sources, text) IS
'SQL expressions of a source''s mapping over its table aliased t (key, key_match against r.row_key, '
'key_order, key_after $1, doc_key over r, title, metadata, compare, body) (internal).';

CREATE OR REPLACE FUNCTION pgingest._source_text_columns(p_s pgingest.sources)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN (
    SELECT coalesce(array_agg(DISTINCT c.col ORDER BY c.col), '{}')
    FROM (
        SELECT p_s.body_column AS col  -- noqa: RF01
        UNION ALL
        SELECT p_s.content_column  -- noqa: RF01
        UNION ALL
        SELECT p_s.uri_column  -- noqa: RF01
        UNION ALL
        SELECT p_s.mime_column  -- noqa: RF01
        UNION ALL
        SELECT p_s.title_column  -- noqa: RF01
        UNION ALL
        SELECT unnest(pgingest._template_columns(p_s.template))  -- noqa: RF01
    ) AS c
    WHERE c.col IS NOT NULL
);

COMMENT ON FUNCTION pgingest._source_text_columns(pgingest.sources) IS
'The columns whose text a source embeds: body column or the template''s columns, a raw source''s content, URI '
'and MIME columns, and the title column.';

-- The statements of a source, compiled from its mapping.
CREATE OR REPLACE FUNCTION pgingest._source_statements(p_s pgingest.sources)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_key text := pgingest._source_expr(p_s, 'key');
    v_title text := pgingest._source_expr(p_s, 'title');
    v_meta text := pgingest._source_expr(p_s, 'metadata');
    v_body text := pgingest._source_expr(p_s, 'body');
    v_cmp text := pgingest._source_expr(p_s, 'compare');
    v_guard text := pgingest._source_expr(p_s, 'guard');
    v_guard_key text := pgingest._source_expr(p_s, 'guard_key');
    -- Schema-qualified, always (review 2026-12-07): relid::regclass::text leaves out a schema on
    -- the pinned search_path (public, where the vector extension often is), and a table created
    -- later under the old name of a renamed one was read instead. A rename is caught where the
    -- statements naming it run (_read_source_rows, source_backfill_step_v1: statements ->> 'table').
    v_table text := (
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_catalog.pg_class AS c INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = p_s.relid
    );
    v_hash text := pgingest._source_hash_sql('n.title', 'n.body');
    v_upsert text;
    v_upsert_update text;
    v_insert text;
    v_update text;
    v_moved text;
    v_delete text;
BEGIN
    -- Registers rows (n: k, title, md, body) and returns the doc_id and hash of each row it
    -- inserted or changed (the hash of _source_hash, written into the statement: _source_hash_sql). The title kept for search results is cut at 1,024 bytes-ish characters;
    -- the worker embeds the full one from the table. A changed row is a new version, not a
    -- re-check: a pending refresh (refreshed_from) ends, or the worker would judge the new
    -- version (a new URI, say) by the validators and sha256 recorded for the old one.
    v_upsert := format(
        $sql$
        INSERT INTO pgingest.source_rows AS r (source_id, row_key, content_hash, title, metadata)
        SELECT %1$s, n.k, %2$s, left(n.title, 1024), n.md FROM n
        ON CONFLICT (source_id, row_key) DO UPDATE
        SET content_hash = excluded.content_hash, title = excluded.title, metadata = excluded.metadata,
            refreshed_from = NULL
        WHERE (r.content_hash, r.title, r.metadata) IS DISTINCT FROM (excluded.content_hash, excluded.title, excluded.metadata)
        RETURNING r.doc_id, r.content_hash, r.row_key, r.xmax = 0 AS inserted
        $sql$,
        p_s.id, 'n.hash'
    );
    -- An UPDATE's upsert: a row whose metadata alone changed keeps the hash registered (n.keep):
    -- the version queued or embedded for it is that one, and this UPDATE did not change its text.
    v_upsert_update := replace(v_upsert, 'n.hash', format('coalesce(n.keep, %s)', v_hash));
    v_upsert := replace(v_upsert, 'n.hash', v_hash);
    -- The capture's statements, without their last SELECT: the stored ones (run by EXECUTE when a
    -- source is not compiled yet) end with one returning arrays; the compiled capture
    -- (_compile_source_capture) appends the queue INSERT (_source_queue_sql) to capture_insert and
    -- capture_update (whose rows to queue are up's, v's), INTO v_gone to capture_moved and
    -- capture_delete (d's doc_ids).
    v_insert := format(
        $sql$
            WITH n AS (
                SELECT %1$s AS k, %2$s AS title, %3$s AS md, %4$s AS body FROM new_rows AS t WHERE %6$s
            ), up AS (%5$s)
        $sql$,
        v_key, v_title, v_meta, v_body, v_upsert, v_guard);
    -- An UPDATE: rows whose mapped text changed (or whose key is new) are registered and
    -- queued; rows whose metadata columns alone changed are registered, not queued (their hash
    -- kept: n.keep), unless not registered yet (the backfill has not reached them, or none ran:
    -- up.inserted, review 2026-12-07: such a row was registered and never embedded); rows whose
    -- other columns alone changed cost a comparison.
    v_update := format(
        $sql$
            WITH o AS (
                SELECT %1$s AS k, %5$s AS e, %3$s AS md FROM old_rows AS t WHERE %8$s
            ), ch AS MATERIALIZED (
                SELECT x.k, x.title, x.md, x.body, (o.k IS NULL OR o.e IS DISTINCT FROM x.e) AS queue,
                       o.k IS NULL AS new_key
                FROM (
                    SELECT %1$s AS k, %5$s AS e, %3$s AS md, %2$s AS title, %4$s AS body FROM new_rows AS t
                    WHERE %8$s
                ) AS x
                LEFT JOIN o ON o.k = x.k
                WHERE o.k IS NULL OR o.e IS DISTINCT FROM x.e OR o.md IS DISTINCT FROM x.md
            ), n AS (
                SELECT ch.k, ch.title, ch.md, ch.body,
                       CASE WHEN NOT ch.queue THEN (
                           SELECT r.content_hash FROM pgingest.source_rows AS r WHERE r.source_id = %7$s AND r.row_key = ch.k
                       ) END AS keep
                FROM ch
            ), up AS (%6$s
            ), v AS (
                SELECT up.doc_id, up.content_hash FROM up INNER JOIN ch ON ch.k = up.row_key WHERE ch.queue OR up.inserted
            )
        $sql$,
        v_key, v_title, v_meta, v_body, v_cmp, v_upsert_update, p_s.id, v_guard);
    -- Keys an UPDATE moved away from (a changed primary key): forgotten.
    v_moved := format(
        $sql$
            WITH gone AS (
                SELECT %1$s AS k FROM old_rows AS t WHERE %3$s
                EXCEPT
                SELECT %1$s AS k FROM new_rows AS t WHERE %3$s
            ), d AS (
                DELETE FROM pgingest.source_rows AS r USING gone
                WHERE r.source_id = %2$s AND r.row_key = gone.k
                RETURNING r.doc_id
            )
        $sql$,
        v_key, p_s.id, v_guard_key);
    v_delete := format(
        $sql$
            WITH d AS (
                DELETE FROM pgingest.source_rows AS r USING old_rows AS t
                WHERE r.source_id = %2$s AND r.row_key = %1$s AND %3$s
                RETURNING r.doc_id
            )
        $sql$,
        v_key, p_s.id, v_guard_key);
    RETURN jsonb_build_object(
        -- The table's name in read, raw, backfill_first and backfill_next.
        'table', v_table,
        'insert', v_insert || 'SELECT array_agg(up.doc_id), array_agg(up.content_hash) FROM up',
        'update', v_update || 'SELECT array_agg(v.doc_id), array_agg(v.content_hash) FROM v',
        'moved', v_moved || 'SELECT array_agg(d.doc_id) FROM d',
        'delete', v_delete || 'SELECT array_agg(d.doc_id) FROM d',
        'capture_insert', v_insert,
        'capture_update', v_update,
        'capture_moved', v_moved,
        'capture_delete', v_delete,
        -- The worker's read path: $1 the doc_ids.
        'read', format(
            $sql$
            SELECT r.doc_id, %1$s, %2$s, %3$s, r.content_hash
            FROM pgingest.source_rows AS r
            INNER JOIN %4$s AS t ON %5$s
            WHERE r.source_id = %6$s AND r.doc_id = ANY ($1)
            $sql$,
            pgingest._source_expr(p_s, 'doc_key'), v_title, pgingest._source_expr(p_s, 'read_body'), v_table,
            pgingest._source_expr(p_s, 'key_match'), p_s.id),
        -- A raw source's bytes or URI for the worker: $1 the doc_ids, $2 the largest bytea read.
        'raw', CASE WHEN p_s.content_column IS NOT NULL OR p_s.uri_column IS NOT NULL THEN format(
            $sql$
            SELECT r.doc_id, %1$s
            FROM pgingest.source_rows AS r
            INNER JOIN %2$s AS t ON %3$s
            WHERE r.source_id = %4$s AND r.doc_id = ANY ($1)
            $sql$,
            pgingest._source_expr(p_s, 'raw'), v_table, pgingest._source_expr(p_s, 'key_match'), p_s.id) END,
        -- The backfill: the next $2 rows in key order after the key $1 (from the first without).
        'backfill_first', format(
            $sql$
            WITH n AS MATERIALIZED (
                SELECT %1$s AS k, %2$s AS title, %3$s AS md, %4$s AS body FROM %5$s AS t ORDER BY %6$s LIMIT $2
            ), up AS (%7$s)
            SELECT (SELECT array_agg(up.doc_id) FROM up), (SELECT array_agg(up.content_hash) FROM up),
                   (SELECT count(*) FROM n), (SELECT n.k FROM n OFFSET (SELECT greatest(count(*) - 1, 0) FROM n) LIMIT 1)
            $sql$,
            v_key, v_title, v_meta, v_body, v_table, pgingest._source_expr(p_s, 'key_order'), v_upsert),
        'backfill_next', format(
            $sql$
            WITH n AS MATERIALIZED (
                SELECT %1$s AS k, %2$s AS title, %3$s AS md, %4$s AS body FROM %5$s AS t
                WHERE %8$s ORDER BY %6$s LIMIT $2
            ), up AS (%7$s)
            SELECT (SELECT array_agg(up.doc_id) FROM up), (SELECT array_agg(up.content_hash) FROM up),
                   (SELECT count(*) FROM n), (SELECT n.k FROM n OFFSET (SELECT greatest(count(*) - 1, 0) FROM n) LIMIT 1)
            $sql$,
            v_key, v_title, v_meta, v_body, v_table, pgingest._source_expr(p_s, 'key_order'), v_upsert,
            pgingest._source_expr(p_s, 'key_after'))
    );
END;
$$;

COMMENT ON FUNCTION pgingest._source_statements(pgingest.sources) IS
'Compiles a source''s mapping into the SQL of its capture (insert, update, moved, delete; and their CTEs, '
'capture_insert, capture_update, capture_moved, capture_delete, from which _compile_source_capture builds the '
'compiled capture), the worker''s read path (read; raw for a raw source''s bytes or URI) and its backfill '
'(backfill_first, backfill_next) (internal; '
'stored in sources.statements).';

-- A failed capture never fails the application's statement (except for the transient errors of
-- concurrency, which the application retries anyway): it becomes a dead letter per live model,
-- and pgingest.resync_source() catches the rows up once the cause is fixed.
CREATE OR REPLACE FUNCTION pgingest._capture_failed(p_source text, p_op text, p_state text, p_message text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO pgingest.dead_letters (doc_id, model, error_class, error_message, payload)
    SELECT NULL, m.name, 'capture_failed',
           left(format('source %s: capturing an %s failed (SQLSTATE %s: %s); the rows of that statement are not '
                       'queued: fix the cause, then SELECT pgingest.resync_source(%L)',
                       p_source, p_op, p_state, p_message, p_source), 2000),
           jsonb_build_object('source', p_source, 'operation', p_op, 'sqlstate', p_state)
    FROM pgingest.models AS m
    WHERE m.state <> 'retired';
    RAISE WARNING 'pgingest: source %: capturing an % failed: %', p_source, p_op, p_message
        USING HINT = format('Fix the cause, then SELECT pgingest.resync_source(%L);', p_source);
END;
$$;

COMMENT ON FUNCTION pgingest._capture_failed(text, text, text, text) IS
'Records a failed capture of a source as a dead letter (capture_failed) per live model and warns (internal).';

-- The key of the advisory lock the compilations took before migration 0024 (pgingest.compile_lock now).
DROP FUNCTION IF EXISTS pgingest._source_lock_key();

-- The lock by which a source's backfill steps and its captures take turns (review 2026-12-07,
-- security finding 3): an empty table pgingest."source_lock_<source id>", which belongs to its
-- source (created by _attach_source and by every install for the sources there are, dropped by
-- _detach_source), like a model's store belongs to its model. The capture takes it IN ROW
-- EXCLUSIVE MODE (a fast-path lock, compatible between writers), a backfill step IN SHARE MODE
-- (which conflicts with ROW EXCLUSIVE). It used to be an advisory lock keyed (1886808435, source
-- id): advisory locks need no privilege, and any role that could connect, pgingest role or not,
-- held pg_advisory_lock(1886808435, <id>) and hung every write to the attached table for ever.
-- LOCK TABLE in these modes needs INSERT, UPDATE, DELETE or TRUNCATE on the table, which nobody
-- but the owner of pgingest has: admins get SELECT (as on every table of pgingest), which allows
-- ACCESS SHARE only, and ACCESS SHARE conflicts with neither mode.
CREATE OR REPLACE FUNCTION pgingest._source_lock_table(p_id integer)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_name text := 'source_lock_' || p_id;
BEGIN
    IF to_regclass(format('pgingest.%I', v_name)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE pgingest.%I ()', v_name);
    EXECUTE format('REVOKE ALL ON pgingest.%I FROM PUBLIC', v_name);
    EXECUTE format('GRANT SELECT ON pgingest.%I TO pgingest_admin', v_name);
    EXECUTE format(
        'COMMENT ON TABLE pgingest.%I IS %L', v_name,
        format('The lock by which the captures (ROW EXCLUSIVE) and the backfill steps (SHARE) of source id %s '
               'take turns; empty (internal: goes with its source).', p_id)
    );
END;
$$;

COMMENT ON FUNCTION pgingest._source_lock_table(integer) IS
'Creates the lock table pgingest.source_lock_<id> of a source when it does not exist (internal: '
'_attach_source, every install, a backfill step).';

-- Every source has its lock table; a lock table of no source is dropped.
DO $$
DECLARE
    v_rel record;
BEGIN
    PERFORM pgingest._source_lock_table(s.id) FROM pgingest.sources AS s WHERE s.id <> 0;
    FOR v_rel IN
        SELECT c.relname FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'pgingest'::regnamespace AND c.relkind = 'r' AND c.relname ~ '^source_lock_[0-9]+$'
          AND NOT EXISTS (SELECT 1 FROM pgingest.sources AS s WHERE 'source_lock_' || s.id = c.relname)
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE pgingest.%I', v_rel.relname);
    END LOOP;
END;
$$;

-- The queueing part of the compiled capture of attached tables (issue 19, attached tables'
-- capture): the queue INSERT of the first live model as the statement itself, reading the rows of
-- p_rel (doc_id, content_hash), the other live models' as data-modifying CTEs of it, as the
-- compiled capture of pgingest.documents does (_capture_docs_body): one node less to start per
-- statement than a SELECT over the CTEs, and the row count from GET DIAGNOSTICS. vt is
-- statement_timestamp() for the same reason as there. Returns {CTEs (each starting with ',\n'),
-- the INSERT and its GET DIAGNOSTICS, the first model's INSERT as a CTE too (for a statement
-- whose main query is a SELECT: the UPDATE's, _compile_source_capture)}, or NULL when no model
-- is live.
CREATE OR REPLACE FUNCTION pgingest._source_queue_sql(p_rel text)
RETURNS text[]
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queues text[];
    v_ctes text := '';
    v_insert text := E'INSERT INTO pgmq.%I (vt, message)\n'
        || E'    SELECT statement_timestamp(), jsonb_build_object(''doc_id'', x.doc_id, ''hash'', '
        || E'encode(x.content_hash, ''hex''), ''attempts'', 0)\n'
        || E'    FROM %I AS x';
BEGIN
    SELECT array_agg('q_' || m.queue_name ORDER BY m.name) INTO v_queues
    FROM pgingest.models AS m
    WHERE m.state <> 'retired' AND to_regclass(format('pgmq.%I', 'q_' || m.queue_name)) IS NOT NULL;
    IF v_queues IS NULL THEN
        RETURN NULL;
    END IF;
    FOR i IN 2 .. cardinality(v_queues) LOOP
        v_ctes := v_ctes || format(E',\n    queue_%s AS (\n    ', i) || format(v_insert, v_queues[i], p_rel)
            || E'\n    )';
    END LOOP;
    RETURN ARRAY[
        v_ctes,
        E'\n    ' || format(v_insert, v_queues[1], p_rel) || E';\n    GET DIAGNOSTICS v_n = ROW_COUNT;\n',
        E',\n    queue_1 AS (\n    ' || format(v_insert, v_queues[1], p_rel) || E'\n    )'
    ];
END;
$$;

COMMENT ON FUNCTION pgingest._source_queue_sql(text) IS
'The queueing part of the compiled capture of attached tables: the first live model''s queue INSERT as the '
'statement, the others'' as its CTEs, and its row count INTO v_n; and the first one as a CTE (internal; NULL '
'when no model is live).';

-- The wake-up check of the compiled capture of attached tables, once per statement after the
-- queue INSERT (v_n: the rows it queued): _wake_check_sql (sql/010_capture.sql), the rule and the
-- session memo of pgingest.documents' capture. '' when no model is live.
CREATE OR REPLACE FUNCTION pgingest._source_wake_sql()
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_checks text[];
BEGIN
    SELECT array_agg(format('CASE WHEN %s THEN %L END', pgingest._wake_needed_sql(m.name), m.name) ORDER BY m.name)
    INTO v_checks
    FROM pgingest.models AS m
    WHERE m.state <> 'retired' AND to_regclass(format('pgmq.%I', 'q_' || m.queue_name)) IS NOT NULL;
    IF v_checks IS NULL THEN
        RETURN '';
    END IF;
    RETURN pgingest._wake_check_sql(v_checks, '        ');
END;
$$;

COMMENT ON FUNCTION pgingest._source_wake_sql() IS
'The wake-up check of the compiled capture of attached tables, after its queue INSERT (internal; '''' when no '
'model is live).';

-- Why a column's type cannot be mapped (NULL when it can). pgingest reads the key, mapped and
-- metadata columns of an attached table as the owner of pgingest (the SECURITY DEFINER capture,
-- backfill and read path), through casts to text and to_jsonb: a type of the table owner's own (an
-- enum, a domain, a composite) with a CAST to text or json of theirs, or a domain whose CHECK calls
-- their function, would run their code as the owner of pgingest (review 2026-12-07). Only the
-- types built into PostgreSQL or an extension's are read (through a domain: its base type; an
-- array: its element type), and only when no cast of theirs to text, varchar, char, json or jsonb
-- is a function of someone else's.
CREATE OR REPLACE FUNCTION pgingest._source_type_refusal(p_type regtype)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_oid oid := p_type;
    v_t record;
    v_cast text;
BEGIN
    LOOP
        SELECT t.typtype, t.typbasetype, t.typelem, t.typcategory INTO v_t
        FROM pg_catalog.pg_type AS t WHERE t.oid = v_oid;
        -- An array type is its element's (made with it, owned by its owner): the element is checked.
        IF v_oid >= 16384 AND NOT (v_t.typcategory = 'A' AND v_t.typelem <> 0) AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_depend AS d
            WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = v_oid AND d.deptype = 'e'
        ) THEN
            RETURN format('of type %s%s, which is neither built into PostgreSQL nor an extension''s', p_type,
                          CASE WHEN v_oid <> p_type THEN format(' (over %s)', v_oid::regtype) ELSE '' END);
        END IF;
        SELECT format('%s runs %s', c.casttarget::regtype, c.castfunc::regprocedure) INTO v_cast
        FROM pg_catalog.pg_cast AS c
        WHERE c.castsource = v_oid
          AND c.casttarget IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'json'::regtype, 'jsonb'::regtype)
          AND c.castfunc >= 16384
          AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_depend AS d
              WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = c.castfunc AND d.deptype = 'e'
          )
        ORDER BY c.casttarget
        LIMIT 1;
        IF v_cast IS NOT NULL THEN
            RETURN format('of type %s, whose cast to %s, a function neither built in nor an extension''s', p_type,
                          v_cast);
        END IF;
        IF v_t.typtype = 'd' THEN
            v_oid := v_t.typbasetype;
        ELSIF v_t.typcategory = 'A' AND v_t.typelem <> 0 THEN
            v_oid := v_t.typelem;
        ELSE
            RETURN NULL;
        END IF;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest._source_type_refusal(regtype) IS
'Why a column of this type cannot be mapped by a source (its type, domain base or array element type is not '
'built in nor an extension''s, or a cast of it to text or json is a user''s function), or NULL (internal).';

-- Whether row-level security is enabled on a table (or forced on its owner). A policy is an
-- expression of the table owner's choosing, functions of theirs included: the SECURITY DEFINER
-- backfill, read path and raw read path would evaluate it as the owner of pgingest (review
-- 2026-12-07, security finding 1). add_source() refuses such a table; one that enables it later
-- is not read (those routines, and the capture, also run with row_security = off, so that a
-- policy raises an error instead of running).
CREATE OR REPLACE FUNCTION pgingest._source_rls(p_table oid)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN (
    SELECT c.relrowsecurity OR c.relforcerowsecurity
    FROM pg_catalog.pg_class AS c
    WHERE c.oid = p_table
);

COMMENT ON FUNCTION pgingest._source_rls(oid) IS
'Whether row-level security is enabled (or forced) on an attached table, which pgingest then does not read '
'(internal).';

-- The first column of a source's key (p_key) or mapping (p_cols) that cannot be read: why, as a
-- sentence naming it (NULL when none). Columns not found are skipped (their statements fail).
CREATE OR REPLACE FUNCTION pgingest._source_columns_refusal(p_table regclass, p_key text[], p_cols text[])
RETURNS text
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
RETURN (
    SELECT format('the %s column %s of %s is %s', c.role, quote_ident(c.col), p_table, c.why)
    FROM (
        SELECT
            x.col,
            x.role,
            x.n,
            pgingest._source_type_refusal(a.atttypid::regtype) AS why
        FROM (
            SELECT
                k.col,
                k.n,
                'key' AS role
            FROM unnest(p_key) WITH ORDINALITY AS k (col, n)
            UNION ALL
            SELECT
                m.col,
                100 + m.n AS n,
                'mapped' AS role
            FROM unnest(p_cols) WITH ORDINALITY AS m (col, n)
        ) AS x
        INNER JOIN pg_catalog.pg_attribute AS a
            ON x.col = a.attname AND a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
    ) AS c
    WHERE c.why IS NOT NULL
    ORDER BY c.n
    LIMIT 1
);

COMMENT ON FUNCTION pgingest._source_columns_refusal(regclass, text[], text[]) IS
'The first key or mapped column of a table whose type a source cannot read safely, and why; NULL when none '
'(internal: _source_type_refusal).';

-- The capture of attached tables: one trigger function, compiled (at add_source, remove_source,
-- register_model, retire_model and every install) with a branch of static statements per source:
-- its registry upsert and the queue rows of every live model are one statement (the queue INSERT,
-- the upsert a CTE of it), planned once per session and table (PL/pgSQL caches a trigger
-- function's plans per table); the wake-up check follows, once.
-- A source not compiled yet runs its stored statements (sources.statements) by EXECUTE.
-- Issue 19, attached tables' capture: what a single-row statement pays besides its statements is
-- kept to PL/pgSQL expressions (no executor): the source's id from a CASE over TG_ARGV[0], its
-- lock table's name as a literal (a SQL function for the key of the advisory lock this was before
-- went through fmgr_sql, planned on every call), lock_timeout set and put back only when it is not 0.
-- jit = off: PL/pgSQL plans each statement once per session, with the transition tables' sizes
-- of the statement that first fires it. After a first UPDATE of 20,000 rows the UPDATE's plan
-- was estimated at billions of rows (the join of the registry rows with the changes), over
-- jit_optimize_above_cost, and every later single-row UPDATE of that session JIT-compiled it:
-- ~350 ms a statement instead of ~0.3. A capture's expressions gain nothing worth that.
-- TimeZone, DateStyle, IntervalStyle, bytea_output, extra_float_digits and lc_monetary are pinned
-- (as in source_backfill_step_v1 and _read_source_rows): the registry's keys (jsonb of the key
-- columns) and the text hashed are the same whatever the application's session sets (review
-- 2026-12-07: a DELETE from a session in another time zone missed its registry row).
CREATE OR REPLACE FUNCTION pgingest._compile_source_capture_now()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_s record;
    v_ins text[];
    v_upd text[];
    v_case text := '';
    v_branches text := '';
    v_locks text := '';
    v_names text;
BEGIN
    -- One compilation at a time (the lock of _compile_enqueue, which calls this one).
    LOCK TABLE pgingest.compile_lock IN EXCLUSIVE MODE;
    v_ins := pgingest._source_queue_sql('up');
    v_upd := pgingest._source_queue_sql('v');
    FOR v_s IN
        SELECT s.id, s.name, s.relid, s.statements,
               -- Its key is unique in every statement's old and new rows: a unique index on exactly
               -- its columns, checked row by row (not deferrable), and no NULL in them.
               EXISTS (
                   SELECT 1 FROM pg_catalog.pg_index AS i
                   WHERE i.indrelid = s.relid AND i.indisunique AND i.indimmediate AND i.indisvalid
                     AND i.indpred IS NULL AND i.indexprs IS NULL
                     AND ARRAY(
                         SELECT a.attname::text
                         FROM unnest(i.indkey::smallint[]) WITH ORDINALITY AS k (attnum, n)
                         INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                         ORDER BY k.n
                     ) = s.key_columns
               ) AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_attribute AS a
                   WHERE a.attrelid = s.relid AND a.attname = ANY (s.key_columns) AND NOT a.attnotnull
               ) AND strpos(s.statements ->> 'capture_update', 'AS new_key') > 0 AS unique_key,
               pgingest._source_columns_refusal(
                   s.relid, s.key_columns, pgingest._source_text_columns(s) || s.metadata_columns
               ) AS refusal
        FROM pgingest.sources AS s
        WHERE s.id <> 0 AND s.statements ? 'capture_insert'
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = s.relid)
        ORDER BY s.id
    LOOP
        -- Only for the table the source is attached to (TG_RELID): a trigger on another table
        -- naming this source (anyone with TRIGGER on some table can create one) does nothing.
        v_case := v_case || format(' WHEN %L THEN CASE WHEN TG_RELID = %s THEN %s END', v_s.name, v_s.relid, v_s.id);
        IF to_regclass(format('pgingest.%I', 'source_lock_' || v_s.id)) IS NOT NULL THEN
            v_locks := v_locks || format(E'        %s v_id = %s THEN\n            LOCK TABLE pgingest.%I IN ROW EXCLUSIVE MODE;\n',
                                         CASE WHEN v_locks = '' THEN 'IF' ELSE 'ELSIF' END, v_s.id,
                                         'source_lock_' || v_s.id);
        END IF;
        IF v_s.refusal IS NOT NULL THEN
            -- A column's type changed since add_source() to one whose casts are its owner's code:
            -- never run (a capture_failed dead letter per statement instead).
            v_branches := v_branches
                || format(E'        ELSIF v_id = %s THEN\n', v_s.id)
                || format(E'            RAISE EXCEPTION USING MESSAGE = %L, ERRCODE = ''insufficient_privilege'';\n',
                          'pgingest: ' || v_s.refusal || ': not read (remove the source, or change the type back)');
            CONTINUE;
        END IF;
        v_branches := v_branches
            || format(E'        ELSIF v_id = %s THEN\n', v_s.id)
            || E'            IF TG_OP = ''INSERT'' THEN\n'
            || (v_s.statements ->> 'capture_insert')
            || coalesce(v_ins[1] || v_ins[2], E'SELECT count(*) INTO v_n FROM up;\n')
            || E'            ELSIF TG_OP = ''UPDATE'' THEN\n'
            -- Never a nested loop over the transition tables (see _capture_update): the plan is
            -- made once per session, maybe for a single row, and kept for bulk statements too.
            || E'                v_nestloop := current_setting(''enable_nestloop'');\n'
            || E'                v_set := set_config(''enable_nestloop'', ''off'', TRUE);\n'
            || (v_s.statements ->> 'capture_update')
            || CASE WHEN v_s.unique_key THEN
                   -- Whether a key moved comes out of the same statement (a changed row whose key is
                   -- not among the old rows': with unique keys, the only way an old key can be gone),
                   -- and the key-change statement (11 plan nodes to start) runs only then.
                   coalesce(v_upd[3] || v_upd[1], '')
                   || E'\n    SELECT (SELECT count(*) FROM v), EXISTS (SELECT 1 FROM ch WHERE ch.new_key)'
                   || E' INTO v_n, v_moved;\n'
               ELSE
                   coalesce(v_upd[1] || v_upd[2], E'SELECT count(*) INTO v_n FROM v;\n')
               END
            || E'                v_set := set_config(''enable_nestloop'', v_nestloop, TRUE);\n'
            || CASE WHEN v_s.unique_key THEN E'                IF v_moved THEN\n' ELSE '' END
            || (v_s.statements ->> 'capture_moved') || E'SELECT array_agg(d.doc_id) INTO v_gone FROM d;\n'
            || CASE WHEN v_s.unique_key THEN E'                END IF;\n' ELSE '' END
            || E'            ELSE\n'
            || (v_s.statements ->> 'capture_delete') || E'SELECT array_agg(d.doc_id) INTO v_gone FROM d;\n'
            || E'            END IF;\n';
    END LOOP;
    EXECUTE format(
        $ddl$
        CREATE OR REPLACE FUNCTION pgingest._source_capture()
        RETURNS trigger
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path FROM CURRENT
        SET jit = off
        SET timezone = 'UTC'
        SET datestyle = 'ISO, MDY'
        SET intervalstyle = 'postgres'
        SET bytea_output = 'hex'
        SET extra_float_digits = 1
        SET lc_monetary = 'C'
        SET row_security = off
        AS %L
        $ddl$,
        format(
            $body$
DECLARE
    v_id integer;
    v_sql jsonb;
    v_ids bigint[];
    v_hashes bytea[];
    v_gone bigint[];
    v_n bigint;
    v_moved boolean;
    v_memo text;
    v_wake text[];
    v_lock_timeout text;
    v_nestloop text;
    v_set text;
BEGIN
    v_id := %1$s;
    IF v_id IS NULL THEN  -- a source not compiled (yet): its stored statements
        SELECT s.id, s.statements INTO v_id, v_sql FROM pgingest.sources AS s
        WHERE s.name = TG_ARGV[0] AND s.relid = TG_RELID;
        IF NOT FOUND THEN
            -- remove_source() is running in this transaction, or the trigger is not on the source's table
            RETURN NULL;
        END IF;
    END IF;
    -- Held until this transaction ends: a backfill step of this source (which takes its lock table
    -- IN SHARE MODE) waits for this transaction, then reads the table as it committed it. Without
    -- it, a step reading the table before this commit would register the old text over what this
    -- statement registers, or a row this statement deletes. Only the owner of pgingest can take
    -- this lock in a mode that conflicts (_source_lock_table).
    -- (It waits at most for one backfill step, ~0.1 s: never with the application's lock_timeout,
    -- which would fail its statement because of pgingest; set to 0 and put back only when it is
    -- not 0 already, the default.)
    v_lock_timeout := current_setting('lock_timeout');
    IF v_lock_timeout <> '0' THEN
        PERFORM set_config('lock_timeout', '0', TRUE);
    END IF;
%3$s
    IF v_lock_timeout <> '0' THEN
        PERFORM set_config('lock_timeout', v_lock_timeout, TRUE);
    END IF;
    <<capture>>
    LOOP
    BEGIN
        v_n := 0;
        IF TG_OP = 'TRUNCATE' THEN
            WITH d AS (DELETE FROM pgingest.source_rows AS r WHERE r.source_id = v_id RETURNING r.doc_id)
            SELECT array_agg(d.doc_id) INTO v_gone FROM d;
        ELSIF v_sql IS NOT NULL THEN
            IF TG_OP = 'INSERT' THEN
                EXECUTE v_sql ->> 'insert' INTO v_ids, v_hashes;
            ELSIF TG_OP = 'UPDATE' THEN
                EXECUTE v_sql ->> 'update' INTO v_ids, v_hashes;
                EXECUTE v_sql ->> 'moved' INTO v_gone;
            ELSE
                EXECUTE v_sql ->> 'delete' INTO v_gone;
            END IF;
            PERFORM pgingest._enqueue_versions(v_ids, v_hashes);
%2$s        END IF;
%4$s        IF v_gone IS NOT NULL THEN
            PERFORM pgingest._forget_docs(v_gone);
        END IF;
    EXCEPTION
        WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN
            RAISE;
        WHEN undefined_table THEN
            -- This body was loaded while a model was being retired (its trigger fired, then waited
            -- for source_rows until retire_model committed), and it names the queue that was
            -- dropped. Once more through the stored statements and the current _enqueue_versions,
            -- which see the models as they are now.
            IF v_sql IS NULL THEN
                SELECT s.statements INTO v_sql FROM pgingest.sources AS s WHERE s.id = v_id;
                IF FOUND THEN
                    CONTINUE capture;
                END IF;
            END IF;
            PERFORM pgingest._capture_failed(TG_ARGV[0], TG_OP, SQLSTATE, SQLERRM);
        WHEN OTHERS THEN
            PERFORM pgingest._capture_failed(TG_ARGV[0], TG_OP, SQLSTATE, SQLERRM);
    END;
    EXIT capture;
    END LOOP;
    RETURN NULL;
END;
$body$,
            CASE WHEN v_case = '' THEN 'NULL' ELSE 'CASE TG_ARGV[0]' || v_case || ' END' END,
            v_branches,
            v_locks
            || CASE WHEN v_locks = '' THEN E'        ' ELSE E'        ELSE\n            ' END
            || E'EXECUTE format(''LOCK TABLE pgingest.%I IN ROW EXCLUSIVE MODE'', ''source_lock_'' || v_id);\n'
            || CASE WHEN v_locks = '' THEN '' ELSE E'        END IF;\n' END,
            pgingest._source_wake_sql()
        )
    );
    SELECT string_agg(s.name, ', ' ORDER BY s.id) INTO v_names FROM pgingest.sources AS s WHERE s.id <> 0;
    EXECUTE format(
        'COMMENT ON FUNCTION pgingest._source_capture() IS %L',
        format('Statement-level AFTER INSERT/UPDATE/DELETE/TRUNCATE trigger of an attached table (argument: the '
               'source name): keeps pgingest.source_rows, queues changed rows for every live model, forgets '
               'deleted ones. Never fails the application''s statement: a failure becomes a capture_failed dead '
               'letter. Compiled by pgingest._compile_source_capture() for the sources (%s) and live models (%s).',
               coalesce(v_names, 'none'),
               coalesce((SELECT string_agg(m.name, ', ' ORDER BY m.name) FROM pgingest.models AS m
                         WHERE m.state <> 'retired'), 'none'))
    );
END;
$$;

COMMENT ON FUNCTION pgingest._compile_source_capture_now() IS
'(Re)compiles pgingest._source_capture, the capture trigger of attached tables: a branch of static statements '
'per source that registers its rows and queues them for every live model (internal; called by '
'_compile_source_capture, and by _detach_source, which removing a source never refuses).';

-- The roles, other than superusers and those that can act as the owner of pgingest, that may
-- create objects in the vector extension's schema (PUBLIC alone when PUBLIC may), quoted; NULL
-- when none. The compiled statements and the routines pin search_path = pg_catalog, <that
-- schema>, pg_temp: a function created there with more exact argument types than pg_catalog's
-- (array_to_string, format, ...) would be what the capture, the backfill and the read path call,
-- as the owner of pgingest. The installer refuses such a schema (installer/vector_schema_check.sql,
-- the same rule) unless told --allow-public-create; this checks it again later (review
-- 2026-12-07): a GRANT CREATE ON SCHEMA public TO someone after the install.
CREATE OR REPLACE FUNCTION pgingest._vector_schema_creators()
RETURNS text[]
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_schema oid := (SELECT e.extnamespace FROM pg_catalog.pg_extension AS e WHERE e.extname = 'vector');
    v_owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pgingest');
BEGIN
    IF v_schema IS NULL THEN
        RETURN NULL;
    ELSIF has_schema_privilege('public', v_schema, 'CREATE') THEN
        RETURN ARRAY['PUBLIC'];
    END IF;
    RETURN (
        SELECT array_agg(quote_ident(r.rolname) ORDER BY r.rolname)
        FROM pg_catalog.pg_roles AS r
        WHERE NOT r.rolsuper
          AND r.rolname !~ '^pg_'
          AND NOT pg_has_role(r.oid, v_owner, 'MEMBER')
          AND has_schema_privilege(r.oid, v_schema, 'CREATE')
    );
END;
$$;

COMMENT ON FUNCTION pgingest._vector_schema_creators() IS
'The roles (other than superusers and the owner of pgingest''s) that may create objects in the vector '
'extension''s schema, on the routines'' search_path; NULL when none (internal).';

-- Whether the last install was made with --allow-public-create: the installer refused to go on
-- otherwise while such roles existed (installer/vector_schema_check.sql ran before this file in
-- the same transaction), so roles that may create there now mean it was. Generated by every
-- install.
DO $$
BEGIN
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION pgingest._allow_public_create() RETURNS boolean LANGUAGE sql IMMUTABLE '
        'SET search_path FROM CURRENT RETURN %s',
        CASE WHEN pgingest._vector_schema_creators() IS NOT NULL THEN 'TRUE' ELSE 'FALSE' END
    );
END;
$$;

COMMENT ON FUNCTION pgingest._allow_public_create() IS
'Whether the last install went on while other roles could create objects in the vector extension''s schema '
'(pgingest install --allow-public-create) (internal; generated by every install).';

-- Why the capture of attached tables must not be compiled (NULL when it may): roles that may
-- create objects in the vector extension's schema since an install not made with
-- --allow-public-create. Not checked during an install (which holds the installer's lock: it has
-- checked the schema itself).
CREATE OR REPLACE FUNCTION pgingest._vector_schema_refusal()
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_who text[] := pgingest._vector_schema_creators();
BEGIN
    IF v_who IS NULL OR pgingest._allow_public_create() OR EXISTS (
        -- the installer's pg_advisory_xact_lock(install.INSTALL_LOCK_KEY), held by this session
        SELECT 1 FROM pg_catalog.pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
          AND l.classid = 1885825390 AND l.objid = 1734701940 AND l.objsubid = 1
    ) THEN
        RETURN NULL;
    END IF;
    RETURN format(
        '%s may create objects in schema %s, where the vector extension lives and which pgingest''s routines have '
        'on their search_path',
        array_to_string(v_who[1:20], ', ') || CASE WHEN cardinality(v_who) > 20 THEN ', ...' ELSE '' END,
        (SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension AS e
         INNER JOIN pg_catalog.pg_namespace AS n ON e.extnamespace = n.oid WHERE e.extname = 'vector')
    );
END;
$$;

COMMENT ON FUNCTION pgingest._vector_schema_refusal() IS
'Why attached tables'' capture must not be compiled now (roles may create objects in the vector extension''s '
'schema, and the install was not made with --allow-public-create), or NULL (internal).';

-- The capture's compilation, refused while the vector extension's schema is writable by others
-- (add_source, register_model, retire_model: _vector_schema_refusal) once a source is attached.
CREATE OR REPLACE FUNCTION pgingest._compile_source_capture()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_why text;
BEGIN
    IF EXISTS (SELECT 1 FROM pgingest.sources AS s WHERE s.id <> 0) THEN
        v_why := pgingest._vector_schema_refusal();
        IF v_why IS NOT NULL THEN
            RAISE EXCEPTION 'pgingest: %', v_why
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'A function or operator created there can run inside the capture, backfill and read '
                               'path of attached tables with the rights of the owner of pgingest.',
                      HINT = 'A superuser or the schema''s owner revokes CREATE on it (REVOKE CREATE ON SCHEMA ... FROM '
                             'PUBLIC, and from the roles named); or, not advised, pgingest install '
                             '--allow-public-create records that it may.';
        END IF;
    END IF;
    PERFORM pgingest._compile_source_capture_now();
END;
$$;

COMMENT ON FUNCTION pgingest._compile_source_capture() IS
'(Re)compiles pgingest._source_capture (_compile_source_capture_now), refused while roles other than the owner '
'of pgingest may create objects in the vector extension''s schema and a source is attached, unless the install '
'was made with --allow-public-create (internal; called by _compile_enqueue and _attach_source).';

SELECT pgingest._compile_source_capture();

-- Before the compiled captures' statement form (issue 19), _capture_queue_sql generated a queue CTE
-- per model and a SELECT wake-up check; nothing calls it any more (dropped here, after the
-- _compile_source_capture above replaced the one of an earlier install that called it).
DROP FUNCTION IF EXISTS pgingest._capture_queue_sql(text, text, text);

-- The column of a table, or an error naming it.
CREATE OR REPLACE FUNCTION pgingest._source_column(p_table regclass, p_column text, p_role text)
RETURNS regtype
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_type regtype;
BEGIN
    SELECT a.atttypid::regtype INTO v_type FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = p_table AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: table % has no column % (the %)', p_table, quote_ident(p_column), p_role
            USING ERRCODE = 'undefined_column';
    END IF;
    RETURN v_type;
END;
$$;

COMMENT ON FUNCTION pgingest._source_column(regclass, text, text) IS
'The type of a table''s column, or 42703 naming the column and its role in the mapping (internal).';

CREATE OR REPLACE FUNCTION pgingest._is_text_type(p_type regtype)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_t record;
    v_oid oid := p_type;
BEGIN
    LOOP  -- a domain: its base type
        SELECT t.typtype, t.typbasetype, t.typcategory INTO v_t FROM pg_catalog.pg_type AS t WHERE t.oid = v_oid;
        EXIT WHEN v_t.typtype IS DISTINCT FROM 'd';
        v_oid := v_t.typbasetype;
    END LOOP;
    RETURN v_t.typcategory = 'S' OR v_oid IN ('json'::regtype, 'jsonb'::regtype, 'xml'::regtype);
END;
$$;

COMMENT ON FUNCTION pgingest._is_text_type(regtype) IS
'Whether a column of this type is text to embed: string types (text, varchar, char, name, citext), json, '
'jsonb, xml, and domains over them.';

-- The signatures before raw sources (content, uri, mime: migrations/0022_raw_sources.sql).
DROP FUNCTION IF EXISTS pgingest._attach_source(text, regclass, text, text, text, text[], boolean, name);
DROP FUNCTION IF EXISTS pgingest.add_source(text, regclass, text, text, text, text[], boolean);

-- The part of add_source() that writes pgingest's own tables, as their owner.
CREATE OR REPLACE FUNCTION pgingest._attach_source(
    p_name text,
    p_table regclass,
    p_body text,
    p_template text,
    p_title text,
    p_metadata text[],
    p_backfill boolean,
    p_granted_to name,
    p_content text DEFAULT NULL,
    p_uri text DEFAULT NULL,
    p_mime text DEFAULT NULL
)
RETURNS pgingest.sources
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_s pgingest.sources;
    v_key text[];
    v_types text[];
    v_type regtype;
    v_col text;
    v_why text;
    v_immediate boolean;
    v_caller name;
BEGIN
    -- Only the table's owner could have created these: they prove the caller owns it.
    IF (SELECT count(*) FROM pg_catalog.pg_trigger AS g
        WHERE g.tgrelid = p_table AND g.tgfoid = 'pgingest._source_capture()'::regprocedure
          AND g.tgname IN (format('pgingest_%s_capture_insert', p_name), format('pgingest_%s_capture_update', p_name),
                           format('pgingest_%s_capture_delete', p_name), format('pgingest_%s_capture_truncate', p_name)))
       <> 4 THEN
        RAISE EXCEPTION 'pgingest: call pgingest.add_source(), not pgingest._attach_source()'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- ... but a role with the TRIGGER privilege alone can create them too (review 2026-12-07): the
    -- session's role must own the table (or be a member of its owner). Here current_user is
    -- pgingest's owner: the session's role is the one it SET ROLE to (the setting role, which a
    -- SECURITY DEFINER function cannot change), else its user (session_user).
    v_caller := CASE WHEN current_setting('role') = 'none' THEN session_user ELSE current_setting('role') END;
    IF NOT pg_has_role(v_caller, (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = p_table), 'MEMBER')
        THEN
        RAISE EXCEPTION 'pgingest: only the owner of % may attach it (% does not own it)', p_table, v_caller
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The table''s owner (or a member of that role) runs pgingest.add_source().';
    END IF;

    -- The key: the primary key, else the narrowest unique index over NOT NULL columns.
    SELECT array_agg(a.attname::text ORDER BY k.n), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.n),
           bool_and(ix.indimmediate)
    INTO v_key, v_types, v_immediate
    FROM (
        SELECT i.indkey, i.indisprimary, i.indimmediate
        FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = p_table AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
          AND (i.indisprimary OR NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid = p_table AND a.attnum = ANY (i.indkey::smallint[]) AND NOT a.attnotnull))
        ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid
        LIMIT 1
    ) AS ix
    CROSS JOIN LATERAL unnest(ix.indkey::smallint[]) WITH ORDINALITY AS k (attnum, n)
    INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = p_table AND a.attnum = k.attnum;
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'pgingest: table % has no primary key (nor a unique index over NOT NULL columns)', p_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'pgingest keys its chunks and vectors by the row''s key: add a primary key.';
    END IF;
    -- A deferrable key may hold a duplicate until its transaction commits, and the capture, which
    -- registers rows by key statement by statement, then lost a row (review 2026-12-07).
    IF NOT v_immediate THEN
        RAISE EXCEPTION 'pgingest: the key (%) of table % is deferrable', array_to_string(v_key, ', '), p_table
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'A source''s key must be unique after every statement: drop the constraint and add it '
                         'again NOT DEFERRABLE.';
    END IF;
    -- Each key column reads back from the registry's jsonb by a cast to its type (key_match,
    -- key_after): an array, a composite or a range is nested jsonb that does not (review
    -- 2026-12-07: an array key broke the read path of the whole queue, 'malformed array literal').
    SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) INTO v_col, v_why
    FROM unnest(v_key) WITH ORDINALITY AS k (col, ord)
    INNER JOIN pg_catalog.pg_attribute AS a ON k.col = a.attname AND a.attrelid = p_table
    INNER JOIN pg_catalog.pg_type AS d ON a.atttypid = d.oid
    INNER JOIN pg_catalog.pg_type AS t ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END
    WHERE t.typtype IN ('c', 'r', 'm', 'p') OR t.typcategory = 'A'
    ORDER BY k.ord
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgingest: the key column % of % is of type %, which a source cannot key on', quote_ident(v_col),
            p_table, v_why
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'A source''s key is one or more scalar columns (numbers, text, uuid, timestamps, ...), not an '
                         'array, composite or range: add a scalar primary key (an identity column, say).';
    END IF;
    IF cardinality(v_key) > 8 THEN
        RAISE EXCEPTION 'pgingest: the key of table % has % columns; 8 at most', p_table, cardinality(v_key)
            USING ERRCODE = 'feature_not_supported';
    END IF;

    -- The mapping.
    IF num_nonnulls(p_body, p_template, p_content, p_uri) <> 1 THEN
        RAISE EXCEPTION 'pgingest: give either body => a column or template => a text with {column} placeholders'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Or, for raw documents, content => a bytea column or uri => a text column of URIs.';
    END IF;
    IF p_mime IS NOT NULL AND p_content IS NULL AND p_uri IS NULL THEN
        RAISE EXCEPTION 'pgingest: mime => names the MIME type of raw documents: give content => or uri => too'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_content IS NOT NULL THEN
        v_type := pgingest._source_column(p_table, p_content, 'content');
        IF v_type <> 'bytea'::regtype THEN
            RAISE EXCEPTION 'pgingest: the content column % of % is of type %, not bytea', quote_ident(p_content),
                p_table, v_type
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'content => maps the bytes of documents; a text column is body =>.';
        END IF;
    END IF;
    IF p_uri IS NOT NULL THEN
        v_type := pgingest._source_column(p_table, p_uri, 'uri');
        IF NOT pgingest._is_text_type(v_type) OR v_type IN ('json'::regtype, 'jsonb'::regtype, 'xml'::regtype) THEN
            RAISE EXCEPTION 'pgingest: the URI column % of % is of type %, not text', quote_ident(p_uri), p_table,
                v_type
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END IF;
    IF p_mime IS NOT NULL THEN
        v_type := pgingest._source_column(p_table, p_mime, 'mime');
        IF NOT pgingest._is_text_type(v_type) THEN
            RAISE EXCEPTION 'pgingest: the MIME column % of % is of type %, not text', quote_ident(p_mime), p_table,
                v_type
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END IF;
    IF p_body IS NOT NULL THEN
        v_type := pgingest._source_column(p_table, p_body, 'body');
        IF NOT pgingest._is_text_type(v_type) THEN
            RAISE EXCEPTION 'pgingest: the body column % of % is of type %, which is not text to embed',
                quote_ident(p_body), p_table, v_type
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Map a text column (text, varchar, json, ...), or a template such as ''{title} {body}''.';
        END IF;
    ELSIF p_template IS NOT NULL THEN
        IF cardinality(pgingest._template_columns(p_template)) = 0 THEN
            RAISE EXCEPTION 'pgingest: the template names no column (placeholders are {column})'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR v_col IN
            SELECT unnest(pgingest._template_columns(p_template))
        LOOP
            v_type := pgingest._source_column(p_table, v_col, 'template');
            IF v_type = 'bytea'::regtype THEN
                RAISE EXCEPTION 'pgingest: the template column % of % is bytea, which is not text', quote_ident(v_col),
                    p_table
                    USING ERRCODE = 'datatype_mismatch';
            END IF;
        END LOOP;
    END IF;
    IF p_title IS NOT NULL THEN
        v_type := pgingest._source_column(p_table, p_title, 'title');
        IF NOT pgingest._is_text_type(v_type) THEN
            RAISE EXCEPTION 'pgingest: the title column % of % is of type %, not text', quote_ident(p_title), p_table,
                v_type
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END IF;
    FOREACH v_col IN ARRAY coalesce(p_metadata, '{}') LOOP
        PERFORM pgingest._source_column(p_table, v_col, 'metadata');
    END LOOP;
    IF cardinality(p_metadata) <> (SELECT count(DISTINCT m) FROM unnest(p_metadata) AS m) THEN
        RAISE EXCEPTION 'pgingest: a metadata column is named twice' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_why := pgingest._source_columns_refusal(
        p_table, v_key,
        ARRAY[p_body, p_content, p_uri, p_mime, p_title] || pgingest._template_columns(p_template)
        || coalesce(p_metadata, '{}')
    );
    IF v_why IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: %', v_why
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'pgingest reads these columns as its owner, and a type of your own (its casts, its '
                         'domain''s checks) would run your code as that role: map a column of a built-in type '
                         'instead (text with a CHECK constraint, or a generated column of the value as text).';
    END IF;

    INSERT INTO pgingest.sources AS s (
        name, relid, table_name, key_columns, key_types, body_column, template, title_column, metadata_columns,
        backfill_started_at, backfill_completed_at, select_granted_to, content_column, uri_column, mime_column
    ) VALUES (
        p_name, p_table, p_table::text, v_key, v_types, p_body, p_template, p_title, coalesce(p_metadata, '{}'),
        CASE WHEN p_backfill THEN now() END, CASE WHEN NOT p_backfill THEN now() END, p_granted_to,
        p_content, p_uri, p_mime
    )
    RETURNING * INTO v_s;
    UPDATE pgingest.sources AS s SET statements = pgingest._source_statements(v_s) WHERE s.id = v_s.id
    RETURNING * INTO v_s;
    PERFORM pgingest._source_lock_table(v_s.id);
    PERFORM pgingest._compile_source_capture();
    PERFORM pg_notify('pgingest', '');
    RETURN v_s;
END;
$$;

COMMENT ON FUNCTION pgingest._attach_source(
    text, regclass, text, text, text, text[], boolean, name, text, text, text
) IS
'add_source()''s own writes, as the owner of pgingest: checks the mapping and records the source '
'(internal: refuses a table on which add_source() did not create the capture triggers).';

CREATE OR REPLACE FUNCTION pgingest.add_source(
    name text,
    source_table regclass,
    body text DEFAULT NULL,
    template text DEFAULT NULL,
    title text DEFAULT NULL,
    metadata text[] DEFAULT '{}',
    backfill boolean DEFAULT TRUE,
    content text DEFAULT NULL,
    uri text DEFAULT NULL,
    mime text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_c record;
    v_owner name;
    v_s pgingest.sources;
    v_cols text;
    v_granted name;
    v_op text;
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,29}$' THEN
        RAISE EXCEPTION 'pgingest: invalid source name %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A source name is 1 to 30 lower-case letters, digits or _, starting with a letter.';
    END IF;
    IF EXISTS (SELECT 1 FROM pgingest.sources AS s WHERE s.name = add_source.name) THEN
        RAISE EXCEPTION 'pgingest: source % already exists', quote_literal(name)
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pick another name, or pgingest.remove_source() the existing one first.';
    END IF;
    SELECT c.relkind, c.relpersistence, c.relowner, c.relispartition, n.nspname,
           c.relrowsecurity OR c.relforcerowsecurity AS rls, n.oid AS nsp INTO v_c
    FROM pg_catalog.pg_class AS c INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = source_table;
    IF v_c.relkind IN ('v', 'm') THEN
        RAISE EXCEPTION 'pgingest: % is a view; a source is a table', source_table
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Attach the table the view reads, or keep the view and copy its rows into pgingest.documents.';
    ELSIF v_c.relkind = 'p' OR v_c.relispartition THEN
        -- A statement trigger fires for the table a statement names: on a partition, not for the
        -- rows written through its parent; on the parent, not for those written to a partition
        -- directly (review 2026-12-07: attaching each partition lost every write through the parent).
        RAISE EXCEPTION 'pgingest: % is %, which a source cannot be', source_table,
            CASE WHEN v_c.relkind = 'p' THEN 'a partitioned table' ELSE 'a partition' END
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Statement triggers cannot capture the writes to a partitioned table: write its rows '
                         '(or the text to embed) to a table that is not partitioned, and attach that one.';
    ELSIF v_c.relkind = 'f' THEN
        RAISE EXCEPTION 'pgingest: % is a foreign table: its changes cannot be captured', source_table
            USING ERRCODE = 'feature_not_supported';
    ELSIF v_c.relkind IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION 'pgingest: % is not a table', source_table USING ERRCODE = 'wrong_object_type';
    ELSIF v_c.relpersistence = 't' THEN
        RAISE EXCEPTION 'pgingest: % is a temporary table', source_table USING ERRCODE = 'feature_not_supported';
    ELSIF v_c.nspname IN ('pgingest', 'pgmq') OR v_c.nspname LIKE 'pg\_%' OR v_c.nspname = 'information_schema' THEN
        RAISE EXCEPTION 'pgingest: % belongs to schema %, which is not an application''s', source_table, v_c.nspname
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'pgingest.documents is the built-in source ''documents''.';
    END IF;
    -- (Not pgingest._source_rls: add_source runs as the caller, who may run no internal routine.)
    IF v_c.rls THEN
        RAISE EXCEPTION 'pgingest: row-level security is enabled on %; a source cannot be such a table', source_table
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'pgingest reads the table as its owner, and the table''s policies (functions of yours) '
                         'would run as that role: attach a table without row-level security (ALTER TABLE ... '
                         'DISABLE ROW LEVEL SECURITY), or copy the rows to embed into one.';
    END IF;
    IF EXISTS (SELECT 1 FROM pgingest.sources AS s WHERE s.relid = source_table) THEN
        RAISE EXCEPTION 'pgingest: % is already attached as source %', source_table,
            (SELECT quote_literal(s.name) FROM pgingest.sources AS s WHERE s.relid = source_table)
            USING ERRCODE = 'duplicate_object';
    END IF;
    IF NOT pg_has_role(current_user, v_c.relowner, 'MEMBER') THEN
        RAISE EXCEPTION 'pgingest: only the owner of % may attach it (% does not own it)', source_table, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('The owner, %s, runs pgingest.add_source().', pg_get_userbyid(v_c.relowner));
    END IF;

    -- The owner of pgingest reads the table (backfill, worker read path): add_source() grants it
    -- SELECT on the mapped columns below, but it must be able to use the table's schema too, which
    -- only the schema's owner can grant: refused here, not by 'permission denied for schema' in
    -- the backfill later (review 2026-12-07).
    v_owner := (SELECT pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pgingest');
    IF NOT has_schema_privilege(v_owner, v_c.nsp, 'USAGE') THEN
        RAISE EXCEPTION 'pgingest: the owner of pgingest, %, may not use schema % (of table %)', v_owner,
            quote_ident(v_c.nspname), source_table
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('pgingest reads the mapped columns as its owner: the schema''s owner runs GRANT USAGE '
                                'ON SCHEMA %I TO %I;', v_c.nspname, v_owner);
    END IF;

    -- Creating the triggers locks the table against writes until this transaction ends: every row
    -- is then either read by the backfill or captured by the triggers.
    FOREACH v_op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION '
            'pgingest._source_capture(%L)',
            format('pgingest_%s_capture_%s', name, v_op), upper(v_op), source_table,
            CASE v_op WHEN 'insert' THEN 'NEW TABLE AS new_rows' WHEN 'delete' THEN 'OLD TABLE AS old_rows'
                      ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END,
            name
        );
    END LOOP;
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION '
                   'pgingest._source_capture(%L)', format('pgingest_%s_capture_truncate', name), source_table, name);

    -- The owner of pgingest reads the mapped columns (backfill, worker read path) and nothing else.
    IF NOT pg_has_role(v_owner, v_c.relowner, 'MEMBER')
       AND NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_owner) THEN
        SELECT string_agg(DISTINCT quote_ident(c), ', ') INTO v_cols
        FROM unnest(
            ARRAY[body, title, content, uri, mime] || coalesce(metadata, '{}')
            || pgingest._template_columns(template)
            || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index AS i
                     INNER JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                     WHERE i.indrelid = source_table AND i.indisunique)
        ) AS c
        WHERE c IS NOT NULL
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                      WHERE a.attrelid = source_table AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped);
        IF v_cols IS NOT NULL THEN
            EXECUTE format('GRANT SELECT (%s) ON %s TO %I', v_cols, source_table, v_owner);
            v_granted := v_owner;
        END IF;
    END IF;

    v_s := pgingest._attach_source(
        name, source_table, body, template, title, metadata, backfill, v_granted, content, uri, mime
    );
    RAISE NOTICE 'pgingest: source % attached to % (key: %); %', name, source_table,
        array_to_string(v_s.key_columns, ', '),
        CASE WHEN backfill THEN 'its rows are queued by the workers in paced batches (pgingest status)'
             ELSE 'existing rows are not queued (backfill => false)' END;
    RETURN (SELECT greatest(c.reltuples, 0)::bigint FROM pg_catalog.pg_class AS c WHERE c.oid = source_table);
END;
$$;

COMMENT ON FUNCTION pgingest.add_source(text, regclass, text, text, text, text[], boolean, text, text, text) IS
'Attaches an application table, unchanged, as a source: key = its primary key (any types, composite too); '
'body => a column or template => ''{title}\n{body}'' (columns between braces), or raw documents: content => a '
'bytea column or uri => a text column of URIs (file://, https://, s3://, fetched by the worker within '
'pgingest.raw_allowlist), mime => a column overriding type detection; title => a column; metadata '
'=> columns exposed to search filters. Creates statement-level capture triggers on it, grants the owner of '
'pgingest SELECT on the mapped and key columns only, and queues the rows it holds as a paced backfill '
'(backfill => false: only later changes). The caller must own the table. Returns the table''s estimated rows.';

CREATE OR REPLACE FUNCTION pgingest._detach_source(p_name text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_s pgingest.sources;
    v_ids bigint[];
    v_m record;
BEGIN
    SELECT * INTO v_s FROM pgingest.sources AS s WHERE s.name = p_name FOR UPDATE;
    IF NOT FOUND OR v_s.id = 0 THEN
        RAISE EXCEPTION 'pgingest: no source %', coalesce(quote_literal(p_name), 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = CASE WHEN v_s.id = 0 THEN 'documents is built in.' ELSE 'pgingest source list' END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger AS g
               WHERE g.tgrelid = v_s.relid AND g.tgfoid = 'pgingest._source_capture()'::regprocedure) THEN
        RAISE EXCEPTION 'pgingest: call pgingest.remove_source(), not pgingest._detach_source()'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    WITH d AS (DELETE FROM pgingest.source_rows AS r WHERE r.source_id = v_s.id RETURNING r.doc_id)
    SELECT coalesce(array_agg(d.doc_id), '{}') INTO v_ids FROM d;
    PERFORM pgingest._forget_docs(v_ids);
    -- Its queued messages go too (they would be acknowledged as stale anyway).
    FOR v_m IN SELECT m.queue_name FROM pgingest.models AS m WHERE m.state <> 'retired' ORDER BY m.name LOOP
        EXECUTE format('DELETE FROM pgmq.%I AS q WHERE (q.message ->> ''doc_id'')::bigint = ANY ($1)',
                       'q_' || v_m.queue_name)
        USING v_ids;
    END LOOP;
    DELETE FROM pgingest.dead_letters AS l WHERE l.doc_id IS NULL AND l.payload ->> 'source' = v_s.name;
    DELETE FROM pgingest.sources AS s WHERE s.id = v_s.id;
    PERFORM pgingest._compile_source_capture_now();  -- removing a source is never refused
    EXECUTE format('DROP TABLE IF EXISTS pgingest.%I', 'source_lock_' || v_s.id);
    RETURN cardinality(v_ids);
END;
$$;

COMMENT ON FUNCTION pgingest._detach_source(text) IS
'remove_source()''s own writes, as the owner of pgingest (internal: refuses while the capture triggers exist).';

CREATE OR REPLACE FUNCTION pgingest.remove_source(name text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY INVOKER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_s pgingest.sources;
    v_exists boolean;
    v_op text;
    v_n bigint;
BEGIN
    SELECT * INTO v_s FROM pgingest.sources AS s WHERE s.name = remove_source.name;
    IF NOT FOUND OR v_s.id = 0 THEN
        RAISE EXCEPTION 'pgingest: no source %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object',
                  HINT = CASE WHEN v_s.id = 0 THEN 'documents is built in: it cannot be removed.'
                              ELSE 'pgingest source list' END;
    END IF;
    v_exists := EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = v_s.relid);
    IF v_exists THEN
        IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = v_s.relid),
                           'MEMBER') THEN
            RAISE EXCEPTION 'pgingest: only the owner of % may detach it', v_s.relid::regclass
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        FOREACH v_op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', format('pgingest_%s_capture_%s', v_s.name, v_op),
                           v_s.relid::regclass);
        END LOOP;
        IF v_s.select_granted_to IS NOT NULL THEN
            EXECUTE format('REVOKE SELECT ON %s FROM %I', v_s.relid::regclass, v_s.select_granted_to);
            -- (column grants are revoked by a table-level REVOKE too)
        END IF;
    END IF;
    v_n := pgingest._detach_source(v_s.name);
    RAISE NOTICE 'pgingest: source % removed: % rows'' chunks, vectors and queue state dropped; the table was not touched',
        v_s.name, v_n;
    RETURN v_n;
END;
$$;

COMMENT ON FUNCTION pgingest.remove_source(text) IS
'Detaches a source: drops its capture triggers, its chunks, vectors, state, dead letters and queued messages, '
'and the SELECT grant add_source() gave. Never touches the table or its rows. The caller must own the table '
'(unless it was dropped). Returns the number of rows forgotten.';

CREATE OR REPLACE FUNCTION pgingest.resync_source(name text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
BEGIN
    UPDATE pgingest.sources AS s
    SET backfill_cursor = NULL, backfill_rows = 0, backfill_started_at = now(), backfill_completed_at = NULL
    WHERE s.name = resync_source.name AND s.id <> 0;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgingest: no source %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM pg_notify('pgingest', '');
END;
$$;

COMMENT ON FUNCTION pgingest.resync_source(text) IS
'Walks a source''s table again (a paced backfill): rows whose mapped text differs from what pgingest recorded '
'are queued, the others cost a comparison. For after a capture_failed dead letter or a mapping fix.';

CREATE OR REPLACE FUNCTION pgingest.source_backfill_step_v1(
    p_batch integer DEFAULT 1000, p_max_queue integer DEFAULT 20000
)
RETURNS integer
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
    v_s pgingest.sources;
    v_m record;
    v_depth bigint;
    v_ids bigint[];
    v_hashes bytea[];
    v_n bigint;
    v_last jsonb;
    v_lock_timeout text := current_setting('lock_timeout');
    v_why text;
    v_table text;
BEGIN
    LOOP
        SELECT * INTO v_s FROM pgingest.sources AS s
        WHERE s.backfill_completed_at IS NULL AND s.id <> 0
        ORDER BY s.id
        LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
        v_why := pgingest._source_columns_refusal(
            v_s.relid, v_s.key_columns, pgingest._source_text_columns(v_s) || v_s.metadata_columns
        );
        IF v_why IS NOT NULL THEN  -- a column's type changed since add_source(): _source_type_refusal
            RAISE EXCEPTION 'pgingest: source %: %: not read', v_s.name, v_why
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Change the column back to a built-in type, or pgingest.remove_source() it.';
        END IF;
        IF pgingest._source_rls(v_s.relid) THEN  -- enabled since add_source() (row_security = off: never run)
            RAISE EXCEPTION 'pgingest: source %: row-level security is enabled on table %: not read', v_s.name,
                v_s.relid::regclass
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Its policies would run as the owner of pgingest: ALTER TABLE ... DISABLE ROW LEVEL '
                             'SECURITY (and NO FORCE ROW LEVEL SECURITY), or pgingest.remove_source() it.';
        END IF;
        v_table := (
            SELECT format('%I.%I', n.nspname, c.relname)
            FROM pg_catalog.pg_class AS c INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
            WHERE c.oid = v_s.relid
        );
        IF v_table IS NULL THEN  -- the table was dropped: no row is left to backfill
            UPDATE pgingest.sources AS s SET backfill_completed_at = now() WHERE s.id = v_s.id;
            CONTINUE;
        ELSIF v_table IS DISTINCT FROM v_s.statements ->> 'table' THEN
            -- renamed (or moved) since its statements were compiled: compiled again, under its name now
            UPDATE pgingest.sources AS s SET statements = pgingest._source_statements(s) WHERE s.id = v_s.id
            RETURNING * INTO v_s;
        END IF;
        -- Paced on the queues: the application's own changes keep their freshness behind at most
        -- p_max_queue backfill messages.
        IF p_max_queue IS NOT NULL THEN
            FOR v_m IN SELECT m.queue_name FROM pgingest.models AS m WHERE m.state <> 'retired' ORDER BY m.name LOOP
                EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM pgmq.%I LIMIT $1) AS q', 'q_' || v_m.queue_name)
                INTO v_depth USING p_max_queue;
                IF v_depth >= p_max_queue THEN
                    RETURN -1;
                END IF;
            END LOOP;
        END IF;
        -- Wait (at most 1 s, then try again later) for the application's transactions that wrote this
        -- source to end, and hold new ones back until this step commits: the statements below then
        -- read the table as committed, and no capture interleaves with them (see _source_capture).
        -- SHARE conflicts with the captures' ROW EXCLUSIVE on the source's lock table, which no
        -- other role may lock in a mode that conflicts with either (_source_lock_table).
        IF to_regclass(format('pgingest.%I', 'source_lock_' || v_s.id)) IS NULL THEN
            PERFORM pgingest._source_lock_table(v_s.id);
        END IF;
        BEGIN
            PERFORM set_config('lock_timeout', '1s', TRUE);
            EXECUTE format('LOCK TABLE pgingest.%I IN SHARE MODE', 'source_lock_' || v_s.id);
            PERFORM set_config('lock_timeout', v_lock_timeout, TRUE);
        EXCEPTION WHEN lock_not_available THEN
            RETURN -1;
        END;
        IF v_s.backfill_cursor IS NULL THEN
            EXECUTE v_s.statements ->> 'backfill_first' INTO v_ids, v_hashes, v_n, v_last USING NULL::jsonb, p_batch;
        ELSE
            EXECUTE v_s.statements ->> 'backfill_next' INTO v_ids, v_hashes, v_n, v_last
            USING v_s.backfill_cursor, p_batch;
        END IF;
        IF v_n = 0 THEN
            UPDATE pgingest.sources AS s SET backfill_completed_at = now() WHERE s.id = v_s.id;
            -- The next source's backfill, if any: 0 means none is left (review 2026-12-07: the first
            -- source done, the step said 0 and run_source_backfill() stopped with others left).
            CONTINUE;
        END IF;
        PERFORM pgingest._enqueue_versions(v_ids, v_hashes);
        UPDATE pgingest.sources AS s
        SET backfill_cursor = v_last, backfill_rows = s.backfill_rows + v_n
        WHERE s.id = v_s.id;
        RETURN v_n;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest.source_backfill_step_v1(integer, integer) IS
'Worker: registers the next p_batch rows (key order) of a source being backfilled and queues those new or '
'changed; -1 while a live model''s queue holds p_max_queue messages or more (pacing), 0 when no source '
'backfill is left (or another worker holds it).';

-- No SET clause here: a procedure with one cannot COMMIT. Every name is schema-qualified.
CREATE OR REPLACE PROCEDURE pgingest.run_source_backfill(p_batch integer DEFAULT 1000)
LANGUAGE plpgsql
AS $$
DECLARE
    v_n integer;
BEGIN
    LOOP
        v_n := pgingest.source_backfill_step_v1(p_batch, NULL);
        COMMIT;
        EXIT WHEN v_n = 0;
    END LOOP;
END;
$$;

COMMENT ON PROCEDURE pgingest.run_source_backfill (integer) IS
'Registers and queues every source''s pending backfill from psql without pacing, committing after each batch.';

-- The rows (among p_doc_ids) of a source that cannot be read become dead letters
-- (source_unreadable, for every live model that has not embedded their version) and a WARNING
-- names the source: the read path of text (_read_source_rows) and of raw documents
-- (raw_documents_v1, sql/016_raw.sql) leave them out and go on with the other sources.
CREATE OR REPLACE FUNCTION pgingest._source_unreadable(
    p_id integer, p_name text, p_key_columns text[], p_doc_ids bigint[], p_state text, p_message text
)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO pgingest.dead_letters AS l (
        doc_id, doc_key, model, content_hash, error_class, error_message, payload
    )
    SELECT
        r.doc_id,
        CASE WHEN cardinality(p_key_columns) = 1 THEN r.row_key ->> p_key_columns[1] ELSE r.row_key::text END,
        m.name,
        r.content_hash,
        'source_unreadable',
        left(format('source %s: its rows cannot be read (SQLSTATE %s: %s); fix the table, then '
                    'SELECT pgingest.requeue_dead_letters(p_error_class => ''source_unreadable'')',
                    p_name, p_state, p_message), 2000),
        jsonb_build_object('source', p_name, 'sqlstate', p_state)
    FROM pgingest.source_rows AS r
    CROSS JOIN pgingest.models AS m
    WHERE r.source_id = p_id AND r.doc_id = ANY (p_doc_ids) AND m.state <> 'retired'
      AND NOT EXISTS (
          SELECT 1 FROM pgingest.embedding_state AS e
          WHERE e.doc_id = r.doc_id AND e.model = m.name AND e.content_hash = r.content_hash
      )
    ON CONFLICT (doc_id, model) WHERE doc_id IS NOT NULL DO UPDATE
    SET content_hash = excluded.content_hash, error_class = excluded.error_class,
        error_message = excluded.error_message, payload = excluded.payload,
        attempts = l.attempts + 1, last_failed_at = now();
    RAISE WARNING 'pgingest: source %: its rows cannot be read: %', p_name, p_message
        USING HINT = 'Fix the table (or pgingest.remove_source() it), then SELECT '
                     'pgingest.requeue_dead_letters(p_error_class => ''source_unreadable'');';
END;
$$;

COMMENT ON FUNCTION pgingest._source_unreadable(integer, text, text[], bigint[], text, text) IS
'Dead-letters (source_unreadable, every live model without that version) the rows among these doc_ids of a '
'source that cannot be read, and warns (internal: _read_source_rows, raw_documents_v1).';

-- The worker's read path for the rows of attached tables. Each source is read on its own
-- (review 2026-12-07): a source whose table was dropped, or whose mapped column was renamed or
-- dropped, failed the read of the whole queue, every source's rows. Its rows now become dead
-- letters (source_unreadable, for every live model that has not embedded their version; a
-- WARNING names the source): their messages are acknowledged as stale, and
-- requeue_dead_letters(p_error_class => 'source_unreadable') puts them back once the table is
-- fixed: nothing is lost, and nothing is retried forever. (Leaving them queued would have the
-- worker read them again and again, and a message past its attempts would be dead-lettered
-- anyway, as attempts_exhausted.) The transient errors (serialization, deadlock, lock timeout,
-- cancel) fail the read as before. A renamed table is read under its new name (the statement is
-- compiled again for this call when statements ->> 'table' is not the table's name now).
CREATE OR REPLACE FUNCTION pgingest._read_source_rows(p_doc_ids bigint[])
RETURNS TABLE (doc_id bigint, doc_key text, title text, body text, content_hash bytea)
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
#variable_conflict use_column
DECLARE
    v_s record;
    v_sql text;
BEGIN
    FOR v_s IN
        SELECT s AS src, s.id, s.name, s.key_columns, s.statements ->> 'read' AS sql,
               s.statements ->> 'table' AS stored_table,
               (SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_catalog.pg_class AS c INNER JOIN pg_catalog.pg_namespace AS n ON c.relnamespace = n.oid
                WHERE c.oid = s.relid) AS table_now,
               coalesce(pgingest._source_columns_refusal(
                   s.relid, s.key_columns, pgingest._source_text_columns(s) || s.metadata_columns
               ), CASE WHEN pgingest._source_rls(s.relid)
                       THEN format('row-level security is enabled on table %s', s.relid::regclass) END) AS refusal
        FROM pgingest.sources AS s
        WHERE s.id IN (SELECT DISTINCT r.source_id FROM pgingest.source_rows AS r WHERE r.doc_id = ANY (p_doc_ids))
        ORDER BY s.id
    LOOP
        BEGIN
            IF v_s.table_now IS NULL THEN
                RAISE EXCEPTION 'the table of source % was dropped', v_s.name USING ERRCODE = 'undefined_table';
            ELSIF v_s.refusal IS NOT NULL THEN  -- a column's type changed since add_source(): _source_type_refusal
                RAISE EXCEPTION '%: not read', v_s.refusal USING ERRCODE = 'insufficient_privilege';
            END IF;
            v_sql := v_s.sql;
            IF v_s.stored_table IS DISTINCT FROM v_s.table_now THEN  -- renamed (or moved) since compiled
                v_sql := pgingest._source_statements(v_s.src) ->> 'read';
            END IF;
            RETURN QUERY EXECUTE v_sql USING p_doc_ids;
        EXCEPTION
            WHEN serialization_failure OR deadlock_detected OR lock_not_available OR query_canceled THEN
                RAISE;
            WHEN OTHERS THEN
                PERFORM pgingest._source_unreadable(v_s.id, v_s.name, v_s.key_columns, p_doc_ids, SQLSTATE, SQLERRM);
        END;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest._read_source_rows(bigint[]) IS
'The current title, text and content hash of rows of attached tables, by doc_id; the rows of a source that '
'cannot be read become source_unreadable dead letters (internal: read_batch_v1).';

-- Every document of every source, with its key in the form an application joins back on. Search,
-- status and the worker API read this; the promoted filter columns (register_filter) are columns
-- of it: a typed column of pgingest.documents, an indexed expression over source_rows.metadata.
CREATE OR REPLACE FUNCTION pgingest._refresh_source_documents_view()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_f record;
    v_doc_cols text := '';
    v_src_cols text := '';
    v_expr text;
BEGIN
    -- In the order the columns were added to pgingest.documents (filters are never dropped): the
    -- view is replaced in place, new columns at the end, so views over it (model_status) stay.
    FOR v_f IN
        SELECT f.key, f.type, f.column_name
        FROM pgingest.filters AS f
        LEFT JOIN pg_catalog.pg_attribute AS a
            ON a.attrelid = 'pgingest.documents'::regclass AND a.attname = f.column_name AND NOT a.attisdropped
        ORDER BY a.attnum, f.column_name
    LOOP
        v_expr := CASE v_f.type
            WHEN 'text[]' THEN format('pgingest._meta_try_text_array(r.metadata, %L)', v_f.key)
            ELSE format('(pgingest._meta_try(r.metadata, %L, %L)::%s)', v_f.key, v_f.type, v_f.type)
        END;
        v_doc_cols := v_doc_cols || format(', d.%I', v_f.column_name);
        v_src_cols := v_src_cols || format(', %s AS %I', v_expr, v_f.column_name);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgingest.source_rows USING %s ((%s))',
                       'source_rows_' || v_f.column_name || '_idx',
                       CASE WHEN v_f.type = 'text[]' THEN 'gin' ELSE 'btree' END,
                       replace(v_expr, 'r.metadata', 'metadata'));
    END LOOP;
    EXECUTE format(
        $sql$
        CREATE OR REPLACE VIEW pgingest.source_documents AS
        SELECT d.id AS doc_id, 0 AS source_id, 'documents'::text AS source, d.key AS doc_key,
               jsonb_build_object('key', d.key) AS source_key, d.title, d.metadata, d.content_hash%1$s
        FROM pgingest.documents AS d
        UNION ALL
        SELECT r.doc_id, r.source_id, s.name, CASE WHEN cardinality(s.key_columns) = 1
                                                   THEN r.row_key ->> s.key_columns[1] ELSE r.row_key::text END,
               r.row_key, r.title, r.metadata, r.content_hash%2$s
        FROM pgingest.source_rows AS r
        INNER JOIN pgingest.sources AS s ON s.id = r.source_id
        $sql$,
        v_doc_cols, v_src_cols
    );
    COMMENT ON VIEW pgingest.source_documents IS
    'Every document of every source: doc_id, source (documents for pgingest.documents), doc_key (text), '
    'source_key (the row''s key as jsonb: {"key": ...} for documents, the primary key columns of an attached '
    'table), title, metadata, content_hash and the promoted filter columns.';
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgingest_admin') THEN
        GRANT SELECT ON pgingest.source_documents TO pgingest_admin;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._refresh_source_documents_view() IS
'(Re)creates the view pgingest.source_documents with the promoted filter columns (internal).';

CREATE OR REPLACE FUNCTION pgingest._meta_try(p_metadata jsonb, p_key text, p_type text)
RETURNS text
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path FROM CURRENT
RETURN (
    SELECT
        CASE
            WHEN v IS NULL OR jsonb_typeof(v) = 'null' THEN NULL
            WHEN p_type IN ('integer', 'bigint') AND jsonb_typeof(v) = 'number' AND (v #>> '{}') ~ '^-?[0-9]{1,18}$'
                THEN v #>> '{}'
            WHEN p_type = 'numeric' AND jsonb_typeof(v) = 'number' THEN v #>> '{}'
            WHEN p_type = 'boolean' AND jsonb_typeof(v) = 'boolean' THEN v #>> '{}'
            WHEN p_type = 'text' AND jsonb_typeof(v) IN ('string', 'number', 'boolean') THEN v #>> '{}'
        END
    FROM (SELECT p_metadata -> p_key AS v) AS x
);

COMMENT ON FUNCTION pgingest._meta_try(jsonb, text, text) IS
'A promoted metadata key of a source row as text, NULL when absent or of another type (an application''s '
'row is never refused because of a filter).';

CREATE OR REPLACE FUNCTION pgingest._meta_try_text_array(p_metadata jsonb, p_key text)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path FROM CURRENT
RETURN (
    SELECT array_agg(x.v ORDER BY x.n)
    FROM jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(p_metadata -> p_key) = 'array' THEN p_metadata -> p_key ELSE '[]'::jsonb END
    ) WITH ORDINALITY AS x (v, n)
);

COMMENT ON FUNCTION pgingest._meta_try_text_array(jsonb, text) IS
'A promoted text[] metadata key of a source row (NULL when absent or not an array).';

SELECT pgingest._refresh_source_documents_view();

-- The registry's keys and the text of a row are written by its statements under pinned settings
-- (the SET clauses of _source_capture, source_backfill_step_v1 and _read_source_rows: TimeZone,
-- DateStyle, IntervalStyle, bytea_output, extra_float_digits, lc_monetary): the jsonb of a
-- timestamptz key, or a template's text of one, was the session's (a DELETE from a session in
-- another time zone missed the registry row; review 2026-12-07). The keys registered before, in
-- the sessions' settings, are rewritten once in the pinned form (parsed back by the key's type,
-- which reads any of those forms); two rows of one key (the duplicate that bug made) keep the
-- newest, the others are forgotten. Sources whose key types print the same in every session
-- (integers, text, uuid, dates...) cost nothing.
CREATE OR REPLACE FUNCTION pgingest._normalize_source_keys()
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
SET timezone = 'UTC'
SET datestyle = 'ISO, MDY'
SET intervalstyle = 'postgres'
SET bytea_output = 'hex'
SET extra_float_digits = 1
SET lc_monetary = 'C'
AS $$
DECLARE
    v_s record;
    v_expr text;
    v_dups bigint[];
    v_n bigint;
    v_total bigint := 0;
BEGIN
    FOR v_s IN
        SELECT s.id, s.key_columns, s.key_types
        FROM pgingest.sources AS s
        WHERE s.id <> 0
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = s.relid)
          AND EXISTS (
              SELECT 1
              FROM pg_catalog.pg_attribute AS a
              INNER JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
              WHERE a.attrelid = s.relid AND a.attname = ANY (s.key_columns) AND NOT a.attisdropped
                AND (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END)
                IN ('timestamptz'::regtype, 'bytea'::regtype, 'interval'::regtype, 'float4'::regtype,
                    'float8'::regtype, 'money'::regtype)
          )
        ORDER BY s.id
    LOOP
        v_expr := format('jsonb_build_object(%s)', (
            SELECT string_agg(format('%L, (r.row_key ->> %L)::%s', k.col, k.col, k.typ), ', ' ORDER BY k.n)
            FROM unnest(v_s.key_columns, v_s.key_types) WITH ORDINALITY AS k (col, typ, n)
        ));
        EXECUTE format(
            $sql$
            SELECT array_agg(x.doc_id) FROM (
                SELECT r.doc_id, row_number() OVER (PARTITION BY %1$s ORDER BY r.doc_id DESC) AS n
                FROM pgingest.source_rows AS r WHERE r.source_id = $1
            ) AS x WHERE x.n > 1
            $sql$, v_expr) INTO v_dups USING v_s.id;
        IF v_dups IS NOT NULL THEN
            DELETE FROM pgingest.source_rows AS r WHERE r.doc_id = ANY (v_dups);
            PERFORM pgingest._forget_docs(v_dups);
        END IF;
        EXECUTE format(
            'UPDATE pgingest.source_rows AS r SET row_key = %1$s WHERE r.source_id = $1 AND r.row_key <> %1$s',
            v_expr) USING v_s.id;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_total := v_total + v_n + coalesce(cardinality(v_dups), 0);
    END LOOP;
    RETURN v_total;
END;
$$;

COMMENT ON FUNCTION pgingest._normalize_source_keys() IS
'Rewrites the registered keys of attached tables in the form the pinned settings of the capture give (UTC '
'timestamps, hex bytea, ...); run by every install (internal).';

SELECT pgingest._normalize_source_keys();

-- A new release may compile a mapping differently: every source's statements are re-generated.
UPDATE pgingest.sources AS s SET statements = pgingest._source_statements(s)
WHERE s.id <> 0 AND s.relid IN (SELECT c.oid FROM pg_catalog.pg_class AS c);

-- ... and the capture compiled from them.
SELECT pgingest._compile_source_capture();

CREATE OR REPLACE VIEW pgingest.source_status AS
SELECT  -- noqa: ST06
    s.name AS source,
    coalesce(c.oid::regclass::text, s.table_name || ' (dropped)') AS table_name,
    s.key_columns,
    coalesce(s.body_column, s.template, 'content => ' || s.content_column, 'uri => ' || s.uri_column) AS mapping,
    CASE
        WHEN s.id = 0 THEN (SELECT count(*) FROM pgingest.documents)
        ELSE (
            SELECT count(*) FROM pgingest.source_rows AS r
            WHERE r.source_id = s.id
        )
    END AS rows_registered,
    greatest(c.reltuples, 0)::bigint AS table_rows_estimate,
    CASE
        WHEN s.backfill_completed_at IS NOT NULL THEN 'done'
        WHEN s.backfill_cursor IS NULL THEN 'waiting'
        ELSE 'running'
    END AS backfill,
    s.backfill_rows,
    CASE
        WHEN s.backfill_completed_at IS NOT NULL THEN 100.0
        ELSE round(100.0 * s.backfill_rows / greatest(c.reltuples, s.backfill_rows, 1)::numeric, 1)
    END AS backfill_percent,
    s.backfill_started_at,
    s.backfill_completed_at,
    (
        SELECT count(*) FROM pgingest.dead_letters AS l
        WHERE l.doc_id IS NULL AND l.payload ->> 'source' = s.name
    ) AS capture_failures,
    s.paused_reason,
    (
        SELECT count(*) FROM pgingest.source_rows AS r
        WHERE
            r.source_id = s.id AND (s.content_column IS NOT NULL OR s.uri_column IS NOT NULL)
            AND r.parsed_version IS DISTINCT FROM r.content_hash AND r.parse_error_class IS NULL
    ) AS raw_waiting,
    (
        SELECT r.parse_error_class FROM pgingest.source_rows AS r
        WHERE r.source_id = s.id AND r.parse_error_class IS NOT NULL
        ORDER BY r.fetched_at DESC NULLS LAST, r.doc_id DESC
        LIMIT 1
    ) AS last_parse_error
FROM pgingest.sources AS s
LEFT JOIN pg_catalog.pg_class AS c ON s.relid = c.oid;

COMMENT ON VIEW pgingest.source_status IS
'One row per source: its table, key, mapping, rows registered, the progress of the backfill of the rows it '
'held when attached (paced on the queues), failed captures (capture_failed dead letters), and for raw '
'document sources why fetching is paused, the documents waiting to be fetched and parsed, and the class of '
'the last fetch or parse error.';
