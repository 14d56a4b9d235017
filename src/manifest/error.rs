//! What can go wrong while loading manifests.

use std::fmt;
use std::path::PathBuf;

/// One problem in one manifest, located precisely enough to fix it:
/// `manifests/x.yaml:14: spec.services[1].ports[0]: invalid port "80:abc": ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The manifest file, as given or found in a given folder.
    pub path: PathBuf,
    /// 1-based line in that file.
    pub line: Option<usize>,
    /// Field path from the document root, e.g. `spec.services[2].ports[0]`; empty when the
    /// problem is the document as a whole.
    pub field: String,
    /// What is wrong, quoting the bad value, and what would be accepted.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The error of [`load`](super::load).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path could not be read (missing, unreadable, not UTF-8).
    #[error("failed to read manifests from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path (file or folder) held no `kind: Cluster` document at all.
    #[error("{}", no_manifests(path))]
    NoManifests { path: PathBuf },
    /// Every problem found in every file, in file order then line order.
    #[error("{}", invalid(.0))]
    Invalid(Vec<Diagnostic>),
}

fn no_manifests(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        "no manifest paths given".to_string()
    } else {
        format!(
            "no manifests found in {} (expected .yaml or .yml files with `kind: Cluster` documents)",
            path.display()
        )
    }
}

fn invalid(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    let n = diagnostics.len();
    out.push_str(&format!(
        "{n} error{} in the manifests",
        if n == 1 { "" } else { "s" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(line: Option<usize>, field: &str) -> Diagnostic {
        Diagnostic {
            path: PathBuf::from("manifests/x.yaml"),
            line,
            field: field.into(),
            message: "invalid port \"80:abc\"".into(),
        }
    }

    #[test]
    fn diagnostic_reads_file_line_field_message() {
        assert_eq!(
            diagnostic(Some(14), "spec.services[1].ports[0]").to_string(),
            "manifests/x.yaml:14: spec.services[1].ports[0]: invalid port \"80:abc\""
        );
        assert_eq!(
            diagnostic(None, "").to_string(),
            "manifests/x.yaml: invalid port \"80:abc\""
        );
    }

    #[test]
    fn invalid_lists_one_diagnostic_per_line_and_a_count() {
        let err = ManifestError::Invalid(vec![diagnostic(Some(1), "a"), diagnostic(Some(2), "b")]);
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("manifests/x.yaml:1: a: "));
        assert!(lines[1].starts_with("manifests/x.yaml:2: b: "));
        assert_eq!(lines[2], "2 errors in the manifests");
    }
}
