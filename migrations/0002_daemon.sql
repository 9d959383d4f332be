-- 0002: the daemon's durable queue: webhook deliveries (for de-duplication),
-- jobs, the outbox of forge calls, and the id of each PR's one comment.

-- A delivery id seen once: a redelivery with the same id is a duplicate.
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY NOT NULL,   -- "<repo>\n<delivery id>"
    event       TEXT NOT NULL,
    received_at TEXT NOT NULL,
    job_id      INTEGER
) STRICT;

-- One run of a repository at one commit. `lane` is what a newer job
-- supersedes and what never runs twice at once: the branch ref of a push,
-- `pr/<n>` of a pull request.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT NOT NULL UNIQUE,
    repo          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('push', 'pull_request', 'schedule')),
    lane          TEXT NOT NULL,
    git_ref       TEXT NOT NULL,
    branch        TEXT,
    sha           TEXT NOT NULL,
    pr_number     INTEGER,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'superseded')),
    superseded_by INTEGER,
    outcome       TEXT,
    report        TEXT,                      -- digest of the RunReport JSON blob
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT
) STRICT;

CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_lane ON jobs (repo, lane, id);

-- Forge calls, delivered in id order per repository, each once.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    repo       TEXT NOT NULL,
    job_id     INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('status', 'comment', 'note')),
    payload    TEXT NOT NULL,              -- JSON
    state      TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dropped')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,           -- unix milliseconds
    last_error TEXT
) STRICT;

CREATE INDEX outbox_pending ON outbox (state, repo, id);

-- The one comment sluice keeps on each pull or merge request.
CREATE TABLE comments (
    repo       TEXT NOT NULL,
    pr         INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    PRIMARY KEY (repo, pr)
) STRICT;
