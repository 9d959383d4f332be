//! The pull-request comment: one markdown comment per pull request,
//! found again by its [`MARKER`] and edited in place on every push.
//!
//! Verdict first, failures first, counts only. Every string taken from the
//! report (pipeline and node names, engine errors, reasons) goes into a
//! code span whose fence is longer than any backtick run inside it, on one
//! line, with `|` escaped inside tables: it cannot end the span, break a
//! table, inject HTML, or mention a user. Mermaid labels use mermaid's
//! entity codes.
//!
//! A forge caps the size of a comment (GitHub: 65,536 characters), so the
//! comment is cut by priority to fit [`CommentOptions::max_chars`]: the
//! graphs go first, then the "why" lists, then the node tables of
//! successful pipelines, then rows of the failing pipelines' tables. The
//! marker, heading, verdict, summary table, failures and a note linking the
//! full run report stay. Only a limit too small for those cuts further:
//! errors get shorter, then the summary rows of successful pipelines, the
//! failures and the remaining rows go, and at last the text is cut.

use std::collections::{BTreeMap, HashMap};

use super::{
    Blame, Inputs, Totals, by_severity, column_changes, common_production, count_of, delta_text,
    display_time, duration, input_from, inputs_line, keyed_text, node_label, one_line,
    outcome_icon, rows_text, short_sha, status_word, thousands, truncate_chars,
};
use crate::engine::outcome::{FailureKind, NodeReport, Outcome, PipelineReport, RunReport, Status};
use crate::plan::Change;

/// The first line of every sluice comment: how the daemon finds its own
/// comment on a pull request to edit it.
pub const MARKER: &str = "<!-- sluice:report -->";

/// GitHub's limit on the body of a comment.
pub const GITHUB_MAX_CHARS: usize = 65_536;

/// How much of one engine error the comment shows; the run page has it
/// all.
const MAX_ERROR_CHARS: usize = 600;

/// How much of one engine error the comment shows when even the failures
/// do not fit.
const SHORT_ERROR_CHARS: usize = 120;

/// How many names a list of skipped nodes or of columns shows before
/// counting the rest.
const MAX_LISTED: usize = 10;

/// What the comment links and how long it may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommentOptions {
    /// The run page, linked from the verdict and from the note closing a
    /// trimmed comment.
    pub run_url: Option<String>,
    /// The most the comment may hold, in bytes (so also in characters).
    pub max_chars: usize,
}

impl Default for CommentOptions {
    fn default() -> Self {
        CommentOptions {
            run_url: None,
            max_chars: GITHUB_MAX_CHARS,
        }
    }
}

/// What a rendering leaves out to fit the size limit, in the order parts
/// are given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    graphs: bool,
    why: bool,
    success_tables: bool,
    /// Rows kept in each node table of a pipeline that did not succeed.
    failing_rows: usize,
    /// Engine errors cut to [`SHORT_ERROR_CHARS`] instead of
    /// [`MAX_ERROR_CHARS`]. Only a limit too small for the failures
    /// touches this and what follows.
    short_errors: bool,
    /// Rows kept in the summary table, failures first.
    summary_rows: usize,
    /// Failed nodes listed over the whole comment, failures first.
    failures: usize,
}

const FULL: Cut = Cut {
    graphs: true,
    why: true,
    success_tables: true,
    failing_rows: usize::MAX,
    short_errors: false,
    summary_rows: usize::MAX,
    failures: usize::MAX,
};

/// How many `check` problems the comment lists (the run page has all).
const PROBLEMS_SHOWN: usize = 20;

