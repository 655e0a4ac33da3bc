-- Installer template: the end of pgingest install --plpython-only. The routines a superuser
-- created go to the owner of schema pgingest: its later installs then manage their grants (and
-- DROP SCHEMA ... CASCADE removes them). Their bodies stay superuser-only.

DO $pgingest_install$
DECLARE
    v_routine regprocedure;
    v_owner name := (SELECT pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pgingest');
BEGIN
    FOR v_routine IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pgingest'::regnamespace AND pg_get_userbyid(p.proowner) <> v_owner
        ORDER BY 1
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', v_routine, v_owner);
    END LOOP;
END;
$pgingest_install$;
