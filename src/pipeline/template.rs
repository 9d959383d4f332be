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

/// Replaces every `{{ K }}` in `text` with its value. An undefined name or a
/// malformed placeholder is an error, never an empty string.
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
        out.push_str(&rest[..start]);
        let line = text[..consumed + start].matches('\n').count();
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            errors.push(TemplateError {
                line,
                message: "`{{` is not closed by `}}`".into(),
            });
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let key = after[..end].trim();
        if !super::directive::is_identifier(key) {
            errors.push(TemplateError {
                line,
                message: format!("`{{{{{key}}}}}` is not a parameter name"),
            });
        } else if let Some(v) = params.get(key) {
            out.push_str(v);
        } else {
            errors.push(TemplateError {
                line,
                message: format!(
                    "undefined parameter `{{{{{key}}}}}`: declare it with `@param {key}=...` in the node or set it in the pipeline's mount file"
                ),
            });
        }
        let used = start + 2 + end + 2;
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
        assert!(substitute("{{ not closed", &params(&[])).is_err());
        assert!(substitute("{{a-b}}", &params(&[])).is_err());
    }
}
