//! The work queue at node granularity on PostgreSQL (`tasks`, migration
//! 0002, in the daemon's schema): one row per task key. The scheduler of a
//! run submits its cache misses (`INSERT … ON CONFLICT DO NOTHING`, so a
//! node queued or running for another job is waited for, not computed
//! twice) and polls for results; workers claim with `FOR UPDATE SKIP
//! LOCKED`, hold a lease their heartbeat renews, and complete fenced by the
//! attempt they claimed: a worker that lost its lease cannot complete, so
//! no task completes twice.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use postgres::fallible_iterator::FallibleIterator as _;

use super::{PgResult as _, PgState};
use crate::exec::task::TaskQueue;
use crate::plan::digest::Digest;

/// The channel workers listen on for new tasks.
const CHANNEL: &str = "sluice_tasks";
/// The channel schedulers listen on for completed tasks.
const DONE_CHANNEL: &str = "sluice_tasks_done";

/// Claims a task may have: one whose workers died this often (a node that
/// kills its machine) fails instead of taking down worker after worker.
pub const MAX_ATTEMPTS: i32 = 3;

/// The shared queue of node tasks.
pub struct PgTasks {
    db: Arc<PgState>,
    lease: Duration,
}

impl std::fmt::Debug for PgTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTasks")
            .field("db", &self.db)
            .field("lease", &self.lease)
            .finish()
    }
}

/// A task a worker holds: fenced by `attempt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub attempt: i32,
    pub task_key: String,
    pub spec: String,
}

/// A connection that waits for new tasks (`LISTEN`).
pub struct Listener {
    client: postgres::Client,
}

impl Listener {
    /// Waits until a notification came (true), or `timeout` passed.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let mut n = self.client.notifications();
        let came = matches!(n.timeout_iter(timeout).next(), Ok(Some(_)));
        // Drain what else arrived: one query answers them all.
        let _ = n.iter().count();
        came
    }
}

