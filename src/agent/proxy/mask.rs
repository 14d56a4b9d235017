//! Masking secrets in the engine's answers before the agent reads them. An answer is masked
//! whole, as parsed JSON: a template (`docker inspect -f`) runs on the client, over what the
//! proxy sent, so no way of printing a field can put a masked secret back together.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::agent::shell::name_looks_secret;

/// What a secret is replaced with.
pub const MASKED: &str = "[MASKED]";

/// Secret values shorter than this are not searched for: a short value (`true`, a port)
/// would garble every answer and protects nothing.
pub const MIN_SECRET_VALUE_LEN: usize = 8;

/// The secrets of a session: variable names whose values are secret (besides the names
/// that look secret) and values masked wherever they appear.
#[derive(Clone, Default)]
pub struct Masker {
    names: Vec<String>,
    /// Longest first, so that a secret containing another is masked whole.
    values: Vec<String>,
}

impl fmt::Debug for Masker {
    // Values are secrets: only their number is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("names", &self.names)
            .field("values", &self.values.len())
            .finish()
    }
}

impl Masker {
    pub fn new(names: &[String], values: &[String]) -> Masker {
        let mut values: Vec<String> = values
            .iter()
            .filter(|v| v.len() >= MIN_SECRET_VALUE_LEN)
            .cloned()
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        values.dedup();
        Masker {
            names: names.to_vec(),
            values,
        }
    }

    /// Whether a variable or label called `name` holds a secret.
    pub fn name_is_secret(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || name_looks_secret(name)
    }

