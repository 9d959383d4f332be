//! Webhook authentication and payloads. A delivery is authenticated on its
//! raw body bytes first (GitHub/Gitea HMAC, GitLab token, the `/hooks/git`
//! bearer secret), and only then parsed into an [`Event`] that no longer
//! says which forge sent it. Pure: no I/O, no clock.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The most ref updates one `/hooks/git` delivery may carry.
pub const MAX_GIT_HOOK_UPDATES: usize = 1000;

/// The longest delivery id kept.
pub const MAX_DELIVERY_ID_LEN: usize = 128;

/// The longest repository path or branch name accepted from a payload.
const MAX_NAME_LEN: usize = 1024;

// ---------------------------------------------------------------------------
// Authentication

/// Checks GitHub's (and Gitea's GitHub-compatible) `X-Hub-Signature-256:
/// sha256=<hex>` header against the HMAC-SHA256 of the raw body. A missing
/// header, another algorithm (`sha1=`), bad hex or an empty secret fail.
pub fn verify_hub_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    header
        .and_then(|h| h.trim().strip_prefix("sha256="))
        .is_some_and(|hex| verify_hex_mac(secret, body, hex))
}

/// Checks Gitea's (and Forgejo's) `X-Gitea-Signature` header: the same
/// HMAC-SHA256 as [`verify_hub_signature`], as bare hex with no prefix.
pub fn verify_gitea_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    header.is_some_and(|hex| verify_hex_mac(secret, body, hex.trim()))
}

/// Checks a shared-secret header such as GitLab's `X-Gitlab-Token`.
///
/// Both sides are hashed to SHA-256 and the two fixed-size digests compared
/// in constant time. `subtle`'s slice comparison returns early when the
/// lengths differ, so comparing the raw strings would tell a caller timing
/// the answer how long the secret is; digests are always 32 bytes, and equal
/// digests mean equal strings (SHA-256 is collision resistant).
pub fn verify_token(secret: &[u8], header: Option<&str>) -> bool {
    let Some(given) = header else {
        return false;
    };
    if secret.is_empty() {
        return false;
    }
    let want = Sha256::digest(secret);
    let got = Sha256::digest(given.as_bytes());
    bool::from(want.as_slice().ct_eq(got.as_slice()))
}

/// Checks `Authorization: Bearer <secret>`, the `/hooks/git` credential.
/// The scheme is case-insensitive (RFC 9110); the secret is compared as in
/// [`verify_token`].
pub fn verify_bearer(secret: &[u8], authorization: Option<&str>) -> bool {
    let token = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    verify_token(secret, token)
}

/// `sha256=<lowercase hex HMAC-SHA256 of body>`, the `X-Hub-Signature-256`
/// value; for tests and for hooks that sign what they send.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", to_hex(&hmac_sha256(secret, body)))
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .expect("HMAC takes a key of any length (longer keys are hashed)");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn verify_hex_mac(secret: &[u8], body: &[u8], hex: &str) -> bool {
    // Anyone can compute a MAC under the empty key: never accept one.
    if secret.is_empty() {
        return false;
    }
    let Some(given) = from_hex_32(hex) else {
        return false;
    };
    let want = hmac_sha256(secret, body);
    bool::from(want.ct_eq(&given))
}

/// Decodes exactly 64 hex digits (either case). The length is public (it
/// is the digest size), so checking it first leaks nothing.
fn from_hex_32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The delivery's id, to drop a redelivery: `X-GitHub-Delivery`, else
/// `X-Gitea-Delivery`, else GitLab's `Idempotency-Key` (stable across
/// retries), else `X-Gitlab-Event-UUID`. The first header present decides:
/// if it is empty, longer than 128 characters or not printable ASCII
/// (no spaces), there is no id.
pub fn delivery_id(headers: impl Fn(&str) -> Option<String>) -> Option<String> {
    let id = [
        "X-GitHub-Delivery",
        "X-Gitea-Delivery",
        "Idempotency-Key",
        "X-Gitlab-Event-UUID",
    ]
    .into_iter()
    .find_map(&headers)?;
    let ok = !id.is_empty()
        && id.len() <= MAX_DELIVERY_ID_LEN
        && id.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(id)
}

// ---------------------------------------------------------------------------
// Events

