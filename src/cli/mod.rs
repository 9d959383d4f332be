//! The command line: one file per subcommand; this module holds the
//! argument types and dispatch.

mod check;
mod graph;
mod plan;
mod show;
mod workspace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use workspace::Workspace;

/// sluice: a Git-native ETL framework for messy clinical data.
///
/// Each transformation is one small file (SQL, Python, R or Bash) in a git
/// repository; directives in its leading comments (`@include`, `@depend`,
/// `@param`, `@source`, `@key`, `@assert`, `@timeout`) build the DAG. Every
/// table is cached by the hash of its code and inputs, so a change
/// recomputes only its path.
///
/// Start with `sluice check` (is the repo valid?), then `sluice plan`
/// (what would change against production?).
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
    Check,
    /// Show each node's change against the production manifest.
    ///
    /// A node is `modified` (its own resolved definition changed),
    /// `affected` (only something upstream changed), `new`, `removed` or
    /// `unchanged`. With no production manifest yet, every node is `new`.
    Plan(plan::PlanArgs),
    /// Show one node after includes, mounts and templates: where each part
    /// came from, its inputs and its definition hash.
    ///
    /// Example: sluice show clinics/clinic_b/Patient
    Show(show::ShowArgs),
    /// Print the DAG as Graphviz dot or a Mermaid flowchart.
    ///
    /// Example: sluice graph clinics/clinic_a --format mermaid
    Graph(graph::GraphArgs),
}

/// Runs a parsed command line; the exit code says whether the repository
/// was valid, an error is a problem running sluice itself.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => check::run(&cli.global),
        Command::Plan(args) => plan::run(&cli.global, &args),
        Command::Show(args) => show::run(&cli.global, &args),
        Command::Graph(args) => graph::run(&cli.global, &args),
    }
}
