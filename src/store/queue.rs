//! The daemon's durable queue in the state database: deliveries seen, jobs,
//! the outbox of forge calls, and each pull request's comment id. Every
//! change is one transaction, so a `kill -9` leaves either all of it or
//! none.

use anyhow::Context;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use super::state::{SqliteState, now_rfc3339};
use crate::plan::digest::Digest;

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Push,
    PullRequest,
    Schedule,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Push => "push",
            JobKind::PullRequest => "pull_request",
            JobKind::Schedule => "schedule",
        }
    }

    /// The kind stored as `s`.
    pub fn from_name(s: &str) -> Option<JobKind> {
        [JobKind::Push, JobKind::PullRequest, JobKind::Schedule]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    fn parse(s: &str) -> rusqlite::Result<JobKind> {
        Self::from_name(s).ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Superseded,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Superseded => "superseded",
        }
    }

    /// The state stored as `s`.
    pub fn from_name(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn parse(s: &str) -> rusqlite::Result<JobState> {
        Self::from_name(s).ok_or(rusqlite::Error::InvalidQuery)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub repo: String,
    pub kind: JobKind,
    /// What a newer job of the same repository supersedes.
    pub lane: String,
    pub git_ref: String,
    pub branch: Option<String>,
    pub sha: String,
    pub pr_number: Option<u64>,
    /// The run page's id: unguessable.
    pub run_id: String,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub run_id: String,
    pub repo: String,
    pub kind: JobKind,
    pub lane: String,
    pub git_ref: String,
    pub branch: Option<String>,
    pub sha: String,
    pub pr_number: Option<u64>,
    pub state: JobState,
    pub superseded_by: Option<i64>,
    pub outcome: Option<String>,
    pub report: Option<Digest>,
    pub created_at: String,
}

/// What [`SqliteState::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The delivery id was seen before: nothing changed.
    Duplicate,
    Queued {
        job: i64,
        /// Older queued jobs of the lane, now superseded without running.
        superseded: Vec<Job>,
        /// Older running jobs of the lane, marked superseded: the caller
        /// cancels them.
        cancel: Vec<i64>,
    },
}

/// One forge call waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub repo: String,
    pub job_id: i64,
    pub kind: String,
    pub payload: String,
    pub attempts: u32,
}

const JOB_COLUMNS: &str = "id, run_id, repo, kind, lane, git_ref, branch, sha, pr_number, state, \
                           superseded_by, outcome, report, created_at";

fn job_from_row(r: &Row) -> rusqlite::Result<Job> {
    let report: Option<String> = r.get(12)?;
    Ok(Job {
        id: r.get(0)?,
        run_id: r.get(1)?,
        repo: r.get(2)?,
        kind: JobKind::parse(&r.get::<_, String>(3)?)?,
        lane: r.get(4)?,
        git_ref: r.get(5)?,
        branch: r.get(6)?,
        sha: r.get(7)?,
        pr_number: r.get::<_, Option<i64>>(8)?.map(|n| n as u64),
        state: JobState::parse(&r.get::<_, String>(9)?)?,
        superseded_by: r.get(10)?,
        outcome: r.get(11)?,
        report: report.and_then(|d| d.parse().ok()),
        created_at: r.get(13)?,
    })
}

