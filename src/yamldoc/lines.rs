//! Where things are in a YAML file: document boundaries and the line of every field path.
//!
//! Validation happens on typed data that no longer knows its position; this index, built
//! from yaml-rust2's event stream (which carries markers), turns a field path such as
//! `spec.services[2].ports[0]` back into a line. It also splits a multi-document file so
//! that each document can be deserialized on its own.

use std::collections::HashMap;
use std::ops::Range;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One document of a stream.
#[derive(Debug, Clone, Default)]
pub struct DocLines {
    /// First line (1-based) of the document's text: its `---`, or line 1 for the first one.
    pub(super) start_line: usize,
    /// Byte range of the document's text in the file, whole lines.
    pub(super) text: Range<usize>,
    /// Field path → line (1-based). A mapping entry maps to its key's line, a list item to
    /// the line where the item starts, the document root to `""`.
    lines: HashMap<String, usize>,
    /// Field path → the text of its value when that was a plain (unquoted) scalar, directly
    /// or through an alias. Typed data keeps only what YAML made of it (`0x1F` is 31).
    plain: HashMap<String, String>,
    /// What the index itself refuses in this document: duplicate keys and alias bombs,
    /// which the schema reader reports without a usable position or not at all.
    pub(super) problems: Vec<Problem>,
}

impl DocLines {
    /// The line of `field`, or of its nearest ancestor that was written down (a missing
    /// optional field points at its parent), or else the document's first line.
    pub fn line_of(&self, field: &str) -> usize {
        let mut path = field;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return line;
            }
            if path.is_empty() {
                return self.start_line;
            }
            path = parent(path);
        }
    }

    /// The value of `field` as written, when it is a plain scalar (`0x1F`, `True`, `+1`),
    /// so that a check can tell whether YAML's reading of it (31, true, 1) changed it.
    /// `None` for a quoted or block scalar, a collection, or a missing field.
    pub fn plain_text(&self, field: &str) -> Option<&str> {
        self.plain.get(field).map(String::as_str)
    }
}

/// `a.b[2]` → `a.b` → `a` → `""`.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A problem found while indexing, at its own line: a syntax error (which ends the index:
/// the documents before it are complete), or a refused document's duplicate key or alias bomb.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Problem {
    pub(super) line: usize,
    /// The field concerned (may be empty).
    pub(super) field: String,
    pub(super) message: String,
}

#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Complete documents, in order (including empty ones).
    pub(super) docs: Vec<DocLines>,
    /// A syntax error; its message is complete (`invalid YAML: ...`).
    pub(super) error: Option<Problem>,
}

/// Aliases may expand a document to at most this many times the nodes written in it. The
/// same factor as serde_yaml's own limit (alias jumps against events), so every document
/// serde_yaml would refuse without a position is refused here first, with one.
const ALIAS_EXPANSION_FACTOR: u64 = 100;

/// Indexes every document of `text`.
pub(super) fn index(text: &str) -> Stream {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let error = parser.load(&mut builder, true).err();

    // Cut the text into whole lines: document k runs from its first line to the line
    // before the next document's first line.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: usize| line_starts.get(line - 1).copied().unwrap_or(text.len());
    let mut docs = std::mem::take(&mut builder.docs);
    if let Some(first) = docs.first_mut() {
        first.start_line = 1;
    }
    let next_starts: Vec<Option<usize>> = docs
        .iter()
        .skip(1)
        .map(|d| Some(d.start_line))
        // After the last complete document comes the one that failed, if any.
        .chain(std::iter::once(error.as_ref().map(|e| {
            builder
                .current
                .as_ref()
                .map_or(e.marker().line(), |partial| partial.start_line)
        })))
        .collect();
    for (doc, next) in docs.iter_mut().zip(next_starts) {
        let end = next.map_or(text.len(), offset);
        doc.text = offset(doc.start_line)..end.max(offset(doc.start_line));
    }
    let error = error.map(|e| syntax_error(text, &e, builder.current_path()));
    Stream { docs, error }
}

