//! Reports of a run for people: the commit-status line ([`status`]), the
//! pull-request comment ([`comment`]), the plain text of a git note
//! ([`text`]) and the HTML run page ([`html`]).
//!
//! Every renderer here is a pure function of a [`RunReport`]: no I/O, no
//! clock, no environment. The data behind a report is PHI, so they render
//! only what the report holds (names, counts, hashes, durations and engine
//! errors) and escape every string taken from it for the target format: a
//! node name or an error text cannot break a table, inject HTML or mention
//! a GitHub user.
//!
//! This module also holds what the renderers share: number and duration
//! formats, the order of pipelines (failures first), run totals, which
//! skipped nodes each failure took down, and where a node of another
//! directory is described ([`Inputs`]: once, as an input, never counted as
//! a pipeline's own; `sluice run`'s summary uses it too).

pub mod comment;
pub mod html;
pub mod status;
pub mod text;

use std::collections::{HashMap, HashSet};

pub use comment::{CommentOptions, MARKER, comment_markdown};
pub use html::run_page;
pub use status::{context, pending_description, problems_description, status_description};
pub use text::plain_text;

use crate::engine::outcome::{NodeReport, Outcome, PipelineReport, RunReport, Status};
use crate::plan::Change;

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A signed count with thousands separators and a typographic minus:
/// `+1,204`, `−122`, `0`.
pub fn signed(n: i64) -> String {
    let abs = thousands(n.unsigned_abs());
    match n.signum() {
        1 => format!("+{abs}"),
        -1 => format!("\u{2212}{abs}"),
        _ => abs,
    }
}

/// A duration for people: `310 ms`, `2.4 s`, `3 min 5 s`, `1 h 2 min`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        // Rounded to tenths without going through floats.
        1_000..60_000 => {
            let tenths = (ms + 50) / 100;
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
        60_000..3_600_000 => {
            let s = (ms + 500) / 1_000;
            format!("{} min {} s", s / 60, s % 60)
        }
        _ => {
            let min = ms.saturating_add(30_000) / 60_000;
            format!("{} h {} min", min / 60, min % 60)
        }
    }
}

/// The first 7 characters of a commit id, as git shows it.
pub fn short_sha(sha: &str) -> &str {
    match sha.char_indices().nth(7) {
        Some((i, _)) => &sha[..i],
        None => sha,
    }
}

/// The change from `before` to `after` rows in percent of `before`, one
/// decimal, signed with a typographic minus: `−9.1%`, `+0.4%`. `None`
/// when there is nothing to compare with (`before` is 0) or no change.
pub fn percent_delta(before: u64, after: u64) -> Option<String> {
    if before == 0 || before == after {
        return None;
    }
    let pct = (after as f64 - before as f64) / before as f64 * 100.0;
    let text = format!("{:.1}%", pct.abs());
    Some(if pct < 0.0 {
        format!("\u{2212}{text}")
    } else {
        format!("+{text}")
    })
}

/// `s` cut to at most `max` characters, ending in `…` when it was cut.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut out: String = s.chars().take(keep).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

/// `s` on one line: every run of whitespace and control characters
/// (newlines, tabs, terminal escapes) becomes one space, ends trimmed.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            gap = true;
        } else {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        }
    }
    out
}

/// `n` and a noun, plural when `n` is not 1: `1 pipeline`, `2 pipelines`.
pub(crate) fn count_of(n: usize, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(n as u64),
        if n == 1 { one } else { many }
    )
}

/// An RFC 3339 UTC time as `2026-12-02 14:03 UTC`; anything else as is.
pub(crate) fn display_time(rfc3339: &str) -> String {
    let b = rfc3339.as_bytes();
    if b.len() >= 17 && b[10] == b'T' && rfc3339.ends_with('Z') && rfc3339.is_char_boundary(16) {
        format!("{} {} UTC", &rfc3339[..10], &rfc3339[11..16])
    } else {
        rfc3339.to_string()
    }
}

