//! `sluice hook`: server-side git hooks (being written).

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct HookArgs {}

pub fn run(_global: &GlobalArgs, _args: &HookArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sluice hook is not available in this build")
}
