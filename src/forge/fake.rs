//! A recording in-process forge, for tests of what calls a [`Forge`]: it
//! keeps comments so an upsert edits in place, answers PR heads it was
//! given, and can be told to fail the next calls.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use super::{CommitStatus, Forge, ForgeError};

/// A call the fake carried out (calls it failed on purpose are only
/// counted, by [`FakeForge::attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Status {
        repo: String,
        sha: String,
        status: CommitStatus,
    },
    /// A comment created or edited; `id` is the comment's.
    Comment {
        repo: String,
        number: u64,
        body: String,
        id: u64,
    },
    Head {
        repo: String,
        number: u64,
    },
}

#[derive(Debug, Default)]
pub struct FakeForge {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    attempts: usize,
    failures: VecDeque<ForgeError>,
    comments: Vec<Comment>,
    last_id: u64,
    heads: HashMap<(String, u64), String>,
}

#[derive(Debug)]
struct Comment {
    repo: String,
    number: u64,
    id: u64,
    body: String,
}

impl FakeForge {
    pub fn new() -> FakeForge {
        FakeForge::default()
    }

    /// Every call carried out, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// Every call made, including those failed on purpose.
    pub fn attempts(&self) -> usize {
        self.lock().attempts
    }

    /// Makes the next `n` calls (of any kind) fail with `error`.
    pub fn fail_next(&self, n: usize, error: ForgeError) {
        let mut state = self.lock();
        state.failures.extend(std::iter::repeat_n(error, n));
    }

    /// The head sha `pr_head` answers for PR `number` (unset: a 404).
    pub fn set_pr_head(&self, repo: &str, number: u64, sha: &str) {
        self.lock()
            .heads
            .insert((repo.to_string(), number), sha.to_string());
    }

    /// The comments of PR `number` as they stand: `(id, body)`, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<(u64, String)> {
        self.lock()
            .comments
            .iter()
            .filter(|c| c.repo == repo && c.number == number)
            .map(|c| (c.id, c.body.clone()))
            .collect()
    }

    /// The newest status set on `sha` with `context`.
    pub fn last_status(&self, repo: &str, sha: &str, context: &str) -> Option<CommitStatus> {
        self.lock().calls.iter().rev().find_map(|call| match call {
            FakeCall::Status {
                repo: r,
                sha: s,
                status,
            } if r == repo && s == sha && status.context == context => Some(status.clone()),
            _ => None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; the
        // state is still worth reading.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the attempt and fails it if a failure is queued.
    fn begin(&self) -> Result<MutexGuard<'_, State>, ForgeError> {
        let mut state = self.lock();
        state.attempts += 1;
        match state.failures.pop_front() {
            Some(error) => Err(error),
            None => Ok(state),
        }
    }
}

impl Forge for FakeForge {
    fn set_status(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<(), ForgeError> {
        self.begin()?.calls.push(FakeCall::Status {
            repo: repo.to_string(),
            sha: sha.to_string(),
            status: status.clone(),
        });
        Ok(())
    }

    fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        let mut state = self.begin()?;
        if marker.is_empty() {
            return Err(ForgeError::Invalid("empty comment marker".into()));
        }
        let on_pr = |c: &Comment| c.repo == repo && c.number == number;
        let existing = known
            .and_then(|id| state.comments.iter().position(|c| on_pr(c) && c.id == id))
            .or_else(|| {
                let has_marker = |c: &Comment| on_pr(c) && c.body.contains(marker);
                state.comments.iter().position(has_marker)
            });
        let id = match existing {
            Some(i) => {
                let comment = &mut state.comments[i];
                comment.body = body.to_string();
                comment.id
            }
            None => {
                state.last_id += 1;
                let id = state.last_id;
                state.comments.push(Comment {
                    repo: repo.to_string(),
                    number,
                    id,
                    body: body.to_string(),
                });
                id
            }
        };
        state.calls.push(FakeCall::Comment {
            repo: repo.to_string(),
            number,
            body: body.to_string(),
            id,
        });
        Ok(id)
    }

    fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError> {
        let mut state = self.begin()?;
        state.calls.push(FakeCall::Head {
            repo: repo.to_string(),
            number,
        });
        state
            .heads
            .get(&(repo.to_string(), number))
            .cloned()
            .ok_or_else(|| ForgeError::http(404, "Not Found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::StatusState;

    fn status(state: StatusState) -> CommitStatus {
        CommitStatus {
            state,
            context: "sluice/a".into(),
            description: "d".into(),
            target_url: None,
        }
    }

    #[test]
    fn upsert_edits_in_place() {
        let fake = FakeForge::new();
        let id = fake
            .upsert_comment("o/r", 7, "<!-- m -->", "<!-- m --> one", None)
            .unwrap();
        assert_eq!(
            fake.upsert_comment("o/r", 7, "<!-- m -->", "<!-- m --> two", None)
                .unwrap(),
            id
        );
        assert_eq!(
            fake.upsert_comment("o/r", 7, "<!-- m -->", "<!-- m --> three", Some(id))
                .unwrap(),
            id
        );
        // A stale known id falls back to the marker.
        assert_eq!(
            fake.upsert_comment("o/r", 7, "<!-- m -->", "<!-- m --> four", Some(99))
                .unwrap(),
            id
        );
        assert_eq!(
            fake.comments("o/r", 7),
            vec![(id, "<!-- m --> four".to_string())]
        );
        let other = fake
            .upsert_comment("o/r", 8, "<!-- m -->", "<!-- m --> x", None)
            .unwrap();
        assert_ne!(other, id);
        assert_eq!(fake.calls().len(), 5);
    }

    #[test]
    fn records_statuses_and_heads() {
        let fake = FakeForge::new();
        fake.set_status("o/r", "abc", &status(StatusState::Pending))
            .unwrap();
        fake.set_status("o/r", "abc", &status(StatusState::Success))
            .unwrap();
        assert_eq!(
            fake.last_status("o/r", "abc", "sluice/a").map(|s| s.state),
            Some(StatusState::Success)
        );
        assert_eq!(fake.pr_head("o/r", 1).unwrap_err().status(), Some(404));
        fake.set_pr_head("o/r", 1, "def");
        assert_eq!(fake.pr_head("o/r", 1).unwrap(), "def");
        assert_eq!(
            fake.calls()[3],
            FakeCall::Head {
                repo: "o/r".into(),
                number: 1
            }
        );
    }

    #[test]
    fn fails_the_next_calls() {
        let fake = FakeForge::new();
        fake.fail_next(2, ForgeError::http(503, "down"));
        for _ in 0..2 {
            let err = fake
                .set_status("o/r", "abc", &status(StatusState::Pending))
                .unwrap_err();
            assert!(err.is_retryable());
        }
        fake.set_status("o/r", "abc", &status(StatusState::Pending))
            .unwrap();
        assert_eq!(fake.attempts(), 3);
        assert_eq!(fake.calls().len(), 1);
    }
}
