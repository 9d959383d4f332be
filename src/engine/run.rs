//! A run: hash, plan against production, execute what the cache lacks,
//! record a manifest per pipeline, promote, and describe it all as a
//! [`RunReport`] with each changed node's diff and the reasons it ran.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use anyhow::Context;

use super::manifests::{Production, last_run_manifest, production, production_ref};
use super::outcome::{NodeReport, Outcome, PipelineReport, RunReport};
use super::workspace::Workspace;
use super::{diff, why};
use crate::exec::{self, CancelToken, NodeResult, Observer, RunOptions};
use crate::pipeline::diag::Diagnostic;
use crate::pipeline::{NodeId, RepoPath};
use crate::plan::digest::Digest;
use crate::plan::hash::{self, HashContext, NodeHashes};
use crate::plan::manifest::{FailureKind, MANIFEST_FORMAT, Manifest, ManifestNode, Status};
use crate::plan::{self, Change};
use crate::store::Stores;

/// What to run and how.
pub struct RunRequest<'a> {
    /// The pipelines to run; empty means all of them.
    pub pipelines: Vec<RepoPath>,
    /// Only these nodes (`--select`), with what they need; `None` runs
    /// every node of the pipelines.
    pub nodes: Option<HashSet<NodeId>>,
    /// Worker threads.
    pub jobs: usize,
    /// Move `production/<pipeline>` to each manifest without failures.
    pub promote: bool,
    /// The branch or ref being run, recorded in the manifests; promotion
    /// requires it to be the production branch.
    pub git_ref: Option<String>,
    pub cancel: CancelToken,
    /// Told about each node as it finishes.
    pub observer: &'a dyn Observer,
}

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The repository does not check: nothing ran.
    #[error("the repository has {} problem(s)", .0.len())]
    Invalid(Vec<Diagnostic>),
    #[error(
        "--promote moves production, which follows the production branch `{production}`; this is `{this}`"
    )]
    NotProductionBranch { production: String, this: String },
    /// The stores, the disk: not the repository's doing.
    #[error(transparent)]
    Infra(#[from] anyhow::Error),
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn finished(&self, _: &crate::pipeline::Node, _: &NodeResult, _: usize, _: usize) {}
}

