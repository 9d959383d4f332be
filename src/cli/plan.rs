//! `sluice plan`: each node's change against the production manifest.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use super::select::SelectArgs;
use crate::plan::{Change, PipelinePlan};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Pipelines to plan (directories, e.g. clinics/clinic_a). Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Print JSON: {"plans":[{"pipeline":..,"nodes":[{"name":..,"change":..}]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PlanOutput<'a> {
    plans: &'a [PipelinePlan],
}

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let selectors = args.select.parse()?;
    let mut ws = super::workspace::load(global)?;
    let stores = ws.existing_stores()?;
    let selected = ws.select_pipelines(&args.pipelines)?;
    // `plan clinics/north` needs only north to be valid, as `run` does.
    if !args.pipelines.is_empty() {
        ws.narrow(&selected);
    }
    let mut plans = super::select::plans(&mut ws, stores.as_ref(), &selected)?;
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    if !args.select.is_empty() {
        // Exactly the selected nodes: a removed node is in no selection,
        // and a pipeline with none selected is left out.
        let chosen = selectors.resolve(&ws, &selected, &plans)?;
        for (plan, sel) in plans.iter_mut().zip(&chosen) {
            let names: HashSet<String> = sel
                .nodes
                .iter()
                .map(|id| ws.graph.nodes[*id].display_name(&sel.pipeline))
                .collect();
            plan.nodes.retain(|n| names.contains(&n.name));
        }
        plans.retain(|p| !p.nodes.is_empty());
    }
    // Buffered: the JSON of 50,000 nodes is megabytes of small writes.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    if args.json {
        serde_json::to_writer(&mut out, &PlanOutput { plans: &plans })?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    if plans.is_empty() {
        writeln!(out, "no node selected")?;
    }
    for plan in &plans {
        write_plan(&mut out, plan)?;
    }
    out.flush()?;
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
