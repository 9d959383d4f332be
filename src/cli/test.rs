//! `sluice test PIPELINE/NODE...`: run the data tests (`@key`, `@assert`)
//! of the named nodes, computing what they need (from the cache where it
//! can), and print the rows behind each failure. Cell values go to this
//! terminal only: there is no JSON form, and nothing here is recorded,
//! promoted or sent to a forge.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::GlobalArgs;
use super::cat::{failed_table, known_pipeline, split_node_arg};
use super::progress::Progress;
use crate::exec::{self, CancelToken, RunOptions, Status};
use crate::pipeline::{NodeId, RepoPath};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The nodes to test, as PIPELINE/NODE (e.g. clinics/clinic_a/Albumin),
    /// or a PIPELINE to test each of its nodes that has a test.
    #[arg(value_name = "PIPELINE/NODE", required_unless_present_any = ["select", "exclude"])]
    pub targets: Vec<String>,
    /// Or choose them as `plan` and `run` do: the selected nodes that have
    /// a test are tested.
    #[command(flatten)]
    pub select: super::select::SelectArgs,
    /// How many failing rows to print per test.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Worker threads. Default: the number of cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = super::run::parse_jobs)]
    pub jobs: Option<usize>,
}

pub fn run(global: &GlobalArgs, args: &TestArgs) -> anyhow::Result<ExitCode> {
    let mut ws = super::workspace::load(global)?;
    // Each target names a pipeline: only those need to be valid.
    let mut pipelines: Vec<RepoPath> = Vec::new();
    let mut wanted: Vec<(RepoPath, Option<String>)> = Vec::new();
    for t in &args.targets {
        let as_pipeline = RepoPath::parse(t.trim_matches('/'))
            .ok()
            .filter(|p| ws.graph.pipelines.contains(p));
        let (pipeline, name) = match as_pipeline {
            Some(p) => (p, None),
            None => {
                let (p, n) = split_node_arg(t)?;
                (known_pipeline(&ws.graph.pipelines, &p, &n)?, Some(n))
            }
        };
        if !pipelines.contains(&pipeline) {
            pipelines.push(pipeline.clone());
        }
        wanted.push((pipeline, name));
    }
    if !pipelines.is_empty() {
        ws.narrow(&pipelines);
    }
    let stores = ws.open_stores()?;
    let (hashes, ctx) = ws.hashes(Some(&stores.memo));
    if super::workspace::report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let mut ids: Vec<(String, NodeId)> = Vec::new();
    for (pipeline, name) in &wanted {
        let nodes = ws.graph.pipeline_nodes(pipeline);
        match name {
            Some(name) => {
                let found = nodes
                    .iter()
                    .copied()
                    .find(|id| &ws.graph.nodes[*id].display_name(pipeline) == name);
                let Some(id) = found else {
                    let names: Vec<String> = nodes
                        .iter()
                        .map(|id| ws.graph.nodes[*id].display_name(pipeline))
                        .collect();
                    bail!(
                        "no node `{name}` in pipeline {pipeline}; its nodes are: {}",
                        names.join(", ")
                    );
                };
                ids.push((format!("{pipeline}/{name}"), id));
            }
            None => {
                for id in nodes {
                    let n = &ws.graph.nodes[id];
                    if &n.dir == pipeline && (n.key.is_some() || !n.asserts.is_empty()) {
                        ids.push((format!("{pipeline}/{}", n.name), id));
                    }
                }
            }
        }
    }
    if !args.select.is_empty() {
        let selectors = args.select.parse()?;
        let pool = if pipelines.is_empty() {
            ws.graph.pipelines.clone()
        } else {
            pipelines.clone()
        };
        let plans = if selectors.needs_state {
            super::select::plans(&mut ws, Some(&stores), &pool)?
        } else {
            Vec::new()
        };
        let chosen = selectors.resolve(&ws, &pool, &plans)?;
        let selected: std::collections::HashSet<NodeId> = chosen
            .iter()
            .flat_map(|c| c.nodes.iter().copied())
            .collect();
        if args.targets.is_empty() {
            for c in &chosen {
                for &id in &c.nodes {
                    let n = &ws.graph.nodes[id];
                    if n.key.is_some() || !n.asserts.is_empty() {
                        ids.push((
                            format!("{}/{}", c.pipeline, n.display_name(&c.pipeline)),
                            id,
                        ));
                    }
                }
            }
        } else {
            ids.retain(|(_, id)| selected.contains(id));
        }
        if ids.is_empty() {
            eprintln!("sluice: no selected node has a test");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|(_, id)| seen.insert(*id));

    let opts = RunOptions {
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        data_root: ws.data_root(),
        path_env: ws.path_env().to_os_string(),
        source_digests: ctx.sources.clone(),
        cancel: CancelToken::new(),
    };
    let progress = Progress::new();
    let only: Vec<NodeId> = ids.iter().map(|(_, id)| *id).collect();
    let results = exec::execute_with(
        &ws.graph,
        &only,
        &hashes,
        &stores,
        &opts,
        &exec::ExecSettings::for_repo(ws.config.as_ref()),
        &progress,
    );
    progress.done();

    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for (label, id) in &ids {
        let node = &ws.graph.nodes[*id];
        let tests = usize::from(node.key.is_some()) + node.asserts.len();
        let Some(result) = results.get(id) else {
            continue;
        };
        let table = match result.status {
            Status::Computed | Status::Cached => result.output,
            Status::Failed => failed_table(&stores, result.task_key),
            Status::Skipped => None,
        };
        let Some(table) = table else {
            failed += 1;
            writeln!(
                out,
                "{label}: not tested: {}",
                result
                    .error
                    .as_deref()
                    .unwrap_or("the node produced no table")
            )?;
            continue;
        };
        let path = match stores.blobs.local_path(&table) {
            Some(p) => p,
            None => stores.blobs.open_verified(&table)?,
        };
        let key = node.key.as_ref().map(|(k, _)| k.as_slice());
        let asserts: Vec<_> = node.asserts.iter().map(|(a, _)| a.clone()).collect();
        let counts = exec::checks::check_table(
            &path,
            &node.name,
            key,
            &asserts,
            &exec::sqlite::SqlLimits::default(),
            None,
        );
        let Err(fails) = counts else {
            writeln!(
                out,
                "{label}: ok ({tests} test{})",
                if tests == 1 { "" } else { "s" }
            )?;
            continue;
        };
        failed += 1;
        let rows = exec::checks::failing_rows(&path, &node.name, key, &asserts, args.limit)?;
        writeln!(
            out,
            "{label}: {} of {tests} test{} failed",
            fails.len(),
            if tests == 1 { "" } else { "s" }
        )?;
        for f in &fails {
            writeln!(out, "  {}", f.message)?;
            let label = f.message.split(": ").next().unwrap_or("");
            let Some(r) = rows.iter().find(|r| r.test == label) else {
                continue;
            };
            writeln!(
                out,
                "    {}",
                csv_line(r.columns.iter().map(String::as_str))
            )?;
            for row in &r.rows {
                let cells = row.iter().map(|c| c.as_deref().unwrap_or(""));
                writeln!(out, "    {}", csv_line(cells))?;
            }
            if r.total > r.rows.len() as u64 {
                writeln!(
                    out,
                    "    … {} more (--limit to see more)",
                    r.total - r.rows.len() as u64
                )?;
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One CSV line: a cell holding a comma, a quote or a line break is
/// quoted, quotes doubled.
fn csv_line<'a>(cells: impl Iterator<Item = &'a str>) -> String {
    cells
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
