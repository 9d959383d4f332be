//! `{{K}}` template substitution in bodies and `@source` paths.

use std::collections::BTreeMap;

/// A `{{...}}` that could not be filled, with the 0-based line of the text
/// it stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

/// The parameter names a text refers to, in order of first use.
pub fn references(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim();
        if super::directive::is_identifier(key) && !out.iter().any(|k| k == key) {
            out.push(key.to_string());
        }
        rest = &after[end + 2..];
    }
    out
}

/// Where the substitution put each value: enough to place an offset of
/// the text after templates (where SQLite reports an error) on the line
/// and column of the text as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateMap {
    /// In the order of the text.
    replaced: Vec<Replaced>,
}

/// One `{{ K }}` and the value standing in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replaced {
    /// The value's bytes in the text after templates.
    start: usize,
    end: usize,
    /// Characters of the `{{ K }}` as written and of the value.
    written_chars: usize,
    value_chars: usize,
}

impl TemplateMap {
    /// The 0-based line and 1-based column (in characters) in the text as
    /// written of byte `offset` of `out`, the text after templates (what
    /// [`substitute_mapped`] returned with this map). An offset inside a
    /// value is placed at its `{{`.
    pub fn line_column(&self, out: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(out.len());
        while !out.is_char_boundary(offset) {
            offset -= 1;
        }
        if let Some(r) = self
            .replaced
            .iter()
            .find(|r| r.start < offset && offset < r.end)
        {
            offset = r.start;
        }
        let before = &out[..offset];
        let line = before.matches('\n').count();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let mut column = before[line_start..].chars().count() + 1;
        // A value is one line: those before the offset on its line moved it.
        for r in &self.replaced {
            if r.start >= line_start && r.end <= offset {
                column = column + r.written_chars - r.value_chars;
            }
        }
        (line, column)
    }
}

/// Replaces every `{{ K }}` in `text` with its value. An undefined name is
/// an error, never an empty string. Braces around anything that is not a
/// parameter name (`"{{}}".format()` in Python, `{{ .x }}` in a template
/// language) and an unclosed `{{` are left as they are: bodies are code in
/// other languages, and only `{{name}}` is ours.
pub fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, Vec<TemplateError>> {
    substitute_mapped(text, params).map(|(out, _)| out)
}

/// [`substitute`], with where each value went.
pub fn substitute_mapped(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<(String, TemplateMap), Vec<TemplateError>> {
    let mut map = TemplateMap::default();
    if !text.contains("{{") {
        return Ok((text.to_string(), map));
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    let mut consumed = 0usize;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim();
        let used = start + 2 + end + 2;
        if !super::directive::is_identifier(key) {
            out.push_str(&rest[..used]);
        } else {
            out.push_str(&rest[..start]);
            if let Some(v) = params.get(key) {
                let at = out.len();
                out.push_str(v);
                map.replaced.push(Replaced {
                    start: at,
                    end: out.len(),
                    written_chars: rest[start..used].chars().count(),
                    value_chars: v.chars().count(),
                });
            } else {
                errors.push(TemplateError {
                    line: text[..consumed + start].matches('\n').count(),
                    message: format!(
                        "undefined parameter `{{{{{key}}}}}`: declare it with `@param {key}=...` in the node or set it in the pipeline's mount file"
                    ),
                });
            }
        }
        consumed += used;
        rest = &rest[used..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok((out, map))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_with_spaces() {
        let p = params(&[("clinic", "a"), ("n", "3")]);
        assert_eq!(substitute("x {{clinic}} {{ n }}!", &p).unwrap(), "x a 3!");
        assert_eq!(references("{{ a }} {{b}} {{a}}"), vec!["a", "b"]);
    }

    #[test]
    fn undefined_is_an_error_with_its_line() {
        let err = substitute("a\nb {{missing}}\n", &params(&[])).unwrap_err();
        assert_eq!(err[0].line, 1);
        assert!(err[0].message.contains("undefined parameter `{{missing}}`"));
    }

    #[test]
    fn offsets_after_templates_are_placed_in_the_text_as_written() {
        let p = params(&[("min", "120000"), ("t", "é"), ("empty", "")]);
        let written = "SELECT 1\nWHERE x > {{ min }} AND {{t}}{{empty}} oops\n";
        let (out, map) = substitute_mapped(written, &p).unwrap();
        assert_eq!(out, "SELECT 1\nWHERE x > 120000 AND é oops\n");
        // `oops` is at column 39 as written, 26 after templates.
        let at = out.find("oops").unwrap();
        let want = written.find("oops").unwrap() - written.find('\n').unwrap();
        assert_eq!(map.line_column(&out, at), (1, want));
        // Inside a value: at its `{{`.
        let inside = out.find("20000").unwrap();
        assert_eq!(map.line_column(&out, inside), (1, 11));
        // Before any value, and on a line without one, as is.
        assert_eq!(map.line_column(&out, 3), (0, 4));
        assert_eq!(map.line_column(&out, out.find("WHERE").unwrap()), (1, 1));
        // Past the end: clamped.
        assert_eq!(map.line_column(&out, usize::MAX).0, 2);
    }

    #[test]
    fn other_braces_are_left_alone() {
        let p = params(&[("k", "v")]);
        assert_eq!(
            substitute("'{{}}'.format() {{k}}", &p).unwrap(),
            "'{{}}'.format() v"
        );
        assert_eq!(
            substitute("{{ .x }} {{ not closed", &p).unwrap(),
            "{{ .x }} {{ not closed"
        );
    }
}
