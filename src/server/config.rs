//! `sluice-server.toml`, the daemon's configuration: where it listens, where
//! it keeps its state, and which repositories it serves. Parsing is pure;
//! secrets are never written in the file but named by environment variable
//! and resolved through a lookup the caller passes in.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use toml::Spanned;

/// The file name used in messages.
pub const FILE_NAME: &str = "sluice-server.toml";

/// The most worker threads a server may ask for.
pub const MAX_WORKERS: usize = 64;

/// A complete example, also the happy-path test.
pub const EXAMPLE: &str = r#"listen = "127.0.0.1:8080"
public_url = "https://sluice.example.org"   # base of the links in statuses and comments
state_dir = "/var/lib/sluice"               # blobs, state database, bare mirrors
data_root = "/srv/clinic-data"              # where data:// resolves; a repository cannot change it
workers = 2
run_page_logs = false                       # optional, default false

[[repos]]
forge = "github"                  # github | gitlab | gitea | git
name = "acme/pipelines"           # full_name / path_with_namespace as the forge sends it
clone_url = "https://github.com/acme/pipelines.git"   # never taken from a payload
api_url = "https://api.github.com"
production_branch = "main"
secret_env = "SLUICE_WEBHOOK_SECRET"
token_env = "SLUICE_FORGE_TOKEN"  # not needed for forge = "git"
allow_forks = false               # optional, default false
schedule = "0 2 * * *"            # optional cron expression
"#;

/// The validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `http(s)://host[:port][/path]`, without a trailing slash.
    pub public_url: String,
    /// Blobs, the state database and bare mirrors live here.
    pub state_dir: PathBuf,
    /// `state = "postgresql://…"`: the queue and every repository's cache,
    /// refs and runs on PostgreSQL (checked: no password in it, TLS for a
    /// remote host); the source memo stays under `state_dir`.
    pub state: Option<String>,
    /// Where `data://` sources resolve. Set by the administrator only: a
    /// repository's `[data] root` does not apply on the server.
    pub data_root: PathBuf,
    pub workers: usize,
    pub run_page_logs: bool,
    /// Where blobs live: `state_dir/blobs`, or a bucket (`blobs =
    /// "s3://…"`) with a local cache of `blob_cache_size`.
    pub blobs: crate::store::BlobOptions,
    /// `task_lease = "30s"`: how long a claimed node task or job stays
    /// with its worker without a heartbeat (state on PostgreSQL only); a
    /// worker that dies costs at most this much before another takes over.
    pub task_lease: std::time::Duration,
    /// `task_threads = N`: threads computing node tasks from the shared
    /// queue (state on PostgreSQL only); default `workers`, 0 for a daemon
    /// that only dispatches.
    pub task_threads: usize,
    pub repos: Vec<RepoConfig>,
}

impl ServerConfig {
    /// The repository a webhook names, if it is configured. Forges treat
    /// repository paths case-insensitively, and so does this lookup.
    pub fn find_repo(&self, forge: ForgeKind, name: &str) -> Option<(usize, &RepoConfig)> {
        self.repos
            .iter()
            .enumerate()
            .find(|(_, r)| r.forge == forge && r.name.eq_ignore_ascii_case(name))
    }
}

/// Which kind of server a repository lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
    /// A plain git server whose hooks post to `/hooks/git`.
    Git,
}

impl ForgeKind {
    const ALL: [ForgeKind; 4] = [
        ForgeKind::Github,
        ForgeKind::Gitlab,
        ForgeKind::Gitea,
        ForgeKind::Git,
    ];

    /// The spelling used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Git => "git",
        }
    }

    /// Whether statuses and comments go through an HTTP API, which needs
    /// `api_url` and a token.
    pub fn has_api(self) -> bool {
        self != ForgeKind::Git
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One served repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    pub forge: ForgeKind,
    /// `full_name` (GitHub, Gitea) or `path_with_namespace` (GitLab) as the
    /// forge sends it; for `git`, the name the hook posts.
    pub name: String,
    /// What the daemon fetches from. Never taken from a payload.
    pub clone_url: String,
    /// The forge's API base, without a trailing slash; `None` only for `git`.
    pub api_url: Option<String>,
    pub production_branch: String,
    /// The variable holding the webhook secret (or `/hooks/git` bearer secret).
    pub secret_env: String,
    /// The variable holding the API token; `None` only for `git`.
    pub token_env: Option<String>,
    pub allow_forks: bool,
    /// A five-field cron expression, checked loosely.
    pub schedule: Option<String>,
    /// The line of this repository's `[[repos]]` table, for messages.
    pub line: u32,
}