/// One job of [`SqliteState::enqueue_many`], inside its transaction.
fn enqueue_in(
    tx: &rusqlite::Transaction<'_>,
    job: &NewJob,
    delivery: Option<(&str, &str)>,
    now: &str,
) -> anyhow::Result<Enqueued> {
    if let Some((id, event)) = delivery {
        let key = format!("{}\n{id}", job.repo);
        let inserted = tx
            .prepare_cached(
                "INSERT INTO deliveries (id, event, received_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![key, event, now])?;
        if inserted == 0 {
            return Ok(Enqueued::Duplicate);
        }
    }
    tx.prepare_cached(
        "INSERT INTO jobs (run_id, repo, kind, lane, git_ref, branch, sha, pr_number, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9)",
    )?
    .execute(params![
            job.run_id,
            job.repo,
            job.kind.as_str(),
            job.lane,
            job.git_ref,
            job.branch,
            job.sha,
            job.pr_number.map(|n| n as i64),
        now
    ])?;
    let id = tx.last_insert_rowid();
    if let Some((d, _)) = delivery {
        tx.prepare_cached("UPDATE deliveries SET job_id = ?1 WHERE id = ?2")?
            .execute(params![id, format!("{}\n{d}", job.repo)])?;
    }
    let superseded = {
        let mut stmt = tx.prepare_cached(&format!(
            "UPDATE jobs SET state = 'superseded', superseded_by = ?1, finished_at = ?4
             WHERE repo = ?2 AND lane = ?3 AND id < ?1 AND state = 'queued'
             RETURNING {JOB_COLUMNS}"
        ))?;
        stmt.query_map(params![id, job.repo, job.lane, now], job_from_row)?
            .collect::<rusqlite::Result<Vec<Job>>>()?
    };
    let cancel = {
        let mut stmt = tx.prepare_cached(
            "UPDATE jobs SET superseded_by = ?1
             WHERE repo = ?2 AND lane = ?3 AND id < ?1 AND state = 'running'
             RETURNING id",
        )?;
        stmt.query_map(params![id, job.repo, job.lane], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?
    };
    Ok(Enqueued::Queued {
        job: id,
        superseded,
        cancel,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SqliteState {
    /// [`Self::enqueue`] for several deliveries in one transaction (one
    /// commit for a burst of webhooks: group commit). All are stored, or
    /// none.
    pub(super) fn enqueue_many(
        &self,
        batch: &[(&NewJob, Option<(&str, &str)>)],
    ) -> anyhow::Result<Vec<Enqueued>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_rfc3339();
        let mut out = Vec::with_capacity(batch.len());
        for (job, delivery) in batch {
            out.push(enqueue_in(&tx, job, *delivery, &now)?);
        }
        tx.commit().context("cannot store the job")?;
        Ok(out)
    }

    /// Takes the oldest queued job whose lane has nothing running, and
    /// marks it running.
    pub(super) fn claim_job(&self) -> anyhow::Result<Option<Job>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = tx
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs j WHERE state = 'queued'
                     AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.state = 'running'
                                     AND r.repo = j.repo AND r.lane = j.lane)
                     ORDER BY id LIMIT 1"
                ),
                [],
                job_from_row,
            )
            .optional()?;
        let Some(mut job) = job else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE jobs SET state = 'running', started_at = ?2 WHERE id = ?1",
            params![job.id, now_rfc3339()],
        )?;
        tx.commit().context("cannot claim a job")?;
        job.state = JobState::Running;
        Ok(Some(job))
    }

    /// Ends a running job.
    pub(super) fn finish_job(
        &self,
        id: i64,
        state: JobState,
        outcome: Option<&str>,
        report: Option<&Digest>,
    ) -> anyhow::Result<()> {
        self.conn()
            .execute(
                "UPDATE jobs SET state = ?2, outcome = ?3, report = ?4, finished_at = ?5 WHERE id = ?1",
                params![
                    id,
                    state.as_str(),
                    outcome,
                    report.map(|d| d.to_string()),
                    now_rfc3339()
                ],
            )
            .context("cannot record the end of a job")?;
        Ok(())
    }

    /// Puts a running job back in the queue (shutdown, or a crash found at
    /// start when `id` is `None`: every running job). Returns how many.
    pub(super) fn requeue_running(&self, id: Option<i64>) -> anyhow::Result<usize> {
        let conn = self.conn();
        let n = match id {
            Some(id) => conn.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?1 AND state = 'running'",
                [id],
            )?,
            None => conn.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'",
                [],
            )?,
        };
        Ok(n)
    }

    pub(super) fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()?)
    }

    pub(super) fn job_by_run_id(&self, run_id: &str) -> anyhow::Result<Option<Job>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ?1"),
                [run_id],
                job_from_row,
            )
            .optional()?)
    }

    /// How many jobs are in each state.
    pub(super) fn job_counts(&self) -> anyhow::Result<Vec<(JobState, u64)>> {
        let conn = self.conn();
        let mut out = Vec::new();
        for s in JobState::ALL {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = ?1",
                [s.as_str()],
                |r| r.get(0),
            )?;
            out.push((s, n as u64));
        }
        Ok(out)
    }

    // -- outbox ---------------------------------------------------------------

    /// Queues a forge call, due now.
    pub(super) fn outbox_push(
        &self,
        repo: &str,
        job_id: i64,
        kind: &str,
        payload: &str,
    ) -> anyhow::Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO outbox (repo, job_id, kind, payload, state, next_at_ms)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            params![repo, job_id, kind, payload, now_ms()],
        )
        .context("cannot queue a forge call")?;
        Ok(conn.last_insert_rowid())
    }

    /// The next call that is due: the oldest pending one of its repository
    /// (calls of one repository go in order, so a failing one holds back
    /// those behind it), due at or before `now_ms`.
    pub(super) fn outbox_next(&self, now_ms: i64) -> anyhow::Result<Option<OutboxItem>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, repo, job_id, kind, payload, attempts FROM outbox o
                 WHERE state = 'pending' AND next_at_ms <= ?1
                 AND id = (SELECT MIN(id) FROM outbox p WHERE p.state = 'pending' AND p.repo = o.repo)
                 ORDER BY next_at_ms, id LIMIT 1",
                [now_ms],
                |r| {
                    Ok(OutboxItem {
                        id: r.get(0)?,
                        repo: r.get(1)?,
                        job_id: r.get(2)?,
                        kind: r.get(3)?,
                        payload: r.get(4)?,
                        attempts: r.get::<_, i64>(5)? as u32,
                    })
                },
            )
            .optional()?)
    }

    /// When the earliest pending call is due, if any.
    pub(super) fn outbox_next_due(&self) -> anyhow::Result<Option<i64>> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    pub(super) fn outbox_done(&self, id: i64) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Tries `id` again at `next_at_ms`.
    pub(super) fn outbox_retry(&self, id: i64, next_at_ms: i64, error: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at_ms = ?2, last_error = ?3 WHERE id = ?1",
            params![id, next_at_ms, error],
        )?;
        Ok(())
    }

    /// Gives up on `id`.
    pub(super) fn outbox_drop(&self, id: i64, error: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE outbox SET state = 'dropped', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    pub(super) fn outbox_pending(&self) -> anyhow::Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    // -- comments -------------------------------------------------------------

    pub(super) fn comment_id(&self, repo: &str, pr: u64) -> anyhow::Result<Option<u64>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT comment_id FROM comments WHERE repo = ?1 AND pr = ?2",
                params![repo, pr as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|n| n as u64))
    }

    pub(super) fn set_comment_id(&self, repo: &str, pr: u64, id: u64) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO comments (repo, pr, comment_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (repo, pr) DO UPDATE SET comment_id = excluded.comment_id",
            params![repo, pr as i64, id as i64],
        )?;
        Ok(())
    }
}

