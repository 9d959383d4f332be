//! Definition hashes (DESIGN §2): static, computed without running
//! anything, from the resolved node and its dependencies' hashes.
//!
//! Two digests per node:
//! - the *local hash* covers the node's own resolved definition (action,
//!   body after includes and templates, key, assertions, parameters, the
//!   names of its inputs and the digests of its sources);
//! - the *definition hash* adds each dependency's definition hash.
//!
//! The plan calls a node `modified` when its local hash changed and
//! `affected` when only its definition hash did. At run time the task key
//! is the local hash combined with each dependency's *output* digest
//! instead, which gives early cutoff.
//!
//! Not covered, on purpose: the node's path and pipeline (identical nodes
//! in two clinics share a hash), `@timeout` (it decides whether a run
//! finishes, not what it produces). Comments are not special: a
//! non-directive comment in the header stays in the body and is hashed.

use std::collections::{BTreeMap, HashMap};

use super::digest::{Digest, FieldHasher};
use crate::pipeline::graph::{Action, Graph, Node, NodeId};
use crate::pipeline::path::RepoPath;

/// Bumped whenever the encoding below changes, so that no old cache entry
/// is ever served for a different meaning.
pub const FORMAT_VERSION: &str = "sluice-definition/1";

/// What hashing needs from outside the graph.
#[derive(Debug, Default, Clone)]
pub struct HashContext {
    /// Digest of each data-root-relative source path.
    pub sources: HashMap<RepoPath, Digest>,
    /// Version of each built-in engine (e.g. `sqlite` -> `3.46.0`) and of
    /// each command action's program (`command:python3` -> `Python 3.11.7`).
    pub engine_versions: BTreeMap<String, String>,
}

/// The hashes of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeHashes {
    pub local: Digest,
    pub definition: Digest,
}

/// The canonical fields of a node's own definition: the explicit cache-key
/// struct. Every field is hashed; a unit test per field shows it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalKey<'a> {
    pub action_kind: &'static str,
    pub action_text: &'a str,
    pub engine_version: &'a str,
    pub body: &'a str,
    pub key: &'a [String],
    pub asserts: Vec<String>,
    pub params: Vec<(&'a str, &'a str)>,
    /// `(table, reference)` for each dependency, sorted by table.
    pub inputs: Vec<(&'a str, String)>,
    /// `(table, digest)` for each source, sorted by table.
    pub sources: Vec<(&'a str, Digest)>,
}

impl LocalKey<'_> {
    pub fn digest(&self) -> Digest {
        let mut h = FieldHasher::new(FORMAT_VERSION);
        h.field_str("action.kind", self.action_kind)
            .field_str("action.text", self.action_text)
            .field_str("action.version", self.engine_version)
            .field_str("body", self.body);
        h.count("key", self.key.len());
        for k in self.key {
            h.field_str("key.col", k);
        }
        h.count("asserts", self.asserts.len());
        for a in &self.asserts {
            h.field_str("assert", a);
        }
        h.count("params", self.params.len());
        for (k, v) in &self.params {
            h.field_str("param.key", k).field_str("param.value", v);
        }
        h.count("inputs", self.inputs.len());
        for (t, r) in &self.inputs {
            h.field_str("input.table", t).field_str("input.ref", r);
        }
        h.count("sources", self.sources.len());
        for (t, d) in &self.sources {
            h.field_str("source.table", t)
                .field_digest("source.digest", d);
        }
        h.finish()
    }
}

impl LocalKey<'_> {
    /// A digest per part, named for people: what `sluice why` compares to
    /// say which part of a definition changed.
    pub fn parts(&self) -> Vec<(String, Digest)> {
        let one = |f: &dyn Fn(&mut FieldHasher)| {
            let mut h = FieldHasher::new(FORMAT_VERSION);
            f(&mut h);
            h.finish()
        };
        let mut out = vec![
            (
                "action".to_string(),
                one(&|h| {
                    h.field_str("k", self.action_kind)
                        .field_str("t", self.action_text)
                        .field_str("v", self.engine_version);
                }),
            ),
            (
                "body".to_string(),
                one(&|h| {
                    h.field_str("b", self.body);
                }),
            ),
            (
                "key".to_string(),
                one(&|h| {
                    for k in self.key {
                        h.field_str("k", k);
                    }
                }),
            ),
            (
                "asserts".to_string(),
                one(&|h| {
                    for a in &self.asserts {
                        h.field_str("a", a);
                    }
                }),
            ),
        ];
        for (k, v) in &self.params {
            out.push((format!("param {k}"), Digest::of(v.as_bytes())));
        }
        for (t, r) in &self.inputs {
            out.push((format!("input {t}"), Digest::of(r.as_bytes())));
        }
        for (t, d) in &self.sources {
            out.push((format!("source {t}"), *d));
        }
        out
    }
}

