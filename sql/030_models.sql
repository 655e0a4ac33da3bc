-- Model lifecycle: register (shadow, dual write, backfill), swap (view + search re-pointed), retire.

CREATE OR REPLACE FUNCTION pgingest._check_model_name(p_name text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,29}$' THEN
        RAISE EXCEPTION 'pgingest: invalid model name %', coalesce(quote_literal(p_name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A model name is 1 to 30 characters: a lower-case letter, then letters, digits or _.';
    END IF;
    RETURN p_name;
END;
$$;

COMMENT ON FUNCTION pgingest._check_model_name(text) IS
'Validates a model name (it becomes part of a table and a queue name); raises 22023 otherwise.';

CREATE OR REPLACE FUNCTION pgingest._index_name(p_model text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN 'store_' || p_model || '_idx';

COMMENT ON FUNCTION pgingest._index_name(text) IS
'Name of a model''s ANN index on its store (pgingest.store_<model>, column embedding).';

CREATE OR REPLACE FUNCTION pgingest._opclass(p_m pgingest.models)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN p_m.storage || CASE p_m.metric WHEN 'cosine' THEN '_cosine_ops' WHEN 'ip' THEN '_ip_ops' ELSE '_l2_ops' END;

COMMENT ON FUNCTION pgingest._opclass(pgingest.models) IS
'pgvector operator class matching a model''s storage and metric (e.g. halfvec_cosine_ops).';

CREATE OR REPLACE FUNCTION pgingest._distance_operator(p_metric text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path FROM CURRENT
RETURN CASE p_metric WHEN 'cosine' THEN '<=>' WHEN 'ip' THEN '<#>' ELSE '<->' END;

COMMENT ON FUNCTION pgingest._distance_operator(text) IS 'pgvector distance operator for a metric.';

-- A table only the owner of pgingest can lock in this mode (migration 0024): it used to be an
-- advisory lock, which any role that could connect held to make the lifecycle wait.
CREATE OR REPLACE FUNCTION pgingest._lifecycle_lock()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
BEGIN
    LOCK TABLE pgingest.lifecycle_lock IN EXCLUSIVE MODE;
END;
$$;

COMMENT ON FUNCTION pgingest._lifecycle_lock() IS
'Serialises the model lifecycle (register_model, swap_model, retire_model, shift_traffic) until the end '
'of the transaction: pgingest.lifecycle_lock IN EXCLUSIVE MODE.';

CREATE OR REPLACE FUNCTION pgingest._check_index_options(p_method text, p_options jsonb)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_opts jsonb := coalesce(p_options, '{}');
    v_key text;
    v_val jsonb;
    v_allowed text[];
    v_lo integer;
    v_hi integer;
BEGIN
    IF jsonb_typeof(v_opts) <> 'object' THEN
        RAISE EXCEPTION 'pgingest: index_options must be a JSON object, not %', v_opts
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_allowed := CASE p_method
        WHEN 'hnsw' THEN ARRAY['m', 'ef_construction']
        WHEN 'ivfflat' THEN ARRAY['lists']
        ELSE '{}'::text[]
    END;
    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(v_opts) AS o LOOP
        IF NOT v_key = ANY (v_allowed) THEN
            RAISE EXCEPTION 'pgingest: unknown index option % for index_method %', quote_literal(v_key),
                quote_literal(p_method)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'hnsw takes m and ef_construction, ivfflat takes lists, none takes nothing.';
        END IF;
        v_lo := CASE v_key WHEN 'm' THEN 2 WHEN 'ef_construction' THEN 4 ELSE 1 END;
        v_hi := CASE v_key WHEN 'm' THEN 100 WHEN 'ef_construction' THEN 1000 ELSE 32768 END;
        IF jsonb_typeof(v_val) <> 'number' OR v_val::text !~ '^[0-9]+$'
           OR v_val::text::numeric NOT BETWEEN v_lo AND v_hi THEN
            RAISE EXCEPTION 'pgingest: index option % must be an integer from % to %, not %', v_key, v_lo,
                v_hi, v_val
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF p_method = 'hnsw' THEN
        v_opts := jsonb_build_object('m', 16, 'ef_construction', 64) || v_opts;
        IF (v_opts ->> 'ef_construction')::integer < 2 * (v_opts ->> 'm')::integer THEN
            RAISE EXCEPTION 'pgingest: hnsw ef_construction (%) must be at least twice m (%)',
                v_opts ->> 'ef_construction', v_opts ->> 'm'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN v_opts;
END;
$$;

COMMENT ON FUNCTION pgingest._check_index_options(text, jsonb) IS
'Validates a model''s index options for its index method (hnsw: m 2-100, ef_construction 4-1000 and at '
'least 2 m; ivfflat: lists 1-32768) and returns them with the hnsw defaults filled in; raises 22023.';

CREATE OR REPLACE FUNCTION pgingest._check_search_view_droppable(p_storage text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_view regclass := to_regclass('pgingest.search_chunks');
    v_deps text[];
BEGIN
    IF v_view IS NULL OR EXISTS (
        SELECT 1 FROM pg_attribute AS a
        WHERE a.attrelid = v_view AND a.attname = 'embedding'
          AND a.atttypid = p_storage::regtype AND a.atttypmod = -1 AND NOT a.attisdropped
    ) THEN
        RETURN;  -- replaced in place: its dependants are kept
    END IF;
    -- What DROP VIEW would refuse for: views (through their rewrite rules), functions with a
    -- SQL-standard body, ... (the view's own rule and row type excluded).
    SELECT array_agg(DISTINCT coalesce(
        CASE WHEN r.ev_class IS NOT NULL THEN format('view %s', r.ev_class::regclass) END,
        pg_describe_object(d.classid, d.objid, d.objsubid)
    ) ORDER BY coalesce(
        CASE WHEN r.ev_class IS NOT NULL THEN format('view %s', r.ev_class::regclass) END,
        pg_describe_object(d.classid, d.objid, d.objsubid)
    ))
    INTO v_deps
    FROM pg_depend AS d
    LEFT JOIN pg_rewrite AS r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = v_view AND d.deptype = 'n'
      AND r.ev_class IS DISTINCT FROM v_view;
    IF v_deps IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: pgingest.search_chunks cannot be re-created for % storage: % depend% on it',
            p_storage, array_to_string(v_deps, ', '), CASE WHEN cardinality(v_deps) = 1 THEN 's' ELSE '' END
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'A change of storage type (vector <-> halfvec) changes the type of its embedding column: '
                  || 'the view is dropped and re-created, which PostgreSQL refuses while other objects depend on it. '
                  || 'Nothing was changed.',
                  HINT = 'Drop those objects (save their definitions: SELECT pg_get_viewdef(''<view>''::regclass)), '
                  || 'swap, then create them again; or swap to a model of the same storage type.';
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._check_search_view_droppable(text) IS
'Raises 55000 naming the objects that depend on pgingest.search_chunks when a model of storage p_storage '
'would make _refresh_search_view() drop and re-create it (a vector <-> halfvec swap); nothing otherwise.';

CREATE OR REPLACE FUNCTION pgingest._refresh_search_view()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
    v_active boolean;
    v_acl aclitem[];
    v_owner oid;
    v_dropped boolean := FALSE;
    v_g record;
BEGIN
    SELECT * INTO v_m FROM pgingest.models AS m WHERE m.state = 'active';
    v_active := FOUND;
    -- `embedding` has no typmod (vector, not vector(384)): a swap between two models of the same
    -- storage type keeps the view's row type, so it is replaced in place (same oid, grants and
    -- dependants kept) and statements prepared by clients survive the swap. Only a change of
    -- storage type (vector <-> halfvec) drops and re-creates it: refused while other objects
    -- depend on it (they would have to go with it), and its grants and owner are saved and put back
    -- (review 2026-12-07, items 3 and 4).
    IF to_regclass('pgingest.search_chunks') IS NOT NULL AND (
        NOT v_active OR NOT EXISTS (
            SELECT 1 FROM pg_attribute AS a
            WHERE a.attrelid = to_regclass('pgingest.search_chunks') AND a.attname = 'embedding'
              AND a.atttypid = v_m.storage::regtype AND a.atttypmod = -1 AND NOT a.attisdropped
        )
    ) THEN
        IF v_active THEN
            PERFORM pgingest._check_search_view_droppable(v_m.storage);
        END IF;
        SELECT c.relacl, c.relowner INTO v_acl, v_owner
        FROM pg_class AS c WHERE c.oid = to_regclass('pgingest.search_chunks');
        DROP VIEW pgingest.search_chunks;
        v_dropped := TRUE;
    END IF;
    IF v_active THEN
        EXECUTE format(
            $sql$
            CREATE OR REPLACE VIEW pgingest.search_chunks WITH (security_barrier = false) AS
            SELECT s.doc_id, d.doc_key, d.title, s.ordinal, c.content, s.embedding::%3$s AS embedding,
                   %2$L::text AS model, d.metadata, d.source, d.source_key
            FROM pgingest.%1$I AS s
            -- A per-row lookup (OFFSET 0): see pgingest.search().
            CROSS JOIN LATERAL (
                SELECT c.content FROM pgingest.chunks AS c
                WHERE c.profile_id = %4$s AND c.doc_id = s.doc_id AND c.ordinal = s.ordinal
                    AND c.chunk_hash = s.chunk_hash
                OFFSET 0
            ) AS c
            -- The documents of every source (pgingest.source_documents without the filter columns,
            -- inlined: that view is re-created when a filter is promoted, this one must not depend on it).
            INNER JOIN (
                SELECT x.id AS doc_id, x.key AS doc_key, x.title, x.metadata, 'documents'::text AS source,
                       jsonb_build_object('key', x.key) AS source_key
                FROM pgingest.documents AS x
                UNION ALL
                SELECT r.doc_id, CASE WHEN cardinality(o.key_columns) = 1 THEN r.row_key ->> o.key_columns[1]
                                      ELSE r.row_key::text END,
                       r.title, r.metadata, o.name, r.row_key
                FROM pgingest.source_rows AS r INNER JOIN pgingest.sources AS o ON o.id = r.source_id
            ) AS d ON d.doc_id = s.doc_id
            $sql$,
            v_m.store_name, v_m.name, v_m.storage, v_m.profile_id
        );
        EXECUTE format(
            'COMMENT ON VIEW pgingest.search_chunks IS %L',
            format('Chunks with the active model''s (%s, %s) vector as `embedding`, from its store %s. '
                   'Re-pointed by swap_model().', v_m.name, pgingest._column_type(v_m), v_m.store_name)
        );
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgingest_reader') THEN
            GRANT SELECT ON pgingest.search_chunks TO pgingest_reader;
        END IF;
        IF v_dropped THEN
            -- The grants of the view dropped (its owner's own included), by whoever runs this.
            FOR v_g IN
                SELECT x.grantee, x.privilege_type, bool_or(x.is_grantable) AS grantable
                FROM aclexplode(coalesce(v_acl, '{}')) AS x
                WHERE x.grantee = 0 OR EXISTS (SELECT 1 FROM pg_roles AS r WHERE r.oid = x.grantee)
                GROUP BY x.grantee, x.privilege_type
                ORDER BY x.grantee, x.privilege_type
            LOOP
                EXECUTE format(
                    'GRANT %s ON pgingest.search_chunks TO %s%s',
                    v_g.privilege_type,
                    CASE WHEN v_g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(v_g.grantee)) END,
                    CASE WHEN v_g.grantable THEN ' WITH GRANT OPTION' ELSE '' END
                );
            END LOOP;
            IF v_owner IS NOT NULL AND v_owner IS DISTINCT FROM (
                SELECT c.relowner FROM pg_class AS c WHERE c.oid = to_regclass('pgingest.search_chunks')
            ) THEN
                BEGIN
                    EXECUTE format('ALTER VIEW pgingest.search_chunks OWNER TO %I', pg_get_userbyid(v_owner));
                EXCEPTION WHEN insufficient_privilege THEN
                    RAISE WARNING 'pgingest: pgingest.search_chunks was re-created owned by %, not by its owner % (%)',
                        current_user, pg_get_userbyid(v_owner), sqlerrm;
                END;
            END IF;
        END IF;
    END IF;
END;
$$;

COMMENT ON FUNCTION pgingest._refresh_search_view() IS
'(Re)creates the view pgingest.search_chunks over the active model''s store. A change of storage type '
'drops and re-creates it: refused (55000) while other objects depend on it; its grants and owner are put back.';

CREATE OR REPLACE FUNCTION pgingest._profile(
    p_tokenizer text,
    p_max_tokens integer,
    p_overlap_tokens integer,
    p_title_in_chunks boolean
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_id integer;
BEGIN
    -- The worker's chunker accepts these (pgingest.chunking: TOKENIZER_NAMES, MIN_MAX_TOKENS).
    IF p_tokenizer IS NULL OR p_tokenizer NOT IN ('all-MiniLM-L6-v2', 'heuristic') THEN
        RAISE EXCEPTION 'pgingest: unknown chunk tokenizer %', coalesce(quote_literal(p_tokenizer), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The tokenizers are all-MiniLM-L6-v2 and heuristic.';
    END IF;
    IF p_max_tokens IS NULL OR p_max_tokens < 8 THEN
        RAISE EXCEPTION 'pgingest: chunk max_tokens must be at least 8, not %', coalesce(p_max_tokens::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_overlap_tokens IS NULL OR p_overlap_tokens < 0 OR p_overlap_tokens >= p_max_tokens THEN
        RAISE EXCEPTION 'pgingest: chunk overlap_tokens must be from 0 to max_tokens - 1 (%), not %',
            p_max_tokens - 1, coalesce(p_overlap_tokens::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_title_in_chunks IS NULL THEN
        RAISE EXCEPTION 'pgingest: title_in_chunks must be true or false, not NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Callers hold the lifecycle lock: no concurrent insert of the same profile.
    SELECT p.id INTO v_id FROM pgingest.chunk_profiles AS p
    WHERE p.tokenizer = p_tokenizer AND p.max_tokens = p_max_tokens AND p.overlap_tokens = p_overlap_tokens
        AND p.title_in_chunks = p_title_in_chunks;
    IF v_id IS NULL THEN
        INSERT INTO pgingest.chunk_profiles AS p (tokenizer, max_tokens, overlap_tokens, title_in_chunks)
        VALUES (p_tokenizer, p_max_tokens, p_overlap_tokens, p_title_in_chunks)
        RETURNING p.id INTO v_id;
    END IF;
    RETURN v_id;
END;
$$;

COMMENT ON FUNCTION pgingest._profile(text, integer, integer, boolean) IS
'Finds or creates the chunking profile with these parameters (validated as the worker''s chunker does); '
'returns its id.';

CREATE OR REPLACE FUNCTION pgingest._create_store(p_m pgingest.models)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_parts integer;
    v_pub name;
BEGIN
    -- Partitioned like the chunks (install --chunk-partitions): same modulus, same key.
    SELECT count(*)::integer INTO v_parts
    FROM pg_partition_tree('pgingest.chunks') AS t WHERE t.isleaf AND t.level > 0;
    -- toast_tuple_target = 4080 (on the tables that hold rows): a vector of up to ~4 KB stays in
    -- its row instead of going to TOAST (migration 0019).
    EXECUTE format(
        'CREATE TABLE pgingest.%1$I (doc_id bigint NOT NULL, ordinal integer NOT NULL, '
        'chunk_hash bytea NOT NULL, embedding %2$s NOT NULL, '
        'CONSTRAINT %3$I PRIMARY KEY (doc_id, ordinal))%4$s',
        p_m.store_name, pgingest._column_type(p_m), p_m.store_name || '_pkey',
        CASE WHEN v_parts > 0 THEN ' PARTITION BY HASH (doc_id)' ELSE ' WITH (toast_tuple_target = 4080)' END
    );
    FOR v_i IN 0 .. v_parts - 1 LOOP
        EXECUTE format('CREATE TABLE pgingest.%I PARTITION OF pgingest.%I FOR VALUES WITH (MODULUS %s, REMAINDER %s) '
                       'WITH (toast_tuple_target = 4080)',
                       p_m.store_name || '_p' || v_i, p_m.store_name, v_parts, v_i);
    END LOOP;
    EXECUTE format('CREATE INDEX %I ON pgingest.%I (chunk_hash)', p_m.store_name || '_chunk_hash', p_m.store_name);
    EXECUTE format('COMMENT ON TABLE pgingest.%I IS %L', p_m.store_name,
                   format('Vectors of model %s (%s, %s, %s), one per chunk of its profile (doc_id, ordinal); '
                          'chunk_hash: the model input the vector was computed for.',
                          p_m.name, p_m.model_id, pgingest._column_type(p_m), p_m.metric));
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgingest_admin') THEN
        -- The store and its partitions, as every install grants each table of pgingest
        -- (sql/090_privileges.sql: the next install must find nothing to change).
        EXECUTE format('GRANT SELECT ON pgingest.%I TO pgingest_admin', p_m.store_name);
        FOR v_i IN 0 .. v_parts - 1 LOOP
            EXECUTE format('GRANT SELECT ON pgingest.%I TO pgingest_admin', p_m.store_name || '_p' || v_i);
        END LOOP;
    END IF;
    -- Read replicas (sql/095_replication.sql): the publications of the chunks carry the stores too.
    FOR v_pub IN
        SELECT p.pubname FROM pg_catalog.pg_publication AS p
        INNER JOIN pg_catalog.pg_publication_rel AS r ON r.prpubid = p.oid
        WHERE r.prrelid = 'pgingest.chunks'::regclass
        ORDER BY p.pubname
    LOOP
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE pgingest.%I', v_pub, p_m.store_name);
    END LOOP;
END;
$$;

COMMENT ON FUNCTION pgingest._create_store(pgingest.models) IS
'Creates a model''s store pgingest.<store_name>: (doc_id, ordinal, chunk_hash, embedding of the model''s '
'type), primary key (doc_id, ordinal), an index on chunk_hash (the embedding cache), hash-partitioned like '
'pgingest.chunks. No foreign key to the chunks: a write for one model never cascades into another''s store.';

CREATE OR REPLACE FUNCTION pgingest._check_base_url(p_url text, p_allow_insecure_http boolean)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    -- The rules of the constraints models_base_url_loopback_or_https and models_base_url_no_secrets
    -- (migrations/0008_base_url_rules.sql), one error each. The URL is never echoed: it may hold a key.
    v_host text := substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#]*@)?([^/?#:]*|\[[^]]*\])');
BEGIN
    IF p_url IS NULL OR p_url !~ '^https?://[^/?#]' THEN
        RAISE EXCEPTION 'pgingest: base_url must start with https:// (or http:// to a loopback host) and name a host'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An OpenAI-compatible base URL such as https://api.openai.com/v1.';
    END IF;
    IF p_url ~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@' THEN
        RAISE EXCEPTION 'pgingest: base_url must not carry credentials (user:password@host)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the API key with api_key_env (an environment variable of the workers).';
    END IF;
    IF p_url ~* '\?([^#]*[&;])?([a-z0-9_.-]*(key|token|secret|password|passwd|signature|credential)s?|sig|auth|pwd|pass)([=&;#]|$)'
    THEN
        RAISE EXCEPTION 'pgingest: base_url must not carry a key-like query parameter (api-key, key, token, secret, ...)'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the API key with api_key_env (an environment variable of the workers).';
    END IF;
    IF strpos(p_url, '#') > 0 THEN
        RAISE EXCEPTION 'pgingest: base_url must not have a fragment (#...)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_url ~ '[[:cntrl:][:space:]\\]' THEN
        RAISE EXCEPTION 'pgingest: base_url must not hold spaces, control characters or backslashes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_url ~ '^http://' AND NOT coalesce(p_allow_insecure_http, FALSE)
       AND p_url
       !~* '^http://(localhost|127(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|\[::1\])(:[0-9]{1,5})?([/?]|$)'
    THEN
        RAISE EXCEPTION 'pgingest: base_url is http:// to %, which is not a loopback host (127.0.0.0/8, [::1], localhost)',
            quote_literal(v_host)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use https://, or pass allow_insecure_http => true (the API key then travels in cleartext).';
    END IF;
    RETURN p_url;
END;
$$;

COMMENT ON FUNCTION pgingest._check_base_url(text, boolean) IS
'Validates a model''s base_url (the rules of the constraints models_base_url_loopback_or_https and '
'models_base_url_no_secrets): https://, or http:// to a loopback host unless allow_insecure_http; no '
'credentials, key-like query parameter, fragment, space or control character. Raises 22023 without echoing '
'the URL; returns it.';

-- The signature before chunking profiles: dropped so that calls stay unambiguous.
DROP FUNCTION IF EXISTS pgingest.register_model(
    text, text, integer, text, text, text, integer, text, text, jsonb, boolean
);
-- The signature before allow_insecure_http (migrations/0008_base_url_rules.sql).
DROP FUNCTION IF EXISTS pgingest.register_model(
    text, text, integer, text, text, text, integer, text, text, jsonb, boolean, text, integer, integer, boolean
);

CREATE OR REPLACE FUNCTION pgingest.register_model(
    name text,
    model_id text,
    dimensions integer,
    base_url text,
    storage text DEFAULT 'vector',
    metric text DEFAULT 'cosine',
    max_input_tokens integer DEFAULT 256,
    api_key_env text DEFAULT NULL,
    index_method text DEFAULT 'hnsw',
    index_options jsonb DEFAULT '{}',
    request_dimensions boolean DEFAULT FALSE,
    chunk_tokenizer text DEFAULT NULL,
    chunk_max_tokens integer DEFAULT NULL,
    chunk_overlap_tokens integer DEFAULT NULL,
    title_in_chunks boolean DEFAULT NULL,
    allow_insecure_http boolean DEFAULT FALSE
)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
VOLATILE
SET search_path FROM CURRENT
AS $$
#variable_conflict use_variable
DECLARE
    v_name text := pgingest._check_model_name(register_model.name);
    v_state text;
    v_m pgingest.models;
    v_options jsonb;
    v_profile pgingest.chunk_profiles;
    v_profile_id integer;
    v_cfg jsonb;
BEGIN
    PERFORM pgingest._lifecycle_lock();
    IF EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.name = v_name) THEN
        RAISE EXCEPTION 'pgingest: a model named % already exists', v_name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Retired names cannot be reused; pick a new name such as v3.';
    END IF;
    -- The profile: what is given, the rest from the default profile (config chunk_*).
    SELECT jsonb_object_agg(c.key, c.value) INTO v_cfg FROM pgingest.config AS c WHERE c.key LIKE 'chunk\_%';
    v_profile_id := pgingest._profile(
        coalesce(chunk_tokenizer, v_cfg ->> 'chunk_tokenizer', 'all-MiniLM-L6-v2'),
        coalesce(chunk_max_tokens, (v_cfg ->> 'chunk_max_tokens')::integer, 200),
        coalesce(chunk_overlap_tokens, (v_cfg ->> 'chunk_overlap_tokens')::integer, 20),
        coalesce(title_in_chunks, (v_cfg ->> 'chunk_include_title')::boolean, TRUE)
    );
    SELECT * INTO v_profile FROM pgingest.chunk_profiles AS p WHERE p.id = v_profile_id;
    IF max_input_tokens < v_profile.max_tokens THEN
        RAISE EXCEPTION 'pgingest: model % accepts % tokens but its chunks are up to % tokens', v_name,
            max_input_tokens, v_profile.max_tokens
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give the model a chunking profile that fits: chunk_max_tokens => <= max_input_tokens.';
    END IF;
    IF index_method IS NULL OR index_method NOT IN ('hnsw', 'ivfflat', 'none') THEN
        RAISE EXCEPTION 'pgingest: index_method must be hnsw, ivfflat or none, not %',
            coalesce(quote_literal(index_method), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF storage IS NULL OR storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'pgingest: storage must be vector or halfvec, not %', coalesce(quote_literal(storage), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF metric IS NULL OR metric NOT IN ('cosine', 'ip', 'l2') THEN
        RAISE EXCEPTION 'pgingest: metric must be cosine, ip or l2, not %', coalesce(quote_literal(metric), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_options := pgingest._check_index_options(index_method, index_options);
    PERFORM pgingest._check_base_url(base_url, allow_insecure_http);
    IF index_method <> 'none' AND (storage = 'halfvec' AND dimensions > 4000 OR storage = 'vector' AND dimensions > 2000)
    THEN
        RAISE EXCEPTION 'pgingest: % dimensions is too many for an ANN index on %', dimensions, storage
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'vector indexes 2,000 dimensions at most, halfvec 4,000; use halfvec or index_method => ''none''.';
    END IF;

    -- Wait for in-flight writers and hold new ones until we commit: every document is then either
    -- visible to the backfill or queued by the capture trigger, which sees this model. The new
    -- store is a table of its own: nothing here waits for an index build on another model's store.
    LOCK TABLE pgingest.documents, pgingest.source_rows IN SHARE MODE;

    v_state := CASE WHEN EXISTS (SELECT 1 FROM pgingest.models AS m WHERE m.state = 'active')
                    THEN 'shadow' ELSE 'active' END;
    INSERT INTO pgingest.models AS m (
        name, model_id, base_url, api_key_env, dimensions, storage, metric, max_input_tokens,
        request_dimensions, state, store_name, profile_id, queue_name, index_method, index_options,
        backfill_started_at, backfill_upto, activated_at, allow_insecure_http
    ) VALUES (
        v_name, model_id, base_url, api_key_env, dimensions, storage, metric, max_input_tokens,
        request_dimensions, v_state, 'store_' || v_name, v_profile.id, 'pgingest_' || v_name, index_method,
        v_options, now(), greatest((SELECT max(d.id) FROM pgingest.documents AS d), (SELECT max(r.doc_id) FROM pgingest.source_rows AS r)),
        CASE WHEN v_state = 'active' THEN now() END, coalesce(allow_insecure_http, FALSE)
    )
    RETURNING * INTO v_m;

    PERFORM pgingest._create_store(v_m);
    PERFORM pgmq.create(v_m.queue_name);
    -- The capture now writes to this queue too (the writers wait on the lock above until we commit).
    PERFORM pgingest._compile_enqueue();
    IF v_state = 'active' THEN
        PERFORM pgingest._refresh_search_view();
    END IF;
    PERFORM pg_notify('pgingest', v_name);
    RETURN v_state;
END;
$$;

COMMENT ON FUNCTION pgingest.register_model(
    text, text, integer, text, text, text, integer, text, text, jsonb, boolean, text, integer, integer, boolean,
    boolean
) IS
'Registers an embedding model: creates its store (pgingest.store_<name>) and its queue, finds or creates its '
'chunking profile (chunk_tokenizer, chunk_max_tokens, chunk_overlap_tokens, title_in_chunks; each defaults '
'to the config chunk_* value) and queues a backfill of every document (run by the workers in bounded batches, '
'or CALL pgingest.run_backfill(name)). The first model becomes active; later ones start in shadow (dual '
'write) until swap_model(). base_url: https://, or http:// to a loopback host unless allow_insecure_http; '
'no credentials, key-like query parameter or fragment (22023). Returns the new state.';

-- (p_paced added by issue 18, item 12: the two-argument form goes; its callers get the default.)
DROP FUNCTION IF EXISTS pgingest.backfill_step_v1(text, integer);

CREATE OR REPLACE FUNCTION pgingest.backfill_step_v1(
    p_model text, p_batch integer DEFAULT 5000, p_paced boolean DEFAULT TRUE
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_m pgingest.models;
    v_ids bigint[];
    v_hashes bytea[];
    v_max bigint;
    v_msgs jsonb[];
    v_max_queue integer;
    v_depth integer;
    v_fence text[];
BEGIN
    SELECT * INTO v_m FROM pgingest.models AS m
    WHERE m.name = p_model AND m.state <> 'retired' AND m.backfill_completed_at IS NULL
    FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    -- The fence (migration 0021): a capture that started while the model was being registered
    -- may have loaded the capture's body of before (an attached table's capture takes its lock on
    -- source_rows inside the body it loaded), and register its rows after backfill_upto was read,
    -- queued for the other models only. The first step records the transactions writing to the
    -- captured tables and returns -1 until they have all ended; then, once, it queues every version
    -- registered after backfill_upto that the model has no trace of: no message in its queue, no
    -- embedding_state and no dead letter at that hash. A capture that knew the model leaves one of
    -- the three in every snapshot (a worker deletes the message in the transaction that writes the
    -- state or the dead letter), so this queues exactly the versions the stale bodies wrote, the
    -- writers already committed at the first step included (issue 25's note).
    IF v_m.backfill_fence IS NULL OR cardinality(v_m.backfill_fence) > 0 THEN
        v_fence := v_m.backfill_fence;
        IF v_fence IS NULL THEN
            SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{}') INTO v_fence
            FROM pg_catalog.pg_locks AS l
            WHERE
                l.locktype = 'relation'
                AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = current_database())
                AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
                AND l.pid IS DISTINCT FROM pg_backend_pid()
                AND (
                    l.relation IN ('pgingest.documents'::regclass, 'pgingest.source_rows'::regclass)
                    OR l.relation IN (SELECT s.relid FROM pgingest.sources AS s WHERE s.id <> 0)
                );
        END IF;
        IF EXISTS (
            SELECT 1 FROM pg_catalog.pg_locks AS l
            WHERE l.locktype = 'virtualxid' AND l.virtualxid = ANY (v_fence)
        ) THEN
            UPDATE pgingest.models SET backfill_fence = v_fence WHERE name = v_m.name;
            RETURN -1;
        END IF;
        -- Every writer it saw has ended: what they registered is visible to this statement.
        EXECUTE format(
            $q$
            SELECT array_agg(jsonb_build_object(
                       'doc_id', d.doc_id, 'hash', encode(d.content_hash, 'hex'), 'attempts', 0,
                       'backfill', TRUE
                   ) ORDER BY d.doc_id)
            FROM pgingest.source_documents AS d
            WHERE d.doc_id > $1
              AND NOT EXISTS (
                  SELECT 1 FROM pgmq.%I AS q
                  WHERE q.message ->> 'doc_id' = d.doc_id::text AND q.message ->> 'hash' = encode(d.content_hash, 'hex')
              )
              AND NOT EXISTS (
                  SELECT 1 FROM pgingest.embedding_state AS e
                  WHERE e.doc_id = d.doc_id AND e.model = $2 AND e.content_hash = d.content_hash
              )
              AND NOT EXISTS (
                  SELECT 1 FROM pgingest.dead_letters AS x
                  WHERE x.doc_id = d.doc_id AND x.model = $2 AND x.content_hash = d.content_hash
              )
            $q$,
            'q_' || v_m.queue_name
        ) INTO v_msgs USING coalesce(v_m.backfill_upto, 0), v_m.name;
        IF v_msgs IS NOT NULL THEN
            PERFORM pgmq.send_batch(v_m.queue_name, v_msgs);
            RAISE LOG 'pgingest: backfill of % queued % version(s) written by captures that ran during its registration',
                v_m.name, cardinality(v_msgs);
        END IF;
        UPDATE pgingest.models SET backfill_fence = '{}' WHERE name = v_m.name;
        IF v_msgs IS NOT NULL THEN
            RETURN cardinality(v_msgs);
        END IF;
    END IF;
    -- Paced on the model's queue (issue 18, item 12): the backfill keeps at most
    -- backfill_max_queue messages ahead of the workers, so that the application's new writes,
    -- queued behind them, keep their freshness. -1: waiting.
    v_max_queue := pgingest._config_seconds('backfill_max_queue', 20000);
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM pgmq.%I LIMIT $1) AS q', 'q_' || v_m.queue_name)
    INTO v_depth USING v_max_queue;
    IF p_paced AND v_depth >= v_max_queue THEN
        RETURN -1;
    END IF;
    SELECT array_agg(d.id ORDER BY d.id), array_agg(d.content_hash ORDER BY d.id), max(d.id)
    INTO v_ids, v_hashes, v_max
    FROM (
        SELECT d.doc_id AS id, d.content_hash FROM pgingest.source_documents AS d
        WHERE d.doc_id > v_m.backfill_cursor AND d.doc_id <= v_m.backfill_upto
        ORDER BY d.doc_id
        LIMIT greatest(p_batch, 1)
    ) AS d;
    IF v_ids IS NULL THEN
        UPDATE pgingest.models SET backfill_completed_at = now() WHERE name = v_m.name;
        RETURN 0;
    END IF;
    -- Marked as a backfill's; a model whose backfills go through the provider's Batch API (issue
    -- 25) gets them hidden for a day: a worker hands them to a provider batch
    -- (provider_batch_open_v1), or they come back to the online path if none does.
    SELECT array_agg(jsonb_build_object(
        'doc_id', x.id, 'hash', encode(x.h, 'hex'), 'attempts', 0,
        'backfill', CASE WHEN v_m.batch_api THEN to_jsonb('bulk'::text) ELSE to_jsonb(TRUE) END
    ))
    INTO v_msgs
    FROM unnest(v_ids, v_hashes) AS x (id, h);
    PERFORM pgmq.send_batch(v_m.queue_name, v_msgs, CASE WHEN v_m.batch_api THEN 86400 ELSE 0 END);
    UPDATE pgingest.models
    SET backfill_cursor = v_max, backfill_queued = backfill_queued + cardinality(v_ids)
    WHERE name = v_m.name;
    RETURN cardinality(v_ids);
END;
$$;

COMMENT ON COLUMN pgingest.models.backfill_fence IS
'NULL until the first backfill step; then the virtual transaction ids of the writers to the captured tables '
'it waits for before it queues the versions registered after backfill_upto that the model has no trace of '
'(written by captures that ran during the registration); empty once done.';

COMMENT ON FUNCTION pgingest.backfill_step_v1(text, integer, boolean) IS
'Queues the next batch of existing documents (of every source) for a model''s backfill and advances its '
'cursor; marks the backfill queued when nothing is left. Returns the number queued (0 when done or busy '
'elsewhere, -1 while the model''s queue holds config backfill_max_queue messages, 20,000 by default, or while '
'the captures that ran when the model was registered have not ended: its fence, migration 0021).';

-- No SET clause here: a procedure with one cannot COMMIT. Every name is schema-qualified.
CREATE OR REPLACE PROCEDURE pgingest.run_backfill(p_model text, p_batch integer DEFAULT 5000)
LANGUAGE plpgsql
AS $$
DECLARE
    v_n integer;
    v_said boolean := FALSE;
BEGIN
    LOOP
        v_n := pgingest.backfill_step_v1(p_model, p_batch, FALSE);
        COMMIT;
        IF v_n = 0 THEN
            -- 0 is "done" and also "busy": a worker's step holds the model's row (the step skips a
            -- locked row, review 2026-12-07, item 6). Done only once the backfill is marked queued
            -- (or the model is gone); else wait for that step and go on.
            EXIT WHEN NOT EXISTS (
                SELECT 1 FROM pgingest.models AS m
                WHERE m.name = p_model AND m.state <> 'retired' AND m.backfill_completed_at IS NULL
            );
            IF NOT v_said THEN
                RAISE NOTICE 'pgingest: the backfill of % is being stepped by a worker (its model row is locked): waiting for it',
                    p_model;
                v_said := TRUE;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.1);
        ELSIF v_n < 0 THEN
            -- Waiting for the captures that ran when the model was registered (its fence).
            PERFORM pg_catalog.pg_sleep(0.05);
        END IF;
    END LOOP;
END;
$$;

COMMENT ON PROCEDURE pgingest.run_backfill (text, integer) IS
'Queues a model''s whole backfill from psql, committing after each batch (workers also do this by themselves). '
'Returns once the backfill is marked queued: while a worker''s backfill step holds the model, it waits for it.';

-- The search view follows the current definition on every install and upgrade (a view created by
-- an earlier version would otherwise keep that version's definition until the next swap).
SELECT pgingest._refresh_search_view();
