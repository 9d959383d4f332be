//! Garbage collection of the blob store (`sluice gc`).
//!
//! What stays: every blob reachable from a ref (each `production/*`
//! manifest and everything it names), from the last `keep_runs` runs of
//! each branch of each pipeline, and from the daemon's last `keep_runs`
//! job reports of each lane; the manifests of the production chain
//! (`previous`, the audit trail: the manifests only, not their tables);
//! the log of every cache entry that keeps its output; and every blob
//! younger than the grace period, which protects what a run in flight has
//! written but not yet recorded. Everything else goes.
//!
//! Deciding is pure ([`roots`], then [`decide`]) and tested without I/O;
//! [`gather`] reads the stores into it and [`apply`] carries it out in a
//! crash-safe order: the state rows naming a doomed blob go first (cache
//! entries, run records, job reports), the blobs after, so a `kill -9` at
//! any point leaves at worst orphan blobs, which the next gc collects.
//!
//! One blob store may serve several state databases (the daemon: one per
//! repository, and `daemon.db` with the jobs): a blob reachable from any of
//! them is kept, so all are read before anything is deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::blob::{BlobError, BlobInfo, BlobStore};
use super::queue::Job;
use super::state::{CacheBlobs, RunRecord, State};
use crate::plan::digest::Digest;
use crate::plan::manifest::Manifest;

/// The default grace period: a day, longer than any run.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The default number of runs kept per branch and pipeline.
pub const DEFAULT_KEEP_RUNS: usize = 10;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Runs kept per (pipeline, branch), and job reports per lane.
    pub keep_runs: usize,
    /// Blobs stored less than this long ago are kept, reachable or not.
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_runs: DEFAULT_KEEP_RUNS,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Parses a duration as `--grace` takes it: a whole number and a unit,
/// `s`, `m`, `h`, `d` or `w` (`0s`, `90m`, `24h`, `7d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!(
            "`{text}` is not a duration: write a whole number and a unit (s, m, h, d or w), \
             e.g. 0s, 90m, 24h or 7d"
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "w" => 7 * 24 * 60 * 60,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// A duration as `--grace` would take it back (`90m`, `24h`, `7d`, `0s`):
/// days from two on, as people say them.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, scale) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(scale) && (unit != "d" || s > 86_400) {
            return format!("{}{unit}", s / scale);
        }
    }
    format!("{s}s")
}

/// A byte count for people: `0 B`, `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What gc reads from one state database.
#[derive(Debug, Clone, Default)]
pub struct StateView {
    /// Where it is, for messages.
    pub name: String,
    pub refs: Vec<(String, Option<Digest>)>,
    /// Oldest first.
    pub runs: Vec<RunRecord>,
    pub cache: Vec<CacheBlobs>,
    /// The jobs with a stored report, oldest first (the daemon's).
    pub jobs: Vec<Job>,
}

impl StateView {
    /// Reads what gc needs from a state database.
    pub fn read(name: String, db: &dyn State) -> anyhow::Result<StateView> {
        let context = || format!("cannot read the state database {name}");
        Ok(StateView {
            refs: db.ref_list().with_context(context)?,
            runs: db.runs().with_context(context)?,
            cache: db.cache_blobs().with_context(context)?,
            jobs: db.jobs_with_reports().with_context(context)?,
            name,
        })
    }
}

/// Where gc starts: what the state databases name directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Manifests named by a ref: `(ref, manifest)`.
    pub refs: BTreeSet<(String, Digest)>,
    /// Manifests of the kept runs.
    pub runs: BTreeSet<Digest>,
    /// Reports of the kept jobs.
    pub reports: BTreeSet<Digest>,
    /// Problems that stop gc: a ref that does not hold a digest.
    pub problems: Vec<String>,
}

impl Roots {
    /// Every manifest to read in full.
    pub fn manifests(&self) -> BTreeSet<Digest> {
        let mut all: BTreeSet<Digest> = self.refs.iter().map(|(_, d)| *d).collect();
        all.extend(self.runs.iter().copied());
        all
    }
}

/// The roots of the state databases under `policy`: every ref, the last
/// `keep_runs` runs of each (pipeline, branch) of each database (runs with
/// no branch count as one branch), and the last `keep_runs` job reports
/// of each (repository, lane).
pub fn roots(states: &[StateView], policy: &Policy) -> Roots {
    let mut out = Roots::default();
    for state in states {
        for (name, digest) in &state.refs {
            match digest {
                Some(d) => {
                    out.refs.insert((name.clone(), *d));
                }
                None => out.problems.push(format!(
                    "{}: ref {name} does not hold a digest; run `sluice fsck --repair` first",
                    state.name
                )),
            }
        }
        let mut seen: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for run in state.runs.iter().rev() {
            let n = seen
                .entry((run.pipeline.as_str(), run.git_ref.as_deref()))
                .or_default();
            if *n < policy.keep_runs {
                *n += 1;
                out.runs.insert(run.manifest);
            }
        }
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for job in state.jobs.iter().rev() {
            let Some(report) = job.report else { continue };
            let n = seen
                .entry((job.repo.as_str(), job.lane.as_str()))
                .or_default();
            if *n < policy.keep_runs {
                *n += 1;
                out.reports.insert(report);
            }
        }
    }
    out
}

/// What gc learned by reading the roots' blobs.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Each root manifest that could be read -> the blobs it names.
    pub manifests: HashMap<Digest, Vec<Digest>>,
    /// Manifests of the production chain (`previous`, transitively): kept
    /// themselves, not what they name.
    pub chain: HashSet<Digest>,
    /// Each kept report that could be read -> the logs it names.
    pub reports: HashMap<Digest, Vec<Digest>>,
}

/// The blobs a manifest names: each node's output, log and inputs (the
/// output digests its task key was made of). `previous` is the chain,
/// handled apart.
pub fn manifest_blobs(m: &Manifest) -> Vec<Digest> {
    let mut out = Vec::new();
    for n in &m.nodes {
        out.extend(n.output);
        out.extend(n.log);
        out.extend(n.inputs.values().copied());
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Counts and sizes of a set of blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub blobs: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, b: &BlobInfo) {
        self.blobs += 1;
        self.bytes += b.size;
    }
}

