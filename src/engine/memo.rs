//! The daemon's incremental plan: what one job's plan leaves for the next
//! job of the same repository.
//!
//! [`PlanMemo::open`] reads a commit of the mirror as
//! [`Workspace::open`] does, but when the memo holds the last plan it
//! diffs the two commits' trees (identical subtrees skipped by id),
//! re-resolves only the units (pipelines and `@depend`ed directories)
//! whose traced reads changed (see
//! [`incremental`](crate::pipeline::resolve::incremental)), links the
//! graph again, and [`Workspace::hashes`] then re-hashes only the nodes
//! whose definition or inputs changed. [`PlanMemo::keep`] takes the
//! workspace back after the run. Anything the memo cannot follow (no
//! earlier plan, a symlink followed or changed, `.gitattributes` changed,
//! a cycle or a too-deep chain) gives a cold plan, and a repository read
//! through a symlink is not kept. The memo lives in the process, so the
//! built-in action layer and engine versions are those of the running
//! binary.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use gix::ObjectId;

use super::workspace::{Settings, Workspace};
use crate::git::GitVfs;
use crate::pipeline::resolve::incremental::{self, Changes, Units};
use crate::pipeline::{self, Graph, NodeId, RepoPath};
use crate::plan::hash::{HashContext, Links, NodeHashes, Previous};

/// One repository's last plan, held by the daemon between jobs.
#[derive(Default)]
pub struct PlanMemo {
    kept: Mutex<Option<Box<Kept>>>,
}

impl std::fmt::Debug for PlanMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanMemo").finish_non_exhaustive()
    }
}

struct Kept {
    /// The root tree of the commit planned.
    tree: ObjectId,
    graph: Graph,
    units: Units,
    hashes: Option<(Vec<Option<NodeHashes>>, HashContext)>,
    /// The graph's links, packed for the next plan's hashes.
    links: Option<Links>,
}

/// What a workspace opened by [`PlanMemo::open`] carries until
/// [`PlanMemo::keep`].
#[derive(Debug)]
pub struct Carried {
    tree: ObjectId,
    units: Units,
    previous: Option<PreviousHashes>,
}

#[derive(Debug)]
struct PreviousHashes {
    hashes: Vec<Option<NodeHashes>>,
    ctx: HashContext,
    ids: Vec<Option<NodeId>>,
    reused: Vec<bool>,
    /// The previous graph's links, when this one patched it in place.
    links: Option<Links>,
}

impl Carried {
    /// The previous plan's hashes, for [`Workspace::hashes`].
    pub(crate) fn previous(&self) -> Option<Previous<'_>> {
        self.previous.as_ref().map(|p| Previous {
            hashes: &p.hashes,
            ctx: &p.ctx,
            ids: &p.ids,
            reused: &p.reused,
            links: p.links.as_ref(),
        })
    }
}

/// How a plan was made, for the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// From the last plan: `changed` entries of the tree, `resolved`
    /// units resolved again and `reused` kept.
    Incremental {
        changed: usize,
        resolved: usize,
        reused: usize,
        /// The previous graph patched in place (no unit moved, no node
        /// renamed, added or removed).
        in_place: bool,
    },
    /// From scratch, and why.
    Cold(String),
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Planned::Incremental {
                changed,
                resolved,
                reused,
                ..
            } => write!(
                f,
                "incremental: {changed} changed entries, {resolved} units resolved, {reused} reused"
            ),
            Planned::Cold(why) => write!(f, "cold: {why}"),
        }
    }
}

