-- Installer template: one file of plpython/ in pgingest install, applied only by a superuser and
-- skipped with a WARNING otherwise (plpython3u is untrusted).
-- :file_name                    the file's name (010_plpython.sql)
-- :plpython_body                the file's text, dollar-quoted
-- :probe                        the name of the file's first function (NULL if none): installed
--                               earlier by a superuser when it exists
-- :function_names               its public functions, for the WARNING ("embed_query(), ...")

-- plpython/:file_name: PL/Python is untrusted, so only a superuser creates these functions.
DO $pgingest_install$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        EXECUTE :plpython_body;
    ELSIF EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'pgingest'::regnamespace AND p.proname = :probe
    ) THEN
        RAISE WARNING 'pgingest: plpython/:file_name not re-applied: % is not a superuser; the PL/Python functions installed earlier are kept as they are',
            current_user
            USING HINT = 'After an upgrade a superuser refreshes them: pgingest install --plpython-only '
                         '(or psql -f of pgingest install --plpython-only --print).';
    ELSE
        RAISE WARNING 'pgingest: plpython/:file_name skipped: % is not a superuser (plpython3u is untrusted): :function_names are not installed; everything else works',
            current_user
            USING HINT = 'A superuser adds them: pgingest install --plpython-only '
                         '(or psql -f of pgingest install --plpython-only --print). Without them, search with '
                         'text from the client: pgingest search, or pgingest.search.embed_query() then '
                         'pgingest.search(vector) (docs/deployment.md, "Managed PostgreSQL").';
    END IF;
END;
$pgingest_install$;