/// The pull-request comment of a run, in GitHub-flavoured markdown: the
/// marker, a heading naming the commits, the verdict, a table of the
/// pipelines, then a section per pipeline (failures first) with its
/// failures, its changed nodes, why they ran and the changed subgraph.
/// Cut by priority to at most `opts.max_chars` bytes (see the module
/// docs).
pub fn comment_markdown(r: &RunReport, opts: &CommentOptions) -> String {
    let fits = |s: &String| s.len() <= opts.max_chars;
    let full = render(r, opts, FULL);
    if fits(&full) {
        return full;
    }
    let mut cut = FULL;
    for step in [
        |c: &mut Cut| c.graphs = false,
        |c: &mut Cut| c.why = false,
        |c: &mut Cut| c.success_tables = false,
    ] {
        step(&mut cut);
        let s = render(r, opts, cut);
        if fits(&s) {
            return s;
        }
    }

    let most_rows = r
        .pipelines
        .iter()
        .filter(|p| p.outcome != Outcome::Success)
        .map(|p| p.changed_nodes().len())
        .max()
        .unwrap_or(0);
    let rows = |k| {
        render(
            r,
            opts,
            Cut {
                failing_rows: k,
                ..cut
            },
        )
    };
    if let Some(s) = largest_fitting(0, most_rows, &fits, rows) {
        return s;
    }
    cut.failing_rows = 0;

    // Below this, the limit is too small for what should always stay:
    // shorten errors, drop the summary rows of successful pipelines, then
    // failures, then the remaining rows.
    cut.short_errors = true;
    let s = render(r, opts, cut);
    if fits(&s) {
        return s;
    }
    let failing = r
        .pipelines
        .iter()
        .filter(|p| p.outcome != Outcome::Success)
        .count();
    let summary = |k| {
        render(
            r,
            opts,
            Cut {
                summary_rows: k,
                ..cut
            },
        )
    };
    if let Some(s) = largest_fitting(failing, r.pipelines.len(), &fits, summary) {
        return s;
    }
    cut.summary_rows = failing;
    let failures = Totals::of_run(r).failed;
    let listed = |k| render(r, opts, Cut { failures: k, ..cut });
    if let Some(s) = largest_fitting(0, failures, &fits, listed) {
        return s;
    }
    cut.failures = 0;
    let summary = |k| {
        render(
            r,
            opts,
            Cut {
                summary_rows: k,
                ..cut
            },
        )
    };
    if let Some(s) = largest_fitting(0, failing, &fits, summary) {
        return s;
    }
    // A limit below the heading, the verdict and the note: keep what fits.
    hard_cut(
        render(
            r,
            opts,
            Cut {
                summary_rows: 0,
                ..cut
            },
        ),
        opts.max_chars,
    )
}

