-- Installer template: the end of pgingest install and of --plpython-only (issue 18, item 4).
-- Only a superuser decides where PL/Python imports pgingest from: another role's install leaves
-- the PL/Python functions and their path as they are (and warns if they predate this rule). When a superuser owns pgingest.config (it
-- installed pgingest itself) the path is recorded there, and the bootstrap reads it; otherwise
-- (the DBA-managed mode: the owner is not a superuser) the path is baked into the bootstrap.
-- Then the bootstrap runs once: an unsafe entry fails the install here, a missing one warns.
-- :python_path                  the entries, ':'-separated (install.python_path_entries checked)
-- :bootstrap_from_config        plpy_bootstrap.sql with nothing baked, dollar-quoted
-- :bootstrap_baked              plpy_bootstrap.sql with the entries baked, dollar-quoted
-- :skipped_warning              a DO block (plpython3u) warning of the entries it skipped

DO $pgingest_install$
BEGIN
    IF to_regprocedure('pgingest._plpy_bootstrap()') IS NULL THEN
        RETURN;
    END IF;
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        -- A bootstrap from before the check (no BAKED list) trusts whoever writes pgingest.config.
        IF (SELECT p.prosrc !~ 'BAKED = ' FROM pg_catalog.pg_proc AS p WHERE p.oid = 'pgingest._plpy_bootstrap()'::regprocedure) THEN
            RAISE WARNING 'pgingest: the PL/Python functions import pgingest from pgingest.config''s python_path, which % can change: a superuser must refresh them',
                current_user
                USING HINT = 'pgingest install --plpython-only --python-path DIR, as a superuser (docs/deployment.md).';
        END IF;
        RETURN;
    END IF;
    IF (SELECT r.rolsuper FROM pg_catalog.pg_class AS t
        INNER JOIN pg_catalog.pg_roles AS r ON r.oid = t.relowner
        WHERE t.oid = 'pgingest.config'::regclass) THEN
        INSERT INTO pgingest.config AS c (key, value) VALUES ('python_path', :python_path)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now();
        EXECUTE :bootstrap_from_config;
    ELSE
        EXECUTE :bootstrap_baked;
    END IF;
    PERFORM pgingest._plpy_bootstrap();
    EXECUTE :skipped_warning;
END;
$pgingest_install$;
