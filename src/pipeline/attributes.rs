//! The `.gitattributes` rules that make a checkout's bytes differ from the
//! commit's: `working-tree-encoding`, `ident` and `filter` (Git LFS among
//! them). sluice hashes the committed bytes, so a file they apply to would
//! read one way from git objects (`--at`, the daemon, the hook) and another
//! way from a checkout; such a file is refused in both, naming the line.
//!
//! `text` and `eol` only change line endings, which sluice reads alike
//! (CRLF hashes as LF), so they are allowed. Pure: the files come in as
//! bytes.

use super::glob::Glob;
use super::path::RepoPath;

/// One line of a `.gitattributes` file that sets or unsets an attribute
/// sluice cares about.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The line number in its file (1-based).
    pub line: u32,
    /// The line as written, for the message.
    pub text: String,
    matcher: Matcher,
    /// Each attribute this line mentions, and whether it sets it (with the
    /// value, when one is given) or unsets it.
    attrs: Vec<(Attr, Option<String>)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// No `/` in the pattern: matches the file name at any depth.
    Name(Glob),
    /// Matches the path relative to the `.gitattributes` directory.
    Path(Glob),
}

/// The attributes that transform bytes on checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    WorkingTreeEncoding,
    Ident,
    Filter,
}

impl Attr {
    fn parse(name: &str) -> Option<Attr> {
        match name {
            "working-tree-encoding" => Some(Attr::WorkingTreeEncoding),
            "ident" => Some(Attr::Ident),
            "filter" => Some(Attr::Filter),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Attr::WorkingTreeEncoding => "working-tree-encoding",
            Attr::Ident => "ident",
            Attr::Filter => "filter",
        }
    }
}

/// The rules of one `.gitattributes` file that mention an attribute sluice
/// refuses. Lines that do not parse, macro definitions and negative
/// patterns (which git ignores in attributes files) are skipped.
pub fn parse(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(pattern) = fields.next() else {
            continue;
        };
        if pattern.starts_with("[attr]") {
            continue;
        }
        let attrs: Vec<(Attr, Option<String>)> = fields
            .filter_map(|f| {
                if let Some(name) = f.strip_prefix('-').or_else(|| f.strip_prefix('!')) {
                    return Attr::parse(name).map(|a| (a, None));
                }
                match f.split_once('=') {
                    Some((name, value)) => Attr::parse(name).map(|a| (a, Some(value.to_string()))),
                    None => Attr::parse(f).map(|a| (a, Some(String::new()))),
                }
            })
            .collect();
        if attrs.is_empty() {
            continue;
        }
        let Some(matcher) = matcher(pattern) else {
            continue;
        };
        rules.push(Rule {
            line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            text: line.to_string(),
            matcher,
            attrs,
        });
    }
    rules
}

fn matcher(pattern: &str) -> Option<Matcher> {
    // A pattern for a directory never matches a file in attributes files.
    if pattern.ends_with('/') {
        return None;
    }
    // A pattern that is not a glob (`[a`) is skipped, as git skips it.
    let glob = |p: &str| Glob::new(p).ok();
    if pattern.contains('/') {
        glob(pattern.trim_start_matches('/')).map(Matcher::Path)
    } else {
        glob(pattern).map(Matcher::Name)
    }
}

/// The `.gitattributes` files that apply to a file, shallowest first: the
/// directory each sits in and its rules.
pub type Files<'a> = [(RepoPath, &'a [Rule])];

/// Why git would change the bytes of `file` on checkout, naming the line
/// that says so; `None` when it would not. `files` are the `.gitattributes`
/// files of `file`'s directory and every directory above it, shallowest
/// first (a deeper file and a later line win, as in git).
pub fn transforming(file: &RepoPath, files: &Files<'_>) -> Option<String> {
    let mut last: [Option<(&RepoPath, &Rule, Option<&str>)>; 3] = [None, None, None];
    for (dir, rules) in files {
        let rel = if dir.is_root() {
            file.as_str()
        } else {
            match file.as_str().strip_prefix(dir.as_str()) {
                Some(rest) => rest.trim_start_matches('/'),
                None => continue,
            }
        };
        for rule in rules.iter() {
            let hit = match &rule.matcher {
                Matcher::Name(m) => m.is_match(file.file_name()),
                Matcher::Path(m) => m.is_match(rel),
            };
            if !hit {
                continue;
            }
            for (attr, value) in &rule.attrs {
                last[*attr as usize] = Some((dir, rule, value.as_deref()));
            }
        }
    }
    for attr in [Attr::Filter, Attr::WorkingTreeEncoding, Attr::Ident] {
        let Some((dir, rule, Some(value))) = last[attr as usize] else {
            continue;
        };
        if attr == Attr::WorkingTreeEncoding && is_utf8(value) {
            continue;
        }
        let at = format!("{}:{}", dir.child(".gitattributes"), rule.line);
        return Some(if attr == Attr::Filter && value == "lfs" {
            format!(
                "{at} (`{}`) stores this file in Git LFS, so the commit holds a pointer and a checkout the content; sluice reads the committed bytes: keep pipeline files out of LFS (`git lfs untrack`, then commit the file itself)",
                rule.text
            )
        } else {
            format!(
                "{at} (`{}`) sets `{}`, which makes git rewrite this file's bytes on checkout, so the commit and a checkout would disagree; sluice reads the committed bytes: remove the attribute for this file (or add `-{}` for it)",
                rule.text,
                attr.name(),
                attr.name()
            )
        });
    }
    None
}