/// Combines a local hash with one digest per input table: with the
/// inputs' definition hashes this is the definition hash; with their
/// output digests it is the task key.
pub fn combine(domain: &str, local: &Digest, inputs: &mut [(&str, Digest)]) -> Digest {
    inputs.sort();
    let mut h = FieldHasher::new(FORMAT_VERSION);
    h.field_str("kind", domain).field_digest("local", local);
    h.count("inputs", inputs.len());
    for (t, d) in inputs.iter() {
        h.field_str("input.table", t)
            .field_digest("input.digest", d);
    }
    h.finish()
}

/// The local key of a node, or the first source whose digest is unknown.
pub fn local_key<'a>(node: &'a Node, ctx: &'a HashContext) -> Result<LocalKey<'a>, &'a RepoPath> {
    let (action_kind, action_text, engine_version) = match &node.action.action {
        Action::Engine(e) => (
            "engine",
            e.as_str(),
            ctx.engine_versions.get(e).map(String::as_str).unwrap_or(""),
        ),
        Action::Command(c) => (
            "command",
            c.as_str(),
            c.split_whitespace()
                .next()
                .and_then(|p| ctx.engine_versions.get(&format!("command:{p}")))
                .map(String::as_str)
                .unwrap_or(""),
        ),
        Action::Static => ("static", "", ""),
    };
    let mut inputs: Vec<(&str, String)> = node
        .deps
        .iter()
        .map(|d| (d.table(), d.reference(&node.dir)))
        .collect();
    inputs.sort();
    let mut sources = Vec::with_capacity(node.sources.len());
    for s in &node.sources {
        let d = ctx.sources.get(&s.path).ok_or(&s.path)?;
        sources.push((s.table.as_str(), *d));
    }
    sources.sort();
    Ok(LocalKey {
        action_kind,
        action_text,
        engine_version,
        body: &node.body,
        key: node.key.as_ref().map(|(k, _)| k.as_slice()).unwrap_or(&[]),
        asserts: node.asserts.iter().map(|(a, _)| a.to_string()).collect(),
        params: node
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_str()))
            .collect(),
        inputs,
        sources,
    })
}

/// Hashes every node in topological order. `None` for a node whose hash
/// cannot be known: a source digest is missing, or a dependency is missing,
/// cyclic or itself unknown.
pub fn definition_hashes(graph: &Graph, ctx: &HashContext) -> Vec<Option<NodeHashes>> {
    // The local hashes (the bodies: most of the work) need nothing from
    // other nodes, so they are computed on every core; the definition
    // hashes then follow the order, each from its inputs'.
    let locals = local_digests(graph, ctx);
    let mut out: Vec<Option<NodeHashes>> = vec![None; graph.nodes.len()];
    for &id in &graph.order {
        out[id] = locals[id].and_then(|local| recombined(&graph.nodes[id], &local, &out));
    }
    out
}

/// Below this many nodes, the local hashes are computed on one thread.
const PARALLEL_HASH_NODES: usize = 2048;

/// Each node's local hash; `None` when a source digest is unknown.
fn local_digests(graph: &Graph, ctx: &HashContext) -> Vec<Option<Digest>> {
    let one = |node: &Node| local_key(node, ctx).ok().map(|k| k.digest());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || graph.nodes.len() < PARALLEL_HASH_NODES {
        return graph.nodes.iter().map(one).collect();
    }
    let chunk = graph.nodes.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = graph
            .nodes
            .chunks(chunk)
            .map(|nodes| {
                let part = s.spawn(move || nodes.iter().map(one).collect::<Vec<_>>());
                (part, nodes.len())
            })
            .collect();
        parts
            .into_iter()
            // A hashing thread has no reason to panic; if one did, its
            // nodes are unknown rather than the plan aborted.
            .flat_map(|(part, len)| part.join().unwrap_or_else(|_| vec![None; len]))
            .collect()
    })
}

