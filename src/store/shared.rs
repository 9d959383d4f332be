//! Where a URL becomes a team's shared store: `--state postgresql://…`
//! (the daemon's `state`) and `--blobs s3://…` (its `blobs`). The stores
//! themselves, `store::pg` and `store::s3`, are compiled only with the
//! cargo feature `team`: their crates are a sixth of a cold build's work,
//! and an analyst's `.sluice/` needs none of them. Without it every such
//! URL is refused here, when it is parsed, with what to do; [`PgConnect`]
//! then has no values, so nothing past the parse can name a shared state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::state::State;

/// What a build without the `team` feature says to a URL naming a shared
/// store, after the setting that named it.
pub const BUILT_WITHOUT: &str = "this sluice was built without the shared stores (state on \
     PostgreSQL, blobs on S3); rebuild it with `cargo install --path . --features team` (see \
     docs/team.md)";

/// A password, never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Password {
        Password(text)
    }

    /// The password itself, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the PostgreSQL password may come from, as the front end found
/// them in its environment: `PGPASSWORD`, else the `.pgpass` file
/// (`PGPASSFILE`, or `~/.pgpass`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub password: Option<Password>,
    pub pgpass: Option<PathBuf>,
}

/// The lease of a claimed job or task unless the server config sets
/// `task_lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The CLI's schema (`--state URL`): every checkout using the same URL
/// shares it.
pub const CLI_SCHEMA: &str = "sluice";
/// The daemon's deliveries, jobs and outbox.
pub const DAEMON_SCHEMA: &str = "sluice_daemon";

/// The schema of one served repository, by the id its local directory has
/// (`state_dir/repos/<id>`): repositories stay apart as their files do.
pub fn repo_schema(id: &str) -> String {
    format!("sluice_repo_{id}")
}

/// A checked connection to a team's PostgreSQL.
#[cfg(feature = "team")]
pub use super::pg::PgConnect;

/// A checked connection to a team's PostgreSQL: none in a build without
/// the `team` feature, where [`parse_state`] refuses every URL.
#[cfg(not(feature = "team"))]
#[derive(Debug, Clone)]
pub enum PgConnect {}

#[cfg(not(feature = "team"))]
impl std::fmt::Display for PgConnect {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// Checks a shared-state URL (`postgresql://USER@HOST/DATABASE…`) and
/// takes the password from `creds`. The error never echoes the URL's
/// password.
pub fn parse_state(url: &str, creds: &Credentials) -> anyhow::Result<PgConnect> {
    #[cfg(feature = "team")]
    {
        PgConnect::parse(url, creds)
    }
    #[cfg(not(feature = "team"))]
    {
        // Not echoed: the URL might carry a password.
        let _ = (url, creds);
        anyhow::bail!("{BUILT_WITHOUT}")
    }
}

/// The state in `schema` of the shared PostgreSQL `connect` names.
pub fn open_state(connect: &PgConnect, schema: &str) -> anyhow::Result<Arc<dyn State>> {
    #[cfg(feature = "team")]
    {
        Ok(Arc::new(super::pg::PgState::open(connect, schema)?))
    }
    #[cfg(not(feature = "team"))]
    {
        let _ = schema;
        match *connect {}
    }
}

/// Every sluice schema of the shared PostgreSQL (every checkout's, the
/// daemon's, each served repository's), opened, by the name messages
/// give it: what `sluice gc` keeps blobs for.
pub fn all_states(connect: &PgConnect) -> anyhow::Result<Vec<(String, Arc<dyn State>)>> {
    #[cfg(feature = "team")]
    {
        super::pg::sluice_schemas(connect)?
            .into_iter()
            .map(|schema| {
                let db = super::pg::PgState::open(connect, &schema)?;
                Ok((db.describe(), Arc::new(db) as Arc<dyn State>))
            })
            .collect()
    }
    #[cfg(not(feature = "team"))]
    match *connect {}
}
