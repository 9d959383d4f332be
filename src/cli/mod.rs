//! The command line: one file per subcommand; this module holds the
//! argument types and dispatch.

mod cat;
mod check;
mod ci;
mod diff;
mod fsck;
mod gc;
mod graph;
mod hook;
mod ls;
mod plan;
mod progress;
mod run;
mod select;
mod serve;
mod show;
mod test;
mod why;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// sluice: a Git-native ETL framework for messy clinical data.
///
/// Each transformation is one small file (SQL, Python, R or Bash) in a git
/// repository; directives in its leading comments (`@include`, `@depend`,
/// `@param`, `@source`, `@key`, `@assert`, `@timeout`) build the DAG. Every
/// table is cached by the hash of its code and inputs, so a change
/// recomputes only its path.
///
/// Start with `sluice check` (is the repo valid?), `sluice plan` (what
/// would change against production?), `sluice run` (compute it), then
/// `sluice diff` (how did the tables change?).
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The pipelines repository (the directory holding sluice.toml).
    /// Default: the nearest one at or above the current directory.
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Read the repository at this git revision (branch, tag, sha, HEAD~1)
    /// straight from git objects, instead of the working tree.
    #[arg(long, global = true, value_name = "REV")]
    pub at: Option<String>,
    /// The data root that `data://` sources resolve under (overrides
    /// `[data] root` of sluice.toml). PHI lives here, never in git.
    #[arg(long, global = true, value_name = "DIR", env = "SLUICE_DATA_ROOT")]
    pub data: Option<PathBuf>,
    /// Where the cache, blobs and refs live. Default: <repo>/.sluice.
    #[arg(long, global = true, value_name = "DIR", env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where blobs (tables, logs, manifests) live: s3://BUCKET[/PREFIX] for
    /// an S3-compatible object store a team shares, with credentials,
    /// region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION and AWS_ENDPOINT_URL. Default: <state-dir>/blobs. Needs
    /// a sluice built with `--features team`.
    #[arg(long, global = true, value_name = "URL", env = "SLUICE_BLOBS")]
    pub blobs: Option<String>,
    /// The size bound of the local cache of an S3 blob store
    /// (<state-dir>/blob-cache), e.g. 10GiB or 500MiB. Default: 10GiB.
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "SLUICE_BLOB_CACHE_SIZE"
    )]
    pub blob_cache_size: Option<String>,
    /// Keep the action cache, refs and runs in a team's PostgreSQL
    /// (postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=require]) instead
    /// of the state directory, which still holds the blobs and this
    /// machine's source memo. The password comes from PGPASSWORD or
    /// ~/.pgpass (PGPASSFILE), never from the URL; a host other than this
    /// machine needs sslmode=require. Needs a sluice built with
    /// `--features team`.
    #[arg(long, global = true, value_name = "URL", env = "SLUICE_STATE")]
    pub state: Option<String>,
    /// The search path command actions run with (the only variable of the
    /// caller's environment they see).
    #[arg(
        long = "action-path",
        global = true,
        value_name = "PATH",
        env = "PATH",
        default_value = "/usr/local/bin:/usr/bin:/bin",
        hide = true
    )]
    pub path_env: std::ffi::OsString,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and resolve every pipeline; print each problem as
    /// `path:line: message` and exit 1, or exit 0 when all is well.
    ///
    /// Finds unknown directives, missing dependencies (with the nearest
    /// name), dependency cycles, include and mount cycles, names defined by
    /// two mounts, undefined {{params}}, paths leaving the repository and
    /// SQL nodes with an empty body, all in one pass.
    Check {
        /// Print JSON: {"ok":..,"pipelines":[..],"nodes":..,"problems":[{"path":..,"line":..,"message":..}]}.
        #[arg(long)]
        json: bool,
    },
    /// Show each node's change against the production manifest.
    ///
    /// A node is `modified` (its own resolved definition changed),
    /// `affected` (only something upstream changed), `new`, `removed` or
    /// `unchanged`. With no production manifest yet, every node is `new`.
    Plan(plan::PlanArgs),
    /// List the nodes a selection names, one per line as `show`, `why`
    /// and `cat` take them (PIPELINE/NAME, or PIPELINE//DIR/NAME for an
    /// input from another directory).
    ///
    /// Example: sluice ls -s '+clinics/clinic_a/PatientSummary' --exclude 'state:modified'
    Ls(ls::LsArgs),
    /// Show one node after includes, mounts and templates: where each part
    /// came from, its inputs and its definition hash.
    ///
    /// Example: sluice show clinics/clinic_b/Patient
    Show(show::ShowArgs),
    /// Run what changed against production, take the rest from the cache.
    ///
    /// Plans against the production manifest, runs the nodes whose task key
    /// (code + input data) is not cached, on a worker pool in dependency
    /// order, and records a manifest. A failed node skips its descendants;
    /// independent nodes still run. Exit 1 when any node failed.
    ///
    /// Example: sluice run clinics/clinic_a -j 4 --promote
    Run(run::RunArgs),
    /// Print a node's output table (CSV) from the last run.
    ///
    /// Example: sluice cat clinics/clinic_a/Albumin | head
    Cat(cat::CatArgs),
    /// Run the data tests (@key, @assert) of nodes and print the rows
    /// that fail them.
    ///
    /// Computes what the nodes need (from the cache where it can); records
    /// and promotes nothing. The failing rows hold cell values: they are
    /// printed on this terminal only, never in JSON, statuses or comments.
    ///
    /// Example: sluice test clinics/clinic_a/Patient
    Test(test::TestArgs),
    /// Compare the last run with production: rows, columns, keyed changes.
    ///
    /// Counts only, never cell values: rows before and after, columns added
    /// and removed, and with @key the rows added, removed and changed.
    Diff(diff::DiffArgs),
    /// Explain why a node was computed or taken from the cache in the last
    /// run: which part of its definition or which input changed.
    Why(why::WhyArgs),
    /// Run the webhook daemon: take push and pull-request webhooks from
    /// GitHub, GitLab or Gitea (or a plain git server's hooks), run the
    /// pushed commit, and report statuses and one PR comment.
    ///
    /// Secrets are read from the environment variables the config names.
    /// Example: SLUICE_WEBHOOK_SECRET=... SLUICE_FORGE_TOKEN=... sluice serve --config sluice-server.toml
    Serve(serve::ServeArgs),
    /// Verify the state directory: every blob against its name, the state
    /// database's integrity, cache entries and refs; `--repair` fixes what
    /// can be fixed. With --blobs s3://… or --state postgresql://… it
    /// checks that shared store: every blob in the bucket read and hashed.
    Fsck(fsck::FsckArgs),
    /// Delete the blobs nothing needs any more, and print what was freed.
    ///
    /// Keeps every blob reachable from production (each `production/*`
    /// manifest and every table and log it names, and the manifests of the
    /// production chain), the last N runs of each branch, and anything
    /// younger than the grace period; deletes the rest, with the cache
    /// entries and run records that named it. `--server-config` collects
    /// the daemon's shared store, keeping what any repository needs.
    ///
    /// Example: sluice gc --keep-runs 3 --grace 7d --dry-run
    Gc(gc::GcArgs),
    /// Run inside a CI job (GitHub Actions, GitLab CI): plan against the
    /// shared production state, run, and post the same commit statuses and
    /// pull-request comment as the daemon.
    Ci(ci::CiArgs),
    /// Server-side git hooks for a plain git server: install them into a
    /// bare repository, or run them (pre-receive checks pushed commits,
    /// post-receive tells the daemon).
    Hook(hook::HookArgs),
    /// Print the DAG as Graphviz dot or a Mermaid flowchart.
    ///
    /// Example: sluice graph clinics/clinic_a --format mermaid
    Graph(graph::GraphArgs),
}