/// A secret value. Its `Debug` does not show it and it has no `Display`, so
/// it cannot end up in a log line or an error message by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The bytes, for the one place that uses them (a MAC, a header).
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The secrets of one repository, in the order of `ServerConfig::repos`.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The webhook secret (GitHub/Gitea HMAC key, GitLab token, git bearer).
    pub secret: Secret,
    /// The API token; `None` for `git`.
    pub token: Option<Secret>,
}

/// A problem in `sluice-server.toml`: the 1-based line, the key (empty when
/// the problem is not about one key) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub line: u32,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{FILE_NAME}:{}: {}", self.line, self.message)
        } else {
            write!(
                f,
                "{FILE_NAME}:{}: {}: {}",
                self.line, self.key, self.message
            )
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    data_root: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    run_page_logs: Option<bool>,
    blobs: Option<Spanned<String>>,
    blob_cache_size: Option<Spanned<String>>,
    task_lease: Option<Spanned<String>>,
    task_threads: Option<Spanned<i64>>,
    repos: Option<Vec<Spanned<RawRepo>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    forge: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    clone_url: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
    production_branch: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    allow_forks: Option<bool>,
    schedule: Option<Spanned<String>>,
}

/// Reads and parses the file; the error names the file and the problem.
pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid server configuration {}", path.display()))
}

/// Parses and validates the file's text, stopping at the first problem.
pub fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
    let raw: RawServer = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let at = |span: Range<usize>| line_of(text, span.start);
    let err = |line: u32, key: &str, message: String| ConfigError {
        line,
        key: key.to_string(),
        message,
    };
    let missing = |key: &str, what: &str| ConfigError {
        line: 1,
        key: key.to_string(),
        message: format!("missing: {what}"),
    };

    let listen = raw.listen.ok_or_else(|| {
        missing(
            "listen",
            "the address to listen on, e.g. \"127.0.0.1:8080\"",
        )
    })?;
    let listen_addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
        err(
            at(listen.span()),
            "listen",
            "not an IP address with a port, e.g. \"127.0.0.1:8080\"".into(),
        )
    })?;

    let public_url = raw.public_url.ok_or_else(|| {
        missing(
            "public_url",
            "the base of links in statuses and comments, e.g. \"https://sluice.example.org\"",
        )
    })?;
    let public_url_value = http_url(public_url.get_ref())
        .map_err(|why| err(at(public_url.span()), "public_url", why))?;

    let state_dir = absolute_dir(&raw.state_dir, "state_dir", text)?;
    let data_root = absolute_dir(&raw.data_root, "data_root", text)?;
    let state = match raw.state {
        None => None,
        Some(url) => {
            // The same checks as at open, without a password to look up.
            crate::store::shared::parse_state(
                url.get_ref(),
                &crate::store::shared::Credentials::default(),
            )
            .map_err(|e| err(at(url.span()), "state", format!("{e:#}")))?;
            Some(url.into_inner())
        }
    };

    let workers = raw
        .workers
        .ok_or_else(|| missing("workers", "the number of runs at once, e.g. 2"))?;
    let workers_value = match usize::try_from(*workers.get_ref()) {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
        _ => {
            return Err(err(
                at(workers.span()),
                "workers",
                format!("must be between 1 and {MAX_WORKERS}"),
            ));
        }
    };

    // Only the location: credentials come from the AWS_* environment.
    let blobs = match &raw.blobs {
        Some(url) => crate::store::BlobLocation::parse(url.get_ref(), "blobs")
            .map_err(|e| err(at(url.span()), "blobs", format!("{e:#}")))?,
        None => crate::store::BlobLocation::Local,
    };
    let blob_cache_size = match &raw.blob_cache_size {
        Some(size) => crate::store::blob_cache::parse_size(size.get_ref())
            .map_err(|why| err(at(size.span()), "blob_cache_size", why))?,
        None => crate::store::blob_cache::DEFAULT_CACHE_SIZE,
    };

    let task_lease = match &raw.task_lease {
        Some(text) => match crate::store::gc::parse_duration(text.get_ref()) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => d,
            Ok(_) => {
                return Err(err(
                    at(text.span()),
                    "task_lease",
                    "must be at least 1s, e.g. \"30s\"".into(),
                ));
            }
            Err(why) => return Err(err(at(text.span()), "task_lease", why)),
        },
        None => crate::store::shared::DEFAULT_LEASE,
    };

    let task_threads = match &raw.task_threads {
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) if n <= MAX_WORKERS => n,
            _ => {
                return Err(err(
                    at(n.span()),
                    "task_threads",
                    format!("must be between 0 and {MAX_WORKERS}"),
                ));
            }
        },
        None => workers_value,
    };

    let raw_repos = raw.repos.unwrap_or_default();
    if raw_repos.is_empty() {
        return Err(missing(
            "repos",
            "at least one [[repos]] table naming a repository to serve",
        ));
    }
    let mut repos: Vec<RepoConfig> = Vec::with_capacity(raw_repos.len());
    for (i, spanned) in raw_repos.into_iter().enumerate() {
        let line = at(spanned.span());
        let repo = repo(text, i, line, spanned.into_inner())?;
        if let Some(first) = repos
            .iter()
            .find(|r| r.forge == repo.forge && r.name.eq_ignore_ascii_case(&repo.name))
        {
            return Err(err(
                line,
                &format!("repos[{i}].name"),
                format!(
                    "{} repository `{}` is already configured at line {}",
                    repo.forge, repo.name, first.line
                ),
            ));
        }
        repos.push(repo);
    }

    Ok(ServerConfig {
        listen: listen_addr,
        public_url: public_url_value,
        state_dir,
        state,
        data_root,
        workers: workers_value,
        run_page_logs: raw.run_page_logs.unwrap_or(false),
        blobs: crate::store::BlobOptions {
            location: blobs,
            cache_size: blob_cache_size,
        },
        task_lease,
        task_threads,
        repos,
    })
}

