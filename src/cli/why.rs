//! `sluice why PIPELINE/NODE`: why the last run computed a node or took it
//! from the cache, naming the part of its definition or the input that
//! changed against production.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::cat::split_node_arg;
use super::workspace::{last_run_manifest, production_manifest};
use super::{GlobalArgs, Workspace};
use crate::plan::manifest::ManifestNode;

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The node, as PIPELINE/NODE (e.g. clinics/clinic_a/Labs).
    #[arg(value_name = "PIPELINE/NODE")]
    pub node: String,
}

/// The differences between a node in two manifests, in words.
pub fn explain(cur: &ManifestNode, prod: &ManifestNode) -> Vec<String> {
    let mut out = Vec::new();
    for (part, d) in &cur.parts {
        match prod.parts.get(part) {
            None => out.push(format!("{part} is new")),
            Some(p) if p != d => out.push(format!("{part} changed")),
            Some(_) => {}
        }
    }
    for part in prod.parts.keys() {
        if !cur.parts.contains_key(part) {
            out.push(format!("{part} was removed"));
        }
    }
    for (table, d) in &cur.inputs {
        match prod.inputs.get(table) {
            Some(p) if p != d => out.push(format!(
                "input {table} changed: its output went from {} to {}",
                p.short(),
                d.short()
            )),
            None if !cur.parts.contains_key(&format!("input {table}")) => {
                out.push(format!("input {table} is new"))
            }
            _ => {}
        }
    }
    out
}

pub fn run(global: &GlobalArgs, args: &WhyArgs) -> anyhow::Result<ExitCode> {
    let ws = Workspace::load(global)?;
    let (pipeline, name) = split_node_arg(&args.node)?;
    let Some(stores) = ws.existing_stores()? else {
        bail!("nothing has run yet; run `sluice run` first");
    };
    let Some((_, last)) = last_run_manifest(&stores, &pipeline)? else {
        bail!("pipeline {pipeline} has not run yet; run `sluice run {pipeline}` first");
    };
    let Some(cur) = last.node(&name) else {
        bail!("no node `{name}` in the last run of {pipeline}");
    };
    let status = cur.status.as_deref().unwrap_or("unknown");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{pipeline}/{name}: {status} in the last run")?;
    if let Some(k) = cur.task_key {
        writeln!(out, "  task key {k}")?;
    }
    let prod = production_manifest(&stores, &pipeline)?;
    let prod_node = prod.as_ref().and_then(|(_, m)| m.node(&name));
    let reasons = match prod_node {
        None => {
            vec!["it is not in the production manifest (new, or nothing promoted yet)".to_string()]
        }
        Some(p) if p.task_key == cur.task_key => {
            vec!["nothing changed: same task key as production".to_string()]
        }
        Some(p) => {
            let r = explain(cur, p);
            if r.is_empty() {
                vec![
                    "its task key differs from production's, but no recorded part or input does (the sluice format version or the set of inputs changed)".to_string(),
                ]
            } else {
                r
            }
        }
    };
    let lead = match status {
        "cached" => "taken from the cache; against production",
        "computed" => "computed because, against production",
        _ => "against production",
    };
    writeln!(out, "  {lead}:")?;
    for r in reasons {
        writeln!(out, "  - {r}")?;
    }
    if status == "computed" && prod_node.is_some_and(|p| p.task_key == cur.task_key) {
        writeln!(
            out,
            "  - and no cache entry held that task key (new state directory, or the cache was cleared)"
        )?;
    }
    if let Some(e) = &cur.error {
        writeln!(out, "  error: {e}")?;
    }
    Ok(ExitCode::SUCCESS)
}
