//! `sluice graph`: the DAG as Graphviz dot or Mermaid.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::GlobalArgs;
use crate::pipeline::Graph;
use crate::pipeline::RepoPath;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// The pipeline to draw. Default: every pipeline.
    #[arg(value_name = "PIPELINE")]
    pub pipeline: Option<String>,
    #[arg(long, value_enum, default_value = "dot")]
    pub format: Format,
}

pub fn run(global: &GlobalArgs, args: &GraphArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let names: Vec<String> = args.pipeline.iter().cloned().collect();
    let pipelines = ws.select_pipelines(&names)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Dot => write_dot(&mut out, &ws.graph, &pipelines)?,
        Format::Mermaid => write_mermaid(&mut out, &ws.graph, &pipelines)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Quotes a label for dot and Mermaid alike.
fn label(s: &str) -> String {
    s.replace('"', "'")
}

pub fn write_dot(
    out: &mut impl Write,
    graph: &Graph,
    pipelines: &[RepoPath],
) -> std::io::Result<()> {
    writeln!(out, "digraph sluice {{\n  rankdir=LR;\n  node [shape=box];")?;
    for (i, p) in pipelines.iter().enumerate() {
        writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"{}\";",
            label(p.as_str())
        )?;
        for id in graph.pipeline_nodes(p) {
            let n = &graph.nodes[id];
            writeln!(
                out,
                "    \"{}/{id}\" [label=\"{}\"];",
                label(p.as_str()),
                label(&n.display_name(p))
            )?;
        }
        for id in graph.pipeline_nodes(p) {
            for d in graph.nodes[id].deps.iter().filter_map(|d| d.node) {
                writeln!(out, "    \"{0}/{d}\" -> \"{0}/{id}\";", label(p.as_str()))?;
            }
        }
        writeln!(out, "  }}")?;
    }
    writeln!(out, "}}")
}

pub fn write_mermaid(
    out: &mut impl Write,
    graph: &Graph,
    pipelines: &[RepoPath],
) -> std::io::Result<()> {
    writeln!(out, "flowchart LR")?;
    for (i, p) in pipelines.iter().enumerate() {
        writeln!(out, "  subgraph p{i}[\"{}\"]", label(p.as_str()))?;
        for id in graph.pipeline_nodes(p) {
            let n = &graph.nodes[id];
            writeln!(out, "    p{i}n{id}[\"{}\"]", label(&n.display_name(p)))?;
        }
        for id in graph.pipeline_nodes(p) {
            for d in graph.nodes[id].deps.iter().filter_map(|d| d.node) {
                writeln!(out, "    p{i}n{d} --> p{i}n{id}")?;
            }
        }
        writeln!(out, "  end")?;
    }
    Ok(())
}
