//! Repo-relative paths, normalised once so that no path can name a place
//! outside the repository.

use std::fmt;
use std::sync::Arc;

/// A normalised path inside the repository: `/`-separated, no `.` or `..`
/// components, no leading or trailing slash. The empty path is the root.
///
/// Shared, not copied: a clone is a reference count, so the origins,
/// dependencies and nodes that name a file all point at one allocation
/// (a 50,000-node graph clones each path many times).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPath(Arc<str>);

impl Default for RepoPath {
    fn default() -> Self {
        RepoPath::root()
    }
}

/// Why a path could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` leaves the repository")]
    Escapes(String),
    #[error("path `{0}` is empty")]
    Empty(String),
    #[error("path `{0}` contains a backslash or NUL byte")]
    BadChar(String),
}

impl RepoPath {
    /// The repository root.
    pub fn root() -> Self {
        RepoPath(Arc::from(""))
    }

    /// Parses a repo-relative path (a leading `/` is allowed and means the
    /// root). `..` may be used only while it stays inside the repository.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        RepoPath::root().join(s)
    }

    /// Resolves `rel` against this directory. `rel` starting with `/` is
    /// taken from the root instead.
    pub fn join(&self, rel: &str) -> Result<Self, PathError> {
        if rel.contains('\\') || rel.contains('\0') {
            return Err(PathError::BadChar(rel.to_string()));
        }
        if rel.trim().is_empty() {
            return Err(PathError::Empty(rel.to_string()));
        }
        let mut parts: Vec<&str> = if rel.starts_with('/') {
            Vec::new()
        } else {
            self.components().collect()
        };
        for part in rel.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::Escapes(rel.to_string()));
                    }
                }
                p => parts.push(p),
            }
        }
        Ok(RepoPath(Arc::from(parts.join("/"))))
    }

    /// Appends one plain file or directory name.
    pub fn child(&self, name: &str) -> Self {
        if self.0.is_empty() {
            RepoPath(Arc::from(name))
        } else {
            let mut s = String::with_capacity(self.0.len() + 1 + name.len());
            s.push_str(&self.0);
            s.push('/');
            s.push_str(name);
            RepoPath(Arc::from(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The containing directory; the root's parent is the root.
    pub fn parent(&self) -> RepoPath {
        match self.0.rfind('/') {
            Some(i) => RepoPath(Arc::from(&self.0[..i])),
            None => RepoPath::root(),
        }
    }

    /// The last component (empty for the root).
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The file name without its last extension.
    pub fn stem(&self) -> &str {
        let name = self.file_name();
        match name.rfind('.') {
            Some(i) if i > 0 => &name[..i],
            _ => name,
        }
    }

    /// The last extension without the dot, if any.
    pub fn extension(&self) -> Option<&str> {
        let name = self.file_name();
        match name.rfind('.') {
            Some(i) if i > 0 => Some(&name[i + 1..]),
            _ => None,
        }
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_dots_and_slashes() {
        let p = RepoPath::parse("a/./b//c/../d").unwrap();
        assert_eq!(p.as_str(), "a/b/d");
        assert_eq!(RepoPath::parse("/x/y").unwrap().as_str(), "x/y");
        let base = RepoPath::parse("clinics/a").unwrap();
        assert_eq!(base.join("../b/N").unwrap().as_str(), "clinics/b/N");
        assert_eq!(base.join("/common/v").unwrap().as_str(), "common/v");
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(
            RepoPath::parse("../etc/passwd"),
            Err(PathError::Escapes(_))
        ));
        let base = RepoPath::parse("a").unwrap();
        assert!(base.join("../../x").is_err());
        assert!(base.join("..").is_ok());
        assert!(RepoPath::parse("a\\b").is_err());
    }

    #[test]
    fn names() {
        let p = RepoPath::parse("dir/Patient.sql").unwrap();
        assert_eq!(p.file_name(), "Patient.sql");
        assert_eq!(p.stem(), "Patient");
        assert_eq!(p.extension(), Some("sql"));
        assert_eq!(p.parent().as_str(), "dir");
        assert_eq!(RepoPath::parse(".hidden").unwrap().extension(), None);
    }
}
