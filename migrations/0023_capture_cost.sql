-- pgingest 0023: the wake-up generation (issue 19): a cheap test for "has a worker gone to sleep?".
--
-- The capture used to read pgingest.wakeups on every statement that queued something (a scan of
-- the table, ~15 us of a single-row statement). worker_idle_v1 now takes the next value of this
-- sequence each time a worker says it waits; a session whose last check of pgingest.wakeups found
-- no worker to wake skips the check while the generation is unchanged, for the rest of that
-- second (pgingest._capture_queue_sql). Reading a sequence's last value is a page read, no scan.
-- Run once by the installer; never edit after release.

CREATE SEQUENCE pgingest.wakeup_generation AS bigint CYCLE;

COMMENT ON SEQUENCE pgingest.wakeup_generation IS
'Taken by worker_idle_v1 each time a worker says it waits: the capture re-reads pgingest.wakeups when it '
'changed (else at most once a second per session).';
