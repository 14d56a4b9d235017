//! The one shape every problem in a YAML file is reported in.

use std::fmt;
use std::path::PathBuf;

/// One problem in one file, located precisely enough to fix it:
/// `manifests/x.yaml:14: spec.services[1].ports[0]: invalid port "80:abc": ...`.
///
/// A file usually has several problems and all of them are wanted at once, so a diagnostic
/// is data to collect rather than an `Err` that stops the reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given or found in a given folder.
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
        // One problem, one line: a message from elsewhere (Prometheus's, for a query it
        // refuses) may hold line breaks, which would read as further problems.
        write!(f, ":")?;
        for line in self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            write!(f, " {line}")?;
        }
        Ok(())
    }
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
    fn a_message_with_line_breaks_is_printed_on_one_line() {
        let d = Diagnostic {
            message: "parse error:\n  unexpected \"}\"\r\n\nin label matching\n".into(),
            ..diagnostic(Some(3), "spec.checks[0].expr")
        };
        assert_eq!(
            d.to_string(),
            "manifests/x.yaml:3: spec.checks[0].expr: parse error: unexpected \"}\" in label matching"
        );
    }
}
