//! Checking and repairing a state directory (`sluice fsck [--repair]`):
//! every blob against its name, leftover temp files, the database's
//! integrity, cache entries naming missing or damaged blobs, refs naming
//! missing manifests, the ref files, and file modes.
//!
//! What it reports are kinds, digests, paths and ref names: never a
//! table's bytes. Run it while no other sluice uses the state directory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::blob::{BLOB_MODE, DIR_MODE, digest_reader};
use super::state::{self, SqliteState, State as _};
use crate::plan::digest::Digest;
use crate::plan::manifest::Manifest;

/// Blobs larger than this are not parsed as manifests (manifests are
/// small; tables can be large).
const MANIFEST_MAX: u64 = 64 << 20;

/// How many problems of one kind were found, and how many were repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Count {
    pub found: usize,
    pub repaired: usize,
}

impl Count {
    fn found(&mut self) {
        self.found += 1;
    }
    fn repaired(&mut self) {
        self.repaired += 1;
    }
}

/// What `fsck` found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FsckReport {
    pub state_dir: PathBuf,
    /// The shared stores checked instead of the state directory's own
    /// (`fsck_stores`): where the blobs and the state are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    pub repair: bool,
    /// Blobs whose bytes were hashed.
    pub blobs_checked: usize,
    /// Blobs whose bytes do not hash to their name (moved to
    /// `quarantine/` by a repair).
    pub damaged_blobs: Count,
    /// Temp files of writers that are gone: garbage, not damage (they do
    /// not change the exit status). Removed by a repair, and by the next
    /// run.
    pub temp_files: Count,
    /// The state database: empty, not SQLite, or failing
    /// `PRAGMA integrity_check` (moved aside and recreated by a repair).
    pub database: Count,
    /// Cache entries naming a missing or damaged blob (dropped).
    pub cache_entries: Count,
    /// Refs naming a missing or damaged manifest, or lost from the
    /// database (rebuilt from the ref files and the manifest chain).
    pub refs: Count,
    /// Ref files missing, unreadable or disagreeing with the database
    /// (rewritten).
    pub ref_files: Count,
    /// Files or directories other local users may read (tightened).
    pub modes: Count,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl FsckReport {
    /// The kinds of damage: every kind but orphan temp files, which are
    /// garbage (a killed run's partial write) that the next run removes.
    fn damage(&self) -> [Count; 6] {
        [
            self.damaged_blobs,
            self.database,
            self.cache_entries,
            self.refs,
            self.ref_files,
            self.modes,
        ]
    }

    /// Whether no damage was found (orphan temp files may be listed).
    pub fn clean(&self) -> bool {
        self.damage().iter().all(|c| c.found == 0)
    }

    /// Whether all the damage found was repaired.
    pub fn all_repaired(&self) -> bool {
        self.damage().iter().all(|c| c.repaired >= c.found)
    }

    /// The counts by kind, for printing.
    pub fn kinds(&self) -> Vec<(&'static str, Count)> {
        vec![
            ("damaged blobs", self.damaged_blobs),
            ("orphan temp files (garbage, not damage)", self.temp_files),
            ("damaged database", self.database),
            ("bad cache entries", self.cache_entries),
            ("bad refs", self.refs),
            ("bad ref files", self.ref_files),
            ("loose modes", self.modes),
        ]
    }

    fn problem(&mut self, text: String) {
        self.problems.push(text);
    }
}

/// What a manifest blob says about the chain.
#[derive(Debug, Clone)]
struct ManifestInfo {
    pipeline: String,
    previous: Option<Digest>,
    created_at: String,
}

/// What the walk over the blobs learned.
#[derive(Debug, Default)]
struct Blobs {
    intact: HashSet<Digest>,
    manifests: HashMap<Digest, ManifestInfo>,
}

