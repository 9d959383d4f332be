//! The HTTP layer the three clients share: one ureq agent with timeouts and
//! no redirects, JSON in and out, paging, and every answer other than 2xx
//! turned into a [`ForgeError`] carrying its status and rate-limit headers.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde_json::Value;
use ureq::http::{HeaderMap, StatusCode};

use super::ForgeError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole call: connect, send, and read the answer's body.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A page of 100 GitHub comments of 65,536 chars is 26 MB at worst.
const MAX_BODY: u64 = 64 << 20;
const MAX_MESSAGE: usize = 200;
/// Items asked for per page; every forge allows 100 (Gitea may give fewer).
pub(crate) const PER_PAGE: usize = 100;
/// A PR with more than 20,000 comments is not one sluice should search.
const MAX_PAGES: u32 = 200;

/// An API base URL, its headers (the token among them) and an agent.
pub(crate) struct Http {
    agent: ureq::Agent,
    base: String,
    headers: Vec<(&'static str, String)>,
    /// Kept only to scrub it from messages.
    token: String,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A 2xx answer.
pub(crate) struct Reply {
    body: Vec<u8>,
    /// Whether the headers say another page follows; `None` if they do not say.
    more: Option<bool>,
}

impl Reply {
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ForgeError::Invalid(format!("unreadable JSON answer: {e}")))
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Write {
    Post,
    Patch,
    Put,
}

impl Http {
    /// `headers` are sent with every call; they hold the token, which
    /// `token` repeats so it can be scrubbed from error messages.
    pub(crate) fn new(api_url: &str, token: String, headers: Vec<(&'static str, String)>) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(CALL_TIMEOUT))
            // A redirect would lose the auth header or, worse, hand
            // GitLab's PRIVATE-TOKEN to another host: report it instead.
            .max_redirects(0)
            .user_agent(format!("sluice/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Http {
            agent,
            base: api_url.trim_end_matches('/').to_string(),
            headers,
            token,
        }
    }

    pub(crate) fn get(&self, path: &str) -> Result<Reply, ForgeError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        for (name, value) in &self.headers {
            req = req.header(*name, value.as_str());
        }
        self.finish("GET", &url, req.call())
    }

    pub(crate) fn write(
        &self,
        method: Write,
        path: &str,
        body: &Value,
    ) -> Result<Reply, ForgeError> {
        let url = format!("{}{path}", self.base);
        let (name, mut req) = match method {
            Write::Post => ("POST", self.agent.post(&url)),
            Write::Patch => ("PATCH", self.agent.patch(&url)),
            Write::Put => ("PUT", self.agent.put(&url)),
        };
        for (header, value) in &self.headers {
            req = req.header(*header, value.as_str());
        }
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ForgeError::Invalid(format!("cannot encode request: {e}")))?;
        let result = req.content_type("application/json").send(&bytes[..]);
        self.finish(name, &url, result)
    }

    fn finish(
        &self,
        method: &str,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, ForgeError> {
        let mut resp = result.map_err(|e| self.call_error(method, url, e))?;
        let status = resp.status();
        let body = resp.body_mut().with_config().limit(MAX_BODY).read_to_vec();
        if status.is_success() {
            let body = body.map_err(|e| self.call_error(method, url, e))?;
            return Ok(Reply {
                body,
                more: more_pages(resp.headers()),
            });
        }
        // The status says what happened; a body we could not read only
        // costs the message.
        let body = body.unwrap_or_default();
        Err(http_error(
            status.as_u16(),
            resp.headers(),
            &body,
            &self.token,
            SystemTime::now(),
        ))
    }

    fn call_error(&self, method: &str, url: &str, e: ureq::Error) -> ForgeError {
        let text = redact(format!("{method} {url}: {e}"), &self.token);
        match e {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
                ForgeError::Invalid(text)
            }
            _ => ForgeError::Transport(text),
        }
    }

    /// Lists `path` page by page (`size_param` is `per_page` or `limit`)
    /// until `pick` chooses an item or the pages run out.
    pub(crate) fn find_in_pages<I: DeserializeOwned, T>(
        &self,
        path: &str,
        size_param: &str,
        mut pick: impl FnMut(&I) -> Option<T>,
    ) -> Result<Option<T>, ForgeError> {
        let sep = if path.contains('?') { '&' } else { '?' };
        for page in 1..=MAX_PAGES {
            let reply = self.get(&format!("{path}{sep}{size_param}={PER_PAGE}&page={page}"))?;
            let items: Vec<I> = reply.json()?;
            if let Some(found) = items.iter().find_map(&mut pick) {
                return Ok(Some(found));
            }
            // Gitea may cap the page below what we asked for, so a short
            // page ends the list only when no header says otherwise.
            let more = reply.more.unwrap_or(items.len() >= PER_PAGE);
            if items.is_empty() || !more {
                return Ok(None);
            }
        }
        Err(ForgeError::Invalid(format!(
            "more than {MAX_PAGES} pages at {path}"
        )))
    }
}

/// A commit sha as a forge reports it: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub(crate) fn check_sha(sha: String) -> Result<String, ForgeError> {
    if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(ForgeError::Invalid(format!(
            "not a commit sha: {:?}",
            cap(&sha, 80)
        )))
    }
}

