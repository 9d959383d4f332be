//! `sluice check`: every problem in one pass, or exit 0.

use std::io::Write;
use std::process::ExitCode;

use super::GlobalArgs;

pub fn run(global: &GlobalArgs, json: bool) -> anyhow::Result<ExitCode> {
    let ws = super::workspace::load(global)?;
    if json {
        return write_json(&ws);
    }
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

/// `check --json`: the same verdict on stdout, problems included; the exit
/// code is the same as without it.
fn write_json(ws: &crate::engine::Workspace) -> anyhow::Result<ExitCode> {
    let nodes: usize = ws
        .graph
        .pipelines
        .iter()
        .map(|p| ws.graph.pipeline_nodes(p).len())
        .sum();
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
