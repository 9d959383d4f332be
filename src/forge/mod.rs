//! Talking to code forges: commit statuses, the one PR comment, a PR's head.
//!
//! Synchronous on purpose: the daemon calls a [`Forge`] from its outbox
//! thread, `sluice ci` and the git hooks from plain code. One small ureq
//! client ([`http`]) serves GitHub, GitLab and Gitea alike, because the
//! outbox needs the status code, `Retry-After` and rate-limit headers of
//! every answer; [`FakeForge`] records calls for tests.

mod error;
mod fake;
mod gitea;
mod github;
mod gitlab;
pub(crate) mod http;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::{ForgeError, backoff};
pub use fake::{FakeCall, FakeForge};
pub use gitea::GiteaClient;
pub use github::GithubClient;
pub use gitlab::GitlabClient;

/// A code forge sluice reports to.
pub trait Forge: Send + Sync {
    /// Sets a commit status (context `sluice/<pipeline>`).
    fn set_status(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<(), ForgeError>;

    /// Creates the one comment of PR/MR `number` carrying `marker`, or edits
    /// it in place. `known` is the comment id remembered from last time: it
    /// is edited directly, and only if it is gone (404) are the comments
    /// searched. The search lists every page and takes the oldest comment
    /// whose body contains `marker`, whoever wrote it; if there is none, the
    /// comment is created. Returns the comment id. Never posts a second one.
    fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
        known: Option<u64>,
    ) -> Result<u64, ForgeError>;

    /// The head commit sha of PR/MR `number`.
    fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError>;
}

/// So a test can keep a handle on a fake it hands over as `Box<dyn Forge>`.
impl<F: Forge + ?Sized> Forge for std::sync::Arc<F> {
    fn set_status(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<(), ForgeError> {
        (**self).set_status(repo, sha, status)
    }

    fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        (**self).upsert_comment(repo, number, marker, body, known)
    }

    fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError> {
        (**self).pr_head(repo, number)
    }
}

/// One commit status, in forge-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub state: StatusState,
    /// `sluice/<pipeline>`; GitLab calls it `name`.
    pub context: String,
    /// Cut to the forge's limit (140 chars on GitHub and Gitea, 255 on
    /// GitLab) by the client, as a last guard.
    pub description: String,
    pub target_url: Option<String>,
}

/// The state of a commit status; each client maps it to its forge's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
    Cancelled,
}

impl StatusState {
    /// GitHub's and Gitea's word: neither has "cancelled", so it is `error`.
    pub fn github_name(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error | StatusState::Cancelled => "error",
        }
    }

    /// GitLab's word: it has no "error", so that is `failed` too.
    pub fn gitlab_name(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure | StatusState::Error => "failed",
            StatusState::Cancelled => "canceled",
        }
    }
}

impl From<crate::engine::Outcome> for StatusState {
    /// The status of a pipeline's verdict.
    fn from(o: crate::engine::Outcome) -> StatusState {
        use crate::engine::Outcome;
        match o {
            Outcome::Success => StatusState::Success,
            Outcome::Failure => StatusState::Failure,
            Outcome::Error => StatusState::Error,
            Outcome::Cancelled => StatusState::Cancelled,
        }
    }
}

/// Which forge API a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
        }
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A forge kind that is not `github`, `gitlab` or `gitea`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown forge {0:?} (expected github, gitlab or gitea)")]
pub struct UnknownForgeKind(pub String);

impl FromStr for ForgeKind {
    type Err = UnknownForgeKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(ForgeKind::Github),
            "gitlab" => Ok(ForgeKind::Gitlab),
            "gitea" => Ok(ForgeKind::Gitea),
            other => Err(UnknownForgeKind(other.to_string())),
        }
    }
}

/// The client for `kind` at `api_url` (`https://api.github.com`,
/// `https://gitlab.example/api/v4`, `https://gitea.example/api/v1`; a
/// trailing slash is fine).
pub fn client(kind: ForgeKind, api_url: &str, token: String) -> Box<dyn Forge> {
    match kind {
        ForgeKind::Github => Box::new(GithubClient::new(api_url, token)),
        ForgeKind::Gitlab => Box::new(GitlabClient::new(api_url, token)),
        ForgeKind::Gitea => Box::new(GiteaClient::new(api_url, token)),
    }
}

/// Percent-encodes `s` as one URL path segment: every byte outside the
/// unreserved set (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so GitLab's
/// `grp/proj` is `grp%2Fproj`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` cut to at most `max` chars, on a char boundary.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// One path segment of a repository name, encoded; `.`, `..` and empty
/// segments would change the path's meaning, so they are refused.
fn segment(part: &str, repo: &str) -> Result<String, ForgeError> {
    if part.is_empty() || part == "." || part == ".." {
        return Err(ForgeError::Invalid(format!("bad repository name {repo:?}")));
    }
    Ok(encode_segment(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_one_segment() {
        assert_eq!(encode_segment("grp/proj"), "grp%2Fproj");
        assert_eq!(encode_segment("a/b/c-d_e.f~g"), "a%2Fb%2Fc-d_e.f~g");
        assert_eq!(encode_segment("42"), "42");
        assert_eq!(encode_segment("a b?#%"), "a%20b%3F%23%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
        assert_eq!(encode_segment(""), "");
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("abcdef", 3), "abc");
        assert_eq!(truncate_chars("ééé", 2), "éé");
        assert_eq!(truncate_chars("", 0), "");
        assert_eq!(truncate_chars("x", 0), "");
    }

    #[test]
    fn state_names() {
        use StatusState::*;
        let gh: Vec<_> = [Pending, Success, Failure, Error, Cancelled]
            .iter()
            .map(|s| s.github_name())
            .collect();
        assert_eq!(gh, ["pending", "success", "failure", "error", "error"]);
        let gl: Vec<_> = [Pending, Success, Failure, Error, Cancelled]
            .iter()
            .map(|s| s.gitlab_name())
            .collect();
        assert_eq!(gl, ["pending", "success", "failed", "failed", "canceled"]);
    }

    #[test]
    fn forge_kind_parses() {
        for kind in [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea] {
            assert_eq!(kind.as_str().parse::<ForgeKind>(), Ok(kind));
            let json = format!("\"{kind}\"");
            assert_eq!(serde_json::from_str::<ForgeKind>(&json).unwrap(), kind);
        }
        assert!("GitHub".parse::<ForgeKind>().is_err());
        assert!(serde_json::from_str::<ForgeKind>("\"bitbucket\"").is_err());
    }

    #[test]
    fn repo_segments_refuse_dots() {
        assert_eq!(segment("a.b", "o/a.b").unwrap(), "a.b");
        assert!(segment("..", "o/..").is_err());
        assert!(segment("", "o/").is_err());
    }
}
