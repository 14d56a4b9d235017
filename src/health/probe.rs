//! HTTP probes evaluated from the controller: a status code and, optionally, one JSON field.

use crate::manifest::{HttpProbe, JsonTest};

/// The field at a dotted path (`a.b.0.c`: numbers index arrays).
fn field<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(value, |v, part| match v {
        serde_json::Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        serde_json::Value::Object(map) => map.get(part),
        _ => None,
    })
}

/// Whether a JSON body passes the test; the reason when it does not.
pub fn json_test(body: &str, test: &JsonTest) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    match field(&value, &test.path) {
        Some(found) if *found == test.equals => Ok(()),
        Some(found) => Err(format!(
            "{} is {found}, expected {}",
            test.path, test.equals
        )),
        None => Err(format!("{} is absent from the body", test.path)),
    }
}

/// Why an HTTP probe failed. For a probe, that is the health signal itself (the endpoint
/// is broken), not a lost observation; the message becomes the failing series' `error`
/// label, so it names the URL.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Refused, timed out, or otherwise no answer.
    #[error("GET {url} failed: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} answered {status}, expected {expected}")]
    Status {
        url: String,
        status: u16,
        expected: u16,
    },
    #[error("GET {url}: reading the body failed: {source}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The body is not JSON, or the tested field is absent or different.
    #[error("GET {url}: {reason}")]
    Json { url: String, reason: String },
}

/// Runs the probe, bounded by its timeout.
pub async fn run(client: &reqwest::Client, probe: &HttpProbe) -> Result<(), ProbeError> {
    let url = || probe.url.clone();
    let request = client.get(&probe.url).timeout(probe.timeout).send();
    let response = request
        .await
        .map_err(|source| ProbeError::Request { url: url(), source })?;
    let status = response.status().as_u16();
    if status != probe.status {
        return Err(ProbeError::Status {
            url: url(),
            status,
            expected: probe.status,
        });
    }
    if let Some(test) = &probe.json {
        let body = response
            .text()
            .await
            .map_err(|source| ProbeError::Body { url: url(), source })?;
        json_test(&body, test).map_err(|reason| ProbeError::Json { url: url(), reason })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(path: &str, equals: serde_json::Value) -> JsonTest {
        JsonTest {
            path: path.into(),
            equals,
        }
    }

    #[test]
    fn json_fields_are_found_by_dotted_path() {
        let pd = r#"[{"name":"pd0","health":true},{"name":"pd1","health":false}]"#;
        assert!(json_test(pd, &test("0.health", serde_json::json!(true))).is_ok());
        let err = json_test(pd, &test("1.health", serde_json::json!(true))).unwrap_err();
        assert!(err.contains("1.health is false"), "{err}");
        let etcd = r#"{"health":"true"}"#;
        assert!(json_test(etcd, &test("health", serde_json::json!("true"))).is_ok());
        assert!(
            json_test(etcd, &test("nope", serde_json::json!(1)))
                .unwrap_err()
                .contains("absent")
        );
        assert!(
            json_test("<html>", &test("a", serde_json::json!(1)))
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn probe_errors_name_the_url_and_what_was_expected() {
        let err = ProbeError::Status {
            url: "http://127.0.0.1:2379/health".into(),
            status: 503,
            expected: 200,
        };
        assert_eq!(
            err.to_string(),
            "GET http://127.0.0.1:2379/health answered 503, expected 200"
        );
        let err = ProbeError::Json {
            url: "http://pd/health".into(),
            reason: "0.health is false, expected true".into(),
        };
        assert_eq!(
            err.to_string(),
            "GET http://pd/health: 0.health is false, expected true"
        );
    }
}
