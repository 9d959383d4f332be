//! The documentation in the repository holds: `docs/cli.md` is what clap
//! generates, every JSON shape in `docs/json.md` is what the commands
//! print, and every link in README.md and docs/ resolves inside the
//! repository.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::CommandFactory;

use crate::util::Repo;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The command-line reference, from clap: each command's long help.
fn cli_markdown() -> String {
    fn hide_env_values(cmd: clap::Command) -> clap::Command {
        // The values of variables set where the test runs are not docs.
        cmd.mut_args(|a| a.hide_env_values(true))
            .mut_subcommands(hide_env_values)
    }
    let mut cmd = hide_env_values(sluice::cli::Cli::command().term_width(80));
    cmd.build();
    let mut out = String::from(
        "# Command-line reference\n\n\
         Generated from `sluice --help` and `sluice <command> --help`; do not\n\
         edit by hand. To regenerate it after changing an argument or its\n\
         help text: `SLUICE_BLESS=1 cargo test --test cli docs::cli_md`.\n\n\
         The JSON printed by `--json` is described in [json.md](json.md);\n\
         selectors (`--select`, `--exclude`) in [selection.md](selection.md).\n\n",
    );
    let mut section = |title: &str, help: String| {
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        out.push_str(&format!(
            "## `{title}`\n\n```text\n{}\n```\n\n",
            help.join("\n").trim()
        ));
    };
    section("sluice", cmd.render_long_help().to_string());
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub = cmd.find_subcommand_mut(&name).expect("listed subcommand");
        let mut sub = sub.clone().bin_name(format!("sluice {name}"));
        section(
            &format!("sluice {name}"),
            sub.render_long_help().to_string(),
        );
        let nested: Vec<String> = sub
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .map(|s| s.get_name().to_string())
            .collect();
        for n in nested {
            let mut c = sub
                .find_subcommand_mut(&n)
                .expect("listed subcommand")
                .clone()
                .bin_name(format!("sluice {name} {n}"));
            section(
                &format!("sluice {name} {n}"),
                c.render_long_help().to_string(),
            );
        }
    }
    out.trim_end().to_string() + "\n"
}

#[test]
fn cli_md_is_generated_from_clap() {
    let path = root().join("docs/cli.md");
    let want = cli_markdown();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write docs/cli.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is stale: an argument or its help changed.\n\
         Regenerate it with: SLUICE_BLESS=1 cargo test --test cli docs::cli_md"
    );
    for cmd in ["check", "plan", "ls", "run", "show", "why", "diff"] {
        assert!(want.contains(&format!("## `sluice {cmd}`")), "{cmd}");
    }
    assert!(want.contains("--select <SELECTOR>"));
}

