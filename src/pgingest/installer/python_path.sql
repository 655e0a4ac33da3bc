-- Installer template: the end of pgingest install and of --plpython-only.
-- :python_path                  where the server's PL/Python imports pgingest from (':'-separated)
-- Lint: a noqa comment (not rendered): the statement stays on one line, with EXCLUDED, as the installer
-- printed it before the templates existed (LT05, CP02).

-- Where PL/Python imports pgingest from (edit for another server layout).
INSERT INTO pgingest.config (key, value) VALUES ('python_path', :python_path) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();  -- noqa: LT05, CP02
