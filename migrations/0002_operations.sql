-- pgingest 0002: operations: worker heartbeats and the settings of the status views.
-- Run once by the installer (tracked in pgingest.schema_migrations); never edit after release.

CREATE TABLE pgingest.workers (
    id uuid NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now(),
    models text[] NOT NULL DEFAULT '{}',
    in_flight integer NOT NULL DEFAULT 0,
    batch_size integer,
    documents bigint NOT NULL DEFAULT 0,
    last_batch_at timestamptz,
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT workers_pkey PRIMARY KEY (id),
    CONSTRAINT workers_host_length CHECK (octet_length(host) BETWEEN 1 AND 255),
    CONSTRAINT workers_version_length CHECK (octet_length(version) BETWEEN 1 AND 64),
    CONSTRAINT workers_pid_positive CHECK (pid > 0),
    CONSTRAINT workers_in_flight_nonnegative CHECK (in_flight >= 0),
    CONSTRAINT workers_batch_size_positive CHECK (batch_size IS NULL OR batch_size > 0),
    CONSTRAINT workers_documents_nonnegative CHECK (documents >= 0),
    CONSTRAINT workers_details_is_object CHECK (jsonb_typeof(details) = 'object')
);

COMMENT ON TABLE pgingest.workers IS
'Worker heartbeats, one row per running worker process, upserted by pgingest.heartbeat_v1() every few '
'seconds and deleted by pgingest.worker_exit_v1() on a clean stop. A row whose last_seen is older than '
'config worker_stale_after_seconds is stale (the process died or hangs); rows silent for '
'worker_forget_after_seconds are deleted by the next heartbeat. Read it through pgingest.worker_status.';
COMMENT ON COLUMN pgingest.workers.id IS 'Random id the worker process picks at start.';
COMMENT ON COLUMN pgingest.workers.models IS 'Models this worker serves (all live models when empty).';
COMMENT ON COLUMN pgingest.workers.in_flight IS 'Queue messages the worker holds now (claimed, not yet written back).';
COMMENT ON COLUMN pgingest.workers.batch_size IS 'Current adaptive batch size (messages per read).';
COMMENT ON COLUMN pgingest.workers.documents IS 'Document versions this process has embedded since it started.';
COMMENT ON COLUMN pgingest.workers.details IS
'Per-model worker state, e.g. {"breakers": {"v1": "closed"}}. Never a secret.';

INSERT INTO pgingest.config (key, value) VALUES
('worker_heartbeat_seconds', '10'),
('worker_stale_after_seconds', '60'),
('worker_forget_after_seconds', '900'),
('throughput_window_seconds', '300')
ON CONFLICT (key) DO NOTHING;
