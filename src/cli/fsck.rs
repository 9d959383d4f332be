//! `sluice fsck [--repair]`: verify the state directory (every blob
//! against its name, leftover temp files, the database's integrity, cache
//! entries and refs naming missing or damaged blobs, the ref files, file
//! modes) and, with `--repair`, repair what can be repaired. With blobs in
//! a bucket or state in PostgreSQL, it checks those shared stores instead
//! (`store::fsck::fsck_stores`). Prints counts, digests, paths and ref
//! names: never a cell value.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use crate::store::fsck::{FsckReport, fsck, fsck_stores};

#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Repair what can be: move damaged blobs to `quarantine/`, remove
    /// orphan temp files, move a damaged database aside and recreate it,
    /// drop cache entries naming missing or damaged blobs, rebuild refs
    /// from the ref files and the manifest chain, tighten file modes.
    /// Run it while no other sluice uses the state directory. On a shared
    /// store (--blobs s3://…, --state postgresql://…): delete damaged
    /// blobs from the bucket and drop cache entries naming missing or
    /// damaged ones; a bad ref is reported, not repaired.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &FsckArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    let shared_blobs = global
        .blobs
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    let report = if shared_blobs || ws.shared_state().is_some() {
        // Blobs in a bucket or state in PostgreSQL: the stores' checks,
        // through the same interfaces every run uses.
        let stores = ws.open_stores()?;
        let mut report = fsck_stores(&stores, &ws.checked_state_dir()?, args.repair)?;
        let blobs = match global.blobs.as_deref().map(str::trim) {
            Some(url) if shared_blobs => url.to_string(),
            _ => "the state directory".into(),
        };
        let state = match ws.shared_state() {
            Some(_) => "PostgreSQL",
            None => "the state directory",
        };
        report.shared = Some(format!("blobs in {blobs}, state in {state}"));
        report
    } else {
        fsck(&ws.checked_state_dir()?, args.repair)?
    };
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
    match &r.shared {
        Some(shared) => writeln!(out, "shared stores: {shared}")?,
        None => writeln!(out, "state directory {}", r.state_dir.display())?,
    }
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
