//! Node selection the way dbt users expect (`--select`, `--exclude`): names,
//! `PIPELINE/NODE` addresses, globs, graph operators and `state:modified`.
//! Pure: it reads the graph and a change lookup, and returns node sets.
//!
//! A selection is made per pipeline: a node that two pipelines run (a
//! `/dir/NAME` input) can be selected in one and not the other, and the
//! graph operators walk the edges of each pipeline's own subgraph.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::pipeline::directive::nearest;
use crate::pipeline::glob::Glob;
use crate::pipeline::graph::{Graph, NodeId};
use crate::pipeline::path::RepoPath;

/// How far a graph operator walks: `Some(n)` levels, or `None` for all.
pub type Depth = Option<u32>;

/// One parsed selector, e.g. `2+clinics/*/Albumin+`.
#[derive(Debug, Clone)]
pub struct Selector {
    /// The text as written, for messages.
    pub text: String,
    /// `+X` / `N+X`: also the node's ancestors.
    pub ancestors: Option<Depth>,
    /// `X+` / `X+N`: also the node's descendants.
    pub descendants: Option<Depth>,
    method: Method,
}

#[derive(Debug, Clone)]
enum Method {
    /// A bare name or glob, matched against node names in every pipeline.
    Name(Glob),
    /// A pattern with a `/`, matched against a node's address `DIR/NAME`
    /// (its home directory and name) and against pipeline paths (all of a
    /// pipeline's nodes).
    Address(Glob),
    /// `PIPELINE//DIR/NAME`: a node as one pipeline runs it (how `sluice
    /// ls` prints inputs from another directory).
    InPipeline { pipeline: Glob, address: Glob },
    /// `state:modified`: the node's own definition changed against
    /// production, or it is new.
    Modified,
}

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("selector `{text}`: {message}")]
    Invalid { text: String, message: String },
    #[error("selector `{text}` matches no node{hint}")]
    NoMatch { text: String, hint: String },
}

impl Selector {
    /// Parses one selector. Several in one argument are separated by
    /// spaces; see [`parse_all`].
    pub fn parse(text: &str) -> Result<Selector, SelectError> {
        let invalid = |message: &str| SelectError::Invalid {
            text: text.to_string(),
            message: message.to_string(),
        };
        let mut core = text.trim();
        let mut ancestors = None;
        if let Some((before, after)) = core.split_once('+')
            && before.chars().all(|c| c.is_ascii_digit())
        {
            ancestors = Some(depth(before).ok_or_else(|| invalid("the depth is too large"))?);
            core = after;
        }
        let mut descendants = None;
        if let Some((before, after)) = core.rsplit_once('+')
            && after.chars().all(|c| c.is_ascii_digit())
        {
            descendants = Some(depth(after).ok_or_else(|| invalid("the depth is too large"))?);
            core = before;
        }
        if core.is_empty() {
            return Err(invalid(
                "no node named; write NAME, PIPELINE/NAME, a glob, or state:modified, with + before or after",
            ));
        }
        if core.contains('+') {
            return Err(invalid(
                "`+` goes only before or after the node (`+X`, `2+X`, `X+`, `X+1`)",
            ));
        }
        let method = if let Some((kind, value)) = core.split_once(':') {
            match (kind, value) {
                ("state", "modified") => Method::Modified,
                ("state", _) => {
                    return Err(invalid(
                        "the only state is `modified` (state:modified, state:modified+)",
                    ));
                }
                _ => {
                    return Err(invalid(&format!(
                        "unknown method `{kind}:`; write a node name, PIPELINE/NAME, a glob, or state:modified"
                    )));
                }
            }
        } else if let Some((pipeline, address)) = core.split_once("//") {
            Method::InPipeline {
                pipeline: glob(pipeline.trim_matches('/')).map_err(|e| invalid(&e))?,
                address: glob(address.trim_matches('/')).map_err(|e| invalid(&e))?,
            }
        } else if core.contains('/') {
            Method::Address(glob(core.trim_matches('/')).map_err(|e| invalid(&e))?)
        } else {
            Method::Name(glob(core).map_err(|e| invalid(&e))?)
        };
        Ok(Selector {
            text: text.trim().to_string(),
            ancestors,
            descendants,
            method,
        })
    }

    /// True for `state:` selectors, which need the plan against production.
    pub fn needs_state(&self) -> bool {
        matches!(self.method, Method::Modified)
    }

