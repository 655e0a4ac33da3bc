-- pgingest 0025: pgingest.source_rows loses its foreign key to pgingest.sources (issue 19,
-- attached tables' capture).
--
-- Every row the capture of an attached table registers (a single-row INSERT of the application:
-- one) ran the foreign key's check: a query by SPI and a FOR KEY SHARE lock on the source's row
-- in pgingest.sources, which every writing transaction of that table shares (a MultiXact as soon
-- as two write at once, and a WAL record for the lock). ~20 us of the backend's CPU of a
-- single-row INSERT (4 clients, alternated: 205-225 us a statement with it, 180-187 without).
-- Nothing needs it: only the capture and the backfill (sql/015_sources.sql) and pgai's adoption
-- (right after its add_source) insert registry rows, each for a source it has just read from
-- pgingest.sources, and remove_source drops the table's
-- capture triggers (waiting for its writers) before _detach_source deletes the source's rows and
-- then the source.
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.source_rows DROP CONSTRAINT source_rows_source_fkey;
