//! `sluice plan`: each node's change against the production manifest.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::engine::manifests::production;
use crate::plan::{self, Change, PipelinePlan};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pipelines to plan (directories, e.g. clinics/clinic_a). Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    /// Print JSON: {"plans":[{"pipeline":..,"nodes":[{"name":..,"change":..}]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    plans: &'a [PipelinePlan],
}

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let mut ws = super::workspace::load(global)?;
    let stores = ws.existing_stores()?;
    let (hashes, _) = ws.hashes(stores.as_ref().map(|s| &*s.state));
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let selected = ws.select_pipelines(&args.pipelines)?;
    let mut plans = Vec::new();
    for p in &selected {
        let production = match &stores {
            Some(s) => {
                let prod = production(s, p)?;
                if let Some(w) = prod.warning {
                    eprintln!("sluice: warning: {w}");
                }
                prod.manifest.map(|(_, m)| m)
            }
            None => None,
        };
        plans.push(plan::plan_pipeline(
            &ws.graph,
            &hashes,
            p,
            production.as_ref(),
        ));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &PlanOutput { plans: &plans })?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for plan in &plans {
        write_plan(&mut out, plan)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_plan(out: &mut impl Write, plan: &PipelinePlan) -> std::io::Result<()> {
    writeln!(out, "{}", plan.pipeline)?;
    for n in &plan.nodes {
        writeln!(out, "  {:<10} {}", n.change.as_str(), n.name)?;
    }
    let mut parts = Vec::new();
    for c in [
        Change::Modified,
        Change::Affected,
        Change::New,
        Change::Removed,
        Change::Unchanged,
    ] {
        let k = plan.count(c);
        if k > 0 {
            parts.push(format!("{k} {}", c.as_str()));
        }
    }
    let to_run = plan.nodes.iter().filter(|n| n.change.needs_run()).count();
    writeln!(
        out,
        "  {} node{}: {}; {} to run\n",
        plan.nodes.len(),
        if plan.nodes.len() == 1 { "" } else { "s" },
        parts.join(", "),
        to_run
    )
}
