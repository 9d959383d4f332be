//! `sluice run`: plan, execute what is not cached, record manifests,
//! optionally promote them to production. The work is
//! [`engine::run`](crate::engine::run); this file parses and prints.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use super::progress::Progress;
use super::select::SelectArgs;
use super::workspace::{load, report_diagnostics};
use crate::engine::run::{RunError, RunRequest};
use crate::engine::{Outcome, PipelineReport};
use crate::exec::{CancelToken, Status};
use crate::plan::digest::Digest;
use crate::report::{Inputs, input_from, node_label};
use crate::store::Stores;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipelines to run (directories, e.g. clinics/clinic_a). Default: all.
    #[arg(value_name = "PIPELINE")]
    pub pipelines: Vec<String>,
    /// With --select/--exclude, the selected nodes run, and their
    /// ancestors too where the cache lacks them; the report lists the
    /// selected nodes and the ancestors that had to be computed.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Worker threads. Default: the number of cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Print JSON: {"runs":[{"pipeline":..,"manifest":..,"nodes":[{"name":..,"status":..,"rows":..,"output":..}]}]}.
    #[arg(long)]
    pub json: bool,
    /// Move production/<pipeline> to this run's manifest when it has no
    /// failures. Only from a commit of the production branch: a clean
    /// working tree (the state directory and data root aside) whose HEAD
    /// is the tip of refs/heads/<production_branch> or reachable from it
    /// (a detached HEAD, as CI checks out, is fine), or with --at a
    /// revision reachable from that branch. Refused with --select.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<Digest>,
    promoted: bool,
    nodes: Vec<NodeOut>,
}

#[derive(Serialize)]
struct NodeOut {
    name: String,
    /// For a node of another directory (`/clinics/north/Patient`): that
    /// directory. The node is an input of this pipeline, not one of its
    /// own, and ran once however many pipelines need it.
    #[serde(skip_serializing_if = "Option::is_none")]
    input_from: Option<String>,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Digest>,
    duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `git` in the directory of the repository, ignoring variables that
/// would point it elsewhere (as `gix::discover` does).
struct Git<'a> {
    dir: &'a std::path::Path,
}

impl Git<'_> {
    /// Stdout of a successful `git ARGS`, else `None`.
    fn output(&self, args: &[&str]) -> Option<Vec<u8>> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(self.dir)
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    fn text(&self, args: &[&str]) -> Option<String> {
        self.output(args)
            .map(|o| String::from_utf8_lossy(&o).trim().to_string())
    }
}

/// The commit a clean working tree is at, or why promoting from it is
/// refused: not in git, no commit yet, or files that differ from HEAD
/// (the state directory and the data root, which never belong in git,
/// aside).
fn clean_commit(git: &Git, ignored: &[std::path::PathBuf]) -> anyhow::Result<String> {
    let Some(top) = git.text(&["rev-parse", "--show-toplevel"]) else {
        anyhow::bail!(
            "--promote: {} is not in a git repository; production records the commit it was computed from: commit the pipelines on the production branch (git init && git add -A && git commit) and promote from there",
            git.dir.display()
        );
    };
    let Some(head) = git.text(&["rev-parse", "--verify", "-q", "HEAD^{commit}"]) else {
        anyhow::bail!(
            "--promote: the repository has no commit yet; commit the pipelines (git add -A && git commit) and promote from the production branch"
        );
    };
    let top = std::path::Path::new(&top)
        .canonicalize()
        .unwrap_or_else(|_| top.clone().into());
    let skip: Vec<std::path::PathBuf> = ignored
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .filter_map(|p| p.strip_prefix(&top).ok().map(|r| r.to_path_buf()))
        .collect();
    let status = git
        .output(&[
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--",
            ".",
        ])
        .unwrap_or_default();
    let dirty: Vec<String> = status
        .split(|b| *b == 0)
        .filter(|e| e.len() > 3)
        .map(|e| String::from_utf8_lossy(&e[3..]).into_owned())
        .filter(|path| {
            !skip
                .iter()
                .any(|s| std::path::Path::new(path).starts_with(s))
        })
        .collect();
    if !dirty.is_empty() {
        let mut shown: Vec<&str> = dirty.iter().take(3).map(String::as_str).collect();
        if dirty.len() > 3 {
            shown.push("…");
        }
        anyhow::bail!(
            "--promote: the working tree is not clean ({} file{} differ{} from HEAD: {}); production must be what a commit holds: commit or stash the changes first",
            dirty.len(),
            if dirty.len() == 1 { "" } else { "s" },
            if dirty.len() == 1 { "s" } else { "" },
            shown.join(", ")
        );
    }
    Ok(head)
}

