//! `sluice.toml`, the repository's configuration. Parsing is pure: the
//! caller reads the bytes (from the working tree or a commit).

use serde::Deserialize;
use toml::Spanned;

/// The file name at the repository root.
pub const FILE_NAME: &str = "sluice.toml";

/// What to write when the file is missing.
pub const EXAMPLE: &str = r#"[project]
production_branch = "main"
pipelines = ["clinics/*"]   # globs of pipeline directories

[data]
root = "data"               # where data:// sources live, relative to the repo
"#;

/// The validated repository configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfig {
    pub production_branch: String,
    pub pipelines: Vec<String>,
    /// The data root relative to the repository, if configured.
    pub data_root: Option<String>,
    /// `[limits]`: what one node may take.
    pub limits: Limits,
    /// `[sandbox] required`: refuse to run command actions where the
    /// kernel cannot confine them (no Landlock).
    pub sandbox_required: bool,
}

/// `[limits]` in `sluice.toml`; unset fields take the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// `timeout = "2h"`: the `@timeout` of a node that sets none, in seconds.
    pub timeout_secs: Option<u64>,
    /// `max_output_mb = 10240`: the largest table a node may write, in MB
    /// (10^6 bytes) of canonical CSV.
    pub max_output_mb: Option<u64>,
}

/// A problem in `sluice.toml`, with the 1-based line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: u32,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    project: Option<RawProject>,
    data: Option<RawData>,
    limits: Option<RawLimits>,
    sandbox: Option<RawSandbox>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    timeout: Option<Spanned<String>>,
    max_output_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    production_branch: Option<Spanned<String>>,
    pipelines: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    root: Option<Spanned<String>>,
}

/// Parses and validates the file's text.
pub fn parse(text: &str) -> Result<RepoConfig, ConfigError> {
    // Every line number comes from where the value stands in the text.
    let line_at = |offset: usize| {
        let end = offset.min(text.len());
        let end = (0..=end)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        u32::try_from(text[..end].matches('\n').count() + 1).unwrap_or(u32::MAX)
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        line: e.span().map_or(1, |s| line_at(s.start)),
        message: e.message().trim().to_string(),
    })?;
    let missing = |what: &str| ConfigError {
        line: 1,
        message: format!("missing {what}; a minimal sluice.toml is:\n{EXAMPLE}"),
    };
    let project = raw.project.ok_or_else(|| missing("[project] table"))?;
    let pipelines = project
        .pipelines
        .ok_or_else(|| missing("`pipelines` in [project]"))?;
    let pipelines_line = line_at(pipelines.span().start);
    let pipelines = pipelines.into_inner();
    if pipelines.is_empty() {
        return Err(ConfigError {
            line: pipelines_line,
            message: "`pipelines` is empty: list the pipeline directories, e.g. [\"clinics/*\"]"
                .into(),
        });
    }
    let branch_line = project
        .production_branch
        .as_ref()
        .map_or(1, |b| line_at(b.span().start));
    let production_branch = project
        .production_branch
        .map(Spanned::into_inner)
        .unwrap_or_else(|| "main".to_string());
    if production_branch.trim().is_empty() {
        return Err(ConfigError {
            line: branch_line,
            message: "`production_branch` is empty".into(),
        });
    }
    let data_root = raw.data.and_then(|d| d.root);
    let root_line = data_root.as_ref().map_or(1, |r| line_at(r.span().start));
    let data_root = data_root.map(Spanned::into_inner);
    if let Some(root) = &data_root {
        // A branch must not point its data root at the host: it stays inside
        // the repository's directory (an admin can point elsewhere with
        // --data or SLUICE_DATA_ROOT).
        let bad = root.starts_with('/')
            || crate::pipeline::path::RepoPath::parse(root).is_err()
            || root.split('/').any(|c| c == "..");
        if bad {
            return Err(ConfigError {
                line: root_line,
                message: format!(
                    "[data] root `{root}` must be a relative path inside the repository; use --data or SLUICE_DATA_ROOT for a data root elsewhere"
                ),
            });
        }
    }
    let mut limits = Limits::default();
    if let Some(l) = raw.limits {
        if let Some(t) = l.timeout {
            let line = line_at(t.span().start);
            limits.timeout_secs = Some(
                crate::pipeline::directive::parse_duration(t.get_ref()).map_err(|e| {
                    ConfigError {
                        line,
                        message: format!("[limits] timeout: {}", e.replace("@timeout", "it")),
                    }
                })?,
            );
        }
        if let Some(mb) = l.max_output_mb {
            let line = line_at(mb.span().start);
            let mb = mb.into_inner();
            if mb == 0 {
                return Err(ConfigError {
                    line,
                    message: "[limits] max_output_mb must be at least 1".into(),
                });
            }
            limits.max_output_mb = Some(mb);
        }
    }
    let sandbox_required = raw.sandbox.and_then(|s| s.required).unwrap_or(false);
    Ok(RepoConfig {
        production_branch,
        pipelines,
        data_root,
        limits,
        sandbox_required,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.production_branch, "main");
        assert_eq!(c.pipelines, vec!["clinics/*"]);
        assert_eq!(c.data_root.as_deref(), Some("data"));
        assert_eq!(c.limits, Limits::default());
        assert!(!c.sandbox_required);
    }

    #[test]
    fn limits_and_sandbox() {
        let c = parse(&format!(
            "{EXAMPLE}\n[limits]\ntimeout = \"30m\"\nmax_output_mb = 5\n\n[sandbox]\nrequired = true\n"
        ))
        .unwrap();
        assert_eq!(c.limits.timeout_secs, Some(1800));
        assert_eq!(c.limits.max_output_mb, Some(5));
        assert!(c.sandbox_required);
        let e = parse(&format!("{EXAMPLE}\n[limits]\ntimeout = \"soon\"\n")).unwrap_err();
        assert!(e.message.contains("[limits] timeout"), "{}", e.message);
        assert_eq!(e.line, 9);
        let e = parse(&format!("{EXAMPLE}\n[limits]\nmax_output_mb = 0\n")).unwrap_err();
        assert!(e.message.contains("at least 1"), "{}", e.message);
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = parse("[project]\npipelines = [\"a\"]\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = parse("[data]\nroot = \"d\"\n").unwrap_err();
        assert!(e.message.contains("[project]"));
        assert!(e.message.contains("pipelines = "));
        assert!(parse("[project]\npipelines = []\n").is_err());
        assert!(parse("[project\n").is_err());
        for root in ["/tmp", "../..", "data/../../x"] {
            let text = format!("[project]\npipelines = [\"a\"]\n[data]\nroot = \"{root}\"\n");
            assert!(
                parse(&text).unwrap_err().message.contains("relative path"),
                "{root}"
            );
        }
    }

    #[test]
    fn errors_carry_the_line_of_the_value() {
        // A comment mentioning `timeout` above the table once took the line.
        let text = "# timeout = \"1h\" would be nice\n[project]\npipelines = [\"a\"]\n\n[data]\nroot = \"/etc\"\n";
        assert_eq!(parse(text).unwrap_err().line, 6);
        let text = "[project]\n\npipelines = []\n";
        assert_eq!(parse(text).unwrap_err().line, 3);
        let text = "[project]\npipelines = [\"a\"]\nproduction_branch = \" \"\n";
        assert_eq!(parse(text).unwrap_err().line, 3);
        let text = "[project]\npipelines = [\"a\"]\n[sandbox]\n# timeout\n[limits]\nmax_output_mb = 1\ntimeout = \"x\"\n";
        assert_eq!(parse(text).unwrap_err().line, 7);
    }
}
