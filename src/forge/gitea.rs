//! Gitea and Forgejo (`/api/v1`): GitHub's paths and JSON with Gitea's auth
//! header and its `limit` page size, so it reuses GitHub's [`RepoApi`].

use super::github::RepoApi;
use super::http::Http;
use super::{CommitStatus, Forge, ForgeError};

/// The client of a Gitea or Forgejo instance's `/api/v1`.
#[derive(Debug)]
pub struct GiteaClient(RepoApi);

impl GiteaClient {
    pub fn new(api_url: &str, token: String) -> GiteaClient {
        let headers = vec![
            ("authorization", format!("token {token}")),
            ("accept", "application/json".to_string()),
        ];
        GiteaClient(RepoApi {
            http: Http::new(api_url, token, headers),
            size_param: "limit",
        })
    }
}

impl Forge for GiteaClient {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let client = GiteaClient::new("https://gitea.example/api/v1/", "0123456789abcdef".into());
        let debug = format!("{client:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }
}
