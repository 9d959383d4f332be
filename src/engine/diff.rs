//! A run against production, table by table (DESIGN §4). Counts only: rows
//! before and after, columns added and removed, and with `@key` the rows
//! added, removed and changed. Row contents are hashed in memory and never
//! leave this module.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use anyhow::Context;

use crate::pipeline::graph::Graph;
use crate::plan::diff::{self, KeyCounts, NodeDiff};
use crate::plan::digest::Digest;
use crate::plan::manifest::{Manifest, ManifestNode, Status};
use crate::store::Stores;

/// One node against production, with keyed counts when both sides have a
/// table and the same `@key`.
pub fn node_diff(
    stores: &Stores,
    name: &str,
    before: Option<&ManifestNode>,
    after: Option<&ManifestNode>,
) -> anyhow::Result<NodeDiff> {
    let mut d = diff::compare_nodes(name, before, after);
    if let (Some(b), Some(a)) = (before, after)
        && let (Some(old), Some(new)) = (b.output, a.output)
        && old != new
        && !a.key.is_empty()
        && b.key == a.key
    {
        d.keyed = Some(keyed(stores, &old, &new, &a.key)?);
    }
    Ok(d)
}

/// Every node of `last` whose table differs from production's, and every
/// node production has that `last` lacks; failures first, then by name.
pub fn pipeline_diff(
    stores: &Stores,
    last: &Manifest,
    prod: Option<&Manifest>,
) -> anyhow::Result<Vec<NodeDiff>> {
    let mut nodes = Vec::new();
    let prod_nodes = prod.map(Manifest::by_name).unwrap_or_default();
    let last_nodes = last.by_name();
    for n in &last.nodes {
        let before = prod_nodes.get(n.name.as_str()).copied();
        if before.is_some_and(|b| b.output.is_some() && b.output == n.output) {
            continue;
        }
        nodes.push(node_diff(stores, &n.name, before, Some(n))?);
    }
    if let Some(m) = prod {
        for b in &m.nodes {
            if !last_nodes.contains_key(b.name.as_str()) {
                nodes.push(diff::compare_nodes(&b.name, Some(b), None));
            }
        }
    }
    // Failures first, then by name, so the eye lands on what broke.
    let failed = Status::Failed.as_str();
    nodes.sort_by(|a, b| (a.status != failed, &a.name).cmp(&(b.status != failed, &b.name)));
    Ok(nodes)
}

/// Keyed row changes between two output tables.
pub fn keyed(
    stores: &Stores,
    old: &Digest,
    new: &Digest,
    key: &[String],
) -> anyhow::Result<KeyCounts> {
    let a = fingerprints(stores, old, key)?;
    let b = fingerprints(stores, new, key)?;
    Ok(diff::keyed_counts(a, b))
}

/// `(key bytes, row hash)` per row of a stored table. The hashes stay in
/// memory only; nothing here is printed.
fn fingerprints(
    stores: &Stores,
    digest: &Digest,
    key: &[String],
) -> anyhow::Result<Vec<(Vec<u8>, u64)>> {
    let bytes = stores
        .blobs
        .get(digest)
        .with_context(|| format!("cannot read table {digest}"))?;
    let mut rows = Vec::new();
    let mut key_idx: Vec<usize> = Vec::new();
    crate::exec::table::for_each_record(&bytes, |line, fields, nulls| {
        if line == 1 {
            for k in key {
                let i = fields
                    .iter()
                    .position(|f| f == k)
                    .ok_or_else(|| format!("key column `{k}` is not in the table"))?;
                key_idx.push(i);
            }
            return Ok(());
        }
        let mut kb = Vec::new();
        for &i in &key_idx {
            let f = fields.get(i).map(String::as_str).unwrap_or("");
            kb.push(u8::from(nulls.get(i).copied().unwrap_or(false)));
            kb.extend_from_slice(&(f.len() as u64).to_le_bytes());
            kb.extend_from_slice(f.as_bytes());
        }
        let mut h = DefaultHasher::new();
        fields.hash(&mut h);
        nulls.hash(&mut h);
        rows.push((kb, h.finish()));
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("table {digest}: {e}"))?;
    Ok(rows)
}

/// The words the repository's own text contains: the node bodies of a
/// workspace, split into identifiers. A column name that appears nowhere
/// in it came from the data (a Python pivot over diagnosis codes, say),
/// and data never leaves the machine: outside the local terminal such
/// names are counted, not shown.
#[derive(Debug, Default)]
pub struct Vocabulary<'a> {
    words: HashSet<&'a str>,
    texts: Vec<&'a str>,
}

impl<'a> Vocabulary<'a> {
    pub fn of_graph(graph: &'a Graph) -> Self {
        let mut v = Vocabulary::default();
        for n in &graph.nodes {
            v.add(&n.body);
        }
        v
    }

    pub fn add(&mut self, text: &'a str) {
        self.words.extend(
            text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty()),
        );
        self.texts.push(text);
    }

    /// True when the repository's text names this column: as a whole word,
    /// or (for a name with spaces or punctuation) verbatim.
    pub fn names(&self, column: &str) -> bool {
        if column.chars().all(|c| c.is_alphanumeric() || c == '_') {
            self.words.contains(column)
        } else {
            !column.is_empty() && self.texts.iter().any(|t| t.contains(column))
        }
    }

    /// `columns` with every name the repository's text does not contain
    /// replaced by one entry counting them.
    pub fn hide(&self, columns: &[String]) -> Vec<String> {
        let mut out: Vec<String> = columns.iter().filter(|c| self.names(c)).cloned().collect();
        let hidden = columns.len() - out.len();
        if hidden > 0 {
            out.push(data_named(hidden));
        }
        out
    }
}

pub use crate::exec::{data_named, mentions};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_repository_does_not_contain_are_counted() {
        let mut v = Vocabulary::default();
        v.add("SELECT patient_id, count(*) AS \"n visits\" FROM Visit");
        let cols: Vec<String> = ["patient_id", "n visits", "C50.9", "MRN_4471", "q"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            v.hide(&cols),
            vec![
                "patient_id".to_string(),
                "n visits".to_string(),
                "(3 columns named by the data)".to_string()
            ]
        );
        assert_eq!(v.hide(&cols[..2]), cols[..2].to_vec());
        assert_eq!(v.hide(&cols[2..3]), vec![data_named(1)]);
        let text = "SELECT patient_id, count(*) AS \"n visits\" FROM Visit";
        for c in &cols {
            assert_eq!(mentions(text, c), v.names(c), "{c}");
        }
        assert!(!mentions(text, "patient") && !mentions(text, "id"));
    }
}