    /// The first variable of a container's environment (`NAME=VALUE` entries) that holds a
    /// secret: a secret name with a value, or a secret value anywhere in it.
    pub fn secret_in_env<'a>(&self, env: &'a [String]) -> Option<&'a str> {
        env.iter().find_map(|entry| {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            let secret = (!value.is_empty() && self.name_is_secret(name))
                || self.values.iter().any(|v| entry.contains(v.as_str()));
            secret.then_some(name)
        })
    }

    /// `text` with every secret value replaced by [`MASKED`].
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASKED));
            }
        }
        out
    }

    /// Masks a parsed answer in place: the value of every `Env` entry whose name is secret,
    /// every label (`Labels`, and an event's `Attributes`) whose name is secret, and every
    /// secret value in any string or field name.
    pub fn json(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(masked) = self.text(s) {
                    *s = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Value::Object(object) => {
                for (key, mut field) in std::mem::take(object) {
                    match (key.as_str(), &mut field) {
                        ("Env", Value::Array(entries)) => {
                            for entry in entries {
                                if let Value::String(e) = entry {
                                    self.env_entry(e);
                                }
                            }
                        }
                        ("Labels" | "Attributes", Value::Object(labels)) => {
                            for (name, v) in labels.iter_mut() {
                                if self.name_is_secret(name) && v.is_string() {
                                    *v = Value::String(MASKED.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                    self.json(&mut field);
                    object.insert(self.text(&key).into_owned(), field);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// `NAME=VALUE` → `NAME=[MASKED]` when `NAME` is secret.
    fn env_entry(&self, entry: &mut String) {
        if let Some((name, value)) = entry.split_once('=')
            && !value.is_empty()
            && self.name_is_secret(name)
        {
            *entry = format!("{name}={MASKED}");
        }
    }

    /// A whole answer body: JSON masked as [`Masker::json`] and re-serialised; text that is
    /// not JSON (a plain error) has secret values replaced.
    ///
    /// # Errors
    /// The body is neither JSON nor UTF-8 text: it cannot be searched, so it is not sent.
    pub fn body(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.is_empty() {
            return Ok(Vec::new());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(mut value) => {
                self.json(&mut value);
                let mut out = serde_json::to_vec(&value)
                    .map_err(|e| format!("it cannot be re-encoded as JSON: {e}"))?;
                // The engine ends its JSON answers with a newline; keep that.
                if body.ends_with(b"\n") {
                    out.push(b'\n');
                }
                Ok(out)
            }
            Err(_) => match std::str::from_utf8(body) {
                Ok(text) => Ok(self.text(text).into_owned().into_bytes()),
                Err(_) => Err("it is neither JSON nor text".to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VALUE: &str = "hunter2-correct-horse";

    fn masker() -> Masker {
        Masker::new(
            &["APP_SETTING".to_string()],
            &[VALUE.to_string(), "short".to_string()],
        )
    }

    fn inspect() -> Value {
        json!({
            "Id": "3f2a",
            "Name": "/app",
            "Args": ["--password", VALUE],
            "Config": {
                "Env": [
                    "DB_PASSWORD=plain-secret-by-name",
                    "APP_SETTING=named-in-the-manifest",
                    "PATH=/bin",
                    "GREETING=hello",
                    format!("URL=postgres://u:{VALUE}@db/x"),
                    "EMPTY_TOKEN=",
                    "NOEQUALS"
                ],
                "Labels": {"team": "infra", "api_token": "label-secret-value", "short": "short"}
            }
        })
    }

    #[test]
    fn env_values_of_secret_names_are_masked_and_the_rest_kept() {
        let mut v = inspect();
        masker().json(&mut v);
        assert_eq!(
            v["Config"]["Env"],
            json!([
                "DB_PASSWORD=[MASKED]",
                "APP_SETTING=[MASKED]",
                "PATH=/bin",
                "GREETING=hello",
                "URL=postgres://u:[MASKED]@db/x",
                "EMPTY_TOKEN=",
                "NOEQUALS"
            ])
        );
    }

    #[test]
    fn secret_labels_and_values_anywhere_are_masked() {
        let mut v = inspect();
        masker().json(&mut v);
        assert_eq!(
            v["Config"]["Labels"],
            json!({"team": "infra", "api_token": "[MASKED]", "short": "short"}),
            "a value shorter than 8 bytes is not searched for"
        );
        assert_eq!(v["Args"], json!(["--password", "[MASKED]"]));
        let text = serde_json::to_string(&v).unwrap();
        for secret in [
            VALUE,
            "plain-secret-by-name",
            "named-in-the-manifest",
            "label-secret-value",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn event_attributes_and_field_names_are_masked() {
        let mut v = json!({
            "Type": "container",
            "Actor": {"ID": "3f2a", "Attributes": {"name": "app", "SECRET_KEY": "abc-long-value"}},
            format!("x-{VALUE}"): 1
        });
        masker().json(&mut v);
        assert_eq!(v["Actor"]["Attributes"]["SECRET_KEY"], "[MASKED]");
        assert_eq!(v["Actor"]["Attributes"]["name"], "app");
        assert_eq!(v["x-[MASKED]"], 1);
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let m = Masker::new(&[], &["abcdefgh".into(), "abcdefgh-ijkl".into()]);
        assert_eq!(
            m.text("x abcdefgh-ijkl y abcdefgh"),
            "x [MASKED] y [MASKED]"
        );
    }

    #[test]
    fn bodies_are_masked_as_json_or_as_text() {
        let m = masker();
        let body = format!("{{\"Env\":[\"DB_PASSWORD=x1\"],\"Note\":\"{VALUE}\"}}\n");
        let out = String::from_utf8(m.body(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\"Env\":[\"DB_PASSWORD=[MASKED]\"],\"Note\":\"[MASKED]\"}\n"
        );
        let text = format!("page not found: {VALUE}\n");
        assert_eq!(
            m.body(text.as_bytes()).unwrap(),
            b"page not found: [MASKED]\n"
        );
        assert_eq!(m.body(b"").unwrap(), b"");
        assert!(m.body(&[0xff, 0xfe, b'{']).is_err());
    }

    #[test]
    fn an_environment_holds_a_secret_by_name_or_by_value() {
        let m = masker();
        let env = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(m.secret_in_env(&env(&["PATH=/bin", "HOME=/root"])), None);
        assert_eq!(
            m.secret_in_env(&env(&["PATH=/bin", "DB_PASSWORD=x"])),
            Some("DB_PASSWORD")
        );
        assert_eq!(
            m.secret_in_env(&env(&["APP_SETTING=y"])),
            Some("APP_SETTING")
        );
        assert_eq!(
            m.secret_in_env(&env(&[&format!("URL=http://{VALUE}@h")])),
            Some("URL")
        );
        assert_eq!(
            m.secret_in_env(&env(&["EMPTY_TOKEN="])),
            None,
            "no value, no secret"
        );
    }

    #[test]
    fn debug_never_shows_a_value() {
        assert!(!format!("{:?}", masker()).contains(VALUE));
    }
}