/// `[text](target)` links of a markdown text, outside code blocks.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((i + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as `-`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let root = root().canonicalize().expect("root");
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let rel = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        if text.contains("../shared") || text.contains("/work/") {
            problems.push(format!("{rel}: mentions a place outside the repository"));
        }
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            if path.starts_with('/') {
                problems.push(format!("{rel}:{line}: `{target}` is an absolute path"));
                continue;
            }
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("parent").join(path)
            };
            let Ok(real) = resolved.canonicalize() else {
                problems.push(format!("{rel}:{line}: `{target}` does not exist"));
                continue;
            };
            if !real.starts_with(&root) {
                problems.push(format!("{rel}:{line}: `{target}` leaves the repository"));
                continue;
            }
            if let Some(a) = anchor
                && real.extension().is_some_and(|e| e == "md")
            {
                let text = std::fs::read_to_string(&real).unwrap_or_default();
                if !anchors(&text).contains(a) {
                    problems.push(format!("{rel}:{line}: no heading for `#{a}` in {path}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 10, "only {checked} links found");
    for doc in [
        "language.md",
        "nodes.md",
        "cli.md",
        "security.md",
        "json.md",
    ] {
        assert!(root.join("docs").join(doc).is_file(), "docs/{doc}");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        assert!(
            readme.contains(&format!("(docs/{doc})")),
            "README links docs/{doc}"
        );
    }
}

#[test]
fn link_check_catches_what_it_should() {
    let text = "see [a](x.md#y) and `[no](code)`\n```\n[not](a link)\n```\n[b](../shared/D.md)\n";
    let l = links(text);
    assert_eq!(
        l,
        [
            (1, "x.md#y".to_string()),
            (1, "code".to_string()),
            (5, "../shared/D.md".to_string())
        ]
    );
    assert!(anchors("# Hello, World!\n## `sluice ls --json`\n").contains("sluice-ls---json"));
}

/// The documented shape of each command: the first ```json block under
/// its heading, and the keys its "Optional:" paragraph names.
fn documented(doc: &str, heading: &str) -> (serde_json::Value, BTreeSet<String>) {
    let start = doc
        .find(&format!("## `{heading}"))
        .unwrap_or_else(|| panic!("docs/json.md has no section for {heading}"));
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("no JSON block for {heading}"));
    let value = serde_json::from_str(block)
        .unwrap_or_else(|e| panic!("the JSON of {heading} in docs/json.md does not parse: {e}"));
    let mut optional = BTreeSet::new();
    if let Some(p) = section.find("Optional:") {
        let para = section[p..].split("\n\n").next().unwrap_or_default();
        for (i, part) in para.split('`').enumerate() {
            if i % 2 == 1 {
                optional.insert(part.to_string());
            }
        }
    }
    (value, optional)
}

/// Every key of `doc` is in `actual`, recursively (the first element of a
/// documented array against every element of the actual one).
fn keys_hold(
    doc: &serde_json::Value,
    actual: &serde_json::Value,
    optional: &BTreeSet<String>,
    at: &str,
    missing: &mut Vec<String>,
) {
    use serde_json::Value;
    match (doc, actual) {
        (Value::Object(d), Value::Object(a)) => {
            for (k, v) in d {
                match a.get(k) {
                    Some(av) => keys_hold(v, av, optional, &format!("{at}.{k}"), missing),
                    None if optional.contains(k) => {}
                    None => missing.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(d), Value::Array(a)) => {
            if let Some(first) = d.first() {
                for (i, av) in a.iter().enumerate() {
                    keys_hold(first, av, optional, &format!("{at}[{i}]"), missing);
                }
            }
        }
        (Value::Object(_) | Value::Array(_), Value::Null) => {}
        (Value::Object(_), _) | (Value::Array(_), _) => {
            missing.push(format!("{at} (not an object or array)"))
        }
        _ => {}
    }
}

#[test]
fn json_shapes_are_documented_and_hold() {
    let doc = std::fs::read_to_string(root().join("docs/json.md")).expect("docs/json.md");
    let r = Repo::example();
    r.commit_all("first");
    r.sluice(&["run", "--promote"]).success();
    let physician = "common/base/Physician.sql";
    let text = r.read(physician);
    r.file(physician, &text.replacen("SELECT", "SELECT 1 AS one,", 1));
    let bad = Repo::new();
    bad.file("clinics/a/U.sql", "-- @depend ./Missing\nSELECT 1;\n");

    let runs = [
        ("sluice check --json", r.sluice(&["check", "--json"])),
        ("sluice check --json", bad.sluice(&["check", "--json"])),
        ("sluice plan --json", r.sluice(&["plan", "--json"])),
        ("sluice ls --json", r.sluice(&["ls", "--json"])),
        (
            "sluice show PIPELINE/NODE --json",
            r.sluice(&["show", "clinics/clinic_a/Albumin", "--json"]),
        ),
        ("sluice run --json", r.sluice(&["run", "--json"])),
        ("sluice diff --json", r.sluice(&["diff", "--json"])),
        (
            "sluice why PIPELINE/NODE --json",
            r.sluice(&["why", "clinics/clinic_a/Physician", "--json"]),
        ),
        ("sluice gc --json", r.sluice(&["gc", "--json", "--dry-run"])),
    ];
    let mut missing = Vec::new();
    for (heading, run) in &runs {
        assert!(run.code == 0 || run.code == 1, "{heading}: {}", run.stderr);
        let (shape, optional) = documented(&doc, heading);
        keys_hold(&shape, &run.json(), &optional, heading, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "documented but not printed:\n{}",
        missing.join("\n")
    );
    // The failing check is reported in JSON too.
    let v = runs[1].1.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["path"], "clinics/a/U.sql");
    assert_eq!(v["problems"][0]["line"], 1);
    // why says what changed.
    let why = runs[7].1.json();
    assert_eq!(why["reasons"][0], "body changed", "{why}");
}

#[test]
fn the_shape_check_notices_a_missing_key() {
    let doc: serde_json::Value = serde_json::from_str(r#"{"a":[{"b":1,"c":2}],"d":null}"#).unwrap();
    let actual: serde_json::Value = serde_json::from_str(r#"{"a":[{"b":1}]}"#).unwrap();
    let mut missing = Vec::new();
    keys_hold(
        &doc,
        &actual,
        &BTreeSet::from(["d".to_string()]),
        "x",
        &mut missing,
    );
    assert_eq!(missing, ["x.a[0].c"]);
}
