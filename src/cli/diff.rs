//! `sluice diff`: the last run against production, per DESIGN §4. Counts
//! only: rows before/after, columns added/removed, keyed changes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::workspace::{last_run_manifest, production_manifest};
use super::{GlobalArgs, Workspace};
use crate::plan::diff::{self, NodeDiff};
use crate::plan::digest::Digest;
use crate::store::Stores;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Pipelines to compare. Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    /// Print JSON: {"diffs":[{"pipeline":..,"nodes":[{"name":..,"rows_before":..,"rows_after":..}]}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct DiffOutput {
    diffs: Vec<PipelineDiff>,
}

#[derive(Serialize)]
struct PipelineDiff {
    pipeline: String,
    /// False when nothing has been promoted: every node is new.
    has_production: bool,
    nodes: Vec<NodeDiff>,
}

pub fn run(global: &GlobalArgs, args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let ws = Workspace::load(global)?;
    let Some(stores) = ws.existing_stores()? else {
        anyhow::bail!("nothing has run yet; run `sluice run` first");
    };
    let selected = ws.select_pipelines(&args.pipelines)?;
    let mut out = DiffOutput { diffs: Vec::new() };
    for p in &selected {
        let Some((_, last)) = last_run_manifest(&stores, p)? else {
            anyhow::bail!("pipeline {p} has not run yet; run `sluice run {p}` first");
        };
        let prod = production_manifest(&stores, p)?;
        let prod_m = prod.as_ref().map(|(_, m)| m);
        let mut nodes = Vec::new();
        for n in &last.nodes {
            let before = prod_m.and_then(|m| m.node(&n.name));
            if before.is_some_and(|b| b.output.is_some() && b.output == n.output) {
                continue;
            }
            let mut d = diff::compare_nodes(&n.name, before, Some(n));
            if let (Some(b), Some(new)) = (before, n.output)
                && let Some(old) = b.output
                && !n.key.is_empty()
                && b.key == n.key
            {
                d.keyed = Some(keyed(&stores, &old, &new, &n.key)?);
            }
            nodes.push(d);
        }
        if let Some(m) = prod_m {
            for b in &m.nodes {
                if last.node(&b.name).is_none() {
                    nodes.push(diff::compare_nodes(&b.name, Some(b), None));
                }
            }
        }
        // Failures first, then by name, so the eye lands on what broke.
        nodes.sort_by(|a, b| (a.status != "failed", &a.name).cmp(&(b.status != "failed", &b.name)));
        out.diffs.push(PipelineDiff {
            pipeline: p.to_string(),
            has_production: prod.is_some(),
            nodes,
        });
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &out.diffs {
        writeln!(
            stdout,
            "{}{}",
            p.pipeline,
            if p.has_production {
                ""
            } else {
                "  (no production manifest yet)"
            }
        )?;
        if p.nodes.is_empty() {
            writeln!(stdout, "  no table differs from production\n")?;
            continue;
        }
        writeln!(
            stdout,
            "  {:<28} {:<9} {:>9} {:>9} {:>8}  changes",
            "node", "status", "prod", "branch", "delta"
        )?;
        for n in &p.nodes {
            let num = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
            let delta = n
                .delta
                .map(|d| format!("{d:+}"))
                .unwrap_or_else(|| "-".into());
            let mut notes = Vec::new();
            if !n.columns_added.is_empty() {
                notes.push(format!("+cols {}", n.columns_added.join(",")));
            }
            if !n.columns_removed.is_empty() {
                notes.push(format!("-cols {}", n.columns_removed.join(",")));
            }
            if let Some(k) = n.keyed {
                notes.push(format!("keys +{} -{} ~{}", k.added, k.removed, k.changed));
            }
            writeln!(
                stdout,
                "  {:<28} {:<9} {:>9} {:>9} {:>8}  {}",
                n.name,
                n.status,
                num(n.rows_before),
                num(n.rows_after),
                delta,
                notes.join("; ")
            )?;
        }
        writeln!(stdout)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Keyed row changes between two output tables.
fn keyed(
    stores: &Stores,
    old: &Digest,
    new: &Digest,
    key: &[String],
) -> anyhow::Result<diff::KeyCounts> {
    let a = fingerprints(stores, old, key)?;
    let b = fingerprints(stores, new, key)?;
    Ok(diff::keyed_counts(a, b))
}

/// `(key bytes, row hash)` per row of a stored table. The hashes stay in
/// memory only; nothing here is printed.
fn fingerprints(
    stores: &Stores,
    digest: &Digest,
    key: &[String],
) -> anyhow::Result<Vec<(Vec<u8>, u64)>> {
    let bytes = stores
        .blobs
        .get(digest)
        .with_context(|| format!("cannot read table {digest}"))?;
    let mut rows = Vec::new();
    let mut key_idx: Vec<usize> = Vec::new();
    crate::exec::table::for_each_record(&bytes, |line, fields, nulls| {
        if line == 1 {
            for k in key {
                let i = fields
                    .iter()
                    .position(|f| f == k)
                    .ok_or_else(|| format!("key column `{k}` is not in the table"))?;
                key_idx.push(i);
            }
            return Ok(());
        }
        let mut kb = Vec::new();
        for &i in &key_idx {
            let f = fields.get(i).map(String::as_str).unwrap_or("");
            kb.push(u8::from(nulls.get(i).copied().unwrap_or(false)));
            kb.extend_from_slice(&(f.len() as u64).to_le_bytes());
            kb.extend_from_slice(f.as_bytes());
        }
        let mut h = DefaultHasher::new();
        fields.hash(&mut h);
        nulls.hash(&mut h);
        rows.push((kb, h.finish()));
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("table {digest}: {e}"))?;
    Ok(rows)
}
