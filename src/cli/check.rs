//! `sluice check`: every problem in one pass, or exit 0.

use std::io::Write;
use std::process::ExitCode;

use super::GlobalArgs;

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let nodes: usize = ws
        .graph
        .pipelines
        .iter()
        .map(|p| ws.graph.pipeline_nodes(p).len())
        .sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok: {} pipeline{}, {} nodes",
        ws.graph.pipelines.len(),
        if ws.graph.pipelines.len() == 1 {
            ""
        } else {
            "s"
        },
        nodes
    )?;
    Ok(ExitCode::SUCCESS)
}
