//! The directive parser: splits a node file into its leading directive
//! block and its body. Pure: bytes in, directives and diagnostics out; it
//! never panics on any input (see the proptest below).

use std::fmt;

/// Every directive the language knows, for "unknown directive" suggestions.
pub const DIRECTIVE_NAMES: &[&str] = &[
    "include", "depend", "param", "source", "key", "assert", "timeout", "command", "engine",
];

/// One parsed directive with the 1-based line it stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub line: u32,
    /// The 1-based column where the argument starts (for `@assert sql:`,
    /// the query), so that an error inside it can point there.
    pub column: u32,
    pub kind: DirectiveKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectiveKind {
    /// `@include PATH`: a file (inheritance) or a directory (mount).
    Include(String),
    /// `@depend ./NAME` or `@depend /dir/NAME`.
    Depend(DependRef),
    /// `@param K=V`.
    Param { key: String, value: String },
    /// `@source data://PATH` (the text after `data://`, templates unexpanded).
    Source(String),
    /// `@key COLS`.
    Key(Vec<String>),
    /// `@assert ...`.
    Assert(Assert),
    /// `@timeout DUR`, in seconds.
    Timeout(u64),
    /// `@command TEMPLATE`: a command action (in action files).
    Command(String),
    /// `@engine NAME`: a built-in in-process engine (in action files).
    Engine(String),
}

/// The target of an `@depend`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DependRef {
    /// `None` for `./NAME` (this pipeline's namespace), else the directory.
    pub dir: Option<String>,
    pub name: String,
}

impl fmt::Display for DependRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dir {
            None => write!(f, "./{}", self.name),
            Some(d) => write!(f, "/{}/{}", d, self.name),
        }
    }
}

/// A data test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Assert {
    NotNull(String),
    Unique(String),
    Rows {
        op: CmpOp,
        value: u64,
    },
    /// A query returning the failing rows.
    Sql(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    pub fn holds(self, left: u64, right: u64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
        }
    }
}

impl fmt::Display for Assert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Assert::NotNull(c) => write!(f, "not_null({c})"),
            Assert::Unique(c) => write!(f, "unique({c})"),
            Assert::Rows { op, value } => write!(f, "rows {} {value}", op.as_str()),
            Assert::Sql(q) => write!(f, "sql: {q}"),
        }
    }
}

/// A problem found while parsing, on a 1-based line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u32,
    pub message: String,
}

/// A file split into directives and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFile {
    pub directives: Vec<Directive>,
    /// The file without its directive lines.
    pub body: String,
    /// For each line of `body`, the 1-based line of the file it came from.
    pub body_lines: Vec<u32>,
    pub errors: Vec<LineError>,
}

impl ParsedFile {
    /// The file line of the body's `index`-th line (0-based).
    pub fn file_line(&self, body_index: usize) -> u32 {
        self.body_lines.get(body_index).copied().unwrap_or(1)
    }

    /// True when the body holds nothing but whitespace and comments.
    pub fn body_is_blank(&self) -> bool {
        self.body
            .lines()
            .all(|l| l.trim().is_empty() || comment_text(l).is_some())
    }
}

/// The text after a comment leader (`--`, `#`, `//`), or `None` when the
/// line is not a comment.
pub fn comment_text(line: &str) -> Option<&str> {
    let t = line.trim_start();
    ["--", "//", "#"]
        .iter()
        .find_map(|leader| t.strip_prefix(leader))
        .map(str::trim)
}

/// Parses a file. Invalid UTF-8 is reported, and the file is read lossily
/// so that the rest still gets checked.
pub fn parse(bytes: &[u8]) -> ParsedFile {
    let mut errors = Vec::new();
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u32
                + 1;
            errors.push(LineError {
                line,
                message: "file is not valid UTF-8".into(),
            });
            String::from_utf8_lossy(bytes)
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);

    let mut directives = Vec::new();
    let mut body = String::with_capacity(text.len());
    let mut body_lines = Vec::new();
    let mut in_header = true;
    let mut body_start = 0u32;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let line = raw.trim_end_matches(['\n', '\r']);
        if !in_header && let Some(name) = directive_in_body(line) {
            // Read as a comment it would silently do nothing: the mistake
            // (an `@assert` added below the query) must not pass unseen.
            errors.push(LineError {
                line: line_no,
                message: format!(
                    "@{name} below the body is not read: directives go in the leading comment block; move this line above line {body_start}"
                ),
            });
        }
        if in_header {
            if line.trim().is_empty() {
                // Blank lines belong to the header but stay in the body.
            } else if let Some(c) = comment_text(line) {
                if let Some(d) = c.strip_prefix('@') {
                    match parse_directive(d) {
                        Ok(kind) => directives.push(Directive {
                            line: line_no,
                            column: argument_column(line, &kind),
                            kind,
                        }),
                        Err(message) => errors.push(LineError {
                            line: line_no,
                            message,
                        }),
                    }
                    continue;
                }
            } else {
                in_header = false;
                body_start = line_no;
            }
        }
        body.push_str(line);
        body.push('\n');
        body_lines.push(line_no);
    }
    // Leading blank lines left by removed directives carry no meaning.
    let leading = body.len() - body.trim_start_matches('\n').len();
    if leading > 0 {
        body.drain(..leading);
        body_lines.drain(..leading);
    }
    ParsedFile {
        directives,
        body,
        body_lines,
        errors,
    }
}

