//! The commit status of one pipeline: its context (`sluice/<pipeline>`)
//! and the one-line description a forge shows beside the check, e.g.
//! `4 changed · 1 failed (Summary) · 1 skipped · 1 cached · 2.4 s`.
//! Forges cap descriptions at 140 characters, so every description here
//! is shorter, whatever the node names.

use super::{Totals, duration, input_from, node_label, one_line, thousands, truncate_chars};
use crate::engine::outcome::{Outcome, PipelineReport, Status};

/// The longest description rendered, in characters: under GitHub's 140.
pub const MAX_DESCRIPTION_CHARS: usize = 139;

/// How many failed nodes a description names before counting the rest.
const NAMED_FAILURES: usize = 2;

/// How much of one node name or error a description keeps.
const MAX_NAME_CHARS: usize = 40;

/// The status context of a pipeline: `sluice/clinics/clinic_a`.
pub fn context(pipeline: &str) -> String {
    format!("sluice/{pipeline}")
}

/// The description of the one status a commit gets when its pipelines do
/// not check: how many problems, and the first (`path:line: message`).
pub fn problems_description(problems: &[impl std::fmt::Display]) -> String {
    let first = problems.first().map(|d| d.to_string()).unwrap_or_default();
    format!(
        "{} problem{} in the pipelines: {}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        super::one_line(&first)
    )
}

/// The description of a pipeline's status while its run is queued or
/// running.
pub fn pending_description() -> &'static str {
    "running: comparing with production…"
}

/// The description of a finished pipeline's status: what changed, what
/// failed (by name), what was skipped and cached, and how long it took;
/// `no change against production · 38 cached` when nothing changed.
/// Always under 140 characters, cut on a character boundary with `…`.
pub fn status_description(p: &PipelineReport) -> String {
    if p.outcome == Outcome::Cancelled {
        return "superseded by a newer push".into();
    }
    let t = Totals::of_pipeline(p);
    let mut parts: Vec<String> = Vec::new();
    if let Some(e) = &p.error {
        parts.push(format!(
            "error: {}",
            truncate_chars(&one_line(e), MAX_NAME_CHARS)
        ));
    }
    let quiet = t.changed == 0 && t.failed == 0 && t.skipped == 0;
    if quiet && p.error.is_none() {
        parts.push("no change against production".into());
    }
    if t.changed > 0 {
        parts.push(format!("{} changed", thousands(t.changed as u64)));
    }
    if t.failed > 0 {
        parts.push(format!(
            "{} failed ({})",
            thousands(t.failed as u64),
            failed_names(p)
        ));
    }
    // An input from another directory is not counted as the pipeline's
    // own node, but its failure is why this one failed.
    let failed_inputs: Vec<&str> = p
        .nodes
        .iter()
        .filter(|n| n.status == Some(Status::Failed) && input_from(&n.name).is_some())
        .map(|n| n.name.as_str())
        .collect();
    if !failed_inputs.is_empty() {
        parts.push(format!(
            "{} failed ({})",
            if failed_inputs.len() == 1 {
                "input".to_string()
            } else {
                format!("{} inputs", failed_inputs.len())
            },
            names(&failed_inputs)
        ));
    }
    if t.skipped > 0 {
        parts.push(format!("{} skipped", thousands(t.skipped as u64)));
    }
    if t.cached > 0 {
        parts.push(format!("{} cached", thousands(t.cached as u64)));
    }
    if !quiet {
        parts.push(duration(p.duration_ms));
    }
    if p.promoted {
        parts.push("promoted".into());
    }
    truncate_chars(&parts.join(" · "), MAX_DESCRIPTION_CHARS)
}

/// The first of a pipeline's own failed nodes' names, each cut short,
/// then how many more: `Summary`, `A, B, +3`.
fn failed_names(p: &PipelineReport) -> String {
    let failed: Vec<&str> = p
        .nodes
        .iter()
        .filter(|n| n.status == Some(Status::Failed) && input_from(&n.name).is_none())
        .map(|n| n.name.as_str())
        .collect();
    names(&failed)
}

/// The first names (as a report names them), each cut short, then how
/// many more.
fn names(all: &[&str]) -> String {
    let mut names: Vec<String> = all
        .iter()
        .take(NAMED_FAILURES)
        .map(|n| truncate_chars(&one_line(&node_label(n)), MAX_NAME_CHARS))
        .collect();
    if all.len() > NAMED_FAILURES {
        names.push(format!("+{}", all.len() - NAMED_FAILURES));
    }
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outcome::FailureKind;
    use crate::report::sample_report;

    #[test]
    fn context_names_the_pipeline() {
        assert_eq!(context("clinics/clinic_a"), "sluice/clinics/clinic_a");
    }

    #[test]
    fn statuses_of_the_sample() {
        let r = sample_report();
        let lines: Vec<String> = r
            .pipelines
            .iter()
            .map(|p| format!("{}: {}", context(&p.pipeline), status_description(p)))
            .collect();
        insta::assert_snapshot!("statuses", lines.join("\n"));
    }

    #[test]
    fn a_failure_names_the_node() {
        let r = sample_report();
        assert_eq!(
            status_description(&r.pipelines[1]),
            "4 changed · 1 failed (Summary) · 1 skipped · 1 cached · 2.4 s"
        );
    }

    #[test]
    fn no_change() {
        let mut p = sample_report().pipelines[0].clone();
        for n in &mut p.nodes {
            n.change = crate::plan::Change::Unchanged;
            n.status = Some(Status::Cached);
        }
        assert_eq!(
            status_description(&p),
            "no change against production · 5 cached"
        );
    }

    #[test]
    fn an_input_of_another_directory_is_not_counted_as_own() {
        let r = crate::report::shared_inputs_report();
        assert_eq!(
            status_description(&r.pipelines[1]),
            "2 changed · input failed (reference/codes) · 1 skipped · 10 ms"
        );
    }

    #[test]
    fn cancelled_is_superseded() {
        let mut p = sample_report().pipelines[1].clone();
        p.outcome = Outcome::Cancelled;
        assert_eq!(status_description(&p), "superseded by a newer push");
    }

    #[test]
    fn pending_is_short() {
        assert!(pending_description().chars().count() < 140);
    }

    #[test]
    fn under_140_characters_with_long_names() {
        let mut p = sample_report().pipelines[1].clone();
        let template = p.nodes[3].clone();
        for i in 0..50 {
            let mut n = template.clone();
            // Multi-byte characters, so a byte cut would panic or split one.
            n.name = format!("{i}_{}", "Überlange_Zusammenfassung_ß😀".repeat(40));
            n.failure = Some(FailureKind::Infra);
            p.nodes.push(n);
        }
        p.error = Some(format!("cannot write\nthe state {}", "é".repeat(500)));
        p.duration_ms = u64::MAX;
        let d = status_description(&p);
        assert!(d.chars().count() < 140, "{} chars: {d}", d.chars().count());
        assert!(d.ends_with('…'));
        assert!(!d.contains('\n'));

        for len in 0..300 {
            let mut p = sample_report().pipelines[1].clone();
            p.nodes[3].name = "x".repeat(len);
            let d = status_description(&p);
            assert!(d.chars().count() < 140, "{len}: {d}");
        }
    }
}
