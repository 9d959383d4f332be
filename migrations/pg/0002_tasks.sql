-- PostgreSQL 0002: the work queue at node granularity, and leases on jobs.
-- Applied to every schema like 0001; only the daemon's (`sluice_daemon`)
-- is used: every full daemon and `sluice serve --worker-only` of a team
-- shares that one queue.

-- A node to compute, by its task key: one row per key, so a node already
-- queued or running for another job is waited for, not computed twice.
CREATE TABLE tasks (
    id           BIGSERIAL PRIMARY KEY,
    task_key     TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    spec         TEXT NOT NULL,          -- JSON: the node, its inputs, the limits
    attempt      INTEGER NOT NULL DEFAULT 0,  -- claims so far; fences completion
    claimed_by   TEXT,
    lease_until  TIMESTAMPTZ,
    ok           BOOLEAN,                -- done: whether the node succeeded
    result       TEXT,                   -- done: JSON summary (digests, counts, error text)
    completions  INTEGER NOT NULL DEFAULT 0,
    completed_by TEXT,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    done_at      TIMESTAMPTZ
);

CREATE INDEX tasks_claimable ON tasks (state, id);

-- A running job is held by a lease its daemon renews; a job whose lease
-- expired (its daemon died) is claimed again by another.
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN lease_until TIMESTAMPTZ;
