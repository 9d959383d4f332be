//! The report of a run as plain text, for a git note on the commit (and
//! any terminal): the comment's content without markup. Strings from the
//! report are put on one line with control characters removed, so a node
//! name cannot forge lines or send terminal escapes.

use super::input_from;
use super::{
    Blame, Inputs, Totals, by_severity, column_changes, common_production, count_of, delta_text,
    display_time, duration, inputs_line, keyed_text, node_label, one_line, rows_text, short_sha,
    status_word, thousands, truncate_chars,
};
use crate::engine::outcome::{FailureKind, Outcome, PipelineReport, RunReport};

/// How much of one engine error the text keeps.
const MAX_ERROR_CHARS: usize = 2_000;

/// The run as plain text: the verdict, a line per pipeline, then per
/// pipeline (failures first) its failures with their errors and what they
/// skipped, its changed nodes in aligned columns and why they ran; the
/// cache statistics and the run page's URL last.
pub fn plain_text(r: &RunReport, run_url: Option<&str>) -> String {
    let t = Totals::of_run(r);
    let mut out = String::new();

    let commit = match &r.commit {
        Some(c) => one_line(short_sha(c)),
        None => "the working tree".into(),
    };
    let production = match common_production(r) {
        Ok(Some(c)) => format!(" against production {}", one_line(short_sha(c))),
        Ok(None) => " (nothing promoted to production yet)".into(),
        Err(()) => " against production".into(),
    };
    out.push_str(&format!("sluice: data diff for {commit}{production}\n"));
    let verdict = match r.outcome {
        Outcome::Failure if t.failures() > 0 => {
            format!("FAILURE: {}", count_of(t.failures(), "failure", "failures"))
        }
        Outcome::Failure => "FAILURE".into(),
        Outcome::Success => "SUCCESS: no failures".into(),
        Outcome::Error => "ERROR outside the pipelines' code".into(),
        Outcome::Cancelled => "CANCELLED before the end".into(),
    };
    out.push_str(&format!(
        "{verdict} · {} · {} · {} cached\n",
        count_of(r.pipelines.len(), "pipeline", "pipelines"),
        count_of(t.changed, "node changed", "nodes changed"),
        thousands(t.cached as u64)
    ));
    out.push('\n');
    if !r.problems.is_empty() {
        out.push_str("The pipelines do not check; nothing ran:\n");
        for p in &r.problems {
            out.push_str(&format!("  {}\n", one_line(p)));
        }
        out.push('\n');
    }

    let pipelines = by_severity(r);
    let mut rows = vec![cells([
        "pipeline", "status", "changed", "failed", "skipped", "time",
    ])];
    for p in &pipelines {
        let pt = Totals::of_pipeline(p);
        rows.push(vec![
            one_line(&p.pipeline),
            p.outcome.as_str().into(),
            thousands(pt.changed as u64),
            thousands(pt.failed as u64),
            thousands(pt.skipped as u64),
            duration(p.duration_ms),
        ]);
    }
    out.push_str(&aligned(&rows, ""));

    let own_production = common_production(r).is_err();
    let inputs = Inputs::of(pipelines.iter().copied());
    for p in pipelines {
        out.push('\n');
        out.push_str(&section(p, own_production, &inputs));
    }

    out.push('\n');
    let mut cache = vec![
        format!("{} computed", thousands(t.computed as u64)),
        format!("{} cached", thousands(t.cached as u64)),
    ];
    if t.failed > 0 {
        cache.push(format!("{} failed", thousands(t.failed as u64)));
    }
    if t.skipped > 0 {
        cache.push(format!("{} skipped", thousands(t.skipped as u64)));
    }
    cache.push(format!("run took {}", duration(r.duration_ms)));
    out.push_str(&format!("cache: {}\n", cache.join(" · ")));
    let mut footer = format!("started {}", one_line(&display_time(&r.started_at)));
    if let Some(c) = &r.commit {
        footer.push_str(&format!(" for {}", one_line(short_sha(c))));
    }
    out.push_str(&format!("{footer} · sluice {}\n", one_line(&r.version)));
    if let Some(u) = run_url {
        out.push_str(&format!("full run report: {}\n", one_line(u)));
    }
    out
}

