//! The one integration-test binary: end-to-end tests of `sluice` on the
//! example and on repositories built in temp dirs (real files, real git).

// Helpers outside #[test] functions may unwrap too: a panic is a test failure.
#![allow(clippy::unwrap_used)]

mod analyst;
mod bench;
mod check;
mod ci;
mod daemon;
mod docs;
mod fake_forge;
mod forge;
mod gc;
mod git_truth;
mod hooks;
mod incremental;
mod moto;
#[path = "../../src/store/pg/testing.rs"]
mod pg_cluster;
mod postgres;
mod run;
mod s3;
mod select;
mod team;
mod trust_exec;
mod trust_pipeline;
mod trust_store;
mod util;
mod workers;