/// The rendering with the largest `k` in `min..max` that fits, when one
/// does (`k = max` is known not to). A smaller `k` makes a shorter
/// comment, so a binary search finds it in a few renderings.
fn largest_fitting(
    min: usize,
    max: usize,
    fits: &dyn Fn(&String) -> bool,
    render: impl Fn(usize) -> String,
) -> Option<String> {
    if min >= max {
        return None;
    }
    let smallest = render(min);
    if !fits(&smallest) {
        return None;
    }
    let (mut lo, mut hi, mut best) = (min, max, smallest);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let s = render(mid);
        if fits(&s) {
            (lo, best) = (mid, s);
        } else {
            hi = mid;
        }
    }
    Some(best)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn hard_cut(mut s: String, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// The comment with the parts `cut` leaves out left out.
fn render(r: &RunReport, opts: &CommentOptions, cut: Cut) -> String {
    let totals = Totals::of_run(r);
    let mut out = String::new();
    out.push_str(MARKER);
    out.push('\n');
    out.push_str(&heading(r));
    out.push_str("\n\n");
    out.push_str(&verdict(r, &totals, opts));
    out.push_str("\n\n");
    if !r.problems.is_empty() {
        out.push_str(&format!(
            "**The pipelines do not check** ({}); nothing ran:\n\n",
            count_of(r.problems.len(), "problem", "problems")
        ));
        for p in r.problems.iter().take(PROBLEMS_SHOWN) {
            out.push_str(&format!("- {}\n", code(&one_line(p))));
        }
        if r.problems.len() > PROBLEMS_SHOWN {
            out.push_str(&format!(
                "- …and {} more: {}.\n",
                r.problems.len() - PROBLEMS_SHOWN,
                SEE_REPORT
            ));
        }
        out.push('\n');
    }

    let pipelines = by_severity(r);
    out.push_str("| pipeline | status | changed | failed | skipped | time |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for p in pipelines.iter().take(cut.summary_rows) {
        let t = Totals::of_pipeline(p);
        out.push_str(&format!(
            "| {} | {} {} | {} | {} | {} | {} |\n",
            cell(&p.pipeline),
            outcome_icon(p.outcome),
            p.outcome.as_str(),
            thousands(t.changed as u64),
            thousands(t.failed as u64),
            thousands(t.skipped as u64),
            duration(p.duration_ms),
        ));
    }
    if pipelines.len() > cut.summary_rows {
        out.push_str(&format!(
            "\n…and {}: {}.\n",
            count_of(
                pipelines.len() - cut.summary_rows,
                "more pipeline",
                "more pipelines"
            ),
            SEE_REPORT
        ));
    }
    out.push('\n');

    let per_pipeline_production = common_production(r).is_err();
    let mut failures_left = cut.failures;
    let inputs = Inputs::of(pipelines.iter().copied());
    for p in pipelines.iter().take(cut.summary_rows) {
        out.push_str(&section(
            p,
            cut,
            per_pipeline_production,
            &mut failures_left,
            &inputs,
        ));
    }

    if cut != FULL {
        out.push_str(&format!(
            "_Parts of this report were left out to fit the size of a comment: {}._\n\n",
            see_report(opts)
        ));
    }
    out.push_str(&footer(r, &totals));
    out
}

/// `### sluice — data diff for `a1b2c3d` against production `9f8e7d6``.
fn heading(r: &RunReport) -> String {
    let commit = match &r.commit {
        Some(c) => code(short_sha(c)),
        None => "the working tree".into(),
    };
    let production = match common_production(r) {
        Ok(Some(c)) => format!(" against production {}", code(short_sha(c))),
        Ok(None) => ": nothing promoted to production yet".into(),
        Err(()) => " against production".into(),
    };
    format!("### sluice — data diff for {commit}{production}")
}

/// `❌ **1 failure** · 2 pipelines · 7 nodes changed · 4 cached · [full run report](…)`.
fn verdict(r: &RunReport, t: &Totals, opts: &CommentOptions) -> String {
    let word = match r.outcome {
        Outcome::Success => "**no failures**".to_string(),
        Outcome::Failure if t.failures() > 0 => {
            format!("**{}**", count_of(t.failures(), "failure", "failures"))
        }
        Outcome::Failure => "**failure**".into(),
        Outcome::Error => "**error** outside the pipelines' code".into(),
        Outcome::Cancelled => "**cancelled** before the end".into(),
    };
    let mut parts = vec![
        format!("{} {word}", outcome_icon(r.outcome)),
        count_of(r.pipelines.len(), "pipeline", "pipelines"),
        count_of(t.changed, "node changed", "nodes changed"),
        format!("{} cached", thousands(t.cached as u64)),
    ];
    if let Some(u) = &opts.run_url {
        parts.push(format!("[full run report]({})", url(u)));
    }
    parts.join(" · ")
}

/// One pipeline: failures (taken from `failures_left`), skipped nodes,
/// its inputs from other directories, the changed nodes, why they ran,
/// the changed subgraph. An input is described only where `inputs` says.
fn section(
    p: &PipelineReport,
    cut: Cut,
    own_production: bool,
    failures_left: &mut usize,
    inputs: &Inputs,
) -> String {
    let error_chars = if cut.short_errors {
        SHORT_ERROR_CHARS
    } else {
        MAX_ERROR_CHARS
    };
    let error_code = |e: &str| code(&truncate_chars(&one_line(e), error_chars));
    let mut out = format!("#### {} {}\n\n", outcome_icon(p.outcome), code(&p.pipeline));
    if own_production {
        match &p.production_commit {
            Some(c) => out.push_str(&format!(
                "Compared with production {}.\n\n",
                code(short_sha(c))
            )),
            None => out.push_str("Nothing promoted to production yet.\n\n"),
        }
    }
    if let Some(e) = &p.error {
        out.push_str(&format!("**Pipeline error**: {}\n\n", error_code(e)));
    }
    if p.promoted {
        out.push_str(&format!(
            "Promoted: {} now points at this run.\n\n",
            code(&format!("production/{}", p.pipeline))
        ));
    }

    let blame = Blame::of(p);
    let shown = blame.failures.len().min(*failures_left);
    *failures_left -= shown;
    for (node, skipped) in &blame.failures[..shown] {
        let label = node_label(&node.name);
        match (inputs.elsewhere(p, node), input_from(&node.name)) {
            (Some(q), _) => {
                out.push_str(&format!("Input {} failed (see {})", code(&label), code(q)));
            }
            (None, from) => {
                out.push_str(&format!("**{} failed**", code(&label)));
                if let Some((dir, _)) = from {
                    out.push_str(&format!(" (an input from {})", code(dir)));
                }
                if node.failure == Some(FailureKind::Infra) {
                    out.push_str(" (an infrastructure error, not the pipeline's code)");
                }
                if let Some(e) = &node.error {
                    out.push_str(&format!(" — {}", error_code(e)));
                }
            }
        }
        if !skipped.is_empty() {
            let labels: Vec<String> = skipped.iter().map(|n| node_label(&n.name)).collect();
            out.push_str(&format!(
                "\nSkipped because of it: {}.",
                name_list(labels.iter().map(String::as_str))
            ));
        }
        out.push_str("\n\n");
    }
    if blame.failures.len() > shown {
        let n = blame.failures.len() - shown;
        let what = match (shown > 0, n) {
            (true, 1) => "…and 1 more failure".to_string(),
            (true, n) => format!("…and {} more failures", thousands(n as u64)),
            (false, n) => count_of(n, "failure", "failures"),
        };
        out.push_str(&format!("{what}: {}.\n\n", SEE_REPORT));
    }
    // Skipped without a failure upstream (a cancelled run), by reason.
    let mut by_reason: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for n in &blame.other_skipped {
        if inputs.elsewhere(p, n).is_some() {
            continue;
        }
        by_reason
            .entry(n.error.as_deref().unwrap_or(""))
            .or_default()
            .push(node_label(&n.name));
    }
    for (reason, names) in by_reason {
        out.push_str(&format!(
            "Skipped: {}",
            name_list(names.iter().map(String::as_str))
        ));
        if !reason.is_empty() {
            out.push_str(&format!(" — {}", error_code(reason)));
        }
        out.push_str("\n\n");
    }

    let own_inputs = inputs.of_pipeline(p);
    if let Some(line) = inputs_line(&own_inputs, code, code) {
        out.push_str(&format!("Inputs from other directories: {line}.\n\n"));
    }

    let described = inputs.described(p);
    let changed = described.changed_nodes();
    if changed.is_empty() {
        out.push_str("No change against production.\n\n");
        return out;
    }
    let keep = if p.outcome == Outcome::Success {
        if !cut.success_tables {
            out.push_str(&format!(
                "{}: {}.\n\n",
                count_of(changed.len(), "changed node", "changed nodes"),
                SEE_REPORT
            ));
            return out;
        }
        changed.len()
    } else {
        cut.failing_rows.min(changed.len())
    };
    if keep > 0 {
        out.push_str(
            "| node | change | status | rows: production → branch | Δ | columns | by key: + / − / ~ |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|\n");
        for n in &changed[..keep] {
            out.push_str(&node_row(n));
        }
        out.push('\n');
    }
    if keep < changed.len() {
        out.push_str(&format!(
            "{}{}: {}.\n\n",
            if keep > 0 { "…and " } else { "" },
            count_of(
                changed.len() - keep,
                if keep > 0 {
                    "more changed node"
                } else {
                    "changed node"
                },
                if keep > 0 {
                    "more changed nodes"
                } else {
                    "changed nodes"
                },
            ),
            SEE_REPORT
        ));
    }

    if cut.why {
        let why: Vec<&&NodeReport> = changed.iter().filter(|n| !n.why.is_empty()).collect();
        if !why.is_empty() {
            out.push_str("<details><summary>Why these ran</summary>\n\n");
            for n in why {
                let reasons: Vec<String> = n.why.iter().map(|w| code(w)).collect();
                out.push_str(&format!(
                    "- {}: {}\n",
                    code(&node_label(&n.name)),
                    reasons.join("; ")
                ));
            }
            out.push_str("\n</details>\n\n");
        }
    }
    if cut.graphs {
        out.push_str(&graph(p, &described));
    }
    out
}

/// One row of a node table.
fn node_row(n: &NodeReport) -> String {
    let status = match n.status {
        Some(Status::Failed) => "**failed**".to_string(),
        _ => status_word(n).to_string(),
    };
    let (added, removed) = column_changes(n);
    let mut columns: Vec<String> = Vec::new();
    columns.extend(listed(added, |c| format!("+{}", cell(c))));
    columns.extend(listed(removed, |c| format!("\u{2212}{}", cell(c))));
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |\n",
        cell(&node_label(&n.name)),
        n.change.as_str(),
        status,
        rows_text(n),
        delta_text(n),
        columns.join(" "),
        keyed_text(n),
    )
}

