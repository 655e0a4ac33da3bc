-- Installer template: the first statement of pgingest install --chunk-partitions N, read by
-- migrations/0001_initial.sql (the first install) and partitions_check.sql (later ones).
-- :chunk_partitions             N, as text
-- Lint: noqa PRS (not rendered): sqlfluff's postgres dialect does not parse SET of a dotted
-- (custom) setting.

SET LOCAL pgingest.chunk_partitions = :chunk_partitions;  -- noqa: PRS
