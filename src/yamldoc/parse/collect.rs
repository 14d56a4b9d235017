//! Reading one document into a schema without stopping at its first problem.
//!
//! serde stops at the first error, and neither a `DeserializeSeed` nor a `Visitor` can be
//! tried again once it has failed. So the document is loaded into a YAML tree once, then
//! deserialized from that tree as many times as it has problems (bounded by
//! [`MAX_ATTEMPTS`]): each failed attempt names one field, which the next attempt reads as a
//! stand-in (empty, zero, absent) instead. A missing required field is given a stand-in the
//! same way.
//!
//! Unknown fields never fail an attempt: they are recorded and skipped, against the field
//! list the derived schema itself passes to `deserialize_struct`. A field added to a schema
//! struct is therefore known here without anything else to edit.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, Visitor,
};
use serde_yaml::{Mapping, Value};

/// What a null is read as where a mapping is expected (`spec:` with nothing under it).
static EMPTY: std::sync::LazyLock<Mapping> = std::sync::LazyLock::new(Mapping::new);

/// Bound on the attempts for one document: past this many problems, the first ones are
/// reported and the document is not checked further.
const MAX_ATTEMPTS: usize = 64;

/// A document read as far as it goes.
pub(in crate::yamldoc) struct Collected<T> {
    /// `None` when the document's shape could not be read at all (it is not a mapping, or
    /// a field that has no stand-in, such as `apiVersion`, is wrong).
    pub value: Option<T>,
    /// `(field path, message)` for every problem, in the order found, each once.
    pub problems: Vec<(String, String)>,
    /// Fields whose value in `value` is a stand-in for one that could not be read.
    pub stand_ins: Vec<String>,
}

/// Reads `tree` into `T`, collecting every problem. `plain` gives the text of a plain
/// scalar as written (`1.10`, `~`), so that a string field reads a number or a null as the
/// text that was written, as serde_yaml does when reading a document directly.
pub(in crate::yamldoc) fn collect<T: DeserializeOwned>(
    tree: &Value,
    plain: &dyn Fn(&str) -> Option<String>,
) -> Collected<T> {
    let mut plan = Plan::default();
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut note = |problem: (String, String)| {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    };
    for _ in 0..MAX_ATTEMPTS {
        let attempt = Attempt {
            plan: &plan,
            plain,
            unknown: RefCell::default(),
        };
        let result = T::deserialize(Node {
            value: tree,
            path: String::new(),
            attempt: &attempt,
        });
        for problem in attempt.unknown.take() {
            note(problem);
        }
        let error = match result {
            Ok(value) => {
                let stand_ins = plan.stand_ins();
                return Collected {
                    value: Some(value),
                    problems,
                    stand_ins,
                };
            }
            Err(error) => error,
        };
        let (problem, go_on) = plan.learn(error);
        if let Some(problem) = problem {
            note(problem);
        }
        if !go_on {
            break;
        }
    }
    Collected {
        value: None,
        problems,
        stand_ins: Vec::new(),
    }
}

/// What the attempts so far have learnt: the fields to read as stand-ins.
#[derive(Default)]
struct Plan {
    /// Fields whose written value could not be read.
    replaced: BTreeSet<String>,
    /// Required fields that were not written.
    filled: BTreeSet<String>,
}

impl Plan {
    fn stand_ins(&self) -> Vec<String> {
        self.replaced.union(&self.filled).cloned().collect()
    }

    /// The outermost stand-in that `path` is or lies inside.
    fn stand_in_around(&self, path: &str) -> Option<String> {
        let mut found = None;
        let mut at = path;
        loop {
            if self.replaced.contains(at) || self.filled.contains(at) {
                found = Some(at.to_string());
            }
            if at.is_empty() {
                return found;
            }
            at = parent(at);
        }
    }

    /// Learns from the error that ended an attempt: the problem to report (if it is a new
    /// one), and whether another attempt can get further.
    fn learn(&mut self, error: Error) -> (Option<(String, String)>, bool) {
        let path = error.path.unwrap_or_default();
        match error.kind {
            Kind::Missing(field) if self.stand_in_around(&path).is_none() => {
                let problem = (path.clone(), format!("missing field `{field}`"));
                let go_on = self.filled.insert(join(&path, field));
                (Some(problem), go_on)
            }
            Kind::Message(message) if self.stand_in_around(&path).is_none() => {
                let go_on = !path.is_empty();
                self.replaced.insert(path.clone());
                (Some((path, message)), go_on)
            }
            // A stand-in that does not fit either (a fixed string such as `apiVersion`):
            // the one around it is read as a stand-in instead, and nothing new is reported.
            _ => match self.stand_in_around(&path) {
                Some(outer) if !outer.is_empty() => {
                    self.replaced.insert(parent(&outer).to_string());
                    (None, !parent(&outer).is_empty())
                }
                _ => (None, false),
            },
        }
    }
}

