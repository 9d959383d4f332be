//! `sluice fsck`: verify and repair the state directory (being written).

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct FsckArgs {}

pub fn run(_global: &GlobalArgs, _args: &FsckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sluice fsck is not available in this build")
}
