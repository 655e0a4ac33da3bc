-- pgingest 0022: raw-document sources (issue 22, phase 2).
--
-- A source may map, instead of a text column or a template, a bytea column of document bytes
-- (content_column) or a text column of URIs (uri_column: file://, https://, s3://), with an
-- optional MIME column that overrides type detection. The capture queues the row as before (its
-- version hash covers the sha256 of the bytes, or the URI and MIME type); the queue never holds
-- bytes. The worker reads the bytea or fetches the URI itself, parses it in a child process and
-- records here what it found: the sha256 of the bytes, the store's ETag and Last-Modified, when,
-- the class of the last parse error, the version those bytes were parsed for and the document's
-- structure (page and heading offsets in the parsed text, from which a chunk's page span and
-- heading path are derived).
--
-- pgingest.raw_allowlist: where the worker may fetch from, written only by admins (through
-- pgingest.allow_raw_location()), read by the worker; added to what the worker's environment
-- allows. A URI written by an application reaches nothing else.
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.sources
ADD COLUMN content_column text,
ADD COLUMN uri_column text,
ADD COLUMN mime_column text,
ADD COLUMN paused_at timestamptz,
ADD COLUMN paused_reason text;

ALTER TABLE pgingest.sources DROP CONSTRAINT sources_body_or_template;
ALTER TABLE pgingest.sources ADD CONSTRAINT sources_one_mapping CHECK (
    num_nonnulls(body_column, template, content_column, uri_column) = 1 OR id = 0
);
ALTER TABLE pgingest.sources ADD CONSTRAINT sources_mime_needs_raw CHECK (
    mime_column IS NULL OR content_column IS NOT NULL OR uri_column IS NOT NULL
);

COMMENT ON COLUMN pgingest.sources.content_column IS
'A bytea column holding each row''s document (PDF, DOCX, HTML, Markdown, text): parsed by the worker.';
COMMENT ON COLUMN pgingest.sources.uri_column IS
'A text column of URIs (file://, https://, s3://) the worker fetches, within the allow-list '
'(pgingest.raw_allowlist and the worker''s environment).';
COMMENT ON COLUMN pgingest.sources.mime_column IS
'A text column whose MIME type, when not NULL, overrides the type detection of a raw document.';
COMMENT ON COLUMN pgingest.sources.paused_reason IS
'Why the worker stopped fetching this source (an access error for the whole bucket or host); '
'pgingest.resume_source() clears it.';

ALTER TABLE pgingest.source_rows
ADD COLUMN sha256 bytea,
ADD COLUMN etag text,
ADD COLUMN last_modified text,
ADD COLUMN fetched_at timestamptz,
ADD COLUMN parse_error_class text,
ADD COLUMN parsed_version bytea,
ADD COLUMN refreshed_from bytea,
ADD COLUMN structure jsonb;

ALTER TABLE pgingest.source_rows ADD CONSTRAINT source_rows_parse_error_class_format CHECK (
    parse_error_class ~ '^[a-z][a-z0-9_]*$'
);

COMMENT ON COLUMN pgingest.source_rows.sha256 IS
'Raw sources: the sha256 of the bytes the worker last fetched and parsed.';
COMMENT ON COLUMN pgingest.source_rows.etag IS
'Raw sources: the store''s ETag of the last fetch (conditional requests, source sync).';
COMMENT ON COLUMN pgingest.source_rows.last_modified IS
'Raw sources: the store''s Last-Modified of the last fetch (an HTTP date).';
COMMENT ON COLUMN pgingest.source_rows.fetched_at IS 'Raw sources: when the worker last fetched the document.';
COMMENT ON COLUMN pgingest.source_rows.parse_error_class IS
'Raw sources: the class of the last fetch or parse failure (NULL after a success).';
COMMENT ON COLUMN pgingest.source_rows.parsed_version IS
'Raw sources: the version (content_hash) for which the bytes of sha256 were parsed.';
COMMENT ON COLUMN pgingest.source_rows.refreshed_from IS
'Raw sources: the version before pgingest.refresh_source_rows() queued a re-check; restored when the '
'bytes turn out unchanged.';
COMMENT ON COLUMN pgingest.source_rows.structure IS
'Raw sources: where pages and headings start in the parsed text ({"pages": [[offset, page], ...], '
'"headings": [[offset, [heading, ...]], ...]}); pgingest.chunk_location() maps a chunk onto it.';

CREATE TABLE pgingest.raw_allowlist (
    kind text NOT NULL,
    value text NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    added_by name NOT NULL DEFAULT current_user,
    CONSTRAINT raw_allowlist_pkey PRIMARY KEY (kind, value),
    CONSTRAINT raw_allowlist_kind CHECK (kind IN ('root', 'host', 'http_host', 'network', 'bucket')),
    CONSTRAINT raw_allowlist_value_nonblank CHECK (btrim(value) <> '' AND length(value) <= 1024)
);

COMMENT ON TABLE pgingest.raw_allowlist IS
'Where the worker may fetch raw documents from, besides what its environment allows: file roots '
'(root), https hosts (host; ".example.com" for its subdomains), hosts also reachable over plain http '
'(http_host), non-public networks opened explicitly (network, CIDR) and S3 buckets (bucket). Written '
'by admins through pgingest.allow_raw_location() and disallow_raw_location() only.';