/// Checks (and with `repair`, repairs) the state directory `dir`.
pub fn fsck(dir: &Path, repair: bool) -> anyhow::Result<FsckReport> {
    let mut report = FsckReport {
        state_dir: dir.to_path_buf(),
        repair,
        ..FsckReport::default()
    };
    if !dir.exists() {
        return Ok(report);
    }
    check_modes(dir, repair, &mut report)?;
    let blobs = check_blobs(dir, repair, &mut report)?;
    check_temp_files(dir, repair, &mut report);
    let db = check_database(dir, repair, &mut report)?;
    if let Some(db) = &db.db {
        check_cache(db, &blobs, repair, &mut report)?;
    }
    check_refs(dir, &db, &blobs, repair, &mut report)?;
    Ok(report)
}

/// Checks (and with `repair`, repairs) stores shared with other machines:
/// blobs in a bucket, state in PostgreSQL, or either. Every blob is read
/// whole and hashed (from the bucket, not this machine's read cache); a
/// damaged one is deleted by a repair (the next run that needs it
/// recomputes it). Cache entries naming a missing or damaged blob are
/// dropped by a repair. A ref naming a missing or damaged manifest is
/// reported, not repaired: production is shared, and only a new
/// `run --promote` should move it. The local state directory's own
/// checks (temp files, modes, the SQLite file) are `fsck`'s.
///
/// Other machines may be writing meanwhile: a blob is put before the
/// cache entry or ref naming it, so an entry whose blob is absent from
/// the listing is looked up again before it counts as damage.
pub fn fsck_stores(
    stores: &super::Stores,
    state_dir: &Path,
    repair: bool,
) -> anyhow::Result<FsckReport> {
    use super::blob::BlobError;
    let mut report = FsckReport {
        state_dir: state_dir.to_path_buf(),
        repair,
        ..FsckReport::default()
    };
    let listed = stores.blobs.list().context("cannot list the blobs")?;
    let mut intact: HashSet<Digest> = HashSet::with_capacity(listed.len());
    let mut damaged: HashSet<Digest> = HashSet::new();
    for blob in listed {
        report.blobs_checked += 1;
        match stores.blobs.verify(&blob.digest) {
            Ok(()) => {
                intact.insert(blob.digest);
            }
            // Deleted since the listing (by gc): not damage.
            Err(BlobError::Missing(_)) => {}
            Err(BlobError::Corrupt { .. }) => {
                report.damaged_blobs.found();
                damaged.insert(blob.digest);
                let mut line = format!("blob {} does not hash to its name", blob.digest);
                if repair {
                    stores
                        .blobs
                        .delete(&blob.digest)
                        .with_context(|| format!("cannot delete damaged blob {}", blob.digest))?;
                    report.damaged_blobs.repaired();
                    line.push_str(" (deleted)");
                }
                report.problem(line);
            }
            Err(e) => return Err(e).context("cannot read the blobs"),
        }
    }
    // Intact now, listed or not (written since the listing).
    let sound =
        |d: &Digest| !damaged.contains(d) && (intact.contains(d) || stores.blobs.contains(d));
    let what = |d: &Digest| {
        if damaged.contains(d) {
            "damaged"
        } else {
            "missing"
        }
    };
    for entry in stores
        .state
        .cache_blobs()
        .context("cannot read the cache")?
    {
        let bad = match (&entry.output, &entry.log) {
            (None, _) | (_, Some(None)) => Some("an unreadable digest".to_string()),
            (Some(out), _) if !sound(out) => Some(format!("{} blob {out}", what(out))),
            (_, Some(Some(log))) if !sound(log) => Some(format!("{} log {log}", what(log))),
            _ => None,
        };
        let Some(bad) = bad else { continue };
        report.cache_entries.found();
        let mut line = format!("cache entry {} names {bad}", entry.task_key);
        if repair {
            stores
                .state
                .cache_forget_task(&entry.task_key)
                .context("cannot drop a cache entry")?;
            report.cache_entries.repaired();
            line.push_str(" (dropped)");
        }
        report.problem(line);
    }
    for (name, digest) in stores.state.ref_list().context("cannot read the refs")? {
        let bad = match digest {
            None => "an unreadable digest".to_string(),
            Some(d) if !sound(&d) => format!("a {} manifest {d}", what(&d)),
            Some(_) => continue,
        };
        report.refs.found();
        report.problem(format!(
            "ref {name} names {bad}; it is shared, so it is not repaired: promote a run again \
             (sluice run --promote at the production branch)"
        ));
    }
    Ok(report)
}