/// What the previous plan's hashes lend this one (the daemon's
/// incremental plan).
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// The previous graph's hashes, by its node ids.
    pub hashes: &'a [Option<NodeHashes>],
    pub ctx: &'a HashContext,
    /// For each node of this graph, the id of the node of the same
    /// directory and name in the previous one.
    pub ids: &'a [Option<NodeId>],
    /// For each node of this graph, true when it is the previous node
    /// unchanged (same action, body, parameters, inputs, sources).
    pub reused: &'a [bool],
    /// The previous graph's links, when this graph is the previous one
    /// patched in place (the same ids, and every reused node linked as
    /// before).
    pub links: Option<&'a Links>,
}

/// Each node's linked dependencies, packed: what the hashes of a graph
/// patched in place walk instead of the nodes themselves.
#[derive(Debug, Clone, Default)]
pub struct Links {
    start: Vec<u32>,
    to: Vec<u32>,
}

impl Links {
    pub fn of(graph: &Graph) -> Option<Links> {
        let mut start = Vec::with_capacity(graph.nodes.len() + 1);
        let mut to = Vec::new();
        for n in &graph.nodes {
            start.push(u32::try_from(to.len()).ok()?);
            for d in n.deps.iter().filter_map(|d| d.node) {
                to.push(u32::try_from(d).ok()?);
            }
        }
        start.push(u32::try_from(to.len()).ok()?);
        Some(Links { start, to })
    }