/// Runs the requested pipelines of `ws` and reports on them.
pub fn run(ws: &mut Workspace, stores: &Stores, req: &RunRequest) -> Result<RunReport, RunError> {
    let started_at = crate::store::state::now_rfc3339();
    let clock = Instant::now();
    if !ws.diagnostics.is_empty() {
        return Err(RunError::Invalid(ws.diagnostics.clone()));
    }
    let (hashes, ctx) = ws.hashes(Some(&stores.memo));
    if !ws.diagnostics.is_empty() {
        return Err(RunError::Invalid(ws.diagnostics.clone()));
    }
    if req.promote
        && let (Some(cfg), Some(branch)) = (&ws.config, &req.git_ref)
        && branch != &cfg.production_branch
    {
        return Err(RunError::NotProductionBranch {
            production: cfg.production_branch.clone(),
            this: branch.clone(),
        });
    }
    if req.promote && req.nodes.is_some() {
        return Err(RunError::Infra(anyhow::anyhow!(
            "--promote moves production to a whole pipeline's run; a selection of nodes cannot be promoted"
        )));
    }
    let selected = if req.pipelines.is_empty() {
        ws.graph.pipelines.clone()
    } else {
        req.pipelines.clone()
    };

    // A production manifest that cannot be read counts as none: the run
    // goes on, and a promotion starts a new chain from it.
    let productions = selected
        .iter()
        .map(|p| production(stores, p))
        .collect::<anyhow::Result<Vec<Production>>>()?;
    // Pipelines that did not change since production (most of them, on a
    // push) are answered from their production manifest: a cache lookup
    // per node would find the same tables.
    let reads = stores.state.begin_cache_reads();
    let mut settled: HashMap<NodeId, NodeResult> = HashMap::new();
    let mut settled_pipelines: HashSet<&RepoPath> = HashSet::new();
    if req.nodes.is_none() {
        for (p, prod) in selected.iter().zip(&productions) {
            if let Some((_, m)) = &prod.manifest
                && let Some(found) = settled_results(ws, stores, &hashes, p, m)
            {
                settled.extend(found);
                settled_pipelines.insert(p);
            }
        }
    }
    let mut wanted = Vec::new();
    let mut seen = HashSet::new();
    for p in &selected {
        if settled_pipelines.contains(p) {
            continue;
        }
        for id in ws.graph.pipeline_nodes(p) {
            if req.nodes.as_ref().is_some_and(|only| !only.contains(&id)) {
                continue;
            }
            // A node two pipelines share (a `/dir/NAME` dependency) runs once.
            if seen.insert(id) {
                wanted.push(id);
            }
        }
    }
    let opts = RunOptions {
        jobs: req.jobs.max(1),
        data_root: ws.data_root(),
        path_env: ws.path_env().to_os_string(),
        source_digests: ctx.sources.clone(),
        cancel: req.cancel.clone(),
    };
    let total = settled.len() + wanted.len();
    for (done, (id, result)) in settled.iter().enumerate() {
        req.observer
            .finished(&ws.graph.nodes[*id], result, done + 1, total);
    }
    let shifted = Shifted {
        inner: req.observer,
        by: settled.len(),
    };
    let mut results = if wanted.is_empty() {
        HashMap::new()
    } else {
        exec::execute_with(
            &ws.graph,
            &wanted,
            &hashes,
            stores,
            &opts,
            &exec::ExecSettings::for_repo(ws.config.as_ref()),
            &shifted,
        )
    };
    drop(reads);
    for (id, result) in settled {
        // A node another pipeline ran (one both read) keeps that result.
        results.entry(id).or_insert(result);
    }
    let cancelled = req.cancel.is_cancelled();

    let mut report = RunReport {
        run_id: None,
        commit: ws.commit.clone(),
        git_ref: req.git_ref.clone(),
        started_at,
        duration_ms: 0,
        outcome: Outcome::Success,
        pipelines: Vec::new(),
        problems: Vec::new(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Built once, and only when a report names a column.
    let vocab = OnceCell::new();
    for (p, production) in selected.iter().zip(productions) {
        let Production {
            head,
            manifest: prod,
            ..
        } = production;
        // A run of some nodes keeps the other nodes' entries of the last
        // run whose definition is unchanged, so that `diff` and `cat` still
        // see them.
        let last = match &req.nodes {
            Some(_) => last_run_manifest(stores, p)?.map(|(_, m)| m),
            None => None,
        };
        let mut manifest = match &prod {
            Some((_, m)) if settled_pipelines.contains(p) => Cow::Borrowed(&**m),
            _ => Cow::Owned(build_manifest(
                ws,
                req.git_ref.clone(),
                p,
                &hashes,
                &ctx,
                &results,
                prod.as_ref().map(|(d, _)| *d),
            )),
        };
        if let Some(last) = &last {
            carry_over(ws, p, &hashes, &results, last, manifest.to_mut());
        }
        let failed = manifest
            .nodes
            .iter()
            .any(|n| matches!(n.status, Some(Status::Failed | Status::Skipped)));
        let mut pipeline = PipelineReport {
            pipeline: p.to_string(),
            outcome: Outcome::Success,
            manifest: None,
            production: prod.as_ref().map(|(d, _)| *d),
            production_commit: prod.as_ref().and_then(|(_, m)| m.commit.clone()),
            promoted: false,
            error: None,
            duration_ms: 0,
            nodes: Vec::new(),
        };
        // A cancelled run's manifest would describe half a run: it is
        // neither recorded nor promoted.
        if !cancelled {
            // Nothing changed against production (the usual case for most
            // pipelines of a push): its manifest stands for this run too,
            // and is not written again.
            let digest = match (&manifest, prod.as_ref()) {
                (Cow::Borrowed(_), Some((d, _))) => *d,
                (_, Some((d, m))) if same_tables(&manifest, m) => *d,
                _ => store_manifest(stores, p, manifest.to_mut())?,
            };
            stores.state.record_run(
                p.as_str(),
                &digest,
                ws.commit.as_deref(),
                req.git_ref.as_deref(),
                failed,
            )?;
            pipeline.manifest = Some(digest);
            if req.promote && !failed {
                // Production already names this manifest (nothing changed
                // in the pipeline): nothing moves, so nothing is verified.
                let damaged = if head == Some(digest) {
                    Vec::new()
                } else {
                    damaged_outputs(stores, &manifest, req.jobs.max(1))
                };
                if !damaged.is_empty() {
                    pipeline.error = Some(format!(
                        "production/{p} not promoted: {}; their cache entries were dropped, so \
                         the next run recomputes them",
                        damaged.join("; ")
                    ));
                } else if head == Some(digest) {
                    pipeline.promoted = true;
                } else {
                    pipeline.promoted = stores.state.ref_compare_and_set(
                        &production_ref(p),
                        head.as_ref(),
                        &digest,
                    )?;
                    if !pipeline.promoted {
                        pipeline.error =
                            Some(format!("production/{p} moved during the run; not promoted"));
                    }
                }
            }
        }
        let prod_m = prod.as_ref().map(|(_, m)| &**m);
        pipeline.nodes = node_reports(ws, stores, p, &hashes, &results, &manifest, prod_m, &vocab)?;
        pipeline.duration_ms = pipeline.nodes.iter().map(|n| n.duration_ms).sum();
        pipeline.outcome = pipeline_outcome(&pipeline, cancelled);
        report.outcome = report.outcome.worst(pipeline.outcome);
        report.pipelines.push(pipeline);
    }
    report.duration_ms = clock.elapsed().as_millis() as u64;
    Ok(report)
}

/// The results of a pipeline none of whose nodes changed since its
/// production manifest `m`: every node there with the same local and
/// definition hashes (so the same code over the same sources, all the
/// way up), and the cache still holding its output under its task key,
/// as a lookup would find it (an entry `fsck --repair` or a failed
/// promotion dropped makes the node run). `None` when anything differs;
/// then the pipeline runs as usual.
fn settled_results(
    ws: &Workspace,
    stores: &Stores,
    hashes: &[Option<NodeHashes>],
    pipeline: &RepoPath,
    m: &Manifest,
) -> Option<Vec<(NodeId, NodeResult)>> {
    let ids = ws.graph.pipeline_nodes(pipeline);
    if ids.len() != m.nodes.len() {
        return None;
    }
    let by_name = m.by_name();
    let mut entries = Vec::with_capacity(ids.len());
    for id in ids {
        let h = hashes.get(id).copied().flatten()?;
        let entry = *by_name.get(ws.graph.nodes[id].display_name(pipeline).as_str())?;
        let same = entry.local_hash == h.local
            && entry.definition_hash == h.definition
            && entry.status.is_some_and(Status::ok)
            && entry.error.is_none()
            && entry.task_key.is_some()
            && entry.output.is_some();
        if !same {
            return None;
        }
        entries.push((id, entry));
    }
    // One round trip for the pipeline where the state is across a network.
    let keys: Vec<Digest> = entries.iter().filter_map(|(_, e)| e.task_key).collect();
    let cached = stores.state.cache_get_many(&keys).ok()?;
    let mut out = Vec::with_capacity(entries.len());
    for ((id, entry), hit) in entries.into_iter().zip(cached) {
        let output = entry.output?;
        if hit.is_none_or(|c| c.output != output) || !stores.blobs.contains(&output) {
            return None;
        }
        out.push((
            id,
            NodeResult {
                status: Status::Cached,
                task_key: entry.task_key,
                output: Some(output),
                rows: entry.rows,
                columns: entry.columns.clone(),
                log: entry.log,
                duration: std::time::Duration::ZERO,
                error: None,
                failure: None,
                inputs: entry.inputs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            },
        ));
    }
    Some(out)
}

/// Passes progress on with the settled nodes counted in.
struct Shifted<'a> {
    inner: &'a dyn Observer,
    by: usize,
}

impl Observer for Shifted<'_> {
    fn finished(
        &self,
        node: &crate::pipeline::Node,
        result: &NodeResult,
        done: usize,
        total: usize,
    ) {
        self.inner
            .finished(node, result, done + self.by, total + self.by);
    }
}

