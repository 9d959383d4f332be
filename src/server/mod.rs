//! The daemon, `sluice serve`: its configuration (`sluice-server.toml`),
//! the authentication and normalisation of forge webhooks, the HTTP
//! router, the job workers and the outbox of forge calls.

pub mod app;
pub mod config;
pub mod cron;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod webhook;

pub use app::App;
pub use http::{router, serve, serve_workers};