    fn of_node(&self, id: NodeId) -> &[u32] {
        match (self.start.get(id), self.start.get(id + 1)) {
            (Some(&a), Some(&b)) => self.to.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// A node's hashes from its unchanged local hash and its inputs'
/// definition hashes as `out` has them now; `None` when one is unknown.
fn recombined(node: &Node, local: &Digest, out: &[Option<NodeHashes>]) -> Option<NodeHashes> {
    let mut inputs = Vec::with_capacity(node.deps.len());
    for d in &node.deps {
        let h = d.node.and_then(|t| out[t])?;
        inputs.push((d.table(), h.definition));
    }
    Some(NodeHashes {
        local: *local,
        definition: combine("definition", local, &mut inputs),
    })
}

/// [`definition_hashes`], reusing the previous plan's hashes of the nodes
/// that did not change: a reused node over the same source digests and
/// engine versions keeps its local hash, and its definition hash too when
/// every input's definition hash is what it was. Equal to
/// [`definition_hashes`] (the tests compare them).
pub fn definition_hashes_since(
    graph: &Graph,
    ctx: &HashContext,
    prev: &Previous,
) -> Vec<Option<NodeHashes>> {
    let n = graph.nodes.len();
    if prev.ids.len() != n || prev.reused.len() != n {
        return definition_hashes(graph, ctx);
    }
    let versions_same = ctx.engine_versions == prev.ctx.engine_versions;
    if let Some(links) = prev.links
        && versions_same
        && ctx.sources == prev.ctx.sources
        && links.start.len() == n + 1
        && prev.hashes.len() == n
        && graph.order.len() == n
        && prev.ids.iter().enumerate().all(|(i, o)| *o == Some(i))
    {
        return patched_in_place(graph, ctx, prev, links);
    }
    let mut out: Vec<Option<NodeHashes>> = vec![None; n];
    // The definition hash is the previous one of the same node.
    let mut same: Vec<bool> = vec![false; n];
    for &id in &graph.order {
        let node = &graph.nodes[id];
        let old = prev.ids[id].and_then(|o| prev.hashes.get(o).copied().flatten());
        let local_same = versions_same
            && prev.reused[id]
            && node.sources.iter().all(|s| {
                ctx.sources
                    .get(&s.path)
                    .is_some_and(|d| prev.ctx.sources.get(&s.path) == Some(d))
            });
        let h = match old {
            Some(old)
                if local_same && node.deps.iter().all(|d| d.node.is_some_and(|t| same[t])) =>
            {
                Some(old)
            }
            Some(old) if local_same => recombined(node, &old.local, &out),
            _ => node_hashes(graph, id, ctx, &out),
        };
        same[id] = matches!((h, old), (Some(a), Some(b)) if a == b);
        out[id] = h;
    }
    out
}

/// [`definition_hashes_since`] of a graph patched in place, over the same
/// sources and engines, with no cycle: a reused node whose inputs kept
/// their hashes keeps its own, found through `links` without reading the
/// node.
fn patched_in_place(
    graph: &Graph,
    ctx: &HashContext,
    prev: &Previous,
    links: &Links,
) -> Vec<Option<NodeHashes>> {
    let mut out = prev.hashes.to_vec();
    let mut same = vec![true; out.len()];
    for &id in &graph.order {
        if prev.reused[id] && links.of_node(id).iter().all(|&t| same[t as usize]) {
            continue;
        }
        let h = match prev.hashes[id] {
            // An input's hash changed: the same local hash, combined again.
            Some(old) if prev.reused[id] => recombined(&graph.nodes[id], &old.local, &out),
            _ => node_hashes(graph, id, ctx, &out),
        };
        same[id] = h == prev.hashes[id];
        out[id] = h;
    }
    out
}

fn node_hashes(
    graph: &Graph,
    id: NodeId,
    ctx: &HashContext,
    done: &[Option<NodeHashes>],
) -> Option<NodeHashes> {
    let node = &graph.nodes[id];
    let local = local_key(node, ctx).ok()?.digest();
    let mut inputs = Vec::with_capacity(node.deps.len());
    for d in &node.deps {
        let h = done[d.node?]?;
        inputs.push((d.table(), h.definition));
    }
    let definition = combine("definition", &local, &mut inputs);
    Some(NodeHashes { local, definition })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LocalKey<'static> {
        LocalKey {
            action_kind: "engine",
            action_text: "sqlite",
            engine_version: "3.46.0",
            body: "SELECT 1",
            key: &[],
            asserts: vec!["rows > 0".into()],
            params: vec![("clinic", "a")],
            inputs: vec![("Patient", "./Patient".into())],
            sources: vec![("patients", Digest::of(b"x"))],
        }
    }

    /// Each field of the key changes the digest.
    #[test]
    fn every_field_matters() {
        static KEY: [String; 1] = [String::new()];
        let b = base().digest();
        let variants: Vec<(&str, LocalKey)> = vec![
            (
                "action_kind",
                LocalKey {
                    action_kind: "command",
                    ..base()
                },
            ),
            (
                "action_text",
                LocalKey {
                    action_text: "python3 {script}",
                    ..base()
                },
            ),
            (
                "engine_version",
                LocalKey {
                    engine_version: "3.47.0",
                    ..base()
                },
            ),
            (
                "body",
                LocalKey {
                    body: "SELECT 2",
                    ..base()
                },
            ),
            (
                "key",
                LocalKey {
                    key: &KEY,
                    ..base()
                },
            ),
            (
                "asserts",
                LocalKey {
                    asserts: vec![],
                    ..base()
                },
            ),
            (
                "params",
                LocalKey {
                    params: vec![("clinic", "b")],
                    ..base()
                },
            ),
            (
                "inputs",
                LocalKey {
                    inputs: vec![("Patient", "/x/Patient".into())],
                    ..base()
                },
            ),
            (
                "sources",
                LocalKey {
                    sources: vec![("patients", Digest::of(b"y"))],
                    ..base()
                },
            ),
        ];
        for (field, v) in variants {
            assert_ne!(v.digest(), b, "changing {field} must change the hash");
        }
        assert_eq!(base().digest(), b, "the hash is deterministic");
    }

    #[test]
    fn combine_depends_on_inputs_not_their_order() {
        let l = Digest::of(b"l");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let x = combine("definition", &l, &mut [("A", a), ("B", b)]);
        let y = combine("definition", &l, &mut [("B", b), ("A", a)]);
        assert_eq!(x, y);
        assert_ne!(x, combine("definition", &l, &mut [("A", b), ("B", a)]));
        assert_ne!(x, combine("task", &l, &mut [("A", a), ("B", b)]));
    }

    /// Past [`PARALLEL_HASH_NODES`], the local hashes are computed on
    /// several threads: the result is what one thread in order gives,
    /// node for node, an unknown source included.
    #[test]
    fn hashes_on_several_threads_equal_one_thread() {
        use crate::pipeline::{RepoPath, compile, vfs::MemVfs};
        let n = PARALLEL_HASH_NODES + 301;
        let mut v = MemVfs::new();
        v.insert("p/N0.sql", "-- @source data://s.csv\nSELECT * FROM s;\n");
        v.insert(
            "p/M.sql",
            "-- @source data://unknown.csv\nSELECT * FROM unknown;\n",
        );
        for i in 1..n {
            let text = format!(
                "-- @depend ./N{}\n-- @depend ./N{}\nSELECT {i} AS n;\n",
                i / 2,
                i - 1
            );
            v.insert(&format!("p/N{i}.sql"), text);
        }
        let (g, d) = compile(&v, &[RepoPath::parse("p").unwrap()]);
        assert!(d.is_empty(), "{d:?}");
        let mut ctx = HashContext::default();
        ctx.sources
            .insert(RepoPath::parse("s.csv").unwrap(), Digest::of(b"s"));
        let parallel = definition_hashes(&g, &ctx);
        let mut serial: Vec<Option<NodeHashes>> = vec![None; g.nodes.len()];
        for &id in &g.order {
            serial[id] = node_hashes(&g, id, &ctx, &serial);
        }
        assert_eq!(parallel, serial);
        assert_eq!(
            parallel.iter().filter(|h| h.is_none()).count(),
            1,
            "M's source is unknown"
        );
        let distinct: std::collections::HashSet<_> =
            parallel.iter().flatten().map(|h| h.definition).collect();
        assert_eq!(distinct.len(), n, "every known node has its own hashes");
    }

    /// From files to hashes: each directive that changes the result changes
    /// the node's local hash (so `local_key` copies every field of `Node`).
    #[test]
    fn every_directive_reaches_the_hash() {
        use crate::pipeline::{RepoPath, compile, vfs::MemVfs};
        let hash_of = |text: &str, sqlite: &str| {
            let mut v = MemVfs::new();
            v.insert("p/T.csv", "id\n1\n")
                .insert("p/U.csv", "id\n2\n")
                .insert("p/A.sql", text);
            let (g, d) = compile(&v, &[RepoPath::parse("p").unwrap()]);
            assert!(d.is_empty(), "{d:?}");
            let mut ctx = HashContext::default();
            ctx.engine_versions.insert("sqlite".into(), sqlite.into());
            ctx.sources
                .insert(RepoPath::parse("s.csv").unwrap(), Digest::of(b"s"));
            let a = g.lookup(&RepoPath::parse("p").unwrap(), "A").unwrap().id;
            definition_hashes(&g, &ctx)[a].unwrap().local
        };
        let base = "-- @depend ./T\n-- @key id\n-- @assert rows > 0\n-- @param k=1\n-- @timeout 5m\n-- @source data://s.csv\nSELECT id, '{{k}}' FROM T;\n";
        let b = hash_of(base, "3.1");
        assert_eq!(hash_of(base, "3.1"), b);
        for (what, text, ver) in [
            ("engine version", base, "3.2"),
            ("key", &base.replace("@key id", "@key id, x") as &str, "3.1"),
            ("assert", &base.replace("rows > 0", "rows > 1"), "3.1"),
            ("param", &base.replace("k=1", "k=2"), "3.1"),
            (
                "body",
                &base.replace("SELECT id", "SELECT id + 0 AS id"),
                "3.1",
            ),
            (
                "depend",
                &base.replace("-- @depend ./T\n", "-- @depend ./T\n-- @depend ./U\n"),
                "3.1",
            ),
        ] {
            assert_ne!(hash_of(text, ver), b, "{what} must change the hash");
        }
        // @timeout decides whether a run finishes, not what it produces.
        assert_eq!(hash_of(&base.replace("5m", "10m"), "3.1"), b);
    }
}
