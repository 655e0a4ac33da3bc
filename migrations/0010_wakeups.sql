-- pgingest 0010: wake-ups (issue 19): whether a model's workers wait for a notification.
--
-- The capture used to send a NOTIFY per statement and live model. A NOTIFY serialises committing
-- transactions on a cluster-wide lock, and it is only needed when a worker is asleep: a busy
-- worker reads the queue anyway. Workers set `waiting` before they sleep (worker_idle_v1); the
-- capture notifies only when it is set (or has not changed for a second: a worker may have died
-- waiting), and clears it.
-- Run once by the installer; never edit after release.

CREATE TABLE pgingest.wakeups (
    model text NOT NULL,
    waiting boolean NOT NULL DEFAULT TRUE,
    changed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT wakeups_pkey PRIMARY KEY (model)
);

COMMENT ON TABLE pgingest.wakeups IS
'Per model: whether a worker sleeps waiting for a NOTIFY (set by worker_idle_v1, cleared by the capture when '
'it notifies). No row: the capture always notifies (workers that predate it).';