// -- modes ---------------------------------------------------------------------

fn check_modes(dir: &Path, repair: bool, report: &mut FsckReport) -> anyhow::Result<()> {
    // The state dir itself (which guards everything in it), then the
    // whole blob tree.
    let mut paths = vec![dir.to_path_buf()];
    let mut stack = vec![dir.join("blobs")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        paths.push(d.clone());
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => paths.push(entry.path()),
                _ => {}
            }
        }
    }
    for path in paths {
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            continue;
        }
        report.modes.found();
        report.problem(format!(
            "{} is mode {mode:04o}: other local users may read it",
            path.display()
        ));
        if repair {
            let wanted = if meta.is_dir() { DIR_MODE } else { BLOB_MODE };
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted))
                .with_context(|| format!("cannot change the mode of {}", path.display()))?;
            report.modes.repaired();
        }
    }
    Ok(())
}

// -- blobs ---------------------------------------------------------------------

fn check_blobs(dir: &Path, repair: bool, report: &mut FsckReport) -> anyhow::Result<Blobs> {
    let mut out = Blobs::default();
    let objects = dir.join("blobs/sha256");
    let mut files = Vec::new();
    collect_files(&objects, &mut files)?;
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let expected: Option<Digest> = format!("sha256:{name}")
            .parse()
            .ok()
            .filter(|_: &Digest| path == objects.join(&name[..2]).join(&name[2..4]).join(&name));
        let damage = match expected {
            None => Some("is not at a blob's address".to_string()),
            Some(d) => match hash_blob(&path) {
                Ok((actual, manifest)) if actual == d => {
                    report.blobs_checked += 1;
                    out.intact.insert(d);
                    if let Some(m) = manifest {
                        out.manifests.insert(d, m);
                    }
                    None
                }
                Ok(_) => {
                    report.blobs_checked += 1;
                    Some(format!("{d}: its bytes do not hash to its name"))
                }
                Err(e) => Some(format!("cannot be read: {e}")),
            },
        };
        let Some(damage) = damage else { continue };
        report.damaged_blobs.found();
        report.problem(format!("damaged blob {}: {damage}", path.display()));
        if repair {
            let quarantine = dir.join("quarantine");
            fs::create_dir_all(&quarantine)
                .and_then(|()| {
                    fs::set_permissions(&quarantine, fs::Permissions::from_mode(DIR_MODE))
                })
                .with_context(|| format!("cannot create {}", quarantine.display()))?;
            let target = quarantine.join(&name);
            fs::rename(&path, &target).with_context(|| {
                format!("cannot move {} to {}", path.display(), target.display())
            })?;
            report.damaged_blobs.repaired();
        }
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// A blob's digest, and what it says if it is a manifest.
fn hash_blob(path: &Path) -> io::Result<(Digest, Option<ManifestInfo>)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut first = [0u8; 1];
    let n = file.read(&mut first)?;
    if n == 1 && first[0] == b'{' && len <= MANIFEST_MAX {
        let mut bytes = vec![b'{'];
        file.read_to_end(&mut bytes)?;
        let digest = Digest::of(&bytes);
        let info = serde_json::from_slice::<Manifest>(&bytes)
            .ok()
            .map(|m| ManifestInfo {
                pipeline: m.pipeline,
                previous: m.previous,
                created_at: m.created_at.unwrap_or_default(),
            });
        return Ok((digest, info));
    }
    let (digest, _) = digest_reader(io::Read::chain(&first[..n], file))?;
    Ok((digest, None))
}

// -- temp files ------------------------------------------------------------------

