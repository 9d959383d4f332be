//! `sluice run`: plan, execute what is not cached, record manifests,
//! optionally promote them to production.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::progress::Progress;
use super::workspace::{production_manifest, production_ref};
use super::{GlobalArgs, Workspace};
use crate::exec::{self, NodeResult, RunOptions, Status};
use crate::pipeline::RepoPath;
use crate::plan::digest::Digest;
use crate::plan::hash::{self, HashContext, NodeHashes};
use crate::plan::manifest::{MANIFEST_FORMAT, Manifest, ManifestNode};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipelines to run (directories, e.g. clinics/clinic_a). Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    /// Worker threads. Default: the number of cores.
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print JSON: {"runs":[{"pipeline":..,"manifest":..,"nodes":[{"name":..,"status":..,"rows":..,"output":..}]}]}.
    #[arg(long)]
    pub json: bool,
    /// Move production/<pipeline> to this run's manifest when it has no failures.
    #[arg(long)]
    pub promote: bool,
}

#[derive(Serialize)]
struct RunOutput {
    runs: Vec<PipelineRun>,
}

#[derive(Serialize)]
struct PipelineRun {
    pipeline: String,
    manifest: Digest,
    promoted: bool,
    nodes: Vec<NodeOut>,
}

#[derive(Serialize)]
struct NodeOut {
    /// The last lines of a failed command's output, for this terminal only:
    /// it never goes into the manifest or to a forge.
    #[serde(skip)]
    log_tail: Option<String>,
    name: String,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Digest>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut ws = Workspace::load(global)?;
    if ws.report_diagnostics() {
        return Ok(ExitCode::FAILURE);
    }
    let stores = ws.open_stores()?;
    let (hashes, ctx) = ws.hashes(Some(&stores.state));
    if ws.report_diagnostics() {
        return Ok(ExitCode::FAILURE);
    }
    let selected = ws.select_pipelines(&args.pipelines)?;
    // Production follows the production branch: promoting from another
    // branch (an experiment) is refused.
    let git_ref = match &global.at {
        Some(rev) => Some(rev.clone()),
        None => crate::git::current_branch(&ws.root),
    };
    if args.promote
        && let (Some(cfg), Some(branch)) = (&ws.config, &git_ref)
        && branch != &cfg.production_branch
    {
        anyhow::bail!(
            "--promote moves production, which follows the production branch `{}`; this is `{branch}`",
            cfg.production_branch
        );
    }

    let mut productions = Vec::new();
    let mut seen = HashSet::new();
    for p in &selected {
        productions.push(production_manifest(&stores, p)?);
        seen.extend(ws.graph.pipeline_nodes(p));
    }
    // One topological order over every selected pipeline, so a node they
    // share (a `/dir/NAME` dependency) runs once.
    let order: Vec<usize> = ws
        .graph
        .order
        .iter()
        .copied()
        .filter(|id| seen.contains(id))
        .collect();

    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let opts = RunOptions {
        jobs,
        data_root: ws.data_root(),
        path_env: global.path_env.clone(),
        source_digests: ctx.sources.clone(),
    };
    let progress = Progress::new();
    let results = exec::execute(&ws.graph, &order, &hashes, &stores, &opts, &progress);
    progress.done();

