-- Installer template: pgingest install --plan (and the plan every CLI install prints first). What
-- the server offers and what the connected role may do, as one JSON object (install.detect); it
-- changes nothing. Then detect_pgmq.sql where pgingest.schema_migrations exists.

SELECT
    json_build_object(
        'server_version', current_setting('server_version'),
        'database', current_database(),
        'role', current_user,
        'superuser', r.rolsuper,
        'createrole', r.rolcreaterole,
        'create_on_database', has_database_privilege(current_database(), 'CREATE'),
        'wal_level', current_setting('wal_level'),
        'schema_owner', (
            SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n
            WHERE n.nspname = 'pgingest'
        ),
        'pgmq_schema', to_regnamespace('pgmq') IS NOT NULL,
        'pgmq_rights', to_regclass('pgmq.meta') IS NOT NULL
        AND has_schema_privilege('pgmq', 'USAGE, CREATE')
        AND has_table_privilege('pgmq.meta', 'SELECT, INSERT, DELETE'),
        'migrations_table', to_regclass('pgingest.schema_migrations') IS NOT NULL,
        'roles', (
            SELECT
                json_object_agg(
                    w.name,
                    json_build_object(
                        'exists', g.oid IS NOT NULL,
                        'admin', g.oid IS NOT NULL AND pg_has_role(current_user, g.oid, 'USAGE WITH ADMIN OPTION')
                    )
                )
            FROM
                unnest(ARRAY[
                    'pgingest_writer', 'pgingest_reader', 'pgingest_worker', 'pgingest_monitor', 'pgingest_admin'
                ]) AS w (name)
            LEFT JOIN pg_roles AS g ON w.name = g.rolname
        ),
        'extensions', (
            SELECT
                json_object_agg(
                    w.name,
                    json_build_object(
                        'available', a.default_version,
                        'installed', e.extversion,
                        'superuser', coalesce(v.superuser, TRUE),
                        'trusted', coalesce(v.trusted, FALSE)
                    )
                )
            FROM unnest(ARRAY['vector', 'pgmq', 'plpython3u']) AS w (name)
            LEFT JOIN pg_available_extensions AS a ON w.name = a.name
            LEFT JOIN pg_available_extension_versions AS v ON w.name = v.name AND a.default_version = v.version
            LEFT JOIN pg_extension AS e ON w.name = e.extname
        )
    )
FROM pg_roles AS r
WHERE r.rolname = current_user;