/// `a.b[2]` → `a.b` → `a` → `""`.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// One pass over the tree.
struct Attempt<'a> {
    plan: &'a Plan,
    plain: &'a dyn Fn(&str) -> Option<String>,
    /// Unknown fields met in this pass.
    unknown: RefCell<Vec<(String, String)>>,
}

/// Why an attempt failed, and where (the innermost field that was being read).
#[derive(Debug)]
pub(in crate::yamldoc) struct Error {
    path: Option<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Message(String),
    Missing(&'static str),
}

impl Error {
    fn at(mut self, path: &str) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Message(m) => f.write_str(m),
            Kind::Missing(field) => write!(f, "missing field `{field}`"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            path: None,
            kind: Kind::Message(msg.to_string()),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Error {
            path: None,
            kind: Kind::Missing(field),
        }
    }
}

fn from_yaml(e: serde_yaml::Error) -> Error {
    de::Error::custom(e)
}

/// A node of the tree at its field path.
struct Node<'v, 'a> {
    value: &'v Value,
    path: String,
    attempt: &'a Attempt<'a>,
}

impl<'v, 'a> Node<'v, 'a> {
    fn stand_in(&self) -> Option<StandIn> {
        self.attempt
            .plan
            .replaced
            .contains(&self.path)
            .then(|| StandIn {
                path: self.path.clone(),
            })
    }

    /// A string read from a scalar of another type, as written.
    fn text(&self) -> Option<String> {
        match self.value {
            Value::Null | Value::Bool(_) | Value::Number(_) => (self.attempt.plain)(&self.path)
                .or_else(|| match self.value {
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }),
            _ => None,
        }
    }
}

macro_rules! delegate {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
            if let Some(stand_in) = self.stand_in() {
                return stand_in.$method(visitor);
            }
            self.value.$method(visitor).map_err(from_yaml).map_err(|e: Error| e.at(&self.path))
        }
    )*};
}

impl<'v> Deserializer<'v> for Node<'v, '_> {
    type Error = Error;

    delegate!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_unit,
    );

    fn deserialize_any<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_any(visitor);
        }
        let path = self.path.clone();
        match self.value {
            Value::Sequence(items) => visitor.visit_seq(Seq::new(&self, items)),
            Value::Mapping(map) => visitor.visit_map(Map::new(&self, map, None)),
            _ => self.value.deserialize_any(visitor).map_err(from_yaml),
        }
        .map_err(|e: Error| e.at(&path))
    }

    fn deserialize_str<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_str(visitor);
        }
        match self.text() {
            Some(text) => visitor.visit_string(text),
            None => self.value.deserialize_str(visitor).map_err(from_yaml),
        }
        .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_string<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.stand_in().is_some() || matches!(self.value, Value::Null) {
            return visitor.visit_none().map_err(|e: Error| e.at(&self.path));
        }
        let path = self.path.clone();
        visitor.visit_some(self).map_err(|e: Error| e.at(&path))
    }

    fn deserialize_unit_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let path = self.path.clone();
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: Error| e.at(&path))
    }

    fn deserialize_seq<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_seq(visitor);
        }
        match self.value {
            Value::Sequence(items) => visitor.visit_seq(Seq::new(&self, items)),
            Value::Null => visitor.visit_seq(Seq::new(&self, &[])),
            _ => self.value.deserialize_seq(visitor).map_err(from_yaml),
        }
        .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_tuple<V: Visitor<'v>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_map(visitor);
        }
        match self.value {
            Value::Mapping(map) => visitor.visit_map(Map::new(&self, map, None)),
            Value::Null => visitor.visit_map(Map::new(&self, &EMPTY, None)),
            _ => self.value.deserialize_map(visitor).map_err(from_yaml),
        }
        .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_struct<V: Visitor<'v>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_struct(name, fields, visitor);
        }
        let map = match self.value {
            Value::Mapping(map) => map,
            Value::Null => &EMPTY,
            Value::Sequence(_) => {
                // serde_yaml would read a struct from a list by position; a manifest never
                // means that.
                return Err(de::Error::invalid_type(Unexpected::Seq, &visitor))
                    .map_err(|e: Error| e.at(&self.path));
            }
            _ => {
                return self
                    .value
                    .deserialize_map(visitor)
                    .map_err(from_yaml)
                    .map_err(|e: Error| e.at(&self.path));
            }
        };
        visitor
            .visit_map(Map::new(&self, map, Some(fields)))
            .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_enum<V: Visitor<'v>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if let Some(stand_in) = self.stand_in() {
            return stand_in.deserialize_enum(name, variants, visitor);
        }
        self.value
            .deserialize_enum(name, variants, visitor)
            .map_err(from_yaml)
            .map_err(|e: Error| e.at(&self.path))
    }
}