    let mut any_failed = false;
    let mut out = RunOutput { runs: Vec::new() };
    for (p, prod) in selected.iter().zip(productions) {
        let manifest = build_manifest(
            &ws,
            git_ref.clone(),
            p,
            &hashes,
            &ctx,
            &results,
            prod.as_ref().map(|(d, _)| *d),
        );
        let failed = manifest
            .nodes
            .iter()
            .any(|n| matches!(n.status.as_deref(), Some("failed") | Some("skipped")));
        any_failed |= failed;
        let bytes = serde_json::to_vec_pretty(&manifest)?;
        let digest = stores
            .blobs
            .put(&bytes)
            .context("cannot store the manifest")?;
        stores
            .state
            .record_run(p.as_str(), &digest, ws.commit.as_deref(), failed)?;
        let mut promoted = false;
        if args.promote && !failed {
            let expected = prod.as_ref().map(|(d, _)| d);
            promoted = stores
                .state
                .ref_compare_and_set(&production_ref(p), expected, &digest)?;
            if !promoted {
                eprintln!("sluice: production/{p} moved during the run; not promoted");
            }
        }
        let nodes = ws
            .graph
            .pipeline_nodes(p)
            .into_iter()
            .filter_map(|id| {
                let r = results.get(&id)?;
                let log_tail = match (r.status, r.log) {
                    (Status::Failed, Some(d)) => stores.blobs.get(&d).ok().map(|b| tail(&b, 10)),
                    _ => None,
                };
                Some(NodeOut {
                    log_tail,
                    name: ws.graph.nodes[id].display_name(p),
                    status: r.status,
                    rows: r.rows,
                    output: r.output,
                    duration_ms: r.duration.as_millis() as u64,
                    error: r.error.clone().filter(|_| r.status == Status::Failed),
                })
            })
            .collect();
        out.runs.push(PipelineRun {
            pipeline: p.to_string(),
            manifest: digest,
            promoted,
            nodes,
        });
    }

    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        for r in &out.runs {
            write_summary(&mut stdout, r)?;
        }
    }
    Ok(if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn build_manifest(
    ws: &Workspace,
    git_ref: Option<String>,
    pipeline: &RepoPath,
    hashes: &[Option<NodeHashes>],
    ctx: &HashContext,
    results: &std::collections::HashMap<usize, NodeResult>,
    previous: Option<Digest>,
) -> Manifest {
    let mut nodes = Vec::new();
    for id in ws.graph.pipeline_nodes(pipeline) {
        let node = &ws.graph.nodes[id];
        let (Some(h), Some(r)) = (hashes[id], results.get(&id)) else {
            continue;
        };
        let parts: BTreeMap<String, Digest> = hash::local_key(node, ctx)
            .map(|k| k.parts().into_iter().collect())
            .unwrap_or_default();
        nodes.push(ManifestNode {
            name: node.display_name(pipeline),
            local_hash: h.local,
            definition_hash: h.definition,
            task_key: r.task_key,
            output: r.output,
            rows: r.rows,
            columns: r.columns.clone(),
            status: Some(r.status.as_str().to_string()),
            duration_ms: Some(r.duration.as_millis() as u64),
            log: r.log,
            error: r.error.clone(),
            key: node
                .key
                .as_ref()
                .map(|(k, _)| k.clone())
                .unwrap_or_default(),
            parts,
            inputs: r.inputs.iter().cloned().collect(),
        });
    }
    Manifest {
        format: MANIFEST_FORMAT,
        pipeline: pipeline.to_string(),
        commit: ws.commit.clone(),
        git_ref,
        created_at: Some(crate::store::state::now_rfc3339()),
        previous,
        nodes,
    }
}

fn write_summary(out: &mut impl Write, run: &PipelineRun) -> std::io::Result<()> {
    writeln!(out, "{}  (manifest {})", run.pipeline, run.manifest.short())?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &run.nodes {
        *counts.entry(n.status.as_str()).or_default() += 1;
        let rows = n.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "  {:<9} {:>9} rows  {}",
            n.status.as_str(),
            rows,
            n.name
        )?;
        if let (Status::Failed, Some(e)) = (n.status, &n.error) {
            for line in e.lines() {
                writeln!(out, "            {line}")?;
            }
            for line in n.log_tail.iter().flat_map(|t| t.lines()) {
                writeln!(out, "            | {line}")?;
            }
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    writeln!(
        out,
        "  {} nodes: {}{}\n",
        run.nodes.len(),
        summary.join(", "),
        if run.promoted {
            "; promoted to production"
        } else {
            ""
        }
    )
}

/// The last `n` lines of a log.
fn tail(log: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
