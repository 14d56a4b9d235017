//! Masking secrets in the engine's answers before the agent reads them. An answer is masked
//! whole, as parsed JSON: a template (`docker inspect -f`) runs on the client, over what the
//! proxy sent, so no way of printing a field can put a masked secret back together.
//!
//! What is masked: the values of variables and labels whose names are secret, the secret
//! values wherever they appear, and the password of every URL that carries one
//! (`postgres://app:[MASKED]@db/x`), whatever the variable's name.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::agent::shell::name_looks_secret;

/// What a secret is replaced with.
pub const MASKED: &str = "[MASKED]";

/// Secret values shorter than this are not searched for (the shell's redaction's bound: a
/// short value, `true` or a port, would garble every answer and protects nothing).
pub use crate::agent::shell::MIN_SECRET_VALUE_LEN;

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
    /// secret: a secret name with a value, a secret value anywhere in it, or a URL with a
    /// password.
    pub fn secret_in_env<'a>(&self, env: &'a [String]) -> Option<&'a str> {
        env.iter().find_map(|entry| {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            let secret = (!value.is_empty() && self.name_is_secret(name))
                || self.values.iter().any(|v| entry.contains(v.as_str()))
                || matches!(url_passwords(value), Cow::Owned(_));
            secret.then_some(name)
        })
    }

    /// `text` with every secret value, and the password of every URL, replaced by
    /// [`MASKED`].
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), MASKED));
            }
        }
        let masked = match url_passwords(&out) {
            Cow::Owned(masked) => Some(masked),
            Cow::Borrowed(_) => None,
        };
        masked.map_or(out, Cow::Owned)
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

/// `text` with the password of every URL in it (`scheme://user:password@host/...`) replaced
/// by [`MASKED`]. The password is what a URL parser takes for one: from the first `:` of the
/// userinfo to the last `@` of the authority, which ends at `/`, `?`, `#` or a space.
fn url_passwords(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    // `text[..copied]` is in `out`; the next `://` is searched for from `from`.
    let (mut copied, mut from) = (0, 0);
    while let Some(found) = text[from..].find("://") {
        let authority_start = from + found + 3;
        from = authority_start;
        let scheme_first = text[..authority_start - 3]
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            .last();
        if !scheme_first.is_some_and(|b| b.is_ascii_alphabetic()) {
            continue;
        }
        let rest = &text[authority_start..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let Some(colon) = authority[..at].find(':') else {
            continue;
        };
        if colon + 1 == at {
            continue;
        }
        let (start, stop) = (authority_start + colon + 1, authority_start + at);
        let masked = out.get_or_insert_with(String::new);
        masked.push_str(&text[copied..start]);
        masked.push_str(MASKED);
        copied = stop;
        from = stop;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut masked) => {
            masked.push_str(&text[copied..]);
            Cow::Owned(masked)
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
    fn the_password_of_a_url_is_masked_and_the_rest_of_it_kept() {
        for (text, masked) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:[MASKED]@db:5432/x",
            ),
            ("redis://:s3cret@cache", "redis://:[MASKED]@cache"),
            ("amqp+ssl://u:p@h?x=1", "amqp+ssl://u:[MASKED]@h?x=1"),
            // The authority's last @ ends the password, as a URL parser reads it.
            ("http://u:p@ss:w@rd@h/p@th", "http://u:[MASKED]@h/p@th"),
            (
                "a://u:p1@h1,b://v:p2@h2/x",
                "a://u:[MASKED]@h1,b://v:[MASKED]@h2/x",
            ),
            (
                "--db postgres://u:p@h --cache redis://:q@c",
                "--db postgres://u:[MASKED]@h --cache redis://:[MASKED]@c",
            ),
            ("s3://key:s%2Fecret@bucket", "s3://key:[MASKED]@bucket"),
        ] {
            assert_eq!(url_passwords(text), masked, "{text}");
        }
        for text in [
            "http://host:8080/path?to=a@b",
            "ssh://git@host:22/repo",
            "redis://user:@cache",
            "http://host/",
            "git@github.com:org/repo",
            "://u:p@h",
            "1a://u:p@h",
            "no url at all: u:p@h",
        ] {
            assert!(
                matches!(url_passwords(text), Cow::Borrowed(_)),
                "{text} is left as it is"
            );
        }
    }

    #[test]
    fn a_url_password_is_masked_in_any_value_and_makes_an_environment_secret() {
        let m = masker();
        let mut v = json!({
            "Config": {
                "Env": ["CACHE=redis://cache:url-only-9a1b@cache:6379/0", "PATH=/bin"],
                "Cmd": ["app", "--db", "postgres://u:in-args-3c4d@db/x"],
                "Labels": {"backup": "s3://key:in-label-5e6f@bucket"}
            },
            "Actor": {"Attributes": {"backup": "s3://key:in-event-7a8b@bucket"}}
        });
        m.json(&mut v);
        let text = v.to_string();
        for secret in [
            "url-only-9a1b",
            "in-args-3c4d",
            "in-label-5e6f",
            "in-event-7a8b",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            v["Config"]["Env"][0],
            "CACHE=redis://cache:[MASKED]@cache:6379/0"
        );
        assert_eq!(v["Config"]["Env"][1], "PATH=/bin");
        let env = vec!["PATH=/bin".to_string(), "CACHE=redis://:p@c".to_string()];
        assert_eq!(m.secret_in_env(&env), Some("CACHE"));
        let plain = vec!["HOME=http://host:8080/x".to_string()];
        assert_eq!(m.secret_in_env(&plain), None);
    }

    #[test]
    fn debug_never_shows_a_value() {
        assert!(!format!("{:?}", masker()).contains(VALUE));
    }
}
