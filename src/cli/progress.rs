//! Progress of a run: one updating line on a terminal, plain log lines
//! otherwise (CI logs, pipes).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

use crate::exec::{NodeResult, Observer, Status};
use crate::pipeline::Node;

pub struct Progress {
    tty: bool,
    start: Instant,
    counts: Mutex<[usize; 4]>,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
            counts: Mutex::new([0; 4]),
        }
    }

    /// Clears the progress line before the summary is printed.
    pub fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Observer for Progress {
    fn finished(&self, node: &Node, result: &NodeResult, done: usize, total: usize) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        let i = match result.status {
            Status::Computed => 0,
            Status::Cached => 1,
            Status::Failed => 2,
            Status::Skipped => 3,
        };
        counts[i] += 1;
        let mut err = std::io::stderr().lock();
        // Progress output is best effort: a closed stderr must not fail a run.
        if self.tty {
            let _ = write!(
                err,
                "\r\x1b[2K[{done}/{total}] {} computed, {} cached, {} failed, {} skipped  {:.1}s  {}/{}",
                counts[0],
                counts[1],
                counts[2],
                counts[3],
                self.start.elapsed().as_secs_f64(),
                node.dir,
                node.name
            );
            let _ = err.flush();
        } else if result.status != Status::Cached {
            // Cached nodes get no line of their own; the count says where
            // the numbers between two lines went.
            let rows = match result.rows {
                Some(1) => ", 1 row".to_string(),
                Some(r) => format!(", {r} rows"),
                None => String::new(),
            };
            let cached = match counts[1] {
                0 => String::new(),
                n => format!("; {n} cached so far"),
            };
            let _ = writeln!(
                err,
                "[{done}/{total}] {} {}/{} ({} ms{rows}{cached})",
                result.status.as_str(),
                node.dir,
                node.name,
                result.duration.as_millis()
            );
        }
    }
}
