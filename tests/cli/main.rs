//! The one integration-test binary: end-to-end tests of `sluice` on the
//! example and on repositories built in temp dirs (real files, real git).

// Helpers outside #[test] functions may unwrap too: a panic is a test failure.
// The suites of the shared stores (PostgreSQL, S3) need `--features team`.
#![allow(clippy::unwrap_used)]

mod analyst;
mod bench;
#[cfg(not(feature = "team"))]
mod built_without;
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
#[cfg(feature = "team")]
mod moto;
#[cfg(feature = "team")]
#[path = "../../src/store/pg/testing.rs"]
mod pg_cluster;
#[cfg(feature = "team")]
mod postgres;
mod run;
#[cfg(feature = "team")]
mod s3;
mod select;
#[cfg(feature = "team")]
mod team;
mod trust_exec;
mod trust_pipeline;
mod trust_store;
mod util;
#[cfg(feature = "team")]
mod workers;
