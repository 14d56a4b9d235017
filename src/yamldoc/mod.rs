//! YAML documents with positions: a file of `---`-separated documents read into any serde
//! schema, with every problem reported as `file:line: field: message`.
//!
//! Shared by every kind of YAML file the operator reads (cluster manifests today, chaos
//! drills next), so that they all point at lines the same way and only one file depends on
//! each YAML library.
//!
//! How a file is read: `lines` walks yaml-rust2's event stream once (document boundaries,
//! and the line of every field path); each document's text then goes through `parse`
//! (serde_yaml into the caller's schema). Typed data forgets where it came from, so each
//! document comes back with its [`DocLines`], which turn a field path back into a line for
//! the checks that run after deserializing.
//!
//! `serde_yaml` (unmaintained upstream) is used only by `parse.rs`, so swapping it is a
//! one-file change. `schema` turns the same serde schema types into a JSON Schema for
//! editors, with these reading rules added (`operator schema`).

mod diagnostic;
mod duration;
mod lines;
mod literal;
mod parse;
pub mod schema;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use diagnostic::Diagnostic;
pub use duration::parse_duration;
pub use lines::DocLines;
pub use literal::literal;

/// One non-empty document of a file, read into `T`.
#[derive(Debug)]
pub struct Document<T> {
    pub value: T,
    /// Where its fields are, as lines of the whole file.
    pub lines: DocLines,
}

/// One non-empty document of a file, read as far as it goes: every problem of its shape
/// (unknown fields, wrong types, missing fields), and its value with a stand-in (empty,
/// zero, absent) for each field that could not be read, so that the checks after
/// deserializing still run on the rest.
#[derive(Debug)]
pub struct Collected<T> {
    /// `None` when the document could not be read at all (a syntax error, a duplicate key,
    /// not a mapping, a wrong `apiVersion`).
    pub document: Option<Document<T>>,
    /// Every problem found while reading, at its own line.
    pub problems: Vec<Diagnostic>,
    /// Fields of `document` holding a stand-in.
    stand_ins: Vec<String>,
}

