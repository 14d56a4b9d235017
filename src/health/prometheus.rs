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
                        reason: format!("no answer within {:?}", self.timeout),
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
            _ => QueryError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            },
        }
    }
}
