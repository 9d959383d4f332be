-- The branch or ref each run was of, so that `sluice gc --keep-runs N`
-- can keep the last N runs of every branch. NULL for runs recorded
-- before this migration and for runs of a commit given by hash.
ALTER TABLE runs ADD COLUMN git_ref TEXT;

CREATE INDEX runs_by_ref ON runs (git_ref, pipeline, id);
