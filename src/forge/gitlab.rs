//! GitLab's REST API (`/api/v4`): commit statuses, merge-request notes,
//! and an MR's head. Projects are named by id or URL-encoded path.

use std::fmt;

use serde::Deserialize;
use serde_json::json;

use super::http::{Http, Write, check_sha};
use super::{CommitStatus, Forge, ForgeError, encode_segment, segment, truncate_chars};

/// GitLab's limit on a status description, and on its target URL.
const FIELD_MAX: usize = 255;

/// The client of a GitLab instance's `/api/v4`.
pub struct GitlabClient {
    http: Http,
}

impl fmt::Debug for GitlabClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitlabClient")
            .field("http", &self.http)
            .finish()
    }
}

#[derive(Deserialize)]
struct Note {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    system: bool,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

#[derive(Deserialize)]
struct MergeRequest {
    #[serde(default)]
    sha: Option<String>,
    #[serde(default)]
    diff_refs: Option<DiffRefs>,
}

#[derive(Deserialize)]
struct DiffRefs {
    #[serde(default)]
    head_sha: Option<String>,
}

impl GitlabClient {
    pub fn new(api_url: &str, token: String) -> GitlabClient {
        let headers = vec![("private-token", token.clone())];
        GitlabClient {
            http: Http::new(api_url, token, headers),
        }
    }

    /// `/projects/grp%2Fproj`: the whole `path_with_namespace` is one segment.
    fn project_path(repo: &str) -> Result<String, ForgeError> {
        Ok(format!("/projects/{}", segment(repo, repo)?))
    }
}

impl Forge for GitlabClient {
    fn set_status(&self, repo: &str, sha: &str, status: &CommitStatus) -> Result<(), ForgeError> {
        let mut payload = json!({
            "state": status.state.gitlab_name(),
            "name": status.context,
            "description": truncate_chars(&status.description, FIELD_MAX),
        });
        // A cut URL would point somewhere else; a status without one is better
        // than a 400.
        if let Some(url) = status
            .target_url
            .as_ref()
            .filter(|u| u.chars().count() <= FIELD_MAX)
        {
            payload["target_url"] = json!(url);
        }
        let path = format!(
            "{}/statuses/{}",
            Self::project_path(repo)?,
            encode_segment(sha)
        );
        self.http.write(Write::Post, &path, &payload)?;
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
        if marker.is_empty() {
            // Every note contains "": we would edit someone else's.
            return Err(ForgeError::Invalid("empty comment marker".into()));
        }
        let notes = format!(
            "{}/merge_requests/{number}/notes",
            Self::project_path(repo)?
        );
        let payload = json!({ "body": body });
        let edit = |id: u64| {
            self.http
                .write(Write::Put, &format!("{notes}/{id}"), &payload)
        };
        if let Some(id) = known {
            match edit(id) {
                Ok(_) => return Ok(id),
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        let list = format!("{notes}?sort=asc&order_by=created_at");
        let found = self.http.find_in_pages(&list, "per_page", |n: &Note| {
            let text = n.body.as_deref().filter(|_| !n.system)?;
            text.contains(marker).then(|| (n.id, text == body))
        })?;
        match found {
            // It already says this: an edit would only spend rate limit.
            Some((id, true)) => Ok(id),
            Some((id, false)) => edit(id).map(|_| id),
            None => Ok(self
                .http
                .write(Write::Post, &notes, &payload)?
                .json::<Created>()?
                .id),
        }
    }

    fn pr_head(&self, repo: &str, number: u64) -> Result<String, ForgeError> {
        let path = format!("{}/merge_requests/{number}", Self::project_path(repo)?);
        let mr: MergeRequest = self.http.get(&path)?.json()?;
        let sha = mr
            .sha
            .or_else(|| mr.diff_refs.and_then(|d| d.head_sha))
            .ok_or_else(|| {
                ForgeError::Invalid(format!("merge request {number} has no head sha"))
            })?;
        check_sha(sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths() {
        assert_eq!(
            GitlabClient::project_path("grp/sub/proj").unwrap(),
            "/projects/grp%2Fsub%2Fproj"
        );
        assert_eq!(GitlabClient::project_path("42").unwrap(), "/projects/42");
        assert!(GitlabClient::project_path("").is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let client = GitlabClient::new(
            "https://gitlab.example/api/v4",
            "glpat-0123456789abcdef".into(),
        );
        let debug = format!("{client:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