/// Refuses a commit that is neither the production branch's tip nor
/// reachable from it.
fn on_production_branch(
    git: &Git,
    commit: &str,
    branch: &str,
    at: Option<&str>,
) -> anyhow::Result<()> {
    let full = format!("refs/heads/{branch}");
    if git
        .text(&["rev-parse", "--verify", "-q", &format!("{full}^{{commit}}")])
        .is_none()
    {
        anyhow::bail!(
            "--promote: there is no branch `{branch}` (production_branch in sluice.toml) in this repository; production only moves to commits of that branch"
        );
    }
    if git
        .output(&["merge-base", "--is-ancestor", commit, &full])
        .is_none()
    {
        let short: String = commit.chars().take(12).collect();
        let what = match at {
            Some(rev) => format!("--at {rev} ({short})"),
            None => match git.text(&["symbolic-ref", "-q", "--short", "HEAD"]) {
                Some(b) => format!("HEAD ({short}, branch `{b}`)"),
                None => format!("HEAD ({short}, detached)"),
            },
        };
        anyhow::bail!(
            "--promote: {what} is not on the production branch `{branch}`: it is neither its tip nor reachable from it; merge it into {branch} first"
        );
    }
    Ok(())
}

/// `-j N`: at least one worker (0 would run nothing, or hang).
pub fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("0 workers would run nothing; use -j 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{text}` is not a number of workers; use e.g. -j 4"
        )),
    }
}

