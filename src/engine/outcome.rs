//! What a run produced, in the shape every reporter needs: the CLI
//! summary, commit statuses, the PR comment, git notes and the run page
//! all render a [`RunReport`]. Counts, names, hashes and engine errors
//! only: no cell value of the data is ever stored here.

use serde::{Deserialize, Serialize};

use crate::plan::Change;
use crate::plan::diff::NodeDiff;
use crate::plan::digest::Digest;
pub use crate::plan::manifest::{FailureKind, Status};

/// The verdict of a pipeline or of a whole run, as a forge status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// At least one node failed through the analyst's code or data.
    Failure,
    /// Something outside the analyst's code went wrong.
    Error,
    /// Stopped before the end: a newer push superseded it, or shutdown.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The worse of two verdicts (error > failure > cancelled > success is
    /// not an order of badness; error and failure dominate).
    pub fn worst(self, other: Outcome) -> Outcome {
        use Outcome::*;
        match (self, other) {
            (Error, _) | (_, Error) => Error,
            (Failure, _) | (_, Failure) => Failure,
            (Cancelled, _) | (_, Cancelled) => Cancelled,
            _ => Success,
        }
    }
}

/// One run of one or more pipelines at one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The run page's id (daemon runs); unguessable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The commit run (full hex), when read from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch or ref (`main`, `refs/pull/7/head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub duration_ms: u64,
    pub outcome: Outcome,
    pub pipelines: Vec<PipelineReport>,
    /// Why nothing ran: the repository does not check (`path:line:
    /// message` each, as `sluice check` prints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The sluice version that ran it.
    pub version: String,
}

/// One pipeline of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The pipeline directory, e.g. `clinics/clinic_a`.
    pub pipeline: String,
    pub outcome: Outcome,
    /// The manifest this run recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// The production manifest it was compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<Digest>,
    /// The commit of that production manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_commit: Option<String>,
    /// Whether this run moved `production/<pipeline>`.
    pub promoted: bool,
    /// A problem of the whole pipeline (not of one node), e.g. the state
    /// database could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Every node of the pipeline in dependency order, then the nodes
    /// production has and this commit removed.
    pub nodes: Vec<NodeReport>,
}

/// One node of a pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// As the pipeline sees it: `Albumin`, or `/reference/lab_map` for a
    /// node of another directory.
    pub name: String,
    /// Against production (from the plan).
    pub change: Change,
    /// `None` for a node production has and this commit removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// The engine's error for a failed node, or why it was skipped.
    /// Engine errors and counts only, never a command's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// The digest of its output table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Digest>,
    pub duration_ms: u64,
    /// The node's file, repo-relative (where an error points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Names (as above) of the nodes this one reads, for the graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Why it ran, in words, against production (`body changed`,
    /// `input Albumin changed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
    /// Against production: rows, columns, keyed counts. `None` when the
    /// output is byte-identical to production's or the node did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<NodeDiff>,
    /// The digest of the command's log blob (shown only on the run page,
    /// and only when the admin allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Digest>,
}

impl PipelineReport {
    /// Nodes that changed against production, failures first: what the
    /// comment's table lists.
    pub fn changed_nodes(&self) -> Vec<&NodeReport> {
        let mut v: Vec<&NodeReport> = self
            .nodes
            .iter()
            .filter(|n| {
                n.change != Change::Unchanged
                    || matches!(n.status, Some(Status::Failed | Status::Skipped))
            })
            .collect();
        v.sort_by_key(|n| match n.status {
            Some(Status::Failed) => 0,
            Some(Status::Skipped) => 1,
            _ => 2,
        });
        v
    }

    /// How many nodes had each status.
    pub fn count(&self, status: Status) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.status == Some(status))
            .count()
    }
}

impl RunReport {
    /// Nodes computed, cached, failed and skipped over every pipeline.
    pub fn count(&self, status: Status) -> usize {
        self.pipelines.iter().map(|p| p.count(status)).sum()
    }
}
