//! The incremental plan: the repository resolved unit by unit (a unit is
//! a directory whose nodes are resolved: each pipeline, and each directory
//! a `@depend /dir/NAME` reaches), each unit with the trace of what it read
//! (paths whose kind or bytes it read, directories it listed, through the
//! templates and namespaces it shared with other units). For the next
//! commit, a unit none of whose reads changed is reused as it was: its
//! nodes, diagnostics and parameter settings; the others are resolved
//! again, then the whole graph is linked and ordered again.
//!
//! Equal to [`compile`](super::compile) by construction: units are visited
//! in the same order, and a template or namespace memoised in one unit and
//! resolved afresh in another is the same value, except where a cycle or a
//! too-deep chain was reported (what it holds then depends on where it was
//! first reached): then [`compile_units`] gives up and the caller resolves
//! cold. The tests compare both after every step of a random history.

use super::*;

/// What a tree entry is, on either side of a [`TreeChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Link,
    /// A submodule, or a name no checkout can hold.
    Other,
}

/// One entry that differs between two trees (a directory whose entries
/// differ is not itself a change: its changed entries are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeChange {
    pub path: RepoPath,
    /// `None` when added.
    pub old: Option<EntryType>,
    /// `None` when deleted.
    pub new: Option<EntryType>,
}

/// The changes between two commits, as the traces are checked against
/// them.
#[derive(Debug, Default)]
pub struct Changes {
    /// Entries added, deleted, with new bytes or of a new kind, sorted; all
    /// that lies below one of them changed too.
    touched: Vec<RepoPath>,
    /// Directories that gained or lost an entry, or one whose kind changed.
    relisted: HashSet<RepoPath>,
}

impl Changes {
    /// The changes of a tree diff; `Err` says why they cannot be followed
    /// incrementally (a symlink, `.gitattributes`), and the plan is cold.
    pub fn new(list: &[TreeChange]) -> Result<Changes, String> {
        let mut out = Changes::default();
        for c in list {
            if c.old == Some(EntryType::Link) || c.new == Some(EntryType::Link) {
                return Err(format!("the symlink {} changed", c.path));
            }
            if c.path.file_name() == ".gitattributes" {
                return Err(format!("{} changed", c.path));
            }
            if c.old == Some(EntryType::Dir) && c.new == Some(EntryType::Dir) {
                continue;
            }
            if !(c.old == Some(EntryType::File) && c.new == Some(EntryType::File)) {
                out.relisted.insert(c.path.parent());
            }
            out.touched.push(c.path.clone());
        }
        out.touched.sort();
        out.touched.dedup();
        Ok(out)
    }

    /// How many entries changed.
    pub fn len(&self) -> usize {
        self.touched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }
}

/// True when `sorted` holds `x` or a path below it.
fn hit(sorted: &[RepoPath], x: &RepoPath) -> bool {
    let i = sorted.partition_point(|p| p.as_str() < x.as_str());
    if sorted.get(i) == Some(x) {
        return true;
    }
    let below = format!("{x}/");
    let j = sorted.partition_point(|p| p.as_str() < below.as_str());
    sorted
        .get(j)
        .is_some_and(|p| p.as_str().starts_with(below.as_str()))
}

/// One directory's resolution.
#[derive(Debug)]
struct Unit {
    dir: RepoPath,
    /// Sorted and deduplicated reads.
    trace: Trace,
    /// The directories its `@depend /dir/NAME` put on the queue, in order.
    pushes: Vec<RepoPath>,
    namespace: Option<Arc<Namespace>>,
    /// How many nodes it holds (consecutive in the graph).
    len: usize,
    /// Its nodes' missing dependencies, found when linking.
    link_diags: Vec<Diagnostic>,
}

impl Unit {
    fn dirty(&self, changes: &Changes) -> bool {
        changes
            .touched
            .iter()
            .any(|x| hit(&self.trace.entries, x) || hit(&self.trace.listings, x))
            || self
                .trace
                .listings
                .iter()
                .any(|d| changes.relisted.contains(d))
    }
}

/// A resolved repository unit by unit, in graph order, kept for the next
/// plan beside its [`Graph`].
#[derive(Debug, Default)]
pub struct Units {
    units: Vec<Unit>,
}

impl Units {
    /// How many nodes the units hold: the graph they go with has as many.
    pub fn nodes(&self) -> usize {
        self.units.iter().map(|u| u.len).sum()
    }
}

