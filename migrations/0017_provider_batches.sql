-- pgingest 0017: backfills through the provider's Batch API (issue 25, point 4).
--
-- A model with batch_api on queues its backfill hidden (visible only after a day, as a fallback),
-- and workers hand it to the provider's batch interface in provider batches (at most the
-- worker's --batch-api-max-inputs inputs each): each one is recorded here before its file is uploaded, so
-- that a worker that dies resumes polling the same batch (found again by its submission id, which
-- travels in the batch's metadata) and nothing is paid for twice. Its results go through the same
-- validation, write-back and acknowledgement as online embeddings.
-- Run once by the installer; never edit after release.

ALTER TABLE pgingest.models ADD COLUMN batch_api boolean NOT NULL DEFAULT FALSE;

COMMENT ON COLUMN pgingest.models.batch_api IS
'Backfills of this model go through the provider''s Batch API (set_model_batch_api); live writes stay online.';

CREATE TABLE pgingest.provider_batches (
    id bigint GENERATED ALWAYS AS IDENTITY,
    model text NOT NULL,
    -- metadata.pgingest_submission of the provider's batch: how a successor finds it again
    submission uuid NOT NULL DEFAULT gen_random_uuid(),
    -- preparing (recorded, maybe uploaded), submitted (the provider has it), collecting (ended at
    -- the provider: its results are being written), collected (every message handled)
    state text NOT NULL DEFAULT 'preparing',
    provider_batch_id text,
    input_file_id text,
    provider_status text,
    -- the queue messages it embeds, and those not yet written back
    msg_ids bigint[] NOT NULL,
    pending_msg_ids bigint[] NOT NULL,
    -- sha256 of each input sent (one request line each; its custom_id: worker/bulk.custom_id)
    input_hashes bytea[],
    inputs integer NOT NULL DEFAULT 0,
    tokens bigint NOT NULL DEFAULT 0,
    -- the provider's request_counts, and what became of the inputs
    requests_completed integer NOT NULL DEFAULT 0,
    requests_failed integer NOT NULL DEFAULT 0,
    inputs_embedded integer NOT NULL DEFAULT 0,
    inputs_rejected integer NOT NULL DEFAULT 0,
    inputs_online integer NOT NULL DEFAULT 0,
    -- a worker works on a row only while it holds the lease
    leased_until timestamptz NOT NULL DEFAULT '-infinity',
    leased_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    submitted_at timestamptz,
    polled_at timestamptz,
    ended_at timestamptz,
    collected_at timestamptz,
    error text,
    CONSTRAINT provider_batches_pkey PRIMARY KEY (id),
    CONSTRAINT provider_batches_submission_key UNIQUE (submission),
    CONSTRAINT provider_batches_model_fkey FOREIGN KEY (model)
    REFERENCES pgingest.models (name) ON DELETE CASCADE,
    CONSTRAINT provider_batches_state CHECK (state IN ('preparing', 'submitted', 'collecting', 'collected'))
);

CREATE INDEX provider_batches_open ON pgingest.provider_batches (model, id) WHERE state <> 'collected';

COMMENT ON TABLE pgingest.provider_batches IS
'Backfills sent through the provider''s Batch API (issue 25): one row per provider batch, written before '
'its file is uploaded; the messages it holds stay hidden until its results are written back.';
