//! Why a node ran: the parts of its definition and the inputs that differ
//! from production, in words (`sluice why`, the PR comment, the run page).

use crate::plan::manifest::ManifestNode;

/// The differences between a node in two manifests, in words.
pub fn explain(cur: &ManifestNode, prod: &ManifestNode) -> Vec<String> {
    let mut out = Vec::new();
    for (part, d) in &cur.parts {
        match prod.parts.get(part) {
            None => out.push(format!("{part} is new")),
            Some(p) if p != d => out.push(format!("{part} changed")),
            Some(_) => {}
        }
    }
    for part in prod.parts.keys() {
        if !cur.parts.contains_key(part) {
            out.push(format!("{part} was removed"));
        }
    }
    for (table, d) in &cur.inputs {
        match prod.inputs.get(table) {
            Some(p) if p != d => out.push(format!(
                "input {table} changed: its output went from {} to {}",
                p.short(),
                d.short()
            )),
            None if !cur.parts.contains_key(&format!("input {table}")) => {
                out.push(format!("input {table} is new"))
            }
            _ => {}
        }
    }
    out
}

/// Why `cur` was computed or taken from the cache, against its production
/// counterpart (if production has it). Never empty.
pub fn reasons(cur: &ManifestNode, prod: Option<&ManifestNode>) -> Vec<String> {
    match prod {
        None => {
            vec!["it is not in the production manifest (new, or nothing promoted yet)".to_string()]
        }
        Some(p) if p.task_key == cur.task_key => {
            vec!["nothing changed: same task key as production".to_string()]
        }
        Some(p) => {
            let r = explain(cur, p);
            if r.is_empty() {
                vec![
                    "its task key differs from production's, but no recorded part or input does (the sluice format version or the set of inputs changed)".to_string(),
                ]
            } else {
                r
            }
        }
    }
}