/// The 1-based column (in characters) where a directive's argument
/// starts on its line: for `@assert sql:`, where the query starts.
fn argument_column(line: &str, kind: &DirectiveKind) -> u32 {
    let at = line.find('@').unwrap_or(0);
    let start = match kind {
        DirectiveKind::Assert(Assert::Sql(q)) => line[at..]
            .find("sql:")
            .and_then(|i| {
                let from = at + i + 4;
                line[from..].find(q.as_str()).map(|j| from + j)
            })
            .unwrap_or(at),
        _ => line[at..]
            .find(char::is_whitespace)
            .map(|i| at + i + line[at + i..].len() - line[at + i..].trim_start().len())
            .unwrap_or(at),
    };
    u32::try_from(line[..start].chars().count() + 1).unwrap_or(u32::MAX)
}

/// The directive name when `line` is a comment that reads as a known
/// directive (`-- @assert rows > 0`). Unknown `@words` in comments stay
/// comments: a body may mention `@decorators` or e-mail addresses.
fn directive_in_body(line: &str) -> Option<&'static str> {
    let rest = comment_text(line)?.strip_prefix('@')?;
    let word = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
    DIRECTIVE_NAMES.iter().copied().find(|n| *n == word)
}

/// The body with the file's line numbers kept: each body line at its own
/// line of the file, the directive lines (and anything else left out)
/// blank. A command runs this, so that an interpreter's tracebacks name
/// the lines of the file the analyst wrote.
pub fn with_file_lines(body: &str, body_lines: &[u32]) -> String {
    let mut out = String::with_capacity(body.len() + body_lines.len());
    let mut at = 1u32;
    for (i, line) in body.lines().enumerate() {
        let want = body_lines.get(i).copied().unwrap_or(at);
        while at < want {
            out.push('\n');
            at += 1;
        }
        out.push_str(line);
        out.push('\n');
        at += 1;
    }
    out
}

fn parse_directive(text: &str) -> Result<DirectiveKind, String> {
    let (name, arg) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    };
    let need_arg = |what: &str| -> Result<&str, String> {
        if arg.is_empty() {
            Err(format!("@{name} needs {what}"))
        } else {
            Ok(arg)
        }
    };
    match name {
        "include" => Ok(DirectiveKind::Include(need_arg("a path")?.to_string())),
        "depend" => parse_depend(need_arg("a node, e.g. `./Patient`")?).map(DirectiveKind::Depend),
        "param" => {
            let a = need_arg("`KEY=VALUE`")?;
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("@param needs `KEY=VALUE`, got `{a}`"))?;
            let key = k.trim();
            if !is_identifier(key) {
                return Err(format!(
                    "@param name `{key}` must be letters, digits and `_`, not starting with a digit"
                ));
            }
            Ok(DirectiveKind::Param {
                key: key.to_string(),
                value: v.trim().to_string(),
            })
        }
        "source" => {
            let a = need_arg("a `data://PATH` URI")?;
            let path = a.strip_prefix("data://").ok_or_else(|| {
                format!("@source must be a `data://PATH` URI under the data root, got `{a}`")
            })?;
            if path.is_empty() {
                return Err("@source `data://` names no file".into());
            }
            Ok(DirectiveKind::Source(path.to_string()))
        }
        "key" => {
            let cols: Vec<String> = need_arg("column names")?
                .split([',', ' ', '\t'])
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            if cols.is_empty() {
                return Err("@key needs at least one column name".into());
            }
            Ok(DirectiveKind::Key(cols))
        }
        "assert" => {
            parse_assert(need_arg("a test, e.g. `not_null(id)`")?).map(DirectiveKind::Assert)
        }
        "timeout" => {
            parse_duration(need_arg("a duration, e.g. `30m`")?).map(DirectiveKind::Timeout)
        }
        "command" => Ok(DirectiveKind::Command(
            need_arg("a command template, e.g. `python3 {script}`")?.to_string(),
        )),
        "engine" => {
            let e = need_arg("an engine name")?;
            if e != "sqlite" {
                return Err(format!(
                    "unknown engine `{e}` (the built-in engine is `sqlite`)"
                ));
            }
            Ok(DirectiveKind::Engine(e.to_string()))
        }
        "" => Err("`@` must be followed by a directive name".into()),
        other => {
            let mut msg = format!("unknown directive @{other}");
            if let Some(s) = nearest(other, DIRECTIVE_NAMES.iter().copied()) {
                msg.push_str(&format!(" (did you mean @{s}?)"));
            }
            Err(msg)
        }
    }
}