/// The result of [`compile_units`].
#[derive(Debug)]
pub struct Incremental {
    pub graph: Graph,
    pub diagnostics: Vec<Diagnostic>,
    pub units: Units,
    /// For each node, the id of the node of the same directory and name in
    /// the previous graph, if there was one.
    pub previous: Vec<Option<NodeId>>,
    /// For each node, true when it is the previous node unchanged (its
    /// unit's reads did not change).
    pub reused: Vec<bool>,
    /// Units resolved afresh and reused.
    pub resolved_units: usize,
    pub reused_units: usize,
    /// True when the previous graph was kept and patched in place (every
    /// unit where it was, with the same node names).
    pub in_place: bool,
}

/// How the walk met a unit of the new graph.
enum Step {
    /// Reused: the previous unit of that index.
    Kept(usize),
    /// Resolved again, with the previous unit of the same directory.
    Resolved(Box<Unit>, Vec<Node>, Option<usize>),
}

/// Resolves `pipelines` as [`compile`](super::compile) does, unit by unit
/// with traces; with `previous` (the last commit's units and graph, and the
/// changes since), the units whose reads did not change are reused.
/// `None` when a cycle or a too-deep chain was reported: then the result
/// depends on the order things were reached in, and only a cold
/// [`compile`](super::compile) says what it is.
pub fn compile_units(
    vfs: &dyn Vfs,
    pipelines: &[RepoPath],
    previous: Option<(Units, Graph, &Changes)>,
) -> Option<Incremental> {
    let (old_units, old_graph, changes) = match previous {
        Some((units, graph, changes)) if units.nodes() == graph.nodes.len() => {
            (units.units, Some(graph), Some(changes))
        }
        _ => (Vec::new(), None, None),
    };
    let mut firsts = Vec::with_capacity(old_units.len());
    let mut first = 0;
    for u in &old_units {
        firsts.push(first);
        first += u.len;
    }
    let dirty: Vec<bool> = old_units
        .iter()
        .map(|u| changes.is_some_and(|c| u.dirty(c)))
        .collect();
    let by_dir: HashMap<&RepoPath, usize> = old_units
        .iter()
        .enumerate()
        .map(|(i, u)| (&u.dir, i))
        .collect();

    // The units in the order `compile` visits them, reused or resolved.
    let mut c = Compiler::new(vfs);
    c.diags.frames = Some(RefCell::new(Vec::new()));
    let mut queue: VecDeque<RepoPath> = pipelines.iter().cloned().collect();
    let mut visited: HashSet<RepoPath> = HashSet::new();
    let mut steps: Vec<Step> = Vec::new();
    let (mut resolved_units, mut reused_units) = (0, 0);
    while let Some(dir) = queue.pop_front() {
        if !visited.insert(dir.clone()) {
            continue;
        }
        match by_dir.get(&dir) {
            Some(&k) if !dirty[k] => {
                reused_units += 1;
                queue.extend(old_units[k].pushes.iter().cloned());
                steps.push(Step::Kept(k));
            }
            old => {
                resolved_units += 1;
                let (unit, nodes) = resolve_unit(&mut c, &dir);
                queue.extend(unit.pushes.iter().cloned());
                steps.push(Step::Resolved(Box::new(unit), nodes, old.copied()));
            }
        }
    }
    drop(by_dir);
    if c.diags.context_sensitive {
        return None;
    }
    drop_aside(
        (c.parsed, c.templates, c.namespaces, c.template_traces),
        DROP_ASIDE_NODES,
    );

    // Every unit where it was, holding nodes of the same names (an edit
    // inside files): the node ids stay, so the previous graph is kept and
    // only the resolved units' nodes are replaced and linked.
    let same_shape = old_graph.as_ref().is_some_and(|g| {
        g.order.len() == g.nodes.len()
            && steps.len() == old_units.len()
            && steps.iter().enumerate().all(|(i, step)| match step {
                Step::Kept(k) => *k == i,
                Step::Resolved(unit, nodes, Some(k)) => {
                    *k == i
                        && unit.namespace.is_some() == old_units[i].namespace.is_some()
                        && nodes.len() == old_units[i].len
                        && nodes
                            .iter()
                            .zip(&g.nodes[firsts[i]..])
                            .all(|(a, b)| a.name == b.name)
                }
                Step::Resolved(_, _, None) => false,
            })
    });
    let mut old_units: Vec<Option<Unit>> = old_units.into_iter().map(Some).collect();
    let mut l = Compiler::new(vfs);
    l.diags.frames = Some(RefCell::new(Vec::new()));
    let mut units: Vec<Unit> = Vec::with_capacity(steps.len());
    let mut fresh: Vec<bool> = Vec::with_capacity(steps.len());
    let mut previous;
    let mut reused;
    let mut trash: Vec<Node> = Vec::new();
    // The replaced nodes' previous links, to tell whether the order holds.
    let mut old_links: Vec<(NodeId, Vec<Option<NodeId>>)> = Vec::new();
    match (same_shape, old_graph) {
        (true, Some(mut graph)) => {
            let n = graph.nodes.len();
            previous = (0..n).map(Some).collect::<Vec<_>>();
            reused = vec![true; n];
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Kept(k) => {
                        units.extend(old_units[k].take());
                        fresh.push(false);
                    }
                    Step::Resolved(unit, nodes, _) => {
                        for (j, mut node) in nodes.into_iter().enumerate() {
                            let id = firsts[i] + j;
                            node.id = id;
                            for d in &mut node.deps {
                                d.node = None;
                            }
                            reused[id] = false;
                            let old = std::mem::replace(&mut graph.nodes[id], node);
                            old_links.push((id, old.deps.iter().map(|d| d.node).collect()));
                            trash.push(old);
                        }
                        units.push(*unit);
                        fresh.push(true);
                    }
                }
            }
            graph.forget_members();
            l.graph = graph;
        }
        (_, old_graph) => {
            // Nodes moved in visiting order, numbered again, linked from
            // scratch.
            let mut names: HashMap<usize, HashMap<String, NodeId>> = HashMap::new();
            let mut old_nodes: Vec<Option<Vec<Node>>> = Vec::new();
            if let Some(mut g) = old_graph {
                for step in &steps {
                    if let Step::Resolved(_, _, Some(k)) = step {
                        let range =
                            firsts[*k]..firsts[*k] + old_units[*k].as_ref().map_or(0, |u| u.len);
                        names.insert(
                            *k,
                            g.nodes[range.clone()]
                                .iter()
                                .zip(range)
                                .map(|(n, id)| (n.name.clone(), id))
                                .collect(),
                        );
                    }
                }
                let mut all = std::mem::take(&mut g.nodes).into_iter();
                for u in &old_units {
                    let len = u.as_ref().map_or(0, |u| u.len);
                    old_nodes.push(Some(all.by_ref().take(len).collect()));
                }
                drop_aside(std::mem::take(&mut g.index), DROP_ASIDE_NODES);
            }
            let total = steps
                .iter()
                .map(|s| match s {
                    Step::Kept(k) => old_units[*k].as_ref().map_or(0, |u| u.len),
                    Step::Resolved(_, nodes, _) => nodes.len(),
                })
                .sum();
            let mut graph = Graph::default();
            graph.nodes.reserve(total);
            graph.index.reserve(total);
            previous = Vec::with_capacity(total);
            reused = Vec::with_capacity(total);
            for step in steps {
                let (unit, nodes, from) = match step {
                    Step::Kept(k) => {
                        let Some(unit) = old_units[k].take() else {
                            continue;
                        };
                        let nodes = old_nodes[k].take().unwrap_or_default();
                        (unit, nodes, Ok(firsts[k]))
                    }
                    Step::Resolved(unit, nodes, k) => {
                        let names = k.and_then(|k| names.remove(&k)).unwrap_or_default();
                        (*unit, nodes, Err(names))
                    }
                };
                fresh.push(from.is_err());
                for (i, mut node) in nodes.into_iter().enumerate() {
                    node.id = graph.nodes.len();
                    for d in &mut node.deps {
                        d.node = None;
                    }
                    match &from {
                        Ok(first) => {
                            previous.push(Some(first + i));
                            reused.push(true);
                        }
                        Err(names) => {
                            previous.push(names.get(&node.name).copied());
                            reused.push(false);
                        }
                    }
                    graph
                        .index
                        .insert((node.dir.clone(), node.name.clone()), node.id);
                    graph.nodes.push(node);
                }
                units.push(unit);
            }
            trash.extend(old_nodes.into_iter().flatten().flatten());
            l.graph = graph;
        }
    }
    let trashed = trash.len();
    drop_aside(trash, trashed);

    // Linked: the resolved units' nodes (all of them when the shape
    // changed), each unit's missing dependencies kept with it.
    for unit in &units {
        l.namespaces
            .insert(unit.dir.clone(), unit.namespace.clone());
    }
    let relink_all = !same_shape;
    let mut first = 0;
    for (unit, fresh) in units.iter_mut().zip(&fresh) {
        let range = first..first + unit.len;
        first += unit.len;
        if *fresh || relink_all {
            l.diags.open();
            for id in range {
                l.link_node(id);
            }
            let mut said = l.diags.close().map(|t| t.diags).unwrap_or_default();
            said.sort();
            said.dedup();
            unit.link_diags = said;
        } else {
            for d in &unit.link_diags {
                l.diags.set.insert(d.clone());
            }
        }
        for d in &unit.trace.diags {
            l.diags.set.insert(d.clone());
        }
        l.settings_made.extend(unit.trace.settings.iter().cloned());
        l.used_settings.extend(unit.trace.used.iter().cloned());
        l.wanted_names.extend(unit.trace.wanted.iter().cloned());
    }
    let moved = old_links.iter().any(|(id, old)| {
        !l.graph.nodes[*id]
            .deps
            .iter()
            .map(|d| d.node)
            .eq(old.iter().copied())
    });
    l.diags.frames = None;
    if relink_all || moved {
        l.order();
    }
    l.unused_settings();
    let mut pipelines = pipelines.to_vec();
    pipelines.sort();
    pipelines.dedup();
    l.graph.pipelines = pipelines;
    let Compiler { graph, diags, .. } = l;
    Some(Incremental {
        graph,
        diagnostics: diags.set.into_vec(),
        units: Units { units },
        previous,
        reused,
        resolved_units,
        reused_units,
        in_place: same_shape,
    })
}

