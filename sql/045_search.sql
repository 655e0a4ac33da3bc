-- Search over the active model (or a named one): ANN index scans with pgvector 0.8 iterative
-- scans, so selective metadata filters still return k rows.

CREATE OR REPLACE FUNCTION pgingest.search(
    query_vector vector,
    k integer DEFAULT 10,
    filter jsonb DEFAULT '{}',
    per_document boolean DEFAULT false,
    model text DEFAULT NULL
)
RETURNS TABLE (
    doc_id bigint,
    doc_key text,
    title text,
    ordinal integer,
    content text,
    distance double precision,
    metadata jsonb,
    model_name text
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
SET ivfflat.iterative_scan = 'relaxed_order'
AS $$
#variable_conflict use_column
DECLARE
    v_m pgingest.models;
    v_op text;
    v_type text;
    v_limit integer;
BEGIN
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'pgingest: k must be between 1 and 1000, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF filter IS NOT NULL AND jsonb_typeof(filter) <> 'object' THEN
        RAISE EXCEPTION 'pgingest: filter must be a JSON object, not %', jsonb_typeof(filter)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF search.model IS NULL THEN
        SELECT * INTO v_m FROM pgingest.models AS m WHERE m.state = 'active';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pgingest: no active model'
                USING ERRCODE = 'undefined_object',
                      HINT = 'Register one with pgingest.register_model(...).';
        END IF;
    ELSE
        v_m := pgingest._model(search.model);
    END IF;
    IF vector_dims(query_vector) <> v_m.dimensions THEN
        RAISE EXCEPTION 'pgingest: the query vector has % dimensions, model % has %',
            vector_dims(query_vector), v_m.name, v_m.dimensions
            USING ERRCODE = 'data_exception';
    END IF;
    v_op := pgingest._distance_operator(v_m.metric);
    v_type := pgingest._column_type(v_m);
    v_limit := CASE WHEN per_document THEN least(k * 8, 8000) ELSE k END;

    RETURN QUERY EXECUTE format(
        $sql$
        WITH hits AS MATERIALIZED (
            SELECT c.doc_id, c.ordinal, c.content, (c.%1$I %2$s $1::%3$s)::float8 AS distance
            FROM pgingest.chunks AS c
            INNER JOIN pgingest.documents AS d ON d.id = c.doc_id
            WHERE c.%1$I IS NOT NULL AND ($3 IS NULL OR $3 = '{}'::jsonb OR d.metadata @> $3)
            ORDER BY c.%1$I %2$s $1::%3$s
            LIMIT $2
        ), ranked AS (
            SELECT h.*, row_number() OVER (PARTITION BY h.doc_id ORDER BY h.distance) AS rn
            FROM hits AS h
        )
        SELECT r.doc_id, d.key, d.title, r.ordinal, r.content, r.distance, d.metadata, %4$L::text
        FROM ranked AS r
        INNER JOIN pgingest.documents AS d ON d.id = r.doc_id
        WHERE NOT $4 OR r.rn = 1
        ORDER BY r.distance
        LIMIT $5
        $sql$,
        v_m.column_name, v_op, v_type, v_m.name
    ) USING query_vector, v_limit, filter, per_document, k;
END;
$$;

COMMENT ON FUNCTION pgingest.search(vector, integer, jsonb, boolean, text) IS
'Nearest chunks to a query vector under the active model (or `model`), optionally filtered by a '
'metadata containment filter (jsonb @>) and grouped one row per document. distance is the model''s '
'metric (cosine distance, negative inner product or L2).';
