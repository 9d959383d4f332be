//! `sluice diff`: the last run against production, per DESIGN §4. Counts
//! only: rows before/after, columns added/removed, keyed changes.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::plan::diff::NodeDiff;

use super::GlobalArgs;
use crate::engine::manifests::{load_manifest, production};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Pipelines to compare. Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    /// Print JSON: {"diffs":[{"pipeline":..,"nodes":[{"name":..,"rows_before":..,"rows_after":..}]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct DiffOutput {
    diffs: Vec<PipelineDiff>,
}

#[derive(Serialize)]
struct PipelineDiff {
    pipeline: String,
    /// False when nothing has been promoted: every node is new.
    has_production: bool,
    nodes: Vec<NodeDiff>,
}

pub fn run(global: &GlobalArgs, args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    let Some(stores) = ws.existing_stores()? else {
        anyhow::bail!("nothing has run yet; run `sluice run` first");
    };
    let selected = ws.select_pipelines(&args.pipelines)?;
    let mut out = DiffOutput { diffs: Vec::new() };
    for p in &selected {
        let Some(last_run) = stores.state.last_run(p.as_str())? else {
            anyhow::bail!("pipeline {p} has not run yet; run `sluice run {p}` first");
        };
        // One lost manifest must not hide every other pipeline's diff.
        let last = match load_manifest(&stores, &last_run.manifest) {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "sluice: warning: the last run of {p} cannot be shown ({e:#}); run \
                     `sluice run {p}` again, and `sluice fsck --repair` to check the store"
                );
                continue;
            }
        };
        let prod = production(&stores, p)?;
        if let Some(w) = &prod.warning {
            eprintln!("sluice: warning: {w}");
        }
        let prod = prod.manifest;
        let nodes =
            crate::engine::diff::pipeline_diff(&stores, &last, prod.as_ref().map(|(_, m)| &**m))?;
        out.diffs.push(PipelineDiff {
            pipeline: p.to_string(),
            has_production: prod.is_some(),
            nodes,
        });
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        // JSON leaves the terminal: column names the data chose are counted.
        let vocab = crate::engine::diff::Vocabulary::of_graph(&ws.graph);
        for n in out.diffs.iter_mut().flat_map(|p| p.nodes.iter_mut()) {
            n.columns_added = vocab.hide(&n.columns_added);
            n.columns_removed = vocab.hide(&n.columns_removed);
        }
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &out.diffs {
        writeln!(
            stdout,
            "{}{}",
            p.pipeline,
            if p.has_production {
                ""
            } else {
                "  (no production manifest yet)"
            }
        )?;
        if p.nodes.is_empty() {
            writeln!(stdout, "  no table differs from production\n")?;
            continue;
        }
        writeln!(
            stdout,
            "  {:<28} {:<9} {:>9} {:>9} {:>8}  changes",
            "node", "status", "prod", "branch", "delta"
        )?;
        for n in &p.nodes {
            let num = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            let delta = n
                .delta
                .map(|d| format!("{d:+}"))
                .unwrap_or_else(|| "-".into());
            let mut notes = Vec::new();
            if n.status == "failed" || n.status == "skipped" {
                notes.push(format!(
                    "{} in this run: no table to compare (production keeps its own)",
                    n.status
                ));
            }
            if !n.columns_added.is_empty() {
                notes.push(format!("+cols {}", n.columns_added.join(",")));
            }
            if !n.columns_removed.is_empty() {
                notes.push(format!("-cols {}", n.columns_removed.join(",")));
            }
            if let Some(k) = n.keyed {
                notes.push(format!("keys +{} -{} ~{}", k.added, k.removed, k.changed));
            }
            writeln!(
                stdout,
                "  {:<28} {:<9} {:>9} {:>9} {:>8}  {}",
                n.name,
                n.status,
                num(n.rows_before),
                num(n.rows_after),
                delta,
                notes.join("; ")
            )?;
        }
        writeln!(stdout)?;
    }
    Ok(ExitCode::SUCCESS)
}
