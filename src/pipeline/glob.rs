//! Shell globs for `--select`/`--exclude`, the `pipelines` globs of
//! sluice.toml and `.gitattributes` patterns. Pure: a pattern compiles once
//! into a small automaton, then matches any number of names.
//!
//! The syntax and meaning are those of the `globset` crate with
//! `literal_separator(true)` and `backslash_escape(true)`, which sluice used
//! before (a differential test below holds the two to the same answers):
//!
//! - `*` is any run of characters but `/`; `?` is one character but `/`;
//! - `**` as a whole path component crosses components: `**/x` (x at any
//!   depth, the top included), `x/**` (everything under x), `a/**/b`
//!   (a, then b any number of directories down); `**` alone matches
//!   everything; a `**` inside a component (`a**`) is two `*`;
//! - `[abc]`, `[a-z]`, `[!a]` / `[^a]`, `[[:alpha:]]`: one character of (or
//!   not of) a set, never `/`; a `]` right after `[` or `[!` and a `-` first
//!   or last are literal;
//! - `{a,b}`: either pattern, nesting allowed; an empty alternative is
//!   dropped (`x{,a}` matches `xa` only, as in globset);
//! - `\c` is the character `c` itself (outside a class).
//!
//! One deliberate difference: globset matches bytes, so its `?` matches one
//! byte of a non-ASCII character and `[é]` is a set of `é`'s two bytes;
//! here `?` and classes match whole characters (`clinic_?` matches
//! `clinic_é`). Paths are `&str` throughout sluice.
//!
//! Matching simulates the automaton over all its states at once (Thompson's
//! construction), so it takes at most pattern length × name length steps:
//! `*a*a*a*a*b` against a long name cannot backtrack exponentially. That
//! matters because patterns come from `--select` and from `.gitattributes`
//! on any branch.

use std::fmt;
use std::iter::Peekable;
use std::str::Chars;

/// A compiled pattern.
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    prog: Vec<Inst>,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Glob").field(&self.pattern).finish()
    }
}

/// Why a pattern is not a glob; displays as `error parsing glob 'P': why`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error parsing glob '{pattern}': {kind}")]
pub struct GlobError {
    pattern: String,
    kind: ErrorKind,
}

impl GlobError {
    /// What is wrong, without the pattern.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

/// What is wrong with a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unclosed character class; missing ']' (write `[[]` for a literal '[')")]
    UnclosedClass,
    #[error("invalid range; '{0}' > '{1}'")]
    InvalidRange(char, char),
    #[error("unopened alternate group; missing '{{' (maybe escape '}}' with '[}}]'?)")]
    UnopenedAlternates,
    #[error("unclosed alternate group; missing '}}' (maybe escape '{{' with '[{{]'?)")]
    UnclosedAlternates,
    #[error("alternate groups nested too deeply (more than 100)")]
    TooManyNestedAlternates,
    #[error("dangling '\\' (write `\\\\` for a literal '\\')")]
    DanglingEscape,
}

/// How deep `{…}` may nest (globset's limit): compiling recurses per level.
const MAX_NESTING: usize = 100;

impl Glob {
    /// Parses and compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let tokens = Parser::new(pattern).parse().map_err(|kind| GlobError {
            pattern: pattern.to_string(),
            kind,
        })?;
        let mut prog = Vec::new();
        if tokens == [Token::RecursivePrefix] {
            // `**` (or `**/`) alone matches everything, the empty name too.
            star(&mut prog, Any::All);
        } else {
            compile(&tokens, &mut prog);
        }
        prog.push(Inst::Match);
        Ok(Glob {
            pattern: pattern.to_string(),
            prog,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        let n = self.prog.len();
        // `seen[pc] == step` says pc is already in the list of this step.
        let mut seen = vec![usize::MAX; n];
        let mut stack = Vec::new();
        let mut now = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        self.add(&mut now, 0, 0, &mut seen, &mut stack);
        for (i, c) in text.chars().enumerate() {
            if now.is_empty() {
                return false;
            }
            for &pc in &now {
                let hit = match &self.prog[pc] {
                    Inst::Char(want) => *want == c,
                    Inst::Any(Any::All) => true,
                    Inst::Any(Any::NotSlash) => c != '/',
                    Inst::Class { negated, ranges } => {
                        c != '/' && (ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
                    }
                    Inst::Split(..) | Inst::Jump(_) | Inst::Match => false,
                };
                if hit {
                    self.add(&mut next, pc + 1, i + 1, &mut seen, &mut stack);
                }
            }
            std::mem::swap(&mut now, &mut next);
            next.clear();
        }
        now.iter().any(|&pc| matches!(self.prog[pc], Inst::Match))
    }

    /// Adds `pc` and every state reachable from it without reading a
    /// character to `list`.
    fn add(
        &self,
        list: &mut Vec<usize>,
        pc: usize,
        step: usize,
        seen: &mut [usize],
        stack: &mut Vec<usize>,
    ) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if seen[pc] == step {
                continue;
            }
            seen[pc] = step;
            match self.prog[pc] {
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Inst::Jump(a) => stack.push(a),
                _ => list.push(pc),
            }
        }
    }
}

