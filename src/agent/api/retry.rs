//! When a failed call is tried again, and how long the client waits first: the official
//! clients' rules (the Stainless-generated SDKs), as pure functions of the answer.
//!
//! - Tried again: no answer at all (connection refused or reset, timeout, a body cut short),
//!   408, 409, 429 and every 5xx (529 `overloaded_error` included). `x-should-retry: true`
//!   or `false`, when the server sends it, overrides the status rule.
//! - Never tried again, whatever the headers say: the answers in [`Fatal`] (a bad key, a
//!   forbidden one, a spend limit reached, billing). Retrying cannot help and every retry is
//!   another refused call on the account; the caller stops all dispatching instead.
//! - The wait: `retry-after-ms`, else `retry-after` (seconds, fractions allowed, or an HTTP
//!   date), when it is more than 0 and at most 60 s, exactly; otherwise 0.5 s doubling per
//!   retry up to 8 s, shortened by a random 0-25 % (jitter).

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use reqwest::header::HeaderMap;

/// How many times, and how long to wait between them. Defaults are the official clients'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (2: at most 3 attempts).
    pub max_retries: u32,
    /// The first backoff delay, doubled per retry.
    pub initial_delay: Duration,
    /// The backoff cap.
    pub max_delay: Duration,
    /// A server-requested wait longer than this is ignored in favour of the backoff.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retries_done + 1`. `headers` are the failed answer's
    /// (`None` when there was no answer), `now` reads an HTTP-date `retry-after`, `random`
    /// in [0, 1) is the jitter draw.
    pub fn delay(
        &self,
        retries_done: u32,
        headers: Option<&HeaderMap>,
        now: SystemTime,
        random: f64,
    ) -> Duration {
        if let Some(asked) = headers.and_then(|h| retry_after(h, now))
            && asked > Duration::ZERO
            && asked <= self.max_retry_after
        {
            return asked;
        }
        let base = crate::backoff::exponential(
            retries_done.saturating_add(1),
            self.initial_delay,
            self.max_delay,
        );
        base.mul_f64(1.0 - 0.25 * random.clamp(0.0, 1.0))
    }
}

/// The answers that retrying cannot fix and that must stop all dispatching at once: the
/// account, not the request, is the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fatal {
    /// 401 `authentication_error`: the key is malformed, revoked or expired.
    Authentication,
    /// 403 `permission_error`: the key may not use this model or resource.
    Permission,
    /// A spend limit is reached: a 429 whose `error.details.error_code` is
    /// `enforced_spend_limit_reached` (the tier's monthly cap, no `retry-after`), or a 400/429
    /// whose message says the organization's or workspace's own usage limit is reached.
    SpendLimit,
    /// 402 `billing_error`: payment details need attention.
    Billing,
}

impl Fatal {
    pub fn as_str(self) -> &'static str {
        match self {
            Fatal::Authentication => "authentication",
            Fatal::Permission => "permission",
            Fatal::SpendLimit => "spend-limit",
            Fatal::Billing => "billing",
        }
    }
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an error answer from its status and its body's `error.type`,
/// `error.details.error_code` and `error.message`.
pub fn classify(
    status: u16,
    error_type: Option<&str>,
    error_code: Option<&str>,
    message: &str,
) -> Option<Fatal> {
    const SPEND: &str = "enforced_spend_limit_reached";
    if error_code == Some(SPEND) || error_type == Some(SPEND) {
        return Some(Fatal::SpendLimit);
    }
    if matches!(status, 400 | 429) {
        // The documented wordings: "You have reached your specified API usage limits",
        // "... workspace API usage limits", "You have reached your API usage limits: your
        // organization has crossed its monthly API usage threshold". An ordinary rate limit
        // speaks of a "rate limit" and never of usage or spend limits.
        let message = message.to_ascii_lowercase();
        if message.contains("api usage limits") || message.contains("spend limit") {
            return Some(Fatal::SpendLimit);
        }
    }
    match (status, error_type) {
        (401, _) | (_, Some("authentication_error")) => Some(Fatal::Authentication),
        (403, _) | (_, Some("permission_error")) => Some(Fatal::Permission),
        (402, _) | (_, Some("billing_error")) => Some(Fatal::Billing),
        _ => None,
    }
}

/// The status rule alone: 408, 409, 429 and 5xx are worth another try.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// Whether an error answer is tried again (retries left aside): never for a [`Fatal`] one,
/// else as `x-should-retry` says when it says `true` or `false`, else by the status.
pub fn should_retry(status: u16, headers: &HeaderMap, fatal: Option<Fatal>) -> bool {
    if fatal.is_some() {
        return false;
    }
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => true,
        Some("false") => false,
        _ => retryable_status(status),
    }
}

/// The wait a server asks for: `retry-after-ms` (milliseconds), else `retry-after` in
/// seconds (fractions allowed) or as an HTTP date (measured from `now`). `None` when
/// absent, unreadable, or in the past.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return seconds(ms / 1000.0);
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    (date.with_timezone(&chrono::Utc) - now).to_std().ok()
}

fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// Time and chance as the retry loop sees them, so that tests can make both deterministic
/// (`tokio::time::pause` for [`TokioClock`]'s sleeps, or a clock of their own that records
/// the waits and draws a fixed jitter).
pub trait RetryClock: Send + Sync {
    /// Waits `delay`.
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()>;
    /// A uniform draw in [0, 1) for the jitter.
    fn random(&self) -> f64;
    /// The wall clock, for a `retry-after` given as an HTTP date.
    fn now(&self) -> SystemTime;
}

