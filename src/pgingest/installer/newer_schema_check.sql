-- Installer template: after prelude.sql (and plpython_prelude.sql), under the install lock. A
-- database whose schema_migrations records a migration this package does not ship was installed
-- by a newer pgingest: installing this one over it would put the older routines back while the
-- records still say "newer". Refused (nothing changed: one transaction). pgmq's recorded scripts
-- (pgmq--<version>) are not migrations: pgmq_sql_check.sql checks them.
-- :shipped_migrations           the versions of this package's migrations/, comma-separated
-- :schema_version               the latest of them (install.schema_version)

DO $pgingest_install$
DECLARE
    v_shipped text[] := string_to_array(:shipped_migrations, ',');
    v_unknown text[];
BEGIN
    IF to_regclass('pgingest.schema_migrations') IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(m.version ORDER BY m.version) INTO v_unknown
    FROM pgingest.schema_migrations AS m
    WHERE m.version NOT LIKE 'pgmq--%' AND m.version <> ALL (v_shipped);
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'pgingest: this pgingest is older than the database''s schema: database % records migration % that this package does not ship (it ships up to :schema_version); upgrade the package',
            current_database(), array_to_string(v_unknown, ', ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Installing it would replace the newer routines with older ones. Nothing was changed.',
                  HINT = 'Install the pgingest version that applied those migrations (or a later one) on this host, then run pgingest install again.';
    END IF;
END;
$pgingest_install$;
