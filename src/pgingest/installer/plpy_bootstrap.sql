-- Installer template: pgingest._plpy_bootstrap(), created by a superuser in place of the one in
-- plpython/ (python_path.sql runs it). Where PL/Python imports pgingest from decides which code
-- runs as the server's operating-system user, so only a superuser chooses it (issue 18, item 4):
-- the entries are baked into this body (the schema's owner, not a superuser in the DBA-managed
-- mode, cannot replace a plpython3u body), or, when nothing is baked, read from pgingest.config
-- only while a superuser owns that table and no other role may write it.
-- :entries                      the baked entries, a Python list of strings (json.dumps): [] to
--                               read pgingest.config
-- Every entry is checked when a session first runs a PL/Python function: absolute and normal;
-- it and each folder above it (and above its resolved path) owned by root or by the server's
-- own user; itself not writable by group or others, the folders above only if sticky (/tmp).
-- One that breaks a rule is refused (an error); one the server cannot reach is skipped. Entries
-- go into sys.path after the standard library, ahead of the server Python's site folders.

CREATE OR REPLACE FUNCTION pgingest._plpy_bootstrap()
RETURNS void
LANGUAGE plpython3u
VOLATILE
SET search_path FROM CURRENT
AS $pgingest_bootstrap$
import os
import stat
import sys

BAKED = :entries
HINT = (
    "A superuser chooses where PL/Python imports pgingest from: pgingest install --plpython-only "
    "--python-path DIR (a folder that only root or the server user can write; docs/deployment.md)."
)


def refuse(entry, why):
    plpy.error(
        "pgingest: python_path entry " + repr(entry) + " refused: " + why,
        hint=HINT,
        sqlstate="42501",
    )


def config_entries():
    rows = plpy.execute(
        "SELECT c.value FROM pgingest.config AS c WHERE c.key = 'python_path'"
        " AND (SELECT r.rolsuper FROM pg_catalog.pg_class AS t"
        " INNER JOIN pg_catalog.pg_roles AS r ON r.oid = t.relowner"
        " WHERE t.oid = 'pgingest.config'::regclass)"
        " AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS t"
        " CROSS JOIN LATERAL pg_catalog.aclexplode(t.relacl) AS a"
        " LEFT JOIN pg_catalog.pg_roles AS r ON r.oid = a.grantee"
        " WHERE t.oid = 'pgingest.config'::regclass"
        " AND a.privilege_type IN ('INSERT', 'UPDATE')"
        " AND NOT coalesce(r.rolsuper, FALSE))"
    )
    return rows[0]["value"].split(os.pathsep) if rows else []


def folders(path):
    parts = [p for p in path.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[0 : i + 1]) for i in range(len(parts))]


def check(entry, trusted):
    if not os.path.isabs(entry) or os.path.normpath(entry) != entry:
        refuse(entry, "not an absolute, normalised path")
    try:
        real = os.path.realpath(entry, strict=True)
    except OSError:
        return False
    for path in folders(entry) + folders(real):
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_uid not in trusted:
            refuse(entry, path + " is owned by uid " + str(st.st_uid) + ", not root or the server user")
        leaf = path in (entry, real)
        if st.st_mode & 0o022 and (leaf or not st.st_mode & stat.S_ISVTX):
            refuse(entry, path + " is writable by its group or by others")
    return True


trusted = {0, os.geteuid()}
skipped = []
# After the standard library, ahead of the server Python site folders: nothing here can stand in
# for a standard-library module, and pgingest keeps the dependency versions it was installed
# with (Debian 12 has urllib3 1.26, pgingest needs 2).
site_dirs = [i for i, p in enumerate(sys.path) if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
at = site_dirs[0] if site_dirs else len(sys.path)
for entry in BAKED or config_entries():
    if not entry:
        continue
    if check(entry, trusted):
        if entry not in sys.path:
            sys.path.insert(at, entry)
            at += 1
    else:
        skipped.append(entry)
GD["pgingest_path_skipped"] = skipped
GD["pgingest_path_ready"] = True
return None
$pgingest_bootstrap$;

COMMENT ON FUNCTION pgingest._plpy_bootstrap() IS
'Appends where pgingest is to the PL/Python sys.path (once per session), as a superuser chose it: baked into this '
'body by pgingest install --plpython-only, or pgingest.config''s python_path while a superuser owns that table. '
'Refuses an entry that someone other than root or the server user could change.';