struct Seq<'v, 'a> {
    items: std::iter::Enumerate<std::slice::Iter<'v, Value>>,
    len: usize,
    path: String,
    attempt: &'a Attempt<'a>,
}

impl<'v, 'a> Seq<'v, 'a> {
    fn new(node: &Node<'v, 'a>, items: &'v [Value]) -> Self {
        Seq {
            items: items.iter().enumerate(),
            len: items.len(),
            path: node.path.clone(),
            attempt: node.attempt,
        }
    }
}

impl<'v> SeqAccess<'v> for Seq<'v, '_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'v>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{i}]", self.path);
        let node = Node {
            value,
            path: path.clone(),
            attempt: self.attempt,
        };
        seed.deserialize(node)
            .map(Some)
            .map_err(|e: Error| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

/// An entry of a mapping: a key as written and its value, or a required field that was not
/// written, read as a stand-in.
enum Entry<'v> {
    Written(&'v Value, &'v Value),
    Filled(&'static str),
}

struct Map<'v, 'a> {
    entries: std::vec::IntoIter<Entry<'v>>,
    /// The path of the entry whose key was read last, and its value.
    pending: Option<(String, Option<&'v Value>)>,
    path: String,
    attempt: &'a Attempt<'a>,
}

impl<'v, 'a> Map<'v, 'a> {
    /// The entries of `map`; for a struct (`fields`), without the unknown ones (recorded in
    /// the attempt) and with a stand-in for each missing field a former attempt found.
    fn new(node: &Node<'v, 'a>, map: &'v Mapping, fields: Option<&'static [&'static str]>) -> Self {
        let mut entries = Vec::with_capacity(map.len());
        for (key, value) in map {
            if let Some(fields) = fields {
                let name = key_text(key);
                if !fields.contains(&name.as_str()) {
                    let error: Error = de::Error::unknown_field(&name, fields);
                    node.attempt
                        .unknown
                        .borrow_mut()
                        .push((join(&node.path, &name), error.to_string()));
                    continue;
                }
            }
            entries.push(Entry::Written(key, value));
        }
        for field in fields.unwrap_or_default() {
            let written = map.keys().any(|k| key_text(k) == *field);
            if !written && node.attempt.plan.filled.contains(&join(&node.path, field)) {
                entries.push(Entry::Filled(field));
            }
        }
        Map {
            entries: entries.into_iter(),
            pending: None,
            path: node.path.clone(),
            attempt: node.attempt,
        }
    }
}

/// A mapping key as text, as it appears in a field path.
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".to_string(),
        _ => "?".to_string(),
    }
}

impl<'v> MapAccess<'v> for Map<'v, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'v>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        match entry {
            Entry::Written(key, value) => {
                let path = join(&self.path, &key_text(key));
                self.pending = Some((path.clone(), Some(value)));
                let key = match key {
                    Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => {
                        seed.deserialize(Node {
                            value: key,
                            path: path.clone(),
                            attempt: self.attempt,
                        })
                    }
                    // Keys are read as the text written (`1: x` is the key "1").
                    _ => seed
                        .deserialize(IntoDeserializer::<Error>::into_deserializer(key_text(key))),
                };
                key.map(Some).map_err(|e: Error| e.at(&path))
            }
            Entry::Filled(field) => {
                let path = join(&self.path, field);
                self.pending = Some((path.clone(), None));
                seed.deserialize(IntoDeserializer::<Error>::into_deserializer(field))
                    .map(Some)
                    .map_err(|e: Error| e.at(&path))
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'v>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (path, value) = self
            .pending
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value asked for before its key"))?;
        match value {
            Some(value) => seed.deserialize(Node {
                value,
                path: path.clone(),
                attempt: self.attempt,
            }),
            None => seed.deserialize(StandIn { path: path.clone() }),
        }
        .map_err(|e: Error| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The value read in place of one that could not be read: empty, zero, false or absent.
/// What is checked afterwards skips it, so it only has to have the right type.
struct StandIn {
    path: String,
}

macro_rules! stand_in {
    ($($method:ident => $visit:ident($($arg:expr)?)),* $(,)?) => {$(
        fn $method<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit($($arg)?).map_err(|e: Error| e.at(&self.path))
        }
    )*};
}

impl<'v> Deserializer<'v> for StandIn {
    type Error = Error;

    stand_in!(
        deserialize_any => visit_unit(),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_i128 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_u128 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char(' '),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_identifier => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[]),
        deserialize_option => visit_none(),
        deserialize_unit => visit_unit(),
        deserialize_ignored_any => visit_unit(),
    );

    fn deserialize_unit_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let path = self.path.clone();
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: Error| e.at(&path))
    }

    fn deserialize_seq<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        let empty: [(); 0] = [];
        visitor
            .visit_seq(de::value::SeqDeserializer::new(empty.into_iter()))
            .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_tuple<V: Visitor<'v>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'v>>(self, visitor: V) -> Result<V::Value, Error> {
        let empty: [((), ()); 0] = [];
        visitor
            .visit_map(de::value::MapDeserializer::new(empty.into_iter()))
            .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_struct<V: Visitor<'v>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor
            .visit_map(Filler {
                fields: fields.iter(),
                path: self.path.clone(),
                pending: None,
            })
            .map_err(|e: Error| e.at(&self.path))
    }

    fn deserialize_enum<V: Visitor<'v>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(<Error as de::Error>::custom("no stand-in for a choice of variants").at(&self.path))
    }
}