/// Validates one `[[repos]]` table; `table_line` is where it starts.
fn repo(text: &str, i: usize, table_line: u32, raw: RawRepo) -> Result<RepoConfig, ConfigError> {
    let key = |name: &str| format!("repos[{i}].{name}");
    let err = |span: Range<usize>, name: &str, message: String| ConfigError {
        line: line_of(text, span.start),
        key: key(name),
        message,
    };
    let required = |value: Option<Spanned<String>>, name: &str, what: &str| {
        value.ok_or_else(|| ConfigError {
            line: table_line,
            key: key(name),
            message: format!("missing: {what}"),
        })
    };

    let forge = required(raw.forge, "forge", "one of github, gitlab, gitea, git")?;
    let forge_kind = ForgeKind::ALL
        .into_iter()
        .find(|k| k.as_str() == forge.get_ref())
        .ok_or_else(|| {
            err(
                forge.span(),
                "forge",
                "must be one of github, gitlab, gitea, git".into(),
            )
        })?;

    let name = required(
        raw.name,
        "name",
        "the repository path as the forge sends it, e.g. \"acme/pipelines\"",
    )?;
    if !is_repo_name(name.get_ref()) {
        return Err(err(
            name.span(),
            "name",
            "must be slash-separated segments of letters, digits, `.`, `_` and `-`, \
             e.g. \"acme/pipelines\" (no `..`, no leading or trailing slash)"
                .into(),
        ));
    }

    let clone_url = required(
        raw.clone_url,
        "clone_url",
        "a URL or path git can fetch the repository from",
    )?;
    // A value starting with `-` would be read by git as an option.
    if clone_url.get_ref().trim().is_empty()
        || clone_url.get_ref().starts_with('-')
        || clone_url.get_ref().chars().any(char::is_control)
    {
        return Err(err(
            clone_url.span(),
            "clone_url",
            "must be a URL or path git can fetch, not empty and not starting with `-`".into(),
        ));
    }

    let api_url = match raw.api_url {
        Some(url) => Some(http_url(url.get_ref()).map_err(|why| err(url.span(), "api_url", why))?),
        None if forge_kind.has_api() => {
            let example = match forge_kind {
                ForgeKind::Github => "\"https://api.github.com\"",
                ForgeKind::Gitlab => "\"https://gitlab.example/api/v4\"",
                _ => "\"https://gitea.example/api/v1\"",
            };
            return Err(ConfigError {
                line: table_line,
                key: key("api_url"),
                message: format!("missing: the {forge_kind} API base, e.g. {example}"),
            });
        }
        None => None,
    };

    let production_branch = required(
        raw.production_branch,
        "production_branch",
        "the branch whose runs are promoted, e.g. \"main\"",
    )?;
    if !is_branch_name(production_branch.get_ref()) {
        return Err(err(
            production_branch.span(),
            "production_branch",
            "not a branch name (give the short name, e.g. \"main\", not refs/heads/main)".into(),
        ));
    }

    let secret_env = required(
        raw.secret_env,
        "secret_env",
        "the environment variable holding the webhook secret, e.g. \"SLUICE_WEBHOOK_SECRET\"",
    )?;
    check_env_name(&secret_env, &key("secret_env"), text)?;

    let token_env = match raw.token_env {
        Some(var) => {
            check_env_name(&var, &key("token_env"), text)?;
            Some(var.into_inner())
        }
        None if forge_kind.has_api() => {
            return Err(ConfigError {
                line: table_line,
                key: key("token_env"),
                message: format!(
                    "missing: the environment variable holding the {forge_kind} API token, \
                     e.g. \"SLUICE_FORGE_TOKEN\""
                ),
            });
        }
        None => None,
    };

    let schedule = match raw.schedule {
        Some(s) => match super::cron::Cron::parse(s.get_ref()) {
            Ok(_) => Some(s.into_inner()),
            Err(why) => {
                return Err(err(
                    s.span(),
                    "schedule",
                    format!(
                        "{why}; a cron expression is five fields in UTC (minute hour day month weekday), \
                         e.g. \"0 2 * * *\""
                    ),
                ));
            }
        },
        None => None,
    };

    Ok(RepoConfig {
        forge: forge_kind,
        name: name.into_inner(),
        clone_url: clone_url.into_inner(),
        api_url,
        production_branch: production_branch.into_inner(),
        secret_env: secret_env.into_inner(),
        token_env,
        allow_forks: raw.allow_forks.unwrap_or(false),
        schedule,
        line: table_line,
    })
}