/// Resolves the unit of `dir` in `c` (which tracks): its namespace and
/// nodes, with everything read on the way.
fn resolve_unit(c: &mut Compiler, dir: &RepoPath) -> (Unit, Vec<Node>) {
    c.diags.open();
    let mut queue = VecDeque::new();
    let namespace = c.namespace(dir);
    if let Some(ns) = &namespace {
        for entry in ns.entries.values() {
            c.add_node(dir, entry, &mut queue);
        }
    }
    let mut trace = c.diags.close().unwrap_or_default();
    for paths in [&mut trace.entries, &mut trace.listings] {
        paths.sort();
        paths.dedup();
    }
    trace.diags.sort();
    trace.diags.dedup();
    trace.wanted.sort();
    trace.wanted.dedup();
    let nodes = std::mem::take(&mut c.graph.nodes);
    c.graph.index.clear();
    let unit = Unit {
        dir: dir.clone(),
        trace,
        pushes: queue.into(),
        namespace,
        len: nodes.len(),
        link_diags: Vec::new(),
    };
    (unit, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::vfs::MemVfs;

    fn p(s: &str) -> RepoPath {
        RepoPath::parse(s).unwrap()
    }

    #[test]
    fn hits_a_path_and_what_lies_below_it() {
        let sorted = vec![p("a/b"), p("a/b-c"), p("a/b.sql"), p("a/b/c.sql"), p("z")];
        assert!(hit(&sorted, &p("a/b")));
        assert!(hit(&sorted, &p("a")));
        assert!(hit(&sorted, &p("a/b/c.sql")));
        assert!(!hit(&sorted, &p("a/b/d.sql")));
        assert!(!hit(&sorted, &p("a/c")));
        assert!(!hit(&[p("a/b-c")], &p("a/b")));
        assert!(hit(&[p("a/b-c"), p("a/b/x")], &p("a/b")));
    }

    #[test]
    fn symlinks_and_attributes_are_not_followed() {
        let change = |path: &str, old, new| TreeChange {
            path: p(path),
            old,
            new,
        };
        use EntryType::*;
        assert!(Changes::new(&[change("a/l", None, Some(Link))]).is_err());
        assert!(Changes::new(&[change("a/.gitattributes", Some(File), Some(File))]).is_err());
        let c = Changes::new(&[
            change("a", Some(Dir), Some(Dir)),
            change("a/x.sql", Some(File), Some(File)),
            change("a/y.sql", None, Some(File)),
        ])
        .unwrap();
        assert_eq!(c.touched, vec![p("a/x.sql"), p("a/y.sql")]);
        assert_eq!(c.relisted, HashSet::from([p("a")]));
    }

    #[test]
    fn cold_units_equal_compile() {
        let mut v = MemVfs::new();
        v.insert("p/a.sql", "SELECT 1 AS x\n")
            .insert(
                "p/b.sql",
                "-- @depend ./a\n-- @depend /q/c\nSELECT * FROM a\n",
            )
            .insert("q/c.sql", "SELECT 2 AS y\n")
            .insert("p/bad.sql", "-- @depend ./nope\nSELECT 1\n");
        let (graph, diags) = compile(&v, &[p("p")]);
        let inc = compile_units(&v, &[p("p")], None).unwrap();
        assert_eq!(
            format!("{:?}", graph.nodes),
            format!("{:?}", inc.graph.nodes)
        );
        assert_eq!(graph.order, inc.graph.order);
        assert_eq!(diags, inc.diagnostics);
        assert!(!diags.is_empty());
        assert_eq!(inc.resolved_units, 2);
    }
}
