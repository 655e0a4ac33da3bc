-- Installer template: pgingest install --print-superuser-setup OWNER (docs/deployment.md).
-- :owner                        the owner role, quoted as an identifier
-- :pgmq_schema_privileges       install.PGMQ_SCHEMA_PRIVILEGES (USAGE, CREATE)
-- :pgmq_meta_privileges         install.PGMQ_META_PRIVILEGES (SELECT, INSERT, DELETE)
-- Lint: noqa PRS (not rendered): sqlfluff's postgres dialect does not parse GRANT of a role
-- to a role.

-- pgingest: run once by a superuser, connected to the target database.
-- 1. The extensions (vector and plpython3u are not trusted extensions: superuser only).
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pgmq;
CREATE EXTENSION IF NOT EXISTS plpython3u;
-- 2. The owner of pgingest creates and drops one pgmq queue per model (tables in schema pgmq,
--    rows in pgmq.meta).
GRANT :pgmq_schema_privileges ON SCHEMA pgmq TO :owner;
GRANT :pgmq_meta_privileges ON pgmq.meta TO :owner;
-- 3. The group roles (cluster-wide: once per cluster), which the owner then grants to logins.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[
        'pgingest_writer', 'pgingest_reader', 'pgingest_worker', 'pgingest_monitor', 'pgingest_admin'
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END;
$$;
GRANT pgingest_reader, pgingest_monitor TO pgingest_admin;  -- noqa: PRS
GRANT pgingest_writer, pgingest_reader, pgingest_worker, pgingest_monitor, pgingest_admin
TO :owner WITH ADMIN OPTION;
-- 4. The owner needs CREATE on the database (to create schema pgingest): it has it when it owns
--    the database; otherwise: GRANT CREATE ON DATABASE <this database> TO :owner;
-- Then, as :owner: pgingest install (or psql -f install.sql); afterwards, as a superuser:
-- pgingest install --plpython-only (the PL/Python functions).
