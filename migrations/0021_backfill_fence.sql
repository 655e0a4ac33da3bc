-- pgingest 0021: a new model's backfill waits for the captures that were running when it was
-- registered.
--
-- register_model recompiles the capture triggers so that they queue for the new model, and takes
-- pgingest.documents and pgingest.source_rows in SHARE mode so that every version is either
-- visible to the backfill (doc_id <= backfill_upto) or queued by a capture that knows the new
-- model. An attached table's capture takes its lock on source_rows only inside the trigger,
-- after it has loaded its compiled body: a write whose trigger started while the model was being
-- registered waits for the lock, then runs the body it loaded, which queues for the models that
-- were live before, and registers its rows after backfill_upto was read. The first backfill step
-- now records the transactions writing to the captured tables (backfill_fence, their virtual
-- transaction ids), waits until they have ended, and only then raises backfill_upto to the
-- newest doc_id, so that the versions they wrote are in the backfill.
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.models ADD COLUMN backfill_fence text[];

COMMENT ON COLUMN pgingest.models.backfill_fence IS
'NULL until the first backfill step; then the virtual transaction ids of the writers to the captured tables '
'it waits for before it raises backfill_upto to the newest doc_id; empty once done.';

-- Models registered before this version: nothing to wait for any more.
UPDATE pgingest.models SET backfill_fence = '{}';
