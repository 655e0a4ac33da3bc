-- Installer template: after prelude.sql (and plpython_prelude.sql). Every routine pins
-- search_path = pg_catalog, <the vector extension's schema>, pg_temp: whoever may create objects
-- in that schema can add a function or operator that a routine's call resolves to (an exact
-- argument-type match beats pg_catalog's variadic or implicitly cast one, whatever the schema
-- order; CVE-2018-1058), and it then runs inside SECURITY DEFINER routines as the owner of
-- pgingest, or inside a superuser's PL/Python call. Clusters upgraded from PostgreSQL 14 or older
-- keep CREATE ON SCHEMA public TO PUBLIC. Refused unless the install opts out (issue 18, item 8).
-- Trusted: superusers, the installing role, the owner of schema pgingest (when --plpython-only
-- runs as a superuser: it owns the routines already) and the roles that can act as either.
-- :allow_public_create          TRUE (--allow-public-create: a WARNING) or FALSE (an error)

DO $pgingest_install$
DECLARE
    v_schema name := (
        SELECT n.nspname FROM pg_catalog.pg_extension AS e
        INNER JOIN pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace
        WHERE e.extname = 'vector'
    );
    v_owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'pgingest');
    v_who text[];
BEGIN
    IF has_schema_privilege('public', v_schema, 'CREATE') THEN
        v_who := ARRAY['PUBLIC'];
    ELSE
        SELECT array_agg(quote_ident(r.rolname) ORDER BY r.rolname) INTO v_who
        FROM pg_catalog.pg_roles AS r
        WHERE NOT r.rolsuper
            AND r.rolname !~ '^pg_'
            AND NOT pg_has_role(r.oid, current_user, 'MEMBER')
            AND NOT (v_owner IS NOT NULL AND pg_has_role(r.oid, v_owner, 'MEMBER'))
            AND has_schema_privilege(r.oid, v_schema, 'CREATE');
    END IF;
    IF v_who IS NULL THEN
        RETURN;
    ELSIF :allow_public_create THEN
        RAISE WARNING 'pgingest: % may create objects in schema %, where the vector extension lives: installed anyway (--allow-public-create)',
            array_to_string(v_who[1:20], ', '), quote_ident(v_schema)
            USING DETAIL = 'pgingest''s routines pin search_path = pg_catalog, ' || quote_ident(v_schema) || ', pg_temp: '
                           'a function or operator created there can run inside its SECURITY DEFINER routines.',
                  HINT = format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC; (and from those roles), then install again.', v_schema);
    ELSE
        RAISE EXCEPTION 'pgingest: % may create objects in schema %, where the vector extension lives',
            array_to_string(v_who[1:20], ', ') || CASE WHEN cardinality(v_who) > 20 THEN ', ...' ELSE '' END,
            quote_ident(v_schema)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'pgingest''s routines pin search_path = pg_catalog, ' || quote_ident(v_schema) || ', pg_temp: '
                           'a function or operator created there (for example format(text, text, text)) would run inside '
                           'its SECURITY DEFINER routines with the rights of the owner of pgingest. Clusters upgraded from '
                           'PostgreSQL 14 or older keep CREATE ON SCHEMA public TO PUBLIC.',
                  HINT = format('A superuser or the schema''s owner runs: REVOKE CREATE ON SCHEMA %I FROM PUBLIC; (and from '
                                'the roles named), then install again. To install anyway (not advised): '
                                'pgingest install --allow-public-create.', v_schema);
    END IF;
END;
$pgingest_install$;
