//! `sluice fsck [--repair]`: verify the state directory (every blob
//! against its name, leftover temp files, the database's integrity, cache
//! entries and refs naming missing or damaged blobs, the ref files, file
//! modes) and, with `--repair`, repair what can be repaired. Prints
//! counts, digests, paths and ref names: never a cell value.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use crate::store::fsck::{FsckReport, fsck};

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Repair what can be: move damaged blobs to `quarantine/`, remove
    /// orphan temp files, move a damaged database aside and recreate it,
    /// drop cache entries naming missing or damaged blobs, rebuild refs
    /// from the ref files and the manifest chain, tighten file modes.
    /// Run it while no other sluice uses the state directory.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    // Its checks (and repairs) read the local blob directory: with blobs
    // in a bucket every cache entry would look missing.
    if global
        .blobs
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty())
    {
        anyhow::bail!(
            "sluice fsck checks a local state directory, and --blobs / SLUICE_BLOBS puts the blobs \
             in a bucket (where every read is verified anyway); run it without --blobs on a \
             state directory that keeps its blobs locally"
        );
    }
    let dir = ws.checked_state_dir()?;
    let report = fsck(&dir, args.repair)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &report)?;
    }
    Ok(if report.all_repaired() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_report(out: &mut impl Write, r: &FsckReport) -> std::io::Result<()> {
    writeln!(out, "state directory {}", r.state_dir.display())?;
    writeln!(out, "  {} blobs checked", r.blobs_checked)?;
    for (kind, c) in r.kinds() {
        if r.repair && c.found > 0 {
            writeln!(out, "  {:>5} {kind} ({} repaired)", c.found, c.repaired)?;
        } else {
            writeln!(out, "  {:>5} {kind}", c.found)?;
        }
    }
    for p in &r.problems {
        writeln!(out, "  - {p}")?;
    }
    let verdict = if r.clean() {
        "clean"
    } else if r.all_repaired() {
        "repaired; run `sluice fsck` again to confirm"
    } else if r.repair {
        "damage remains"
    } else {
        "damage found; `sluice fsck --repair` repairs what can be"
    };
    writeln!(out, "  {verdict}")
}