impl PlanMemo {
    /// Opens commit `sha` of the bare repository `mirror` and resolves it,
    /// from the last plan when the memo holds one (see the module).
    pub fn open(
        &self,
        mirror: &Path,
        sha: &str,
        settings: Settings,
    ) -> anyhow::Result<(Workspace, Planned)> {
        let g = GitVfs::open_bare(mirror, sha, &RepoPath::root())?;
        let commit = g.commit_id();
        let tree = g.root_tree();
        let links = g.link_counter();
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut how = Planned::Cold("no earlier plan".into());
        let mut changes = None;
        if let Some(k) = &kept {
            match g.changes_since(k.tree).map_err(|e| e.to_string()) {
                Ok(list) => match Changes::new(&list) {
                    Ok(c) => changes = Some(c),
                    Err(why) => how = Planned::Cold(why),
                },
                Err(e) => how = Planned::Cold(format!("cannot diff the trees: {e}")),
            }
        }
        if changes.is_none() {
            kept = None;
        }
        let mut carried = None;
        let mut compile = |vfs: &dyn pipeline::Vfs, pipelines: &[RepoPath]| {
            let (previous, old_hashes, old_links) = match (kept.take(), &changes) {
                (Some(k), Some(c)) => {
                    let Kept {
                        graph,
                        units,
                        hashes,
                        links,
                        ..
                    } = *k;
                    (Some((units, graph, c)), hashes, links)
                }
                _ => (None, None, None),
            };
            match incremental::compile_units(vfs, pipelines, previous) {
                Some(inc) => {
                    if let Some(c) = &changes {
                        how = Planned::Incremental {
                            changed: c.len(),
                            resolved: inc.resolved_units,
                            reused: inc.reused_units,
                            in_place: inc.in_place,
                        };
                    }
                    let previous = old_hashes.map(|(hashes, ctx)| PreviousHashes {
                        hashes,
                        ctx,
                        ids: inc.previous,
                        reused: inc.reused,
                        links: if inc.in_place { old_links } else { None },
                    });
                    carried = Some(Carried {
                        tree,
                        units: inc.units,
                        previous,
                    });
                    (inc.graph, inc.diagnostics)
                }
                None => {
                    how = Planned::Cold("a cycle or a chain too deep was reported".into());
                    pipeline::compile(vfs, pipelines)
                }
            }
        };
        let mut ws =
            Workspace::from_vfs_with(mirror, Box::new(g), Some(commit), settings, &mut compile)?;
        if links.get() > 0 {
            // Reads through a symlink depend on its target: not traced.
            carried = None;
            if let Planned::Incremental { .. } = how {
                how = Planned::Cold("a symlink was followed; not kept".into());
            }
        }
        ws.carried = carried.map(Box::new);
        Ok((ws, how))
    }

