//! GitHub's REST API, and the GitHub-shaped API Gitea copies: the same
//! paths and JSON, a different auth header and page-size parameter.

use std::fmt;

use serde::Deserialize;
use serde_json::json;

use super::http::{Http, Write, check_sha};
use super::{CommitStatus, Forge, ForgeError, encode_segment, segment, truncate_chars};

/// Both forges reject a longer status description with 422.
const DESCRIPTION_MAX: usize = 140;

/// The client of `api.github.com` or a GitHub Enterprise `/api/v3`.
#[derive(Debug)]
pub struct GithubClient(RepoApi);

impl GithubClient {
    pub fn new(api_url: &str, token: String) -> GithubClient {
        let headers = vec![
            ("authorization", format!("Bearer {token}")),
            ("accept", "application/vnd.github+json".to_string()),
            ("x-github-api-version", "2022-11-28".to_string()),
        ];
        GithubClient(RepoApi {
            http: Http::new(api_url, token, headers),
            size_param: "per_page",
        })
    }
}

impl Forge for GithubClient {
    fn set_status(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<(), ForgeError> {
        self.0.set_status(repo, sha, status)
    }

    fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        self.0.upsert_comment(repo, number, marker, body, known)
    }

    fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError> {
        self.0.pr_head(repo, number)
    }
}

/// `/repos/{owner}/{repo}/...` calls, shared by GitHub and Gitea.
pub(crate) struct RepoApi {
    pub(crate) http: Http,
    /// `per_page` (GitHub) or `limit` (Gitea).
    pub(crate) size_param: &'static str,
}

impl fmt::Debug for RepoApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoApi").field("http", &self.http).finish()
    }
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

#[derive(Deserialize)]
struct Pull {
    head: Head,
}

#[derive(Deserialize)]
struct Head {
    sha: String,
}

impl RepoApi {
    fn repo_path(repo: &str) -> Result<String, ForgeError> {
        match repo.split_once('/') {
            Some((owner, name)) if !name.contains('/') => Ok(format!(
                "/repos/{}/{}",
                segment(owner, repo)?,
                segment(name, repo)?
            )),
            _ => Err(ForgeError::Invalid(format!(
                "repository {repo:?} is not owner/name"
            ))),
        }
    }

    pub(crate) fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), ForgeError> {
        let mut payload = json!({
            "state": status.state.github_name(),
            "context": status.context,
            "description": truncate_chars(&status.description, DESCRIPTION_MAX),
        });
        if let Some(url) = &status.target_url {
            payload["target_url"] = json!(url);
        }
        let path = format!(
            "{}/statuses/{}",
            Self::repo_path(repo)?,
            encode_segment(sha)
        );
        self.http.write(Write::Post, &path, &payload)?;
        Ok(())
    }

    pub(crate) fn upsert_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
        known: Option<u64>,
    ) -> Result<u64, ForgeError> {
        if marker.is_empty() {
            // Every comment contains "": we would edit someone else's.
            return Err(ForgeError::Invalid("empty comment marker".into()));
        }
        let base = Self::repo_path(repo)?;
        let payload = json!({ "body": body });
        let edit = |id: u64| {
            self.http.write(
                Write::Patch,
                &format!("{base}/issues/comments/{id}"),
                &payload,
            )
        };
        if let Some(id) = known {
            match edit(id) {
                Ok(_) => return Ok(id),
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        let list = format!("{base}/issues/{number}/comments");
        let found = self
            .http
            .find_in_pages(&list, self.size_param, |c: &Comment| {
                let text = c.body.as_deref()?;
                text.contains(marker).then(|| (c.id, text == body))
            })?;
        match found {
            // It already says this: an edit would only spend rate limit.
            Some((id, true)) => Ok(id),
            Some((id, false)) => edit(id).map(|_| id),
            None => Ok(self
                .http
                .write(Write::Post, &list, &payload)?
                .json::<Created>()?
                .id),
        }
    }

    pub(crate) fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError> {
        let path = format!("{}/pulls/{number}", Self::repo_path(repo)?);
        check_sha(self.http.get(&path)?.json::<Pull>()?.head.sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths() {
        assert_eq!(RepoApi::repo_path("o/r").unwrap(), "/repos/o/r");
        assert_eq!(
            RepoApi::repo_path("my-org/a.b_c").unwrap(),
            "/repos/my-org/a.b_c"
        );
        assert_eq!(RepoApi::repo_path("o/r?x=1").unwrap(), "/repos/o/r%3Fx%3D1");
        for bad in ["o", "o/r/x", "/r", "o/", "../r", "o/.."] {
            assert!(RepoApi::repo_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let client = GithubClient::new("https://api.github.com", "ghp_0123456789abcdef".into());
        let debug = format!("{client:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