/// What gc keeps, by reason (each blob counted once, under the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Named by a ref, a kept run, a kept report or the production chain.
    pub reachable: Tally,
    /// Stored within the grace period.
    pub young: Tally,
    /// The log of a cache entry whose output stays.
    pub cache_logs: Tally,
}

/// The decision: what to delete and which state rows go with it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub examined: Tally,
    pub kept: Kept,
    /// The blobs to delete.
    pub delete: Vec<BlobInfo>,
    /// Per state database (in the order given): the task keys of the
    /// cache entries naming a deleted blob as output or log.
    pub cache_drops: Vec<Vec<String>>,
    /// Per state database: the ids of the runs whose manifest is deleted.
    pub run_drops: Vec<Vec<i64>>,
    /// Per state database: the ids of the jobs whose report is deleted.
    pub report_drops: Vec<Vec<i64>>,
    /// Per state database: the refs as they were when gc decided.
    pub refs: Vec<Vec<(String, Option<Digest>)>>,
}

impl Plan {
    pub fn deleted(&self) -> Tally {
        let mut t = Tally::default();
        for b in &self.delete {
            t.add(b);
        }
        t
    }
}

/// Decides what goes. `blobs` is the store's listing, `now` the time gc
/// started: a blob stored at or after `now - grace` is young (and one
/// stored in the future, by a skewed clock, too).
pub fn decide(
    blobs: &[BlobInfo],
    states: &[StateView],
    roots: &Roots,
    loaded: &Loaded,
    now: SystemTime,
    grace: Duration,
) -> Plan {
    let mut reachable: HashSet<Digest> = roots.manifests().into_iter().collect();
    reachable.extend(roots.reports.iter().copied());
    reachable.extend(loaded.chain.iter().copied());
    for named in loaded.manifests.values().chain(loaded.reports.values()) {
        reachable.extend(named.iter().copied());
    }
    let cutoff = now.checked_sub(grace);
    let young = |b: &BlobInfo| match cutoff {
        Some(c) => b.stored_at > c,
        None => true,
    };
    let mut plan = Plan::default();
    let mut candidates: HashMap<Digest, &BlobInfo> = HashMap::new();
    for b in blobs {
        plan.examined.add(b);
        if reachable.contains(&b.digest) {
            plan.kept.reachable.add(b);
        } else if young(b) {
            plan.kept.young.add(b);
        } else {
            candidates.insert(b.digest, b);
        }
    }
    // A cache entry whose output stays keeps its log, so that the entry
    // stays whole and its node is not computed again for a log.
    for state in states {
        for entry in &state.cache {
            let output_stays = entry.output.is_none_or(|o| !candidates.contains_key(&o));
            if output_stays
                && let Some(Some(log)) = entry.log
                && let Some(b) = candidates.remove(&log)
            {
                plan.kept.cache_logs.add(b);
            }
        }
    }
    let doomed = |d: &Digest| candidates.contains_key(d);
    for state in states {
        plan.refs.push(state.refs.clone());
        plan.cache_drops.push(
            state
                .cache
                .iter()
                .filter(|e| {
                    e.output.is_some_and(|o| doomed(&o))
                        || matches!(e.log, Some(Some(l)) if doomed(&l))
                })
                .map(|e| e.task_key.clone())
                .collect(),
        );
        plan.run_drops.push(
            state
                .runs
                .iter()
                .filter(|r| doomed(&r.manifest))
                .map(|r| r.id)
                .collect(),
        );
        plan.report_drops.push(
            state
                .jobs
                .iter()
                .filter(|j| j.report.is_some_and(|d| doomed(&d)))
                .map(|j| j.id)
                .collect(),
        );
    }
    let mut delete: Vec<BlobInfo> = candidates.into_values().cloned().collect();
    delete.sort_by_key(|b| b.digest);
    plan.delete = delete;
    plan
}

// ---------------------------------------------------------------------------
// Reading the stores

/// Where gc is in its work, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The blob store was listed.
    Listed { blobs: u64 },
    /// Manifests and reports read so far.
    Reading { done: usize, total: usize },
    /// Blobs deleted so far.
    Deleting { done: usize, total: usize },
}

/// The manifests a chain may hold at most, against a loop of `previous`
/// links (which content addressing makes impossible, short of a forged
/// manifest).
const MAX_CHAIN: usize = 1_000_000;

/// Reads the blob store and the state databases and decides. Nothing is
/// changed. `warnings` collects what gc could not read but went on
/// without (a kept run's missing manifest, an unreadable report); what
/// would make it delete something reachable stops it with an error
/// instead (a ref naming a missing or damaged manifest).
pub fn gather(
    blobs: &dyn BlobStore,
    states: &[(String, &dyn State)],
    policy: &Policy,
    now: SystemTime,
    progress: &mut dyn FnMut(Step),
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Vec<StateView>, Plan)> {
    // The listing comes first: a blob stored after it is not listed, so
    // not deleted, and a run recorded before the state is read below has
    // its blobs in the listing and its manifest among the roots.
    let listing = blobs.list().context("cannot list the blob store")?;
    progress(Step::Listed {
        blobs: listing.len() as u64,
    });
    let views = states
        .iter()
        .map(|(name, db)| StateView::read(name.clone(), *db))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let roots = roots(&views, policy);
    if !roots.problems.is_empty() {
        bail!("nothing was deleted: {}", roots.problems.join("; "));
    }
    let listed: HashSet<Digest> = listing.iter().map(|b| b.digest).collect();
    let mut loaded = Loaded::default();
    let manifests = roots.manifests();
    let total = manifests.len() + roots.reports.len();
    let mut done = 0;
    let mut next = Vec::new();
    for digest in &manifests {
        done += 1;
        progress(Step::Reading { done, total });
        let named_by_ref = roots.refs.iter().find(|(_, d)| d == digest);
        match read_manifest(blobs, digest) {
            Ok(m) => {
                next.extend(m.previous);
                loaded.manifests.insert(*digest, manifest_blobs(&m));
            }
            Err(e) => match named_by_ref {
                Some((name, _)) => bail!(
                    "nothing was deleted: {name} names manifest {digest}, which cannot be read \
                     ({e:#}), so what production holds is unknown. Run `sluice fsck --repair`, \
                     then gc again"
                ),
                None if listed.contains(digest) => bail!(
                    "nothing was deleted: manifest {digest} of a kept run cannot be read \
                     ({e:#}). Run `sluice fsck`, then gc again"
                ),
                None => warnings.push(format!(
                    "manifest {digest} of a kept run is missing; its run record stays, naming nothing"
                )),
            },
        }
    }
    // The production chain: the manifests only (the audit trail), read
    // just far enough to find each one's `previous`.
    while let Some(digest) = next.pop() {
        if loaded.chain.len() >= MAX_CHAIN || loaded.manifests.contains_key(&digest) {
            continue;
        }
        if !listed.contains(&digest) || !loaded.chain.insert(digest) {
            continue;
        }
        match previous_of(blobs, &digest) {
            Ok(prev) => next.extend(prev),
            Err(e) => warnings.push(format!(
                "manifest {digest} of the production chain cannot be read ({e:#}); the chain is \
                 kept up to it"
            )),
        }
    }
    for digest in &roots.reports {
        done += 1;
        progress(Step::Reading { done, total });
        match read_report_logs(blobs, digest) {
            Ok(logs) => {
                loaded.reports.insert(*digest, logs);
            }
            Err(e) if matches!(e.downcast_ref::<BlobError>(), Some(BlobError::Missing(_))) => {}
            Err(e) => warnings.push(format!(
                "report {digest} cannot be read ({e:#}); the logs it names are kept only if \
                 something else names them"
            )),
        }
    }
    let plan = decide(&listing, &views, &roots, &loaded, now, policy.grace);
    Ok((views, plan))
}

