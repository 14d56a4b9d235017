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
//! one-file change.

mod diagnostic;
mod duration;
mod lines;
mod parse;

use std::path::Path;

use serde::de::DeserializeOwned;

pub use diagnostic::Diagnostic;
pub use duration::parse_duration;
pub use lines::DocLines;

/// One non-empty document of a file, read into `T`.
#[derive(Debug)]
pub struct Document<T> {
    pub value: T,
    /// Where its fields are, as lines of the whole file.
    pub lines: DocLines,
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
            message: format!("invalid YAML: {}", e.message),
        }));
    }
    out
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
}
