//! `sluice ls`: the selected nodes, one per line, in the form `show`,
//! `why` and `cat` take; `--json` for scripts.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use super::select::SelectArgs;
use crate::pipeline::{Graph, NodeId, RepoPath};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Pipelines to list (directories, e.g. clinics/clinic_a). Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Print JSON: {"nodes":[{"pipeline":..,"name":..,"node":..,"file":..,"action":..,"inputs":[..]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct LsOutput {
    nodes: Vec<LsNode>,
}

/// One node as a pipeline runs it.
#[derive(Serialize)]
struct LsNode {
    pipeline: String,
    /// The name inside the pipeline: `NAME`, or `/DIR/NAME` for an input
    /// from another directory.
    name: String,
    /// The argument `show`, `why` and `cat` take: `PIPELINE/NAME`, or
    /// `PIPELINE//DIR/NAME`.
    node: String,
    file: String,
    action: String,
    /// The nodes it depends on, by their names inside the pipeline.
    inputs: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let selectors = args.select.parse()?;
    let mut ws = super::workspace::load(global)?;
    let pipelines = ws.select_pipelines(&args.pipelines)?;
    let plans = if selectors.needs_state {
        let stores = ws.existing_stores()?;
        super::select::plans(&mut ws, stores.as_ref(), &pipelines)?
    } else {
        Vec::new()
    };
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let chosen = selectors.resolve(&ws, &pipelines, &plans)?;
    let nodes: Vec<LsNode> = chosen
        .iter()
        .flat_map(|sel| {
            sel.nodes
                .iter()
                .map(|&id| describe(&ws.graph, &sel.pipeline, id))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &LsOutput { nodes })?;
        writeln!(out)?;
    } else {
        for n in &nodes {
            writeln!(out, "{}", n.node)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(graph: &Graph, pipeline: &RepoPath, id: NodeId) -> LsNode {
    let node = &graph.nodes[id];
    let name = node.display_name(pipeline);
    LsNode {
        pipeline: pipeline.to_string(),
        node: format!("{pipeline}/{name}"),
        name,
        file: node.file.to_string(),
        action: node.action.action.to_string(),
        inputs: node
            .deps
            .iter()
            .filter_map(|d| d.node)
            .map(|d| graph.nodes[d].display_name(pipeline))
            .collect(),
    }
}
