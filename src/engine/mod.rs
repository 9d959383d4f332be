//! The use-cases under every front end: open a workspace from any
//! [`Vfs`](crate::pipeline::Vfs), hash and plan it, run the selected
//! pipelines into a [`RunReport`], diff a run against production, explain a
//! node. The CLI, the daemon, the hooks and CI mode all call this layer;
//! none of them keeps a copy of it.

pub mod diff;
pub mod manifests;
pub mod memo;
pub mod outcome;
pub mod run;
pub mod why;
pub mod workspace;

pub use outcome::{FailureKind, NodeReport, Outcome, PipelineReport, RunReport};
pub use run::{RunError, RunRequest};
pub use workspace::{Settings, Source, Workspace};
