//! SQL checked without data: `sluice check` parses every SQL body and
//! `@assert sql:` query with SQLite's own parser, so a syntax error is
//! found before anything runs, at its `path:line:column`.

use std::collections::BTreeSet;

use super::sqlite::syntax_error;
use crate::pipeline::diag::Diagnostic;
use crate::pipeline::directive::Assert;
use crate::pipeline::graph::{Action, Graph};

/// Every SQL syntax error in the graph's SQL nodes and assertions, once per
/// place (a mounted file is checked once per pipeline, reported once).
pub fn sql_syntax(graph: &Graph) -> Vec<Diagnostic> {
    let mut out = BTreeSet::new();
    for node in &graph.nodes {
        if matches!(node.action.action, Action::Engine(_))
            && !node.body.trim().is_empty()
            && let Some((at, msg)) = syntax_error(&node.body)
        {
            let (line, column) = node.body_position(at);
            out.insert(Diagnostic::at(
                &node.body_from,
                line,
                u32::try_from(column).unwrap_or(u32::MAX),
                msg,
            ));
        }
        for (i, (a, origin)) in node.asserts.iter().enumerate() {
            let Assert::Sql(query) = a else { continue };
            let lead = query.len() - query.trim_start().len();
            let q = query.trim().trim_end_matches(';').trim_end();
            if let Some((at, msg)) = syntax_error(q) {
                let (line, column) = node.assert_position(i, query, lead + at);
                let column = u32::try_from(column).unwrap_or(u32::MAX);
                out.insert(Diagnostic::at(
                    &origin.file,
                    origin.line + u32::try_from(line).unwrap_or(0),
                    if line == 0 {
                        origin.column.max(1) + column - 1
                    } else {
                        column
                    },
                    format!("@assert sql: {msg}"),
                ));
            }
        }
    }
    out.into_iter().collect()
}