/// A webhook delivery, whichever forge sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The forge checking the hook works; answer 2xx.
    Ping,
    Push {
        /// `full_name` / `path_with_namespace`.
        repo: String,
        /// The full ref, `refs/heads/x` or `refs/tags/x`.
        git_ref: String,
        /// `x` for `refs/heads/x`; `None` for tags and other refs.
        branch: Option<String>,
        before: String,
        /// The commit to build; all zeros when `deleted`.
        after: String,
        /// The ref was deleted: nothing to build.
        deleted: bool,
    },
    PullRequest {
        /// The base (GitHub, Gitea) or target (GitLab) repository: where
        /// statuses and comments go.
        repo: String,
        /// The PR number (GitHub, Gitea) or MR `iid` (GitLab).
        number: u64,
        action: PrAction,
        head_sha: String,
        /// The source branch's short name.
        head_ref: String,
        /// The target branch's short name.
        base_ref: String,
        /// The head lives in another repository (or one since deleted).
        from_fork: bool,
        /// The head may be a commit not built yet: opened, reopened, new
        /// commits pushed; false for a closed PR or a GitLab `update` that
        /// only changed the title, labels or the like.
        new_commits: bool,
    },
    /// An authenticated delivery sluice has nothing to do for.
    Ignored { reason: String },
}

/// What happened to a pull or merge request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    Opened,
    /// New commits: GitHub `synchronize`, Gitea `synchronized`, GitLab
    /// `update`.
    Synchronize,
    Reopened,
    /// Closed, merged or not (GitLab `close` and `merge`).
    Closed,
    /// Labels, reviews, approvals, edits...
    Other,
}