/// The error for a non-2xx answer, from its status, headers and body.
fn http_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    token: &str,
    now: SystemTime,
) -> ForgeError {
    let number = |names: &[&str]| header(headers, names).and_then(|v| v.trim().parse::<u64>().ok());
    ForgeError::Http {
        status,
        retry_after: header(headers, &["retry-after"]).and_then(|v| parse_retry_after(v, now)),
        rate_limit_reset: number(&["x-ratelimit-reset", "ratelimit-reset"]),
        rate_limit_remaining: number(&["x-ratelimit-remaining", "ratelimit-remaining"]),
        message: cap(&redact(reason(status, headers, body), token), MAX_MESSAGE),
    }
}

/// The first of `names` present, as text.
fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
}

/// `Link` (GitHub, Gitea, GitLab) or `X-Next-Page` (GitLab) say whether
/// another page follows; GitHub sends neither when there is one page.
fn more_pages(headers: &HeaderMap) -> Option<bool> {
    let links: Vec<&str> = headers
        .get_all("link")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !links.is_empty() {
        return Some(links.iter().any(|l| link_has_next(l)));
    }
    header(headers, &["x-next-page"]).map(|v| !v.trim().is_empty())
}

/// Whether a `Link` header has a `rel="next"` entry.
fn link_has_next(link: &str) -> bool {
    link.split(',').any(|entry| {
        entry.split(';').skip(1).any(|param| {
            let param = param.trim();
            param
                .strip_prefix("rel=")
                .map(|rel| {
                    rel.trim_matches('"')
                        .split_whitespace()
                        .any(|r| r == "next")
                })
                .unwrap_or(false)
        })
    })
}

/// `Retry-After` in seconds or as an HTTP date (IMF-fixdate); a date in
/// the past is zero, anything else unreadable is `None`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = UNIX_EPOCH + Duration::from_secs(http_date(value)?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Unix seconds of an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    if !weekday.ends_with(',') {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    u64::try_from(secs).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A short reason: the forge's JSON `message` (GitHub, Gitea, GitLab) or
/// `error` (GitLab's auth errors), with GitHub's first validation error,
/// else the status's reason phrase. A redirect names its target.
fn reason(status: u16, headers: &HeaderMap, body: &[u8]) -> String {
    let mut text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| json_message(&v))
        .unwrap_or_else(|| {
            StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no reason given")
                .to_string()
        });
    if (300..400).contains(&status)
        && let Some(location) = header(headers, &["location"])
    {
        text = format!("{text} (moved to {location})");
    }
    text
}

fn json_message(v: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let main = ["message", "error_description", "error"]
        .iter()
        .find_map(|k| v.get(*k))?;
    let mut out = text(main);
    if let Some(first) = v
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        let detail = first.get("message").map_or_else(|| text(first), text);
        out = format!("{out}: {detail}");
    }
    Some(out)
}