/// One parsed piece of a pattern (globset's tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    Any,
    /// `*`
    ZeroOrMore,
    /// `**/` at the start: nothing, or anything ending in `/`.
    RecursivePrefix,
    /// `/**` at the end: `/` and anything.
    RecursiveSuffix,
    /// `/**/` inside: `/`, or `/`, anything, `/`.
    RecursiveZeroOrMore,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Alternates(Vec<Vec<Token>>),
}

/// A port of globset's parser, quirks included (they decide which patterns
/// are valid and what `**` next to `{`, `,` and `/` means).
struct Parser<'a> {
    chars: Peekable<Chars<'a>>,
    /// Where each open `{` started in `branches`.
    alternates: Vec<usize>,
    /// The branches being parsed; tokens go to the last one.
    branches: Vec<Vec<Token>>,
    prev: Option<char>,
    cur: Option<char>,
}

impl<'a> Parser<'a> {
    fn new(pattern: &'a str) -> Parser<'a> {
        Parser {
            chars: pattern.chars().peekable(),
            alternates: Vec::new(),
            branches: vec![Vec::new()],
            prev: None,
            cur: None,
        }
    }

    fn parse(mut self) -> Result<Vec<Token>, ErrorKind> {
        while let Some(c) = self.bump() {
            match c {
                '?' => self.push(Token::Any)?,
                '*' => self.parse_star()?,
                '[' => self.parse_class()?,
                '{' => {
                    if self.alternates.len() >= MAX_NESTING {
                        return Err(ErrorKind::TooManyNestedAlternates);
                    }
                    self.alternates.push(self.branches.len());
                    self.branches.push(Vec::new());
                }
                '}' => {
                    let start = self.alternates.pop().ok_or(ErrorKind::UnopenedAlternates)?;
                    let alts = self.branches.split_off(start);
                    self.push(Token::Alternates(alts))?;
                }
                ',' if !self.alternates.is_empty() => self.branches.push(Vec::new()),
                '\\' => {
                    let c = self.bump().ok_or(ErrorKind::DanglingEscape)?;
                    self.push(Token::Literal(c))?;
                }
                c => self.push(Token::Literal(c))?,
            }
        }
        if self.branches.len() > 1 {
            return Err(ErrorKind::UnclosedAlternates);
        }
        self.branches.pop().ok_or(ErrorKind::UnopenedAlternates)
    }

    fn bump(&mut self) -> Option<char> {
        self.prev = self.cur;
        self.cur = self.chars.next();
        self.cur
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn branch(&mut self) -> Result<&mut Vec<Token>, ErrorKind> {
        self.branches
            .last_mut()
            .ok_or(ErrorKind::UnopenedAlternates)
    }

    fn push(&mut self, token: Token) -> Result<(), ErrorKind> {
        self.branch()?.push(token);
        Ok(())
    }

    fn stars(&mut self) -> Result<(), ErrorKind> {
        self.push(Token::ZeroOrMore)?;
        self.push(Token::ZeroOrMore)
    }

    fn parse_star(&mut self) -> Result<(), ErrorKind> {
        let prev = self.prev;
        if self.peek() != Some('*') {
            return self.push(Token::ZeroOrMore);
        }
        self.bump();
        if self.branch()?.is_empty() {
            // `**` first in the pattern or an alternative.
            if self.peek().is_some_and(|c| c != '/') {
                return self.stars();
            }
            self.bump();
            return self.push(Token::RecursivePrefix);
        }
        if prev != Some('/')
            && (self.branches.len() <= 1 || (prev != Some(',') && prev != Some('{')))
        {
            return self.stars();
        }
        let is_suffix = match self.peek() {
            None => {
                self.bump();
                true
            }
            Some(',' | '}') if self.branches.len() >= 2 => true,
            Some('/') => {
                self.bump();
                false
            }
            _ => return self.stars(),
        };
        // The `/` before `**` becomes part of the recursive token.
        let token = match self.branch()?.pop() {
            Some(Token::RecursivePrefix) => Token::RecursivePrefix,
            Some(Token::RecursiveSuffix) => Token::RecursiveSuffix,
            _ if is_suffix => Token::RecursiveSuffix,
            _ => Token::RecursiveZeroOrMore,
        };
        self.push(token)
    }

    fn parse_class(&mut self) -> Result<(), ErrorKind> {
        fn extend(range: Option<&mut (char, char)>, hi: char) -> Result<(), ErrorKind> {
            // A range is only open after a first character was seen.
            if let Some(r) = range {
                r.1 = hi;
                if r.1 < r.0 {
                    return Err(ErrorKind::InvalidRange(r.0, r.1));
                }
            }
            Ok(())
        }
        let mut ranges: Vec<(char, char)> = Vec::new();
        let negated = matches!(self.peek(), Some('!' | '^'));
        if negated {
            self.bump();
        }
        let mut first = true;
        let mut in_range = false;
        loop {
            let c = self.bump().ok_or(ErrorKind::UnclosedClass)?;
            match c {
                ']' if !first => break,
                ']' => ranges.push((']', ']')),
                '-' if first => ranges.push(('-', '-')),
                '-' if in_range => {
                    extend(ranges.last_mut(), '-')?;
                    in_range = false;
                }
                '-' => in_range = true,
                '[' if !in_range && self.peek() == Some(':') => {
                    match self.posix_class() {
                        Some(set) => ranges.extend_from_slice(set),
                        None => ranges.push(('[', '[')),
                    }
                    in_range = false;
                }
                c if in_range => {
                    extend(ranges.last_mut(), c)?;
                    in_range = false;
                }
                c => ranges.push((c, c)),
            }
            first = false;
        }
        if in_range {
            ranges.push(('-', '-'));
        }
        self.push(Token::Class { negated, ranges })
    }

    /// `[:name:]` inside a class, after its `[`. On a malformed one the
    /// parser is put back; a well-formed one with an unknown name is
    /// consumed and gives `None` (globset does the same).
    fn posix_class(&mut self) -> Option<&'static [(char, char)]> {
        let saved = (self.chars.clone(), self.prev, self.cur);
        self.bump();
        let mut name = String::new();
        loop {
            match self.bump() {
                Some(':') if self.peek() == Some(']') => {
                    self.bump();
                    return posix_ranges(&name);
                }
                Some(c) if c.is_ascii_lowercase() && name.len() < 8 => name.push(c),
                _ => {
                    (self.chars, self.prev, self.cur) = saved;
                    return None;
                }
            }
        }
    }
}

fn posix_ranges(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\x00', '\x1f'), ('\x7f', '\x7f')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

/// One state of the automaton. Each reads a character and goes on to the
/// next state, or moves without reading.
#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any(Any),
    /// Never `/`, negated or not.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Split(usize, usize),
    Jump(usize),
    Match,
}

#[derive(Debug, Clone, Copy)]
enum Any {
    All,
    NotSlash,
}

/// `Any` any number of times, then on.
fn star(prog: &mut Vec<Inst>, any: Any) {
    let at = prog.len();
    prog.push(Inst::Split(at + 1, at + 3));
    prog.push(Inst::Any(any));
    prog.push(Inst::Jump(at));
}

/// Whether `tokens` match only the empty string in globset's translation,
/// where an alternative that would be empty is dropped.
fn is_empty(tokens: &[Token]) -> bool {
    tokens
        .iter()
        .all(|t| matches!(t, Token::Alternates(alts) if alts.iter().all(|a| is_empty(a))))
}

fn compile(tokens: &[Token], prog: &mut Vec<Inst>) {
    for token in tokens {
        match token {
            Token::Literal(c) => prog.push(Inst::Char(*c)),
            Token::Any => prog.push(Inst::Any(Any::NotSlash)),
            Token::ZeroOrMore => star(prog, Any::NotSlash),
            Token::RecursivePrefix => {
                // `(?:/?|.*/)`, that is nothing or `.*/`.
                let at = prog.len();
                prog.push(Inst::Split(at + 1, usize::MAX));
                star(prog, Any::All);
                prog.push(Inst::Char('/'));
                let end = prog.len();
                prog[at] = Inst::Split(at + 1, end);
            }
            Token::RecursiveSuffix => {
                prog.push(Inst::Char('/'));
                star(prog, Any::All);
            }
            Token::RecursiveZeroOrMore => {
                // `(?:/|/.*/)`, that is `/`, then nothing or `.*/`.
                prog.push(Inst::Char('/'));
                compile(&[Token::RecursivePrefix], prog);
            }
            Token::Class { negated, ranges } => prog.push(Inst::Class {
                negated: *negated,
                ranges: ranges.clone(),
            }),
            Token::Alternates(alts) => {
                let kept: Vec<&Vec<Token>> = alts.iter().filter(|a| !is_empty(a)).collect();
                let Some((last, rest)) = kept.split_last() else {
                    continue;
                };
                let mut jumps = Vec::new();
                for alt in rest {
                    let split = prog.len();
                    prog.push(Inst::Split(split + 1, usize::MAX));
                    compile(alt, prog);
                    jumps.push(prog.len());
                    prog.push(Inst::Jump(usize::MAX));
                    let next = prog.len();
                    prog[split] = Inst::Split(split + 1, next);
                }
                compile(last, prog);
                let end = prog.len();
                for j in jumps {
                    prog[j] = Inst::Jump(end);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).unwrap().is_match(text)
    }

    fn err(pattern: &str) -> ErrorKind {
        Glob::new(pattern).unwrap_err().kind
    }

    #[test]
    fn literals_and_star_stay_in_one_segment() {
        assert!(m("Albumin", "Albumin"));
        assert!(!m("Albumin", "Albumin2"));
        assert!(!m("Albumin", "albumin"));
        assert!(m("Alb*", "Albumin"));
        assert!(m("Alb*", "Alb"));
        assert!(m("*.sql", ".sql"));
        assert!(m("clinics/*/Albumin", "clinics/a/Albumin"));
        assert!(!m("clinics/*/Albumin", "clinics/a/b/Albumin"));
        assert!(!m("*", "a/b"));
        assert!(m("*", ""));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
    }

    #[test]
    fn question_mark_is_one_character_but_slash() {
        assert!(m("clinic_?", "clinic_a"));
        assert!(!m("clinic_?", "clinic_"));
        assert!(!m("clinic_?", "clinic_ab"));
        assert!(!m("a?b", "a/b"));
        // Whole characters, not bytes (globset differs here).
        assert!(m("clinic_?", "clinic_é"));
        assert!(m("[é]", "é"));
    }

    #[test]
    fn double_star_crosses_segments_as_a_whole_component() {
        assert!(m("**", ""));
        assert!(m("**", "a/b/c"));
        assert!(m("**/", "a/b"));
        assert!(m("**/X.sql", "X.sql"));
        assert!(m("**/X.sql", "a/b/X.sql"));
        assert!(!m("**/X.sql", "a/bX.sql"));
        assert!(m("a/**", "a/b"));
        assert!(m("a/**", "a/b/c"));
        assert!(!m("a/**", "a"));
        assert!(!m("a/**", "ab/c"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(!m("a/**/b", "a/xb"));
        assert!(m("a/**/**/b", "a/b"));
        // Inside a component `**` is two `*`.
        assert!(m("a**", "abc"));
        assert!(!m("a**", "a/c"));
        assert!(m("**a", "ba"));
        assert!(!m("**a", "b/a"));
        assert!(m("{**/x,y}", "a/x"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(m("[abc]", "b"));
        assert!(!m("[abc]", "d"));
        assert!(m("clinic_[a-c]", "clinic_b"));
        assert!(!m("clinic_[a-c]", "clinic_d"));
        assert!(m("[!a]", "b"));
        assert!(m("[^a]", "b"));
        assert!(!m("[!a]", "a"));
        assert!(!m("[!a]", "/"));
        assert!(!m("[/]", "/"));
        assert!(!m("[.-0]", "/"));
        assert!(m("[.-0]", "0"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
        assert!(!m("[!]]", "]"));
        assert!(m("[-a]", "-"));
        assert!(m("[a-]", "-"));
        assert!(m("[[:digit:]x]", "7"));
        assert!(m("[[:digit:]x]", "x"));
        assert!(!m("[[:digit:]]", "a"));
        assert!(m("[[]", "["));
        // An unknown class name is consumed, leaving `[`.
        assert!(m("[[:nope:]]", "["));
        assert_eq!(err("[b-a]"), ErrorKind::InvalidRange('b', 'a'));
        assert_eq!(err("a["), ErrorKind::UnclosedClass);
        assert_eq!(err("[!]"), ErrorKind::UnclosedClass);
    }

    #[test]
    fn alternation() {
        assert!(m("{Albumin,Calcium}", "Calcium"));
        assert!(!m("{Albumin,Calcium}", "Sodium"));
        assert!(m("x{a,b{c,d}}y", "xbdy"));
        assert!(m("x{,a}", "xa"));
        // globset drops an empty alternative.
        assert!(!m("x{,a}", "x"));
        assert!(m("x{}y", "xy"));
        assert!(m("a,b", "a,b"));
        assert!(m("{a/**,b}", "a/x/y"));
        assert_eq!(err("{a,b"), ErrorKind::UnclosedAlternates);
        assert_eq!(err("a}"), ErrorKind::UnopenedAlternates);
        let deep = format!("{}{}", "{".repeat(101), "}".repeat(101));
        assert_eq!(err(&deep), ErrorKind::TooManyNestedAlternates);
        let ok = format!("{}a{}", "{".repeat(100), "}".repeat(100));
        assert!(m(&ok, "a"));
    }

    #[test]
    fn backslash_escapes() {
        assert!(m(r"\*", "*"));
        assert!(!m(r"\*", "a"));
        assert!(m(r"a\{b", "a{b"));
        assert!(m(r"\\", "\\"));
        assert!(m(r"[\]", "\\"));
        assert_eq!(err("a\\"), ErrorKind::DanglingEscape);
    }

    #[test]
    fn errors_name_the_pattern_and_the_fix() {
        let e = Glob::new("clinics/[a").unwrap_err().to_string();
        assert_eq!(
            e,
            "error parsing glob 'clinics/[a': unclosed character class; missing ']' (write `[[]` for a literal '[')"
        );
        let e = Glob::new("{a").unwrap_err().to_string();
        assert!(e.contains("missing '}'"), "{e}");
    }

    #[test]
    fn hostile_patterns_match_in_polynomial_time() {
        let name = "a".repeat(20_000);
        let start = std::time::Instant::now();
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &name));
        assert!(!m(&"*a".repeat(200), &"a".repeat(199)));
        assert!(m(&format!("{}b", "*a".repeat(50)), &format!("{name}b")));
        let alts = format!("{}b", "{a,aa,*}".repeat(30));
        assert!(!m(&alts, &name[..2_000]));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn pipelines_globs_match_one_segment_at_a_time() {
        use crate::pipeline::resolve::find_pipelines;
        use crate::pipeline::vfs::MemVfs;
        let mut v = MemVfs::new();
        for dir in [
            "clinics/clinic_a",
            "clinics/clinic_b",
            "clinics/other",
            "x/y/z",
        ] {
            v.insert(&format!("{dir}/N.sql"), b"SELECT 1 AS x;\n");
        }
        let find = |patterns: &[&str]| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            let (found, problems) = find_pipelines(&v, &patterns);
            let found: Vec<String> = found.iter().map(|p| p.to_string()).collect();
            (found, problems)
        };
        assert_eq!(
            find(&["clinics/clinic_[!b]", "clinics/{other,none}"]).0,
            ["clinics/clinic_a", "clinics/other"]
        );
        assert_eq!(find(&["**/z"]).0, ["x/y/z"]);
        let (found, problems) = find(&["clinics/[x"]);
        assert!(found.is_empty());
        assert!(
            problems[0].starts_with(
                "pipelines pattern segment `[x` is not a valid glob: error parsing glob '[x': unclosed character class"
            ),
            "{problems:?}"
        );
    }

    /// The differential test against globset, sluice's matcher before
    /// this one: on ASCII, the same patterns are refused and the same
    /// names match, for each way sluice used it.
    mod against_globset {
        use super::*;
        use proptest::prelude::*;

        const PATTERN_PIECES: &[&str] = &[
            "a", "b", "/", "*", "?", "**", "[a-b]", "[!a]", "{a,b}", ".", "\\", "[", "]", "{", "}",
            ",", "!", "-", "^", "**/", "/**", "/**/",
        ];
        const NAME_PIECES: &[&str] = &[
            "a", "b", "/", ".", "*", "?", "[", "]", "{", "}", ",", "\\", "!", "-",
        ];

        fn text(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(pieces), 0..max)
                .prop_map(|v| v.concat())
        }

        fn check(
            pattern: &str,
            names: &[String],
            theirs: Result<globset::GlobMatcher, globset::Error>,
        ) -> Result<(), TestCaseError> {
            let ours = Glob::new(pattern);
            match (ours, theirs) {
                (Ok(ours), Ok(theirs)) => {
                    for name in names {
                        prop_assert_eq!(
                            ours.is_match(name),
                            theirs.is_match(name),
                            "pattern {:?} name {:?}",
                            pattern,
                            name
                        );
                    }
                }
                (Err(_), Err(_)) => {}
                (ours, theirs) => prop_assert!(
                    false,
                    "pattern {:?}: ours {:?}, globset {:?}",
                    pattern,
                    ours.err(),
                    theirs.err()
                ),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// `--select` (`literal_separator(true)`) and `.gitattributes`
            /// (`literal_separator(true)`, `backslash_escape(true)`, which
            /// is also globset's default on Unix): one option set.
            #[test]
            fn paths(
                pattern in text(PATTERN_PIECES, 8),
                names in proptest::collection::vec(text(NAME_PIECES, 8), 1..8),
            ) {
                let theirs = globset::GlobBuilder::new(&pattern)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map(|g| g.compile_matcher());
                check(&pattern, &names, theirs)?;
            }

            /// Names made to match: a random name rarely does.
            #[test]
            fn paths_that_match(
                pieces in proptest::collection::vec(
                    proptest::sample::select(&["a", "b", "*", "?", "**/", "/**", "/", "[a-b]", "{a,b/a}"][..]),
                    0..6,
                ),
                fill in text(&["a", "b", "/", "ab", "ba/"], 4),
            ) {
                let pattern = pieces.concat();
                let name: String = pattern
                    .replace("**/", &fill)
                    .replace("/**", &format!("/{fill}"))
                    .replace("[a-b]", "b")
                    .replace("{a,b/a}", "b/a")
                    .replace('*', &fill.replace('/', ""))
                    .replace('?', "a");
                let theirs = globset::GlobBuilder::new(&pattern)
                    .literal_separator(true)
                    .build()
                    .map(|g| g.compile_matcher());
                check(&pattern, &[name], theirs)?;
            }

            /// The `pipelines` globs: `Glob::new` defaults, one path
            /// segment against one directory name, neither with a `/`
            /// (where globset's `*` would match one).
            #[test]
            fn segments(
                pattern in text(PATTERN_PIECES, 8).prop_map(|p| p.replace('/', "")),
                names in proptest::collection::vec(
                    text(NAME_PIECES, 8).prop_map(|n| n.replace('/', "")),
                    1..8,
                ),
            ) {
                let theirs = globset::Glob::new(&pattern).map(|g| g.compile_matcher());
                check(&pattern, &names, theirs)?;
            }
        }
    }
}
