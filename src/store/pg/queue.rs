//! The daemon's queue on PostgreSQL: the statements of `store::queue` in
//! PostgreSQL's dialect. Enqueueing and claiming take one advisory lock
//! per schema, so that the superseding of a lane and the one-running-job-
//! per-lane rule hold across every daemon sharing the queue, as SQLite's
//! single writer makes them hold on one machine.

use anyhow::Context as _;
use postgres::Transaction;
use postgres::types::ToSql;

use super::{PgResult as _, PgState, lock_key};
use crate::plan::digest::Digest;
use crate::store::queue::{Enqueued, Job, JobKind, JobState, NewJob, OutboxItem, now_ms};
use crate::store::state::now_rfc3339;

const JOB_COLUMNS: &str = "id, run_id, repo, kind, lane, git_ref, branch, sha, pr_number, state, \
                           superseded_by, outcome, report, created_at";

fn job_from_row(r: &postgres::Row) -> anyhow::Result<Job> {
    let kind: String = r.try_get(3)?;
    let state: String = r.try_get(9)?;
    let report: Option<String> = r.try_get(12)?;
    Ok(Job {
        id: r.try_get(0)?,
        run_id: r.try_get(1)?,
        repo: r.try_get(2)?,
        kind: JobKind::from_name(&kind).context("a job of an unknown kind")?,
        lane: r.try_get(4)?,
        git_ref: r.try_get(5)?,
        branch: r.try_get(6)?,
        sha: r.try_get(7)?,
        pr_number: r.try_get::<_, Option<i64>>(8)?.map(|n| n as u64),
        state: JobState::from_name(&state).context("a job in an unknown state")?,
        superseded_by: r.try_get(10)?,
        outcome: r.try_get(11)?,
        report: report.and_then(|d| d.parse().ok()),
        created_at: r.try_get(13)?,
    })
}

/// Serialises enqueueing and claiming in this schema.
fn lock_queue(tx: &mut Transaction<'_>, schema: &str) -> Result<(), postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(&format!("sluice queue {schema}"))],
    )?;
    Ok(())
}

fn enqueue_in(
    tx: &mut Transaction<'_>,
    job: &NewJob,
    delivery: Option<(&str, &str)>,
    now: &str,
) -> anyhow::Result<Enqueued> {
    if let Some((id, event)) = delivery {
        let key = format!("{}\n{id}", job.repo);
        let inserted = tx
            .execute(
                "INSERT INTO deliveries (id, event, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO NOTHING",
                &[&key, &event, &now],
            )
            .pg("cannot store the job")?;
        if inserted == 0 {
            return Ok(Enqueued::Duplicate);
        }
    }
    let pr = job.pr_number.map(|n| n as i64);
    let id: i64 = tx
        .query_one(
            "INSERT INTO jobs (run_id, repo, kind, lane, git_ref, branch, sha, pr_number, state,
                               created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9) RETURNING id",
            &[
                &job.run_id,
                &job.repo,
                &job.kind.as_str(),
                &job.lane,
                &job.git_ref,
                &job.branch,
                &job.sha,
                &pr,
                &now,
            ],
        )
        .pg("cannot store the job")?
        .try_get(0)?;
    if let Some((d, _)) = delivery {
        tx.execute(
            "UPDATE deliveries SET job_id = $1 WHERE id = $2",
            &[&id, &format!("{}\n{d}", job.repo)],
        )
        .pg("cannot store the job")?;
    }
    let mut superseded = tx
        .query(
            &format!(
                "UPDATE jobs SET state = 'superseded', superseded_by = $1, finished_at = $4
                 WHERE repo = $2 AND lane = $3 AND id < $1 AND state = 'queued'
                 RETURNING {JOB_COLUMNS}"
            ),
            &[&id, &job.repo, &job.lane, &now],
        )
        .pg("cannot store the job")?
        .iter()
        .map(job_from_row)
        .collect::<anyhow::Result<Vec<Job>>>()?;
    superseded.sort_by_key(|j| j.id);
    let mut cancel = tx
        .query(
            "UPDATE jobs SET superseded_by = $1
             WHERE repo = $2 AND lane = $3 AND id < $1 AND state = 'running'
             RETURNING id",
            &[&id, &job.repo, &job.lane],
        )
        .pg("cannot store the job")?
        .iter()
        .map(|r| r.try_get::<_, i64>(0))
        .collect::<Result<Vec<i64>, _>>()
        .pg("cannot store the job")?;
    cancel.sort_unstable();
    Ok(Enqueued::Queued {
        job: id,
        superseded,
        cancel,
    })
}

