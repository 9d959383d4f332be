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
    let pipeline = known_pipeline(&ws.graph.pipelines, &pipeline, &name)?;
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
    let output = match node.output {
        Some(o) => o,
        None => match failed_table(&stores, node.task_key) {
            Some(o) => {
                // The analyst asked for it: show it, and say what it is.
                eprintln!(
                    "sluice: warning: the data tests of {pipeline}/{name} failed; this is the table they failed on, which nothing downstream used (`sluice test {pipeline}/{name}` shows the failing rows)"
                );
                o
            }
            None => bail!(
                "{pipeline}/{name} has no output in the last run (it {})",
                node.status.map_or("did not run", |s| s.as_str())
            ),
        },
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

/// The table a node computed before its data tests failed, if kept.
pub fn failed_table(
    stores: &crate::store::Stores,
    task_key: Option<crate::plan::digest::Digest>,
) -> Option<crate::plan::digest::Digest> {
    let key = crate::exec::failed_checks_key(&task_key?);
    let entry = stores.state.cache_get(&key).ok()??;
    stores.blobs.contains(&entry.output).then_some(entry.output)
}

/// `pipeline` when it is one; else an error naming the pipeline the
/// analyst most likely meant (`north` for `clinics/north`), so that the
/// suggested command works.
pub fn known_pipeline(
    pipelines: &[RepoPath],
    pipeline: &RepoPath,
    name: &str,
) -> anyhow::Result<RepoPath> {
    if pipelines.contains(pipeline) {
        return Ok(pipeline.clone());
    }
    let tail = format!("/{pipeline}");
    let by_tail: Vec<&RepoPath> = pipelines
        .iter()
        .filter(|p| p.as_str().ends_with(&tail))
        .collect();
    if let [only] = by_tail.as_slice() {
        bail!("no pipeline `{pipeline}`; did you mean {only}/{name}?");
    }
    let known: Vec<&str> = pipelines.iter().map(RepoPath::as_str).collect();
    bail!(
        "no pipeline `{pipeline}`; the pipelines are: {}",
        if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        }
    )
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