fn is_utf8(encoding: &str) -> bool {
    matches!(encoding.to_ascii_lowercase().as_str(), "utf-8" | "utf8")
}

/// The first line of a Git LFS pointer file.
const LFS_POINTER: &[u8] = b"version https://git-lfs.github.com/spec/";

/// True when `bytes` are a Git LFS pointer rather than a file's content.
pub fn is_lfs_pointer(bytes: &[u8]) -> bool {
    bytes.starts_with(LFS_POINTER) && bytes.len() < 1024
}

/// The message for a file whose committed bytes are an LFS pointer.
pub const LFS_POINTER_REASON: &str = "this file is a Git LFS pointer, not the file's content (the content is in LFS storage, which sluice does not read); keep pipeline files out of LFS: `git lfs untrack` them and commit the files themselves";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RepoPath {
        RepoPath::parse(s).unwrap()
    }

    #[test]
    fn names_the_line_that_transforms() {
        let root = parse("# comment\n*.csv text\n*.sql working-tree-encoding=UTF-16LE\n");
        let files = [(RepoPath::root(), root.as_slice())];
        let why = transforming(&p("clinics/a/X.sql"), &files).unwrap();
        assert!(
            why.starts_with(
                ".gitattributes:3 (`*.sql working-tree-encoding=UTF-16LE`) sets `working-tree-encoding`"
            ),
            "{why}"
        );
        assert_eq!(transforming(&p("clinics/a/X.py"), &files), None);
    }

    #[test]
    fn deeper_files_and_later_lines_win() {
        let root = parse("*.sql ident\n");
        let sub = parse("X.sql -ident\n");
        let files = [
            (RepoPath::root(), root.as_slice()),
            (p("clinics"), sub.as_slice()),
        ];
        assert_eq!(transforming(&p("clinics/X.sql"), &files), None);
        assert!(transforming(&p("clinics/Y.sql"), &files).is_some());
        let again = parse("*.sql ident\n*.sql !ident\n");
        let files = [(RepoPath::root(), again.as_slice())];
        assert_eq!(transforming(&p("Y.sql"), &files), None);
    }

    #[test]
    fn paths_with_a_slash_are_relative_to_their_file() {
        let sub = parse("a/*.sql filter=lfs diff=lfs merge=lfs -text\n");
        let files = [(p("clinics"), sub.as_slice())];
        let why = transforming(&p("clinics/a/X.sql"), &files).unwrap();
        assert!(why.starts_with("clinics/.gitattributes:1"), "{why}");
        assert!(why.contains("Git LFS"), "{why}");
        assert_eq!(transforming(&p("clinics/b/a/X.sql"), &files), None);
        let deep = parse("**/X.sql filter=crypt\n");
        let files = [(RepoPath::root(), deep.as_slice())];
        assert!(transforming(&p("a/b/X.sql"), &files).is_some());
    }

    #[test]
    fn patterns_are_globs_and_a_bad_or_hostile_one_does_no_harm() {
        let t = parse("[x ident\n*.{sql,py} ident\n\\*.R ident\n*a*a*a*a*a*a*a*a*a*a*b ident\n");
        assert_eq!(t.len(), 3, "the unclosed `[` line is skipped");
        let files = [(RepoPath::root(), t.as_slice())];
        assert!(transforming(&p("a/X.py"), &files).is_some());
        assert!(transforming(&p("a/X.R"), &files).is_none());
        assert!(transforming(&p("a/*.R"), &files).is_some());
        let long = format!("a/{}", "a".repeat(5_000));
        let start = std::time::Instant::now();
        assert!(transforming(&p(&long), &files).is_none());
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn line_endings_and_utf8_are_allowed() {
        let t =
            parse("* text=auto eol=crlf\n*.sql working-tree-encoding=UTF-8\nsluice.toml binary\n");
        let files = [(RepoPath::root(), t.as_slice())];
        assert_eq!(transforming(&p("a/X.sql"), &files), None);
        assert_eq!(transforming(&p("sluice.toml"), &files), None);
    }

    #[test]
    fn lfs_pointers_are_recognised() {
        let ptr = b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n";
        assert!(is_lfs_pointer(ptr));
        assert!(!is_lfs_pointer(b"SELECT 1;\n"));
    }
}