fn read_manifest(blobs: &dyn BlobStore, digest: &Digest) -> anyhow::Result<Manifest> {
    let bytes = blobs.get(digest)?;
    serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} is not valid"))
}

/// The `previous` of a manifest, read from the head of its bytes: the
/// writer puts it before the nodes, so a long manifest is not read whole.
/// Falls back to parsing the whole manifest.
fn previous_of(blobs: &dyn BlobStore, digest: &Digest) -> anyhow::Result<Option<Digest>> {
    let mut head = Vec::with_capacity(8192);
    // Unverified is fine here: at worst a damaged manifest's `previous`
    // keeps one more blob.
    let reader: Box<dyn Read> = match blobs.local_path(digest) {
        Some(path) => Box::new(
            std::fs::File::open(&path).with_context(|| format!("cannot read manifest {digest}"))?,
        ),
        None => blobs.reader(digest)?,
    };
    reader
        .take(8192)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read manifest {digest}"))?;
    let nodes_at = find(&head, b"\"nodes\":");
    if let Some(nodes_at) = nodes_at {
        // Inside a JSON string a quote is escaped, so this sequence can
        // only be the key itself.
        let key = b"\"previous\":\"";
        return Ok(match find(&head[..nodes_at], key) {
            Some(at) => {
                let start = at + key.len();
                let end = head[start..nodes_at]
                    .iter()
                    .position(|&c| c == b'"')
                    .map(|e| start + e);
                let text = end.and_then(|e| std::str::from_utf8(&head[start..e]).ok());
                match text.and_then(|t| t.parse().ok()) {
                    Some(d) => Some(d),
                    None => read_manifest(blobs, digest)?.previous,
                }
            }
            None => None,
        });
    }
    Ok(read_manifest(blobs, digest)?.previous)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The logs a stored run report names (what its run page may show).
fn read_report_logs(blobs: &dyn BlobStore, digest: &Digest) -> anyhow::Result<Vec<Digest>> {
    #[derive(Deserialize)]
    struct Report {
        #[serde(default)]
        pipelines: Vec<Pipeline>,
    }
    #[derive(Deserialize)]
    struct Pipeline {
        #[serde(default)]
        nodes: Vec<Node>,
    }
    #[derive(Deserialize)]
    struct Node {
        #[serde(default)]
        log: Option<Digest>,
    }
    let bytes = blobs.get(digest)?;
    let report: Report =
        serde_json::from_slice(&bytes).with_context(|| format!("report {digest} is not valid"))?;
    Ok(report
        .pipelines
        .iter()
        .flat_map(|p| p.nodes.iter().filter_map(|n| n.log))
        .collect())
}

// ---------------------------------------------------------------------------
// Applying the decision

/// What [`apply`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub cache_entries: usize,
    pub runs: usize,
    pub reports: usize,
    /// The blobs deleted.
    pub deleted: Tally,
    /// Doomed blobs a run stored again while gc worked (a table recomputed
    /// byte for byte): kept.
    pub stored_again: usize,
}

