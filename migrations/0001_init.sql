-- 0001: the action cache, refs, runs and the source-digest memo.
-- Digests are stored as their `sha256:<hex>` text, times as RFC 3339 UTC.
-- STRICT tables make SQLite reject a value of the wrong type instead of
-- storing it quietly.

-- task key -> the output of that exact work.
CREATE TABLE action_cache (
    task_key    TEXT PRIMARY KEY NOT NULL,
    output      TEXT NOT NULL,
    rows        INTEGER NOT NULL,
    columns     TEXT NOT NULL,      -- JSON array of column names
    log         TEXT,               -- digest of the log blob, if any
    duration_ms INTEGER NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

-- name (e.g. production/<pipeline>) -> manifest digest.
CREATE TABLE refs (
    name       TEXT PRIMARY KEY NOT NULL,
    manifest   TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

-- Every run's manifest, newest last. AUTOINCREMENT keeps ids increasing
-- even if the newest rows are ever deleted, so "newest by id" stays true.
CREATE TABLE runs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT NOT NULL,
    manifest   TEXT NOT NULL,
    commit_id  TEXT,
    created_at TEXT NOT NULL,
    failed     INTEGER NOT NULL CHECK (failed IN (0, 1))
) STRICT;

CREATE INDEX runs_by_pipeline ON runs (pipeline, id);

-- A source file's digest, valid while its size, mtime and inode are the
-- ones recorded. The inode is stored as the two's-complement i64 of the
-- u64 inode number.
CREATE TABLE source_memo (
    path     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    PRIMARY KEY (path)
) STRICT;
