-- Change capture: statement-level triggers with transition tables.
-- One pgmq message per (document version, live model), written straight into each live model's pgmq
-- queue table; a NOTIFY only when a worker of the model sleeps waiting for one (pgingest.wakeups).
--
-- The capture trigger functions are compiled from the live models (_compile_enqueue: register_model,
-- retire_model, add_source, remove_source and every install re-compile them): each writes the
-- queue rows itself, from its transition tables, with one static statement whose plan PL/pgSQL
-- caches (a data-modifying CTE per queue table and the wake-up check), instead of
-- pgmq.send_batch's chain of SQL wrapper, PL/pgSQL, validation and dynamic SQL parsed and planned
-- on every call (issue 19: ~180 us of every single-row statement), and without a second
-- SECURITY DEFINER call and arrays of ids (~23 us more). _enqueue_versions, compiled the same way,
-- is what the backfills call with arrays of versions. They write the
-- columns pgmq.send_batch writes (vt, message), so that pgmq's read, metrics and archive work as
-- before; tests/test_capture.py pins the queue table's layout of the pgmq we ship. No array of
-- messages is built: a statement of millions of rows costs no 1 GB array (issue 18, item 12).
-- Wakes the sleeping workers of a model: one writer (whoever gets the row) clears `waiting` and
-- notifies; the others, finding the row taken, need not (that notification comes at its commit).
-- A lock is taken only here, never by a writer of a busy queue (it reads `waiting` and goes on).
CREATE OR REPLACE FUNCTION pgingest._wake(p_model text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM 1 FROM pgingest.wakeups AS w WHERE w.model = p_model FOR NO KEY UPDATE SKIP LOCKED;
    IF FOUND THEN
        UPDATE pgingest.wakeups AS w SET waiting = FALSE, changed_at = clock_timestamp() WHERE w.model = p_model;
        PERFORM pg_notify('pgingest', p_model);
    ELSIF NOT EXISTS (SELECT 1 FROM pgingest.wakeups AS w WHERE w.model = p_model) THEN
        PERFORM pg_notify('pgingest', p_model);  -- no worker ever said it waits: always notify
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._wake(text) IS
'Notifies the workers of a model that sleep waiting for work, once: clears pgingest.wakeups.waiting '
'(internal; called by the compiled capture).';

CREATE OR REPLACE FUNCTION pgingest.worker_idle_v1(p_models text[])
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_model text;
BEGIN
    FOREACH v_model IN ARRAY coalesce(p_models, '{}') LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.name = v_model AND m.state <> 'retired');
        -- A row locked by a writer that is notifying: that notification is on its way.
        UPDATE pgingest.wakeups AS w SET waiting = TRUE, changed_at = clock_timestamp()
        WHERE w.model = v_model
          AND w.ctid IN (SELECT x.ctid FROM pgingest.wakeups AS x WHERE x.model = v_model FOR UPDATE SKIP LOCKED);
        IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM pgingest.wakeups AS w WHERE w.model = v_model) THEN
            INSERT INTO pgingest.wakeups AS w (model) VALUES (v_model) ON CONFLICT (model) DO NOTHING;
        END IF;
    END LOOP;
    -- A new generation: every session's capture reads pgingest.wakeups again (_wake_check_sql).
    PERFORM nextval('pgingest.wakeup_generation');
END;
$$;

COMMENT ON FUNCTION pgingest.worker_idle_v1(text[]) IS
'Worker: it is about to sleep until a NOTIFY (or its poll interval): the capture of these models notifies '
'again (and takes the next pgingest.wakeup_generation, so that every session checks). The worker reads its '
'queues once more after calling this (a write between its last read and this call sent no notification).';