/// Looks up every repository's secret and token through `env` (the one
/// place the caller reads the environment). Errors name the variable and
/// the repository, never a value.
pub fn resolve_secrets(
    cfg: &ServerConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Secrets>, ConfigError> {
    cfg.repos
        .iter()
        .enumerate()
        .map(|(i, repo)| {
            let lookup = |var: &str, field: &str, what: &str| {
                let problem = match env(var) {
                    Some(value) if !value.is_empty() => return Ok(Secret::new(value)),
                    Some(_) => "is empty",
                    None => "is not set",
                };
                Err(ConfigError {
                    line: repo.line,
                    key: format!("repos[{i}].{field}"),
                    message: format!(
                        "environment variable {var} ({what} of {} repository {}) {problem}",
                        repo.forge, repo.name
                    ),
                })
            };
            let secret = lookup(&repo.secret_env, "secret_env", "webhook secret")?;
            let token = repo
                .token_env
                .as_deref()
                .map(|var| lookup(var, "token_env", "API token"))
                .transpose()?;
            Ok(Secrets { secret, token })
        })
        .collect()
}

/// Turns a TOML or shape error into a `ConfigError`. An unknown key that
/// looks like a secret gets a message pointing at the `*_env` keys.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    let message = e.message().trim().to_string();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    match unknown {
        Some(key) if looks_secret(&key) => ConfigError {
            line,
            message: "secrets are not written in this file: put the value in an environment \
                      variable and name it with secret_env (webhook secret) or token_env \
                      (API token)"
                .into(),
            key,
        },
        Some(key) => ConfigError { line, key, message },
        None => ConfigError {
            line,
            key: String::new(),
            message,
        },
    }
}

fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    // Spans come from the parser and fall on character boundaries; stay
    // safe if one does not.
    let before = text.get(..end).unwrap_or(text);
    u32::try_from(before.matches('\n').count() + 1).unwrap_or(u32::MAX)
}

fn absolute_dir(
    value: &Option<Spanned<String>>,
    key: &str,
    text: &str,
) -> Result<PathBuf, ConfigError> {
    let Some(value) = value else {
        return Err(ConfigError {
            line: 1,
            key: key.to_string(),
            message: "missing: an absolute directory path".into(),
        });
    };
    let path = PathBuf::from(value.get_ref());
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(ConfigError {
            line: line_of(text, value.span().start),
            key: key.to_string(),
            message: "must be an absolute path (the daemon's working directory is not a \
                      stable base)"
                .into(),
        })
    }
}

/// Checks `http(s)://host...` and drops trailing slashes, so links can be
/// built with `format!("{base}/...")`.
fn http_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let ok = match rest {
        Some(rest) => {
            let host = rest.split('/').next().unwrap_or("");
            !host.is_empty()
                && !value
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        }
        None => false,
    };
    if ok {
        Ok(value.trim_end_matches('/').to_string())
    } else {
        Err("must be an http:// or https:// URL with a host and no query or fragment".into())
    }
}

fn check_env_name(var: &Spanned<String>, key: &str, text: &str) -> Result<(), ConfigError> {
    let name = var.get_ref();
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            line: line_of(text, var.span().start),
            key: key.to_string(),
            message: "must name an environment variable: upper-case letters, digits and `_`, \
                      not starting with a digit (the value itself never goes in this file)"
                .into(),
        })
    }
}