impl crate::exec::task::DoneWaiter for Listener {
    fn wait(&mut self, timeout: Duration) -> bool {
        Listener::wait(self, timeout)
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PgTasks {
    /// The queue in `db`'s schema (the daemon's), with leases of `lease`.
    pub fn new(db: Arc<PgState>, lease: Duration) -> PgTasks {
        PgTasks { db, lease }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// This process's name in `claimed_by`.
    pub fn owner(&self) -> &str {
        self.db.owner()
    }

    /// A connection listening for new tasks.
    pub fn listener(&self) -> anyhow::Result<Listener> {
        self.listen(CHANNEL)
    }

    fn listen(&self, channel: &str) -> anyhow::Result<Listener> {
        let mut client = self.db.connect.connect()?;
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .pg("cannot listen for tasks")?;
        Ok(Listener { client })
    }

    /// Claims the oldest claimable task: queued, or running under a lease
    /// that expired (its worker died).
    pub fn claim(&self) -> anyhow::Result<Option<Claimed>> {
        let owner = self.db.owner().to_string();
        let lease = millis(self.lease);
        let row = self.db.with("cannot claim a task", |c| {
            let st = c.prepared(
                "UPDATE tasks SET state = 'running', attempt = attempt + 1, claimed_by = $1,
                     lease_until = now() + $2::bigint * interval '1 millisecond'
                 WHERE id = (SELECT id FROM tasks
                             WHERE state = 'queued'
                                OR (state = 'running' AND lease_until < now() AND attempt < $3)
                             ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
                 RETURNING id, attempt, task_key, spec",
            )?;
            c.client.query_opt(&st, &[&owner, &lease, &MAX_ATTEMPTS])
        })?;
        row.map(|r| {
            Ok(Claimed {
                id: r.try_get(0)?,
                attempt: r.try_get(1)?,
                task_key: r.try_get(2)?,
                spec: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Fails the tasks whose lease expired after their last allowed
    /// attempt (`result`: the failure, as the scheduler reads it); returns
    /// how many. Workers call it when they find nothing to claim.
    pub fn fail_abandoned(&self, result: &str) -> anyhow::Result<u64> {
        let result = result.to_string();
        self.db.with("cannot fail abandoned tasks", |c| {
            c.client.execute(
                "UPDATE tasks SET state = 'done', ok = false, result = $2, done_at = now(),
                     lease_until = NULL
                 WHERE state = 'running' AND lease_until < now() AND attempt >= $1",
                &[&MAX_ATTEMPTS, &result],
            )
        })
    }

    /// Deletes the tasks done more than `age` ago (their results are in
    /// the waiting runs' caches by then); returns how many.
    pub fn prune_done(&self, age: Duration) -> anyhow::Result<u64> {
        let ms = millis(age);
        self.db.with("cannot prune done tasks", |c| {
            c.client.execute(
                "DELETE FROM tasks
                 WHERE state = 'done' AND done_at < now() - $1::bigint * interval '1 millisecond'",
                &[&ms],
            )
        })
    }

    /// Renews the lease of a held task; false when it was lost (expired
    /// and claimed by another worker, or done).
    pub fn heartbeat(&self, t: &Claimed) -> anyhow::Result<bool> {
        let lease = millis(self.lease);
        let n = self.db.with("cannot renew a task's lease", |c| {
            let st = c.prepared(
                "UPDATE tasks SET lease_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            )?;
            c.client.execute(&st, &[&t.id, &t.attempt, &lease])
        })?;
        Ok(n == 1)
    }

    /// Completes a held task with its result; false (and nothing written)
    /// when this attempt no longer holds it.
    pub fn complete(&self, t: &Claimed, ok: bool, result: &str) -> anyhow::Result<bool> {
        let owner = self.db.owner().to_string();
        let result = result.to_string();
        let n = self.db.with("cannot complete a task", |c| {
            let st = c.prepared(
                "UPDATE tasks SET state = 'done', ok = $3, result = $4,
                     completions = completions + 1, completed_by = $5, done_at = now(),
                     lease_until = NULL
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
            )?;
            let n = c
                .client
                .execute(&st, &[&t.id, &t.attempt, &ok, &result, &owner])?;
            if n == 1 {
                // Wakes the schedulers waiting on results.
                c.client.batch_execute(&format!("NOTIFY {DONE_CHANNEL}"))?;
            }
            Ok(n)
        })?;
        Ok(n == 1)
    }

    /// Gives a held task back to the queue (a worker stopping).
    pub fn release(&self, t: &Claimed) -> anyhow::Result<bool> {
        let n = self.db.with("cannot release a task", |c| {
            let n = c.client.execute(
                "UPDATE tasks SET state = 'queued', claimed_by = NULL, lease_until = NULL
                 WHERE id = $1 AND attempt = $2 AND state = 'running'",
                &[&t.id, &t.attempt],
            )?;
            c.client.batch_execute(&format!("NOTIFY {CHANNEL}"))?;
            Ok(n)
        })?;
        Ok(n == 1)
    }
}

impl TaskQueue for PgTasks {
    fn submit(&self, tasks: &[(Digest, String)]) -> anyhow::Result<()> {
        let keys: Vec<String> = tasks.iter().map(|(k, _)| k.to_string()).collect();
        let specs: Vec<String> = tasks.iter().map(|(_, s)| s.clone()).collect();
        self.db.with("cannot queue tasks", |c| {
            let st = c.prepared(
                "INSERT INTO tasks (task_key, state, spec)
                 SELECT k, 'queued', s FROM unnest($1::text[], $2::text[]) AS t(k, s)
                 ON CONFLICT (task_key) DO UPDATE SET state = 'queued', spec = excluded.spec,
                     ok = NULL, result = NULL, claimed_by = NULL, lease_until = NULL,
                     enqueued_at = now(), done_at = NULL
                 WHERE tasks.state = 'done' AND NOT tasks.ok",
            )?;
            c.client.execute(&st, &[&keys, &specs])?;
            c.client.batch_execute(&format!("NOTIFY {CHANNEL}"))
        })
    }

    fn done(&self, keys: &[Digest]) -> anyhow::Result<Vec<(Digest, String)>> {
        let keys: Vec<String> = keys.iter().map(Digest::to_string).collect();
        let rows = self.db.with("cannot read the tasks", |c| {
            let st = c.prepared(
                "SELECT task_key, result FROM tasks
                 WHERE task_key = ANY($1::text[]) AND state = 'done'",
            )?;
            c.client.query(&st, &[&keys])
        })?;
        rows.iter()
            .map(|r| {
                let key: String = r.try_get(0)?;
                let result: Option<String> = r.try_get(1)?;
                Ok((
                    key.parse().context("a task with a bad key")?,
                    result.unwrap_or_default(),
                ))
            })
            .collect()
    }

    fn done_waiter(&self) -> Option<Box<dyn crate::exec::task::DoneWaiter>> {
        match self.listen(DONE_CHANNEL) {
            Ok(l) => Some(Box::new(l)),
            Err(e) => {
                tracing::debug!("cannot listen for completed tasks, polling instead: {e:#}");
                None
            }
        }
    }

    fn requeue(&self, key: &Digest) -> anyhow::Result<()> {
        let key = key.to_string();
        self.db.with("cannot queue a task again", |c| {
            c.client.execute(
                "UPDATE tasks SET state = 'queued', ok = NULL, result = NULL, done_at = NULL
                 WHERE task_key = $1 AND state = 'done'",
                &[&key],
            )?;
            c.client.batch_execute(&format!("NOTIFY {CHANNEL}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pg::{DAEMON_SCHEMA, test_connect};

    fn queue(connect: &crate::store::pg::PgConnect, lease: Duration) -> PgTasks {
        PgTasks::new(
            Arc::new(PgState::open(connect, DAEMON_SCHEMA).unwrap()),
            lease,
        )
    }

    fn key(n: u32) -> Digest {
        Digest::of(format!("task {n}").as_bytes())
    }

    fn count(q: &PgTasks, sql: &'static str) -> i64 {
        q.db.with("count", |c| c.client.query_one(sql, &[]))
            .unwrap()
            .get(0)
    }

    #[test]
    fn a_duplicate_task_key_enqueues_one_row() {
        let connect = test_connect();
        let a = queue(&connect, Duration::from_secs(30));
        let b = queue(&connect, Duration::from_secs(30));
        a.submit(&[(key(1), "spec a".into()), (key(2), "spec".into())])
            .unwrap();
        b.submit(&[(key(1), "spec b".into())]).unwrap();
        assert_eq!(count(&a, "SELECT COUNT(*) FROM tasks"), 2);
        // The first submitter's task stands; the second waits on it.
        let t = a.claim().unwrap().unwrap();
        assert_eq!(
            (t.task_key.as_str(), t.spec.as_str()),
            (&*key(1).to_string(), "spec a")
        );
        b.submit(&[(key(1), "spec b".into())]).unwrap();
        assert!(a.complete(&t, true, "{\"r\":1}").unwrap());
        assert_eq!(
            b.done(&[key(1), key(2)]).unwrap(),
            vec![(key(1), "{\"r\":1}".to_string())]
        );
        // A done task that succeeded is not queued again by a submit;
        // one that failed is.
        b.submit(&[(key(1), "spec b".into())]).unwrap();
        assert_eq!(b.done(&[key(1)]).unwrap().len(), 1);
        let t2 = a.claim().unwrap().unwrap();
        assert!(a.complete(&t2, false, "{}").unwrap());
        b.submit(&[(key(2), "again".into())]).unwrap();
        assert!(b.done(&[key(2)]).unwrap().is_empty());
        assert_eq!(a.claim().unwrap().unwrap().spec, "again");
    }

    #[test]
    fn two_claimers_never_get_the_same_task() {
        let connect = test_connect();
        let setup = queue(&connect, Duration::from_secs(30));
        let tasks: Vec<(Digest, String)> = (0..40).map(|i| (key(i), format!("s{i}"))).collect();
        setup.submit(&tasks).unwrap();
        let claimed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let q = queue(&connect, Duration::from_secs(30));
                    while let Some(t) = q.claim().unwrap() {
                        claimed.lock().unwrap().push(t.id);
                    }
                });
            }
        });
        let mut ids = claimed.into_inner().unwrap();
        assert_eq!(ids.len(), 40);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40, "a task was handed to two claimers");
        assert_eq!(count(&setup, "SELECT MAX(attempt)::bigint FROM tasks"), 1);
    }

    #[test]
    fn an_expired_lease_is_claimable_again_and_the_stale_holder_cannot_complete() {
        let connect = test_connect();
        let dying = queue(&connect, Duration::from_millis(300));
        let other = queue(&connect, Duration::from_secs(30));
        dying.submit(&[(key(7), "s".into())]).unwrap();
        let stale = dying.claim().unwrap().unwrap();
        // Held: nobody else gets it.
        assert_eq!(other.claim().unwrap(), None);
        assert!(dying.heartbeat(&stale).unwrap());
        std::thread::sleep(Duration::from_millis(400));
        let fresh = other
            .claim()
            .unwrap()
            .expect("the expired task is claimable");
        assert_eq!((fresh.id, fresh.attempt), (stale.id, stale.attempt + 1));
        // The stale holder is fenced out: no renewal, no completion, no release.
        assert!(!dying.heartbeat(&stale).unwrap());
        assert!(!dying.complete(&stale, true, "stale").unwrap());
        assert!(!dying.release(&stale).unwrap());
        assert!(other.complete(&fresh, true, "fresh").unwrap());
        assert!(!other.complete(&fresh, true, "twice").unwrap());
        assert_eq!(
            other.done(&[key(7)]).unwrap(),
            vec![(key(7), "fresh".to_string())]
        );
        assert_eq!(count(&other, "SELECT SUM(completions) FROM tasks"), 1);
    }

    #[test]
    fn a_task_whose_workers_keep_dying_fails_after_the_last_attempt() {
        let connect = test_connect();
        let q = queue(&connect, Duration::from_millis(100));
        q.submit(&[(key(9), "s".into())]).unwrap();
        for attempt in 1..=MAX_ATTEMPTS {
            let t = q.claim().unwrap().unwrap();
            assert_eq!(t.attempt, attempt);
            std::thread::sleep(Duration::from_millis(150));
        }
        assert_eq!(q.claim().unwrap(), None);
        assert_eq!(q.fail_abandoned("{\"died\":1}").unwrap(), 1);
        assert_eq!(
            q.done(&[key(9)]).unwrap(),
            vec![(key(9), "{\"died\":1}".to_string())]
        );
        // A later run queues it again, as any failed task.
        q.submit(&[(key(9), "s".into())]).unwrap();
        let t = q.claim().unwrap().unwrap();
        assert!(q.complete(&t, true, "{}").unwrap());
        assert_eq!(q.prune_done(Duration::from_secs(3600)).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.prune_done(Duration::from_millis(10)).unwrap(), 1);
        assert!(q.done(&[key(9)]).unwrap().is_empty());
    }

    #[test]
    fn a_released_task_is_claimed_again_and_a_listener_wakes() {
        let connect = test_connect();
        let q = queue(&connect, Duration::from_secs(30));
        let mut listener = q.listener().unwrap();
        q.submit(&[(key(3), "s".into())]).unwrap();
        let start = std::time::Instant::now();
        listener.wait(Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_secs(4), "no notification");
        let t = q.claim().unwrap().unwrap();
        assert!(q.release(&t).unwrap());
        let again = q.claim().unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (t.id, t.attempt + 1));
    }

    #[test]
    fn a_completion_wakes_the_scheduler_and_a_refused_one_does_not() {
        let connect = test_connect();
        let q = queue(&connect, Duration::from_secs(30));
        let mut waiter = q.done_waiter().expect("listens on PostgreSQL");
        q.submit(&[(key(4), "s".into())]).unwrap();
        let t = q.claim().unwrap().unwrap();
        // Nothing completed yet: the wait times out.
        assert!(!waiter.wait(Duration::from_millis(200)));
        let stale = Claimed {
            attempt: t.attempt + 1,
            ..t.clone()
        };
        assert!(!q.complete(&stale, true, "{}").unwrap());
        assert!(
            !waiter.wait(Duration::from_millis(200)),
            "a refused completion wakes no one"
        );
        assert!(q.complete(&t, true, "{}").unwrap());
        let start = std::time::Instant::now();
        assert!(waiter.wait(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(4));
        assert_eq!(q.done(&[key(4)]).unwrap().len(), 1);
    }
}
