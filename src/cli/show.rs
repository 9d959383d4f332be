//! `sluice show PIPELINE/NODE`: a node after includes, mounts and
//! templates, with where each part came from.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use serde_json::json;

use super::GlobalArgs;
use crate::pipeline::directive::nearest;
use crate::pipeline::graph::Origin;
use crate::pipeline::{Graph, Node, RepoPath};
use crate::plan::hash::NodeHashes;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The node, as PIPELINE/NODE (e.g. clinics/clinic_b/Patient).
    #[arg(value_name = "PIPELINE/NODE")]
    pub node: String,
    /// Print JSON (the shape is in docs/json.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let mut ws = super::workspace::load(global)?;
    let stores = ws.existing_stores()?;
    let (hashes, _) = ws.hashes(stores.as_ref().map(|s| &*s.memo));
    let failed = super::workspace::report_diagnostics(&ws);
    let (dir, name) = super::cat::split_node_arg(&args.node)?;
    // `PIPELINE//dir/NAME` names a node of another directory.
    let (dir, name) = match name.strip_prefix('/').and_then(|n| n.rsplit_once('/')) {
        Some((d, n)) => (
            RepoPath::parse(d).map_err(|e| anyhow::anyhow!("`{}`: {e}", args.node))?,
            n.to_string(),
        ),
        None => (dir, name),
    };
    let name = name.as_str();
    let Some(node) = ws.graph.lookup(&dir, name) else {
        let names: Vec<&str> = ws
            .graph
            .nodes
            .iter()
            .filter(|n| n.dir == dir)
            .map(|n| n.name.as_str())
            .collect();
        if names.is_empty() {
            bail!("no pipeline `{dir}`");
        }
        let hint = nearest(name, names.iter().copied())
            .map(|s| format!(" (did you mean {dir}/{s}?)"))
            .unwrap_or_default();
        bail!("no node `{name}` in {dir}{hint}");
    };
    let mut out = std::io::stdout().lock();
    let exit = if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        let h = hashes.get(node.id).copied().flatten();
        serde_json::to_writer(&mut out, &json(&ws.graph, node, h))?;
        writeln!(out)?;
        return Ok(exit);
    }
    writeln!(out, "node        {}/{}", node.dir, node.name)?;
    writeln!(out, "file        {}", node.file)?;
    if let Some(o) = &node.overrides {
        writeln!(out, "overrides   {o}")?;
    }
    for m in &node.via {
        writeln!(out, "mounted by  {m}")?;
    }
    for i in &node.includes {
        writeln!(out, "inherits    {i}")?;
    }
    let how = if node.action.by_extension {
        "by file extension"
    } else {
        "included"
    };
    writeln!(
        out,
        "action      {} (from {}, {how})",
        node.action.action, node.action.defined_in
    )?;
    for (k, v) in &node.params {
        writeln!(out, "param       {k}={} (set at {})", v.value, v.origin)?;
    }
    for d in &node.deps {
        let target = d.reference(&node.dir);
        let file = d
            .node
            .map(|id| ws.graph.nodes[id].file.to_string())
            .unwrap_or_else(|| "missing".into());
        writeln!(
            out,
            "depends     {target} as table {} -> {file} (at {})",
            d.table(),
            d.origin
        )?;
    }
    for s in &node.sources {
        writeln!(
            out,
            "source      data://{} as table {} (at {})",
            s.path, s.table, s.origin
        )?;
    }
    if let Some((k, o)) = &node.key {
        writeln!(out, "key         {} (at {o})", k.join(", "))?;
    }
    for (a, o) in &node.asserts {
        writeln!(out, "assert      {a} (at {o})")?;
    }
    if let Some((t, o)) = &node.timeout {
        writeln!(out, "timeout     {t}s (at {o})")?;
    }
    match hashes.get(node.id).copied().flatten() {
        Some(h) => {
            writeln!(out, "definition  {}", h.definition)?;
            writeln!(out, "local       {}", h.local)?;
        }
        None => writeln!(out, "definition  unknown (see the problems above)")?,
    }
    writeln!(out, "body        (from {})", node.body_from)?;
    for line in node.body.lines() {
        writeln!(out, "  | {line}")?;
    }
    Ok(exit)
}

/// `show --json`: the same facts as the text, each origin as `path:line`.
fn json(graph: &Graph, node: &Node, hashes: Option<NodeHashes>) -> serde_json::Value {
    let origin = |o: &Origin| o.to_string();
    json!({
        "node": format!("{}/{}", node.dir, node.name),
        "dir": node.dir.as_str(),
        "name": node.name,
        "file": node.file.as_str(),
        "overrides": node.overrides.as_ref().map(|o| o.as_str()),
        "mounted_by": node.via.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "inherits": node.includes.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        "action": {
            "action": node.action.action.to_string(),
            "defined_in": node.action.defined_in.as_str(),
            "by_extension": node.action.by_extension,
        },
        "params": node.params.iter().map(|(k, v)| json!({
            "name": k, "value": v.value, "origin": origin(&v.origin),
        })).collect::<Vec<_>>(),
        "depends": node.deps.iter().map(|d| json!({
            "reference": d.reference(&node.dir),
            "table": d.table(),
            "file": d.node.map(|id| graph.nodes[id].file.to_string()),
            "origin": origin(&d.origin),
        })).collect::<Vec<_>>(),
        "sources": node.sources.iter().map(|s| json!({
            "path": format!("data://{}", s.path),
            "table": s.table,
            "origin": origin(&s.origin),
        })).collect::<Vec<_>>(),
        "key": node.key.as_ref().map(|(k, o)| json!({"columns": k, "origin": origin(o)})),
        "asserts": node.asserts.iter().map(|(a, o)| json!({
            "assert": a.to_string(), "origin": origin(o),
        })).collect::<Vec<_>>(),
        "timeout_s": node.timeout.as_ref().map(|(t, _)| t),
        "definition": hashes.map(|h| h.definition.to_string()),
        "local": hashes.map(|h| h.local.to_string()),
        "body_from": node.body_from.as_str(),
        "body": &*node.body,
    })
}
