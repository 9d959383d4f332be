//! The resolved DAG: nodes after includes, mounts and templates, with their
//! dependencies linked, and the topological order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::directive::Assert;
use super::path::RepoPath;

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// Where a directive or a part of a node came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: RepoPath,
    pub line: u32,
    /// The 1-based column where the directive's argument starts (the
    /// query of an `@assert sql:`), for errors inside it; 0 when unknown.
    pub column: u32,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What computes a node's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A built-in in-process engine (`sqlite`).
    Engine(String),
    /// A command template run on the body written to a script file.
    Command(String),
    /// A `.csv` file in the repository: the table is the file itself.
    Static,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Engine(e) => write!(f, "engine {e}"),
            Action::Command(c) => write!(f, "command `{c}`"),
            Action::Static => f.write_str("static table"),
        }
    }
}

/// A node's action and the file that defined it.
#[derive(Debug, Clone)]
pub struct ResolvedAction {
    pub action: Action,
    /// The action file (e.g. `action/sql/sqlite`) or the node's own file.
    pub defined_in: RepoPath,
    /// True when it came from the file extension, not an `@include`.
    pub by_extension: bool,
}

/// A parameter's effective value and the directive that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamValue {
    pub value: String,
    pub origin: Origin,
}

/// A linked input table.
#[derive(Debug, Clone)]
pub struct Dep {
    /// The namespace directory the dependency lives in.
    pub dir: RepoPath,
    /// The dependency's node name, which is also its table name inside
    /// the node.
    pub name: String,
    /// `None` when the dependency is missing (a diagnostic was emitted).
    pub node: Option<NodeId>,
    pub origin: Origin,
}

impl Dep {
    /// The table name inside the node: the dependency's node name.
    pub fn table(&self) -> &str {
        &self.name
    }

    /// The dependency as written from a node of `from`: `./NAME` in the
    /// same namespace, `/dir/NAME` otherwise.
    pub fn reference(&self, from: &RepoPath) -> String {
        if &self.dir == from {
            format!("./{}", self.name)
        } else {
            format!("/{}/{}", self.dir, self.name)
        }
    }
}

/// An external input under the data root.
#[derive(Debug, Clone)]
pub struct SourceRef {
    /// Data-root-relative path after templates.
    pub path: RepoPath,
    /// The table name inside the node (the file stem).
    pub table: String,
    pub origin: Origin,
}

/// A fully resolved node.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    /// The namespace (pipeline) directory the node is resolved in.
    pub dir: RepoPath,
    pub name: String,
    /// The node file.
    pub file: RepoPath,
    /// Mount files through which the node joined `dir`, outermost first;
    /// empty for the pipeline's own files.
    pub via: Vec<RepoPath>,
    /// The mounted node file this node overrides, if any.
    pub overrides: Option<RepoPath>,
    /// Files inherited with `@include`, in the order applied.
    pub includes: Vec<RepoPath>,
    pub action: ResolvedAction,
    /// The body after templates (shared with the file's parsed body when
    /// no template changed it).
    pub body: Arc<str>,
    /// The file the body came from.
    pub body_from: RepoPath,
    /// For each line of `body`, the 1-based line of `body_from` it stands
    /// on (templates never add lines: a parameter value is one line).
    pub body_lines: Arc<[u32]>,
    /// Where templates put values in `body`, to place an offset of `body`
    /// on the column of the text as written.
    pub body_map: super::template::TemplateMap,
    pub params: BTreeMap<String, ParamValue>,
    pub deps: Vec<Dep>,
    pub sources: Vec<SourceRef>,
    pub key: Option<(Vec<String>, Origin)>,
    pub asserts: Vec<(Assert, Origin)>,
    /// Where templates put values in each `@assert sql:` query, by its
    /// index in `asserts` (none for a query without templates).
    pub assert_maps: BTreeMap<usize, super::template::TemplateMap>,
    pub timeout: Option<(u64, Origin)>,
}