/// At most [`MAX_LISTED`] items rendered by `f`, then `+N more`.
fn listed(items: &[String], f: impl Fn(&str) -> String) -> Vec<String> {
    let mut v: Vec<String> = items.iter().take(MAX_LISTED).map(|c| f(c)).collect();
    if items.len() > MAX_LISTED {
        v.push(format!(
            "(+{} more)",
            thousands((items.len() - MAX_LISTED) as u64)
        ));
    }
    v
}

/// `` `A`, `B` and 3 more ``.
fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    let shown: Vec<String> = names.iter().take(MAX_LISTED).map(|n| code(n)).collect();
    let mut s = shown.join(", ");
    if names.len() > MAX_LISTED {
        s.push_str(&format!(
            " and {} more",
            thousands((names.len() - MAX_LISTED) as u64)
        ));
    }
    s
}

/// The changed subgraph as a collapsed mermaid flowchart: every edge into
/// a changed node `described` (`p`'s nodes this section describes)
/// holds, nodes styled by what happened to them. Empty when no changed
/// node has an input.
fn graph(p: &PipelineReport, described: &PipelineReport) -> String {
    let changed: Vec<&NodeReport> = described
        .changed_nodes()
        .into_iter()
        .filter(|n| n.change != Change::Removed)
        .collect();
    // Ids by first appearance in the pipeline's (dependency) order, so the
    // text is stable; names only ever appear as escaped labels.
    let order: HashMap<&str, usize> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut edges: Vec<(&str, &str)> = Vec::new();
    for n in &changed {
        for i in &n.inputs {
            edges.push((i.as_str(), n.name.as_str()));
        }
    }
    if edges.is_empty() {
        return String::new();
    }
    let mut names: Vec<&str> = edges.iter().flat_map(|&(a, b)| [a, b]).collect();
    names.sort_by_key(|n| (order.get(n).copied().unwrap_or(usize::MAX), *n));
    names.dedup();
    edges.sort_by_key(|&(a, b)| (order.get(a), order.get(b), a, b));
    let id: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let by_name: HashMap<&str, &NodeReport> = described
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n))
        .collect();

    let mut out =
        String::from("<details><summary>Changed subgraph</summary>\n\n```mermaid\ngraph LR\n");
    for (i, n) in names.iter().enumerate() {
        out.push_str(&format!("  n{i}[\"{}\"]\n", mermaid_label(&node_label(n))));
    }
    for (a, b) in &edges {
        out.push_str(&format!("  n{} --> n{}\n", id[a], id[b]));
    }
    let mut classes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let Some(node) = by_name.get(n) else { continue };
        let class = match (node.status, node.change) {
            (Some(Status::Failed), _) => "failed",
            (Some(Status::Skipped), _) => "skipped",
            (_, Change::Modified | Change::New) => "modified",
            (_, Change::Affected) => "affected",
            _ => continue,
        };
        classes.entry(class).or_default().push(format!("n{i}"));
    }
    for (class, ids) in &classes {
        out.push_str(&format!("  class {} {class}\n", ids.join(",")));
    }
    out.push_str("  classDef modified fill:#fde2a7\n");
    out.push_str("  classDef affected fill:#dbe9fb\n");
    out.push_str("  classDef failed fill:#f8c4c4,stroke:#c62828\n");
    out.push_str("  classDef skipped fill:#eeeeee,stroke-dasharray:4 2\n");
    out.push_str("```\n\n</details>\n\n");
    out
}