-- The test a compiled capture makes of whether a model's workers must be woken (as SQL, for the
-- generated bodies): one sleeps waiting (waiting), or its wakeups row has not changed for a second
-- (a worker may have died waiting), or no worker ever said it waits (no row).
CREATE OR REPLACE FUNCTION pgingest._wake_needed_sql(p_model text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN format(
    E'coalesce((SELECT w.waiting OR w.changed_at < clock_timestamp() - interval ''1 second''\n'
    || E'                FROM pgingest.wakeups AS w WHERE w.model = %L), TRUE)',
    p_model
);

COMMENT ON FUNCTION pgingest._wake_needed_sql(text) IS
'The SQL expression that is TRUE when the workers of a model must be woken (internal; used by the compiled '
'capture and _enqueue_versions).';

-- The part of a compiled capture statement that queues: one data-modifying CTE per live model's
-- queue table, writing the rows of p_rel (columns p_id, p_hash), and the SELECT that names, INTO
-- v_wake, the models whose workers must be woken: none when p_rel is empty, else those whose
-- worker sleeps (or whose wakeups row has not changed for a second: a worker may have died
-- waiting, or none of this version ever ran): a scalar subquery per model, no join. One statement,
-- one executor run: the queue rows and the wake-up check cost one SPI call together (issue 19).
-- The check itself is skipped in the common case (issue 19, ~15 us of a single-row statement): a
-- session whose last check found no worker to wake remembers it (the session setting
-- pgingest.wake_memo: the wake-up generation and the second of that check) and skips the check
-- while both are unchanged. worker_idle_v1 takes a new generation, so a worker that goes to sleep is
-- seen by the next statement of every session; the second bounds everything else (the stale rule,
-- a worker whose idle call had not committed when a check read the table, workers that predate the
-- generation) to about a second. A statement that woke someone does not remember (the next one
-- checks again); a rolled back one forgets (a setting's change is transactional). A session that
-- sets pgingest.wake_memo itself can only keep its own writes from waking a worker (they are
-- picked up at the worker's next poll).
-- The generated check, for the compiled captures (_capture_docs_body here, _source_wake_sql in
-- sql/015_sources.sql), after their queue INSERT (v_n: the rows it queued; v_memo text and v_wake
-- text[] declared): tested by PL/pgSQL expressions without a FROM clause (no executor), so
-- pgingest.wakeups is read only when the memo differs. p_checks: one CASE per live model
-- (_wake_needed_sql); every line of the block starts with p_indent.
CREATE OR REPLACE FUNCTION pgingest._wake_check_sql(p_checks text[], p_indent text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN regexp_replace(
    E'-- The wake-up check: no executor unless the memo differs (see _wake_check_sql).\n'
    || E'IF v_n > 0 AND current_setting(''pgingest.wake_memo'', TRUE) IS DISTINCT FROM\n'
    || E'        concat(pg_sequence_last_value(''pgingest.wakeup_generation''::regclass), ''/'',\n'
    || E'               date_part(''epoch'', clock_timestamp())::bigint) THEN\n'
    || E'    v_memo := concat(pg_sequence_last_value(''pgingest.wakeup_generation''::regclass), ''/'',\n'
    || E'                     date_part(''epoch'', clock_timestamp())::bigint);\n'
    || E'    SELECT /* wake-up */ array_remove(ARRAY[\n        '
    || array_to_string(p_checks, E',\n        ') || E'\n    ], NULL) INTO v_wake;\n'
    || E'    IF cardinality(v_wake) = 0 THEN\n'
    || E'        PERFORM set_config(''pgingest.wake_memo'', v_memo, FALSE);\n'
    || E'    ELSE\n'
    || E'        PERFORM pgingest._wake(k.model) FROM unnest(v_wake) AS k (model);\n'
    || E'    END IF;\n'
    || E'END IF;  -- the end of the wake-up check\n',
    '^(?=.)', p_indent, 'gn'
);

COMMENT ON FUNCTION pgingest._wake_check_sql(text[], text) IS
'The wake-up check of the compiled captures, as PL/pgSQL lines indented by p_indent (internal).';

-- The body of pgingest.documents' compiled capture trigger functions (_compile_enqueue). Issue 19,
-- concurrent capture: PL/pgSQL starts an executor for every SQL statement it runs, and a single-row
-- statement's capture paid for the start-up of every node of one larger statement (the queue CTEs,
-- a CTE scan, the wake-up check's subquery scan and its scalar subqueries, initialised even when
-- the memo skipped them). Here the queue INSERT is the statement itself (the first live model's
-- queue; the others' as CTEs of it), its row count comes from GET DIAGNOSTICS, and the wake-up memo
-- is tested by PL/pgSQL expressions without a FROM clause (evaluated without an executor):
-- pgingest.wakeups is read only when the memo differs (_wake_check_sql, shared with the attached
-- tables' capture). vt is
-- statement_timestamp(), not clock_timestamp(): a volatile function in the SELECT list keeps the
-- planner from pulling the SELECT up into the INSERT (one node more to start per statement); a
-- message is invisible until its transaction commits either way, and pgmq.read compares vt with
-- clock_timestamp(), which is later.
-- p_diff: NULL for the INSERT capture (new_rows), else the query of the (id, content_hash) rows an
-- UPDATE changed. Returns NULL when no model is live.
CREATE OR REPLACE FUNCTION pgingest._capture_docs_body(p_diff text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queues text[];
    v_models text[];
    v_from text;
    v_with text := '';
    v_checks text[];
    v_insert text := E'INSERT INTO pgmq.%I (vt, message)\n'
        || E'    SELECT statement_timestamp(), jsonb_build_object(''doc_id'', x.id, ''hash'', encode(x.content_hash, ''hex''), '
        || E'''attempts'', 0)\n'
        || E'    FROM %s AS x';
BEGIN
    SELECT array_agg('q_' || m.queue_name ORDER BY m.name), array_agg(m.name ORDER BY m.name)
    INTO v_queues, v_models
    FROM pgingest.models AS m
    WHERE m.state <> 'retired' AND to_regclass(format('pgmq.%I', 'q_' || m.queue_name)) IS NOT NULL;
    IF v_queues IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_diff IS NULL THEN
        v_from := 'new_rows';
    ELSIF cardinality(v_queues) = 1 THEN
        v_from := format(E'(\n%s\n    )', p_diff);
    ELSE
        v_from := 'v';  -- the set difference once, read by every queue's INSERT
        v_with := format(E'v AS (\n%s\n    )', p_diff);
    END IF;
    FOR i IN 2 .. cardinality(v_queues) LOOP
        v_with := v_with || CASE WHEN v_with = '' THEN '' ELSE E',\n    ' END
            || format(E'queue_%s AS (\n    ', i) || format(v_insert, v_queues[i], v_from) || E'\n    )';
    END LOOP;
    SELECT array_agg(format('CASE WHEN %s THEN %L END', pgingest._wake_needed_sql(x.model), x.model) ORDER BY x.o)
    INTO v_checks
    FROM unnest(v_models) WITH ORDINALITY AS x (model, o);
    RETURN E'\nDECLARE\n    v_n bigint;\n    v_memo text;\n    v_wake text[];\nBEGIN\n    '
        || CASE WHEN v_with = '' THEN '' ELSE 'WITH ' || v_with || E'\n    ' END
        || format(v_insert, v_queues[1], v_from) || E';\n'
        || E'    GET DIAGNOSTICS v_n = ROW_COUNT;\n'
        || pgingest._wake_check_sql(v_checks, '    ')
        || E'    RETURN NULL;\nEND;\n';
END;
$$;

COMMENT ON FUNCTION pgingest._capture_docs_body(text) IS
'The body of the compiled capture trigger functions of pgingest.documents: the queue INSERT of every live model '
'and the wake-up check (internal; NULL when no model is live; p_diff: the query of the rows an UPDATE changed, '
'NULL for the INSERT capture).';

CREATE OR REPLACE FUNCTION pgingest._compile_enqueue()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_body text := '';
    v_n integer := 0;
    v_m record;
    v_ins text;
    v_upd text;
    v_models text;
BEGIN
    -- One compilation at a time (register_model, retire_model, add_source, remove_source, install):
    -- the next one waits for this one to commit, then reads the registry as it committed it. A
    -- table only the owner of pgingest can lock in this mode (migration 0024; an advisory lock
    -- before, which any role that could connect held to make these wait).
    LOCK TABLE pgingest.compile_lock IN EXCLUSIVE MODE;
    v_ins := pgingest._capture_docs_body(NULL);
    -- The versions an UPDATE changed: (id, hash) pairs of new_rows not in old_rows. A set
    -- difference, never a nested loop: PL/pgSQL plans this once per session, and a join planned
    -- for a first single-row UPDATE made a later one of 5,000 rows quadratic (9 s, not 0.2 s).
    v_upd := pgingest._capture_docs_body(
        E'        SELECT n.id, n.content_hash FROM new_rows AS n\n'
        || E'        EXCEPT ALL\n'
        || E'        SELECT o.id, o.content_hash FROM old_rows AS o'
    );
    v_models := coalesce(
        (SELECT string_agg(m.name, ', ' ORDER BY m.name) FROM pgingest.models AS m WHERE m.state <> 'retired'), 'none'
    );
    -- The backfills' path (backfill_step_v1, source_backfill_step_v1): arrays of versions.
    FOR v_m IN
        SELECT m.name, m.queue_name FROM pgingest.models AS m
        WHERE m.state <> 'retired' AND to_regclass(format('pgmq.%I', 'q_' || m.queue_name)) IS NOT NULL
        ORDER BY m.name
    LOOP
        v_body := v_body || format(
            -- Marked as a backfill's; hidden for a day when the model's backfills go through the
            -- provider's Batch API (models.batch_api, read when the backfill runs).
            E'    v_bulk := coalesce((SELECT m.batch_api FROM pgingest.models AS m WHERE m.name = %2$L), FALSE);\n'
            || E'    INSERT INTO pgmq.%1$I (vt, message)\n'
            || E'    SELECT CASE WHEN v_bulk THEN clock_timestamp() + interval ''1 day'' ELSE clock_timestamp() END,\n'
            || E'        jsonb_build_object(''doc_id'', x.id, ''hash'', encode(x.h, ''hex''), ''attempts'', 0, '
            || E'''backfill'', CASE WHEN v_bulk THEN to_jsonb(''bulk''::text) ELSE to_jsonb(TRUE) END)\n'
            || E'    FROM unnest(p_doc_ids, p_hashes) AS x (id, h);\n'
            || E'    IF %3$s THEN\n'
            || E'        PERFORM pgingest._wake(%2$L);\n'
            || E'    END IF;\n',
            'q_' || v_m.queue_name, v_m.name, pgingest._wake_needed_sql(v_m.name)
        );
        v_n := v_n + 1;
    END LOOP;
    EXECUTE format(
        $ddl$
        CREATE OR REPLACE FUNCTION pgingest._enqueue_versions(p_doc_ids bigint[], p_hashes bytea[])
        RETURNS integer
        LANGUAGE plpgsql
        VOLATILE
        SECURITY DEFINER
        SET search_path FROM CURRENT
        AS %L
        $ddl$,
        E'DECLARE\n    v_bulk boolean;\nBEGIN\n    IF coalesce(cardinality(p_doc_ids), 0) = 0 THEN\n        RETURN 0;\n    END IF;\n'
        || v_body
        || format(E'    RETURN cardinality(p_doc_ids) * %s;\nEND;\n', v_n)
    );
    EXECUTE format(
        'COMMENT ON FUNCTION pgingest._enqueue_versions(bigint[], bytea[]) IS %L',
        format('Queues one message per given document version and live model (internal; called by the backfills). '
               'Compiled by pgingest._compile_enqueue() for the live models: %s.', v_models)
    );

    -- The capture triggers of pgingest.documents: one statement each, the queue rows written
    -- straight from the transition tables (no array, no second function call).
    EXECUTE format(
        $ddl$
        CREATE OR REPLACE FUNCTION pgingest._capture_insert()
        RETURNS trigger
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path FROM CURRENT
        AS %L
        $ddl$,
        coalesce(v_ins, E'\nBEGIN\n    RETURN NULL;  -- no live model\nEND;\n')
    );
    EXECUTE format(
        $ddl$
        CREATE OR REPLACE FUNCTION pgingest._capture_update()
        RETURNS trigger
        LANGUAGE plpgsql
        SECURITY DEFINER
        SET search_path FROM CURRENT
        AS %L
        $ddl$,
        coalesce(v_upd, E'\nBEGIN\n    RETURN NULL;  -- no live model\nEND;\n')
    );
    EXECUTE format(
        'COMMENT ON FUNCTION pgingest._capture_insert() IS %L',
        format('Statement-level AFTER INSERT trigger on pgingest.documents: queues every new document for every live '
               'model. Compiled by pgingest._compile_enqueue() for the live models: %s.', v_models)
    );
    EXECUTE format(
        'COMMENT ON FUNCTION pgingest._capture_update() IS %L',
        format('Statement-level AFTER UPDATE trigger on pgingest.documents: queues only the documents whose content '
               'hash changed. Compiled by pgingest._compile_enqueue() for the live models: %s.', v_models)
    );
    -- The capture of attached tables (sql/015_sources.sql; absent while an install runs this file).
    IF to_regprocedure('pgingest._compile_source_capture()') IS NOT NULL THEN
        PERFORM pgingest._compile_source_capture();
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._compile_enqueue() IS
'(Re)compiles the capture for the live models: pgingest._capture_insert and _capture_update (the triggers of '
'pgingest.documents), pgingest._source_capture (attached tables) and _enqueue_versions (the backfills), each '
'with static INSERTs into the pgmq queue table of every live model (register_model, retire_model, add_source, '
'remove_source and every install call it).';

SELECT pgingest._compile_enqueue();

CREATE OR REPLACE FUNCTION pgingest._capture_delete()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    -- (pgingest._forget_docs is in sql/015_sources.sql: every source forgets its rows the same way.)
    PERFORM pgingest._forget_docs((SELECT array_agg(o.id) FROM old_rows AS o));
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgingest._capture_delete() IS
'Statement-level AFTER DELETE trigger: removes the chunks (every profile), the vectors (every live model''s '
'store, kept in the embedding cache for reuse), state and dead letters of deleted documents. '
'Their queued messages are acknowledged later as stale.';

CREATE OR REPLACE FUNCTION pgingest._capture_truncate()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m record;
    v_stores text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgingest.source_rows) THEN
        -- documents is the only source with rows: everything goes at TRUNCATE speed.
        SELECT string_agg(format('pgingest.%I', m.store_name), ', ' ORDER BY m.name) INTO v_stores
        FROM pgingest.models AS m WHERE m.state <> 'retired';
        EXECUTE 'TRUNCATE pgingest.chunks, pgingest.embedding_state' || coalesce(', ' || v_stores, '');
    ELSE
        -- Other sources keep theirs: what is not an attached table's row goes.
        FOR v_m IN SELECT m.store_name FROM pgingest.models AS m WHERE m.state <> 'retired' ORDER BY m.name LOOP
            EXECUTE format('DELETE FROM pgingest.%I AS s WHERE NOT EXISTS '
                           '(SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = s.doc_id)', v_m.store_name);
        END LOOP;
        DELETE FROM pgingest.chunks AS c
        WHERE NOT EXISTS (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = c.doc_id);
        DELETE FROM pgingest.embedding_state AS s
        WHERE NOT EXISTS (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = s.doc_id);
    END IF;
    DELETE FROM pgingest.dead_letters AS l
    WHERE l.doc_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pgingest.source_rows AS r WHERE r.doc_id = l.doc_id);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgingest._capture_truncate() IS
'AFTER TRUNCATE trigger: truncating the documents empties their chunks, vectors (every live model''s store) '
'and embedding state; the rows of attached tables (other sources) keep theirs.';

-- The one routine here without SET search_path (issue 19): it runs for every row an UPDATE
-- touches, and a SET clause sends each call through fmgr_security_definer, which sets the path
-- and restores it (on PostgreSQL 15 a walk over every setting at exit): about 9 of the ~21 us
-- this trigger cost a single-row UPDATE (perf). Not SECURITY DEFINER: it runs with the writer's
-- rights, and names nothing through the search path (pg_catalog.now()).
-- The content hash of a document version (the generated documents.content_hash; migration 0001
-- defined it as LANGUAGE sql). convert_to() is STABLE, so the planner may not inline a SQL body
-- into the IMMUTABLE generated column: fmgr_sql planned it once per statement and started an
-- executor for it per row (35-67 us of every single-row write to pgingest.documents, issue 19).
-- PL/pgSQL keeps its compiled body and the expression's plan per session. No SET clause (it would
-- send every call through a save and restore of the setting, ~20 us): every name is schema-qualified
-- instead (the operator too: textcat), and the result is the same bytes as before.
CREATE OR REPLACE FUNCTION pgingest._content_hash(p_title text, p_body text)
RETURNS bytea
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $$
BEGIN
    RETURN pg_catalog.sha256(pg_catalog.convert_to(
        pg_catalog.textcat(pg_catalog.textcat(coalesce(p_title, ''), pg_catalog.chr(30)), p_body), 'UTF8'
    ));
END;
$$;

COMMENT ON FUNCTION pgingest._content_hash(text, text) IS
'sha256 of title || RS || body: identifies the embedded content of a document version (no SET '
'search_path: it runs for every row written, and names pg_catalog explicitly).';

-- Every UPDATE of a row stamps it, as before: the `NEW IS DISTINCT FROM OLD` test this function
-- had never held false, since a BEFORE trigger sees the generated content_hash as NULL in NEW
-- (computed after BEFORE triggers) and not in OLD. It cost a whole-row comparison a row.
CREATE OR REPLACE FUNCTION pgingest._touch_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION pgingest._touch_updated_at() IS
'Row-level BEFORE UPDATE trigger: sets documents.updated_at to now() on every UPDATE of the row (no SET '
'search_path: it runs for every row, and names pg_catalog.now() explicitly).';

CREATE OR REPLACE FUNCTION pgingest._refuse_id_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    RAISE EXCEPTION 'pgingest: the id of a document cannot change (document %)', OLD.id
        USING ERRCODE = 'feature_not_supported',
              DETAIL = 'Its chunks, vectors and embedding state are keyed by id; a new id would orphan them.',
              HINT = 'Delete the document and insert it again (it is then embedded again), or change its key.';
END;
$$;

COMMENT ON FUNCTION pgingest._refuse_id_change() IS
'Row-level BEFORE UPDATE OF id trigger on pgingest.documents (fires only when the id really changes): '
'refuses it with 0A000, since chunks, stores and embedding state are keyed by the id.';

CREATE OR REPLACE TRIGGER documents_capture_insert
AFTER INSERT ON pgingest.documents
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION pgingest._capture_insert();

CREATE OR REPLACE TRIGGER documents_capture_update
AFTER UPDATE ON pgingest.documents
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION pgingest._capture_update();

CREATE OR REPLACE TRIGGER documents_capture_delete
AFTER DELETE ON pgingest.documents
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION pgingest._capture_delete();

CREATE OR REPLACE TRIGGER documents_capture_truncate
AFTER TRUNCATE ON pgingest.documents
FOR EACH STATEMENT EXECUTE FUNCTION pgingest._capture_truncate();

CREATE OR REPLACE TRIGGER documents_touch_updated_at
BEFORE UPDATE ON pgingest.documents
FOR EACH ROW EXECUTE FUNCTION pgingest._touch_updated_at();

-- Only statements that name id in their SET list fire it, and only rows whose id changes call it:
-- an application's UPDATE of title, body or metadata pays nothing.
CREATE OR REPLACE TRIGGER documents_id_immutable
BEFORE UPDATE OF id ON pgingest.documents
FOR EACH ROW
WHEN (new.id IS DISTINCT FROM old.id)
EXECUTE FUNCTION pgingest._refuse_id_change();