/// The outcome as an emoji, for markdown.
pub(crate) fn outcome_icon(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "✅",
        Outcome::Failure => "❌",
        Outcome::Error => "⚠️",
        Outcome::Cancelled => "⏹",
    }
}

/// Failed pipelines first: errors, failures, cancelled, successes; the
/// run's order within each.
pub(crate) fn by_severity(r: &RunReport) -> Vec<&PipelineReport> {
    let mut v: Vec<&PipelineReport> = r.pipelines.iter().collect();
    v.sort_by_key(|p| match p.outcome {
        Outcome::Error => 0,
        Outcome::Failure => 1,
        Outcome::Cancelled => 2,
        Outcome::Success => 3,
    });
    v
}

/// `(dir, name)` of a node of another directory, which a pipeline's
/// report names `/dir/name` (`@depend /clinics/north/Patient` from clinic
/// south): an input of that pipeline from `dir`, not one of its own nodes.
pub fn input_from(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix('/')?.rsplit_once('/')
}

/// A node as a report names it: its name for one of the pipeline's own
/// nodes, `dir/name` for an input from another directory.
pub fn node_label(name: &str) -> String {
    match input_from(name) {
        Some((dir, name)) => format!("{dir}/{name}"),
        None => name.to_string(),
    }
}

/// Where a report describes each node of another directory. A node
/// several pipelines need ran once, so it is described once: under its
/// own pipeline when that one is in the report, else under the first
/// pipeline (in the report's order) that needs it. Every other pipeline
/// names it as an input and points there, and none counts it as its own.
#[derive(Debug, Default)]
pub struct Inputs {
    /// `dir/name` → the pipeline describing it.
    describer: HashMap<String, String>,
}

/// One input of a pipeline from another directory.
#[derive(Debug)]
pub struct Input<'a> {
    /// `clinics/north/Patient`.
    pub label: String,
    /// `clinics/north`.
    pub dir: &'a str,
    pub node: &'a NodeReport,
    /// The pipeline describing it when that is another one.
    pub see: Option<&'a str>,
}

impl Inputs {
    /// For a report listing `pipelines` in this order.
    pub fn of<'a>(pipelines: impl IntoIterator<Item = &'a PipelineReport>) -> Inputs {
        let pipelines: Vec<&PipelineReport> = pipelines.into_iter().collect();
        let mut describer = HashMap::new();
        for p in &pipelines {
            for n in p.nodes.iter().filter(|n| input_from(&n.name).is_none()) {
                describer.insert(format!("{}/{}", p.pipeline, n.name), p.pipeline.clone());
            }
        }
        for p in &pipelines {
            for n in &p.nodes {
                if input_from(&n.name).is_some() {
                    describer
                        .entry(node_label(&n.name))
                        .or_insert_with(|| p.pipeline.clone());
                }
            }
        }
        Inputs { describer }
    }

    /// The pipeline describing `n`, a node of `p`, when that is another
    /// one; `None` for `p`'s own nodes and the inputs `p` describes.
    pub fn elsewhere<'a>(&'a self, p: &PipelineReport, n: &NodeReport) -> Option<&'a str> {
        input_from(&n.name)?;
        self.describer
            .get(&node_label(&n.name))
            .map(String::as_str)
            .filter(|q| *q != p.pipeline)
    }

    /// `p`'s inputs from other directories, in its order.
    pub fn of_pipeline<'a>(&'a self, p: &'a PipelineReport) -> Vec<Input<'a>> {
        p.nodes
            .iter()
            .filter_map(|n| {
                let (dir, _) = input_from(&n.name)?;
                Some(Input {
                    label: node_label(&n.name),
                    dir,
                    node: n,
                    see: self.elsewhere(p, n),
                })
            })
            .collect()
    }

    /// `p` with the nodes it describes: its own, and the inputs described
    /// under it.
    pub fn described(&self, p: &PipelineReport) -> PipelineReport {
        let mut out = p.clone();
        out.nodes.retain(|n| self.elsewhere(p, n).is_none());
        out
    }
}