/// Carries out a plan: first the state rows that name a doomed blob
/// (cache entries, run records, job reports), then the blobs, then once
/// more the cache entries a concurrent run may have written meanwhile
/// naming a deleted blob. `states` are in the order the plan was made.
///
/// A ref that a concurrent promotion moved meanwhile onto a table gc
/// deleted (one recomputed byte for byte to a doomed blob, whose put found
/// it still stored) is reported in `warnings`, with the remedy.
pub fn apply(
    plan: &Plan,
    blobs: &dyn BlobStore,
    states: &[(String, &dyn State)],
    progress: &mut dyn FnMut(Step),
    warnings: &mut Vec<String>,
) -> anyhow::Result<Applied> {
    let mut applied = Applied::default();
    for (i, (name, db)) in states.iter().enumerate() {
        let context = || format!("cannot update the state database {name}; nothing was deleted");
        for key in plan.cache_drops.get(i).into_iter().flatten() {
            applied.cache_entries += db.cache_forget_task(key).with_context(context)?;
        }
        if let Some(ids) = plan.run_drops.get(i) {
            applied.runs += db.runs_forget(ids).with_context(context)?;
        }
        if let Some(ids) = plan.report_drops.get(i) {
            applied.reports += db.jobs_forget_reports(ids).with_context(context)?;
        }
    }
    let total = plan.delete.len();
    let mut deleted = HashSet::new();
    for (n, b) in plan.delete.iter().enumerate() {
        progress(Step::Deleting { done: n + 1, total });
        // A table written again since the listing (a node recomputed byte
        // for byte) has a newer file: a run is using it, so it stays. A
        // store that cannot tell (S3) is covered by the checks below.
        if blobs.stored_at(&b.digest).is_some_and(|t| t > b.stored_at) {
            applied.stored_again += 1;
            continue;
        }
        blobs
            .delete(&b.digest)
            .with_context(|| format!("cannot delete blob {}", b.digest))?;
        applied.deleted.add(b);
        deleted.insert(b.digest);
    }
    // A run that recomputed a table byte for byte equal to a doomed blob
    // found it stored and wrote a cache entry naming it: drop that too.
    for (name, db) in states {
        let entries = db
            .cache_blobs()
            .with_context(|| format!("cannot read the state database {name}"))?;
        for e in entries {
            let names_deleted = e.output.is_some_and(|o| deleted.contains(&o))
                || matches!(e.log, Some(Some(l)) if deleted.contains(&l));
            if names_deleted {
                applied.cache_entries += db
                    .cache_forget_task(&e.task_key)
                    .with_context(|| format!("cannot update the state database {name}"))?;
            }
        }
    }
    for (i, (name, db)) in states.iter().enumerate() {
        let seen = plan.refs.get(i).map(Vec::as_slice).unwrap_or_default();
        let refs = db
            .ref_list()
            .with_context(|| format!("cannot read the state database {name}"))?;
        for (r, digest) in refs {
            let Some(digest) = digest.filter(|d| !seen.contains(&(r.clone(), Some(*d)))) else {
                continue;
            };
            let lost = if deleted.contains(&digest) {
                1
            } else {
                match read_manifest(blobs, &digest) {
                    Ok(m) => manifest_blobs(&m)
                        .iter()
                        .filter(|d| deleted.contains(d))
                        .count(),
                    Err(_) => 0,
                }
            };
            if lost > 0 {
                warnings.push(format!(
                    "{name}: {r} moved during gc to manifest {digest}, which names {lost} \
                     blob(s) gc deleted; run production again (`sluice run --promote` on the \
                     production branch, or the daemon's next run) and they are computed again, \
                     byte for byte"
                ));
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::manifest::ManifestNode;
    use crate::store::state::SqliteState;

    const HOUR: Duration = Duration::from_secs(3600);

    /// gather's plan, which must come without a warning.
    fn plan_of(
        blobs: &dyn BlobStore,
        states: &[(String, &dyn State)],
        policy: &Policy,
        now: SystemTime,
    ) -> Plan {
        let mut warnings = Vec::new();
        let (_, plan) = gather(blobs, states, policy, now, &mut |_| {}, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        plan
    }

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    /// A node of a manifest with one table (and maybe a log).
    fn table_node(
        name: &str,
        task_key: Option<Digest>,
        output: Digest,
        log: Option<Digest>,
    ) -> ManifestNode {
        ManifestNode {
            name: name.into(),
            local_hash: d("l"),
            definition_hash: d("h"),
            task_key,
            output: Some(output),
            rows: Some(1),
            columns: vec!["id".into()],
            status: None,
            failure: None,
            duration_ms: None,
            log,
            error: None,
            key: vec![],
            parts: Default::default(),
            inputs: Default::default(),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A blob of `size` bytes stored `age` before [`now`].
    fn blob(name: &str, age: Duration, size: u64) -> BlobInfo {
        BlobInfo {
            digest: d(name),
            size,
            stored_at: now() - age,
        }
    }

    fn run(id: i64, pipeline: &str, git_ref: Option<&str>, manifest: &str) -> RunRecord {
        RunRecord {
            id,
            pipeline: pipeline.into(),
            manifest: d(manifest),
            commit: None,
            git_ref: git_ref.map(String::from),
            created_at: "2027-01-15T08:00:00Z".into(),
            failed: false,
        }
    }

    fn entry(key: &str, output: &str, log: Option<&str>) -> CacheBlobs {
        CacheBlobs {
            task_key: d(key).to_string(),
            output: Some(d(output)),
            log: log.map(|l| Some(d(l))),
        }
    }

    fn deleted(plan: &Plan) -> BTreeSet<Digest> {
        plan.delete.iter().map(|b| b.digest).collect()
    }

    fn set(names: &[&str]) -> BTreeSet<Digest> {
        names.iter().map(|n| d(n)).collect()
    }

    #[test]
    fn durations_parse_in_the_documented_units_and_refuse_the_rest() {
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h"), Ok(DEFAULT_GRACE));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "24", "h", "1.5h", "-1h", "3 days", "10y", "1h30m"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("e.g. 0s, 90m, 24h or 7d"), "{bad}: {e}");
        }
        assert!(parse_duration("99999999999999999999w").is_err());
        for s in ["0s", "45s", "90m", "24h", "7d", "14d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn reachable_blobs_stay_and_old_unreachable_ones_go() {
        let blobs = [
            blob("prod-manifest", 100 * HOUR, 10),
            blob("prod-out", 100 * HOUR, 20),
            blob("prod-log", 100 * HOUR, 5),
            blob("prod-input", 100 * HOUR, 7),
            blob("old-out", 100 * HOUR, 1000),
            blob("old-manifest", 100 * HOUR, 30),
        ];
        let state = StateView {
            refs: vec![("production/p".into(), Some(d("prod-manifest")))],
            runs: vec![run(1, "p", Some("main"), "prod-manifest")],
            ..StateView::default()
        };
        let states = [state];
        let roots = roots(&states, &Policy::default());
        assert_eq!(roots.manifests(), set(&["prod-manifest"]));
        let loaded = Loaded {
            manifests: HashMap::from([(
                d("prod-manifest"),
                vec![d("prod-out"), d("prod-log"), d("prod-input")],
            )]),
            ..Loaded::default()
        };
        let plan = decide(&blobs, &states, &roots, &loaded, now(), HOUR);
        assert_eq!(deleted(&plan), set(&["old-out", "old-manifest"]));
        assert_eq!(
            plan.deleted(),
            Tally {
                blobs: 2,
                bytes: 1030
            }
        );
        assert_eq!(
            plan.kept.reachable,
            Tally {
                blobs: 4,
                bytes: 42
            }
        );
        assert_eq!(plan.examined.blobs, 6);
    }

    #[test]
    fn young_unreachable_blobs_stay_until_the_grace_ends() {
        let future = BlobInfo {
            stored_at: now() + HOUR,
            ..blob("from-the-future", Duration::ZERO, 1)
        };
        let blobs = [
            blob("fresh", Duration::from_secs(10 * 60), 1),
            blob("stale", 2 * HOUR, 1),
            future,
        ];
        let states = [StateView::default()];
        let roots = roots(&states, &Policy::default());
        let plan = decide(&blobs, &states, &roots, &Loaded::default(), now(), HOUR);
        assert_eq!(deleted(&plan), set(&["stale"]));
        assert_eq!(plan.kept.young.blobs, 2);
        // With no grace, only the one a skewed clock put in the future stays.
        let plan = decide(
            &blobs,
            &states,
            &roots,
            &Loaded::default(),
            now(),
            Duration::ZERO,
        );
        assert_eq!(deleted(&plan), set(&["fresh", "stale"]));
        // A grace longer than the epoch keeps everything.
        let plan = decide(
            &blobs,
            &states,
            &roots,
            &Loaded::default(),
            now(),
            Duration::MAX,
        );
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn keep_runs_counts_per_pipeline_and_branch() {
        let state = StateView {
            runs: vec![
                run(1, "p", Some("feature"), "f1"),
                run(2, "p", Some("feature"), "f2"),
                run(3, "q", Some("feature"), "qf1"),
                run(4, "p", Some("main"), "m1"),
                run(5, "p", Some("feature"), "f3"),
                run(6, "p", None, "n1"),
                run(7, "p", None, "n2"),
                run(8, "p", Some("other"), "o1"),
            ],
            ..StateView::default()
        };
        let states = [state];
        let keep = |n| {
            roots(
                &states,
                &Policy {
                    keep_runs: n,
                    grace: HOUR,
                },
            )
            .runs
        };
        assert_eq!(keep(1), set(&["f3", "qf1", "m1", "n2", "o1"]));
        assert_eq!(keep(2), set(&["f2", "f3", "qf1", "m1", "n1", "n2", "o1"]));
        assert!(keep(0).is_empty());

        // The dropped runs' manifests go with their run records.
        let blobs: Vec<BlobInfo> = ["f1", "f2", "f3", "qf1", "m1", "n1", "n2", "o1"]
            .iter()
            .map(|n| blob(n, 100 * HOUR, 1))
            .collect();
        let policy = Policy {
            keep_runs: 1,
            grace: HOUR,
        };
        let r = roots(&states, &policy);
        let plan = decide(&blobs, &states, &r, &Loaded::default(), now(), HOUR);
        assert_eq!(deleted(&plan), set(&["f1", "f2", "n1"]));
        assert_eq!(plan.run_drops, vec![vec![1, 2, 6]]);
    }

    #[test]
    fn a_run_sharing_a_kept_manifest_keeps_its_record() {
        // Runs that changed nothing against production record its manifest.
        let state = StateView {
            refs: vec![("production/p".into(), Some(d("m")))],
            runs: vec![run(1, "p", Some("b"), "m"), run(2, "p", Some("b"), "x")],
            ..StateView::default()
        };
        let states = [state];
        let policy = Policy {
            keep_runs: 1,
            grace: HOUR,
        };
        let blobs = [blob("m", 100 * HOUR, 1), blob("x", 100 * HOUR, 1)];
        let plan = decide(
            &blobs,
            &states,
            &roots(&states, &policy),
            &Loaded::default(),
            now(),
            HOUR,
        );
        assert!(plan.delete.is_empty());
        assert_eq!(plan.run_drops, vec![Vec::<i64>::new()]);
    }

    #[test]
    fn cache_entries_go_with_their_output_and_keep_their_log_otherwise() {
        let blobs = [
            blob("kept-out", 100 * HOUR, 1),
            blob("kept-log", 100 * HOUR, 1),
            blob("gone-out", 100 * HOUR, 1),
            blob("gone-log", 100 * HOUR, 1),
            blob("young-out", Duration::ZERO, 1),
            blob("young-outs-log", 100 * HOUR, 1),
            blob("m", 100 * HOUR, 1),
        ];
        let state = StateView {
            refs: vec![("production/p".into(), Some(d("m")))],
            cache: vec![
                entry("k1", "kept-out", Some("kept-log")),
                entry("k2", "gone-out", Some("gone-log")),
                entry("k3", "young-out", Some("young-outs-log")),
                // Its output was lost before: fsck's business, not gc's,
                // so the entry is left alone.
                entry("k4", "never-stored", None),
            ],
            ..StateView::default()
        };
        let states = [state];
        let r = roots(&states, &Policy::default());
        let loaded = Loaded {
            manifests: HashMap::from([(d("m"), vec![d("kept-out")])]),
            ..Loaded::default()
        };
        let plan = decide(&blobs, &states, &r, &loaded, now(), HOUR);
        assert_eq!(deleted(&plan), set(&["gone-out", "gone-log"]));
        assert_eq!(plan.cache_drops, vec![vec![d("k2").to_string()]]);
        assert_eq!(plan.kept.cache_logs.blobs, 2, "kept-log and young-outs-log");
    }

    #[test]
    fn a_blob_reachable_from_any_state_stays() {
        // The daemon: one blob store, a state database per repository.
        let blobs = [
            blob("a-prod", 100 * HOUR, 1),
            blob("b-prod", 100 * HOUR, 1),
            blob("b-out", 100 * HOUR, 1),
        ];
        let a = StateView {
            name: "a".into(),
            refs: vec![("production/p".into(), Some(d("a-prod")))],
            ..StateView::default()
        };
        let b = StateView {
            name: "b".into(),
            refs: vec![("production/p".into(), Some(d("b-prod")))],
            cache: vec![entry("kb", "b-out", None)],
            ..StateView::default()
        };
        let states = [a, b];
        let r = roots(&states, &Policy::default());
        let loaded = Loaded {
            manifests: HashMap::from([(d("a-prod"), vec![]), (d("b-prod"), vec![d("b-out")])]),
            ..Loaded::default()
        };
        let plan = decide(&blobs, &states, &r, &loaded, now(), HOUR);
        assert!(plan.delete.is_empty());
        assert_eq!(plan.cache_drops, vec![Vec::<String>::new(), Vec::new()]);
    }

    #[test]
    fn the_production_chain_keeps_its_manifests_not_their_tables() {
        let blobs = [
            blob("head", 100 * HOUR, 1),
            blob("prev", 100 * HOUR, 1),
            blob("prev-out", 100 * HOUR, 1),
        ];
        let states = [StateView {
            refs: vec![("production/p".into(), Some(d("head")))],
            ..StateView::default()
        }];
        let r = roots(&states, &Policy::default());
        let loaded = Loaded {
            manifests: HashMap::from([(d("head"), vec![])]),
            chain: HashSet::from([d("prev")]),
            ..Loaded::default()
        };
        let plan = decide(&blobs, &states, &r, &loaded, now(), HOUR);
        assert_eq!(deleted(&plan), set(&["prev-out"]));
    }

    fn job(id: i64, lane: &str, report: &str) -> Job {
        Job {
            id,
            run_id: format!("r{id}"),
            repo: "github:acme/p".into(),
            kind: crate::store::queue::JobKind::Push,
            lane: lane.into(),
            git_ref: lane.into(),
            branch: None,
            sha: "abc".into(),
            pr_number: None,
            state: crate::store::queue::JobState::Done,
            superseded_by: None,
            outcome: Some("success".into()),
            report: Some(d(report)),
            created_at: "2027-01-15T08:00:00Z".into(),
        }
    }

    #[test]
    fn job_reports_are_kept_per_lane_with_the_logs_they_show() {
        let blobs = [
            blob("r1", 100 * HOUR, 1),
            blob("r2", 100 * HOUR, 1),
            blob("r3", 100 * HOUR, 1),
            blob("r3-log", 100 * HOUR, 1),
        ];
        let states = [StateView {
            jobs: vec![
                job(1, "refs/heads/main", "r1"),
                job(2, "refs/heads/main", "r2"),
                job(3, "pr/4", "r3"),
            ],
            ..StateView::default()
        }];
        let policy = Policy {
            keep_runs: 1,
            grace: HOUR,
        };
        let r = roots(&states, &policy);
        assert_eq!(r.reports, set(&["r2", "r3"]));
        let loaded = Loaded {
            reports: HashMap::from([(d("r3"), vec![d("r3-log")])]),
            ..Loaded::default()
        };
        let plan = decide(&blobs, &states, &r, &loaded, now(), HOUR);
        assert_eq!(deleted(&plan), set(&["r1"]));
        assert_eq!(plan.report_drops, vec![vec![1]]);
    }

    #[test]
    fn a_ref_that_is_not_a_digest_stops_gc() {
        let states = [StateView {
            name: "s".into(),
            refs: vec![("production/p".into(), None)],
            ..StateView::default()
        }];
        let r = roots(&states, &Policy::default());
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("production/p"), "{:?}", r.problems);
    }

    #[test]
    fn a_manifest_names_outputs_logs_and_inputs() {
        let node = |name: &str, out: &str, log: Option<&str>, inputs: &[&str]| ManifestNode {
            inputs: inputs.iter().map(|i| (i.to_string(), d(i))).collect(),
            ..table_node(name, Some(d("t")), d(out), log.map(d))
        };
        let m = Manifest {
            format: 1,
            pipeline: "p".into(),
            commit: None,
            git_ref: None,
            created_at: None,
            previous: Some(d("prev")),
            nodes: vec![
                node("A", "a", Some("a-log"), &[]),
                node("B", "b", None, &["a", "/shared/x"]),
            ],
        };
        let named: BTreeSet<Digest> = manifest_blobs(&m).into_iter().collect();
        assert_eq!(named, set(&["a", "a-log", "b", "/shared/x"]));
    }

    #[test]
    fn gather_and_apply_on_real_stores_in_a_safe_order() {
        use crate::store::Stores;
        use crate::store::state::CacheEntry;
        let stores = Stores::in_memory().unwrap();
        let out = stores.blobs.put(b"id\n1\n").unwrap();
        let stale = stores.blobs.put(b"id\n2\n").unwrap();
        let prev = Manifest {
            format: 1,
            pipeline: "p".into(),
            commit: None,
            git_ref: None,
            created_at: None,
            previous: None,
            nodes: vec![],
        };
        let prev_d = stores
            .blobs
            .put(&serde_json::to_vec(&prev).unwrap())
            .unwrap();
        let mut head = prev.clone();
        head.previous = Some(prev_d);
        head.nodes.push(table_node("A", None, out, None));
        let head_d = stores
            .blobs
            .put(&serde_json::to_vec(&head).unwrap())
            .unwrap();
        stores.state.ref_set("production/p", &head_d).unwrap();
        let cache = |o| CacheEntry {
            output: o,
            rows: 1,
            columns: vec!["id".into()],
            log: None,
            duration_ms: 1,
        };
        stores.state.cache_put(&d("k-out"), &cache(out)).unwrap();
        stores
            .state
            .cache_put(&d("k-stale"), &cache(stale))
            .unwrap();
        let states = [("mem".to_string(), &*stores.state as &dyn State)];
        let policy = Policy {
            keep_runs: 1,
            grace: Duration::ZERO,
        };
        // The in-memory store stamps blobs with the real clock.
        let later = SystemTime::now() + HOUR;
        let plan = plan_of(&*stores.blobs, &states, &policy, later);
        assert_eq!(deleted(&plan), BTreeSet::from([stale]));
        assert_eq!(
            plan.kept.reachable.blobs, 3,
            "head, its output, and the chain's manifest"
        );
        let applied = apply(&plan, &*stores.blobs, &states, &mut |_| {}, &mut Vec::new()).unwrap();
        assert_eq!(
            applied,
            Applied {
                cache_entries: 1,
                runs: 0,
                reports: 0,
                deleted: Tally { blobs: 1, bytes: 5 },
                stored_again: 0,
            }
        );
        assert!(!stores.blobs.contains(&stale));
        assert!(stores.blobs.contains(&prev_d));
        assert_eq!(stores.state.cache_get(&d("k-stale")).unwrap(), None);
        assert!(stores.state.cache_get(&d("k-out")).unwrap().is_some());

        // A production ref naming a missing manifest stops gc before it
        // deletes anything.
        stores.state.ref_set("production/q", &d("gone")).unwrap();
        let stale2 = stores.blobs.put(b"id\n3\n").unwrap();
        let err = gather(
            &*stores.blobs,
            &states,
            &policy,
            later,
            &mut |_| {},
            &mut Vec::new(),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("nothing was deleted"), "{msg}");
        assert!(msg.contains("production/q"), "{msg}");
        assert!(msg.contains("sluice fsck --repair"), "{msg}");
        assert!(stores.blobs.contains(&stale2));
    }

    /// A store whose deletes start failing after `budget` of them, as if
    /// gc were killed there.
    struct Failing {
        inner: crate::store::blob::MemBlobStore,
        budget: std::sync::atomic::AtomicUsize,
    }

    impl BlobStore for Failing {
        fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
            self.inner.put(bytes)
        }
        fn writer(&self) -> Result<Box<dyn crate::store::blob::BlobWriter>, BlobError> {
            self.inner.writer()
        }
        fn get(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
            self.inner.get(digest)
        }
        fn open_verified(&self, digest: &Digest) -> Result<std::path::PathBuf, BlobError> {
            self.inner.open_verified(digest)
        }
        fn contains(&self, digest: &Digest) -> bool {
            self.inner.contains(digest)
        }
        fn list(&self) -> Result<Vec<BlobInfo>, BlobError> {
            self.inner.list()
        }
        fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
            use std::sync::atomic::Ordering;
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Err(BlobError::Io {
                    what: "killed".into(),
                    source: std::io::Error::other("killed"),
                });
            }
            self.budget.store(left - 1, Ordering::SeqCst);
            self.inner.delete(digest)
        }
    }

    /// Production, three branch runs with their tables, logs and cache
    /// entries, and two run pages of one lane.
    fn populated(budget: usize) -> (Failing, SqliteState) {
        use crate::store::queue::{JobKind, JobState, NewJob};
        use crate::store::state::CacheEntry;
        let blobs = Failing {
            inner: crate::store::blob::MemBlobStore::new(),
            budget: budget.into(),
        };
        let db = SqliteState::open_in_memory().unwrap();
        let manifest = |tag: &str, previous: Option<Digest>| {
            let out = blobs.put(format!("id\n{tag}\n").as_bytes()).unwrap();
            let log = blobs.put(format!("log {tag}\n").as_bytes()).unwrap();
            let m = Manifest {
                format: 1,
                pipeline: "p".into(),
                commit: None,
                git_ref: None,
                created_at: None,
                previous,
                nodes: vec![table_node("A", Some(d(tag)), out, Some(log))],
            };
            let entry = CacheEntry {
                output: out,
                rows: 1,
                columns: vec!["id".into()],
                log: Some(log),
                duration_ms: 1,
            };
            db.cache_put(&d(tag), &entry).unwrap();
            blobs.put(&serde_json::to_vec(&m).unwrap()).unwrap()
        };
        let prod = manifest("prod", None);
        db.ref_set("production/p", &prod).unwrap();
        db.record_run("p", &prod, None, Some("main"), false)
            .unwrap();
        for i in 0..3 {
            let m = manifest(&format!("branch{i}"), Some(prod));
            db.record_run("p", &m, None, Some("feature"), false)
                .unwrap();
        }
        for i in 0..2 {
            let report = blobs
                .put(format!("{{\"pipelines\":[],\"n\":{i}}}").as_bytes())
                .unwrap();
            let job = NewJob {
                repo: "github:a/p".into(),
                kind: JobKind::Push,
                lane: "refs/heads/feature".into(),
                git_ref: "refs/heads/feature".into(),
                branch: Some("feature".into()),
                sha: format!("{i:040}"),
                pr_number: None,
                run_id: format!("run{i}"),
            };
            db.enqueue(&job, None).unwrap();
            let job = db.claim_job().unwrap().unwrap();
            db.finish_job(job.id, JobState::Done, Some("success"), Some(&report))
                .unwrap();
        }
        (blobs, db)
    }

    /// Nothing in the state names a blob that is not stored.
    fn nothing_dangles(blobs: &dyn BlobStore, db: &SqliteState) {
        for e in db.cache_blobs().unwrap() {
            assert!(e.output.is_some_and(|o| blobs.contains(&o)), "{e:?}");
            if let Some(log) = e.log {
                assert!(log.is_some_and(|l| blobs.contains(&l)), "{e:?}");
            }
        }
        for r in db.runs().unwrap() {
            assert!(blobs.contains(&r.manifest), "{r:?}");
        }
        for j in db.jobs_with_reports().unwrap() {
            assert!(j.report.is_some_and(|r| blobs.contains(&r)), "{j:?}");
        }
        for (name, d) in db.ref_list().unwrap() {
            assert!(d.is_some_and(|d| blobs.contains(&d)), "{name}");
        }
    }

    #[test]
    fn a_gc_killed_at_any_blob_leaves_nothing_dangling_and_the_next_one_finishes() {
        let policy = Policy {
            keep_runs: 1,
            grace: Duration::ZERO,
        };
        let later = SystemTime::now() + HOUR;
        let whole = {
            let (blobs, db) = populated(usize::MAX);
            let states = [("mem".to_string(), &db as &dyn State)];
            let plan = plan_of(&blobs, &states, &policy, later);
            // Two branch runs' manifest, table and log, and a report.
            assert_eq!(plan.delete.len(), 7, "{plan:?}");
            apply(&plan, &blobs, &states, &mut |_| {}, &mut Vec::new()).unwrap();
            nothing_dangles(&blobs, &db);
            let mut left: Vec<Digest> = blobs
                .list()
                .unwrap()
                .into_iter()
                .map(|b| b.digest)
                .collect();
            left.sort();
            left
        };
        for killed_after in 0..7 {
            let (blobs, db) = populated(killed_after);
            let states = [("mem".to_string(), &db as &dyn State)];
            let plan = plan_of(&blobs, &states, &policy, later);
            assert!(apply(&plan, &blobs, &states, &mut |_| {}, &mut Vec::new()).is_err());
            nothing_dangles(&blobs, &db);
            // The next gc collects the orphans the killed one left.
            blobs
                .budget
                .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
            let plan = plan_of(&blobs, &states, &policy, later);
            apply(&plan, &blobs, &states, &mut |_| {}, &mut Vec::new()).unwrap();
            nothing_dangles(&blobs, &db);
            let mut left: Vec<Digest> = blobs
                .list()
                .unwrap()
                .into_iter()
                .map(|b| b.digest)
                .collect();
            left.sort();
            assert_eq!(left, whole, "killed after {killed_after} deletes");
        }
    }

    /// A measurement, not a check: gc of a local store of 100 000 blobs
    /// (production names 4 000, 48 000 cache entries name the rest).
    #[test]
    #[ignore = "a measurement: cargo test --lib gc_timing -- --ignored --nocapture"]
    fn gc_timing() {
        use crate::store::blob::LocalBlobStore;
        use crate::store::state::CacheEntry;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        let db = SqliteState::open(&dir.path().join("state.db")).unwrap();
        // Written straight into the layout: a put fsyncs, which would
        // measure the disk, not gc.
        let write = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            let path = blobs.blob_path(&digest);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
            digest
        };
        let mut nodes = Vec::new();
        for i in 0..2_000 {
            let out = write(format!("id\n{i}\n").as_bytes());
            let log = write(format!("log {i}\n").as_bytes());
            nodes.push(table_node(
                &format!("N{i}"),
                Some(d(&i.to_string())),
                out,
                Some(log),
            ));
        }
        let m = Manifest {
            format: 1,
            pipeline: "p".into(),
            commit: None,
            git_ref: None,
            created_at: None,
            previous: None,
            nodes,
        };
        let prod = write(&serde_json::to_vec(&m).unwrap());
        db.ref_set("production/p", &prod).unwrap();
        db.conn().execute_batch("BEGIN").unwrap();
        for i in 0..48_000 {
            let out = write(format!("old,{i}\n").as_bytes());
            let log = write(format!("old log {i}\n").as_bytes());
            let entry = CacheEntry {
                output: out,
                rows: 1,
                columns: vec![],
                log: Some(log),
                duration_ms: 1,
            };
            db.cache_put(&d(&format!("old{i}")), &entry).unwrap();
        }
        db.conn().execute_batch("COMMIT").unwrap();
        let states = [("state.db".to_string(), &db as &dyn State)];
        let policy = Policy {
            keep_runs: 1,
            grace: Duration::ZERO,
        };
        let later = SystemTime::now() + HOUR;
        let t = std::time::Instant::now();
        let plan = plan_of(&blobs, &states, &policy, later);
        let decided = t.elapsed();
        assert_eq!(plan.examined.blobs, 100_001);
        assert_eq!(plan.delete.len(), 96_000);
        let t = std::time::Instant::now();
        let applied = apply(&plan, &blobs, &states, &mut |_| {}, &mut Vec::new()).unwrap();
        let done = t.elapsed();
        assert_eq!(applied.cache_entries, 48_000);
        eprintln!(
            "100 001 blobs: listed, read and decided in {decided:?}; 48 000 cache entries \
             dropped and 96 000 blobs deleted in {done:?}"
        );
    }

    #[test]
    fn a_promotion_onto_a_doomed_table_during_gc_is_reported_with_the_remedy() {
        let (blobs, db) = populated(usize::MAX);
        let states = [("mem".to_string(), &db as &dyn State)];
        let policy = Policy {
            keep_runs: 1,
            grace: Duration::ZERO,
        };
        let later = SystemTime::now() + HOUR;
        let plan = plan_of(&blobs, &states, &policy, later);
        // Meanwhile a run recomputes an old branch table byte for byte
        // (its put finds it stored) and promotes a manifest naming it.
        let doomed = blobs.put(b"id\nbranch0\n").unwrap();
        assert!(plan.delete.iter().any(|b| b.digest == doomed));
        let mut m: Manifest = serde_json::from_slice(
            &blobs
                .get(&db.ref_get("production/p").unwrap().unwrap())
                .unwrap(),
        )
        .unwrap();
        m.nodes[0].output = Some(doomed);
        let moved = blobs.put(&serde_json::to_vec(&m).unwrap()).unwrap();
        db.ref_set("production/p", &moved).unwrap();
        let mut warnings = Vec::new();
        apply(&plan, &blobs, &states, &mut |_| {}, &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("production/p moved during gc"),
            "{warnings:?}"
        );
        assert!(warnings[0].contains("sluice run --promote"), "{warnings:?}");

        // Unmoved refs say nothing.
        let (blobs, db) = populated(usize::MAX);
        let states = [("mem".to_string(), &db as &dyn State)];
        let plan = plan_of(&blobs, &states, &policy, later);
        let mut warnings = Vec::new();
        apply(&plan, &blobs, &states, &mut |_| {}, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_doomed_table_stored_again_during_gc_stays() {
        use crate::store::blob::LocalBlobStore;
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobStore::open(&dir.path().join("blobs")).unwrap();
        let db = SqliteState::open(&dir.path().join("state.db")).unwrap();
        let old = blobs.put(b"id\n1\n").unwrap();
        let gone = blobs.put(b"id\n2\n").unwrap();
        for d in [old, gone] {
            std::fs::File::open(blobs.blob_path(&d))
                .unwrap()
                .set_modified(SystemTime::now() - 2 * DEFAULT_GRACE)
                .unwrap();
        }
        let states = [("state.db".to_string(), &db as &dyn State)];
        let plan = plan_of(&blobs, &states, &Policy::default(), SystemTime::now());
        assert_eq!(plan.delete.len(), 2);
        // A run computes the same table again while gc works.
        let mut w = blobs.writer().unwrap();
        w.write_all(b"id\n1\n").unwrap();
        assert_eq!(w.finish().unwrap(), old);
        let applied = apply(&plan, &blobs, &states, &mut |_| {}, &mut Vec::new()).unwrap();
        assert_eq!(applied.stored_again, 1);
        assert_eq!(applied.deleted.blobs, 1);
        assert!(blobs.contains(&old));
        assert!(!blobs.contains(&gone));
    }
}
