//! `sluice ci`: run inside a CI job and report like the daemon (being
//! written).

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct CiArgs {}

pub fn run(_global: &GlobalArgs, _args: &CiArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sluice ci is not available in this build")
}