/// `inputs from other directories: clinics/north/Patient (see
/// clinics/north), reference/lab_map (cached)`, each label rendered by
/// `name` and each pipeline by `pipeline`; `None` without such inputs.
pub(crate) fn inputs_line(
    inputs: &[Input],
    name: impl Fn(&str) -> String,
    pipeline: impl Fn(&str) -> String,
) -> Option<String> {
    if inputs.is_empty() {
        return None;
    }
    let items: Vec<String> = inputs
        .iter()
        .map(|i| match i.see {
            Some(q) => format!("{} (see {})", name(&i.label), pipeline(q)),
            None => format!("{} ({})", name(&i.label), status_word(i.node)),
        })
        .collect();
    Some(items.join(", "))
}

/// Node counts of a pipeline or a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Nodes whose plan says anything but unchanged.
    pub changed: usize,
    pub computed: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Problems of a whole pipeline (`PipelineReport::error`).
    pub pipeline_errors: usize,
}

impl Totals {
    /// A pipeline's own nodes: its inputs from other directories are
    /// not counted.
    pub fn of_pipeline(p: &PipelineReport) -> Totals {
        let mut t = Totals::of_nodes(p.nodes.iter().filter(|n| input_from(&n.name).is_none()));
        t.pipeline_errors = usize::from(p.error.is_some());
        t
    }

    /// Every pipeline's own nodes, and each input from a directory no
    /// pipeline of the run describes as its own counted once.
    pub fn of_run(r: &RunReport) -> Totals {
        let inputs = Inputs::of(&r.pipelines);
        let mut t = r
            .pipelines
            .iter()
            .map(Totals::of_pipeline)
            .fold(Totals::default(), Totals::add);
        for p in &r.pipelines {
            let described = p
                .nodes
                .iter()
                .filter(|n| input_from(&n.name).is_some() && inputs.elsewhere(p, n).is_none());
            t = t.add(Totals::of_nodes(described));
        }
        t
    }

    fn of_nodes<'a>(nodes: impl Iterator<Item = &'a NodeReport>) -> Totals {
        let mut t = Totals::default();
        for n in nodes {
            t.changed += usize::from(n.change != Change::Unchanged);
            match n.status {
                Some(Status::Computed) => t.computed += 1,
                Some(Status::Cached) => t.cached += 1,
                Some(Status::Failed) => t.failed += 1,
                Some(Status::Skipped) => t.skipped += 1,
                None => {}
            }
        }
        t
    }

    fn add(self, b: Totals) -> Totals {
        Totals {
            changed: self.changed + b.changed,
            computed: self.computed + b.computed,
            cached: self.cached + b.cached,
            failed: self.failed + b.failed,
            skipped: self.skipped + b.skipped,
            pipeline_errors: self.pipeline_errors + b.pipeline_errors,
        }
    }

    /// Failed nodes and pipeline errors: what a verdict counts.
    pub fn failures(&self) -> usize {
        self.failed + self.pipeline_errors
    }
}

/// The production commit every pipeline was compared with, when they
/// agree; `Err(())` when they differ, `Ok(None)` when none has one.
pub(crate) fn common_production(r: &RunReport) -> Result<Option<&str>, ()> {
    let mut commits = r
        .pipelines
        .iter()
        .filter_map(|p| p.production_commit.as_deref());
    let Some(first) = commits.next() else {
        return Ok(None);
    };
    if commits.all(|c| c == first) {
        Ok(Some(first))
    } else {
        Err(())
    }
}

/// The failed nodes of a pipeline, each with the skipped nodes it took
/// down, and the skipped nodes no failure explains (a cancelled run).
#[derive(Debug)]
pub(crate) struct Blame<'a> {
    pub failures: Vec<(&'a NodeReport, Vec<&'a NodeReport>)>,
    pub other_skipped: Vec<&'a NodeReport>,
}

