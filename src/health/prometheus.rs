//! The Prometheus client: instant queries with a bound, and errors sorted into "Prometheus
//! could not be asked" (observability lost) and "the query is wrong" (a configuration error).

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as PromError};
use serde::Serialize;

/// One series of a query result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Prometheus did not answer, or answered that it cannot serve (5xx, timeout).
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// Prometheus refused the query itself (bad PromQL).
    #[error("Prometheus at {url} rejected the query: {reason}")]
    Invalid { url: String, reason: String },
}

/// A Prometheus to ask, with a bound on every query.
#[derive(Clone)]
pub struct Prometheus {
    client: Client,
    url: String,
    timeout: Duration,
}

impl Prometheus {
    pub fn new(url: &str, timeout: Duration) -> Result<Prometheus, QueryError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| QueryError::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let client = Client::from(http, url).map_err(|e| QueryError::Invalid {
            url: url.to_string(),
            reason: format!("not a usable URL: {e}"),
        })?;
        Ok(Prometheus {
            client,
            url: url.to_string(),
            timeout,
        })
    }

    /// Runs an instant query now. A scalar result is one series without labels.
    pub async fn query(&self, expr: &str) -> Result<Vec<Series>, QueryError> {
        let millis = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let request = self.client.query(expr).timeout(millis).get();
        let result =
            match tokio::time::timeout(self.timeout + Duration::from_millis(500), request).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(QueryError::Unreachable {
                        url: self.url.clone(),
                        reason: timed_out(self.timeout),
                    });
                }
            };
        let response = result.map_err(|e| self.classify(e))?;
        Ok(match response.data() {
            Data::Vector(vector) => vector
                .iter()
                .map(|v| Series {
                    labels: v
                        .metric()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    value: v.sample().value(),
                })
                .collect(),
            Data::Scalar(sample) => vec![Series {
                labels: BTreeMap::new(),
                value: sample.value(),
            }],
            Data::Matrix(_) => {
                return Err(QueryError::Invalid {
                    url: self.url.clone(),
                    reason:
                        "the expression returns a range vector; a check needs an instant vector"
                            .into(),
                });
            }
        })
    }

    fn classify(&self, e: PromError) -> QueryError {
        use prometheus_http_query::error::PrometheusErrorType as T;
        match &e {
            PromError::Prometheus(p) if matches!(p.error_type(), T::BadData | T::Execution) => {
                QueryError::Invalid {
                    url: self.url.clone(),
                    reason: p.message().to_string(),
                }
            }
            PromError::Client(_) => QueryError::Unreachable {
                url: self.url.clone(),
                reason: unanswered(&e, self.timeout),
            },
            _ => QueryError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            },
        }
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out: no answer within {timeout:?}")
}

/// Why a request got no answer, in the terms that say what to fix: the host name did not
/// resolve, the connection was refused, or the request timed out. Anything else is the
/// whole chain of causes (the top error alone says only "error sending request").
pub(crate) fn unanswered(error: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            return timed_out(timeout);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return "connection refused: nothing listens at that address and port".into();
                }
                std::io::ErrorKind::TimedOut => return timed_out(timeout),
                _ => {}
            }
        }
        chain.push(e.to_string());
        next = e.source();
    }
    // hyper's connector says "dns error" and keeps the resolver's own words below it.
    if let Some(at) = chain.iter().position(|m| m.contains("dns error")) {
        let cause = chain.get(at + 1).map_or("no address", String::as_str);
        return format!("the host name did not resolve ({cause})");
    }
    chain.dedup();
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(300);

    async fn reason(url: &str) -> String {
        let p = Prometheus::new(url, SHORT).expect("client");
        match p.query("up").await {
            Err(QueryError::Unreachable { reason, .. }) => reason,
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_said_so() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let reason = reason(&format!("http://127.0.0.1:{port}")).await;
        assert!(reason.starts_with("connection refused"), "{reason}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_said_so() {
        // `.invalid` never resolves (RFC 2606).
        let reason = reason("http://prometheus.invalid:9090").await;
        assert!(
            reason.starts_with("the host name did not resolve"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts and never answers.
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let reason = reason(&format!("http://127.0.0.1:{port}")).await;
        held.abort();
        assert!(reason.starts_with("timed out"), "{reason}");
    }
}
