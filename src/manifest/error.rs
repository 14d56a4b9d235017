//! What can go wrong while loading manifests.

use std::path::PathBuf;

use crate::yamldoc::Diagnostic;

/// The error of [`load`](super::load).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A path could not be read (missing, unreadable).
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