/// The production clock: `tokio::time::sleep`, a fresh random draw each time, the system
/// time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl RetryClock for TokioClock {
    fn sleep(&self, delay: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(delay))
    }

    fn random(&self) -> f64 {
        use std::hash::{BuildHasher, Hasher};
        // Each RandomState is keyed afresh (std seeds it randomly and bumps it per call):
        // enough randomness for jitter without another dependency.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x9E37_79B9_7F4A_7C15);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_retried_are_408_409_429_and_5xx() {
        let none = HeaderMap::new();
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(should_retry(status, &none, None), "{status}");
        }
        for status in [400, 401, 402, 403, 404, 413, 422] {
            assert!(!should_retry(status, &none, None), "{status}");
        }
    }

    #[test]
    fn x_should_retry_overrides_the_status_rule_but_never_a_fatal_answer() {
        assert!(!should_retry(
            500,
            &headers(&[("x-should-retry", "false")]),
            None
        ));
        assert!(should_retry(
            400,
            &headers(&[("x-should-retry", "true")]),
            None
        ));
        assert!(should_retry(
            500,
            &headers(&[("x-should-retry", "maybe")]),
            None
        ));
        let yes = headers(&[("x-should-retry", "true")]);
        assert!(!should_retry(401, &yes, Some(Fatal::Authentication)));
        assert!(!should_retry(429, &yes, Some(Fatal::SpendLimit)));
    }

    #[test]
    fn classify_tells_spend_limits_and_account_problems_from_rate_limits() {
        assert_eq!(
            classify(
                429,
                Some("rate_limit_error"),
                Some("enforced_spend_limit_reached"),
                "You have reached your API usage limits"
            ),
            Some(Fatal::SpendLimit)
        );
        assert_eq!(
            classify(
                429,
                Some("rate_limit_error"),
                None,
                "You have reached your API usage limits: your organization has crossed its monthly API usage threshold."
            ),
            Some(Fatal::SpendLimit)
        );
        assert_eq!(
            classify(
                400,
                Some("invalid_request_error"),
                None,
                "You have reached your specified workspace API usage limits. You will regain access on 2026-09-01 at 00:00 UTC."
            ),
            Some(Fatal::SpendLimit)
        );
        assert_eq!(
            classify(
                429,
                Some("rate_limit_error"),
                None,
                "Number of request tokens has exceeded your per-minute rate limit"
            ),
            None
        );
        assert_eq!(
            classify(401, Some("authentication_error"), None, "invalid x-api-key"),
            Some(Fatal::Authentication)
        );
        assert_eq!(classify(403, None, None, ""), Some(Fatal::Permission));
        assert_eq!(
            classify(402, Some("billing_error"), None, ""),
            Some(Fatal::Billing)
        );
        assert_eq!(
            classify(400, Some("invalid_request_error"), None, "messages: bad"),
            None
        );
        assert_eq!(
            classify(529, Some("overloaded_error"), None, "Overloaded"),
            None
        );
    }

    #[test]
    fn retry_after_reads_ms_then_seconds_then_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        let both = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
        assert_eq!(retry_after(&both, now), Some(Duration::from_millis(250)));
        let secs = headers(&[("retry-after", "1.5")]);
        assert_eq!(retry_after(&secs, now), Some(Duration::from_millis(1500)));
        let date = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(10)));
        let past = headers(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]);
        assert_eq!(retry_after(&past, now), None);
        let junk = headers(&[("retry-after", "soon"), ("retry-after-ms", "x")]);
        assert_eq!(retry_after(&junk, now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
    }

    #[test]
    fn delay_honours_a_retry_after_up_to_60_s_exactly() {
        let policy = RetryPolicy::default();
        let now = SystemTime::now();
        let asked = headers(&[("retry-after", "20")]);
        assert_eq!(
            policy.delay(0, Some(&asked), now, 0.9),
            Duration::from_secs(20)
        );
        let limit = headers(&[("retry-after", "60")]);
        assert_eq!(
            policy.delay(0, Some(&limit), now, 0.9),
            Duration::from_secs(60)
        );
        // Too long or zero: the backoff instead (first retry: 0.5 s, no jitter at draw 0).
        for value in ["61", "3600", "0"] {
            let h = headers(&[("retry-after", value)]);
            assert_eq!(
                policy.delay(0, Some(&h), now, 0.0),
                Duration::from_millis(500),
                "{value}"
            );
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_8_s_with_at_most_25_percent_jitter() {
        let policy = RetryPolicy::default();
        let now = SystemTime::now();
        let expected = [500, 1000, 2000, 4000, 8000, 8000, 8000];
        for (retries_done, ms) in expected.into_iter().enumerate() {
            let full = policy.delay(retries_done as u32, None, now, 0.0);
            assert_eq!(full, Duration::from_millis(ms));
            let least = policy.delay(retries_done as u32, None, now, 0.999_999);
            assert!(
                least > full.mul_f64(0.75) - Duration::from_millis(1),
                "{least:?}"
            );
            assert!(least < full);
        }
        assert_eq!(
            policy.delay(u32::MAX, None, now, 0.0),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn the_tokio_clock_draws_vary_and_stay_in_range() {
        let clock = TokioClock;
        let draws: Vec<f64> = (0..64).map(|_| clock.random()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let first = draws[0];
        assert!(draws.iter().any(|d| *d != first), "64 identical draws");
    }
}