/// yaml-rust2 reports a tab where the scalar or token before it began, often a line early;
/// a tab is found from the start of that line instead, and reported at its own line and
/// column (the first tab from there: the one that stopped the scanner, unless an earlier
/// one on that line sat harmlessly in a quoted string or comment).
fn syntax_error(text: &str, e: &yaml_rust2::ScanError, field: String) -> Problem {
    let marker = e.marker();
    let info = e.info();
    if info.contains("tab") {
        let line_start = text[..marker.index().min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        if let Some(at) = text[line_start..].find('\t').map(|i| line_start + i) {
            let line = marker.line() + text[line_start..at].matches('\n').count();
            let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
            return Problem {
                line,
                // The field being read when the scanner stopped is not the one the tab
                // sits in; the line and column are exact.
                field: String::new(),
                message: format!(
                    "invalid YAML: tab character at column {column}: YAML indents with spaces only ({info})"
                ),
            };
        }
    }
    Problem {
        line: marker.line(),
        field,
        message: format!("invalid YAML: {info}"),
    }
}

enum Kind {
    /// `key` is the path of the entry whose value comes next, or `None` when a key comes
    /// next; `keys` are the keys seen so far, with their lines.
    Map {
        key: Option<String>,
        keys: HashMap<String, usize>,
    },
    Seq {
        next: usize,
    },
}

struct Frame {
    path: String,
    kind: Kind,
    /// The collection's anchor id (0: none).
    anchor: usize,
    /// Alias expansions inside the collection so far, counting aliases within aliases.
    expansions: u64,
}

/// What an alias to an anchor brings along.
#[derive(Default, Clone)]
struct Anchor {
    /// Alias expansions inside the anchored node.
    expansions: u64,
    /// Its text, when it is a plain scalar.
    plain: Option<String>,
}

#[derive(Default)]
struct Builder {
    docs: Vec<DocLines>,
    current: Option<DocLines>,
    frames: Vec<Frame>,
    /// Anchors of the current document (yaml-rust2 gives each definition a new id).
    anchors: HashMap<usize, Anchor>,
    /// Nodes written in the current document so far, and alias expansions so far
    /// (saturating: only counted, never expanded, so a bomb costs no memory).
    nodes: u64,
    expansions: u64,
}

impl Builder {
    fn current_path(&self) -> String {
        match self.frames.last() {
            Some(Frame {
                path,
                kind: Kind::Map { key, .. },
                ..
            }) => key.clone().unwrap_or_else(|| path.clone()),
            Some(Frame {
                path,
                kind: Kind::Seq { next },
                ..
            }) => match next.checked_sub(1) {
                Some(i) => format!("{path}[{i}]"),
                None => path.clone(),
            },
            None => String::new(),
        }
    }

    fn record(&mut self, path: &str, line: usize) {
        if let Some(doc) = self.current.as_mut() {
            doc.lines.entry(path.to_string()).or_insert(line);
        }
    }

    fn problem(&mut self, line: usize, field: String, message: String) {
        if let Some(doc) = self.current.as_mut() {
            doc.problems.push(Problem {
                line,
                field,
                message,
            });
        }
    }

    /// A scalar, alias, mapping or sequence begins: work out its path (and whether it is a
    /// mapping key), and open a frame for collections.
    fn node(&mut self, event: &Event, line: usize) {
        self.nodes = self.nodes.saturating_add(1);
        let (path, key_of) = match self.frames.last_mut() {
            None => (String::new(), None),
            Some(Frame {
                path,
                kind: Kind::Seq { next },
                ..
            }) => {
                *next += 1;
                (format!("{path}[{}]", *next - 1), None)
            }
            Some(Frame {
                path,
                kind: Kind::Map { key, .. },
                ..
            }) => match key.take() {
                Some(value_path) => (value_path, None),
                None => (String::new(), Some(path.clone())),
            },
        };
        if let Some(map_path) = key_of {
            self.key(event, &map_path, line);
            return;
        }
        self.record(&path, line);
        match event {
            Event::Scalar(text, style, anchor, _) => {
                let plain = (*style == TScalarStyle::Plain).then(|| text.clone());
                if *anchor != 0 {
                    self.anchors.insert(
                        *anchor,
                        Anchor {
                            expansions: 0,
                            plain: plain.clone(),
                        },
                    );
                }
                if let (Some(text), Some(doc)) = (plain, self.current.as_mut()) {
                    doc.plain.insert(path, text);
                }
            }
            Event::Alias(anchor) => self.alias(*anchor, path, line),
            _ => self.open(event, path),
        }
    }

    /// A mapping key: recorded, refused if the mapping already has it, and made the path
    /// of the value that follows.
    fn key(&mut self, event: &Event, map_path: &str, line: usize) {
        let name = match event {
            Event::Scalar(name, ..) => Some(name.clone()),
            _ => None,
        };
        let key_path = match (&name, map_path.is_empty()) {
            (Some(name), true) => name.clone(),
            (Some(name), false) => format!("{map_path}.{name}"),
            (None, _) => format!("{map_path}.?"),
        };
        self.record(&key_path, line);
        let mut first_line = None;
        if let Some(Frame {
            kind: Kind::Map { key, keys },
            ..
        }) = self.frames.last_mut()
        {
            *key = Some(key_path.clone());
            if let Some(name) = &name {
                first_line = keys.insert(name.clone(), line);
            }
        }
        if let (Some(first), Some(name)) = (first_line, &name) {
            // serde_yaml refuses it too, but at the mapping's first line and field.
            self.problem(
                line,
                key_path.clone(),
                format!("duplicate key \"{name}\": it is already set at line {first}; keep one"),
            );
        }
        // A complex key (a mapping or list used as a key) gets a frame of its own so
        // that its contents do not disturb the parent's key/value alternation.
        self.open(event, format!("{key_path}.?"));
    }

    /// An alias: counted with everything its anchor expands to, and refused once the
    /// document's expansions outgrow what was written ("billion laughs").
    fn alias(&mut self, anchor: usize, path: String, line: usize) {
        let target = self.anchors.get(&anchor).cloned().unwrap_or_default();
        let expansions = target.expansions.saturating_add(1);
        if let Some(frame) = self.frames.last_mut() {
            frame.expansions = frame.expansions.saturating_add(expansions);
        }
        let before = self.expansions;
        self.expansions = self.expansions.saturating_add(expansions);
        let limit = self.nodes.saturating_mul(ALIAS_EXPANSION_FACTOR);
        // Reported once, at the alias that crossed the limit.
        if self.expansions > limit && before <= limit {
            self.problem(
                line,
                path.clone(),
                format!(
                    "aliases expand this document to more than {ALIAS_EXPANSION_FACTOR} times what is written ({} alias expansions for {} nodes so far): an alias bomb is refused; write the repeated parts out",
                    self.expansions, self.nodes
                ),
            );
        }
        if let (Some(text), Some(doc)) = (target.plain, self.current.as_mut()) {
            doc.plain.insert(path, text);
        }
    }

    fn open(&mut self, event: &Event, path: String) {
        let (kind, anchor) = match event {
            Event::MappingStart(anchor, _) => (
                Kind::Map {
                    key: None,
                    keys: HashMap::new(),
                },
                *anchor,
            ),
            Event::SequenceStart(anchor, _) => (Kind::Seq { next: 0 }, *anchor),
            _ => return,
        };
        self.frames.push(Frame {
            path,
            kind,
            anchor,
            expansions: 0,
        });
    }

    fn close(&mut self) {
        let Some(frame) = self.frames.pop() else {
            return;
        };
        if frame.anchor != 0 {
            self.anchors.insert(
                frame.anchor,
                Anchor {
                    expansions: frame.expansions,
                    plain: None,
                },
            );
        }
        if let Some(parent) = self.frames.last_mut() {
            parent.expansions = parent.expansions.saturating_add(frame.expansions);
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::DocumentStart => {
                self.frames.clear();
                self.anchors.clear();
                self.nodes = 0;
                self.expansions = 0;
                self.current = Some(DocLines {
                    start_line: line,
                    ..DocLines::default()
                });
            }
            Event::DocumentEnd => {
                if let Some(doc) = self.current.take() {
                    self.docs.push(doc);
                }
            }
            Event::Scalar(..)
            | Event::Alias(..)
            | Event::MappingStart(..)
            | Event::SequenceStart(..) => self.node(&event, line),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "\
# leading comment
apiVersion: operator/v1
spec:
  services:
    - name: a
      ports:
        - \"80:80\"
        - \"81:81\"
    - name: b
      env: {X: \"1\"}
---
metadata:
  name: second
  labels:
    k: v
";

    #[test]
    fn fields_map_to_their_lines() {
        let stream = index(TWO_DOCS);
        assert!(stream.error.is_none());
        let doc = &stream.docs[0];
        assert_eq!(doc.line_of("apiVersion"), 2);
        assert_eq!(doc.line_of("spec.services"), 4);
        assert_eq!(doc.line_of("spec.services[0]"), 5);
        assert_eq!(doc.line_of("spec.services[0].name"), 5);
        assert_eq!(doc.line_of("spec.services[0].ports[1]"), 8);
        assert_eq!(doc.line_of("spec.services[1].env.X"), 10);
    }

    #[test]
    fn missing_fields_fall_back_to_their_parent() {
        let stream = index(TWO_DOCS);
        assert_eq!(
            stream.docs[0].line_of("spec.services[1].healthcheck.interval"),
            9
        );
        assert_eq!(stream.docs[0].line_of("nothing.here"), 2);
    }

    #[test]
    fn lines_count_from_the_start_of_the_file_in_later_documents() {
        let stream = index(TWO_DOCS);
        assert_eq!(stream.docs.len(), 2);
        let second = &stream.docs[1];
        assert_eq!(second.start_line, 11);
        assert_eq!(second.line_of("metadata.name"), 13);
        assert_eq!(second.line_of("metadata.labels.k"), 15);
    }

    #[test]
    fn documents_are_cut_into_whole_lines() {
        let stream = index(TWO_DOCS);
        let first = &TWO_DOCS[stream.docs[0].text.clone()];
        let second = &TWO_DOCS[stream.docs[1].text.clone()];
        assert!(first.starts_with("# leading comment\n"));
        assert!(first.ends_with("env: {X: \"1\"}\n"));
        assert!(second.starts_with("---\nmetadata:"));
        assert_eq!(format!("{first}{second}"), TWO_DOCS);
    }

    #[test]
    fn empty_documents_are_indexed_too() {
        let stream = index("---\n---\na: 1\n---\n");
        assert_eq!(stream.docs.len(), 3);
        assert_eq!(stream.docs[1].line_of("a"), 3);
        assert_eq!(stream.docs[2].start_line, 4);
        assert!(index("# only a comment\n").docs.is_empty());
    }

    #[test]
    fn syntax_error_keeps_the_documents_before_it() {
        let text = "a: 1\n---\nb: \"unterminated\nc: 2\n";
        let stream = index(text);
        assert_eq!(stream.docs.len(), 1);
        assert_eq!(&text[stream.docs[0].text.clone()], "a: 1\n");
        let error = stream.error.expect("a syntax error");
        assert!(error.line >= 3, "{error:?}");
        assert_eq!(error.field, "b");
    }

    #[test]
    fn complex_keys_do_not_confuse_the_paths() {
        let stream = index("? [x, y]\n: 1\nafter: 2\n");
        assert_eq!(stream.docs[0].line_of("after"), 3);
    }

    #[test]
    fn a_tab_is_reported_at_its_own_line_and_column() {
        for (text, line, column) in [
            ("a:\n  b: 1\n\tc: 2\n", 3, 1),
            ("a:\n  b:\n    - x\n  \t- y\n", 4, 3),
            ("a:\n  c:\n\t- 2\n", 3, 1),
            ("a: 1\n---\nb: 1\n\tc: 2\n", 4, 1),
        ] {
            let error = index(text).error.expect(text);
            assert_eq!(error.line, line, "{text:?}: {error:?}");
            assert!(
                error
                    .message
                    .starts_with(&format!("invalid YAML: tab character at column {column}:")),
                "{text:?}: {error:?}"
            );
            assert!(error.message.contains("spaces"), "{error:?}");
        }
    }

    #[test]
    fn tabs_inside_quotes_and_comments_are_no_error() {
        let stream = index("a: \"x\ty\"\nb: 1\t# note\n");
        assert!(stream.error.is_none(), "{:?}", stream.error);
        assert!(stream.docs[0].problems.is_empty());
    }

    #[test]
    fn a_duplicate_key_is_refused_at_its_own_line() {
        let text = "a: 1\nspec:\n  x: 1\n  y: 2\n  x: 3\nlist:\n  - {k: 1, k: 2}\n";
        let stream = index(text);
        let problems = &stream.docs[0].problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, 5);
        assert_eq!(problems[0].field, "spec.x");
        assert!(
            problems[0].message.contains("duplicate key \"x\"")
                && problems[0].message.contains("line 3"),
            "{problems:?}"
        );
        assert_eq!(
            (problems[1].line, problems[1].field.as_str()),
            (7, "list[0].k")
        );
    }

    #[test]
    fn the_same_key_in_different_mappings_is_no_duplicate() {
        let stream = index("a: {x: 1}\nb: {x: 1}\nl:\n  - x: 1\n  - x: 2\n---\na: 2\n");
        assert!(stream.docs.iter().all(|d| d.problems.is_empty()));
    }

    /// `levels` levels of nine aliases to the level below: 9^levels expansions.
    fn alias_bomb(levels: usize) -> String {
        let mut text = String::from("apiVersion: operator/v1\nl0: &l0 [\"lol\", \"lol\"]\n");
        for level in 1..=levels {
            let below = format!("*l{}", level - 1);
            let items = [below.as_str(); 9].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_bound() {
        // 9^12 (about 2.8e11) expansions: refused from counts alone, nothing is expanded.
        let stream = index(&alias_bomb(12));
        assert!(stream.error.is_none());
        let problems = &stream.docs[0].problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        // Levels 1-3 hold 9 + 90 + 819 expansions for 40 nodes; each alias of level 4
        // adds 820, and the fifth one passes 100 times the 47 nodes written by then.
        assert_eq!(problems[0].line, 6, "{problems:?}");
        assert_eq!(problems[0].field, "l4[4]", "{problems:?}");
        assert!(problems[0].message.contains("alias"), "{problems:?}");
    }

    #[test]
    fn ordinary_aliases_are_accepted_and_keep_plain_text() {
        let text =
            "base: &b {x: 1}\none: *b\ntwo: *b\nhex: &h 0x1F\nenv: {A: *h, B: '0x1F', C: 0o17}\n";
        let stream = index(text);
        let doc = &stream.docs[0];
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        assert_eq!(doc.plain_text("env.A"), Some("0x1F"));
        assert_eq!(doc.plain_text("env.B"), None);
        assert_eq!(doc.plain_text("env.C"), Some("0o17"));
        assert_eq!(doc.plain_text("env"), None);
    }
}