/// `<sub>` counts, time, commit and version.
fn footer(r: &RunReport, t: &Totals) -> String {
    let mut parts = vec![
        format!("{} computed", thousands(t.computed as u64)),
        format!("{} cached", thousands(t.cached as u64)),
    ];
    if t.failed > 0 {
        parts.push(format!("{} failed", thousands(t.failed as u64)));
    }
    if t.skipped > 0 {
        parts.push(format!("{} skipped", thousands(t.skipped as u64)));
    }
    parts.push(format!("run took {}", duration(r.duration_ms)));
    let mut started = format!("started {}", text(&display_time(&r.started_at)));
    if let Some(c) = &r.commit {
        started.push_str(&format!(" for {}", code(short_sha(c))));
    }
    parts.push(started);
    parts.push(format!("sluice {}", text(&r.version)));
    format!("<sub>{}</sub>\n", parts.join(" · "))
}

/// What a note of something left out says: the link is in the verdict
/// line and in the note closing a trimmed comment, once.
const SEE_REPORT: &str = "see the full run report";

/// `see the [full run report](url)`, or the words alone without a URL.
fn see_report(opts: &CommentOptions) -> String {
    match &opts.run_url {
        Some(u) => format!("see the [full run report]({})", url(u)),
        None => "see the full run report".into(),
    }
}

