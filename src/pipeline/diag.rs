//! Diagnostics: every problem found in one pass, each as `path:line: message`.

use std::collections::BTreeSet;
use std::fmt;

use super::path::RepoPath;

/// A problem in the repository, located at the file and line of the
/// directive (or text) that causes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    pub path: RepoPath,
    pub line: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.message)
    }
}

/// Collects diagnostics, dropping exact repeats (a mounted file is seen
/// once per pipeline that mounts it, its problem reported once).
#[derive(Debug, Default)]
pub struct Diagnostics {
    seen: BTreeSet<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, path: &RepoPath, line: u32, message: impl Into<String>) {
        self.seen.insert(Diagnostic {
            path: path.clone(),
            line: line.max(1),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Sorted by path, then line.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.seen.into_iter().collect()
    }
}