fn check_temp_files(dir: &Path, repair: bool, report: &mut FsckReport) {
    let mut temps: Vec<PathBuf> = fs::read_dir(dir.join("blobs/tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    temps.extend(state::ref_temp_files(&dir.join("refs")));
    temps.sort();
    for path in temps {
        if !super::blob::is_orphan_temp(&path) {
            continue;
        }
        report.temp_files.found();
        report.problem(format!("orphan temp file {}", path.display()));
        if repair && fs::remove_file(&path).is_ok() {
            report.temp_files.repaired();
        }
    }
}

// -- the database ------------------------------------------------------------------

struct DbCheck {
    /// The database, when it is usable (sound, or rebuilt).
    db: Option<SqliteState>,
    /// It was recreated empty: the refs come from the files and chains.
    rebuilt: bool,
    /// Refs read from the damaged database before it was moved aside.
    salvaged: Vec<(String, Option<Digest>)>,
}

fn check_database(dir: &Path, repair: bool, report: &mut FsckReport) -> anyhow::Result<DbCheck> {
    let path = dir.join("state.db");
    let mut out = DbCheck {
        db: None,
        rebuilt: false,
        salvaged: Vec::new(),
    };
    if !path.exists() {
        // Nothing ran here yet, or the file was deleted: with ref files
        // to restore, a repair recreates it.
        if repair && !state::ref_files(&dir.join("refs")).is_empty() {
            out.db = Some(SqliteState::open(&path)?);
            out.rebuilt = true;
        }
        return Ok(out);
    }
    let damage = match state::damaged_db_reason(&path) {
        Some(reason) => Some(reason),
        None => match SqliteState::open(&path) {
            Ok(db) => match db.integrity_check() {
                Ok(problems) if problems.is_empty() => {
                    out.db = Some(db);
                    None
                }
                Ok(problems) => {
                    out.salvaged = db.ref_list().unwrap_or_default();
                    Some(format!(
                        "fails its integrity check ({} problem(s), first: {})",
                        problems.len(),
                        problems.first().map(String::as_str).unwrap_or("")
                    ))
                }
                Err(e) => Some(format!("cannot be checked: {e:#}")),
            },
            Err(e) => Some(format!("cannot be opened: {e:#}")),
        },
    };
    let Some(damage) = damage else {
        return Ok(out);
    };
    report.database.found();
    report.problem(format!("the state database {} {damage}", path.display()));
    if repair {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", path.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}.damaged-{stamp}{suffix}", path.display()));
                fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} aside to {}", from.display(), to.display())
                })?;
            }
        }
        out.db = Some(SqliteState::open(&path)?);
        out.rebuilt = true;
        report.database.repaired();
        report.problem(format!(
            "moved the damaged database aside as {}.damaged-{stamp} and created a new one",
            path.display()
        ));
    }
    Ok(out)
}

// -- cache -------------------------------------------------------------------------

fn check_cache(
    db: &SqliteState,
    blobs: &Blobs,
    repair: bool,
    report: &mut FsckReport,
) -> anyhow::Result<()> {
    for entry in db.cache_blobs()? {
        let bad_output = entry.output.is_none_or(|d| !blobs.intact.contains(&d));
        let bad_log = match entry.log {
            None => false,
            Some(None) => true,
            Some(Some(d)) => !blobs.intact.contains(&d),
        };
        if !bad_output && !bad_log {
            continue;
        }
        report.cache_entries.found();
        let what = match (bad_output, entry.output) {
            (true, Some(d)) => format!("output {d} is missing or damaged"),
            (true, None) => "output is not a digest".to_string(),
            (false, _) => "log is missing or damaged".to_string(),
        };
        report.problem(format!("cache entry {}: {what}", entry.task_key));
        if repair {
            db.cache_forget_task(&entry.task_key)?;
            report.cache_entries.repaired();
        }
    }
    Ok(())
}

// -- refs --------------------------------------------------------------------------

