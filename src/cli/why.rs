//! `sluice why PIPELINE/NODE`: why the last run computed a node or took it
//! from the cache, naming the part of its definition or the input that
//! changed against production.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::GlobalArgs;
use super::cat::split_node_arg;
use crate::engine::manifests::{last_run_manifest, production};

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The node, as PIPELINE/NODE (e.g. clinics/clinic_a/Labs).
    #[arg(value_name = "PIPELINE/NODE")]
    pub node: String,
    /// Print JSON (the shape is in docs/json.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &WhyArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
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
    let status = cur.status.map_or("unknown", |s| s.as_str());
    let mut out = std::io::stdout().lock();
    let prod = production(&stores, &pipeline)?;
    if let Some(w) = &prod.warning {
        eprintln!("sluice: warning: {w}");
    }
    let prod = prod.manifest;
    let prod_node = prod.as_ref().and_then(|(_, m)| m.node(&name));
    let reasons = crate::engine::why::reasons(cur, prod_node);
    let no_cache_entry =
        status == "computed" && prod_node.is_some_and(|p| p.task_key == cur.task_key);
    if args.json {
        let value = serde_json::json!({
            "pipeline": pipeline.as_str(),
            "name": name,
            "status": status,
            "task_key": cur.task_key.map(|k| k.to_string()),
            "production": prod.as_ref().map(|(d, _)| d.to_string()),
            "reasons": reasons,
            "no_cache_entry": no_cache_entry,
            "error": cur.error,
        });
        serde_json::to_writer(&mut out, &value)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{pipeline}/{name}: {status} in the last run")?;
    if let Some(k) = cur.task_key {
        writeln!(out, "  task key {k}")?;
    }
    let lead = match status {
        "cached" => "taken from the cache; against production",
        "computed" => "computed because, against production",
        _ => "against production",
    };
    writeln!(out, "  {lead}:")?;
    for r in reasons {
        writeln!(out, "  - {r}")?;
    }
    if no_cache_entry {
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
