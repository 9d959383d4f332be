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

/// Replaces every `{{ K }}` in `text` with its value. An undefined name is
/// an error, never an empty string. Braces around anything that is not a
/// parameter name (`"{{}}".format()` in Python, `{{ .x }}` in a template
/// language) and an unclosed `{{` are left as they are: bodies are code in
/// other languages, and only `{{name}}` is ours.
pub fn substitute(
    text: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, Vec<TemplateError>> {
    if !text.contains("{{") {
        return Ok(text.to_string());
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
                out.push_str(v);
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
        Ok(out)
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
