//! The pipeline language: directives, the VFS, includes and mounts,
//! templates and the DAG. Pure: everything is read through [`vfs::Vfs`].

pub mod attributes;
pub mod diag;
pub mod directive;
pub mod glob;
pub mod graph;
pub mod path;
pub mod resolve;
pub mod template;
pub mod vfs;

#[cfg(test)]
mod tests;

pub use diag::Diagnostic;
pub use graph::{Graph, Node, NodeId};
pub use path::RepoPath;
pub use resolve::{compile, find_pipelines};
pub use vfs::Vfs;
