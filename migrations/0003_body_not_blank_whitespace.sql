-- pgingest 0003: documents_body_not_blank trims whitespace, not the letter v.
-- 0001 wrote btrim(body, E' \t\r\n\f\v'), but \v is no escape in PostgreSQL: the set held the
-- letter v, so a body 'v' was refused and a body of vertical tabs accepted. NOT VALID: rows
-- accepted before are not re-checked (a body of vertical tabs is dead-lettered as empty).
-- Run once by the installer (tracked in pgingest.schema_migrations); never edit after release.

ALTER TABLE pgingest.documents DROP CONSTRAINT documents_body_not_blank;
ALTER TABLE pgingest.documents ADD CONSTRAINT documents_body_not_blank
CHECK (btrim(body, E' \t\r\n\f\x0b') <> '') NOT VALID;