fn parse_depend(arg: &str) -> Result<DependRef, String> {
    let bad = || {
        format!(
            "@depend takes `./NAME` (this pipeline) or `/dir/NAME` (another directory), got `{arg}`"
        )
    };
    if arg.contains(char::is_whitespace) {
        return Err(bad());
    }
    if let Some(name) = arg.strip_prefix("./") {
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        return Ok(DependRef {
            dir: None,
            name: name.to_string(),
        });
    }
    if let Some(rest) = arg.strip_prefix('/') {
        let (dir, name) = rest.rsplit_once('/').ok_or_else(bad)?;
        if dir.is_empty() || name.is_empty() {
            return Err(bad());
        }
        return Ok(DependRef {
            dir: Some(dir.to_string()),
            name: name.to_string(),
        });
    }
    Err(bad())
}

fn parse_assert(arg: &str) -> Result<Assert, String> {
    if let Some(q) = arg.strip_prefix("sql:") {
        let q = q.trim();
        if q.is_empty() {
            return Err("@assert sql: needs a query returning the failing rows".into());
        }
        return Ok(Assert::Sql(q.to_string()));
    }
    for (func, make) in [
        ("not_null", Assert::NotNull as fn(String) -> Assert),
        ("unique", Assert::Unique as fn(String) -> Assert),
    ] {
        if let Some(rest) = arg.strip_prefix(func) {
            let col = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .map(str::trim)
                .filter(|c| !c.is_empty() && !c.contains([',', '(', ')']))
                .ok_or_else(|| format!("@assert {func} needs one column: `{func}(col)`"))?;
            return Ok(make(col.to_string()));
        }
    }
    if let Some(rest) = arg.strip_prefix("rows") {
        let rest = rest.trim();
        for (tok, op) in [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
            ("=", CmpOp::Eq),
        ] {
            if let Some(n) = rest.strip_prefix(tok) {
                let value = n.trim().parse::<u64>().map_err(|_| {
                    format!(
                        "@assert rows {tok} needs a whole number, got `{}`",
                        n.trim()
                    )
                })?;
                return Ok(Assert::Rows { op, value });
            }
        }
        return Err(format!(
            "@assert rows needs a comparison such as `rows > 0`, got `{arg}`"
        ));
    }
    Err(format!(
        "unknown assertion `{arg}`: use not_null(col), unique(col), rows > N or sql: SELECT ..."
    ))
}

