-- Installer template: run by python_path.sql (a superuser only) right after the bootstrap: the
-- entries it skipped (not on the database server, or out of the server user's reach) are no
-- error, but PL/Python will not find pgingest there.

DO LANGUAGE plpython3u $pgingest_skipped$
for entry in GD.get("pgingest_path_skipped") or []:
    plpy.warning(
        "pgingest: python_path entry " + repr(entry) + " skipped: not on the database server, "
        "or the server user cannot reach it",
        hint="PL/Python imports pgingest from the server: pass --python-path with its folder there.",
    )
$pgingest_skipped$;