    fn matches(&self, graph: &Graph, pipeline: &RepoPath, id: NodeId, modified: bool) -> bool {
        let node = &graph.nodes[id];
        match &self.method {
            Method::Name(g) => g.is_match(&node.name),
            Method::Address(g) => {
                g.is_match(&format!("{}/{}", node.dir, node.name)) || g.is_match(pipeline.as_str())
            }
            Method::InPipeline {
                pipeline: p,
                address,
            } => {
                p.is_match(pipeline.as_str())
                    && address.is_match(&format!("{}/{}", node.dir, node.name))
            }
            Method::Modified => modified,
        }
    }
}

fn depth(digits: &str) -> Option<Depth> {
    if digits.is_empty() {
        return Some(None);
    }
    digits.parse::<u32>().ok().map(Some)
}

/// A glob where `*` and `?` stay inside one path segment, as in the
/// `pipelines` globs of sluice.toml.
fn glob(pattern: &str) -> Result<Glob, String> {
    Glob::new(pattern).map_err(|e| format!("bad glob: {e}"))
}

/// Parses each argument, splitting it on whitespace (`-s "a b"` is `-s a
/// -s b`).
pub fn parse_all(args: &[String]) -> Result<Vec<Selector>, SelectError> {
    let mut out = Vec::new();
    for a in args {
        if a.trim().is_empty() {
            // `-s "$UNSET"` must not quietly select everything.
            return Err(SelectError::Invalid {
                text: a.clone(),
                message: "empty; name a node, a glob or state:modified".into(),
            });
        }
        for s in a.split_whitespace() {
            out.push(Selector::parse(s)?);
        }
    }
    Ok(out)
}

/// The selected nodes of one pipeline, dependencies first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSelection {
    pub pipeline: RepoPath,
    pub nodes: Vec<NodeId>,
}

/// Selects nodes of `pipelines`: the union of what `select` names (every
/// node when it is empty), minus what `exclude` names. `modified(p, id)`
/// says whether a node is `state:modified` in pipeline `p`. A selector
/// that names nodes (not a `state:` one) and matches none is an error,
/// with the nearest name: a typo must not select nothing in silence.
pub fn select(
    graph: &Graph,
    pipelines: &[RepoPath],
    modified: &dyn Fn(&RepoPath, NodeId) -> bool,
    select: &[Selector],
    exclude: &[Selector],
) -> Result<Vec<PipelineSelection>, SelectError> {
    let mut matched = vec![false; select.len() + exclude.len()];
    let mut out = Vec::new();
    for p in pipelines {
        let sub = Subgraph::new(graph, p);
        let apply = |sels: &[Selector], matched: &mut [bool]| {
            let mut set = BTreeSet::new();
            for (i, s) in sels.iter().enumerate() {
                let seeds: Vec<NodeId> = sub
                    .ids
                    .iter()
                    .copied()
                    .filter(|&id| s.matches(graph, p, id, modified(p, id)))
                    .collect();
                matched[i] |= !seeds.is_empty();
                set.extend(seeds.iter().copied());
                if let Some(d) = s.ancestors {
                    set.extend(sub.walk(&seeds, &sub.deps, d));
                }
                if let Some(d) = s.descendants {
                    set.extend(sub.walk(&seeds, &sub.dependents, d));
                }
            }
            set
        };
        let chosen = if select.is_empty() {
            sub.ids.iter().copied().collect()
        } else {
            apply(select, &mut matched[..select.len()])
        };
        let dropped = apply(exclude, &mut matched[select.len()..]);
        out.push(PipelineSelection {
            pipeline: p.clone(),
            nodes: sub
                .ids
                .iter()
                .copied()
                .filter(|id| chosen.contains(id) && !dropped.contains(id))
                .collect(),
        });
    }
    for (s, m) in select.iter().chain(exclude).zip(&matched) {
        if !m && !s.needs_state() {
            return Err(no_match(graph, pipelines, s));
        }
    }
    Ok(out)
}

fn no_match(graph: &Graph, pipelines: &[RepoPath], s: &Selector) -> SelectError {
    let core = s
        .text
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start_matches('+')
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('+');
    let mut candidates: Vec<String> = Vec::new();
    for p in pipelines {
        for id in graph.pipeline_nodes(p) {
            let n = &graph.nodes[id];
            candidates.push(n.name.clone());
            candidates.push(format!("{}/{}", n.dir, n.name));
        }
    }
    let hint = nearest(core, candidates.iter().map(String::as_str))
        .map(|c| format!(" (did you mean {c}?)"))
        .unwrap_or_else(|| {
            if pipelines.is_empty() {
                String::new()
            } else {
                "; `sluice ls` lists the nodes".to_string()
            }
        });
    SelectError::NoMatch {
        text: s.text.clone(),
        hint,
    }
}

