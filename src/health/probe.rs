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

/// Runs the probe. `Err` is a failure of the *endpoint* (refused, timed out, wrong status or
/// body): for a probe, that is the health signal itself, not a lost observation.
pub async fn run(client: &reqwest::Client, probe: &HttpProbe) -> Result<(), String> {
    let request = client.get(&probe.url).timeout(probe.timeout).send();
    let response = request
        .await
        .map_err(|e| format!("GET {} failed: {e}", probe.url))?;
    let status = response.status().as_u16();
    if status != probe.status {
        return Err(format!(
            "GET {} answered {status}, expected {}",
            probe.url, probe.status
        ));
    }
    if let Some(test) = &probe.json {
        let body = response
            .text()
            .await
            .map_err(|e| format!("GET {}: reading the body failed: {e}", probe.url))?;
        json_test(&body, test).map_err(|reason| format!("GET {}: {reason}", probe.url))?;
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
}