/// A struct read as a stand-in: every field a stand-in.
struct Filler {
    fields: std::slice::Iter<'static, &'static str>,
    path: String,
    pending: Option<String>,
}

impl<'v> MapAccess<'v> for Filler {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'v>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.pending = Some(join(&self.path, field));
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*field))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'v>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let path = self.pending.take().unwrap_or_else(|| self.path.clone());
        seed.deserialize(StandIn { path })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Item {
        name: String,
        #[serde(default)]
        size: Option<u32>,
        #[serde(default)]
        max_size: Option<u32>,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn read(text: &str) -> Collected<Doc> {
        let tree: Value = serde_yaml::from_str(text).expect("YAML");
        collect(&tree, &|_| None)
    }

    fn fields(c: &Collected<Doc>) -> Vec<&str> {
        c.problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn a_valid_document_has_no_problems() {
        let c = read("name: a\nitems: [{name: x, size: 3, maxSize: 4}]\nlabels: {k: v}\n");
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let doc = c.value.expect("read");
        assert_eq!(doc.items[0].size, Some(3));
        assert_eq!(doc.items[0].max_size, Some(4));
        assert!(doc.items[0].tags.is_empty());
        assert_eq!(doc.labels["k"], "v");
        assert!(c.stand_ins.is_empty());
    }

    #[test]
    fn unknown_fields_wrong_types_and_missing_fields_are_all_reported() {
        let c = read(
            "name: a\ncolour: red\nitems:\n  - name: x\n    size: big\n    sise: 3\n  - size: 2\n  - name: z\n    tags: one\n",
        );
        assert_eq!(
            fields(&c),
            [
                "colour",
                "items[0].sise",
                "items[0].size",
                "items[1]",
                "items[2].tags"
            ],
            "{:?}",
            c.problems
        );
        let message = |f: &str| &c.problems.iter().find(|(p, _)| p == f).expect(f).1;
        assert_eq!(
            message("colour"),
            "unknown field `colour`, expected one of `name`, `items`, `labels`"
        );
        assert!(
            message("items[0].size").contains("invalid type"),
            "{c:?}",
            c = c.problems
        );
        assert_eq!(message("items[1]"), "missing field `name`");
        let doc = c.value.expect("read with stand-ins");
        assert_eq!(doc.items.len(), 3);
        assert_eq!(doc.items[2].name, "z");
        assert_eq!(
            c.stand_ins,
            ["items[0].size", "items[1].name", "items[2].tags"]
        );
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_one_problem_without_a_value() {
        let c = read("- a\n- b\n");
        assert!(c.value.is_none());
        assert_eq!(fields(&c), [""]);
    }

    #[test]
    fn a_string_field_reads_a_number_as_written() {
        let tree: Value = serde_yaml::from_str("name: 1.10\n").expect("YAML");
        let c: Collected<Doc> = collect(&tree, &|p| (p == "name").then(|| "1.10".to_string()));
        assert_eq!(c.value.expect("read").name, "1.10");
    }

    #[test]
    fn the_number_of_attempts_is_bounded() {
        let items: String = (0..200)
            .map(|i| format!("  - {{name: n{i}, size: x}}\n"))
            .collect();
        let c = read(&format!("name: a\nitems:\n{items}"));
        assert!(c.value.is_none());
        assert_eq!(c.problems.len(), MAX_ATTEMPTS, "the first problems");
    }
}