/// Hashes the bytes of every output a manifest names, so that production
/// never moves to a damaged table (a cached output is otherwise trusted
/// by its address alone). Each damaged one is described by node and blob,
/// and its cache entries are dropped so the next run recomputes it.
fn damaged_outputs(stores: &Stores, manifest: &Manifest, jobs: usize) -> Vec<String> {
    let mut outputs: Vec<Digest> = manifest.nodes.iter().filter_map(|n| n.output).collect();
    outputs.sort_unstable();
    outputs.dedup();
    // Reading the blobs is most of a promotion's cost: spread it over the
    // run's workers.
    let per = outputs.len().div_ceil(jobs.max(1)).max(1);
    let bad: HashSet<Digest> = std::thread::scope(|s| {
        let handles: Vec<_> = outputs
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter(|d| stores.blobs.open_verified(d).is_err())
                        .copied()
                        .collect::<Vec<Digest>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A verifier that panicked proved nothing: count its blobs bad.
            .flat_map(|h| h.join().unwrap_or_else(|_| outputs.clone()))
            .collect()
    });
    for d in &bad {
        let _ = stores.state.cache_forget_output(d);
    }
    manifest
        .nodes
        .iter()
        .filter_map(|n| n.output.filter(|o| bad.contains(o)).map(|o| (n, o)))
        .map(|(node, output)| {
            format!(
                "the output of {} (blob {output}) is damaged or missing",
                node.name
            )
        })
        .collect()
}