impl<'a> Blame<'a> {
    /// A node is skipped when one of its inputs failed or was skipped, so
    /// the failures behind a skipped node are those reached through its
    /// inputs along skipped nodes only.
    pub fn of(p: &'a PipelineReport) -> Blame<'a> {
        let by_name: HashMap<&str, &NodeReport> =
            p.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut failures: Vec<(&NodeReport, Vec<&NodeReport>)> = p
            .nodes
            .iter()
            .filter(|n| n.status == Some(Status::Failed))
            .map(|n| (n, Vec::new()))
            .collect();
        let mut other_skipped = Vec::new();
        for s in p.nodes.iter().filter(|n| n.status == Some(Status::Skipped)) {
            let mut roots: HashSet<&str> = HashSet::new();
            let mut seen: HashSet<&str> = HashSet::new();
            let mut stack: Vec<&str> = s.inputs.iter().map(String::as_str).collect();
            while let Some(name) = stack.pop() {
                if !seen.insert(name) {
                    continue;
                }
                match by_name.get(name) {
                    Some(n) if n.status == Some(Status::Failed) => {
                        roots.insert(name);
                    }
                    Some(n) if n.status == Some(Status::Skipped) => {
                        stack.extend(n.inputs.iter().map(String::as_str));
                    }
                    _ => {}
                }
            }
            if roots.is_empty() {
                other_skipped.push(s);
            }
            for (f, list) in &mut failures {
                if roots.contains(f.name.as_str()) {
                    list.push(s);
                }
            }
        }
        Blame {
            failures,
            other_skipped,
        }
    }
}

/// The "rows: production → branch" of a node: `1,334 → 1,212`, `— → 40`
/// for a new table, `failed`, `skipped`.
pub(crate) fn rows_text(n: &NodeReport) -> String {
    let opt = |r: Option<u64>| r.map_or_else(|| "—".to_string(), thousands);
    match (n.status, &n.diff) {
        (Some(Status::Failed), _) => "failed".into(),
        (Some(Status::Skipped), _) => "skipped".into(),
        (_, Some(d)) => format!("{} → {}", opt(d.rows_before), opt(d.rows_after)),
        // No diff for a node that ran: its output is production's, byte
        // for byte.
        (_, None) => match n.rows {
            Some(r) => format!("{} → {}", thousands(r), thousands(r)),
            None => "—".into(),
        },
    }
}

/// The Δ of a node's rows: `−122 (−9.1%)`, `0`, `0 (identical)` when the
/// output is production's byte for byte, empty when there is no count.
pub(crate) fn delta_text(n: &NodeReport) -> String {
    if !n.status.is_none_or(Status::ok) {
        return String::new();
    }
    match &n.diff {
        Some(d) => match (d.delta, d.rows_before, d.rows_after) {
            (Some(delta), Some(b), Some(a)) => match percent_delta(b, a) {
                Some(pct) => format!("{} ({pct})", signed(delta)),
                None => signed(delta),
            },
            (Some(delta), _, _) => signed(delta),
            _ => String::new(),
        },
        None if n.rows.is_some() => "0 (identical)".into(),
        None => String::new(),
    }
}

/// Keyed counts `+0 / −0 / ~41`; `—` for a diff without a key, empty when
/// there is no diff.
pub(crate) fn keyed_text(n: &NodeReport) -> String {
    match &n.diff {
        Some(d) => match d.keyed {
            Some(k) => format!(
                "+{} / \u{2212}{} / ~{}",
                thousands(k.added),
                thousands(k.removed),
                thousands(k.changed)
            ),
            None => "—".into(),
        },
        None => String::new(),
    }
}

/// The columns a node's diff added and removed.
pub(crate) fn column_changes(n: &NodeReport) -> (&[String], &[String]) {
    match &n.diff {
        Some(d) => (&d.columns_added, &d.columns_removed),
        None => (&[], &[]),
    }
}

/// The status of a node as a word (`removed` for a node this commit
/// deleted, which did not run).
pub(crate) fn status_word(n: &NodeReport) -> &'static str {
    match n.status {
        Some(s) => s.as_str(),
        None if n.change == Change::Removed => "removed",
        None => "—",
    }
}

