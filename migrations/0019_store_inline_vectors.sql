-- pgingest 0019: a model's store keeps vectors of up to ~4 KB inside its rows (issue 19, the
-- database CPU per stored chunk). pgvector's vector and halfvec have storage EXTERNAL: a row over
-- 2 KB (a vector(768) is 3 KB) had its vector moved to the TOAST table, two TOAST rows and two
-- TOAST index entries written per chunk, and read back on every read of the vector. With
-- toast_tuple_target = 4080 rows of up to ~4 KB stay inline (two a page: vector up to ~1,000
-- dimensions, halfvec up to ~2,000); larger vectors are stored out of line as before. Measured:
-- 34 -> 27 us of backend CPU per row of the store's upsert (768 dimensions). New stores get it
-- from pgingest._create_store; the rows already stored stay where they are.
DO $$
DECLARE
    v_rel regclass;
BEGIN
    -- The tables that hold a store's rows: the store, or its partitions (pg_partition_tree
    -- lists nothing for a table that is not partitioned).
    FOR v_rel IN
        SELECT c.oid::regclass
        FROM pgingest.models AS m
        INNER JOIN pg_catalog.pg_class AS c
            ON c.oid = to_regclass(format('pgingest.%I', m.store_name))
            OR c.oid IN (
                SELECT t.relid FROM pg_catalog.pg_partition_tree(to_regclass(format('pgingest.%I', m.store_name))) AS t
            )
        WHERE c.relkind = 'r'
        ORDER BY c.oid
    LOOP
        EXECUTE format('ALTER TABLE %s SET (toast_tuple_target = 4080)', v_rel);
    END LOOP;
END;
$$;