/// Exit code when SIGINT or SIGTERM stopped the run.
const EXIT_CANCELLED: u8 = 130;

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let selectors = args.select.parse()?;
    if args.promote && !args.select.is_empty() {
        anyhow::bail!(
            "--promote moves production to a whole pipeline's run; drop --select/--exclude to promote"
        );
    }
    let mut ws = load(global)?;
    // Without a valid sluice.toml there are no pipelines to pick from.
    if ws.config.is_none() && report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let selected = ws.select_pipelines(&args.pipelines)?;
    // `run clinics/north` needs only north to be valid; `check` still
    // reports everything.
    if !args.pipelines.is_empty() {
        ws.narrow(&selected);
    }
    if report_diagnostics(&ws) {
        return Ok(ExitCode::FAILURE);
    }
    let stores = ws.open_stores()?;
    let mut selected = selected;
    let chosen = if args.select.is_empty() {
        None
    } else {
        let plans = if selectors.needs_state {
            super::select::plans(&mut ws, Some(&stores), &selected)?
        } else {
            Vec::new()
        };
        let chosen = selectors.resolve(&ws, &selected, &plans)?;
        selected.retain(|p| {
            chosen
                .iter()
                .any(|c| &c.pipeline == p && !c.nodes.is_empty())
        });
        if selected.is_empty() {
            eprintln!("sluice: no node selected; nothing to run");
            return Ok(ExitCode::SUCCESS);
        }
        Some(chosen)
    };
    warn_unreadable_production(&stores, &selected)?;
    // Production follows the production branch: promoting from another
    // branch (an experiment) is refused.
    let mut git_ref = match &global.at {
        Some(rev) => Some(rev.clone()),
        None => crate::git::current_branch(&ws.root),
    };
    // Production only moves to a commit of the production branch (its tip
    // or one reachable from it), read from git objects or from a clean
    // working tree at that commit; which condition failed is said.
    if args.promote
        && let Some(cfg) = &ws.config
    {
        let git = Git { dir: &ws.root };
        let ignored: Vec<std::path::PathBuf> = [Some(ws.state_dir()), ws.data_root()]
            .into_iter()
            .flatten()
            .collect();
        let commit = match &ws.commit {
            Some(c) => c.clone(),
            None => clean_commit(&git, &ignored)?,
        };
        on_production_branch(&git, &commit, &cfg.production_branch, global.at.as_deref())?;
        // A detached HEAD (as CI checks out) or another branch at a
        // commit of the production branch promotes as that branch.
        git_ref = Some(cfg.production_branch.clone());
        ws.commit = Some(commit);
    }
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    // Ctrl-C or a kill stops the run: no node starts after it, running
    // commands lose their process groups and temp dirs, nothing is promoted.
    let cancel = CancelToken::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, cancel.flag())
            .map_err(|e| anyhow::anyhow!("cannot handle signal {signal}: {e}"))?;
    }
    let progress = Progress::new();
    let req = RunRequest {
        pipelines: selected,
        nodes: chosen
            .as_ref()
            .map(|c| c.iter().flat_map(|p| p.nodes.iter().copied()).collect()),
        jobs,
        promote: args.promote,
        git_ref,
        cancel: cancel.clone(),
        observer: &progress,
    };
    let mut report = match crate::engine::run::run(&mut ws, &stores, &req) {
        Ok(r) => r,
        Err(RunError::Invalid(_)) => {
            report_diagnostics(&ws);
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    progress.done();
    if cancel.is_cancelled() {
        eprintln!("sluice: interrupted; nothing was recorded or promoted");
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }

    if let Some(chosen) = &chosen {
        // The selection, and the ancestors it needed that were not cached.
        let names: HashSet<(String, String)> = chosen
            .iter()
            .flat_map(|c| {
                c.nodes.iter().map(|id| {
                    (
                        c.pipeline.to_string(),
                        ws.graph.nodes[*id].display_name(&c.pipeline),
                    )
                })
            })
            .collect();
        for p in &mut report.pipelines {
            let pipeline = p.pipeline.clone();
            p.nodes.retain(|n| {
                names.contains(&(pipeline.clone(), n.name.clone()))
                    || matches!(
                        n.status,
                        Some(Status::Computed | Status::Failed | Status::Skipped)
                    )
            });
        }
    }
    let out = RunOutput {
        runs: report.pipelines.iter().map(pipeline_run).collect(),
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        // A node of another directory that several pipelines need ran once:
        // it is described once, as the reports describe it.
        let inputs = Inputs::of(&report.pipelines);
        for p in &report.pipelines {
            write_summary(&mut stdout, p, &stores, &inputs)?;
        }
    }
    for p in &report.pipelines {
        if let Some(e) = &p.error {
            eprintln!("sluice: {e}");
        }
    }
    Ok(if report.outcome == Outcome::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Says which production manifests cannot be read: the commands go on as
/// if those pipelines had none.
pub fn warn_unreadable_production(
    stores: &Stores,
    pipelines: &[crate::pipeline::RepoPath],
) -> anyhow::Result<()> {
    for p in pipelines {
        if let Some(w) = crate::engine::manifests::production(stores, p)?.warning {
            eprintln!("sluice: warning: {w}");
        }
    }
    Ok(())
}

fn pipeline_run(p: &PipelineReport) -> PipelineRun {
    PipelineRun {
        pipeline: p.pipeline.clone(),
        manifest: p.manifest,
        promoted: p.promoted,
        nodes: p
            .nodes
            .iter()
            .filter_map(|n| {
                let status = n.status?;
                Some(NodeOut {
                    name: n.name.clone(),
                    input_from: input_from(&n.name).map(|(dir, _)| dir.to_string()),
                    status,
                    rows: n.rows,
                    output: n.output,
                    duration_ms: n.duration_ms,
                    error: n.error.clone().filter(|_| status == Status::Failed),
                })
            })
            .collect(),
    }
}

fn write_summary(
    out: &mut impl Write,
    p: &PipelineReport,
    stores: &Stores,
    inputs_described: &Inputs,
) -> std::io::Result<()> {
    let manifest = p.manifest.map(|d| d.short()).unwrap_or_else(|| "-".into());
    writeln!(out, "{}  (manifest {manifest})", p.pipeline)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shown = 0;
    let mut inputs: Vec<String> = Vec::new();
    for n in &p.nodes {
        let Some(status) = n.status else { continue };
        if input_from(&n.name).is_some() {
            let label = node_label(&n.name);
            if let Some(first) = inputs_described.elsewhere(p, n) {
                inputs.push(format!("{label} (see {first})"));
                continue;
            }
            inputs.push(format!("{label} ({})", status.as_str()));
            // Its failure is shown in full, once.
            if status != Status::Failed {
                continue;
            }
        } else {
            shown += 1;
            *counts.entry(status.as_str()).or_default() += 1;
        }
        let (rows, unit) = match n.rows {
            Some(1) => ("1".to_string(), "row "),
            Some(r) => (r.to_string(), "rows"),
            None => ("-".to_string(), "rows"),
        };
        writeln!(
            out,
            "  {:<9} {:>9} {unit}  {}",
            status.as_str(),
            rows,
            n.name
        )?;
        if let (Status::Failed, Some(e)) = (status, &n.error) {
            for line in e.lines() {
                writeln!(out, "            {line}")?;
            }
            // The command's own output: for this terminal only, it never
            // goes into the manifest or to a forge.
            let log_tail = n.log.and_then(|d| stores.blobs.get(&d).ok());
            for line in log_tail.iter().flat_map(|b| tail(b, 10)) {
                writeln!(out, "            | {line}")?;
            }
        }
    }
    if !inputs.is_empty() {
        writeln!(
            out,
            "  inputs from other directories: {}",
            inputs.join(", ")
        )?;
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    writeln!(
        out,
        "  {shown} node{}: {}{}\n",
        if shown == 1 { "" } else { "s" },
        summary.join(", "),
        if p.promoted {
            "; promoted to production"
        } else {
            ""
        }
    )
}

/// The last `n` lines of a log.
fn tail(log: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