/// A realistic report for tests: two clinics, one green with a keyed
/// diff and a removed column, one with a failed `@key` and a node skipped
/// because of it.
#[cfg(test)]
pub(crate) fn sample_report() -> RunReport {
    use crate::engine::outcome::FailureKind;
    use crate::plan::diff::{KeyCounts, NodeDiff};
    use crate::plan::digest::Digest;

    let node = |name: &str, change: Change, status: Status, rows: u64, ms: u64| NodeReport {
        name: name.into(),
        change,
        status: Some(status),
        failure: None,
        error: None,
        rows: Some(rows),
        columns: vec!["patient_id".into(), "value".into()],
        output: Some(Digest::of(name.as_bytes())),
        duration_ms: ms,
        file: Some(format!("common/varian/{name}.sql")),
        inputs: Vec::new(),
        why: Vec::new(),
        diff: None,
        log: None,
    };
    let diff = |name: &str, before: u64, after: u64| NodeDiff {
        name: name.into(),
        status: "computed".into(),
        rows_before: Some(before),
        rows_after: Some(after),
        delta: Some(after as i64 - before as i64),
        columns_added: Vec::new(),
        columns_removed: Vec::new(),
        keyed: None,
        same_output: false,
    };

    let mut labs_a = node("Labs", Change::Unchanged, Status::Cached, 48_210, 3);
    labs_a.file = Some("clinics/clinic_a/Labs.sql".into());
    let mut lab_map = node(
        "/reference/lab_map",
        Change::Unchanged,
        Status::Cached,
        212,
        1,
    );
    lab_map.file = Some("reference/lab_map.sql".into());
    let mut albumin_a = node("Albumin", Change::Modified, Status::Computed, 1_601, 1_210);
    albumin_a.inputs = vec!["Labs".into(), "/reference/lab_map".into()];
    albumin_a.why = vec!["body changed".into()];
    albumin_a.diff = Some(diff("Albumin", 1_764, 1_601));
    let mut patient_a = node(
        "PatientAlbumin",
        Change::Affected,
        Status::Computed,
        398,
        420,
    );
    patient_a.inputs = vec!["Albumin".into()];
    patient_a.why =
        vec!["input Albumin changed: its output went from 3f1c0a9b2d4e to 8a0b4c2d6e1f".into()];
    patient_a.diff = Some(NodeDiff {
        keyed: Some(KeyCounts {
            added: 0,
            removed: 0,
            changed: 57,
        }),
        ..diff("PatientAlbumin", 398, 398)
    });
    let mut trend_a = node("AlbuminTrend", Change::Affected, Status::Computed, 231, 270);
    trend_a.inputs = vec!["Albumin".into()];
    trend_a.why =
        vec!["input Albumin changed: its output went from 3f1c0a9b2d4e to 8a0b4c2d6e1f".into()];
    trend_a.columns = vec!["patient_id".into(), "slope".into()];
    trend_a.diff = Some(NodeDiff {
        columns_removed: vec!["slope_sd".into()],
        ..diff("AlbuminTrend", 238, 231)
    });
    let mut demo_a = node("Demographics", Change::Unchanged, Status::Cached, 1_022, 2);
    demo_a.inputs = vec!["Labs".into()];

    let mut labs_b = node("Labs", Change::Unchanged, Status::Cached, 39_877, 2);
    labs_b.file = Some("clinics/clinic_b/Labs.sql".into());
    let mut albumin_b = node("Albumin", Change::Modified, Status::Computed, 1_212, 1_130);
    albumin_b.inputs = vec!["Labs".into()];
    albumin_b.why = vec!["body changed".into()];
    albumin_b.diff = Some(diff("Albumin", 1_334, 1_212));
    let mut patient_b = node(
        "PatientAlbumin",
        Change::Affected,
        Status::Computed,
        297,
        380,
    );
    patient_b.inputs = vec!["Albumin".into()];
    patient_b.why =
        vec!["input Albumin changed: its output went from 77c2e91d0a3b to 1b9e44f0c7d2".into()];
    patient_b.diff = Some(NodeDiff {
        keyed: Some(KeyCounts {
            added: 0,
            removed: 0,
            changed: 41,
        }),
        ..diff("PatientAlbumin", 297, 297)
    });
    let mut summary_b = node("Summary", Change::Affected, Status::Failed, 0, 890);
    summary_b.rows = None;
    summary_b.columns = Vec::new();
    summary_b.output = None;
    summary_b.file = Some("clinics/clinic_b/Summary.sql".into());
    summary_b.failure = Some(FailureKind::User);
    summary_b.error = Some("@key sex: 1 duplicate key (2 rows)".into());
    summary_b.inputs = vec!["PatientAlbumin".into()];
    summary_b.why = vec![
        "input PatientAlbumin changed: its output went from 5d2a7c19e0f4 to c3e8b1a60d57".into(),
    ];
    let mut by_year_b = node("SummaryByYear", Change::Affected, Status::Skipped, 0, 0);
    by_year_b.rows = None;
    by_year_b.columns = Vec::new();
    by_year_b.output = None;
    by_year_b.file = Some("clinics/clinic_b/SummaryByYear.sql".into());
    by_year_b.error = Some("upstream Summary did not succeed".into());
    by_year_b.inputs = vec!["Summary".into()];

    let clinic_a = PipelineReport {
        pipeline: "clinics/clinic_a".into(),
        outcome: Outcome::Success,
        manifest: Some(Digest::of(b"manifest clinic_a")),
        production: Some(Digest::of(b"production clinic_a")),
        production_commit: Some("9f8e7d6c5b4a39281706f5e4d3c2b1a098765432".into()),
        promoted: false,
        error: None,
        duration_ms: 1_906,
        nodes: vec![labs_a, lab_map, albumin_a, patient_a, trend_a, demo_a],
    };
    let clinic_b = PipelineReport {
        pipeline: "clinics/clinic_b".into(),
        outcome: Outcome::Failure,
        manifest: Some(Digest::of(b"manifest clinic_b")),
        production: Some(Digest::of(b"production clinic_b")),
        production_commit: Some("9f8e7d6c5b4a39281706f5e4d3c2b1a098765432".into()),
        promoted: false,
        error: None,
        duration_ms: 2_402,
        nodes: vec![labs_b, albumin_b, patient_b, summary_b, by_year_b],
    };
    RunReport {
        run_id: Some("r_5QzB7xW2kLm9".into()),
        commit: Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678".into()),
        git_ref: Some("refs/pull/7/head".into()),
        started_at: "2026-12-02T14:03:11Z".into(),
        duration_ms: 4_310,
        outcome: Outcome::Failure,
        pipelines: vec![clinic_a, clinic_b],
        problems: Vec::new(),
        version: "0.1.0".into(),
    }
}

