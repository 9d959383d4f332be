-- PostgreSQL 0001: the shared state, in one schema (the CLI's `sluice`,
-- the daemon's queue `sluice_daemon`, each served repository its own
-- `sluice_repo_<id>`). The same tables as SQLite's 0001-0003 less the
-- source memo, which stays on each worker. Digests are `sha256:<hex>`
-- text, times RFC 3339 UTC text, as in SQLite, so both backends return
-- the same values.

-- task key -> the output of that exact work.
CREATE TABLE action_cache (
    task_key    TEXT PRIMARY KEY,
    output      TEXT NOT NULL,
    rows        BIGINT NOT NULL,
    columns     TEXT NOT NULL,      -- JSON array of column names
    log         TEXT,               -- digest of the log blob, if any
    duration_ms BIGINT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE INDEX action_cache_by_output ON action_cache (output);

-- name (e.g. production/<pipeline>) -> manifest digest.
CREATE TABLE refs (
    name       TEXT PRIMARY KEY,
    manifest   TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Every run's manifest, newest last.
CREATE TABLE runs (
    id         BIGSERIAL PRIMARY KEY,
    pipeline   TEXT NOT NULL,
    manifest   TEXT NOT NULL,
    commit_id  TEXT,
    git_ref    TEXT,
    created_at TEXT NOT NULL,
    failed     BOOLEAN NOT NULL
);

CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
CREATE INDEX runs_by_ref ON runs (git_ref, pipeline, id);

-- The daemon's queue: see migrations/0002_daemon.sql.
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY,            -- "<repo>\n<delivery id>"
    event       TEXT NOT NULL,
    received_at TEXT NOT NULL,
    job_id      BIGINT
);

CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
    repo          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('push', 'pull_request', 'schedule')),
    lane          TEXT NOT NULL,
    git_ref       TEXT NOT NULL,
    branch        TEXT,
    sha           TEXT NOT NULL,
    pr_number     BIGINT,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'superseded')),
    superseded_by BIGINT,
    outcome       TEXT,
    report        TEXT,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT
);

CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_lane ON jobs (repo, lane, id);

CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    repo       TEXT NOT NULL,
    job_id     BIGINT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('status', 'comment', 'note')),
    payload    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dropped')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at_ms BIGINT NOT NULL,
    last_error TEXT
);

CREATE INDEX outbox_pending ON outbox (state, repo, id);

CREATE TABLE comments (
    repo       TEXT NOT NULL,
    pr         BIGINT NOT NULL,
    comment_id BIGINT NOT NULL,
    PRIMARY KEY (repo, pr)
);
