//! A compose file as plain YAML values that remember where they were written.
//!
//! Compose keys take several forms each (a list or a mapping, a string or a number), so the
//! file is read into a generic tree rather than a fixed schema; every value keeps its file,
//! line and key path (`services.web.ports[0]`), so that a problem found while converting is
//! reported where it was written, also after several files were merged. YAML merge keys
//! (`<<: *defaults`), common in compose files, are applied while the tree is built.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ComposeError;
use crate::yamldoc::{self, Diagnostic, DocLines};

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct At {
    pub(super) file: Arc<Path>,
    /// 1-based line of its key (a mapping entry) or of the value (a list item).
    pub(super) line: usize,
    /// Key path from the top of the file: `services.web.ports[0]`.
    pub(super) path: String,
}

impl At {
    /// The one error of an import, at this value.
    pub(super) fn error(&self, message: impl Into<String>) -> ComposeError {
        ComposeError::Invalid(self.diagnostic(message))
    }

    pub(super) fn diagnostic(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            path: self.file.to_path_buf(),
            line: Some(self.line),
            field: self.path.clone(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    /// A number, as written (`1.10` stays `1.10`, `0x1F` stays `0x1F`).
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in the order written; keys are unique (the reader refuses duplicates).
    Map(Vec<(String, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub(super) value: Value,
    pub(super) at: At,
}

impl Node {
    pub(super) fn error(&self, message: impl Into<String>) -> ComposeError {
        self.at.error(message)
    }

    /// What kind of value this is, for messages: "a list", "a string"...
    pub(super) fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "empty (null)",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// An error saying what was expected and what was written instead.
    pub(super) fn expected(&self, what: &str) -> ComposeError {
        self.error(format!("expected {what}, found {}", self.kind()))
    }

    pub(super) fn entries(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The entries of a mapping, or an error naming what was expected.
    pub(super) fn map(&self, what: &str) -> Result<&[(String, Node)], ComposeError> {
        self.entries().ok_or_else(|| self.expected(what))
    }

    pub(super) fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// A scalar (string, number, boolean) as text; numbers and booleans as written.
    pub(super) fn scalar(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) | Value::Number(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// [`Node::scalar`], or an error.
    pub(super) fn text(&self, what: &str) -> Result<String, ComposeError> {
        self.scalar().ok_or_else(|| self.expected(what))
    }

    /// The items of a list, or an error.
    pub(super) fn seq(&self, what: &str) -> Result<&[Node], ComposeError> {
        match &self.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.expected(what)),
        }
    }

    /// Every node of the tree, this one first, depth first.
    pub(super) fn walk_mut(
        &mut self,
        f: &mut dyn FnMut(&mut Node) -> Result<(), ComposeError>,
    ) -> Result<(), ComposeError> {
        f(self)?;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().try_for_each(|n| n.walk_mut(f)),
            Value::Map(entries) => entries.iter_mut().try_for_each(|(_, n)| n.walk_mut(f)),
            _ => Ok(()),
        }
    }
}

/// Reads one compose file (`text` is the contents of `path`) into a tree.
///
/// # Errors
/// Invalid YAML, a duplicate key, a document that is not a mapping, more than one document,
/// or an empty file: one [`ComposeError::Invalid`] at its line.
pub(super) fn read(path: &Path, text: &str) -> Result<Node, ComposeError> {
    let file: Arc<Path> = Arc::from(path);
    let mut docs = yamldoc::read::<Raw>(path, text).into_iter();
    let first = match docs.next() {
        None => {
            return Err(ComposeError::Invalid(Diagnostic {
                path: path.to_path_buf(),
                line: None,
                field: String::new(),
                message: "the file is empty: expected a compose file with `services:`".into(),
            }));
        }
        Some(doc) => doc.map_err(ComposeError::Invalid)?,
    };
    if let Some(second) = docs.next() {
        let line = match &second {
            Ok(doc) => Some(doc.lines.line_of("")),
            Err(d) => d.line,
        };
        return Err(ComposeError::Invalid(Diagnostic {
            path: path.to_path_buf(),
            line,
            field: String::new(),
            message: "a second YAML document (after `---`): a compose file holds one; give each file on the command line".into(),
        }));
    }
    let root = build(
        first.value,
        &first.lines,
        &file,
        String::new(),
        String::new(),
    )?;
    if root.entries().is_none() {
        return Err(root.expected("a compose file (a mapping with `services:`)"));
    }
    Ok(root)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `logical` is the key path shown in messages; `physical` the path where the value sits in
/// the file, which differs inside a merge key (`a.<<.b` is written, `a.b` is meant).
fn build(
    raw: Raw,
    lines: &DocLines,
    file: &Arc<Path>,
    logical: String,
    physical: String,
) -> Result<Node, ComposeError> {
    let at = At {
        file: file.clone(),
        line: lines.line_of(&physical),
        path: logical.clone(),
    };
    let value = match raw {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Number(n) => Value::Number(lines.plain_text(&physical).map_or(n, str::to_string)),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    build(
                        item,
                        lines,
                        file,
                        format!("{logical}[{i}]"),
                        format!("{physical}[{i}]"),
                    )
                })
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(raw_entries) => {
            let mut entries: Vec<(String, Node)> = Vec::with_capacity(raw_entries.len());
            // Keys written in this mapping win over merged ones wherever they stand.
            let mut own = Vec::new();
            for (key, _) in &raw_entries {
                if let Some(k) = key_text(key) {
                    own.push(k);
                }
            }
            for (key, value) in raw_entries {
                let Some(key) = key_text(&key) else {
                    return Err(at.error(format!(
                        "a key that is {}: keys must be strings",
                        key.kind()
                    )));
                };
                if key == "<<" {
                    let merge_at = join(&physical, "<<");
                    let merged = build(value, lines, file, logical.clone(), merge_at)?;
                    for source in merge_sources(&merged)? {
                        for (k, v) in source {
                            if !own.contains(k) && !entries.iter().any(|(e, _)| e == k) {
                                entries.push((k.clone(), v.clone()));
                            }
                        }
                    }
                    continue;
                }
                let node = build(
                    value,
                    lines,
                    file,
                    join(&logical, &key),
                    join(&physical, &key),
                )?;
                entries.push((key, node));
            }
            Value::Map(entries)
        }
    };
    Ok(Node { value, at })
}

/// The mappings a merge key brings in, first one winning: `<<: *a` or `<<: [*a, *b]`.
fn merge_sources(merged: &Node) -> Result<Vec<&[(String, Node)]>, ComposeError> {
    let bad = || merged.error("a merge key (<<) takes a mapping or a list of mappings");
    match &merged.value {
        Value::Map(entries) => Ok(vec![entries]),
        Value::Seq(items) => items
            .iter()
            .map(|item| item.entries().ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn key_text(key: &Raw) -> Option<String> {
    match key {
        Raw::Str(s) | Raw::Number(s) => Some(s.clone()),
        Raw::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Any YAML value, as the schema layer hands it over.
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Seq(Vec<Raw>),
    Map(Vec<(Raw, Raw)>),
}

impl Raw {
    fn kind(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::Number(_) => "a number",
            Raw::Str(_) => "a string",
            Raw::Seq(_) => "a list",
            Raw::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value without tags")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Number(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn parse(text: &str) -> Node {
        read(Path::new("compose.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn values_keep_their_lines_and_paths() {
        let root =
            parse("services:\n  web:\n    image: x\n    ports:\n      - 80:80\n      - 8080\n");
        let web = root
            .get("services")
            .and_then(|s| s.get("web"))
            .expect("web");
        let ports = web
            .get("ports")
            .expect("ports")
            .seq("a list")
            .expect("list");
        assert_eq!(ports[1].at.line, 6);
        assert_eq!(ports[1].at.path, "services.web.ports[1]");
        assert_eq!(ports[1].value, Value::Number("8080".into()));
        assert_eq!(web.get("image").map(|n| n.at.line), Some(3));
    }

    #[test]
    fn numbers_keep_their_spelling() {
        let root = parse("a: 1.10\nb: 0x1F\nc: \"1.10\"\n");
        assert_eq!(
            root.get("a").and_then(Node::scalar).as_deref(),
            Some("1.10")
        );
        assert_eq!(
            root.get("b").and_then(Node::scalar).as_deref(),
            Some("0x1F")
        );
        assert_eq!(
            root.get("c").map(|n| &n.value),
            Some(&Value::Str("1.10".into()))
        );
    }

    #[test]
    fn merge_keys_bring_entries_in_and_written_keys_win() {
        let root = parse(
            "x-base: &base\n  image: a\n  restart: always\nservices:\n  web:\n    <<: *base\n    image: b\n",
        );
        let web = root
            .get("services")
            .and_then(|s| s.get("web"))
            .expect("web");
        assert_eq!(
            web.get("image").and_then(Node::scalar).as_deref(),
            Some("b")
        );
        let restart = web.get("restart").expect("merged");
        assert_eq!(restart.scalar().as_deref(), Some("always"));
        assert_eq!(restart.at.path, "services.web.restart");
        assert_eq!(restart.at.line, 6, "the line of the merge key");
        let keys: Vec<&str> = web
            .entries()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["restart", "image"]);
    }

    #[test]
    fn a_list_of_merge_sources_lets_the_first_win() {
        let root = parse("a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n");
        let c = root.get("c").expect("c");
        assert_eq!(c.get("x").and_then(Node::scalar).as_deref(), Some("1"));
        assert_eq!(c.get("y").and_then(Node::scalar).as_deref(), Some("2"));
    }

    #[test]
    fn bad_files_are_one_error_at_a_line() {
        let err = read(
            Path::new("c.yaml"),
            "services:\n  web: {image: a}\n  web: {image: b}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("c.yaml:3: services.web: duplicate key"),
            "{err}"
        );
        let err = read(Path::new("c.yaml"), "- a\n").unwrap_err().to_string();
        assert!(err.contains("expected a compose file"), "{err}");
        let err = read(Path::new("c.yaml"), "a: 1\n---\nb: 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:3: a second YAML document"), "{err}");
        let err = read(Path::new("c.yaml"), "# nothing\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the file is empty"), "{err}");
        let err = read(Path::new("c.yaml"), "a: [1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid YAML"), "{err}");
        let err = read(Path::new("c.yaml"), "a:\n  <<: 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:2: a: a merge key"), "{err}");
    }
}
