//! Where things are in a YAML file: document boundaries and the line of every field path.
//!
//! Validation happens on typed data that no longer knows its position; this index, built
//! from yaml-rust2's event stream (which carries markers), turns a field path such as
//! `spec.services[2].ports[0]` back into a line. It also splits a multi-document file so
//! that each document can be deserialized on its own.

use std::collections::HashMap;
use std::ops::Range;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

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
}

/// `a.b[2]` → `a.b` → `a` → `""`.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A syntax error that ends the index: the documents before it are complete.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SyntaxError {
    pub(super) line: usize,
    /// The field being read when the parser gave up (may be empty).
    pub(super) field: String,
    pub(super) message: String,
}

#[derive(Debug, Default)]
pub(super) struct Stream {
    /// Complete documents, in order (including empty ones).
    pub(super) docs: Vec<DocLines>,
    pub(super) error: Option<SyntaxError>,
}

/// Indexes every document of `text`.
pub(super) fn index(text: &str) -> Stream {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let error = parser.load(&mut builder, true).err().map(|e| SyntaxError {
        line: e.marker().line(),
        field: builder.current_path(),
        message: e.info().to_string(),
    });

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
                .map_or(e.line, |partial| partial.start_line)
        })))
        .collect();
    for (doc, next) in docs.iter_mut().zip(next_starts) {
        let end = next.map_or(text.len(), offset);
        doc.text = offset(doc.start_line)..end.max(offset(doc.start_line));
    }
    Stream { docs, error }
}

enum Frame {
    /// `key` is the path of the entry whose value comes next, or `None` when a key comes next.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<DocLines>,
    current: Option<DocLines>,
    frames: Vec<Frame>,
}

impl Builder {
    fn current_path(&self) -> String {
        match self.frames.last() {
            Some(Frame::Map { path, key }) => key.clone().unwrap_or_else(|| path.clone()),
            Some(Frame::Seq { path, next }) => match next.checked_sub(1) {
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

    /// A scalar, alias, mapping or sequence begins: work out its path (and whether it is a
    /// mapping key), and open a frame for collections.
    fn node(&mut self, event: &Event, line: usize) {
        let (path, key_of) = match self.frames.last_mut() {
            None => (String::new(), None),
            Some(Frame::Seq { path, next }) => {
                *next += 1;
                (format!("{path}[{}]", *next - 1), None)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(value_path) => (value_path, None),
                None => (String::new(), Some(path.clone())),
            },
        };
        if let Some(map_path) = key_of {
            let name = match event {
                Event::Scalar(name, ..) => name.clone(),
                _ => "?".to_string(),
            };
            let key_path = if map_path.is_empty() {
                name
            } else {
                format!("{map_path}.{name}")
            };
            self.record(&key_path, line);
            if let Some(Frame::Map { key, .. }) = self.frames.last_mut() {
                *key = Some(key_path.clone());
            }
            // A complex key (a mapping or list used as a key) gets a frame of its own so
            // that its contents do not disturb the parent's key/value alternation.
            self.open(event, format!("{key_path}.?"));
            return;
        }
        self.record(&path, line);
        self.open(event, path);
    }

    fn open(&mut self, event: &Event, path: String) {
        match event {
            Event::MappingStart(..) => self.frames.push(Frame::Map { path, key: None }),
            Event::SequenceStart(..) => self.frames.push(Frame::Seq { path, next: 0 }),
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::DocumentStart => {
                self.frames.clear();
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
            Event::MappingEnd | Event::SequenceEnd => {
                self.frames.pop();
            }
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
}
