//! The only user of `serde_yaml` (unmaintained upstream): one document's text to the raw
//! schema. Swapping the YAML library means rewriting this file alone.

use super::raw;

/// Why a document could not be read into the schema: a syntax error, a wrong type, an
/// unknown or missing field. serde stops at the first one, so there is one per document.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ParseError {
    /// 1-based, counted from the first line of the text given to [`document`].
    pub line: Option<usize>,
    /// Path of the offending field (`spec.services[1]`), empty when unknown.
    pub field: String,
    pub message: String,
}

/// Reads one YAML document (the text of exactly one document of a stream). An empty
/// document (nothing, or only `null`) gives `None`.
pub(super) fn document(text: &str) -> Result<Option<raw::Document>, ParseError> {
    serde_yaml::from_str::<Option<raw::Document>>(text).map_err(|e| {
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
    use super::*;

    const GOOD: &str = "\
apiVersion: operator/v1
kind: Cluster
metadata:
  name: demo
spec:
  services:
    - name: web
      image: busybox
      command: sleep 10
      env: {A: 1, B: true, C: x, D: 1.5, E: ~}
";

    #[test]
    fn valid_document_is_read() {
        let doc = document(GOOD).expect("valid").expect("not empty");
        assert_eq!(doc.metadata.name, "demo");
        let web = &doc.spec.services[0];
        assert_eq!(web.command, Some(raw::Args::Line("sleep 10".into())));
        assert_eq!(web.env["A"], raw::Scalar::Int("1".into()));
        assert_eq!(web.env["B"], raw::Scalar::Bool(true));
        assert_eq!(web.env["C"], raw::Scalar::Str("x".into()));
        assert_eq!(web.env["D"], raw::Scalar::Float(1.5));
        assert_eq!(web.env["E"], raw::Scalar::Null);
    }

    #[test]
    fn empty_documents_are_none() {
        for text in ["", "---\n", "# nothing\n", "---\n# nothing\n", "null\n"] {
            assert!(document(text).expect(text).is_none(), "{text:?}");
        }
    }

    #[test]
    fn unknown_field_names_its_path_and_line() {
        let text = GOOD.replace(
            "      command:",
            "      imagePullPolicy: always\n      command:",
        );
        let err = document(&text).unwrap_err();
        assert_eq!(err.line, Some(9));
        assert_eq!(err.field, "spec.services[0].imagePullPolicy");
        assert!(
            err.message.starts_with("unknown field `imagePullPolicy`"),
            "{err:?}"
        );
        assert!(!err.message.contains("line 9"), "{err:?}");
    }

    #[test]
    fn wrong_type_names_its_path_and_line() {
        let text = GOOD.replace("command: sleep 10", "command: {a: b}");
        let err = document(&text).unwrap_err();
        assert_eq!(err.line, Some(9));
        assert_eq!(err.field, "spec.services[0].command");
        assert!(
            err.message.contains("a string or a list of strings"),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_api_version_and_kind_point_at_their_value() {
        let err = document(&GOOD.replace("operator/v1", "v2")).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(1), "apiVersion"));
        assert!(err.message.contains("\"v2\""), "{err:?}");
        let err = document(&GOOD.replace("kind: Cluster", "kind: Pod")).unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (Some(2), "kind"));
        assert!(err.message.contains("\"Pod\""), "{err:?}");
    }

    #[test]
    fn missing_field_is_reported_on_its_mapping() {
        let err = document(&GOOD.replace("      image: busybox\n", "")).unwrap_err();
        assert_eq!(err.field, "spec.services[0]");
        assert_eq!(err.line, Some(7));
        assert!(err.message.contains("missing field `image`"), "{err:?}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = document("apiVersion: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
    }
}
