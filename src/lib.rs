//! sluice: a Git-native ETL framework and CI runner. See ARCHITECTURE.md
//! for the map of the layers.

pub mod cli;
pub mod config;
pub mod engine;
pub mod exec;
pub mod forge;
pub mod git;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod server;
pub mod store;
pub mod worktree;