/// Whether two manifests describe the same tables from the same code:
/// every node with the same hashes, task key, output and shape, and none
/// failed. Statuses, timings, commit and time may differ.
fn same_tables(a: &Manifest, b: &Manifest) -> bool {
    let same = |x: &ManifestNode, y: &ManifestNode| {
        x.name == y.name
            && x.local_hash == y.local_hash
            && x.definition_hash == y.definition_hash
            && x.task_key == y.task_key
            && x.output.is_some()
            && x.output == y.output
            && x.rows == y.rows
            && x.columns == y.columns
            && x.key == y.key
            && x.parts == y.parts
            && x.inputs == y.inputs
            && x.error.is_none()
            && y.error.is_none()
    };
    a.pipeline == b.pipeline
        && a.nodes.len() == b.nodes.len()
        && a.nodes.iter().zip(&b.nodes).all(|(x, y)| same(x, y))
}

/// Stores a run's manifest. A run that changed nothing since the last run
/// of the pipeline (same commit, same nodes, statuses and outputs) reuses
/// that run's manifest, timestamp included, and writes no new blob.
fn store_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
    manifest: &mut Manifest,
) -> anyhow::Result<Digest> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        created_at: Option<String>,
    }
    let last = stores.state.last_run(pipeline.as_str())?;
    if let Some(last) = last.filter(|l| l.commit == manifest.commit)
        && let Ok(bytes) = stores.blobs.get(&last.manifest)
        && let Ok(stamp) = serde_json::from_slice::<Stamp>(&bytes)
    {
        let now = std::mem::replace(&mut manifest.created_at, stamp.created_at);
        if serde_json::to_vec(&manifest).is_ok_and(|b| b == bytes) {
            return Ok(last.manifest);
        }
        manifest.created_at = now;
    }
    let bytes = serde_json::to_vec(&manifest).context("cannot encode a manifest")?;
    stores
        .blobs
        .put(&bytes)
        .context("cannot store the manifest")
}

fn pipeline_outcome(p: &PipelineReport, cancelled: bool) -> Outcome {
    if p.error.is_some() {
        return Outcome::Error;
    }
    let mut out = Outcome::Success;
    for n in &p.nodes {
        match (n.status, n.failure) {
            (Some(Status::Failed), Some(FailureKind::Infra)) => return Outcome::Error,
            (Some(Status::Failed), _) => out = Outcome::Failure,
            (Some(Status::Skipped), _) if !cancelled && out == Outcome::Success => {
                out = Outcome::Failure
            }
            _ => {}
        }
    }
    if cancelled && out == Outcome::Success {
        // Only when something did not finish.
        if p.nodes.iter().any(|n| n.status == Some(Status::Skipped)) {
            return Outcome::Cancelled;
        }
    }
    out
}

