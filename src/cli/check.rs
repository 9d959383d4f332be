//! `sluice check`: every problem in one pass, or exit 0.

use std::io::Write;
use std::process::ExitCode;

use super::GlobalArgs;

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut ws = super::workspace::load(global)?;
    // SQL is parsed by SQLite itself, without data.
    ws.diagnostics
        .extend(crate::exec::lint::sql_syntax(&ws.graph));
    ws.diagnostics.sort();
    ws.diagnostics.dedup();
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
    let pipelines = ws.graph.pipelines.len();
    writeln!(
        out,
        "ok: {pipelines} pipeline{}, {nodes} node{}",
        if pipelines == 1 { "" } else { "s" },
        if nodes == 1 { "" } else { "s" },
    )?;
    Ok(ExitCode::SUCCESS)
}