/// One pipeline's part of the text. Its inputs from other directories
/// are named once, and described only where `inputs` says.
fn section(p: &PipelineReport, own_production: bool, inputs: &Inputs) -> String {
    let mut out = format!("== {}: {} ==\n", one_line(&p.pipeline), p.outcome.as_str());
    if own_production {
        match &p.production_commit {
            Some(c) => out.push_str(&format!(
                "compared with production {}\n",
                one_line(short_sha(c))
            )),
            None => out.push_str("nothing promoted to production yet\n"),
        }
    }
    if let Some(e) = &p.error {
        out.push_str(&format!("PIPELINE ERROR: {}\n", error(e)));
    }
    if p.promoted {
        out.push_str(&format!(
            "promoted: production/{} now points at this run\n",
            one_line(&p.pipeline)
        ));
    }
    let blame = Blame::of(p);
    for (node, skipped) in &blame.failures {
        let infra = if node.failure == Some(FailureKind::Infra) {
            " (infrastructure error, not the pipeline's code)"
        } else {
            ""
        };
        let label = one_line(&node_label(&node.name));
        match (inputs.elsewhere(p, node), input_from(&node.name)) {
            (Some(q), _) => {
                out.push_str(&format!("input {label} failed (see {})\n", one_line(q)));
            }
            (None, Some((dir, _))) => out.push_str(&format!(
                "FAILED {label} (input from {}){infra}: {}\n",
                one_line(dir),
                node.error.as_deref().map(error).unwrap_or_default()
            )),
            (None, None) => out.push_str(&format!(
                "FAILED {label}{infra}: {}\n",
                node.error.as_deref().map(error).unwrap_or_default()
            )),
        }
        if !skipped.is_empty() {
            let names: Vec<String> = skipped
                .iter()
                .map(|n| one_line(&node_label(&n.name)))
                .collect();
            out.push_str(&format!("  skipped because of it: {}\n", names.join(", ")));
        }
    }
    for n in &blame.other_skipped {
        if inputs.elsewhere(p, n).is_some() {
            continue;
        }
        out.push_str(&format!(
            "skipped {}: {}\n",
            one_line(&node_label(&n.name)),
            n.error.as_deref().map(error).unwrap_or_default()
        ));
    }
    let own_inputs = inputs.of_pipeline(p);
    if let Some(line) = inputs_line(&own_inputs, one_line, one_line) {
        out.push_str(&format!("inputs from other directories: {line}\n"));
    }

    let described = inputs.described(p);
    let changed = described.changed_nodes();
    if changed.is_empty() {
        out.push_str("no change against production\n");
        return out;
    }
    out.push('\n');
    let mut rows = vec![cells([
        "node",
        "change",
        "status",
        "rows: production → branch",
        "Δ",
        "columns",
        "by key: + / − / ~",
    ])];
    for n in &changed {
        let (added, removed) = column_changes(n);
        let columns: Vec<String> = added
            .iter()
            .map(|c| format!("+{}", one_line(c)))
            .chain(removed.iter().map(|c| format!("\u{2212}{}", one_line(c))))
            .collect();
        rows.push(vec![
            one_line(&node_label(&n.name)),
            n.change.as_str().into(),
            status_word(n).into(),
            rows_text(n),
            delta_text(n),
            columns.join(" "),
            keyed_text(n),
        ]);
    }
    out.push_str(&aligned(&rows, "  "));

    let why: Vec<String> = changed
        .iter()
        .flat_map(|n| {
            n.why
                .iter()
                .map(|w| format!("    {}: {}\n", one_line(&node_label(&n.name)), one_line(w)))
        })
        .collect();
    if !why.is_empty() {
        out.push_str("\n  why these ran:\n");
        out.extend(why);
    }
    out
}

/// An engine error on one line, cut short.
fn error(e: &str) -> String {
    truncate_chars(&one_line(e), MAX_ERROR_CHARS)
}

fn cells<const N: usize>(c: [&str; N]) -> Vec<String> {
    c.iter().map(|s| s.to_string()).collect()
}

/// Rows as columns padded to their widest cell (in characters), each line
/// indented and with no trailing spaces.
fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            let pad = widths[i] - c.chars().count();
            line.extend(std::iter::repeat_n(' ', pad + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report;

    #[test]
    fn text_of_the_sample() {
        let text = plain_text(
            &sample_report(),
            Some("https://sluice.example.org/runs/r_5QzB7xW2kLm9"),
        );
        insta::assert_snapshot!("plain_text", text);
    }

    #[test]
    fn failures_first_and_errors_shown() {
        let text = plain_text(&sample_report(), None);
        let b = text
            .find("== clinics/clinic_b: failure ==")
            .expect("clinic_b");
        let a = text
            .find("== clinics/clinic_a: success ==")
            .expect("clinic_a");
        assert!(b < a);
        assert!(text.contains("FAILED Summary: @key sex: 1 duplicate key (2 rows)"));
        assert!(text.contains("  skipped because of it: SummaryByYear"));
        assert!(!text.contains("https://"));
    }

    #[test]
    fn nodes_of_other_directories_are_inputs_described_once() {
        let text = plain_text(&crate::report::shared_inputs_report(), None);
        let (north, south) = text
            .split_once("== clinics/south")
            .expect("a south section");
        assert!(!south.contains("/clinics/north/Patient"), "{text}");
        assert!(
            south.contains(
                "inputs from other directories: clinics/north/Patient (see clinics/north), reference/codes (see clinics/north)"
            ),
            "{text}"
        );
        assert!(
            south.contains(
                "input reference/codes failed (see clinics/north)\n  skipped because of it: Codes"
            ),
            "{text}"
        );
        assert!(
            north.contains(
                "FAILED reference/codes (input from reference): no such table: code_list"
            ),
            "{text}"
        );
        assert!(
            north.contains("inputs from other directories: reference/codes (failed)"),
            "{text}"
        );
        assert_eq!(text.matches("no such table").count(), 1, "{text}");
        assert!(
            text.contains("clinics/south  failure  2        0       1"),
            "{text}"
        );
        assert!(
            text.contains("cache: 2 computed · 0 cached · 1 failed · 2 skipped"),
            "{text}"
        );
    }

    #[test]
    fn columns_are_aligned() {
        let rows = vec![cells(["a", "bb", "c"]), cells(["ééé", "b", ""])];
        assert_eq!(aligned(&rows, "  "), "  a    bb  c\n  ééé  b\n");
    }

    #[test]
    fn names_cannot_forge_lines_or_escapes() {
        let mut r = sample_report();
        r.pipelines[1].nodes[3].name = "Summary\nFAILED nothing\x1b[2J".into();
        let text = plain_text(&r, None);
        assert!(!text.contains('\x1b'));
        assert!(!text.lines().any(|l| l.starts_with("FAILED nothing")));
    }
}