/// The report of each node of a pipeline, in plan order (topological,
/// removed nodes last).
#[allow(clippy::too_many_arguments)]
fn node_reports<'a>(
    ws: &'a Workspace,
    stores: &Stores,
    pipeline: &RepoPath,
    hashes: &[Option<NodeHashes>],
    results: &HashMap<usize, NodeResult>,
    manifest: &Manifest,
    production: Option<&Manifest>,
    vocab: &OnceCell<diff::Vocabulary<'a>>,
) -> anyhow::Result<Vec<NodeReport>> {
    // Column names leave the machine in the report: those the data chose
    // are counted instead (see `diff::Vocabulary`).
    // Most names are in the node's own text; the whole repository's words
    // are gathered only for the others.
    let hide = |cols: &[String], own: Option<&str>| -> Vec<String> {
        if cols.is_empty() {
            return Vec::new();
        }
        if let Some(body) = own
            && cols.iter().all(|c| diff::mentions(body, c))
        {
            return cols.to_vec();
        }
        vocab
            .get_or_init(|| diff::Vocabulary::of_graph(&ws.graph))
            .hide(cols)
    };
    let plan = plan::plan_pipeline(&ws.graph, hashes, pipeline, production);
    let ids: HashMap<String, usize> = ws
        .graph
        .pipeline_nodes(pipeline)
        .into_iter()
        .map(|id| (ws.graph.nodes[id].display_name(pipeline), id))
        .collect();
    let current = manifest.by_name();
    let prod_nodes = production.map(Manifest::by_name).unwrap_or_default();
    let mut out = Vec::new();
    for np in &plan.nodes {
        let cur = current.get(np.name.as_str()).copied();
        let prod = prod_nodes.get(np.name.as_str()).copied();
        let id = ids.get(&np.name).copied();
        let node = id.map(|i| &ws.graph.nodes[i]);
        let result = id.and_then(|i| results.get(&i));
        let status = result.map(|r| r.status);
        let why = match (cur, np.change) {
            (_, Change::Unchanged | Change::Removed) => Vec::new(),
            (Some(c), _) => why::reasons(c, prod),
            (None, _) => Vec::new(),
        };
        let differs = match (cur, prod) {
            (Some(c), Some(p)) => c.output.is_some() && c.output != p.output,
            (Some(c), None) => c.output.is_some(),
            (None, Some(_)) => true,
            (None, None) => false,
        };
        let ok = status.is_none_or(Status::ok);
        let node_diff = if differs && ok {
            // A table that cannot be read (damaged, or lost) costs the
            // keyed counts, not the run.
            let mut d = diff::node_diff(stores, &np.name, prod, cur)
                .unwrap_or_else(|_| crate::plan::diff::compare_nodes(&np.name, prod, cur));
            d.columns_added = hide(&d.columns_added, None);
            d.columns_removed = hide(&d.columns_removed, None);
            Some(d)
        } else {
            None
        };
        out.push(NodeReport {
            name: np.name.clone(),
            change: np.change,
            status,
            failure: result.and_then(|r| r.failure),
            error: result.and_then(|r| r.error.clone()),
            rows: result.and_then(|r| r.rows),
            columns: result
                .map(|r| hide(&r.columns, node.map(|n| &*n.body)))
                .unwrap_or_default(),
            output: result.and_then(|r| r.output),
            duration_ms: result.map_or(0, |r| r.duration.as_millis() as u64),
            file: node.map(|n| n.file.to_string()),
            inputs: node
                .map(|n| {
                    n.deps
                        .iter()
                        .filter_map(|d| d.node)
                        .map(|d| ws.graph.nodes[d].display_name(pipeline))
                        .collect()
                })
                .unwrap_or_default(),
            why,
            diff: node_diff,
            log: result.and_then(|r| r.log),
        });
    }
    Ok(out)
}

/// Adds to `manifest` the last run's entries of the nodes this run did
/// not touch, when their local and definition hashes are the current ones
/// (so the same code read the same sources) and they succeeded.
fn carry_over(
    ws: &Workspace,
    pipeline: &RepoPath,
    hashes: &[Option<NodeHashes>],
    results: &HashMap<usize, NodeResult>,
    last: &Manifest,
    manifest: &mut Manifest,
) {
    let mut nodes = Vec::new();
    let current = manifest.by_name();
    let previous = last.by_name();
    for id in ws.graph.pipeline_nodes(pipeline) {
        let name = ws.graph.nodes[id].display_name(pipeline);
        if results.contains_key(&id) {
            if let Some(n) = current.get(name.as_str()) {
                nodes.push((*n).clone());
            }
            continue;
        }
        let (Some(h), Some(old)) = (hashes[id], previous.get(name.as_str())) else {
            continue;
        };
        if old.local_hash == h.local
            && old.definition_hash == h.definition
            && matches!(old.status, Some(Status::Computed | Status::Cached))
        {
            nodes.push((*old).clone());
        }
    }
    manifest.nodes = nodes;
}

