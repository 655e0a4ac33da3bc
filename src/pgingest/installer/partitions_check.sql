-- Installer template: after the migrations. An explicit partition count must match the table
-- (it is fixed at the first install; an upgrade run with another count must not pass silently).

DO $pgingest_install$
DECLARE
    v_want text := nullif(current_setting('pgingest.chunk_partitions', true), '');
    v_have integer;
BEGIN
    IF v_want IS NULL OR to_regclass('pgingest.chunks') IS NULL THEN
        RETURN;
    END IF;
    SELECT count(*) INTO v_have FROM pg_catalog.pg_inherits AS i WHERE i.inhparent = 'pgingest.chunks'::regclass;
    IF v_have <> v_want::integer THEN
        RAISE EXCEPTION 'pgingest: pgingest.chunks has % partitions, not %', v_have, v_want
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The partition count is chosen at the first install (--chunk-partitions); '
                         'install again without the option.';
    END IF;
END;
$pgingest_install$;