/// Parses `90`, `90s`, `5m`, `2h`, `1h30m`, `1d` into seconds.
pub fn parse_duration(arg: &str) -> Result<u64, String> {
    let bad = || format!("@timeout needs a duration such as `90s`, `30m` or `2h`, got `{arg}`");
    if let Ok(secs) = arg.parse::<u64>() {
        return if secs == 0 { Err(bad()) } else { Ok(secs) };
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in arg.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The candidate closest to `word` by edit distance, if any is close enough
/// to be a plausible typo.
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| {
            (
                strsim::levenshtein(&word.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(src: &str) -> Vec<DirectiveKind> {
        parse(src.as_bytes())
            .directives
            .into_iter()
            .map(|d| d.kind)
            .collect()
    }

    #[test]
    fn splits_header_and_body() {
        let src = "-- @include action/sql/sqlite\n-- @depend ./Patient\n\n-- a plain comment\n# @key patient_id\nSELECT 1;\n-- @see the wiki, mail a@b.org\n";
        let p = parse(src.as_bytes());
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.directives.len(), 3);
        assert_eq!(p.directives[2].line, 5);
        // The non-directive comment stays; an unknown `@word` after the
        // header is body text.
        assert_eq!(
            p.body,
            "-- a plain comment\nSELECT 1;\n-- @see the wiki, mail a@b.org\n"
        );
        assert_eq!(p.body_lines, vec![4, 6, 7]);
        assert_eq!(p.file_line(1), 6);
        assert_eq!(
            with_file_lines(&p.body, &p.body_lines),
            "\n\n\n-- a plain comment\n\nSELECT 1;\n-- @see the wiki, mail a@b.org\n"
        );
    }

    #[test]
    fn a_directive_below_the_body_is_an_error() {
        let p = parse(b"-- @key id\nSELECT 1 AS id\n\n-- @assert rows > 100\n# @depend ./X\n");
        let lines: Vec<(u32, &str)> = p
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    4,
                    "@assert below the body is not read: directives go in the leading comment block; move this line above line 2"
                ),
                (
                    5,
                    "@depend below the body is not read: directives go in the leading comment block; move this line above line 2"
                ),
            ]
        );
    }

    #[test]
    fn all_leaders_and_crlf() {
        let src = "// @depend ./A\r\n# @depend /ref/B\r\n-- @param clinic = a=b\r\nx\r\n";
        assert_eq!(
            kinds(src),
            vec![
                DirectiveKind::Depend(DependRef {
                    dir: None,
                    name: "A".into()
                }),
                DirectiveKind::Depend(DependRef {
                    dir: Some("ref".into()),
                    name: "B".into()
                }),
                DirectiveKind::Param {
                    key: "clinic".into(),
                    value: "a=b".into()
                },
            ]
        );
    }

    #[test]
    fn shebang_stays_in_body() {
        let p = parse(b"#!/usr/bin/env python3\n# @depend ./A\nprint(1)\n");
        assert_eq!(p.directives.len(), 1);
        assert!(p.body.starts_with("#!/usr/bin/env python3\n"));
    }

    #[test]
    fn unknown_directive_suggests() {
        let p = parse(b"-- @depnd ./A\n");
        assert_eq!(p.errors[0].line, 1);
        assert_eq!(
            p.errors[0].message,
            "unknown directive @depnd (did you mean @depend?)"
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        for src in [
            "-- @depend Patient",
            "-- @depend ./",
            "-- @param noequals",
            "-- @param 1x=2",
            "-- @source /etc/passwd",
            "-- @assert rows > many",
            "-- @assert maybe(x)",
            "-- @timeout soon",
            "-- @timeout 0",
            "-- @engine duckdb",
            "-- @include",
            "-- @",
            "-- @key ,",
            "-- @assert unique(a, b)",
        ] {
            let p = parse(src.as_bytes());
            assert_eq!(p.errors.len(), 1, "{src}");
        }
    }

    #[test]
    fn argument_columns() {
        let p = parse("-- @assert sql:  SELECT 1\n#  @key id\n".as_bytes());
        assert_eq!(p.directives[0].column, 18);
        assert_eq!(p.directives[1].column, 9);
    }

    #[test]
    fn asserts_and_durations() {
        assert_eq!(
            kinds("-- @assert rows >= 10\n-- @assert unique( id )\n-- @assert sql: SELECT 1\n"),
            vec![
                DirectiveKind::Assert(Assert::Rows {
                    op: CmpOp::Ge,
                    value: 10
                }),
                DirectiveKind::Assert(Assert::Unique("id".into())),
                DirectiveKind::Assert(Assert::Sql("SELECT 1".into())),
            ]
        );
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let p = parse(b"-- @key a\nSELECT '\xff';\n");
        assert_eq!(p.errors[0].line, 2);
        assert_eq!(p.directives.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let p = parse(&bytes);
            prop_assert_eq!(p.body.lines().count(), p.body_lines.len());
        }

        #[test]
        fn never_panics_on_directive_like_text(
            lines in proptest::collection::vec(
                ("(--|#|//) ?@(include|depend|param|source|key|assert|timeout|command|engine|x)?", "[ -~\u{80}-\u{10ffff}]{0,30}"),
                0..12,
            )
        ) {
            let src: String = lines.iter().map(|(a, b)| format!("{a}{b}\n")).collect();
            let p = parse(src.as_bytes());
            prop_assert!(p.directives.len() + p.errors.len() <= lines.len());
        }
    }
}
