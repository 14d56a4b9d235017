//! The only user of `serde_yaml` (unmaintained upstream) in the crate: one document's text
//! to any deserializable schema. Swapping the YAML library means rewriting this file (and
//! its `collect` part, which reads a document without stopping at its first problem) alone.

mod collect;

use serde::de::DeserializeOwned;

pub(super) use collect::Collected;

/// Why a document could not be read into the schema: a syntax error, a wrong type, an
/// unknown or missing field. serde stops at the first one, so there is one per document.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParseError {
    /// 1-based, counted from the first line of the text given to [`document`].
    pub(super) line: Option<usize>,
    /// Path of the offending field (`spec.services[1]`), empty when unknown.
    pub(super) field: String,
    pub(super) message: String,
}

/// Reads one YAML document (the text of exactly one document of a stream). An empty
/// document (nothing, or only `null`) gives `None`.
pub(super) fn document<T: DeserializeOwned>(text: &str) -> Result<Option<T>, ParseError> {
    serde_yaml::from_str::<Option<T>>(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let mut message = e.to_string();
        if let Some(l) = e.location() {
            // serde_yaml appends the position; the caller prints its own.
            let position = format!(" at line {} column {}", l.line(), l.column());
            if let Some(at) = message.find(&position) {
                message.replace_range(at..at + position.len(), "");
            }
        }
        let (field, message) = split_field(&message);
        ParseError {
            line,
            field: unknown_field_path(field, message),
            message: message.to_string(),
        }
    })
}

/// Reads one YAML document into `T` as far as it goes, collecting every unknown field,
/// wrong type and missing field (see `collect`). `plain` gives the text of a plain scalar
/// at a field path, as written. An empty document gives `None`; the error is a syntax
/// error (which the line index normally reports first).
pub(super) fn document_all<T: DeserializeOwned>(
    text: &str,
    plain: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Collected<T>>, ParseError> {
    let tree: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(tree) => tree,
        Err(e) => {
            return Err(ParseError {
                line: e.location().map(|l| l.line()),
                field: String::new(),
                message: format!("invalid YAML: {e}"),
            });
        }
    };
    if tree.is_null() {
        return Ok(None);
    }
    Ok(Some(collect::collect(&tree, plain)))
}

/// serde_yaml writes `path: message`, where the path (`spec.services[0].env`) never contains
/// spaces while every serde message starts with words; anything else has no path.
fn split_field(message: &str) -> (&str, &str) {
    match message.split_once(": ") {
        Some((field, rest))
            if !field.is_empty() && !field.contains(char::is_whitespace) && field != "." =>
        {
            (field, rest)
        }
        _ => ("", message),
    }
}

/// An unknown field is reported on its mapping; point at the field itself.
fn unknown_field_path(mapping: &str, message: &str) -> String {
    let name = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match name {
        Some(name) if mapping.is_empty() => name.to_string(),
        Some(name) => format!("{mapping}.{name}"),
        None => mapping.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// A small schema with what the manifests rely on: refused unknown fields, a required
    /// field, nesting and lists, so that paths such as `spec.items[0].size` appear.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        spec: Spec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        #[serde(default)]
        size: Option<u32>,
    }

    const GOOD: &str = "\
name: demo
spec:
  items:
    - name: a
      size: 3
";

    #[test]
    fn valid_document_is_read() {
        let doc: Doc = document(GOOD).expect("valid").expect("not empty");
        assert_eq!(doc.name, "demo");
        assert_eq!(doc.spec.items[0].name, "a");
        assert_eq!(doc.spec.items[0].size, Some(3));
    }

    #[test]
    fn empty_documents_are_none() {
        for text in ["", "---\n", "# nothing\n", "---\n# nothing\n", "null\n"] {
            assert!(document::<Doc>(text).expect(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn unknown_field_names_its_path_and_line() {
        let text = GOOD.replace("      size:", "      colour: red\n      size:");
        let err = document::<Doc>(&text).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(err.field, "spec.items[0].colour");
        assert!(err.message.starts_with("unknown field `colour`"), "{err:?}");
        assert!(!err.message.contains("line 5"), "{err:?}");
    }

    #[test]
    fn wrong_type_names_its_path_and_line() {
        let err = document::<Doc>(&GOOD.replace("size: 3", "size: {a: b}")).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(err.field, "spec.items[0].size");
        assert!(!err.message.contains("line 5"), "{err:?}");
    }

    #[test]
    fn missing_field_is_reported_on_its_mapping() {
        let err =
            document::<Doc>(&GOOD.replace("    - name: a\n      size", "    - size")).unwrap_err();
        assert_eq!(err.field, "spec.items[0]");
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("missing field `name`"), "{err:?}");
    }

    #[test]
    fn unknown_top_level_field_is_its_own_path() {
        let err = document::<Doc>(&format!("{GOOD}extra: 1\n")).unwrap_err();
        assert_eq!(err.field, "extra");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = document::<Doc>("name: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
    }
}
