//! Planning: definition hashes, and each node's change against the
//! production manifest (DESIGN §4). Pure.

pub mod diff;
pub mod digest;
pub mod hash;
pub mod manifest;
pub mod select;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::pipeline::graph::Graph;
use crate::pipeline::path::RepoPath;
use digest::Digest;
use hash::NodeHashes;
use manifest::Manifest;

/// A node's change against production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Its own resolved definition changed.
    Modified,
    /// Only something upstream changed.
    Affected,
    New,
    Removed,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::Modified => "modified",
            Change::Affected => "affected",
            Change::New => "new",
            Change::Removed => "removed",
        }
    }

    /// True when the node must be (re)computed or looked up in the cache.
    pub fn needs_run(self) -> bool {
        matches!(self, Change::Modified | Change::Affected | Change::New)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub change: Change,
    /// `None` when the hash cannot be known (see diagnostics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production: Option<Digest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelinePlan {
    pub pipeline: String,
    pub nodes: Vec<NodePlan>,
}

impl PipelinePlan {
    pub fn count(&self, change: Change) -> usize {
        self.nodes.iter().filter(|n| n.change == change).count()
    }
}

/// Compares one pipeline's nodes (in topological order) with the
/// production manifest; removed nodes come last.
pub fn plan_pipeline(
    graph: &Graph,
    hashes: &[Option<NodeHashes>],
    pipeline: &RepoPath,
    production: Option<&Manifest>,
) -> PipelinePlan {
    let prod: HashMap<&str, &manifest::ManifestNode> = production
        .map(|m| m.nodes.iter().map(|n| (n.name.as_str(), n)).collect())
        .unwrap_or_default();
    let members = graph.pipeline_nodes(pipeline);
    let mut nodes = Vec::with_capacity(members.len());
    let mut seen = std::collections::HashSet::new();
    for id in members {
        let node = &graph.nodes[id];
        let name = node.display_name(pipeline);
        let h = hashes.get(id).copied().flatten();
        let p = prod.get(name.as_str());
        let change = match (p, h) {
            (None, _) => Change::New,
            (Some(_), None) => Change::Modified,
            (Some(p), Some(h)) if p.local_hash != h.local => Change::Modified,
            (Some(p), Some(h)) if p.definition_hash != h.definition => Change::Affected,
            (Some(_), Some(_)) => Change::Unchanged,
        };
        // Only a production manifest has nodes to look for here.
        if production.is_some() {
            seen.insert(name.clone());
        }
        nodes.push(NodePlan {
            name,
            change,
            definition: h.map(|h| h.definition),
            production: p.map(|p| p.definition_hash),
        });
    }
    if let Some(m) = production {
        for n in &m.nodes {
            if !seen.contains(&n.name) {
                nodes.push(NodePlan {
                    name: n.name.clone(),
                    change: Change::Removed,
                    definition: None,
                    production: Some(n.definition_hash),
                });
            }
        }
    }
    PipelinePlan {
        pipeline: pipeline.to_string(),
        nodes,
    }
}
