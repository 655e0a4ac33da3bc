-- pgingest 0011: an unambiguous content hash for pgingest.documents (issue 18, item 14).
--
-- content_hash = sha256(coalesce(title, '') || chr(30) || body): a title holding chr(30) could
-- move text across the boundary with the same hash, and that UPDATE was not queued. Refusing
-- chr(30) in new and updated titles makes the encoding unambiguous without changing any stored
-- hash (changing the formula would rewrite the table and re-embed every document:
-- docs/reliability.md). NOT VALID: existing rows are not scanned (nor refused).
-- Attached tables hash with a length prefix instead (pgingest._source_hash): nothing refused there.
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.documents
ADD CONSTRAINT documents_title_no_record_separator CHECK (title IS NULL OR strpos(title, chr(30)) = 0) NOT VALID;
