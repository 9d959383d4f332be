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
    /// The 1-based column, when the problem is inside a line (a SQL
    /// syntax error); 0 when the whole line is meant.
    pub column: u32,
    pub message: String,
}

impl Diagnostic {
    pub fn new(path: &RepoPath, line: u32, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.clone(),
            line: line.max(1),
            column: 0,
            message: message.into(),
        }
    }

    /// A problem at a column of the line: shown as `path:line:column:`.
    pub fn at(path: &RepoPath, line: u32, column: u32, message: impl Into<String>) -> Self {
        Diagnostic {
            column,
            ..Diagnostic::new(path, line, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path, self.line, self.column, self.message
            )
        } else {
            write!(f, "{}:{}: {}", self.path, self.line, self.message)
        }
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
        self.seen.insert(Diagnostic::new(path, line, message));
    }

    /// Adds a diagnostic made elsewhere (kept once).
    pub fn insert(&mut self, d: Diagnostic) {
        self.seen.insert(d);
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