/// Why a payload was refused. Messages name fields, never their values: a
/// payload's text does not end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("the payload lacks field `{field}`")]
    MissingField { field: String },
    #[error("a field of the payload has the wrong type or value (line {line}, column {column})")]
    WrongShape { line: usize, column: usize },
    #[error("`{field}` is not a commit id (40 or 64 hex digits)")]
    BadSha { field: &'static str },
    #[error("`{field}` is not a ref name starting with refs/")]
    BadRef { field: &'static str },
    #[error("`{field}` is not a valid branch name")]
    BadBranch { field: &'static str },
    #[error("`{field}` is empty, too long or has control characters")]
    BadName { field: &'static str },
    #[error("more than {max} ref updates in one delivery")]
    TooManyUpdates { max: usize },
}

fn is_zero_sha(sha: &str) -> bool {
    sha.bytes().all(|b| b == b'0')
}

/// Parses a GitHub delivery; `event` is the `X-GitHub-Event` header.
pub fn parse_github(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    parse_hub(Hub::Github, event, body)
}

/// Parses a Gitea or Forgejo delivery; `event` is the `X-Gitea-Event`
/// header. Gitea's push has no `created`/`deleted` (a zero sha says it) and
/// its new-commits action is `synchronized`; ref creation and deletion also
/// come as `create`/`delete` events, which are ignored since the push
/// carries the same news.
pub fn parse_gitea(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    parse_hub(Hub::Gitea, event, body)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hub {
    Github,
    Gitea,
}

#[derive(Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// GitHub only.
    deleted: Option<bool>,
    repository: HubRepo,
}

#[derive(Deserialize)]
struct HubRepo {
    full_name: String,
}

#[derive(Deserialize)]
struct HubPullRequestEvent {
    action: String,
    number: u64,
    pull_request: HubPullRequest,
}

#[derive(Deserialize)]
struct HubPullRequest {
    head: HubBranch,
    base: HubBranch,
}

#[derive(Deserialize)]
struct HubBranch {
    #[serde(rename = "ref")]
    branch: String,
    sha: String,
    /// Null when the fork the PR came from was deleted.
    repo: Option<HubRepo>,
}

fn parse_hub(hub: Hub, event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    match event {
        "ping" => Ok(Event::Ping),
        "push" => {
            let p: HubPush = from_json(body)?;
            let after = sha(p.after, "after")?;
            let deleted = p.deleted == Some(true) || is_zero_sha(&after);
            push_event(
                name(p.repository.full_name, "repository.full_name")?,
                p.git_ref,
                sha(p.before, "before")?,
                after,
                deleted,
            )
        }
        "pull_request" => {
            let p: HubPullRequestEvent = from_json(body)?;
            let action = match (hub, p.action.as_str()) {
                (_, "opened") => PrAction::Opened,
                (Hub::Github, "synchronize") | (Hub::Gitea, "synchronized") => {
                    PrAction::Synchronize
                }
                (_, "reopened") => PrAction::Reopened,
                (_, "closed") => PrAction::Closed,
                _ => PrAction::Other,
            };
            let pr = p.pull_request;
            let base_repo = pr.base.repo.ok_or(PayloadError::MissingField {
                field: "pull_request.base.repo".into(),
            })?;
            let from_fork = pr
                .head
                .repo
                .is_none_or(|head| head.full_name != base_repo.full_name);
            Ok(Event::PullRequest {
                repo: name(base_repo.full_name, "pull_request.base.repo.full_name")?,
                number: p.number,
                action,
                head_sha: sha(pr.head.sha, "pull_request.head.sha")?,
                head_ref: branch(pr.head.branch, "pull_request.head.ref")?,
                base_ref: branch(pr.base.branch, "pull_request.base.ref")?,
                from_fork,
                new_commits: matches!(
                    action,
                    PrAction::Opened | PrAction::Synchronize | PrAction::Reopened
                ),
            })
        }
        other => Ok(ignored(other)),
    }
}

#[derive(Deserialize)]
struct GitlabPush {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// Null when a branch is deleted.
    checkout_sha: Option<String>,
    project: GitlabProject,
}

#[derive(Deserialize)]
struct GitlabProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GitlabMergeRequestEvent {
    /// The target project.
    project: GitlabProject,
    object_attributes: GitlabMergeRequest,
}

#[derive(Deserialize)]
struct GitlabMergeRequest {
    iid: u64,
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    last_commit: GitlabCommit,
    /// Present only when an `update` brought new commits.
    oldrev: Option<String>,
}

#[derive(Deserialize)]
struct GitlabCommit {
    id: String,
}

/// Parses a GitLab delivery; `event` is the `X-Gitlab-Event` header. Tag
/// pushes become a `Push` with no branch; system hooks and other events
/// are ignored.
pub fn parse_gitlab(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    match event {
        "Push Hook" | "Tag Push Hook" => {
            let p: GitlabPush = from_json(body)?;
            let after = sha(p.after, "after")?;
            let deleted = p.checkout_sha.is_none() || is_zero_sha(&after);
            if let Some(checkout) = p.checkout_sha {
                sha(checkout, "checkout_sha")?;
            }
            push_event(
                name(p.project.path_with_namespace, "project.path_with_namespace")?,
                p.git_ref,
                sha(p.before, "before")?,
                after,
                deleted,
            )
        }
        "Merge Request Hook" => {
            let p: GitlabMergeRequestEvent = from_json(body)?;
            let mr = p.object_attributes;
            let new_commits = match mr.oldrev {
                Some(oldrev) => {
                    sha(oldrev, "object_attributes.oldrev")?;
                    true
                }
                None => false,
            };
            let (action, new_commits) = match mr.action.as_deref() {
                Some("open") => (PrAction::Opened, true),
                Some("reopen") => (PrAction::Reopened, true),
                Some("update") => (PrAction::Synchronize, new_commits),
                Some("close" | "merge") => (PrAction::Closed, false),
                _ => (PrAction::Other, false),
            };
            Ok(Event::PullRequest {
                repo: name(p.project.path_with_namespace, "project.path_with_namespace")?,
                number: mr.iid,
                action,
                head_sha: sha(mr.last_commit.id, "object_attributes.last_commit.id")?,
                head_ref: branch(mr.source_branch, "object_attributes.source_branch")?,
                base_ref: branch(mr.target_branch, "object_attributes.target_branch")?,
                from_fork: mr.source_project_id != mr.target_project_id,
                new_commits,
            })
        }
        other => Ok(ignored(other)),
    }
}

/// What a plain git server's post-receive hook posts to `/hooks/git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHookUpdate {
    pub repo: String,
    pub updates: Vec<RefUpdate>,
}

/// One line of a post-receive hook's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// All zeros when the ref was created.
    pub old: String,
    /// All zeros when the ref was deleted.
    pub new: String,
    pub git_ref: String,
}

#[derive(Deserialize)]
struct RawGitHook {
    repo: String,
    updates: Vec<RawRefUpdate>,
}

#[derive(Deserialize)]
struct RawRefUpdate {
    old: String,
    new: String,
    #[serde(rename = "ref")]
    git_ref: String,
}

/// Parses `{"repo": "name", "updates": [{"old": .., "new": .., "ref": ..}]}`
/// with at most [`MAX_GIT_HOOK_UPDATES`] updates.
pub fn parse_git_hook(body: &[u8]) -> Result<GitHookUpdate, PayloadError> {
    let raw: RawGitHook = from_json(body)?;
    if raw.updates.len() > MAX_GIT_HOOK_UPDATES {
        return Err(PayloadError::TooManyUpdates {
            max: MAX_GIT_HOOK_UPDATES,
        });
    }
    let updates = raw
        .updates
        .into_iter()
        .map(|u| {
            Ok(RefUpdate {
                old: sha(u.old, "updates[].old")?,
                new: sha(u.new, "updates[].new")?,
                git_ref: full_ref(u.git_ref, "updates[].ref")?,
            })
        })
        .collect::<Result<_, PayloadError>>()?;
    Ok(GitHookUpdate {
        repo: name(raw.repo, "repo")?,
        updates,
    })
}

// ---------------------------------------------------------------------------
// Validation

fn push_event(
    repo: String,
    git_ref: String,
    before: String,
    after: String,
    deleted: bool,
) -> Result<Event, PayloadError> {
    let git_ref = full_ref(git_ref, "ref")?;
    let branch = git_ref.strip_prefix("refs/heads/").map(str::to_string);
    Ok(Event::Push {
        repo,
        git_ref,
        branch,
        before,
        after,
        deleted,
    })
}

/// An event sluice does not handle; the name is echoed only when it looks
/// like an event name, since a header is request content.
fn ignored(event: &str) -> Event {
    let shown = if !event.is_empty()
        && event.len() <= 64
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b' ')
    {
        format!("`{event}`")
    } else {
        "an unrecognised event".to_string()
    };
    Event::Ignored {
        reason: format!("{shown} is not handled"),
    }
}

fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => {
                // serde's "missing field `x`" names one of our struct's
                // fields; other data errors quote the offending value.
                let text = e.to_string();
                match text
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(field) => PayloadError::MissingField {
                        field: field.to_string(),
                    },
                    None => PayloadError::WrongShape { line, column },
                }
            }
            _ => PayloadError::Syntax { line, column },
        }
    })
}

/// A commit id: 40 (SHA-1) or 64 (SHA-256) hex digits, returned in lower
/// case so ids compare as strings.
fn sha(value: String, field: &'static str) -> Result<String, PayloadError> {
    if matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(PayloadError::BadSha { field })
    }
}

/// A full ref name: `refs/...` with a valid branch-like rest.
fn full_ref(value: String, field: &'static str) -> Result<String, PayloadError> {
    match value.strip_prefix("refs/") {
        Some(rest) if rest.len() <= MAX_NAME_LEN && is_ref_rest(rest) => Ok(value),
        _ => Err(PayloadError::BadRef { field }),
    }
}

fn is_ref_rest(rest: &str) -> bool {
    // `refs/heads/refs/x` is a legal branch, so the rest is checked as a
    // branch name without its ban on a leading `refs/`.
    super::config::is_branch_name(rest.strip_prefix("refs/").unwrap_or(rest))
}

/// A branch's short name, as in a PR's head and base.
fn branch(value: String, field: &'static str) -> Result<String, PayloadError> {
    if value.len() <= MAX_NAME_LEN && is_ref_rest(&value) {
        Ok(value)
    } else {
        Err(PayloadError::BadBranch { field })
    }
}