impl Node {
    /// The line of `body_from` and the 1-based column (in characters) of
    /// byte `offset` of `body`, in the text as written (before
    /// templates).
    pub fn body_position(&self, offset: usize) -> (u32, usize) {
        let (line, column) = self.body_map.line_column(&self.body, offset);
        (self.body_file_line(line), column)
    }

    /// The 0-based line and 1-based column (in characters) of byte
    /// `offset` of `query`, the `index`-th assertion's query after
    /// templates, in the query as written.
    pub fn assert_position(&self, index: usize, query: &str, offset: usize) -> (usize, usize) {
        match self.assert_maps.get(&index) {
            Some(map) => map.line_column(query, offset),
            None => super::template::TemplateMap::default().line_column(query, offset),
        }
    }

    /// The line of `body_from` that the body's `index`-th line (0-based)
    /// came from.
    pub fn body_file_line(&self, index: usize) -> u32 {
        self.body_lines
            .get(index)
            .or(self.body_lines.last())
            .copied()
            .unwrap_or(1)
    }

    /// The node as seen from pipeline `pipeline`: its bare name when it lives
    /// there, else `/dir/name`.
    pub fn display_name(&self, pipeline: &RepoPath) -> String {
        if &self.dir == pipeline {
            self.name.clone()
        } else {
            format!("/{}/{}", self.dir, self.name)
        }
    }
}

/// The nodes each directory's pipeline runs.
type Members = HashMap<RepoPath, Vec<NodeId>>;

/// The resolved repository.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub index: HashMap<(RepoPath, String), NodeId>,
    /// The configured pipelines, sorted.
    pub pipelines: Vec<RepoPath>,
    /// All nodes, dependencies first. Nodes on a cycle are left out.
    pub order: Vec<NodeId>,
    /// `pipeline_nodes` of every pipeline, computed on first use (for the
    /// graph of that many nodes): a run asks for each pipeline's nodes
    /// several times, and each walk is otherwise O(all nodes).
    members: Mutex<Option<(usize, Arc<Members>)>>,
}

impl Drop for Graph {
    /// A big graph is freed on another thread (see
    /// [`drop_aside`](super::resolve::drop_aside)): a command that is done
    /// with it exits without waiting.
    fn drop(&mut self) {
        let size = self.nodes.len();
        if size >= super::resolve::DROP_ASIDE_NODES {
            let nodes = std::mem::take(&mut self.nodes);
            let index = std::mem::take(&mut self.index);
            super::resolve::drop_aside((nodes, index), size);
        }
    }
}

