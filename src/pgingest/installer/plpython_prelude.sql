-- Installer template: the start of pgingest install --plpython-only (a superuser's follow-up to
-- an install by a non-superuser owner): the lock, checks, plpython3u, the routines' search_path.
-- :install_lock_key             pg_advisory_xact_lock key (install.INSTALL_LOCK_KEY)
-- Lint: the search_path statement keeps trailing noqa comments (not rendered); it stays as the
-- installer printed it before the templates existed (INNER JOIN, TRUE, the layout: AM05, ST09,
-- CP04, LT02); the same statement is in prelude.sql.

SELECT pg_advisory_xact_lock(:install_lock_key);
DO $pgingest_install$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'pgingest: the PL/Python functions can only be created by a superuser, not %', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'plpython3u is an untrusted language. Run this as a superuser.';
    END IF;
    IF to_regclass('pgingest.schema_migrations') IS NULL THEN
        RAISE EXCEPTION 'pgingest is not installed in database %', current_database()
            USING ERRCODE = 'undefined_object',
                  HINT = 'The owner installs it first: pgingest install (or psql -f install.sql).';
    END IF;
END;
$pgingest_install$;
CREATE EXTENSION IF NOT EXISTS plpython3u;
SELECT set_config(
    'search_path',
    format('pg_catalog, %I, pg_temp', (
        SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace  -- noqa: AM05, ST09
        WHERE e.extname = 'vector')),  -- noqa: LT02
    true);  -- noqa: CP04, LT02