/// A repository path: looked up in the configuration, so only its shape is
/// checked here.
fn name(value: String, field: &'static str) -> Result<String, PayloadError> {
    if !value.is_empty() && value.len() <= MAX_NAME_LEN && !value.chars().any(char::is_control) {
        Ok(value)
    } else {
        Err(PayloadError::BadName { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    mod fixtures {
        pub const GH_PING_1: &[u8] = include_bytes!("../../fixtures/webhooks/github/ping.1.json");
        pub const GH_PING_2: &[u8] = include_bytes!("../../fixtures/webhooks/github/ping.2.json");
        pub const GH_PUSH_1: &[u8] = include_bytes!("../../fixtures/webhooks/github/push.1.json");
        pub const GH_PUSH_2: &[u8] = include_bytes!("../../fixtures/webhooks/github/push.2.json");
        pub const GH_PUSH_3: &[u8] = include_bytes!("../../fixtures/webhooks/github/push.3.json");
        pub const GH_PUSH_4: &[u8] = include_bytes!("../../fixtures/webhooks/github/push.4.json");
        pub const GH_PR_OPENED_1: &[u8] =
            include_bytes!("../../fixtures/webhooks/github/pull_request.opened.1.json");
        pub const GH_PR_OPENED_2: &[u8] =
            include_bytes!("../../fixtures/webhooks/github/pull_request.opened.2.json");
        pub const GH_PR_SYNCHRONIZE_1: &[u8] =
            include_bytes!("../../fixtures/webhooks/github/pull_request.synchronize.1.json");
        pub const GH_PR_REOPENED_1: &[u8] =
            include_bytes!("../../fixtures/webhooks/github/pull_request.reopened.1.json");
        pub const GH_PR_CLOSED_1: &[u8] =
            include_bytes!("../../fixtures/webhooks/github/pull_request.closed.1.json");
        pub const GL_PUSH_1: &[u8] = include_bytes!("../../fixtures/webhooks/gitlab/push.1.json");
        pub const GL_MR_1: &[u8] =
            include_bytes!("../../fixtures/webhooks/gitlab/merge_request.1.json");
    }
    use fixtures::*;

    const ZERO_SHA_40: &str = "0000000000000000000000000000000000000000";
    const TAG_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    const PR_HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

    fn edit(body: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(body).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn github_pr(action: PrAction, new_commits: bool) -> Event {
        Event::PullRequest {
            repo: "Codertocat/Hello-World".into(),
            number: 2,
            action,
            head_sha: PR_HEAD.into(),
            head_ref: "changes".into(),
            base_ref: "master".into(),
            from_fork: false,
            new_commits,
        }
    }

    // --- authentication

    #[test]
    fn signature_round_trip() {
        let body = GH_PUSH_1;
        let sig = sign(SECRET, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify_hub_signature(SECRET, body, Some(&sig)));
        assert!(verify_hub_signature(
            SECRET,
            body,
            Some(&sig.to_uppercase().replace("SHA256=", "sha256="))
        ));
        // Gitea's bare hex header carries the same digest.
        assert!(verify_gitea_signature(
            SECRET,
            body,
            Some(&sig["sha256=".len()..])
        ));
        assert!(!verify_gitea_signature(SECRET, body, Some(&sig)));
    }

    #[test]
    fn signature_matches_githubs_documented_example() {
        // docs.github.com "Validating webhook deliveries" test values.
        assert_eq!(
            sign(SECRET, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn tampered_body_is_rejected() {
        let sig = sign(SECRET, GH_PUSH_1);
        let mut body = GH_PUSH_1.to_vec();
        body[10] ^= 1;
        assert!(!verify_hub_signature(SECRET, &body, Some(&sig)));
        assert!(!verify_gitea_signature(SECRET, &body, Some(&sig[7..])));
    }

    #[test]
    fn wrong_secret_is_rejected() {
        let sig = sign(b"another secret", GH_PUSH_1);
        assert!(!verify_hub_signature(SECRET, GH_PUSH_1, Some(&sig)));
        // An empty key is a MAC anyone can make.
        let sig = sign(b"", GH_PUSH_1);
        assert!(!verify_hub_signature(b"", GH_PUSH_1, Some(&sig)));
        assert!(!verify_gitea_signature(b"", GH_PUSH_1, Some(&sig[7..])));
    }

    #[test]
    fn missing_or_malformed_signatures_are_rejected() {
        let sig = sign(SECRET, GH_PUSH_1);
        let hex = &sig[7..];
        assert!(!verify_hub_signature(SECRET, GH_PUSH_1, None));
        assert!(!verify_gitea_signature(SECRET, GH_PUSH_1, None));
        for bad in [
            String::new(),
            "sha256=".to_string(),
            hex.to_string(),                    // no prefix
            format!("sha1={hex}"),              // another algorithm
            format!("sha1={}", &hex[..40]),     // a real sha1 length
            format!("sha256={}", &hex[..62]),   // too short
            format!("sha256={hex}00"),          // too long
            format!("sha256={}zz", &hex[..62]), // not hex
            format!("sha256={}", hex.replace(|_: char| true, "g")),
        ] {
            assert!(
                !verify_hub_signature(SECRET, GH_PUSH_1, Some(&bad)),
                "{bad}"
            );
        }
        assert!(!verify_gitea_signature(
            SECRET,
            GH_PUSH_1,
            Some(&format!("{}zz", &hex[..62]))
        ));
    }

    #[test]
    fn token_compare() {
        assert!(verify_token(b"gl-secret", Some("gl-secret")));
        assert!(!verify_token(b"gl-secret", Some("gl-secreT")));
        assert!(!verify_token(b"gl-secret", Some("gl-secret ")));
        assert!(!verify_token(b"gl-secret", Some("gl-secre")));
        assert!(!verify_token(b"gl-secret", Some("")));
        assert!(!verify_token(b"gl-secret", None));
        assert!(!verify_token(b"", Some("")));
    }

    #[test]
    fn bearer_compare() {
        assert!(verify_bearer(b"hook", Some("Bearer hook")));
        assert!(verify_bearer(b"hook", Some("bearer  hook ")));
        assert!(!verify_bearer(b"hook", Some("Basic hook")));
        assert!(!verify_bearer(b"hook", Some("hook")));
        assert!(!verify_bearer(b"hook", Some("Bearer other")));
        assert!(!verify_bearer(b"hook", Some("Bearer ")));
        assert!(!verify_bearer(b"hook", None));
    }

    /// A header lookup over `pairs`, case-insensitive like HTTP.
    fn headers(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn delivery_ids() {
        let one =
            |name: &'static str, value: &str| delivery_id(headers(vec![(name, value.into())]));
        let guid = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        assert_eq!(one("x-github-delivery", guid), Some(guid.to_string()));
        assert_eq!(one("X-Gitea-Delivery", "abc"), Some("abc".into()));
        assert_eq!(one("X-Gitlab-Event-UUID", "uuid"), Some("uuid".into()));
        let both = headers(vec![
            ("X-Gitlab-Event-UUID", "uuid".into()),
            ("Idempotency-Key", "idem".into()),
        ]);
        assert_eq!(delivery_id(both), Some("idem".into()));
        assert_eq!(delivery_id(headers(vec![])), None);
        assert_eq!(one("X-GitHub-Delivery", ""), None);
        assert_eq!(one("X-GitHub-Delivery", "a b"), None);
        assert_eq!(one("X-GitHub-Delivery", "caf\u{e9}"), None);
        assert_eq!(one("X-GitHub-Delivery", &"x".repeat(129)), None);
        assert_eq!(
            one("X-GitHub-Delivery", &"x".repeat(128)),
            Some("x".repeat(128))
        );
    }

    // --- GitHub

    #[test]
    fn github_pings() {
        assert_eq!(parse_github("ping", GH_PING_1).unwrap(), Event::Ping);
        assert_eq!(parse_github("ping", GH_PING_2).unwrap(), Event::Ping);
    }

    #[test]
    fn github_push_1_creates_a_tag() {
        assert_eq!(
            parse_github("push", GH_PUSH_1).unwrap(),
            Event::Push {
                repo: "Codertocat/Hello-World".into(),
                git_ref: "refs/tags/simple-tag".into(),
                branch: None,
                before: ZERO_SHA_40.into(),
                after: TAG_SHA.into(),
                deleted: false,
            }
        );
    }

    #[test]
    fn github_pushes_2_to_4_delete_a_tag() {
        for body in [GH_PUSH_2, GH_PUSH_3, GH_PUSH_4] {
            assert_eq!(
                parse_github("push", body).unwrap(),
                Event::Push {
                    repo: "Codertocat/Hello-World".into(),
                    git_ref: "refs/tags/simple-tag".into(),
                    branch: None,
                    before: TAG_SHA.into(),
                    after: ZERO_SHA_40.into(),
                    deleted: true,
                }
            );
        }
    }

    #[test]
    fn github_branch_push() {
        let body = edit(GH_PUSH_1, |v| {
            v["ref"] = json!("refs/heads/feature/x");
            v["before"] = json!(TAG_SHA);
            v["after"] = json!(PR_HEAD);
            v["created"] = json!(false);
        });
        let Event::Push {
            branch,
            deleted,
            after,
            ..
        } = parse_github("push", &body).unwrap()
        else {
            panic!("not a push");
        };
        assert_eq!(branch.as_deref(), Some("feature/x"));
        assert!(!deleted);
        assert_eq!(after, PR_HEAD);
        // `deleted` alone decides, even with a non-zero `after`.
        let body = edit(&body, |v| v["deleted"] = json!(true));
        assert!(matches!(
            parse_github("push", &body).unwrap(),
            Event::Push { deleted: true, .. }
        ));
    }

    #[test]
    fn github_pull_requests() {
        let cases = [
            (GH_PR_OPENED_1, PrAction::Opened, true),
            (GH_PR_OPENED_2, PrAction::Opened, true),
            (GH_PR_SYNCHRONIZE_1, PrAction::Synchronize, true),
            (GH_PR_REOPENED_1, PrAction::Reopened, true),
            (GH_PR_CLOSED_1, PrAction::Closed, false),
        ];
        for (body, action, new_commits) in cases {
            assert_eq!(
                parse_github("pull_request", body).unwrap(),
                github_pr(action, new_commits),
                "{action:?}"
            );
        }
        let labeled = edit(GH_PR_OPENED_1, |v| v["action"] = json!("labeled"));
        assert_eq!(
            parse_github("pull_request", &labeled).unwrap(),
            github_pr(PrAction::Other, false)
        );
        // GitHub's word is `synchronize`; Gitea's spelling is not an alias.
        let synchronized = edit(GH_PR_OPENED_1, |v| v["action"] = json!("synchronized"));
        assert_eq!(
            parse_github("pull_request", &synchronized).unwrap(),
            github_pr(PrAction::Other, false)
        );
    }

    #[test]
    fn github_fork_pull_requests() {
        let fork = edit(GH_PR_OPENED_1, |v| {
            v["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/Hello-World");
        });
        assert!(matches!(
            parse_github("pull_request", &fork).unwrap(),
            Event::PullRequest { from_fork: true, ref repo, .. } if repo == "Codertocat/Hello-World"
        ));
        let deleted_fork = edit(GH_PR_OPENED_1, |v| {
            v["pull_request"]["head"]["repo"] = Value::Null;
        });
        assert!(matches!(
            parse_github("pull_request", &deleted_fork).unwrap(),
            Event::PullRequest {
                from_fork: true,
                ..
            }
        ));
    }

    #[test]
    fn github_other_events_are_ignored() {
        let Event::Ignored { reason } = parse_github("issues", b"{}").unwrap() else {
            panic!("not ignored");
        };
        assert!(reason.contains("`issues`"), "{reason}");
        let Event::Ignored { reason } = parse_github("x\u{7f}<script>", b"").unwrap() else {
            panic!("not ignored");
        };
        assert!(!reason.contains("script"), "{reason}");
    }

    #[test]
    fn bad_payloads_are_errors_that_do_not_echo_values() {
        let secret_value = "TOPSECRET-PATIENT-NAME";
        let cases: Vec<(&str, Vec<u8>, PayloadError)> = vec![
            (
                "push",
                b"{not json".to_vec(),
                PayloadError::Syntax { line: 1, column: 2 },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| v["after"] = json!(secret_value)),
                PayloadError::BadSha { field: "after" },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| v["before"] = json!(&ZERO_SHA_40[1..])),
                PayloadError::BadSha { field: "before" },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| v["ref"] = json!(secret_value)),
                PayloadError::BadRef { field: "ref" },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| v["ref"] = json!("refs/heads/a..b")),
                PayloadError::BadRef { field: "ref" },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| {
                    v.as_object_mut().unwrap().remove("after");
                }),
                PayloadError::MissingField {
                    field: "after".into(),
                },
            ),
            (
                "push",
                edit(GH_PUSH_1, |v| v["repository"]["full_name"] = json!("")),
                PayloadError::BadName {
                    field: "repository.full_name",
                },
            ),
            (
                "pull_request",
                edit(GH_PR_OPENED_1, |v| {
                    v["pull_request"]["head"]["sha"] = json!(secret_value);
                }),
                PayloadError::BadSha {
                    field: "pull_request.head.sha",
                },
            ),
            (
                "pull_request",
                edit(GH_PR_OPENED_1, |v| {
                    v["pull_request"]["head"]["ref"] = json!("x y");
                }),
                PayloadError::BadBranch {
                    field: "pull_request.head.ref",
                },
            ),
        ];
        for (event, body, want) in cases {
            let got = parse_github(event, &body).unwrap_err();
            assert_eq!(got, want);
            assert!(!got.to_string().contains(secret_value), "{got}");
        }
        // A value of the wrong type: serde would quote it, we do not.
        let body = edit(GH_PR_OPENED_1, |v| v["number"] = json!(secret_value));
        let got = parse_github("pull_request", &body).unwrap_err();
        assert!(matches!(got, PayloadError::WrongShape { .. }), "{got:?}");
        assert!(!got.to_string().contains(secret_value), "{got}");
    }

    #[test]
    fn sha256_commit_ids_are_accepted_and_lowercased() {
        let long = "AB".repeat(32);
        let body = edit(GH_PUSH_1, |v| v["after"] = json!(long));
        assert!(matches!(
            parse_github("push", &body).unwrap(),
            Event::Push { ref after, .. } if *after == "ab".repeat(32)
        ));
    }

    // --- Gitea

    /// A GitHub payload turned into what Gitea sends: no created/deleted.
    fn as_gitea_push(body: &[u8]) -> Vec<u8> {
        edit(body, |v| {
            let o = v.as_object_mut().unwrap();
            for key in ["created", "deleted", "forced"] {
                o.remove(key);
            }
        })
    }

    #[test]
    fn gitea_push_uses_zero_shas() {
        let created = parse_gitea("push", &as_gitea_push(GH_PUSH_1)).unwrap();
        assert_eq!(created, parse_github("push", GH_PUSH_1).unwrap());
        let deleted = parse_gitea("push", &as_gitea_push(GH_PUSH_2)).unwrap();
        assert!(matches!(deleted, Event::Push { deleted: true, .. }));
    }

    #[test]
    fn gitea_pull_requests() {
        let body = edit(GH_PR_SYNCHRONIZE_1, |v| {
            v["action"] = json!("synchronized");
            let o = v.as_object_mut().unwrap();
            o.remove("before");
            o.remove("after");
        });
        assert_eq!(
            parse_gitea("pull_request", &body).unwrap(),
            github_pr(PrAction::Synchronize, true)
        );
        assert_eq!(
            parse_gitea("pull_request", GH_PR_OPENED_1).unwrap(),
            github_pr(PrAction::Opened, true)
        );
        assert_eq!(
            parse_gitea("pull_request", GH_PR_CLOSED_1).unwrap(),
            github_pr(PrAction::Closed, false)
        );
        assert!(matches!(
            parse_gitea("create", b"{}").unwrap(),
            Event::Ignored { .. }
        ));
        assert!(matches!(
            parse_gitea("delete", b"{}").unwrap(),
            Event::Ignored { .. }
        ));
    }

    // --- GitLab

    #[test]
    fn gitlab_push_1() {
        assert_eq!(
            parse_gitlab("Push Hook", GL_PUSH_1).unwrap(),
            Event::Push {
                repo: "mike/diaspora".into(),
                git_ref: "refs/heads/master".into(),
                branch: Some("master".into()),
                before: "95790bf891e76fee5e1747ab589903a6a1f80f22".into(),
                after: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
                deleted: false,
            }
        );
    }

    #[test]
    fn gitlab_branch_delete_and_tag_push() {
        let delete = edit(GL_PUSH_1, |v| {
            v["after"] = json!(ZERO_SHA_40);
            v["checkout_sha"] = Value::Null;
        });
        assert!(matches!(
            parse_gitlab("Push Hook", &delete).unwrap(),
            Event::Push { deleted: true, .. }
        ));
        let tag = edit(GL_PUSH_1, |v| {
            v["object_kind"] = json!("tag_push");
            v["ref"] = json!("refs/tags/v1.0");
        });
        assert!(matches!(
            parse_gitlab("Tag Push Hook", &tag).unwrap(),
            Event::Push {
                branch: None,
                deleted: false,
                ..
            }
        ));
    }

    #[test]
    fn gitlab_merge_request_1() {
        assert_eq!(
            parse_gitlab("Merge Request Hook", GL_MR_1).unwrap(),
            Event::PullRequest {
                repo: "gitlabhq/gitlab-test".into(),
                number: 1,
                action: PrAction::Opened,
                head_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
                head_ref: "ms-viewport".into(),
                base_ref: "master".into(),
                from_fork: false,
                new_commits: true,
            }
        );
    }

    #[test]
    fn gitlab_merge_request_actions() {
        let with = |action: &str, oldrev: Option<&str>| {
            let body = edit(GL_MR_1, |v| {
                v["object_attributes"]["action"] = json!(action);
                if let Some(rev) = oldrev {
                    v["object_attributes"]["oldrev"] = json!(rev);
                }
            });
            match parse_gitlab("Merge Request Hook", &body).unwrap() {
                Event::PullRequest {
                    action,
                    new_commits,
                    ..
                } => (action, new_commits),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(with("update", None), (PrAction::Synchronize, false));
        assert_eq!(with("update", Some(TAG_SHA)), (PrAction::Synchronize, true));
        assert_eq!(with("reopen", None), (PrAction::Reopened, true));
        assert_eq!(with("close", None), (PrAction::Closed, false));
        assert_eq!(with("merge", None), (PrAction::Closed, false));
        assert_eq!(with("approved", None), (PrAction::Other, false));

        let fork = edit(GL_MR_1, |v| {
            v["object_attributes"]["source_project_id"] = json!(99)
        });
        assert!(matches!(
            parse_gitlab("Merge Request Hook", &fork).unwrap(),
            Event::PullRequest {
                from_fork: true,
                ..
            }
        ));
        let bad_oldrev = edit(GL_MR_1, |v| {
            v["object_attributes"]["oldrev"] = json!("nope")
        });
        assert_eq!(
            parse_gitlab("Merge Request Hook", &bad_oldrev).unwrap_err(),
            PayloadError::BadSha {
                field: "object_attributes.oldrev"
            }
        );
    }

    #[test]
    fn gitlab_system_and_other_hooks_are_ignored() {
        for event in ["System Hook", "Note Hook", "Pipeline Hook"] {
            assert!(matches!(
                parse_gitlab(event, GL_PUSH_1).unwrap(),
                Event::Ignored { .. }
            ));
        }
    }

    // --- /hooks/git

    #[test]
    fn git_hook_updates() {
        let body = json!({
            "repo": "pipelines",
            "updates": [
                {"old": ZERO_SHA_40, "new": PR_HEAD, "ref": "refs/heads/main"},
                {"old": TAG_SHA, "new": ZERO_SHA_40, "ref": "refs/tags/v1"},
            ]
        });
        assert_eq!(
            parse_git_hook(body.to_string().as_bytes()).unwrap(),
            GitHookUpdate {
                repo: "pipelines".into(),
                updates: vec![
                    RefUpdate {
                        old: ZERO_SHA_40.into(),
                        new: PR_HEAD.into(),
                        git_ref: "refs/heads/main".into(),
                    },
                    RefUpdate {
                        old: TAG_SHA.into(),
                        new: ZERO_SHA_40.into(),
                        git_ref: "refs/tags/v1".into(),
                    },
                ],
            }
        );
    }

    #[test]
    fn git_hook_validation() {
        let update = |old: &str, new: &str, r: &str| json!({"old": old, "new": new, "ref": r});
        let body = |updates: Vec<Value>| json!({"repo": "p", "updates": updates}).to_string();
        assert_eq!(
            parse_git_hook(body(vec![update("x", PR_HEAD, "refs/heads/main")]).as_bytes())
                .unwrap_err(),
            PayloadError::BadSha {
                field: "updates[].old"
            }
        );
        assert_eq!(
            parse_git_hook(body(vec![update(PR_HEAD, PR_HEAD, "main")]).as_bytes()).unwrap_err(),
            PayloadError::BadRef {
                field: "updates[].ref"
            }
        );
        let many = vec![update(PR_HEAD, TAG_SHA, "refs/heads/main"); MAX_GIT_HOOK_UPDATES + 1];
        assert_eq!(
            parse_git_hook(body(many).as_bytes()).unwrap_err(),
            PayloadError::TooManyUpdates {
                max: MAX_GIT_HOOK_UPDATES
            }
        );
        let most = vec![update(PR_HEAD, TAG_SHA, "refs/heads/main"); MAX_GIT_HOOK_UPDATES];
        assert_eq!(
            parse_git_hook(body(most).as_bytes()).unwrap().updates.len(),
            MAX_GIT_HOOK_UPDATES
        );
        assert_eq!(
            parse_git_hook(br#"{"updates": []}"#).unwrap_err(),
            PayloadError::MissingField {
                field: "repo".into()
            }
        );
    }
}