/// At most `max` chars, control characters made spaces so it stays one line.
fn cap(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// `s` with the token replaced. A token shorter than 8 bytes is no real
/// token (GitHub's are 40+), and scrubbing it would mangle ordinary words.
fn redact(s: String, token: &str) -> String {
    if token.len() >= 8 && s.contains(token) {
        s.replace(token, "<redacted>")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = at(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 25:00:00 GMT", now),
            None
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(http_date("Tue, 29 Feb 2000 12:00:00 UTC"), None);
    }

    #[test]
    fn links_name_the_next_page() {
        assert!(link_has_next(
            r#"<https://x/y?page=2>; rel="next", <https://x/y?page=5>; rel="last""#
        ));
        assert!(!link_has_next(
            r#"<https://x/y?page=1>; rel="first", <https://x/y?page=4>; rel="prev""#
        ));
        assert!(link_has_next("<https://x/y?page=2>; rel=next"));
        assert_eq!(more_pages(&headers(&[])), None);
        assert_eq!(more_pages(&headers(&[("x-next-page", "")])), Some(false));
        assert_eq!(more_pages(&headers(&[("x-next-page", "3")])), Some(true));
        assert_eq!(
            more_pages(&headers(&[
                ("link", r#"<u>; rel="prev""#),
                ("link", r#"<v>; rel="next""#)
            ])),
            Some(true)
        );
    }

    #[test]
    fn errors_carry_rate_limits_and_a_short_reason() {
        let h = headers(&[
            ("retry-after", "7"),
            ("x-ratelimit-reset", "1700000000"),
            ("x-ratelimit-remaining", "0"),
        ]);
        let body = br#"{"message":"API rate limit exceeded","documentation_url":"https://docs"}"#;
        let e = http_error(403, &h, body, "", at(0));
        assert_eq!(
            e,
            ForgeError::Http {
                status: 403,
                retry_after: Some(Duration::from_secs(7)),
                rate_limit_reset: Some(1_700_000_000),
                rate_limit_remaining: Some(0),
                message: "API rate limit exceeded".into(),
            }
        );
        assert!(e.is_retryable());

        let gitlab = headers(&[("ratelimit-reset", "42"), ("ratelimit-remaining", "3")]);
        let e = http_error(429, &gitlab, b"Retry later\n", "", at(0));
        let ForgeError::Http {
            rate_limit_reset,
            rate_limit_remaining,
            message,
            ..
        } = e
        else {
            panic!("not Http")
        };
        assert_eq!(
            (rate_limit_reset, rate_limit_remaining),
            (Some(42), Some(3))
        );
        assert_eq!(message, "Too Many Requests");
    }

    #[test]
    fn reasons_from_each_forge() {
        let none = HeaderMap::new();
        let validation = br#"{"message":"Validation Failed","errors":[{"resource":"Status","field":"description","message":"description is too long"}]}"#;
        assert_eq!(
            reason(422, &none, validation),
            "Validation Failed: description is too long"
        );
        assert_eq!(
            reason(404, &none, br#"{"message":"404 Project Not Found"}"#),
            "404 Project Not Found"
        );
        assert_eq!(
            reason(400, &none, br#"{"message":{"name":["is too long"]}}"#),
            r#"{"name":["is too long"]}"#
        );
        assert_eq!(
            reason(401, &none, br#"{"error":"invalid_token"}"#),
            "invalid_token"
        );
        assert_eq!(
            reason(502, &none, b"<html>bad gateway</html>"),
            "Bad Gateway"
        );
        let moved = headers(&[("location", "https://api.github.com/repositories/1")]);
        assert_eq!(
            reason(301, &moved, b""),
            "Moved Permanently (moved to https://api.github.com/repositories/1)"
        );
    }

    #[test]
    fn messages_are_capped_and_scrubbed() {
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(500));
        let ForgeError::Http { message, .. } =
            http_error(500, &HeaderMap::new(), long.as_bytes(), "", at(0))
        else {
            panic!("not Http")
        };
        assert_eq!(message.chars().count(), 200);
        let token = "ghp_secretsecret";
        let echo = format!(r#"{{"message":"bad credentials {token}\nline"}}"#);
        let e = http_error(401, &HeaderMap::new(), echo.as_bytes(), token, at(0));
        assert!(!e.to_string().contains(token), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn shas_are_checked() {
        assert!(check_sha("a".repeat(40)).is_ok());
        assert!(check_sha("0123456789abcdef".repeat(4)).is_ok());
        assert!(check_sha("g".repeat(40)).is_err());
        assert!(check_sha(String::new()).is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let http = Http::new(
            "https://api.github.com/",
            "ghp_secretsecret".into(),
            vec![("authorization", "Bearer ghp_secretsecret".into())],
        );
        let debug = format!("{http:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("https://api.github.com\""), "{debug}");
    }
}
