//! Data diffs (DESIGN §4): counts only. Row counts, columns added and
//! removed, and with a key the rows added, removed and changed. No cell
//! value ever appears in a diff, because diffs leave through forge APIs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::manifest::{ManifestNode, Status};

/// Keyed row changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCounts {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
}

/// The difference of one node between production and a branch run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDiff {
    pub name: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
    pub columns_added: Vec<String>,
    pub columns_removed: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyCounts>,
    /// True when the output bytes are identical.
    pub same_output: bool,
}

/// Compares row counts and columns (the keyed counts are filled by the
/// caller, which has the tables).
pub fn compare_nodes(
    name: &str,
    before: Option<&ManifestNode>,
    after: Option<&ManifestNode>,
) -> NodeDiff {
    // A node that failed or was skipped has no table: its columns are not
    // "removed", and its rows are unknown rather than gone.
    let no_table = after.is_some_and(|n| n.output.is_none());
    let rows_before = before.and_then(|n| n.rows);
    let rows_after = after.and_then(|n| n.rows);
    let (cols_before, cols_after): (Vec<String>, Vec<String>) = if no_table {
        (Vec::new(), Vec::new())
    } else {
        (
            before.map(|n| n.columns.clone()).unwrap_or_default(),
            after.map(|n| n.columns.clone()).unwrap_or_default(),
        )
    };
    let same = matches!((before.and_then(|n| n.output), after.and_then(|n| n.output)), (Some(a), Some(b)) if a == b);
    NodeDiff {
        name: name.to_string(),
        // What the table did against production; how the run got it
        // (computed or cached) is `sluice run`'s business.
        status: match (before, after) {
            (None, Some(_)) => "new".into(),
            (Some(_), None) => "removed".into(),
            _ => match after.and_then(|n| n.status) {
                Some(s @ (Status::Failed | Status::Skipped)) => s.as_str().to_string(),
                _ if no_table => "unknown".into(),
                _ if same => "unchanged".into(),
                _ => "changed".into(),
            },
        },
        rows_before,
        rows_after,
        delta: match (rows_before, rows_after) {
            (Some(b), Some(a)) => Some(a as i64 - b as i64),
            _ => None,
        },
        columns_added: cols_after
            .iter()
            .filter(|c| !cols_before.contains(c))
            .cloned()
            .collect(),
        columns_removed: cols_before
            .iter()
            .filter(|c| !cols_after.contains(c))
            .cloned()
            .collect(),
        keyed: None,
        same_output: same,
    }
}

/// Counts keyed changes given `(key, row fingerprint)` pairs of both
/// tables. Keys are opaque bytes; fingerprints are hashes of whole rows.
pub fn keyed_counts(
    before: impl IntoIterator<Item = (Vec<u8>, u64)>,
    after: impl IntoIterator<Item = (Vec<u8>, u64)>,
) -> KeyCounts {
    let mut old: HashMap<Vec<u8>, u64> = before.into_iter().collect();
    let mut c = KeyCounts::default();
    for (k, fp) in after {
        match old.remove(&k) {
            None => c.added += 1,
            Some(f) if f != fp => c.changed += 1,
            Some(_) => {}
        }
    }
    c.removed = old.len() as u64;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_counts_added_removed_changed() {
        let k = |s: &str| s.as_bytes().to_vec();
        let c = keyed_counts(
            vec![(k("1"), 10), (k("2"), 20), (k("3"), 30)],
            vec![(k("2"), 20), (k("3"), 31), (k("4"), 40), (k("5"), 50)],
        );
        assert_eq!(
            c,
            KeyCounts {
                added: 2,
                removed: 1,
                changed: 1
            }
        );
    }
}