    /// Keeps the plan of `ws` (opened by [`PlanMemo::open`]) for the next
    /// job; a workspace opened otherwise leaves the memo as it is.
    pub fn keep(&self, mut ws: Workspace) {
        let Some(c) = ws.carried.take() else {
            return;
        };
        let graph = std::mem::take(&mut ws.graph);
        // Packed here, after the run, not in the next job's plan.
        let links = Links::of(&graph);
        let kept = Kept {
            tree: c.tree,
            graph,
            units: c.units,
            hashes: ws.hashed.take(),
            links,
        };
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(kept));
    }

    /// Forgets the last plan.
    pub fn clear(&self) {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn git(dir: &Path, args: &[&str]) {
        crate::git::tests::git(dir, args);
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn pick<'a>(&mut self, v: &'a [String]) -> Option<&'a String> {
            if v.is_empty() {
                None
            } else {
                Some(&v[self.below(v.len())])
            }
        }
    }

    /// The work tree: text files, and symlinks as `-> target`.
    type Tree = BTreeMap<String, String>;

    fn initial() -> Tree {
        let mut t = Tree::new();
        t.insert(
            "sluice.toml".into(),
            "[project]\npipelines = [\"clinics/*\"]\n".into(),
        );
        for c in 0..3 {
            t.insert(
                format!("clinics/c{c}/n0.sql"),
                "-- @source data://src.csv\nSELECT id FROM src\n".into(),
            );
            for i in 1..5 {
                t.insert(
                    format!("clinics/c{c}/n{i}.sql"),
                    format!(
                        "-- @depend ./n{}\n-- @include /common/base.sql\nSELECT id + {{{{k}}}} + {i} AS id FROM n{}\n",
                        i - 1,
                        i - 1
                    ),
                );
            }
        }
        t.insert(
            "clinics/c0/x.sql".into(),
            "-- @depend /shared/lib/y\nSELECT * FROM y\n".into(),
        );
        t.insert("clinics/c0/t.csv".into(), "id\n1\n".into());
        t.insert(
            "clinics/c1/group.sql".into(),
            "-- @include /groups/varian\n-- @param site=one\n".into(),
        );
        t.insert(
            "groups/varian/v0.sql".into(),
            "-- @param site=default\nSELECT '{{site}}' AS site\n".into(),
        );
        t.insert("shared/lib/y.sql".into(), "SELECT 1 AS id\n".into());
        t.insert("common/base.sql".into(), "-- @param k=1\n".into());
        t
    }

    fn write(dir: &Path, old: &Tree, new: &Tree) {
        for (path, _) in old.iter().filter(|(p, _)| !new.contains_key(*p)) {
            std::fs::remove_file(dir.join(path)).unwrap();
        }
        for (path, text) in new {
            if old.get(path) == Some(text) {
                continue;
            }
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&file);
            match text.strip_prefix("-> ") {
                Some(target) => std::os::unix::fs::symlink(target, &file).unwrap(),
                None => std::fs::write(&file, text).unwrap(),
            }
        }
    }

    /// One random edit, rename or deletion; returns what it did.
    fn step(t: &mut Tree, rng: &mut Rng) -> String {
        let nodes: Vec<String> = t
            .keys()
            .filter(|p| p.starts_with("clinics/") && p.ends_with(".sql"))
            .filter(|p| !p.ends_with("group.sql"))
            .cloned()
            .collect();
        let dirs: Vec<String> = nodes
            .iter()
            .map(|p| p.rsplit_once('/').unwrap().0.to_string())
            .collect();
        let all: Vec<String> = t.keys().filter(|p| *p != "sluice.toml").cloned().collect();
        let r = rng.below(1000);
        let op = rng.below(19);
        match op {
            0..=3 => {
                // A node's SQL.
                let Some(f) = rng.pick(&nodes).cloned() else {
                    return "nothing".into();
                };
                let text = t[&f].clone();
                let head: String = text
                    .lines()
                    .filter(|l| l.starts_with("--"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                t.insert(f.clone(), format!("{head}SELECT {r} AS id\n"));
                format!("edit {f}")
            }
            4 | 5 => {
                // A dependency added, on a node that may not exist.
                let Some(f) = rng.pick(&nodes).cloned() else {
                    return "nothing".into();
                };
                // Mostly on a node before it (a cycle now and then).
                let k: usize = f
                    .rsplit_once("/n")
                    .and_then(|(_, n)| n.trim_end_matches(".sql").parse().ok())
                    .unwrap_or(7);
                let dep = match rng.below(10) {
                    0 | 1 => format!("/shared/lib/y{}", rng.below(2)),
                    2 => format!("./n{}", rng.below(9)),
                    _ => format!("./n{}", rng.below(k)),
                };
                let text = format!("-- @depend {dep}\n{}", t[&f]);
                t.insert(f.clone(), text);
                format!("depend {f} {dep}")
            }
            6 => {
                // The first directive dropped.
                let Some(f) = rng.pick(&nodes).cloned() else {
                    return "nothing".into();
                };
                let text = t[&f].clone();
                if let Some((first, rest)) = text.split_once('\n')
                    && first.starts_with("-- @")
                {
                    t.insert(f.clone(), rest.to_string());
                }
                format!("undirective {f}")
            }
            7 => {
                // A new node.
                let dir = rng.pick(&dirs).cloned().unwrap_or("clinics/c9".into());
                let f = format!("{dir}/n{}.sql", rng.below(9));
                t.insert(
                    f.clone(),
                    format!("-- @depend ./n{}\nSELECT {r} AS id\n", rng.below(5)),
                );
                format!("add {f}")
            }
            8 => {
                let Some(f) = rng.pick(&all).cloned() else {
                    return "nothing".into();
                };
                t.remove(&f);
                format!("delete {f}")
            }
            9 => {
                // A rename, within a clinic or to another.
                let Some(f) = rng.pick(&nodes).cloned() else {
                    return "nothing".into();
                };
                let dir = rng.pick(&dirs).cloned().unwrap_or("clinics/c0".into());
                let to = format!("{dir}/n{}.sql", rng.below(9));
                let text = t.remove(&f).unwrap_or_default();
                t.insert(to.clone(), text);
                format!("rename {f} {to}")
            }
            10 => {
                let text = if rng.below(3) == 0 {
                    format!("-- @param k={r}\n-- @key id\n")
                } else {
                    format!("-- @param k={r}\n")
                };
                t.insert("common/base.sql".into(), text);
                "base".into()
            }
            11 => {
                // Broken, then fixed by a later step.
                let Some(f) = rng.pick(&nodes).cloned() else {
                    return "nothing".into();
                };
                let text = t[&f].clone();
                let text = match text.strip_prefix("-- @bogus\n") {
                    Some(rest) => rest.to_string(),
                    None => format!("-- @bogus\n{text}"),
                };
                t.insert(f.clone(), text);
                format!("break/fix {f}")
            }
            12 => {
                let text = match rng.below(3) {
                    0 => "-- @include /groups/varian\n".to_string(),
                    1 => format!("-- @include /groups/varian\n-- @param site=s{r}\n"),
                    _ => format!("-- @include /groups/varian\n-- @param sight=s{r}\n"),
                };
                let dir = rng.pick(&dirs).cloned().unwrap_or("clinics/c1".into());
                t.insert(format!("{dir}/group.sql"), text);
                format!("mount in {dir}")
            }
            13 => {
                let f = format!("groups/varian/v{}.sql", rng.below(3));
                t.insert(
                    f.clone(),
                    format!("-- @param site=default\nSELECT '{{{{site}}}}', {r} AS site\n"),
                );
                format!("group {f}")
            }
            14 => {
                let f = format!("shared/lib/y{}.sql", rng.below(2));
                t.insert(f.clone(), format!("SELECT {r} AS id\n"));
                format!("lib {f}")
            }
            15 => {
                let text = if t["sluice.toml"].contains("shared") {
                    "[project]\npipelines = [\"clinics/*\"]\n"
                } else {
                    "[project]\npipelines = [\"clinics/*\", \"shared/lib\"]\n"
                };
                t.insert("sluice.toml".into(), text.into());
                "config".into()
            }
            16 => {
                t.insert("clinics/c0/t.csv".into(), format!("id\n{r}\n"));
                "csv".into()
            }
            _ => {
                // A whole clinic added or removed.
                let c = format!("clinics/c{}", 3 + rng.below(2));
                let mine: Vec<String> = t
                    .keys()
                    .filter(|p| p.starts_with(&format!("{c}/")))
                    .cloned()
                    .collect();
                if mine.is_empty() {
                    t.insert(format!("{c}/a.sql"), "SELECT 1 AS id\n".into());
                    t.insert(
                        format!("{c}/b.sql"),
                        "-- @depend ./a\n-- @depend /clinics/c0/n1\nSELECT * FROM a\n".into(),
                    );
                } else {
                    for p in mine {
                        t.remove(&p);
                    }
                }
                format!("clinic {c}")
            }
        }
    }

    /// A change the memo cannot follow, or a cycle: a symlink,
    /// `.gitattributes`, an include cycle, a mount cycle.
    fn rare(t: &mut Tree, rng: &mut Rng) -> String {
        let (f, text) = match rng.below(4) {
            0 => ("clinics/c2/link.sql", "-> ../c0/n0.sql".to_string()),
            1 => ("clinics/.gitattributes", "*.sql text\n".to_string()),
            2 => (
                "common/base.sql",
                "-- @include /common/base2.sql\n-- @param k=2\n".to_string(),
            ),
            _ => (
                "groups/varian/m.sql",
                "-- @include /clinics/c1\n".to_string(),
            ),
        };
        t.insert(f.into(), text);
        if f == "common/base.sql" {
            t.insert(
                "common/base2.sql".into(),
                "-- @include /common/base.sql\n".into(),
            );
        }
        format!("rare {f}")
    }

    /// Everything a plan is: nodes, order, index, pipelines, diagnostics
    /// and hashes.
    fn plan_of(ws: &mut Workspace, pretty: bool) -> String {
        let (hashes, _) = ws.hashes(None);
        let mut index: Vec<_> = ws.graph.index.iter().collect();
        index.sort();
        let g = &ws.graph;
        if pretty {
            format!(
                "{:#?}\n{:?}\n{:?}\n{:?}\n{:#?}\n{:?}",
                g.nodes, g.order, index, g.pipelines, ws.diagnostics, hashes
            )
        } else {
            format!(
                "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
                g.nodes, g.order, index, g.pipelines, ws.diagnostics, hashes
            )
        }
    }

    #[test]
    fn incremental_plans_equal_cold_plans_through_200_random_steps() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("repo");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("src.csv"), "id\n1\n2\n").unwrap();
        git(&dir, &["init", "-q"]);
        let settings = Settings {
            data_root: Some(data.clone()),
            ..Settings::default()
        };
        let git_dir = dir.join(".git");
        let memo = PlanMemo::default();
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let mut tree = Tree::new();
        let mut next;
        let mut undo: Option<Vec<(String, Option<String>)>> = None;
        let mut repair: Option<String> = None;
        let (mut incremental, mut reused, mut cold) = (0, 0, BTreeMap::<String, usize>::new());
        let mut in_place = 0;
        for i in 0..=200 {
            next = tree.clone();
            let what = if i == 0 {
                next = initial();
                "initial".to_string()
            } else if let Some(file) = repair.take() {
                // A dependency cycle is broken again by the next step.
                if let Some(text) = next.get(&file) {
                    let kept: String = text
                        .lines()
                        .filter(|l| !l.starts_with("-- @depend ./"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    next.insert(file.clone(), kept);
                }
                format!("uncycle {file}")
            } else if let Some(undo) = undo.take() {
                // A rare change lasts one step.
                for (path, text) in undo {
                    match text {
                        Some(text) => next.insert(path, text),
                        None => next.remove(&path),
                    };
                }
                "undo".to_string()
            } else if rng.below(20) == 0 {
                let before = next.clone();
                let what = rare(&mut next, &mut rng);
                let paths: std::collections::BTreeSet<&String> =
                    before.keys().chain(next.keys()).collect();
                undo = Some(
                    paths
                        .into_iter()
                        .filter(|p| before.get(*p) != next.get(*p))
                        .map(|p| (p.clone(), before.get(p).cloned()))
                        .collect(),
                );
                what
            } else {
                step(&mut next, &mut rng)
            };
            write(&dir, &tree, &next);
            tree = next.clone();
            if i % 7 == 3 {
                // New source data between two pushes (a nightly load):
                // every node over it must hash anew.
                std::fs::write(data.join("src.csv"), format!("id\n{i}\n")).unwrap();
            }
            git(&dir, &["add", "-A"]);
            git(&dir, &["commit", "-q", "--allow-empty", "-m", &what]);
            let mut expected = Workspace::open(
                &git_dir,
                &super::super::Source::Bare("HEAD".into()),
                settings.clone(),
            )
            .unwrap();
            let (mut ws, how) = memo.open(&git_dir, "HEAD", settings.clone()).unwrap();
            assert_eq!(ws.commit, expected.commit);
            if plan_of(&mut expected, false) != plan_of(&mut ws, false) {
                let (want, got) = (plan_of(&mut expected, true), plan_of(&mut ws, true));
                panic!(
                    "step {i} ({what}, {how}): the incremental plan differs from the cold one:\n--- cold\n{want}\n--- incremental\n{got}"
                );
            }
            let g = &expected.graph;
            let ordered: std::collections::HashSet<_> = g.order.iter().collect();
            repair = g
                .nodes
                .iter()
                .find(|n| !ordered.contains(&n.id))
                .map(|n| n.file.to_string());
            match how {
                Planned::Incremental {
                    reused: r,
                    in_place: p,
                    ..
                } => {
                    incremental += 1;
                    reused += r;
                    in_place += usize::from(p);
                }
                Planned::Cold(why) => *cold.entry(why).or_default() += 1,
            }
            memo.keep(ws);
        }
        eprintln!(
            "{incremental} incremental plans ({in_place} in place) reusing {reused} units; cold: {cold:?}"
        );
        // Most steps were planned incrementally, reusing units; the rest
        // fell back for the reasons the memo cannot follow.
        assert!(
            incremental >= 150,
            "{incremental} incremental; cold: {cold:?}"
        );
        assert!(
            reused >= incremental * 2,
            "{reused} units reused in {incremental} plans"
        );
        assert!(cold.len() >= 2, "{cold:?}");
        // Both ways: the graph patched in place, and moved and relinked.
        assert!(
            in_place >= 30 && incremental - in_place >= 30,
            "{in_place} in place"
        );
    }
}
