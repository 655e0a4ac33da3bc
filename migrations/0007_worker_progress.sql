-- pgingest 0007: worker progress: when the worker's main loop last completed a pass, so that a
-- worker whose heartbeat thread beats while its main loop hangs is reported stuck.
-- Run once by the installer (tracked in pgingest.schema_migrations); never edit after release.

ALTER TABLE pgingest.workers ADD COLUMN last_tick_at timestamptz;

COMMENT ON COLUMN pgingest.workers.last_tick_at IS
'When the worker''s main loop last completed a pass over its models (reported by heartbeat_v2; NULL '
'for a worker that calls heartbeat_v1). Older than config worker_stuck_after_seconds while the '
'heartbeat is fresh: the worker is stuck (pgingest.worker_status.stuck).';

INSERT INTO pgingest.config (key, value) VALUES
('worker_stuck_after_seconds', '600')
ON CONFLICT (key) DO NOTHING;