/// One pipeline's nodes with their edges inside it.
struct Subgraph {
    /// Dependencies first.
    ids: Vec<NodeId>,
    deps: HashMap<NodeId, Vec<NodeId>>,
    dependents: HashMap<NodeId, Vec<NodeId>>,
}

impl Subgraph {
    fn new(graph: &Graph, pipeline: &RepoPath) -> Subgraph {
        let ids = graph.pipeline_nodes(pipeline);
        let mut deps: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        let mut dependents: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &id in &ids {
            // A pipeline's node set is closed under dependencies, so every
            // edge stays inside it.
            for d in graph.nodes[id].deps.iter().filter_map(|d| d.node) {
                deps.entry(id).or_default().push(d);
                dependents.entry(d).or_default().push(id);
            }
        }
        Subgraph {
            ids,
            deps,
            dependents,
        }
    }

    /// Breadth-first from `seeds` along `edges`, at most `depth` levels.
    fn walk(
        &self,
        seeds: &[NodeId],
        edges: &HashMap<NodeId, Vec<NodeId>>,
        depth: Depth,
    ) -> BTreeSet<NodeId> {
        let mut seen: BTreeSet<NodeId> = seeds.iter().copied().collect();
        let mut queue: VecDeque<(NodeId, u32)> = seeds.iter().map(|&s| (s, 0)).collect();
        while let Some((id, level)) = queue.pop_front() {
            if depth.is_some_and(|d| level >= d) {
                continue;
            }
            for &next in edges.get(&id).into_iter().flatten() {
                if seen.insert(next) {
                    queue.push_back((next, level + 1));
                }
            }
        }
        seen
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pipeline::compile;
    use crate::pipeline::vfs::MemVfs;
    use proptest::prelude::*;

    fn graph(files: &[(String, String)], pipelines: &[&str]) -> Graph {
        let mut v = MemVfs::new();
        for (p, t) in files {
            v.insert(p, t.as_bytes());
        }
        let p: Vec<RepoPath> = pipelines
            .iter()
            .map(|p| RepoPath::parse(p).unwrap())
            .collect();
        let (g, d) = compile(&v, &p);
        assert!(d.is_empty(), "{d:#?}");
        g
    }

    fn sql(deps: &[&str]) -> String {
        let mut s: String = deps.iter().map(|d| format!("-- @depend {d}\n")).collect();
        s.push_str("SELECT 1 AS x;\n");
        s
    }

    /// Two clinics: a -> (T, U <- T, V <- U, W <- T), b -> (T, X <- /clinics/a/U).
    fn clinics() -> Graph {
        let files = [
            ("clinics/a/T.sql", sql(&[])),
            ("clinics/a/U.sql", sql(&["./T"])),
            ("clinics/a/V.sql", sql(&["./U"])),
            ("clinics/a/W.sql", sql(&["./T"])),
            ("clinics/b/T.sql", sql(&[])),
            ("clinics/b/X.sql", sql(&["/clinics/a/U"])),
        ];
        let files: Vec<(String, String)> =
            files.into_iter().map(|(p, t)| (p.to_string(), t)).collect();
        graph(&files, &["clinics/a", "clinics/b"])
    }

    fn names(g: &Graph, sel: &[PipelineSelection]) -> Vec<String> {
        sel.iter()
            .flat_map(|s| {
                s.nodes.iter().map(move |id| {
                    format!("{}:{}", s.pipeline, g.nodes[*id].display_name(&s.pipeline))
                })
            })
            .collect()
    }

    fn run(g: &Graph, sel: &[&str], exc: &[&str]) -> Result<Vec<String>, SelectError> {
        let sel: Vec<String> = sel.iter().map(|s| s.to_string()).collect();
        let exc: Vec<String> = exc.iter().map(|s| s.to_string()).collect();
        let modified = |_: &RepoPath, id: NodeId| g.nodes[id].name == "U";
        let out = select(
            g,
            &g.pipelines,
            &modified,
            &parse_all(&sel)?,
            &parse_all(&exc)?,
        )?;
        Ok(names(g, &out))
    }

    #[test]
    fn names_addresses_globs_and_operators() {
        let g = clinics();
        // Pipeline b runs its own T and X, and a's U with a's T as inputs.
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&["T"], &[], &["a:T", "b:/clinics/a/T", "b:T"]),
            (&["clinics/a/T"], &[], &["a:T", "b:/clinics/a/T"]),
            (&["clinics/*/T"], &[], &["a:T", "b:/clinics/a/T", "b:T"]),
            (
                &["clinics/a/T+"],
                &[],
                &[
                    "a:T",
                    "a:U",
                    "a:V",
                    "a:W",
                    "b:/clinics/a/T",
                    "b:/clinics/a/U",
                    "b:X",
                ],
            ),
            (
                &["clinics/a/T+1"],
                &[],
                &["a:T", "a:U", "a:W", "b:/clinics/a/T", "b:/clinics/a/U"],
            ),
            (&["+V"], &[], &["a:T", "a:U", "a:V"]),
            (&["1+V"], &[], &["a:U", "a:V"]),
            (&["+V+"], &[], &["a:T", "a:U", "a:V"]),
            (
                &["clinics/a/U+"],
                &[],
                &["a:U", "a:V", "b:/clinics/a/U", "b:X"],
            ),
            (
                &["clinics/b//clinics/a/U+"],
                &[],
                &["b:/clinics/a/U", "b:X"],
            ),
            (
                &["clinics/b"],
                &["X"],
                &["b:/clinics/a/T", "b:/clinics/a/U", "b:T"],
            ),
            (&["V W"], &[], &["a:V", "a:W"]),
            (&["V", "W"], &["W"], &["a:V"]),
            (&[], &["clinics/a", "T"], &["b:/clinics/a/U", "b:X"]),
            (&["state:modified"], &[], &["a:U", "b:/clinics/a/U"]),
            (&["state:modified+"], &["clinics/b//**"], &["a:U", "a:V"]),
        ];
        for (sel, exc, want) in cases {
            let mut got = run(&g, sel, exc).unwrap();
            got.sort();
            let got: Vec<String> = got
                .iter()
                .map(|s| s.replace("clinics/", "").replacen(":/", ":/clinics/", 1))
                .collect();
            assert_eq!(got, *want, "--select {sel:?} --exclude {exc:?}");
        }
    }

    #[test]
    fn mistakes_are_errors_with_a_hint() {
        let g = clinics();
        let e = run(&g, &["clinics/a/Vv"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "selector `clinics/a/Vv` matches no node (did you mean clinics/a/V?)"
        );
        let e = run(&g, &[], &["Nothing_here"]).unwrap_err();
        assert!(e.to_string().contains("matches no node"), "{e}");
        for bad in [
            "+",
            "a+b+c",
            "state:new",
            "tag:x",
            "99999999999+V",
            "[x",
            " ",
        ] {
            let e = run(&g, &[bad], &[]).unwrap_err();
            assert!(matches!(e, SelectError::Invalid { .. }), "{bad}: {e}");
        }
        // state:modified matching nothing is a plain empty selection.
        let none = |_: &RepoPath, _: NodeId| false;
        let s = parse_all(&["state:modified+".into()]).unwrap();
        let out = select(&g, &g.pipelines, &none, &s, &[]).unwrap();
        assert!(out.iter().all(|p| p.nodes.is_empty()));
    }

    #[test]
    fn globs_take_sets_alternatives_and_escapes_and_bad_ones_say_why() {
        let g = clinics();
        let ok = |sel: &str| run(&g, &[sel], &[]).unwrap();
        assert_eq!(
            ok("clinics/[!b]/[UV]"),
            ["clinics/a:U", "clinics/a:V", "clinics/b:/clinics/a/U"]
        );
        assert_eq!(ok("{V,X}"), ["clinics/a:V", "clinics/b:X"]);
        assert_eq!(ok("clinics/{a/W,b/X}"), ["clinics/a:W", "clinics/b:X"]);
        assert_eq!(ok("**/W"), ["clinics/a:W"]);
        assert_eq!(ok(r"\W"), ["clinics/a:W"]);
        // `*` stays inside one segment.
        assert!(run(&g, &["clinics*W"], &[]).is_err());
        let e = run(&g, &["clinics/[a/T"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "selector `clinics/[a/T`: bad glob: error parsing glob 'clinics/[a/T': unclosed character class; missing ']' (write `[[]` for a literal '[')"
        );
        let e = run(&g, &["{T,U"], &[]).unwrap_err();
        assert!(e.to_string().contains("missing '}'"), "{e}");
    }

    /// A random DAG: node `i` may depend on any `j < i`, in one of two
    /// pipelines; a dependency across pipelines is `/clinics/x/Nj`.
    fn dag() -> impl Strategy<Value = Vec<(bool, Vec<usize>)>> {
        (2usize..12).prop_flat_map(|n| {
            (0..n)
                .map(|i| {
                    (
                        any::<bool>(),
                        proptest::collection::btree_set(0..i.max(1), 0..=i.min(3))
                            .prop_map(move |s| s.into_iter().filter(|&j| j < i).collect()),
                    )
                })
                .collect::<Vec<_>>()
        })
    }

    fn dir(in_b: bool) -> &'static str {
        if in_b { "clinics/b" } else { "clinics/a" }
    }

    /// Distances by Floyd–Warshall over the dependency matrix: a different
    /// algorithm from the breadth-first walk under test.
    fn distances(spec: &[(bool, Vec<usize>)]) -> Vec<Vec<Option<u32>>> {
        let n = spec.len();
        let mut d = vec![vec![None; n]; n];
        for (i, (_, deps)) in spec.iter().enumerate() {
            d[i][i] = Some(0);
            for &j in deps {
                d[i][j] = Some(1); // i depends on j: j is an ancestor at 1
            }
        }
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    if let (Some(a), Some(b)) = (d[i][k], d[k][j])
                        && d[i][j].is_none_or(|c| a + b < c)
                    {
                        d[i][j] = Some(a + b);
                    }
                }
            }
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn operators_agree_with_a_brute_force_walk(
            spec in dag(),
            seed in 0usize..64,
            up in proptest::option::of(0u32..4),
            down in proptest::option::of(0u32..4),
            op in 0usize..5,
        ) {
            let files: Vec<(String, String)> = spec
                .iter()
                .enumerate()
                .map(|(i, (b, deps))| {
                    let refs: Vec<String> = deps
                        .iter()
                        .map(|&j| format!("/{}/N{j}", dir(spec[j].0)))
                        .collect();
                    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
                    (format!("{}/N{i}.sql", dir(*b)), sql(&refs))
                })
                .collect();
            let g = graph(&files, &["clinics/a", "clinics/b"]);
            let target = seed % spec.len();
            let depth_txt = |d: Option<u32>| d.map(|d| d.to_string()).unwrap_or_default();
            let addr = format!("{}/N{target}", dir(spec[target].0));
            let (text, anc, desc) = match op {
                0 => (addr.clone(), None, None),
                1 => (format!("{}+{addr}", depth_txt(up)), Some(up), None),
                2 => (format!("{addr}+{}", depth_txt(down)), None, Some(down)),
                3 => (format!("{}+{addr}+{}", depth_txt(up), depth_txt(down)), Some(up), Some(down)),
                _ => (format!("N{target}+"), None, Some(None)),
            };
            let sel = parse_all(std::slice::from_ref(&text)).unwrap();
            let never = |_: &RepoPath, _: NodeId| false;
            let got = select(&g, &g.pipelines, &never, &sel, &[]).unwrap();

            let dist = distances(&spec);
            let n = spec.len();
            // The nodes each pipeline runs: its own and their ancestors.
            for ps in &got {
                let in_p: Vec<bool> = (0..n)
                    .map(|i| (0..n).any(|o| dir(spec[o].0) == ps.pipeline.as_str() && dist[o][i].is_some()))
                    .collect();
                let within = |limit: Option<u32>, d: Option<u32>| {
                    d.is_some_and(|d| limit.is_none_or(|l| d <= l))
                };
                let expected: BTreeSet<usize> = (0..n)
                    .filter(|&i| in_p[i])
                    .filter(|&i| {
                        i == target && in_p[target]
                            || anc.is_some_and(|l| within(l, dist[target][i]))
                            || desc.is_some_and(|l| in_p[target] && within(l, dist[i][target]))
                    })
                    .filter(|_| in_p[target])
                    .collect();
                let got: BTreeSet<usize> = ps
                    .nodes
                    .iter()
                    .map(|id| g.nodes[*id].name[1..].parse::<usize>().unwrap())
                    .collect();
                prop_assert_eq!(got, expected, "{} in {}", text, ps.pipeline);
            }
        }
    }
}