// -- for `sluice gc` (store::gc) ---------------------------------------------

impl SqliteState {
    /// Every job that has a stored report, oldest first.
    pub(super) fn jobs_with_reports(&self) -> anyhow::Result<Vec<Job>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE report IS NOT NULL ORDER BY id"
            ))
            .context("cannot read the jobs")?;
        let jobs = stmt
            .query_map([], job_from_row)
            .context("cannot read the jobs")?
            .collect::<rusqlite::Result<Vec<Job>>>()
            .context("cannot read the jobs")?;
        Ok(jobs)
    }

    /// Forgets the reports of these jobs (their blobs are being
    /// collected): their run pages then say the job's state only.
    pub(super) fn jobs_forget_reports(&self, ids: &[i64]) -> anyhow::Result<usize> {
        self.execute_each(
            "UPDATE jobs SET report = NULL WHERE id = ?1",
            ids,
            "cannot update the jobs",
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(lane: &str, sha: &str, run: &str) -> NewJob {
        NewJob {
            repo: "acme/p".into(),
            kind: JobKind::Push,
            lane: lane.into(),
            git_ref: lane.into(),
            branch: Some("b".into()),
            sha: sha.into(),
            pr_number: None,
            run_id: run.into(),
        }
    }

    #[test]
    fn a_delivery_is_queued_once() {
        for db in crate::store::test_backends() {
            let db = &*db;
            let first = db
                .enqueue(&job("refs/heads/b", "a", "r1"), Some(("d1", "push")))
                .unwrap();
            assert!(matches!(first, Enqueued::Queued { .. }));
            let again = db
                .enqueue(&job("refs/heads/b", "a", "r2"), Some(("d1", "push")))
                .unwrap();
            assert_eq!(again, Enqueued::Duplicate);
            assert_eq!(db.job_counts().unwrap()[0], (JobState::Queued, 1));
        }
    }

    #[test]
    fn a_newer_push_supersedes_queued_and_marks_running() {
        for db in crate::store::test_backends() {
            let db = &*db;
            db.enqueue(&job("refs/heads/b", "a", "r1"), None).unwrap();
            let running = db.claim_job().unwrap().unwrap();
            assert_eq!(running.sha, "a");
            db.enqueue(&job("refs/heads/b", "b", "r2"), None).unwrap();
            let Enqueued::Queued {
                superseded, cancel, ..
            } = db.enqueue(&job("refs/heads/b", "c", "r3"), None).unwrap()
            else {
                panic!("not queued")
            };
            assert_eq!(
                superseded
                    .iter()
                    .map(|j| j.sha.as_str())
                    .collect::<Vec<_>>(),
                ["b"]
            );
            assert_eq!(cancel, vec![running.id]);
            // The lane is busy until the running job ends.
            assert_eq!(db.claim_job().unwrap(), None);
            db.finish_job(running.id, JobState::Superseded, Some("cancelled"), None)
                .unwrap();
            assert_eq!(db.claim_job().unwrap().unwrap().sha, "c");
        }
    }

    #[test]
    fn lanes_run_side_by_side_and_running_jobs_requeue() {
        for db in crate::store::test_backends() {
            let db = &*db;
            db.enqueue(&job("refs/heads/a", "1", "r1"), None).unwrap();
            db.enqueue(&job("refs/heads/b", "2", "r2"), None).unwrap();
            assert!(db.claim_job().unwrap().is_some());
            assert!(db.claim_job().unwrap().is_some());
            // On PostgreSQL (shared by live daemons) only expired leases
            // are requeued: see store::pg's jobs_are_held_by_leases.
            let shared = db.batches_lookups();
            assert_eq!(
                db.requeue_running(None).unwrap(),
                if shared { 0 } else { 2 }
            );
            if !shared {
                assert_eq!(db.claim_job().unwrap().unwrap().sha, "1");
            }
        }
    }

    #[test]
    fn outbox_keeps_order_per_repo() {
        for db in crate::store::test_backends() {
            let db = &*db;
            let a1 = db.outbox_push("a", 1, "status", "1").unwrap();
            let a2 = db.outbox_push("a", 1, "status", "2").unwrap();
            let b1 = db.outbox_push("b", 2, "status", "3").unwrap();
            let now = now_ms();
            assert_eq!(db.outbox_next(now).unwrap().unwrap().id, a1);
            // a1 fails and waits: a2 must not overtake it, b1 may.
            db.outbox_retry(a1, now + 60_000, "500").unwrap();
            assert_eq!(db.outbox_next(now).unwrap().unwrap().id, b1);
            db.outbox_done(b1).unwrap();
            assert_eq!(db.outbox_next(now).unwrap(), None);
            assert_eq!(db.outbox_next(now + 60_000).unwrap().unwrap().id, a1);
            db.outbox_done(a1).unwrap();
            assert_eq!(db.outbox_next(now).unwrap().unwrap().id, a2);
            assert_eq!(db.outbox_pending().unwrap(), 1);
        }
    }

    #[test]
    fn comment_ids_are_remembered() {
        for db in crate::store::test_backends() {
            let db = &*db;
            assert_eq!(db.comment_id("r", 7).unwrap(), None);
            db.set_comment_id("r", 7, 42).unwrap();
            db.set_comment_id("r", 7, 43).unwrap();
            assert_eq!(db.comment_id("r", 7).unwrap(), Some(43));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timing {
    use super::*;
    use crate::store::state::State as _;

    #[test]
    #[ignore = "a measurement: cargo test --release --lib enqueue_timing -- --ignored --nocapture"]
    fn enqueue_timing() {
        let tmp = tempfile::tempdir().unwrap();
        let db = SqliteState::open(&tmp.path().join("daemon.db")).unwrap();
        let t = std::time::Instant::now();
        let jobs: Vec<NewJob> = (0..200)
            .map(|i| NewJob {
                repo: "acme/p".into(),
                kind: JobKind::Push,
                lane: format!("refs/heads/b{i}"),
                git_ref: format!("refs/heads/b{i}"),
                branch: Some("b".into()),
                sha: "a".into(),
                pr_number: None,
                run_id: format!("r{i}"),
            })
            .collect();
        let ids: Vec<String> = (0..200).map(|i| format!("d{i}")).collect();
        for (j, d) in jobs.iter().zip(&ids).take(100) {
            db.enqueue(j, Some((d, "push"))).unwrap();
        }
        eprintln!("100 enqueues one by one: {:?}", t.elapsed());
        let t = std::time::Instant::now();
        for chunk in jobs
            .iter()
            .zip(&ids)
            .skip(100)
            .collect::<Vec<_>>()
            .chunks(50)
        {
            let batch: Vec<_> = chunk
                .iter()
                .map(|(j, d)| (*j, Some((d.as_str(), "push"))))
                .collect();
            db.enqueue_many(&batch).unwrap();
        }
        eprintln!("100 enqueues in batches of 50: {:?}", t.elapsed());
    }
}
