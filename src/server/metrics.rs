//! The daemon's counters, rendered as Prometheus text at `/metrics`. Every
//! series is named `sluice_…` and labelled with fixed words only: no
//! repository content and no data value can reach a label.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::exec::{NodeResult, Observer, Status};
use crate::pipeline::Node;
use crate::store::queue::JobState;
use crate::store::state::State;

/// What became of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    Duplicate,
    Ignored,
    Unauthorized,
    UnknownRepo,
    BadRequest,
}

impl Delivery {
    const ALL: [Delivery; 6] = [
        Delivery::Accepted,
        Delivery::Duplicate,
        Delivery::Ignored,
        Delivery::Unauthorized,
        Delivery::UnknownRepo,
        Delivery::BadRequest,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Delivery::Accepted => "accepted",
            Delivery::Duplicate => "duplicate",
            Delivery::Ignored => "ignored",
            Delivery::Unauthorized => "unauthorized",
            Delivery::UnknownRepo => "unknown_repo",
            Delivery::BadRequest => "bad_request",
        }
    }
}

/// What became of a forge call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeCall {
    Ok,
    Retried,
    Dropped,
}

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: [AtomicU64; 6],
    nodes: [AtomicU64; 4],
    forge: [AtomicU64; 3],
}

impl Metrics {
    pub fn delivery(&self, d: Delivery) {
        self.deliveries[d as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn forge_call(&self, c: ForgeCall) {
        self.forge[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; job counts come from the database.
    pub fn render(&self, db: &dyn State) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP sluice_deliveries_total Webhook deliveries by result.\n# TYPE sluice_deliveries_total counter"
        );
        for d in Delivery::ALL {
            let n = self.deliveries[d as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "sluice_deliveries_total{{result=\"{}\"}} {n}",
                d.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_jobs Jobs by state.\n# TYPE sluice_jobs gauge"
        );
        let counts = db.job_counts().unwrap_or_default();
        for s in JobState::ALL {
            let n = counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "sluice_jobs{{state=\"{}\"}} {n}", s.as_str());
        }
        let queued = counts
            .iter()
            .find(|(k, _)| *k == JobState::Queued)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "# HELP sluice_queue_depth Jobs waiting to run.\n# TYPE sluice_queue_depth gauge\nsluice_queue_depth {queued}"
        );
        let _ = writeln!(
            out,
            "# HELP sluice_node_executions_total Nodes by outcome (cached = cache hits).\n# TYPE sluice_node_executions_total counter"
        );
        for (i, s) in ["computed", "cached", "failed", "skipped"]
            .iter()
            .enumerate()
        {
            let n = self.nodes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_node_executions_total{{status=\"{s}\"}} {n}");
        }
        let hits = self.nodes[1].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP sluice_cache_hits_total Nodes taken from the cache.\n# TYPE sluice_cache_hits_total counter\nsluice_cache_hits_total {hits}"
        );
        let _ = writeln!(
            out,
            "# HELP sluice_forge_calls_total Forge API calls by result.\n# TYPE sluice_forge_calls_total counter"
        );
        for (i, s) in ["ok", "retried", "dropped"].iter().enumerate() {
            let n = self.forge[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "sluice_forge_calls_total{{result=\"{s}\"}} {n}");
        }
        let pending = db.outbox_pending().unwrap_or(0);
        let _ = writeln!(
            out,
            "# HELP sluice_outbox_pending Forge calls waiting to be delivered.\n# TYPE sluice_outbox_pending gauge\nsluice_outbox_pending {pending}"
        );
        out
    }
}

impl Observer for Metrics {
    fn finished(&self, _: &Node, result: &NodeResult, _: usize, _: usize) {
        let i = match result.status {
            Status::Computed => 0,
            Status::Cached => 1,
            Status::Failed => 2,
            Status::Skipped => 3,
        };
        self.nodes[i].fetch_add(1, Ordering::Relaxed);
    }
}
