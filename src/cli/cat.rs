//! `sluice cat PIPELINE/NODE`: a node's output table from the last run.
//! This prints cell values, so it is for the analyst's own terminal; no
//! forge-facing path ever calls it.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use super::GlobalArgs;
use crate::engine::manifests::last_run_manifest;
use crate::pipeline::RepoPath;

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The node, as PIPELINE/NODE (e.g. clinics/clinic_a/Albumin).
    #[arg(value_name = "PIPELINE/NODE")]
    pub node: String,
}

/// Splits `PIPELINE/NODE` at its last slash; `/dir/NAME` nodes of other
/// directories are written `PIPELINE//dir/NAME`.
pub fn split_node_arg(arg: &str) -> anyhow::Result<(RepoPath, String)> {
    if let Some((p, foreign)) = arg.split_once("//") {
        let pipeline = RepoPath::parse(p).map_err(|e| anyhow::anyhow!("`{arg}`: {e}"))?;
        return Ok((pipeline, format!("/{foreign}")));
    }
    let Some((dir, name)) = arg.trim_matches('/').rsplit_once('/') else {
        bail!("`{arg}`: name a node as PIPELINE/NODE, e.g. clinics/clinic_a/Patient");
    };
    let pipeline = RepoPath::parse(dir).map_err(|e| anyhow::anyhow!("`{arg}`: {e}"))?;
    Ok((pipeline, name.to_string()))
}

pub fn run(global: &GlobalArgs, args: &CatArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    let (pipeline, name) = split_node_arg(&args.node)?;
    let Some(stores) = ws.existing_stores()? else {
        bail!(
            "nothing has run yet in {}; run `sluice run` first",
            ws.state_dir().display()
        );
    };
    let Some((_, manifest)) = last_run_manifest(&stores, &pipeline)? else {
        bail!("pipeline {pipeline} has not run yet; run `sluice run {pipeline}` first");
    };
    let Some(node) = manifest.node(&name) else {
        let names: Vec<&str> = manifest.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "no node `{name}` in the last run of {pipeline}; its nodes are: {}",
            names.join(", ")
        );
    };
    let Some(output) = node.output else {
        bail!(
            "{pipeline}/{name} has no output in the last run (it {})",
            node.status.map_or("did not run", |s| s.as_str())
        );
    };
    // Streamed, in constant memory, and verified on the way: a damaged
    // table stops with an error at its end (what was printed went to this
    // terminal only).
    let mut reader = stores
        .blobs
        .reader(&output)
        .with_context(|| format!("cannot read the output of {pipeline}/{name}"))?;
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    copy_verified(&mut reader, &mut stdout)
        .with_context(|| format!("cannot read the output of {pipeline}/{name}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Copies a verifying blob reader to `out` in fixed-size chunks; returns
/// the byte count. A read error (a blob found damaged at its end) comes
/// after everything before it was flushed.
pub fn copy_verified(reader: &mut dyn Read, out: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Whatever was written so far is flushed, then the error.
                let _ = out.flush();
                return Err(e);
            }
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.flush()?;
    Ok(total)
}
