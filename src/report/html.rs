//! The run page: one self-contained HTML5 document per run (inline CSS,
//! no script, nothing loaded from elsewhere), with every pipeline and
//! every node. Every string from the report goes through [`escape`]; a
//! content security policy forbids scripts and remote loads besides.

use super::{
    Blame, Inputs, Totals, by_severity, column_changes, common_production, count_of, delta_text,
    display_time, duration, input_from, keyed_text, node_label, outcome_icon, rows_text, short_sha,
    status_word, thousands,
};
use crate::engine::outcome::{FailureKind, NodeReport, Outcome, PipelineReport, RunReport, Status};

/// The page's style: readable without it, and nothing loaded from
/// anywhere else.
const STYLE: &str = "
body { font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0; color: #1f2328; background: #fff; }
header, main, footer { max-width: 80rem; margin: 0 auto; padding: 0 1.5rem; }
h1 { font-size: 1.5rem; margin: 1.5rem 0 .5rem; }
h2 { font-size: 1.2rem; margin: 2.5rem 0 .5rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
h3 { font-size: 1rem; margin: 0 0 .4rem; }
code, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: .4rem 0; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .5rem 0 1rem; }
dl.meta dt { color: #59636e; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.verdict { font-size: 1.15rem; font-weight: 600; padding: .6rem .9rem; border-radius: 6px; }
.verdict.success { background: #dafbe1; }
.verdict.failure, .verdict.error { background: #ffebe9; }
.verdict.cancelled { background: #eaeef2; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
tr.failed td { background: #fff1f0; }
tr.skipped td { color: #59636e; }
tr.detail td { border-top: 0; padding-top: 0; font-size: .9rem; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: 1rem; font-size: .85rem; font-weight: 600; }
.badge.success { background: #dafbe1; color: #116329; }
.badge.failure, .badge.error, .badge.failed { background: #ffebe9; color: #a40e26; }
.badge.cancelled, .badge.skipped { background: #eaeef2; color: #424a53; }
.error-box { border: 2px solid #cf222e; background: #fff1f0; border-radius: 6px; padding: .75rem 1rem; margin: .75rem 0; }
.error-box .kind { color: #59636e; font-size: .9rem; margin: 0; }
.note { color: #59636e; }
ul.why { margin: .2rem 0; padding-left: 1.2rem; }
pre.log { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .5rem .75rem; max-height: 30rem; overflow: auto; }
footer { color: #59636e; font-size: .85rem; margin: 2rem auto; }
";

/// The run page of a report. `logs(node)` returns a node's command log
/// when the admin allows logs on run pages (the caller reads the blob);
/// the page shows it in a `<pre>`, escaped like everything else.
pub fn run_page(r: &RunReport, logs: &dyn Fn(&NodeReport) -> Option<String>) -> String {
    let t = Totals::of_run(r);
    let commit = r.commit.as_deref().map(short_sha);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<meta name=\"robots\" content=\"noindex, nofollow\">\n");
    out.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
    );
    out.push_str(&format!(
        "<title>sluice run{}: {}</title>\n",
        commit
            .map(|c| format!(" {}", escape(c)))
            .unwrap_or_default(),
        r.outcome.as_str()
    ));
    out.push_str(&format!(
        "<style>{STYLE}</style>\n</head>\n<body>\n<header>\n"
    ));
    out.push_str(&format!(
        "<h1>sluice run{}</h1>\n",
        commit
            .map(|c| format!(" <code>{}</code>", escape(c)))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "<p class=\"verdict {}\">{} {}</p>\n",
        r.outcome.as_str(),
        outcome_icon(r.outcome),
        escape(&verdict(r, &t))
    ));

    out.push_str("<dl class=\"meta\">\n");
    if let Some(c) = &r.commit {
        meta(&mut out, "commit", &code(c));
    }
    if let Some(g) = &r.git_ref {
        meta(&mut out, "ref", &code(g));
    }
    match common_production(r) {
        Ok(Some(c)) => meta(&mut out, "production commit", &code(c)),
        Ok(None) => meta(&mut out, "production", "nothing promoted yet"),
        Err(()) => {}
    }
    meta(&mut out, "started", &escape(&display_time(&r.started_at)));
    meta(&mut out, "took", &escape(&duration(r.duration_ms)));
    meta(
        &mut out,
        "nodes",
        &escape(&format!(
            "{} computed · {} cached · {} failed · {} skipped",
            thousands(t.computed as u64),
            thousands(t.cached as u64),
            thousands(t.failed as u64),
            thousands(t.skipped as u64)
        )),
    );
    if let Some(id) = &r.run_id {
        meta(&mut out, "run", &code(id));
    }
    out.push_str("</dl>\n</header>\n<main>\n");
    if !r.problems.is_empty() {
        out.push_str("<div class=\"error-box\"><h3>The pipelines do not check; nothing ran</h3>\n<pre class=\"error\">");
        for p in &r.problems {
            out.push_str(&escape(p));
            out.push('\n');
        }
        out.push_str("</pre></div>\n");
    }

    let pipelines = by_severity(r);
    out.push_str("<table class=\"summary\">\n<thead><tr><th>pipeline</th><th>status</th><th>changed</th><th>computed</th><th>cached</th><th>failed</th><th>skipped</th><th>time</th></tr></thead>\n<tbody>\n");
    for (i, p) in pipelines.iter().enumerate() {
        let pt = Totals::of_pipeline(p);
        out.push_str(&format!(
            "<tr><td><a href=\"#p{i}\"><code>{}</code></a></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&p.pipeline),
            badge(p.outcome.as_str()),
            thousands(pt.changed as u64),
            thousands(pt.computed as u64),
            thousands(pt.cached as u64),
            thousands(pt.failed as u64),
            thousands(pt.skipped as u64),
            escape(&duration(p.duration_ms)),
        ));
    }
    out.push_str("</tbody>\n</table>\n");

    let inputs = Inputs::of(pipelines.iter().copied());
    let anchors: std::collections::HashMap<&str, usize> = pipelines
        .iter()
        .enumerate()
        .map(|(i, p)| (p.pipeline.as_str(), i))
        .collect();
    for (i, p) in pipelines.iter().enumerate() {
        out.push_str(&section(i, p, logs, &inputs, &anchors));
    }
    out.push_str(&format!(
        "</main>\n<footer>sluice {}</footer>\n</body>\n</html>\n",
        escape(&r.version)
    ));
    out
}

/// `1 failure · 2 pipelines · 7 nodes changed · 4 cached`.
fn verdict(r: &RunReport, t: &Totals) -> String {
    let word = match r.outcome {
        Outcome::Success => "no failures".to_string(),
        Outcome::Failure if t.failures() > 0 => count_of(t.failures(), "failure", "failures"),
        Outcome::Failure => "failure".into(),
        Outcome::Error => "error outside the pipelines' code".into(),
        Outcome::Cancelled => "cancelled before the end".into(),
    };
    format!(
        "{word} · {} · {} · {} cached",
        count_of(r.pipelines.len(), "pipeline", "pipelines"),
        count_of(t.changed, "node changed", "nodes changed"),
        thousands(t.cached as u64)
    )
}

/// One pipeline: its facts, its failures in boxes, its inputs from other
/// directories, every node it describes in a table. An input is
/// described only where `inputs` says; `anchors` numbers the pipelines'
/// sections.
fn section(
    i: usize,
    p: &PipelineReport,
    logs: &dyn Fn(&NodeReport) -> Option<String>,
    inputs: &Inputs,
    anchors: &std::collections::HashMap<&str, usize>,
) -> String {
    let see = |q: &str| match anchors.get(q) {
        Some(j) => format!("<a href=\"#p{j}\"><code>{}</code></a>", escape(q)),
        None => code(q),
    };
    let mut out = format!(
        "<section class=\"pipeline {}\" id=\"p{i}\">\n<h2>{} <code>{}</code> {}</h2>\n",
        p.outcome.as_str(),
        outcome_icon(p.outcome),
        escape(&p.pipeline),
        badge(p.outcome.as_str())
    );
    out.push_str("<dl class=\"meta\">\n");
    match &p.production_commit {
        Some(c) => meta(&mut out, "production commit", &code(c)),
        None => meta(&mut out, "production", "nothing promoted yet"),
    }
    if let Some(d) = &p.production {
        meta(&mut out, "production manifest", &code(&d.to_string()));
    }
    if let Some(d) = &p.manifest {
        meta(&mut out, "this run's manifest", &code(&d.to_string()));
    }
    meta(
        &mut out,
        "promoted",
        if p.promoted {
            "yes: production now points at this run"
        } else {
            "no"
        },
    );
    meta(&mut out, "time", &escape(&duration(p.duration_ms)));
    out.push_str("</dl>\n");

    if let Some(e) = &p.error {
        out.push_str(&format!(
            "<div class=\"error-box\"><h3>Pipeline error</h3><pre class=\"error\">{}</pre></div>\n",
            escape(e)
        ));
    }
    let blame = Blame::of(p);
    for (node, skipped) in &blame.failures {
        let id = node_id(i, p, node);
        let label = node_label(&node.name);
        if let Some(q) = inputs.elsewhere(p, node) {
            out.push_str(&format!(
                "<div class=\"error-box\"><h3>Input {} failed</h3>\n<p>See {}.</p>\n",
                code(&label),
                see(q)
            ));
        } else {
            out.push_str(&format!(
                "<div class=\"error-box\" id=\"{id}-error\"><h3>{}{} failed</h3>\n",
                match input_from(&node.name) {
                    Some(_) => "Input ",
                    None => "",
                },
                code(&label)
            ));
            let kind = match node.failure {
                Some(FailureKind::Infra) => "an infrastructure error: not the pipeline's code",
                _ => "the pipeline's code or data",
            };
            out.push_str(&format!("<p class=\"kind\">{kind}"));
            if let Some(f) = &node.file {
                out.push_str(&format!(" · <code>{}</code>", escape(f)));
            }
            out.push_str("</p>\n");
            if let Some(e) = &node.error {
                out.push_str(&format!("<pre class=\"error\">{}</pre>\n", escape(e)));
            }
        }
        if !skipped.is_empty() {
            let names: Vec<String> = skipped.iter().map(|n| code(&node_label(&n.name))).collect();
            out.push_str(&format!(
                "<p>Skipped because of it: {}.</p>\n",
                names.join(", ")
            ));
        }
        out.push_str("</div>\n");
    }

    let own_inputs = inputs.of_pipeline(p);
    if !own_inputs.is_empty() {
        let items: Vec<String> = own_inputs
            .iter()
            .map(|input| match input.see {
                Some(q) => format!("{} (see {})", code(&input.label), see(q)),
                None => format!(
                    "{} (<a href=\"#{}\">{}</a>)",
                    code(&input.label),
                    node_id(i, p, input.node),
                    escape(status_word(input.node))
                ),
            })
            .collect();
        out.push_str(&format!(
            "<p>Inputs from other directories: {}.</p>\n",
            items.join(", ")
        ));
    }
    if p.nodes.is_empty() {
        out.push_str("<p class=\"note\">This pipeline has no nodes.</p>\n</section>\n");
        return out;
    }
    out.push_str("<table class=\"nodes\">\n<thead><tr><th>node</th><th>status</th><th>change</th><th>rows: production → branch</th><th>Δ</th><th>columns</th><th>by key: + / − / ~</th><th>time</th><th>output</th></tr></thead>\n<tbody>\n");
    for node in p.nodes.iter().filter(|n| inputs.elsewhere(p, n).is_none()) {
        out.push_str(&node_rows(i, p, node, logs));
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    out
}

/// A node's row, and a detail row under it for why it ran, why it was
/// skipped, and its log.
fn node_rows(
    i: usize,
    p: &PipelineReport,
    n: &NodeReport,
    logs: &dyn Fn(&NodeReport) -> Option<String>,
) -> String {
    let id = node_id(i, p, n);
    let class = match n.status {
        Some(s) => s.as_str(),
        None => "removed",
    };
    let (added, removed) = column_changes(n);
    let columns: Vec<String> = added
        .iter()
        .map(|c| format!("+<code>{}</code>", escape(c)))
        .chain(
            removed
                .iter()
                .map(|c| format!("\u{2212}<code>{}</code>", escape(c))),
        )
        .collect();
    let mut out = format!(
        "<tr class=\"{class}\" id=\"{id}\"><td><code>{}</code>{}{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
        escape(&node_label(&n.name)),
        input_from(&n.name)
            .map(|(dir, _)| format!("<br><small>input from {}</small>", escape(dir)))
            .unwrap_or_default(),
        n.file
            .as_ref()
            .map(|f| format!("<br><small>{}</small>", escape(f)))
            .unwrap_or_default(),
        badge(status_word(n)),
        n.change.as_str(),
        escape(&rows_text(n)),
        escape(&delta_text(n)),
        columns.join(" "),
        escape(&keyed_text(n)),
        if n.status.is_some() {
            escape(&duration(n.duration_ms))
        } else {
            String::new()
        },
        n.output
            .map(|d| format!("<code>{}</code>", escape(&d.short())))
            .unwrap_or_default(),
    );

    let mut detail = String::new();
    if !n.why.is_empty() {
        detail.push_str("<ul class=\"why\">");
        for w in &n.why {
            detail.push_str(&format!("<li>{}</li>", escape(w)));
        }
        detail.push_str("</ul>");
    }
    match (n.status, &n.error) {
        (Some(Status::Failed), Some(_)) => detail.push_str(&format!(
            "<p><a href=\"#{id}-error\">Its error is shown above.</a></p>"
        )),
        (_, Some(e)) => detail.push_str(&format!("<p class=\"note\">Not run: {}</p>", escape(e))),
        (_, None) => {}
    }
    if let Some(log) = logs(n) {
        let open = if n.status == Some(Status::Failed) {
            " open"
        } else {
            ""
        };
        detail.push_str(&format!(
            "<details{open}><summary>command log</summary><pre class=\"log\">{}</pre></details>",
            escape(&log)
        ));
    }
    if !detail.is_empty() {
        out.push_str(&format!(
            "<tr class=\"detail {class}\"><td colspan=\"9\">{detail}</td></tr>\n"
        ));
    }
    out
}

/// A node's anchor: by position, so no name reaches an attribute.
fn node_id(i: usize, p: &PipelineReport, n: &NodeReport) -> String {
    let j = p
        .nodes
        .iter()
        .position(|m| std::ptr::eq(m, n))
        .unwrap_or(usize::MAX);
    format!("p{i}-n{j}")
}

/// A `<dt>`/`<dd>` pair; `value_html` is already escaped.
fn meta(out: &mut String, term: &str, value_html: &str) {
    out.push_str(&format!("<dt>{term}</dt><dd>{value_html}</dd>\n"));
}

/// Escaped text in `<code>`.
fn code(s: &str) -> String {
    format!("<code>{}</code>", escape(s))
}

/// A status word in a coloured pill.
fn badge(word: &str) -> String {
    format!("<span class=\"badge {0}\">{0}</span>", escape(word))
}

/// Text for an HTML element or a quoted attribute: the five markup
/// characters as entities, and control characters other than line breaks
/// and tabs (terminal escapes in a log) as U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report;

    fn sample_logs(n: &NodeReport) -> Option<String> {
        match n.name.as_str() {
            "Summary" => {
                Some("sqlite> SELECT sex, count(*) FROM PatientAlbumin\n<exit 1>\n".into())
            }
            _ => None,
        }
    }

    #[test]
    fn page_of_the_sample() {
        insta::assert_snapshot!("run_page", run_page(&sample_report(), &sample_logs));
    }

    #[test]
    fn escape_the_markup_characters() {
        assert_eq!(
            escape("<a href=\"x\">Tom & 'Jerry'</a>\x1b[0m\n"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;\u{FFFD}[0m\n"
        );
    }

    #[test]
    fn scripts_in_names_errors_and_logs_are_escaped() {
        let mut r = sample_report();
        let evil = "<script>alert(1)</script>";
        r.pipelines[1].pipeline = format!("clinics/{evil}");
        r.pipelines[1].nodes[3].name = format!("Summary{evil}");
        r.pipelines[1].nodes[3].error = Some(format!("bad {evil}"));
        r.pipelines[1].nodes[4].why = vec![evil.into()];
        r.version = evil.into();
        let page = run_page(&r, &|_| Some(evil.to_string()));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("Summary&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("bad &lt;script&gt;"));
    }

    #[test]
    fn a_self_contained_page() {
        let page = run_page(&sample_report(), &sample_logs);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script") && !page.contains("<link") && !page.contains("<img"));
        // The failure is prominent, before the node table.
        let error_box = page.find("class=\"error-box\"").expect("an error box");
        let table = page.find("<table class=\"nodes\">").expect("a node table");
        assert!(error_box < table);
        assert!(page.contains("<pre class=\"error\">@key sex: 1 duplicate key (2 rows)</pre>"));
        // Failed pipelines first.
        assert!(page.find("id=\"p0\"").expect("p0") < page.find("id=\"p1\"").expect("p1"));
        assert!(
            page.find("clinics/clinic_b").expect("b") < page.find("clinics/clinic_a").expect("a")
        );
    }

    #[test]
    fn nodes_of_other_directories_are_inputs_described_once() {
        let page = run_page(&crate::report::shared_inputs_report(), &|_| None);
        let (north, south) = page.split_once("id=\"p1\"").expect("a south section");
        assert!(!south.contains("/clinics/north/Patient"), "{page}");
        assert!(
            !south.contains("<code>clinics/north/Patient</code><br>"),
            "{page}"
        );
        assert!(
            south.contains("<p>Inputs from other directories: <code>clinics/north/Patient</code> (see <a href=\"#p0\"><code>clinics/north</code></a>), <code>reference/codes</code> (see <a href=\"#p0\"><code>clinics/north</code></a>).</p>"),
            "{page}"
        );
        assert!(
            south.contains("<h3>Input <code>reference/codes</code> failed</h3>"),
            "{page}"
        );
        assert!(
            north
                .contains("<h3>Input <code>reference/codes</code> failed</h3>\n<p class=\"kind\">"),
            "{page}"
        );
        assert_eq!(page.matches("no such table").count(), 1, "{page}");
        assert!(
            page.contains("2 computed · 0 cached · 1 failed · 2 skipped"),
            "{page}"
        );
    }

    #[test]
    fn logs_only_when_given() {
        let without = run_page(&sample_report(), &|_| None);
        assert!(!without.contains("command log"));
        let with = run_page(&sample_report(), &sample_logs);
        assert!(with.contains(
            "<details open><summary>command log</summary><pre class=\"log\">sqlite&gt; SELECT"
        ));
    }
}