pub(super) fn enqueue_many(
    db: &PgState,
    batch: &[(&NewJob, Option<(&str, &str)>)],
) -> anyhow::Result<Vec<Enqueued>> {
    let schema = db.schema.clone();
    db.with_anyhow(|c| {
        let mut tx = c.client.transaction().pg("cannot open a transaction")?;
        lock_queue(&mut tx, &schema).pg("cannot lock the queue")?;
        let now = now_rfc3339();
        let mut out = Vec::with_capacity(batch.len());
        for (job, delivery) in batch {
            out.push(enqueue_in(&mut tx, job, *delivery, &now).context("cannot store the job")?);
        }
        tx.commit().pg("cannot store the job")?;
        Ok(out)
    })
}

pub(super) fn claim_job(db: &PgState) -> anyhow::Result<Option<Job>> {
    let schema = db.schema.clone();
    let owner = db.owner.clone();
    let lease_ms = db.job_lease_ms();
    db.with_anyhow(|c| {
        let mut tx = c.client.transaction().pg("cannot open a transaction")?;
        lock_queue(&mut tx, &schema).pg("cannot lock the queue")?;
        // A running job whose lease expired lost its daemon: it is
        // claimable again, and no longer holds its lane.
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs j
                 WHERE (state = 'queued' OR (state = 'running' AND lease_until < now()))
                 AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.state = 'running'
                                 AND r.repo = j.repo AND r.lane = j.lane AND r.id <> j.id
                                 AND (r.lease_until IS NULL OR r.lease_until >= now()))
                 ORDER BY id LIMIT 1"
                ),
                &[],
            )
            .pg("cannot claim a job")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job = job_from_row(&row)?;
        tx.execute(
            "UPDATE jobs SET state = 'running', started_at = $2, claimed_by = $3,
                 lease_until = now() + $4::bigint * interval '1 millisecond'
             WHERE id = $1",
            &[&job.id, &now_rfc3339(), &owner, &lease_ms],
        )
        .pg("cannot claim a job")?;
        tx.commit().pg("cannot claim a job")?;
        job.state = JobState::Running;
        Ok(Some(job))
    })
}

pub(super) fn renew_job_lease(db: &PgState, id: i64) -> anyhow::Result<bool> {
    let owner = db.owner.clone();
    let lease_ms = db.job_lease_ms();
    let n = db.with("cannot renew a job's lease", |c| {
        c.client.execute(
            "UPDATE jobs SET lease_until = now() + $3::bigint * interval '1 millisecond'
             WHERE id = $1 AND state = 'running' AND claimed_by = $2",
            &[&id, &owner, &lease_ms],
        )
    })?;
    Ok(n == 1)
}

pub(super) fn finish_job(
    db: &PgState,
    id: i64,
    state: JobState,
    outcome: Option<&str>,
    report: Option<&Digest>,
) -> anyhow::Result<()> {
    let report = report.map(|d| d.to_string());
    let now = now_rfc3339();
    let owner = db.owner.clone();
    // Fenced: a daemon that lost the job's lease (another took it over)
    // does not write its report; the one holding it does.
    let n = db.with("cannot record the end of a job", |c| {
        c.client.execute(
            "UPDATE jobs SET state = $2, outcome = $3, report = $4, finished_at = $5,
                 lease_until = NULL
             WHERE id = $1 AND (claimed_by IS NULL OR claimed_by = $6)",
            &[&id, &state.as_str(), &outcome, &report, &now, &owner],
        )
    })?;
    if n == 0 {
        anyhow::bail!("job {id} was taken over by another daemon after its lease expired");
    }
    Ok(())
}

/// Queues job `id` again (this daemon's, at shutdown), or at start every
/// running job whose lease expired: on a shared queue the others belong
/// to live daemons.
pub(super) fn requeue_running(db: &PgState, id: Option<i64>) -> anyhow::Result<usize> {
    let owner = db.owner.clone();
    let n = db.with("cannot requeue jobs", |c| match id {
        Some(id) => c.client.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, claimed_by = NULL,
                 lease_until = NULL
             WHERE id = $1 AND state = 'running' AND (claimed_by IS NULL OR claimed_by = $2)",
            &[&id, &owner],
        ),
        None => c.client.execute(
            "UPDATE jobs SET state = 'queued', started_at = NULL, claimed_by = NULL,
                 lease_until = NULL
             WHERE state = 'running' AND (lease_until IS NULL OR lease_until < now())",
            &[],
        ),
    })?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The job whose `column` (`id` or `run_id`) is `value`.