fn check_refs(
    dir: &Path,
    db: &DbCheck,
    blobs: &Blobs,
    repair: bool,
    report: &mut FsckReport,
) -> anyhow::Result<()> {
    let refs_dir = dir.join("refs");
    let files = state::ref_files(&refs_dir);
    let intact = |d: &Digest| blobs.manifests.contains_key(d);
    let Some(conn) = &db.db else {
        // No usable database: only the files can be checked.
        for (name, value) in &files {
            match value {
                Ok(d) if intact(d) => {}
                Ok(d) => {
                    report.refs.found();
                    report.problem(format!(
                        "ref file of {name} names {d}, which is missing or damaged"
                    ));
                }
                Err(e) => {
                    report.ref_files.found();
                    report.problem(format!("ref file of {name} {e}"));
                }
            }
        }
        return Ok(());
    };
    let in_db: BTreeMap<String, Option<Digest>> = conn.ref_list()?.into_iter().collect();
    let mut names: BTreeSet<String> = in_db.keys().cloned().collect();
    names.extend(files.keys().cloned());
    let salvaged: BTreeMap<String, Digest> = db
        .salvaged
        .iter()
        .filter_map(|(n, d)| d.map(|d| (n.clone(), d)))
        .collect();
    names.extend(salvaged.keys().cloned());
    if db.rebuilt {
        // With the database lost, every pipeline with a production chain.
        for info in blobs.manifests.values() {
            if info.previous.is_some() {
                names.insert(format!("production/{}", info.pipeline));
            }
        }
    }
    for name in names {
        let production = name.starts_with("production/");
        let db_value = in_db.get(&name).copied();
        let file_value = files.get(&name);
        // With a rebuilt database, restoring the refs is part of its repair.
        let counted = match db_value {
            Some(Some(d)) if intact(&d) => {
                if production && !matches!(file_value, Some(Ok(f)) if *f == d) {
                    report.ref_files.found();
                    report.problem(format!(
                        "ref file of {name} is missing or disagrees with the database"
                    ));
                    if repair {
                        state::write_ref_file(&refs_dir, &name, &d)?;
                        report.ref_files.repaired();
                    }
                }
                continue;
            }
            Some(Some(d)) => {
                report.problem(format!(
                    "ref {name} names manifest {d}, which is missing or damaged"
                ));
                true
            }
            Some(None) => {
                report.problem(format!("ref {name} does not hold a digest"));
                true
            }
            None if db.rebuilt => false,
            None => {
                report.problem(format!(
                    "ref {name} is missing from the database (its ref file has it)"
                ));
                true
            }
        };
        if counted {
            report.refs.found();
        }
        if !repair {
            continue;
        }
        let candidates = [
            file_value.and_then(|v| v.as_ref().ok()).copied(),
            salvaged.get(&name).copied(),
        ];
        let rebuilt = candidates
            .into_iter()
            .flatten()
            .find(|d| intact(d))
            .or_else(|| chain_head(blobs, &name));
        match rebuilt {
            Some(d) => {
                conn.ref_set(&name, &d)?;
                report.problem(format!("ref {name} now names {d}"));
            }
            None if db_value.is_none() && !production => {}
            None => {
                conn.ref_delete(&name)?;
                report.problem(format!(
                    "ref {name} dropped: no intact manifest for it; the next \
                     `sluice run --promote` starts a new chain"
                ));
            }
        }
        if counted {
            report.refs.repaired();
        }
    }
    Ok(())
}

/// The newest intact manifest of the pipeline that another manifest
/// names as `previous`: every run names the production manifest of its
/// time, so such a manifest certainly was production (the newest one may
/// be a step behind the lost head, which the next promotion moves on).
fn chain_head(blobs: &Blobs, name: &str) -> Option<Digest> {
    let pipeline = name.strip_prefix("production/")?;
    blobs
        .manifests
        .values()
        .filter(|m| m.pipeline == pipeline)
        .filter_map(|m| m.previous)
        .filter(|d| {
            blobs
                .manifests
                .get(d)
                .is_some_and(|m| m.pipeline == pipeline)
        })
        .max_by(|a, b| {
            let ta = &blobs.manifests[a].created_at;
            let tb = &blobs.manifests[b].created_at;
            ta.cmp(tb).then(a.cmp(b))
        })
}
