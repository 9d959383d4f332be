//! `sluice check`: every problem in one pass, or exit 0.

use std::io::Write;
use std::process::ExitCode;

use super::GlobalArgs;

pub fn run(global: &GlobalArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut ws = super::workspace::load(global)?;
    // SQL is parsed by SQLite itself, without data.
    ws.diagnostics
        .extend(crate::exec::lint::sql_syntax(&ws.graph));
    ws.diagnostics.sort();
    ws.diagnostics.dedup();
    if json {
        return write_json(&ws);
    }
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let nodes = node_count(&ws);
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

/// `check --json`: the same verdict on stdout, problems included; the exit
/// code is the same as without it.
fn write_json(ws: &crate::engine::Workspace) -> anyhow::Result<ExitCode> {
    let nodes = node_count(ws);
    let problems: Vec<serde_json::Value> = ws
        .diagnostics
        .iter()
        .map(|d| serde_json::json!({"path": d.path.as_str(), "line": d.line, "message": d.message}))
        .collect();
    let ok = problems.is_empty();
    let pipelines: Vec<&str> = ws.graph.pipelines.iter().map(|p| p.as_str()).collect();
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(
        &mut out,
        &serde_json::json!({"ok": ok, "pipelines": pipelines, "nodes": nodes, "problems": problems}),
    )?;
    writeln!(out)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The nodes the pipelines run (a node two pipelines share counts twice).
fn node_count(ws: &crate::engine::Workspace) -> usize {
    ws.graph
        .pipelines
        .iter()
        .map(|p| ws.graph.pipeline_nodes(p).len())
        .sum()
}
