//! `sluice serve`: the webhook daemon. Reads `sluice-server.toml`, takes
//! each repository's secrets from the environment variables it names, and
//! runs until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::server::config::{self, RepoConfig, Secrets};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The server configuration (see the README's "Running the daemon").
    #[arg(long, value_name = "FILE", default_value = config::FILE_NAME)]
    pub config: PathBuf,
    /// Only compute node tasks from the shared queue: no HTTP listener,
    /// no jobs. Needs `state = "postgresql://…"`; `workers` sets the task
    /// threads. Run any number of these beside the full daemons. Needs a
    /// sluice built with `--features team`.
    #[arg(long)]
    pub worker_only: bool,
}

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    if args.worker_only && !cfg!(feature = "team") {
        anyhow::bail!(
            "--worker-only computes node tasks from the shared queue on PostgreSQL: {}",
            crate::store::shared::BUILT_WITHOUT
        );
    }
    let cfg = config::load(&args.config)?;
    // The one place the daemon reads the environment: the variables the
    // config names for secrets, SLUICE_LOG for the log filter, and
    // PGPASSWORD / PGPASSFILE / HOME for a PostgreSQL state.
    let secrets = config::resolve_secrets(&cfg, &|name| std::env::var(name).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let shared = match &cfg.state {
        Some(url) => Some(
            crate::store::shared::parse_state(url, &super::pg_credentials())
                .map_err(|e| anyhow::anyhow!("{}: state: {e:#}", args.config.display()))?,
        ),
        None => None,
    };
    if args.worker_only && shared.is_none() {
        anyhow::bail!(
            "{}: --worker-only computes node tasks from the shared queue on PostgreSQL: set \
             state = \"postgresql://…\" (with SQLite state, run the full daemon)",
            args.config.display()
        );
    }
    init_logging();
    let app = crate::server::App::open(
        cfg,
        secrets,
        global.path_env.clone(),
        &real_forge,
        shared.as_ref(),
    )
    .context("cannot start the daemon")?;
    if args.worker_only {
        crate::server::serve_workers(app)?;
    } else {
        crate::server::serve(app)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The forge client a repository's config asks for.
fn real_forge(repo: &RepoConfig, secrets: &Secrets) -> Option<Arc<dyn crate::forge::Forge>> {
    let kind = match repo.forge {
        config::ForgeKind::Github => crate::forge::ForgeKind::Github,
        config::ForgeKind::Gitlab => crate::forge::ForgeKind::Gitlab,
        config::ForgeKind::Gitea => crate::forge::ForgeKind::Gitea,
        config::ForgeKind::Git => return None,
    };
    let api = repo.api_url.as_deref()?;
    let token = secrets.token.as_ref()?;
    let token = String::from_utf8_lossy(token.expose()).into_owned();
    Some(Arc::from(crate::forge::client(kind, api, token)))
}

/// Log lines go to stderr; `SLUICE_LOG` (e.g. `debug`) sets the level.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let value = std::env::var_os("SLUICE_LOG").map(|v| v.to_string_lossy().into_owned());
    let (filter, warning) = log_filter(value.as_deref());
    if let Some(warning) = warning {
        eprintln!("{warning}");
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

/// The log filter `SLUICE_LOG` asks for: a level (`debug`) or
/// `TARGET=LEVEL` directives (`sluice=debug,info`); `info` when it is
/// unset or empty, and when it does not parse, with a warning to print.
fn log_filter(value: Option<&str>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let info = || Targets::new().with_default(LevelFilter::INFO);
    // Empty directives (`debug,`) are skipped, as tracing's EnvFilter did.
    let directives: Vec<&str> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return (info(), None);
    }
    match directives.join(",").parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(e) => (
            info(),
            Some(format!(
                "sluice serve: warning: SLUICE_LOG={:?} is not a log filter ({e}); logging at info. \
                 Write a level (debug) or TARGET=LEVEL pairs (sluice=debug,info)",
                value.unwrap_or_default()
            )),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod log_tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn sluice_log_sets_levels_per_target_and_falls_back_to_info() {
        let (f, warning) = log_filter(None);
        assert!(warning.is_none());
        assert!(f.would_enable("sluice::server", &Level::INFO));
        assert!(!f.would_enable("sluice::server", &Level::DEBUG));
        let (f, warning) = log_filter(Some("debug"));
        assert!(warning.is_none());
        assert!(f.would_enable("sluice::server", &Level::DEBUG));
        assert!(!f.would_enable("sluice::server", &Level::TRACE));
        let (f, warning) = log_filter(Some("sluice=trace,warn,"));
        assert!(warning.is_none());
        assert!(f.would_enable("sluice::server", &Level::TRACE));
        assert!(!f.would_enable("hyper", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));
        let (f, warning) = log_filter(Some(""));
        assert!(warning.is_none());
        assert!(f.would_enable("sluice", &Level::INFO));
        for bad in ["sluice=loud", "a=b=c", "debug,x=1=2"] {
            let (f, warning) = log_filter(Some(bad));
            let warning = warning.unwrap();
            assert!(
                warning.contains("SLUICE_LOG=") && warning.contains("sluice=debug,info"),
                "{warning}"
            );
            assert!(!warning.contains('\n'), "one line: {warning}");
            assert!(f.would_enable("sluice", &Level::INFO));
            assert!(!f.would_enable("sluice", &Level::DEBUG));
        }
    }
}
