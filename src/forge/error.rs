//! What a forge call can fail with, and whether trying again may help.

use std::time::Duration;

/// A failed forge call. The outbox branches on [`ForgeError::is_retryable`]
/// and [`ForgeError::retry_after`]; no variant ever carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered with a status other than 2xx.
    #[error("forge answered HTTP {status}: {message}")]
    Http {
        status: u16,
        /// `Retry-After`, in seconds or as an HTTP date.
        retry_after: Option<Duration>,
        /// Unix seconds, from `x-ratelimit-reset` or `RateLimit-Reset`.
        rate_limit_reset: Option<u64>,
        /// From `x-ratelimit-remaining` or `RateLimit-Remaining`.
        rate_limit_remaining: Option<u64>,
        /// A short reason (the forge's JSON `message`, or the status's
        /// reason phrase), at most 200 chars; never the request body.
        message: String,
    },
    /// No answer: connection refused, timeout, TLS, a broken connection.
    #[error("forge unreachable: {0}")]
    Transport(String),
    /// The forge answered something we cannot read, or the call could not
    /// be made as asked (a bad API URL or repository name).
    #[error("unusable forge answer: {0}")]
    Invalid(String),
}

/// 1 s, 2 s, 4 s… after `attempts` failed tries, never longer than `max`.
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempts.min(12)).min(max)
}

impl ForgeError {
    /// How long to wait before trying the call again: what the forge asked
    /// for (`Retry-After`, or the reset of an exhausted rate limit), else
    /// [`backoff`]; never longer than `max`.
    pub fn wait_before_retry(&self, attempts: u32, max: Duration) -> Duration {
        if let Some(d) = self.retry_after() {
            return d.min(max);
        }
        if let ForgeError::Http {
            rate_limit_remaining: Some(0),
            rate_limit_reset: Some(reset),
            ..
        } = self
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Duration::from_secs(reset.saturating_sub(now) + 1).min(max);
        }
        backoff(attempts, max)
    }

    /// Whether the same call may succeed later: no answer at all, a server
    /// error, throttling (429, or 403 carrying `Retry-After` or an exhausted
    /// rate limit), or a 409. GitLab answers 409 to concurrent status updates
    /// of one sha; none of the calls sluice makes gets a 409 for a lasting
    /// reason on any forge, so it is retryable everywhere.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForgeError::Transport(_) => true,
            ForgeError::Invalid(_) => false,
            ForgeError::Http {
                status,
                retry_after,
                rate_limit_remaining,
                ..
            } => match status {
                500..=599 | 429 | 409 => true,
                403 => retry_after.is_some() || *rate_limit_remaining == Some(0),
                _ => false,
            },
        }
    }

    /// How long the forge asked us to wait (`Retry-After`), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, if the forge answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A plain `Http` error with no rate-limit information (for fakes).
    pub fn http(status: u16, message: impl Into<String>) -> ForgeError {
        ForgeError::Http {
            status,
            retry_after: None,
            rate_limit_reset: None,
            rate_limit_remaining: None,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(status: u16, retry_after: Option<u64>, remaining: Option<u64>) -> ForgeError {
        ForgeError::Http {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            rate_limit_reset: None,
            rate_limit_remaining: remaining,
            message: String::new(),
        }
    }

    #[test]
    fn retryable_kinds() {
        assert!(ForgeError::Transport("refused".into()).is_retryable());
        assert!(!ForgeError::Invalid("junk".into()).is_retryable());
        for s in [500, 502, 503, 429, 409] {
            assert!(with(s, None, None).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422, 301] {
            assert!(!with(s, None, None).is_retryable(), "{s}");
        }
        assert!(with(403, Some(60), None).is_retryable());
        assert!(with(403, None, Some(0)).is_retryable());
        assert!(!with(403, None, Some(12)).is_retryable());
    }

    #[test]
    fn retry_after_only_from_http() {
        assert_eq!(
            with(429, Some(7), None).retry_after(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(ForgeError::Transport("x".into()).retry_after(), None);
    }
}