impl<T> Collected<T> {
    /// Whether `field` holds a stand-in or lies inside one: a later check of it would only
    /// repeat (or invent) a problem, since the problem there is already reported.
    pub fn is_stand_in(&self, field: &str) -> bool {
        self.stand_ins.iter().any(|s| {
            s.is_empty()
                || field
                    .strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Reads every document of `text` (the contents of `path`) into `T`, without stopping at
/// the first problem of a document (as [`read`] does): every unknown field, wrong type and
/// missing field is reported, and the document is still returned when its shape allows.
///
/// Empty documents are skipped; a YAML syntax error ends the file, as with [`read`].
pub fn read_all<T: DeserializeOwned>(path: &Path, text: &str) -> Vec<Collected<T>> {
    let stream = lines::index(text);
    let diagnostic = |line: usize, field: String, message: String| Diagnostic {
        path: path.to_path_buf(),
        line: Some(line),
        field,
        message,
    };
    let mut out = Vec::new();
    for doc in stream.docs {
        if !doc.problems.is_empty() {
            out.push(Collected {
                document: None,
                problems: doc
                    .problems
                    .iter()
                    .map(|p| diagnostic(p.line, p.field.clone(), p.message.clone()))
                    .collect(),
                stand_ins: Vec::new(),
            });
            continue;
        }
        let read = {
            let plain = |field: &str| doc.plain_text(field).map(str::to_string);
            parse::document_all::<T>(&text[doc.text.clone()], &plain)
        };
        match read {
            Ok(None) => {}
            Ok(Some(read)) => {
                let problems = read
                    .problems
                    .into_iter()
                    .map(|(field, message)| diagnostic(doc.line_of(&field), field, message))
                    .collect();
                out.push(Collected {
                    document: read.value.map(|value| Document { value, lines: doc }),
                    problems,
                    stand_ins: read.stand_ins,
                });
            }
            Err(e) => out.push(Collected {
                document: None,
                problems: vec![diagnostic(
                    file_line(&doc, e.line, &e.field),
                    e.field,
                    e.message,
                )],
                stand_ins: Vec::new(),
            }),
        }
    }
    if let Some(e) = stream.error {
        out.push(Collected {
            document: None,
            problems: vec![diagnostic(e.line, e.field, e.message)],
            stand_ins: Vec::new(),
        });
    }
    out
}

/// Reads every document of `text` (the contents of `path`) into `T`.
///
/// Empty documents (nothing, comments only, or `null`) are skipped. Each other document is
/// either read, or one [`Diagnostic`] (serde stops at the first problem of a document). A
/// YAML syntax error ends the file: the documents before it are still returned, and the
/// error comes last. Lines are lines of the file, whatever document they are in.
pub fn read<T: DeserializeOwned>(path: &Path, text: &str) -> Vec<Result<Document<T>, Diagnostic>> {
    let stream = lines::index(text);
    let mut out = Vec::new();
    for doc in stream.docs {
        if !doc.problems.is_empty() {
            // Not read: serde_yaml would only repeat the first of these problems, at the
            // mapping's line or at none, or (an alias bomb) spend its bound getting there.
            out.extend(doc.problems.iter().map(|p| {
                Err(Diagnostic {
                    path: path.to_path_buf(),
                    line: Some(p.line),
                    field: p.field.clone(),
                    message: p.message.clone(),
                })
            }));
            continue;
        }
        match parse::document::<T>(&text[doc.text.clone()]) {
            Ok(None) => {}
            Ok(Some(value)) => out.push(Ok(Document { value, lines: doc })),
            Err(e) => out.push(Err(Diagnostic {
                path: path.to_path_buf(),
                line: Some(file_line(&doc, e.line, &e.field)),
                field: e.field,
                message: e.message,
            })),
        }
    }
    if let Some(e) = stream.error {
        out.push(Err(Diagnostic {
            path: path.to_path_buf(),
            line: Some(e.line),
            field: e.field,
            message: e.message,
        }));
    }
    out
}

/// The text of a file read as bytes (`path` is for the message). YAML files are UTF-8; a file
/// that is not is one [`Diagnostic`] naming the line, column and byte offset of the first
/// bad byte, which `read_to_string` would not tell.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, Diagnostic> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let before = &bytes[..at];
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters, which the valid prefix of the line is made of.
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        let bad_len = e.error_len().unwrap_or(bytes.len() - at);
        let bad: String = bytes[at..at + bad_len]
            .iter()
            .map(|b| format!("\\x{b:02x}"))
            .collect();
        Diagnostic {
            path: path.to_path_buf(),
            line: Some(before.iter().filter(|&&b| b == b'\n').count() + 1),
            field: String::new(),
            message: format!(
                "invalid UTF-8 at byte offset {at} (column {column}): \"{bad}\"{}; save the file as UTF-8",
                if e.error_len().is_none() { " cut off at the end of the file" } else { "" }
            ),
        }
    })
}

/// A line of the parser (counted within the document's text) as a line of the file.
fn file_line(doc: &DocLines, line_in_doc: Option<usize>, field: &str) -> usize {
    match line_in_doc {
        Some(line) => doc.start_line + line.saturating_sub(1),
        None => doc.line_of(field),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Map = BTreeMap<String, u32>;

    fn read_map(text: &str) -> Vec<Result<Document<Map>, Diagnostic>> {
        read(Path::new("x.yaml"), text)
    }

    #[test]
    fn empty_documents_are_skipped_and_the_others_keep_their_lines() {
        let docs = read_map("---\n# nothing\n---\na: 1\n---\n---\nb: 2\nc: 3\n");
        assert_eq!(docs.len(), 2);
        let second = docs[1].as_ref().expect("valid");
        assert_eq!(second.value["c"], 3);
        assert_eq!(second.lines.line_of("c"), 8);
    }

    #[test]
    fn errors_in_later_documents_are_lines_of_the_file() {
        let docs = read_map("a: 1\n---\nb: 2\nc: x\n");
        let err = docs[1].as_ref().expect_err("c is not a number");
        assert_eq!(err.line, Some(4));
        assert_eq!(err.field, "c");
        assert!(err.to_string().starts_with("x.yaml:4: c: "), "{err}");
    }

    #[test]
    fn syntax_error_comes_last_after_the_documents_before_it() {
        let docs = read_map("a: 1\n---\nb: \"open\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_ok());
        let err = docs[1].as_ref().expect_err("a syntax error");
        assert!(err.message.starts_with("invalid YAML: "), "{err}");
        assert_eq!(err.field, "b");
    }

    #[test]
    fn invalid_utf8_names_the_line_column_and_byte_offset() {
        let bytes = b"a: 1\nb: caf\xc3\xa9 \xff\xfe\nc: 3\n";
        let err = decode(Path::new("x.yaml"), bytes).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(
            err.to_string()
                .starts_with("x.yaml:2: invalid UTF-8 at byte offset 14 (column 9): \"\\xff\""),
            "{err}"
        );
        let cut = decode(Path::new("x.yaml"), b"a: \xe2\x82").unwrap_err();
        assert_eq!(cut.line, Some(1));
        assert!(cut.message.contains("\"\\xe2\\x82\" cut off"), "{cut}");
        assert_eq!(
            decode(Path::new("x.yaml"), "a: é\n".as_bytes()),
            Ok("a: é\n")
        );
    }

    #[test]
    fn refused_documents_are_reported_at_their_own_lines_and_the_others_read() {
        let docs = read_map("a: 1\nb: 2\na: 3\n---\nok: 1\n");
        assert_eq!(docs.len(), 2);
        let err = docs[0].as_ref().expect_err("duplicate key");
        assert!(
            err.to_string()
                .starts_with("x.yaml:3: a: duplicate key \"a\""),
            "{err}"
        );
        assert_eq!(docs[1].as_ref().expect("valid").value["ok"], 1);
    }

    #[test]
    fn a_tab_in_a_later_document_is_a_line_of_the_file() {
        let docs = read_map("a: 1\n---\nb: 1\n\tc: 2\n");
        let err = docs.last().expect("two").as_ref().expect_err("a tab");
        assert_eq!(err.line, Some(4), "{err}");
        assert!(
            err.to_string().starts_with("x.yaml:4: invalid YAML: tab"),
            "{err}"
        );
    }
}