pub(super) fn job(
    db: &PgState,
    column: &'static str,
    value: &(dyn ToSql + Sync),
) -> anyhow::Result<Option<Job>> {
    let row = db.with("cannot read the jobs", |c| {
        c.client.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {column} = $1"),
            &[value],
        )
    })?;
    row.as_ref().map(job_from_row).transpose()
}

/// Every job with a stored report, oldest first.
pub(super) fn jobs_with_reports(db: &PgState) -> anyhow::Result<Vec<Job>> {
    let rows = db.with("cannot read the jobs", |c| {
        c.client.query(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE report IS NOT NULL ORDER BY id"),
            &[],
        )
    })?;
    rows.iter().map(job_from_row).collect()
}

pub(super) fn job_counts(db: &PgState) -> anyhow::Result<Vec<(JobState, u64)>> {
    let rows = db.with("cannot count the jobs", |c| {
        c.client
            .query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[])
    })?;
    let mut out: Vec<(JobState, u64)> = JobState::ALL.into_iter().map(|s| (s, 0)).collect();
    for r in rows {
        let state: String = r.try_get(0)?;
        let n: i64 = r.try_get(1)?;
        if let Some(slot) = out.iter_mut().find(|(s, _)| s.as_str() == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(out)
}

pub(super) fn outbox_push(
    db: &PgState,
    repo: &str,
    job_id: i64,
    kind: &str,
    payload: &str,
) -> anyhow::Result<i64> {
    let now = now_ms();
    let row = db.with("cannot queue a forge call", |c| {
        c.client.query_one(
            "INSERT INTO outbox (repo, job_id, kind, payload, state, next_at_ms)
             VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING id",
            &[&repo, &job_id, &kind, &payload, &now],
        )
    })?;
    Ok(row.try_get(0)?)
}

pub(super) fn outbox_next(db: &PgState, now_ms: i64) -> anyhow::Result<Option<OutboxItem>> {
    let row = db.with("cannot read the outbox", |c| {
        c.client.query_opt(
            "SELECT id, repo, job_id, kind, payload, attempts FROM outbox o
             WHERE state = 'pending' AND next_at_ms <= $1
             AND id = (SELECT MIN(id) FROM outbox p WHERE p.state = 'pending' AND p.repo = o.repo)
             ORDER BY next_at_ms, id LIMIT 1",
            &[&now_ms],
        )
    })?;
    row.map(|r| {
        Ok(OutboxItem {
            id: r.try_get(0)?,
            repo: r.try_get(1)?,
            job_id: r.try_get(2)?,
            kind: r.try_get(3)?,
            payload: r.try_get(4)?,
            attempts: u32::try_from(r.try_get::<_, i32>(5)?).unwrap_or(0),
        })
    })
    .transpose()
}

pub(super) fn outbox_next_due(db: &PgState) -> anyhow::Result<Option<i64>> {
    let row = db.with("cannot read the outbox", |c| {
        c.client.query_one(
            "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending'",
            &[],
        )
    })?;
    Ok(row.try_get(0)?)
}

pub(super) fn outbox_update(
    db: &PgState,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<()> {
    db.with("cannot update the outbox", |c| {
        c.client.execute(sql, params)
    })?;
    Ok(())
}

pub(super) fn outbox_pending(db: &PgState) -> anyhow::Result<u64> {
    let row = db.with("cannot read the outbox", |c| {
        c.client
            .query_one("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", &[])
    })?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

pub(super) fn comment_id(db: &PgState, repo: &str, pr: u64) -> anyhow::Result<Option<u64>> {
    let pr = pr as i64;
    let row = db.with("cannot read the comment ids", |c| {
        c.client.query_opt(
            "SELECT comment_id FROM comments WHERE repo = $1 AND pr = $2",
            &[&repo, &pr],
        )
    })?;
    row.map(|r| Ok(r.try_get::<_, i64>(0)? as u64)).transpose()
}

pub(super) fn set_comment_id(db: &PgState, repo: &str, pr: u64, id: u64) -> anyhow::Result<()> {
    let (pr, id) = (pr as i64, id as i64);
    db.with("cannot store a comment id", |c| {
        c.client.execute(
            "INSERT INTO comments (repo, pr, comment_id) VALUES ($1, $2, $3)
             ON CONFLICT (repo, pr) DO UPDATE SET comment_id = excluded.comment_id",
            &[&repo, &pr, &id],
        )
    })?;
    Ok(())
}