/// Runs a parsed command line; the exit code says whether the repository
/// was valid, an error is a problem running sluice itself.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every command but the daemon exits when done: a big repository's
    // caches and graph are left to the exit to free.
    if !matches!(cli.command, Command::Serve(_)) {
        crate::pipeline::resolve::free_nothing_big();
    }
    match cli.command {
        Command::Check { json } => check::run(&cli.global, json),
        Command::Ls(args) => ls::run(&cli.global, &args),
        Command::Plan(args) => plan::run(&cli.global, &args),
        Command::Show(args) => show::run(&cli.global, &args),
        Command::Graph(args) => graph::run(&cli.global, &args),
        Command::Run(args) => run::run(&cli.global, &args),
        Command::Cat(args) => cat::run(&cli.global, &args),
        Command::Diff(args) => diff::run(&cli.global, &args),
        Command::Test(args) => test::run(&cli.global, &args),
        Command::Why(args) => why::run(&cli.global, &args),
        Command::Serve(args) => serve::run(&cli.global, &args),
        Command::Ci(args) => ci::run(&cli.global, &args),
        Command::Fsck(args) => fsck::run(&cli.global, &args),
        Command::Gc(args) => gc::run(&cli.global, &args),
        Command::Hook(args) => hook::run(&cli.global, &args),
    }
}

/// The PostgreSQL password sources of the environment: `PGPASSWORD`, else
/// the `.pgpass` file (`PGPASSFILE`, or `$HOME/.pgpass`).
pub fn pg_credentials() -> crate::store::shared::Credentials {
    let password = std::env::var("PGPASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(crate::store::shared::Password::new);
    let pgpass = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
    crate::store::shared::Credentials { password, pgpass }
}