/// Two clinics and the nodes of other directories they read: south
/// depends on north's `Patient` (computed once, for both), and both on
/// `/reference/codes`, which failed and took a node of each down.
#[cfg(test)]
pub(crate) fn shared_inputs_report() -> RunReport {
    let node = |name: &str, status: Status, inputs: &[&str]| NodeReport {
        name: name.into(),
        change: Change::New,
        status: Some(status),
        failure: None,
        error: match status {
            Status::Failed => Some("no such table: code_list".into()),
            Status::Skipped => Some("upstream did not succeed".into()),
            _ => None,
        },
        rows: (status == Status::Computed).then_some(2),
        columns: Vec::new(),
        output: None,
        duration_ms: 5,
        file: None,
        inputs: inputs.iter().map(|i| i.to_string()).collect(),
        why: vec!["new node".into()],
        diff: None,
        log: None,
    };
    let pipeline = |name: &str, nodes: Vec<NodeReport>| PipelineReport {
        pipeline: name.into(),
        outcome: Outcome::Failure,
        manifest: None,
        production: None,
        production_commit: None,
        promoted: false,
        error: None,
        duration_ms: 10,
        nodes,
    };
    let north = pipeline(
        "clinics/north",
        vec![
            node("Patient", Status::Computed, &[]),
            node("/reference/codes", Status::Failed, &[]),
            node("Codes", Status::Skipped, &["/reference/codes"]),
        ],
    );
    let south = pipeline(
        "clinics/south",
        vec![
            node("/clinics/north/Patient", Status::Computed, &[]),
            node("Both", Status::Computed, &["/clinics/north/Patient"]),
            node("/reference/codes", Status::Failed, &[]),
            node("Codes", Status::Skipped, &["/reference/codes"]),
        ],
    );
    RunReport {
        run_id: None,
        commit: Some("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678".into()),
        git_ref: None,
        started_at: "2026-12-02T14:03:11Z".into(),
        duration_ms: 20,
        outcome: Outcome::Failure,
        pipelines: vec![north, south],
        problems: Vec::new(),
        version: "0.1.0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_of_another_directory_is_described_once() {
        let r = shared_inputs_report();
        assert_eq!(
            input_from("/clinics/north/Patient"),
            Some(("clinics/north", "Patient"))
        );
        assert_eq!(input_from("Patient"), None);
        let inputs = Inputs::of(&r.pipelines);
        let (north, south) = (&r.pipelines[0], &r.pipelines[1]);
        // North's own Patient is described in north; the reference table
        // under north, the first pipeline needing it.
        let listed: Vec<(String, Option<&str>)> = inputs
            .of_pipeline(south)
            .into_iter()
            .map(|i| (i.label, i.see))
            .collect();
        assert_eq!(
            listed,
            [
                ("clinics/north/Patient".to_string(), Some("clinics/north")),
                ("reference/codes".to_string(), Some("clinics/north")),
            ]
        );
        assert_eq!(inputs.of_pipeline(north)[0].see, None);
        let described: Vec<String> = inputs
            .described(south)
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(described, ["Both", "Codes"]);
        // Counted once over the run, never as a pipeline's own node.
        let t = Totals::of_pipeline(south);
        assert_eq!((t.computed, t.failed, t.skipped, t.changed), (1, 0, 1, 2));
        let t = Totals::of_pipeline(north);
        assert_eq!((t.computed, t.failed, t.skipped, t.changed), (1, 0, 1, 2));
        let t = Totals::of_run(&r);
        assert_eq!((t.computed, t.failed, t.skipped, t.changed), (2, 1, 2, 5));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn signed_counts_use_a_real_minus() {
        assert_eq!(signed(0), "0");
        assert_eq!(signed(1_204), "+1,204");
        assert_eq!(signed(-122), "\u{2212}122");
        assert_eq!(signed(i64::MIN), "\u{2212}9,223,372,036,854,775,808");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(310), "310 ms");
        assert_eq!(duration(999), "999 ms");
        assert_eq!(duration(1_000), "1.0 s");
        assert_eq!(duration(2_449), "2.4 s");
        assert_eq!(duration(2_450), "2.5 s");
        assert_eq!(duration(59_940), "59.9 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(3_720_000), "1 h 2 min");
        assert_eq!(duration(u64::MAX), "5124095576030 h 25 min");
    }

    #[test]
    fn short_sha_is_seven_characters() {
        assert_eq!(short_sha("a1b2c3d4e5f6"), "a1b2c3d");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha("ééééééééé"), "ééééééé");
    }

    #[test]
    fn percent_delta_one_decimal() {
        assert_eq!(percent_delta(1_334, 1_212).as_deref(), Some("\u{2212}9.1%"));
        assert_eq!(percent_delta(200, 201).as_deref(), Some("+0.5%"));
        assert_eq!(percent_delta(0, 10), None);
        assert_eq!(percent_delta(10, 10), None);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("héllo wörld", 5), "héll…");
        assert_eq!(truncate_chars("ab", 0), "");
    }

    #[test]
    fn one_line_collapses_whitespace_and_controls() {
        assert_eq!(one_line("  a\n\tb\r\n\x1b[31mc  "), "a b [31mc");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn display_time_of_rfc3339() {
        assert_eq!(display_time("2026-12-02T14:03:11Z"), "2026-12-02 14:03 UTC");
        assert_eq!(display_time("yesterday"), "yesterday");
    }

    #[test]
    fn failed_pipelines_come_first() {
        let r = sample_report();
        let order: Vec<&str> = by_severity(&r)
            .iter()
            .map(|p| p.pipeline.as_str())
            .collect();
        assert_eq!(order, ["clinics/clinic_b", "clinics/clinic_a"]);
    }

    #[test]
    fn totals_of_the_sample() {
        let t = Totals::of_run(&sample_report());
        assert_eq!(
            t,
            Totals {
                changed: 7,
                computed: 5,
                cached: 4,
                failed: 1,
                skipped: 1,
                pipeline_errors: 0,
            }
        );
    }

    #[test]
    fn skipped_nodes_are_blamed_on_their_failure() {
        let r = sample_report();
        let blame = Blame::of(&r.pipelines[1]);
        assert_eq!(blame.failures.len(), 1);
        assert_eq!(blame.failures[0].0.name, "Summary");
        let skipped: Vec<&str> = blame.failures[0]
            .1
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(skipped, ["SummaryByYear"]);
        assert!(blame.other_skipped.is_empty());
    }

    #[test]
    fn skipped_through_a_chain_and_without_a_failure() {
        let mut p = sample_report().pipelines[1].clone();
        let mut deeper = p.nodes[4].clone();
        deeper.name = "Deeper".into();
        deeper.inputs = vec!["SummaryByYear".into()];
        let mut cancelled = p.nodes[4].clone();
        cancelled.name = "Cancelled".into();
        cancelled.inputs = vec!["Labs".into()];
        p.nodes.push(deeper);
        p.nodes.push(cancelled);
        let blame = Blame::of(&p);
        let skipped: Vec<&str> = blame.failures[0]
            .1
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(skipped, ["SummaryByYear", "Deeper"]);
        assert_eq!(blame.other_skipped.len(), 1);
        assert_eq!(blame.other_skipped[0].name, "Cancelled");
    }

    #[test]
    fn node_cells() {
        let r = sample_report();
        let b = &r.pipelines[1];
        assert_eq!(rows_text(&b.nodes[1]), "1,334 → 1,212");
        assert_eq!(delta_text(&b.nodes[1]), "\u{2212}122 (\u{2212}9.1%)");
        assert_eq!(keyed_text(&b.nodes[1]), "—");
        assert_eq!(keyed_text(&b.nodes[2]), "+0 / \u{2212}0 / ~41");
        assert_eq!(delta_text(&b.nodes[2]), "0");
        assert_eq!(rows_text(&b.nodes[3]), "failed");
        assert_eq!(delta_text(&b.nodes[3]), "");
        assert_eq!(rows_text(&b.nodes[4]), "skipped");
        // Cached and byte-identical to production.
        assert_eq!(rows_text(&b.nodes[0]), "39,877 → 39,877");
        assert_eq!(delta_text(&b.nodes[0]), "0 (identical)");
    }
}