impl Graph {
    /// Forgets [`Graph::pipeline_nodes`]' memo, after links changed.
    pub(crate) fn forget_members(&mut self) {
        *self
            .members
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn lookup(&self, dir: &RepoPath, name: &str) -> Option<&Node> {
        self.index
            .get(&(dir.clone(), name.to_string()))
            .map(|id| &self.nodes[*id])
    }

    /// The nodes a pipeline runs: its own namespace and every node of
    /// another directory it reaches, dependencies first.
    pub fn pipeline_nodes(&self, pipeline: &RepoPath) -> Vec<NodeId> {
        let members = {
            let mut memo = self.members.lock().unwrap_or_else(PoisonError::into_inner);
            match &*memo {
                Some((n, m)) if *n == self.nodes.len() => Arc::clone(m),
                _ => {
                    let m = Arc::new(self.all_pipeline_nodes());
                    *memo = Some((self.nodes.len(), Arc::clone(&m)));
                    m
                }
            }
        };
        match members.get(pipeline) {
            Some(ids) => ids.clone(),
            None => self.walk_from(
                &[],
                pipeline,
                &self.order_positions(),
                &mut vec![false; self.nodes.len()],
            ),
        }
    }

    /// [`Self::pipeline_nodes`] of each directory that holds nodes.
    fn all_pipeline_nodes(&self) -> Members {
        let mut roots: HashMap<&RepoPath, Vec<NodeId>> = HashMap::new();
        for n in &self.nodes {
            roots.entry(&n.dir).or_default().push(n.id);
        }
        let pos = self.order_positions();
        // One visited mark per node, shared by the walks (each clears its own).
        let mut seen = vec![false; self.nodes.len()];
        roots
            .into_iter()
            .map(|(dir, ids)| (dir.clone(), self.walk_from(&ids, dir, &pos, &mut seen)))
            .collect()
    }

    /// The nodes reachable from `roots` (or, when empty, from the nodes of
    /// `dir`) through dependencies, in topological order. `seen` has a
    /// `false` per node, and is left so.
    fn walk_from(
        &self,
        roots: &[NodeId],
        dir: &RepoPath,
        pos: &[Option<usize>],
        seen: &mut [bool],
    ) -> Vec<NodeId> {
        let mut stack: Vec<NodeId> = if roots.is_empty() {
            self.nodes
                .iter()
                .filter(|n| &n.dir == dir)
                .map(|n| n.id)
                .collect()
        } else {
            roots.to_vec()
        };
        let mut wanted = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen[id] {
                seen[id] = true;
                wanted.push(id);
                stack.extend(self.nodes[id].deps.iter().filter_map(|d| d.node));
            }
        }
        for &id in &wanted {
            seen[id] = false;
        }
        // Sorted by topological position: nodes on a cycle have none.
        let mut ids: Vec<NodeId> = wanted
            .into_iter()
            .filter(|id| pos.get(*id).copied().flatten().is_some())
            .collect();
        ids.sort_by_key(|id| pos[*id]);
        ids
    }

    fn order_positions(&self) -> Vec<Option<usize>> {
        let mut pos = vec![None; self.nodes.len()];
        for (i, id) in self.order.iter().enumerate() {
            pos[*id] = Some(i);
        }
        pos
    }

    /// Topological order by Kahn's algorithm; returns the order and the
    /// nodes left over (on or below a cycle).
    pub(crate) fn topo_sort(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let n = self.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut dependents: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for node in &self.nodes {
            for dep in node.deps.iter().filter_map(|d| d.node) {
                indegree[node.id] += 1;
                dependents[dep].push(node.id);
            }
        }
        let mut ready: Vec<NodeId> = (0..n).filter(|i| indegree[*i] == 0).collect();
        ready.reverse();
        let mut order = Vec::with_capacity(n);
        while let Some(id) = ready.pop() {
            order.push(id);
            for &d in dependents[id].iter().rev() {
                indegree[d] -= 1;
                if indegree[d] == 0 {
                    ready.push(d);
                }
            }
        }
        let left = (0..n).filter(|i| indegree[*i] > 0).collect();
        (order, left)
    }

    /// Each distinct cycle among `left` (the nodes Kahn's algorithm could
    /// not order), as the list of nodes along it.
    pub(crate) fn find_cycles(&self, left: &[NodeId]) -> Vec<Vec<NodeId>> {
        let mut in_left = vec![false; self.nodes.len()];
        for &id in left {
            in_left[id] = true;
        }
        let mut done = vec![false; self.nodes.len()];
        let mut cycles = Vec::new();
        for &start in left {
            if done[start] {
                continue;
            }
            // Walk dependencies that are themselves left over: every such
            // node has one, so the walk must meet a cycle or a finished node.
            let mut path: Vec<NodeId> = Vec::new();
            let mut pos: HashMap<NodeId, usize> = HashMap::new();
            let mut cur = start;
            loop {
                if done[cur] {
                    break;
                }
                if let Some(&i) = pos.get(&cur) {
                    cycles.push(path[i..].to_vec());
                    break;
                }
                pos.insert(cur, path.len());
                path.push(cur);
                let next = self.nodes[cur]
                    .deps
                    .iter()
                    .filter_map(|d| d.node)
                    .find(|d| in_left[*d]);
                match next {
                    Some(n) => cur = n,
                    None => break,
                }
            }
            for id in path {
                done[id] = true;
            }
        }
        cycles
    }
}