/// Forge paths: `owner/name`, or nested groups on GitLab. The name also
/// names the bare mirror under `state_dir`, so `.` and `..` are refused.
fn is_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// A short branch name by git's rules, loosely: no space, control or
/// special characters, no `..`, no empty or dot-led component.
pub(crate) fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("refs/")
        && !name.starts_with('-')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("@{")
        && name != "@"
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.ends_with('.'))
        && !name.chars().any(|c| {
            c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example with `pattern` (a whole line) replaced by `with`.
    fn example_with(pattern: &str, with: &str) -> String {
        assert!(EXAMPLE.contains(pattern), "{pattern}");
        EXAMPLE.replacen(pattern, with, 1)
    }

    fn error_of(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    fn line_containing(text: &str, needle: &str) -> u32 {
        text.lines().position(|l| l.contains(needle)).unwrap() as u32 + 1
    }

    #[test]
    fn parses_the_example() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.public_url, "https://sluice.example.org");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/sluice"));
        assert_eq!(c.data_root, PathBuf::from("/srv/clinic-data"));
        assert_eq!(c.workers, 2);
        assert!(!c.run_page_logs);
        assert_eq!(
            c.repos,
            vec![RepoConfig {
                forge: ForgeKind::Github,
                name: "acme/pipelines".into(),
                clone_url: "https://github.com/acme/pipelines.git".into(),
                api_url: Some("https://api.github.com".into()),
                production_branch: "main".into(),
                secret_env: "SLUICE_WEBHOOK_SECRET".into(),
                token_env: Some("SLUICE_FORGE_TOKEN".into()),
                allow_forks: false,
                schedule: Some("0 2 * * *".into()),
                line: line_containing(EXAMPLE, "[[repos]]"),
            }]
        );
        assert_eq!(
            c.find_repo(ForgeKind::Github, "ACME/Pipelines")
                .map(|(i, _)| i),
            Some(0)
        );
        assert!(c.find_repo(ForgeKind::Gitea, "acme/pipelines").is_none());
    }

    #[test]
    fn optional_keys_default_and_git_needs_no_api() {
        let text = "listen = \"[::1]:9000\"\npublic_url = \"http://ci.local/sluice/\"\n\
                    state_dir = \"/s\"\ndata_root = \"/d\"\nworkers = 64\n\
                    [[repos]]\nforge = \"git\"\nname = \"pipelines\"\n\
                    clone_url = \"/srv/git/pipelines.git\"\nproduction_branch = \"release/prod\"\n\
                    secret_env = \"HOOK_SECRET\"\n\
                    [[repos]]\nforge = \"gitlab\"\nname = \"clinic/group/pipelines\"\n\
                    clone_url = \"https://gitlab.example/clinic/group/pipelines.git\"\n\
                    api_url = \"https://gitlab.example/api/v4/\"\nproduction_branch = \"main\"\n\
                    secret_env = \"GL_SECRET\"\ntoken_env = \"GL_TOKEN\"\nallow_forks = true\n";
        let c = parse(text).unwrap();
        assert_eq!(c.public_url, "http://ci.local/sluice");
        assert_eq!(c.workers, 64);
        assert!(!c.run_page_logs);
        let git = &c.repos[0];
        assert_eq!(git.forge, ForgeKind::Git);
        assert_eq!(
            (git.api_url.as_deref(), git.token_env.as_deref()),
            (None, None)
        );
        assert!(!git.allow_forks);
        assert_eq!(git.schedule, None);
        assert_eq!(git.line, 6);
        let gl = &c.repos[1];
        assert_eq!(gl.api_url.as_deref(), Some("https://gitlab.example/api/v4"));
        assert!(gl.allow_forks);
        assert_eq!(gl.line, 12);
    }

    #[cfg(feature = "team")]
    #[test]
    fn blobs_select_a_bucket_and_a_bad_url_names_the_key() {
        use crate::store::{BlobLocation, BlobOptions};
        assert_eq!(parse(EXAMPLE).unwrap().blobs, BlobOptions::default());
        let text = example_with(
            "workers = 2",
            "workers = 2\nblobs = \"s3://team-bucket/sluice\"\nblob_cache_size = \"2GiB\"",
        );
        let c = parse(&text).unwrap();
        match &c.blobs.location {
            BlobLocation::S3(l) => assert_eq!(l.to_string(), "s3://team-bucket/sluice"),
            other => panic!("expected S3, got {other:?}"),
        }
        assert_eq!(c.blobs.cache_size, 2 << 30);
        let e = error_of(&example_with(
            "workers = 2",
            "workers = 2\nblobs = \"/srv/blobs\"",
        ));
        assert_eq!((e.line, e.key.as_str()), (6, "blobs"));
        assert!(e.message.contains("s3://BUCKET"), "{e}");
        let e = error_of(&example_with(
            "workers = 2",
            "workers = 2\nblob_cache_size = \"huge\"",
        ));
        assert_eq!((e.line, e.key.as_str()), (6, "blob_cache_size"));
        // Credentials are never taken from the file.
        let e = error_of(&example_with(
            "workers = 2",
            "workers = 2\naws_secret_access_key = \"x\"",
        ));
        assert!(e.to_string().contains("aws_secret_access_key"), "{e}");
    }

    #[test]
    fn display_names_file_line_and_key() {
        let e = ConfigError {
            line: 3,
            key: "workers".into(),
            message: "must be between 1 and 64".into(),
        };
        assert_eq!(
            e.to_string(),
            "sluice-server.toml:3: workers: must be between 1 and 64"
        );
    }

    #[test]
    fn listen_must_be_an_address() {
        let text = example_with("127.0.0.1:8080", "localhost");
        let e = error_of(&text);
        assert_eq!((e.line, e.key.as_str()), (1, "listen"));
        assert!(e.message.contains("port"), "{e}");
    }

    #[test]
    fn public_url_must_be_http() {
        for bad in [
            "sluice.example.org",
            "ftp://x",
            "https://",
            "https://x/?a=b",
        ] {
            let text = example_with("https://sluice.example.org", bad);
            let e = error_of(&text);
            assert_eq!((e.line, e.key.as_str()), (2, "public_url"), "{bad}");
            assert!(e.message.contains("http"), "{e}");
        }
    }

    #[test]
    fn directories_must_be_absolute() {
        let e = error_of(&example_with("\"/var/lib/sluice\"", "\"var/lib/sluice\""));
        assert_eq!((e.line, e.key.as_str()), (3, "state_dir"));
        assert!(e.message.contains("absolute"), "{e}");
        let e = error_of(&example_with("\"/srv/clinic-data\"", "\"../data\""));
        assert_eq!((e.line, e.key.as_str()), (4, "data_root"));
    }

    /// Built without the shared stores, a config naming one is refused at
    /// its line, saying how to build them in.
    #[cfg(not(feature = "team"))]
    #[test]
    fn shared_stores_need_the_team_feature() {
        let with = |line: &str| example_with("workers = 2", &format!("workers = 2\n{line}"));
        for (line, key) in [
            ("state = \"postgresql://sluice@127.0.0.1/s\"", "state"),
            ("blobs = \"s3://team-bucket/sluice\"", "blobs"),
        ] {
            let e = error_of(&with(line));
            assert_eq!((e.line, e.key.as_str()), (6, key), "{e}");
            assert!(e.message.contains("--features team"), "{e}");
            assert!(e.message.contains("docs/team.md"), "{e}");
        }
        // The cache size alone is still checked, and harmless.
        let c = parse(&with("blob_cache_size = \"2GiB\"")).unwrap();
        assert_eq!(c.blobs.cache_size, 2 << 30);
    }

    #[cfg(feature = "team")]
    #[test]
    fn state_on_postgresql_is_checked_at_parse() {
        let with = |line: &str| example_with("workers = 2", &format!("workers = 2\n{line}"));
        let c = parse(&with(
            "state = \"postgresql://sluice@db.example.org/sluice?sslmode=require\"",
        ))
        .unwrap();
        assert_eq!(
            c.state.as_deref(),
            Some("postgresql://sluice@db.example.org/sluice?sslmode=require")
        );
        assert_eq!(parse(EXAMPLE).unwrap().state, None);
        let e = error_of(&with("state = \"postgresql://sluice:hunter2@127.0.0.1/s\""));
        assert_eq!((e.line, e.key.as_str()), (6, "state"));
        assert!(e.message.contains("PGPASSWORD"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = error_of(&with("state = \"postgresql://sluice@db.example.org/s\""));
        assert!(e.message.contains("sslmode=require"), "{e}");
    }

    #[test]
    fn task_lease_defaults_to_30s_and_is_checked() {
        let with = |line: &str| example_with("workers = 2", &format!("workers = 2\n{line}"));
        assert_eq!(
            parse(EXAMPLE).unwrap().task_lease,
            std::time::Duration::from_secs(30)
        );
        let c = parse(&with("task_lease = \"2s\"")).unwrap();
        assert_eq!(c.task_lease, std::time::Duration::from_secs(2));
        let e = error_of(&with("task_lease = \"0s\""));
        assert_eq!((e.line, e.key.as_str()), (6, "task_lease"));
        assert_eq!(parse(EXAMPLE).unwrap().task_threads, 2);
        assert_eq!(parse(&with("task_threads = 0")).unwrap().task_threads, 0);
        let e = error_of(&with("task_threads = 65"));
        assert_eq!(e.key, "task_threads");
        let e = error_of(&with("task_lease = \"soon\""));
        assert!(e.message.contains("not a duration"), "{e}");
    }

    #[test]
    fn workers_between_1_and_64() {
        for bad in ["0", "65", "-1"] {
            let e = error_of(&example_with("workers = 2", &format!("workers = {bad}")));
            assert_eq!((e.line, e.key.as_str()), (5, "workers"), "{bad}");
            assert!(e.message.contains("between 1 and 64"), "{e}");
        }
    }

    #[test]
    fn missing_keys_are_named() {
        let e = error_of(&example_with("workers = 2\n", ""));
        assert_eq!(e.key, "workers");
        assert!(e.message.starts_with("missing"), "{e}");
        let e = error_of(&example_with("name = \"acme/pipelines\"", "# no name"));
        assert_eq!(e.key, "repos[0].name");
        assert_eq!(e.line, line_containing(EXAMPLE, "[[repos]]"));
    }

    #[test]
    fn at_least_one_repo() {
        let head = EXAMPLE.split("[[repos]]").next().unwrap();
        let e = error_of(head);
        assert_eq!(e.key, "repos");
        assert!(e.message.contains("[[repos]]"), "{e}");
    }

    #[test]
    fn duplicate_forge_and_name() {
        let repo = &EXAMPLE[EXAMPLE.find("[[repos]]").unwrap()..];
        let twice = format!(
            "{EXAMPLE}\n{}",
            repo.replace("acme/pipelines", "Acme/Pipelines")
        );
        let e = error_of(&twice);
        assert_eq!(e.key, "repos[1].name");
        assert!(e.message.contains("already configured at line 8"), "{e}");
        // The same name on another forge is another repository.
        let other = format!("{EXAMPLE}\n{}", repo.replace("\"github\"", "\"gitea\""));
        assert_eq!(parse(&other).unwrap().repos.len(), 2);
    }

    #[test]
    fn forge_must_be_known() {
        let e = error_of(&example_with("forge = \"github\"", "forge = \"bitbucket\""));
        assert_eq!(e.key, "repos[0].forge");
        assert_eq!(e.line, line_containing(EXAMPLE, "forge = "));
    }

    #[test]
    fn api_url_required_and_http_for_forges() {
        for forge in ["github", "gitlab", "gitea"] {
            let text = example_with("forge = \"github\"", &format!("forge = \"{forge}\""));
            let text = text.replace("api_url = \"https://api.github.com\"\n", "");
            let e = error_of(&text);
            assert_eq!(e.key, "repos[0].api_url", "{forge}");
            assert!(e.message.starts_with("missing"), "{e}");
        }
        let e = error_of(&example_with(
            "\"https://api.github.com\"",
            "\"api.github.com\"",
        ));
        assert_eq!(e.key, "repos[0].api_url");
        assert_eq!(e.line, line_containing(EXAMPLE, "api_url"));
    }

    #[test]
    fn token_env_required_except_for_git() {
        let without = example_with("token_env = \"SLUICE_FORGE_TOKEN\"", "");
        let e = error_of(&without);
        assert_eq!(e.key, "repos[0].token_env");
        assert!(e.message.starts_with("missing"), "{e}");
        let git = without.replace("forge = \"github\"", "forge = \"git\"");
        assert_eq!(parse(&git).unwrap().repos[0].token_env, None);
    }

    #[test]
    fn env_names_are_checked() {
        for bad in [
            "sluice_secret",
            "1SECRET",
            "SLUICE-SECRET",
            "",
            "hunter2 is my password",
        ] {
            let e = error_of(&example_with(
                "\"SLUICE_WEBHOOK_SECRET\"",
                &format!("\"{bad}\""),
            ));
            assert_eq!(e.key, "repos[0].secret_env", "{bad}");
            assert!(e.message.contains("environment variable"), "{e}");
        }
        let e = error_of(&example_with("\"SLUICE_FORGE_TOKEN\"", "\"ghp_abc\""));
        assert_eq!(e.key, "repos[0].token_env");
        assert!(parse(&example_with("\"SLUICE_WEBHOOK_SECRET\"", "\"_X9\"")).is_ok());
    }

    #[test]
    fn literal_secrets_are_refused() {
        for (pattern, key) in [
            ("secret_env = \"SLUICE_WEBHOOK_SECRET\"", "secret"),
            ("token_env = \"SLUICE_FORGE_TOKEN\"", "token"),
            ("token_env = \"SLUICE_FORGE_TOKEN\"", "webhook_secret"),
        ] {
            let text = example_with(pattern, &format!("{pattern}\n{key} = \"s3cr3t-value\""));
            let e = error_of(&text);
            assert_eq!(e.key, key);
            assert_eq!(e.line, line_containing(&text, "s3cr3t-value"));
            assert!(e.message.contains("secret_env"), "{e}");
            assert!(!e.to_string().contains("s3cr3t-value"), "{e}");
        }
        // Top level too.
        let e = error_of(&format!("token = \"abc\"\n{EXAMPLE}"));
        assert_eq!((e.line, e.key.as_str()), (1, "token"));
        assert!(e.message.contains("token_env"), "{e}");
    }

    #[test]
    fn other_unknown_keys_name_the_key() {
        let e = error_of(&example_with("workers = 2", "workers = 2\nthreads = 4"));
        assert_eq!((e.line, e.key.as_str()), (6, "threads"));
        let e = error_of("listen = \n");
        assert_eq!(e.line, 1);
        assert!(e.key.is_empty());
    }

    #[test]
    fn names_branches_and_clone_urls_are_checked() {
        for bad in [
            "",
            "/acme/pipelines",
            "acme/../etc",
            "acme//x",
            "acme/pipe lines",
        ] {
            let e = error_of(&example_with("\"acme/pipelines\"", &format!("\"{bad}\"")));
            assert_eq!(e.key, "repos[0].name", "{bad}");
        }
        for bad in ["", "refs/heads/main", "a..b", "-x", "a b", "x.lock"] {
            let e = error_of(&example_with(
                "production_branch = \"main\"",
                &format!("production_branch = \"{bad}\""),
            ));
            assert_eq!(e.key, "repos[0].production_branch", "{bad}");
        }
        for bad in ["", "--upload-pack=evil"] {
            let e = error_of(&example_with(
                "\"https://github.com/acme/pipelines.git\"",
                &format!("\"{bad}\""),
            ));
            assert_eq!(e.key, "repos[0].clone_url", "{bad}");
        }
    }

    #[test]
    fn schedule_needs_five_fields() {
        for bad in ["0 2 * *", "0 2 * * * *", "@daily", "0 2 * * $(x)"] {
            let e = error_of(&example_with("\"0 2 * * *\"", &format!("\"{bad}\"")));
            assert_eq!(e.key, "repos[0].schedule", "{bad}");
            assert_eq!(e.line, line_containing(EXAMPLE, "schedule"));
        }
        for good in ["*/15 * * * *", "0 2 * * 1-5", "0 0 1,15 * *"] {
            assert!(parse(&example_with("\"0 2 * * *\"", &format!("\"{good}\""))).is_ok());
        }
    }

    #[test]
    fn resolves_secrets_through_the_given_lookup() {
        let c = parse(EXAMPLE).unwrap();
        let env = |k: &str| match k {
            "SLUICE_WEBHOOK_SECRET" => Some("hook-secret".to_string()),
            "SLUICE_FORGE_TOKEN" => Some("api-token".to_string()),
            _ => None,
        };
        let s = resolve_secrets(&c, &env).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].secret.expose(), b"hook-secret");
        assert_eq!(s[0].token.as_ref().unwrap().expose(), b"api-token");
        let shown = format!("{:?}", s[0]);
        assert!(shown.contains("Secret(***)"), "{shown}");
        assert!(!shown.contains("hook-secret") && !shown.contains("api-token"));
    }

    #[test]
    fn missing_or_empty_secrets_are_errors_without_values() {
        let c = parse(EXAMPLE).unwrap();
        let e = resolve_secrets(&c, &|k: &str| {
            (k == "SLUICE_FORGE_TOKEN").then(|| "api-token".to_string())
        })
        .unwrap_err();
        assert_eq!(e.key, "repos[0].secret_env");
        assert!(e.message.contains("SLUICE_WEBHOOK_SECRET"), "{e}");
        assert!(e.message.contains("acme/pipelines"), "{e}");
        assert!(e.message.contains("not set"), "{e}");
        assert!(!e.to_string().contains("api-token"));

        let e = resolve_secrets(&c, &|k: &str| {
            Some(
                if k == "SLUICE_FORGE_TOKEN" {
                    ""
                } else {
                    "hook-secret"
                }
                .to_string(),
            )
        })
        .unwrap_err();
        assert_eq!(e.key, "repos[0].token_env");
        assert!(e.message.contains("SLUICE_FORGE_TOKEN"), "{e}");
        assert!(e.message.contains("is empty"), "{e}");
        assert!(!e.to_string().contains("hook-secret"));
    }

    #[test]
    fn load_reads_a_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap(), parse(EXAMPLE).unwrap());
        std::fs::write(&path, "workers = 0\n").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains(&path.display().to_string()), "{e}");
        let e = format!("{:#}", load(&dir.path().join("absent.toml")).unwrap_err());
        assert!(e.contains("absent.toml"), "{e}");
    }
}