fn build_manifest(
    ws: &Workspace,
    git_ref: Option<String>,
    pipeline: &RepoPath,
    hashes: &[Option<NodeHashes>],
    ctx: &HashContext,
    results: &HashMap<usize, NodeResult>,
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
            status: Some(r.status),
            failure: r.failure,
            // Time spent computing; a cache hit's lookup time is noise, and
            // would make two identical runs' manifests differ.
            duration_ms: (r.status != Status::Cached).then_some(r.duration.as_millis() as u64),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::{Settings, Workspace};
    use crate::pipeline::vfs::MemVfs;

    const CONFIG: &str = "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/*\"]\n";

    fn workspace(files: &[(&str, &str)]) -> Workspace {
        let mut vfs = MemVfs::new();
        vfs.insert("sluice.toml", CONFIG);
        for (p, t) in files {
            vfs.insert(p, *t);
        }
        Workspace::from_vfs(
            std::path::Path::new("/nonexistent"),
            Box::new(vfs),
            Some("c0ffee".into()),
            Settings::default(),
        )
        .unwrap()
    }

    fn request(promote: bool, git_ref: &str) -> RunRequest<'static> {
        RunRequest {
            pipelines: Vec::new(),
            nodes: None,
            jobs: 2,
            promote,
            git_ref: Some(git_ref.into()),
            cancel: CancelToken::new(),
            observer: &Quiet,
        }
    }

    /// Column names leave the machine in the report (the daemon's run
    /// JSON, `sluice ci`): names no file of the repository contains came
    /// from the data, and are counted instead.
    #[test]
    fn column_names_the_data_chose_are_counted_in_the_report() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("data")).unwrap();
        let stores = Stores::in_memory().unwrap();
        let pivot = "# @source data://dx.csv\nimport csv, os\n\
                     rows = list(csv.DictReader(open(os.environ['SLUICE_INPUT_dx'])))\n\
                     w = csv.writer(open(os.environ['SLUICE_OUTPUT'], 'w', newline=''))\n\
                     w.writerow(['id'] + [r['code'] for r in rows])\n\
                     w.writerow(['1'] + ['1' for r in rows])\n";
        let mut vfs = MemVfs::new();
        vfs.insert("sluice.toml", format!("{CONFIG}[data]\nroot = \"data\"\n"));
        vfs.insert("clinics/a/P.py", pivot);
        let mut runs = Vec::new();
        for data in ["id,code\n1,C50\n", "id,code\n1,C50\n2,ZCANARY77\n"] {
            std::fs::write(root.path().join("data/dx.csv"), data).unwrap();
            let mut ws = Workspace::from_vfs(
                root.path(),
                Box::new(vfs.clone()),
                Some("c0ffee".into()),
                Settings::default(),
            )
            .unwrap();
            runs.push(run(&mut ws, &stores, &request(runs.is_empty(), "main")).unwrap());
        }
        let p = &runs[1].pipelines[0].nodes[0];
        assert_eq!(p.status, Some(Status::Computed), "{p:?}");
        assert_eq!(
            p.columns,
            vec!["id".to_string(), "(2 columns named by the data)".into()]
        );
        let diff = p.diff.as_ref().unwrap();
        assert_eq!(
            diff.columns_added,
            vec!["(1 column named by the data)".to_string()]
        );
        let json = serde_json::to_string(&runs[1]).unwrap();
        assert!(
            !json.contains("ZCANARY77") && !json.contains("C50"),
            "{json}"
        );
    }

    /// A no-op run writes no new manifest: the last run's is reused, so
    /// its digest (and timestamp) stay the same.
    #[test]
    fn a_run_that_changes_nothing_reuses_the_last_manifest() {
        let stores = Stores::in_memory().unwrap();
        let files = [
            ("clinics/a/T.csv", "id\n1\n"),
            ("clinics/a/U.sql", "-- @depend ./T\nSELECT id FROM T;\n"),
        ];
        let digests: Vec<Digest> = (0..3)
            .map(|_| {
                let r = run(&mut workspace(&files), &stores, &request(false, "b")).unwrap();
                r.pipelines[0].manifest.unwrap()
            })
            .collect();
        assert_ne!(
            digests[0], digests[1],
            "the first run computed, the second hit the cache"
        );
        assert_eq!(digests[1], digests[2]);
        // Another commit is another manifest.
        let mut vfs = MemVfs::new();
        vfs.insert("sluice.toml", CONFIG);
        for (p, t) in files {
            vfs.insert(p, t);
        }
        let mut ws = Workspace::from_vfs(
            std::path::Path::new("/nonexistent"),
            Box::new(vfs),
            Some("beef".into()),
            Settings::default(),
        )
        .unwrap();
        let r = run(&mut ws, &stores, &request(false, "b")).unwrap();
        assert_ne!(r.pipelines[0].manifest.unwrap(), digests[2]);
    }

    /// The use-case the daemon and CI call, from a VFS and in-memory stores
    /// with no CLI around it: typed outcomes, promotion, diffs and reasons.
    #[test]
    fn runs_report_promote_and_diff_without_the_cli() {
        let stores = Stores::in_memory().unwrap();
        let mut ws = workspace(&[
            ("clinics/a/T.csv", "id,v\n1,a\n2,b\n3,c\n"),
            (
                "clinics/a/U.sql",
                "-- @depend ./T\n-- @key id\nSELECT id, v FROM T;\n",
            ),
            ("clinics/b/Bad.sql", "SELECT nope FROM nowhere;\n"),
        ]);
        let report = run(&mut ws, &stores, &request(true, "main")).unwrap();
        assert_eq!(report.outcome, Outcome::Failure);
        let a = &report.pipelines[0];
        assert_eq!(
            (a.pipeline.as_str(), a.outcome, a.promoted),
            ("clinics/a", Outcome::Success, true)
        );
        let b = &report.pipelines[1];
        assert_eq!((b.outcome, b.promoted), (Outcome::Failure, false));
        let bad = &b.nodes[0];
        assert_eq!(bad.status, Some(Status::Failed));
        assert_eq!(bad.failure, Some(FailureKind::User));
        assert!(
            bad.error.as_deref().unwrap().contains("no such table"),
            "{bad:?}"
        );

        // A branch that drops a row: U is affected, with a keyed diff.
        let mut ws = workspace(&[
            ("clinics/a/T.csv", "id,v\n1,a\n2,B\n"),
            (
                "clinics/a/U.sql",
                "-- @depend ./T\n-- @key id\nSELECT id, v FROM T;\n",
            ),
        ]);
        let report = run(&mut ws, &stores, &request(false, "feature")).unwrap();
        let a = &report.pipelines[0];
        let u = a.nodes.iter().find(|n| n.name == "U").unwrap();
        assert_eq!(u.change, Change::Affected);
        assert_eq!(u.status, Some(Status::Computed));
        assert_eq!(u.inputs, ["T"]);
        assert!(
            u.why.iter().any(|w| w.starts_with("input T changed")),
            "{:?}",
            u.why
        );
        let d = u.diff.as_ref().unwrap();
        assert_eq!((d.rows_before, d.rows_after), (Some(3), Some(2)));
        let k = d.keyed.unwrap();
        assert_eq!((k.added, k.removed, k.changed), (0, 1, 1));
        assert!(!a.promoted);
        // The removed pipeline's node is not reported as run.
        assert_eq!(report.pipelines.len(), 1);
    }

    #[test]
    fn promotion_hashes_every_output_and_refuses_a_damaged_one() {
        use crate::store::blob::MemBlobStore;
        let blobs = std::sync::Arc::new(MemBlobStore::new());
        let mut stores = Stores::in_memory().unwrap();
        stores.blobs = blobs.clone();
        let files = [
            ("clinics/a/T.csv", "id\n1\n2\n"),
            ("clinics/a/U.sql", "-- @depend ./T\nSELECT id FROM T;\n"),
        ];
        let report = run(&mut workspace(&files), &stores, &request(false, "main")).unwrap();
        let u = report.pipelines[0]
            .nodes
            .iter()
            .find(|n| n.name == "U")
            .and_then(|n| n.output)
            .unwrap();
        blobs.tamper(&u, b"id\n1\n3\n".to_vec());

        let report = run(&mut workspace(&files), &stores, &request(true, "main")).unwrap();
        let p = &report.pipelines[0];
        assert!(!p.promoted);
        assert_eq!(report.outcome, Outcome::Error);
        let err = p.error.as_deref().unwrap();
        assert!(
            err.contains("output of U") && err.contains(&u.to_string()),
            "{err}"
        );
        assert_eq!(stores.state.ref_get("production/clinics/a").unwrap(), None);

        // The cache forgot it: the next run recomputes U (repairing the
        // blob) and promotes.
        blobs.tamper(&u, Vec::new());
        let report = run(&mut workspace(&files), &stores, &request(true, "main")).unwrap();
        let p = &report.pipelines[0];
        assert!(p.promoted, "{:?}", p.error);
        let u_node = p.nodes.iter().find(|n| n.name == "U").unwrap();
        assert_eq!(u_node.status, Some(Status::Computed));
    }

    #[test]
    fn a_lost_production_manifest_counts_as_none_and_promotion_moves_past_it() {
        let stores = Stores::in_memory().unwrap();
        let lost = Digest::of(b"a manifest that is gone");
        stores.state.ref_set("production/clinics/a", &lost).unwrap();
        let files = [("clinics/a/T.csv", "id\n1\n")];
        let report = run(&mut workspace(&files), &stores, &request(true, "main")).unwrap();
        let p = &report.pipelines[0];
        assert_eq!(p.production, None);
        assert!(p.promoted, "{:?}", p.error);
        assert_eq!(p.nodes[0].change, Change::New);
        let head = stores.state.ref_get("production/clinics/a").unwrap();
        assert_eq!(head, p.manifest);
        let m = crate::engine::manifests::load_manifest(&stores, &head.unwrap()).unwrap();
        assert_eq!(m.previous, None, "the chain starts again");
    }

    #[test]
    fn promotion_only_from_the_production_branch() {
        let stores = Stores::in_memory().unwrap();
        let mut ws = workspace(&[("clinics/a/T.csv", "id\n1\n")]);
        let err = run(&mut ws, &stores, &request(true, "feature")).unwrap_err();
        assert!(matches!(err, RunError::NotProductionBranch { .. }), "{err}");
    }

    #[test]
    fn an_invalid_repository_runs_nothing() {
        let stores = Stores::in_memory().unwrap();
        let mut ws = workspace(&[("clinics/a/U.sql", "-- @depend ./Missing\nSELECT 1;\n")]);
        let err = run(&mut ws, &stores, &request(false, "main")).unwrap_err();
        let RunError::Invalid(d) = err else {
            panic!("{err}")
        };
        assert!(d[0].to_string().contains("Missing"), "{}", d[0]);
    }

    #[test]
    fn a_cancelled_run_records_and_promotes_nothing() {
        let stores = Stores::in_memory().unwrap();
        let mut ws = workspace(&[("clinics/a/T.csv", "id\n1\n")]);
        let req = request(true, "main");
        req.cancel.cancel();
        let report = run(&mut ws, &stores, &req).unwrap();
        assert_eq!(report.outcome, Outcome::Cancelled);
        assert!(!report.pipelines[0].promoted);
        assert_eq!(report.pipelines[0].manifest, None);
        assert_eq!(stores.state.last_run("clinics/a").unwrap(), None);
    }

    #[test]
    fn execute_adds_missing_dependencies() {
        let stores = Stores::in_memory().unwrap();
        let mut ws = workspace(&[
            ("clinics/a/T.csv", "id\n1\n"),
            ("clinics/a/U.sql", "-- @depend ./T\nSELECT id FROM T;\n"),
        ]);
        let (hashes, _) = ws.hashes(None);
        let u = ws.graph.nodes.iter().position(|n| n.name == "U").unwrap();
        let opts = RunOptions {
            jobs: 1,
            data_root: None,
            path_env: "/usr/bin:/bin".into(),
            source_digests: HashMap::new(),
            cancel: CancelToken::new(),
        };
        // Only U is asked for; T is added rather than U silently not running.
        let results = exec::execute(&ws.graph, &[u], &hashes, &stores, &opts, &Quiet);
        assert_eq!(results.len(), 2);
        assert_eq!(results[&u].status, Status::Computed);
        assert_eq!(results[&u].rows, Some(1));
    }

    /// With the state on PostgreSQL, a no-op run looks up each wave of
    /// ready nodes in one query, and every node is a hit.
    #[cfg(feature = "team")]
    #[test]
    fn a_no_op_run_on_postgresql_looks_up_waves_not_nodes() {
        let pg = std::sync::Arc::new(crate::store::pg::test_state());
        let mut stores = Stores::in_memory().unwrap();
        stores.state = pg.clone();
        let mut files = Vec::new();
        for i in 0..8 {
            files.push((format!("clinics/a/T{i}.csv"), format!("id\n{i}\n")));
            files.push((
                format!("clinics/a/U{i}.sql"),
                format!("-- @depend ./T{i}\nSELECT id FROM T{i};\n"),
            ));
        }
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        let first = run(&mut workspace(&files), &stores, &request(true, "main")).unwrap();
        assert!(
            first.pipelines[0]
                .nodes
                .iter()
                .any(|n| n.status == Some(Status::Computed))
        );
        let before = pg.cache_queries();
        let again = run(&mut workspace(&files), &stores, &request(false, "main")).unwrap();
        let nodes = &again.pipelines[0].nodes;
        assert_eq!(nodes.len(), 16);
        assert!(
            nodes.iter().all(|n| n.status == Some(Status::Cached)),
            "{nodes:?}"
        );
        let queries = pg.cache_queries() - before;
        assert!(queries < 16, "{queries} queries for 16 nodes");
    }
}