/// A string from the report as an inline code span, on one line: the
/// fence is one backtick longer than the longest run inside, and padded
/// with spaces when the text starts or ends with a backtick, so nothing
/// inside can close it. Markdown, HTML and mentions are inert in a span.
pub(crate) fn code(s: &str) -> String {
    let s = one_line(s);
    if s.is_empty() {
        return "` `".into();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    if s.starts_with('`') || s.ends_with('`') {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// [`code`] for a table cell: a `|` would end the cell, even in a span,
/// unless escaped (GFM strips the backslash again).
fn cell(s: &str) -> String {
    code(s).replace('|', "\\|")
}

/// Plain text for the middle of a line, literal in markdown: the
/// characters that start emphasis, links, code, HTML, entities, table
/// cells or mentions are backslash-escaped.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        if "\\`*_[]()<>&!|~#@".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A URL for a markdown link destination: characters that would end or
/// break it are percent-encoded.
fn url(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    for b in u.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'*+,;=%".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A label inside a quoted mermaid node: characters mermaid or the
/// enclosing code fence would read are written as mermaid entity codes.
fn mermaid_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        match c {
            '"' | '#' | '<' | '>' | '&' | '`' => out.push_str(&format!("#{};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report;

    fn opts(max_chars: usize) -> CommentOptions {
        CommentOptions {
            run_url: Some("https://sluice.example.org/runs/r_5QzB7xW2kLm9".into()),
            max_chars,
        }
    }

    #[test]
    fn check_problems_are_listed_first_and_escaped() {
        let mut r = sample_report();
        r.pipelines.clear();
        r.outcome = Outcome::Failure;
        r.problems = vec![
            "clinics/a/X.sql:3: unknown directive @dpend; did you mean @depend?".into(),
            "clinics/a/Y.sql:1: <script>alert(1)</script> | `x`".into(),
        ];
        let md = comment_markdown(&r, &opts(65_536));
        assert!(md.contains("do not check"), "{md}");
        assert!(
            md.contains("clinics/a/X.sql:3: unknown directive @dpend"),
            "{md}"
        );
        assert!(!md.contains("\n<script>"), "{md}");
        let text = crate::report::plain_text(&r, None);
        assert!(text.contains("clinics/a/X.sql:3:"), "{text}");
        let html = crate::report::run_page(&r, &|_| None);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    /// A report far over any limit: 40 pipelines of 300 changed nodes,
    /// every fifth pipeline failing with long errors.
    fn huge_report() -> RunReport {
        let mut r = sample_report();
        let a = r.pipelines[0].clone();
        let b = r.pipelines[1].clone();
        r.pipelines.clear();
        for i in 0..40 {
            let mut p = if i % 5 == 0 { b.clone() } else { a.clone() };
            p.pipeline = format!("clinics/clinic_{i:02}");
            let template = p.nodes[2].clone();
            for j in 0..300 {
                let mut n = template.clone();
                n.name = format!("Derived_{j:03}_{}", "x".repeat(30));
                n.inputs = vec![template.name.clone()];
                n.why = vec![format!("input {} changed", template.name)];
                p.nodes.push(n);
            }
            if let Some(f) = p
                .nodes
                .iter_mut()
                .find(|n| n.status == Some(Status::Failed))
            {
                f.error = Some(format!(
                    "{}\n{}",
                    "near \"SELEC\": syntax error ",
                    "y".repeat(3_000)
                ));
            }
            r.pipelines.push(p);
        }
        r
    }

    #[test]
    fn comment_of_the_sample() {
        let md = comment_markdown(&sample_report(), &opts(GITHUB_MAX_CHARS));
        insta::assert_snapshot!("comment", md);
    }

    #[test]
    fn comment_without_a_run_url() {
        let md = comment_markdown(&sample_report(), &CommentOptions::default());
        assert!(md.starts_with(MARKER));
        assert!(!md.contains("]("), "no link without a URL:\n{md}");
    }

    #[test]
    fn failures_come_before_successes() {
        let md = comment_markdown(&sample_report(), &opts(GITHUB_MAX_CHARS));
        let b = md
            .find("#### ❌ `clinics/clinic_b`")
            .expect("clinic_b section");
        let a = md
            .find("#### ✅ `clinics/clinic_a`")
            .expect("clinic_a section");
        assert!(b < a);
        let row_b = md.find("| `clinics/clinic_b` |").expect("clinic_b row");
        let row_a = md.find("| `clinics/clinic_a` |").expect("clinic_a row");
        assert!(row_b < row_a);
        // Within a pipeline, the failed node heads its table.
        let table = &md[b..a];
        let summary = table.find("| `Summary` |").expect("Summary row");
        let albumin = table.find("| `Albumin` |").expect("Albumin row");
        assert!(summary < albumin);
        assert!(md.contains("**`Summary` failed** — `@key sex: 1 duplicate key (2 rows)`"));
        assert!(md.contains("Skipped because of it: `SummaryByYear`."));
    }

    #[test]
    fn other_verdicts_and_commits() {
        let mut r = sample_report();
        r.outcome = Outcome::Error;
        r.commit = None;
        r.pipelines[0].production_commit = Some("0123456789abcdef".into());
        r.pipelines[1].outcome = Outcome::Error;
        r.pipelines[1].error = Some("cannot write the state database: disk full".into());
        r.pipelines[1].nodes[3].failure = Some(FailureKind::Infra);
        let md = comment_markdown(&r, &opts(GITHUB_MAX_CHARS));
        assert!(md.contains("### sluice — data diff for the working tree against production\n"));
        assert!(md.contains("⚠️ **error** outside the pipelines' code · 2 pipelines"));
        assert!(md.contains("Compared with production `0123456`."));
        assert!(md.contains("**Pipeline error**: `cannot write the state database: disk full`"));
        assert!(md.contains("(an infrastructure error, not the pipeline's code)"));

        let mut r = sample_report();
        r.outcome = Outcome::Cancelled;
        r.pipelines[1].outcome = Outcome::Cancelled;
        r.pipelines[1].nodes[3].status = Some(Status::Skipped);
        r.pipelines[1].nodes[3].error =
            Some("the run was cancelled before this node finished".into());
        r.pipelines[1].nodes[4].error =
            Some("the run was cancelled before this node finished".into());
        r.pipelines[1].nodes[4].inputs = vec![];
        let md = comment_markdown(&r, &opts(GITHUB_MAX_CHARS));
        assert!(md.contains("⏹ **cancelled** before the end"));
        assert!(md.contains(
            "Skipped: `Summary`, `SummaryByYear` — `the run was cancelled before this node finished`"
        ));

        let mut r = sample_report();
        r.outcome = Outcome::Success;
        r.pipelines.truncate(1);
        r.pipelines[0].promoted = true;
        let md = comment_markdown(&r, &opts(GITHUB_MAX_CHARS));
        assert!(md.contains("✅ **no failures** · 1 pipeline · 3 nodes changed · 3 cached"));
        assert!(md.contains("Promoted: `production/clinics/clinic_a` now points at this run."));
    }

    #[test]
    fn nodes_of_other_directories_are_inputs_described_once() {
        let md = comment_markdown(
            &crate::report::shared_inputs_report(),
            &opts(GITHUB_MAX_CHARS),
        );
        let (north, south) = md
            .split_once("#### ❌ `clinics/south`")
            .expect("a south section");
        assert!(!south.contains("/clinics/north/Patient"), "{md}");
        assert!(!south.contains("| `clinics/north/Patient` |"), "{md}");
        assert!(
            south.contains(
                "Inputs from other directories: `clinics/north/Patient` (see `clinics/north`), `reference/codes` (see `clinics/north`)."
            ),
            "{md}"
        );
        assert!(
            south.contains("Input `reference/codes` failed (see `clinics/north`)\nSkipped because of it: `Codes`."),
            "{md}"
        );
        assert!(
            north.contains("**`reference/codes` failed** (an input from `reference`) — `no such table: code_list`"),
            "{md}"
        );
        assert!(
            north.contains("| `reference/codes` | new | **failed** |"),
            "{md}"
        );
        assert_eq!(md.matches("no such table").count(), 1, "{md}");
        assert!(
            md.contains("| `clinics/south` | ❌ failure | 2 | 0 | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("❌ **1 failure** · 2 pipelines · 5 nodes changed"),
            "{md}"
        );
        assert!(
            md.contains("<sub>2 computed · 0 cached · 1 failed · 2 skipped"),
            "{md}"
        );
        // In south's graph the input stands first, by its label, unstyled.
        assert!(
            south.contains("graph LR\n  n0[\"clinics/north/Patient\"]\n  n1[\"Both\"]"),
            "{md}"
        );
        assert!(south.contains("  class n1 modified\n"), "{md}");
    }

    #[test]
    fn the_sample_fits_untrimmed() {
        let md = comment_markdown(&sample_report(), &opts(GITHUB_MAX_CHARS));
        assert!(md.contains("```mermaid"));
        assert!(md.contains("Why these ran"));
        assert!(!md.contains("left out"));
    }

    #[test]
    fn huge_reports_are_cut_to_the_limit() {
        let r = huge_report();
        let full = comment_markdown(&r, &opts(usize::MAX));
        assert!(
            full.len() > 1_000_000,
            "the fixture is huge: {}",
            full.len()
        );
        for max in [2_000, 10_000, 65_536, 300_000] {
            let md = comment_markdown(&r, &opts(max));
            assert!(md.len() <= max, "{max}: {}", md.len());
            assert!(md.starts_with(MARKER), "{max}");
            assert!(md.contains("### sluice — data diff"), "{max}");
            assert!(md.contains("left out to fit"), "{max}");
            assert!(
                md.contains(
                    "see the [full run report](https://sluice.example.org/runs/r_5QzB7xW2kLm9)"
                ),
                "{max}"
            );
            assert!(md.trim_end().ends_with("</sub>"), "{max}");
        }
        // GitHub's limit keeps the verdict, the whole summary and every
        // failure; the graphs and the why lists went first.
        let md = comment_markdown(&r, &opts(GITHUB_MAX_CHARS));
        assert!(md.contains("❌ **8 failures**"));
        assert!(md.contains("| `clinics/clinic_39` |"));
        assert_eq!(md.matches("**`Summary` failed**").count(), 8);
        assert!(!md.contains("```mermaid"));
        assert!(!md.contains("Why these ran"));
        assert!(md.contains("303 changed nodes: see the full run report."));
    }

    #[test]
    fn cuts_go_by_priority() {
        let r = sample_report();
        let len = |c: Cut| render(&r, &opts(0), c).len();
        let no_graphs = Cut {
            graphs: false,
            ..FULL
        };
        let no_why = Cut {
            why: false,
            ..no_graphs
        };
        let no_success = Cut {
            success_tables: false,
            ..no_why
        };
        // Each limit just below one stage gives the next one.
        for (limit, expect) in [
            (len(no_graphs), no_graphs),
            (len(no_why), no_why),
            (len(no_success), no_success),
        ] {
            assert_eq!(
                comment_markdown(&r, &opts(limit)),
                render(&r, &opts(0), expect)
            );
        }
        let md = comment_markdown(&r, &opts(len(no_success) - 1));
        assert!(md.contains(" more changed node"), "{md}");
        assert!(md.contains("**`Summary` failed**"));
        assert!(
            md.contains("| `Summary` |"),
            "failed rows are kept longest:\n{md}"
        );
    }

    #[test]
    fn comment_cut_to_2000_bytes() {
        let md = comment_markdown(&huge_report(), &opts(2_000));
        insta::assert_snapshot!("comment_cut_to_2000", md);
    }

    #[test]
    fn tiny_limits_still_hold() {
        let r = huge_report();
        for max in [0, 5, 22, 100, 400] {
            let md = comment_markdown(&r, &opts(max));
            assert!(md.len() <= max, "{max}: {}", md.len());
        }
    }

    #[test]
    fn code_spans_cannot_be_escaped() {
        assert_eq!(code("Albumin"), "`Albumin`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x``"), "``` `x`` ```");
        assert_eq!(code("a\nb\r\n<script>"), "`a b <script>`");
        assert_eq!(code(""), "` `");
        assert_eq!(cell("a|b"), "`a\\|b`");
    }

    #[test]
    fn hostile_names_and_errors_stay_inside_their_cells() {
        let mut r = sample_report();
        let evil = "Sum`|`mary <script>alert(1)</script>\n| x | y |\n@admin #1 **b**";
        let p = &mut r.pipelines[1];
        p.nodes[3].name = evil.into();
        p.nodes[3].error = Some(format!("bad ``` | {evil}\n\n# heading"));
        p.nodes[4].inputs = vec![evil.into()];
        let md = comment_markdown(&r, &opts(GITHUB_MAX_CHARS));
        let expected = code(evil).replace('|', "\\|");
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {expected} |")))
            .expect("the node's row");
        // Seven cells: eight unescaped pipes.
        let pipes = row
            .match_indices('|')
            .filter(|(i, _)| !row[..*i].ends_with('\\'))
            .count();
        assert_eq!(pipes, 8, "{row}");
        // Nothing of it starts a line, so no heading, table or block.
        assert!(
            !md.lines()
                .any(|l| l.starts_with("| x |") || l.starts_with("# heading"))
        );
        // Outside code spans, nothing of it remains.
        let outside: String = md
            .lines()
            .filter(|l| !l.starts_with("  n"))
            .map(strip_code_spans)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!outside.contains("<script"), "{outside}");
        assert!(!outside.contains("@admin"), "{outside}");
        // The mermaid label is entity-coded.
        assert!(md.contains("#60;script#62;"));
        assert!(!md.contains("```mermaid\ngraph LR\n  n0[\"Sum`"));
    }

    /// A line without its code spans (as CommonMark pairs backtick runs).
    fn strip_code_spans(line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            out.push_str(&rest[..start]);
            let run = rest[start..].chars().take_while(|&c| c == '`').count();
            let after = &rest[start + run..];
            let fence = "`".repeat(run);
            // The closing run must be exactly as long.
            let mut search = 0;
            let mut close = None;
            while let Some(i) = after[search..].find(&fence) {
                let at = search + i;
                let len = after[at..].chars().take_while(|&c| c == '`').count();
                if len == run {
                    close = Some(at);
                    break;
                }
                search = at + len;
            }
            match close {
                Some(at) => rest = &after[at + run..],
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn urls_cannot_break_links() {
        assert_eq!(
            url("https://x.org/runs/a b)c<d>"),
            "https://x.org/runs/a%20b%29c%3Cd%3E"
        );
    }

    #[test]
    fn mermaid_labels_are_entity_coded() {
        assert_eq!(
            mermaid_label("a\"b#c<d>`e&"),
            "a#34;b#35;c#60;d#62;#96;e#38;"
        );
    }
}
