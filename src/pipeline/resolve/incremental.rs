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
}

/// Where a unit of the new graph comes from.
enum From {
    /// Reused: its first node's id in the previous graph.
    Kept(usize),
    /// Resolved again: the previous ids of its nodes by name.
    Resolved(HashMap<String, NodeId>),
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
    struct Old {
        unit: Unit,
        nodes: Vec<Node>,
        first: usize,
        dirty: bool,
    }
    let mut old: HashMap<RepoPath, Old> = HashMap::new();
    if let Some((units, mut graph, changes)) = previous
        && units.nodes() == graph.nodes.len()
    {
        let mut nodes = std::mem::take(&mut graph.nodes).into_iter();
        let index = std::mem::take(&mut graph.index);
        drop_aside(index, DROP_ASIDE_NODES);
        let mut first = 0;
        for unit in units.units {
            let mine: Vec<Node> = nodes.by_ref().take(unit.len).collect();
            let dirty = unit.dirty(changes);
            let len = unit.len;
            old.insert(
                unit.dir.clone(),
                Old {
                    unit,
                    nodes: mine,
                    first,
                    dirty,
                },
            );
            first += len;
        }
    }

    let mut c = Compiler::new(vfs);
    c.diags.frames = Some(RefCell::new(Vec::new()));
    let mut queue: VecDeque<RepoPath> = pipelines.iter().cloned().collect();
    let mut visited: HashSet<RepoPath> = HashSet::new();
    let mut done: Vec<(Unit, Vec<Node>, From)> = Vec::new();
    let mut trash: Vec<Vec<Node>> = Vec::new();
    let (mut resolved_units, mut reused_units) = (0, 0);
    while let Some(dir) = queue.pop_front() {
        if !visited.insert(dir.clone()) {
            continue;
        }
        match old.remove(&dir) {
            Some(o) if !o.dirty => {
                reused_units += 1;
                queue.extend(o.unit.pushes.iter().cloned());
                done.push((o.unit, o.nodes, From::Kept(o.first)));
            }
            o => {
                resolved_units += 1;
                let (unit, nodes) = resolve_unit(&mut c, &dir);
                queue.extend(unit.pushes.iter().cloned());
                let mut names = HashMap::new();
                if let Some(o) = o {
                    for (i, n) in o.nodes.iter().enumerate() {
                        names.insert(n.name.clone(), o.first + i);
                    }
                    trash.push(o.nodes);
                }
                done.push((unit, nodes, From::Resolved(names)));
            }
        }
    }
    trash.extend(old.into_values().map(|o| o.nodes));
    let trashed = trash.iter().map(Vec::len).sum();
    drop_aside(trash, trashed);
    if c.diags.context_sensitive {
        return None;
    }
    drop_aside(
        (c.parsed, c.templates, c.namespaces, c.template_traces),
        DROP_ASIDE_NODES,
    );

    // The graph in visiting order, linked and ordered again.
    let total = done.iter().map(|(_, n, _)| n.len()).sum();
    let mut graph = Graph::default();
    graph.nodes.reserve(total);
    graph.index.reserve(total);
    let mut previous = Vec::with_capacity(total);
    let mut reused = Vec::with_capacity(total);
    let mut l = Compiler::new(vfs);
    let mut units = Vec::with_capacity(done.len());
    for (unit, nodes, from) in done {
        for (i, mut node) in nodes.into_iter().enumerate() {
            node.id = graph.nodes.len();
            for d in &mut node.deps {
                d.node = None;
            }
            match &from {
                From::Kept(first) => {
                    previous.push(Some(first + i));
                    reused.push(true);
                }
                From::Resolved(names) => {
                    previous.push(names.get(&node.name).copied());
                    reused.push(false);
                }
            }
            graph
                .index
                .insert((node.dir.clone(), node.name.clone()), node.id);
            graph.nodes.push(node);
        }
        for d in &unit.trace.diags {
            l.diags.set.insert(d.clone());
        }
        l.settings_made.extend(unit.trace.settings.iter().cloned());
        l.used_settings.extend(unit.trace.used.iter().cloned());
        l.wanted_names.extend(unit.trace.wanted.iter().cloned());
        l.namespaces
            .insert(unit.dir.clone(), unit.namespace.clone());
        units.push(unit);
    }
    l.graph = graph;
    l.link();
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
