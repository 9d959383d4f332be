//! The run manifest (DESIGN §3): what a run produced, per node. Stored as a
//! JSON blob; the plan compares against the production one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const MANIFEST_FORMAT: u32 = 1;

/// What happened to a node in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Computed,
    Cached,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Computed => "computed",
            Status::Cached => "cached",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }

    pub fn ok(self) -> bool {
        matches!(self, Status::Computed | Status::Cached)
    }
}

/// Why a node failed: the analyst's code or data (`failure` on a forge),
/// or the machinery around it (`error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// Bad SQL, a failed `@key` or `@assert`, a command that exited
    /// non-zero or timed out, output that is not CSV, a missing source.
    User,
    /// The store, the disk, git, a bug in sluice: not the analyst's doing.
    Infra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub pipeline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The production manifest this one follows (an audit chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Digest>,
    pub nodes: Vec<ManifestNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestNode {
    pub name: String,
    pub local_hash: Digest,
    pub definition_hash: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_key: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `@key` columns, for key-based diffs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// Digest of each part of the node's own definition, for `sluice why`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, Digest>,
    /// Output digest of each input table the task key was made of.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Digest>,
}

impl Manifest {
    /// One node by name (a linear search: for many lookups, [`Self::by_name`]).
    pub fn node(&self, name: &str) -> Option<&ManifestNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every node by name.
    pub fn by_name(&self) -> std::collections::HashMap<&str, &ManifestNode> {
        self.nodes.iter().map(|n| (n.name.as_str(), n)).collect()
    }
}
