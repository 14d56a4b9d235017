//! Where each loaded cluster was written, for problems found after loading (PromQL that the
//! cluster's Prometheus refuses) to be reported as `file:line: field: message` like the
//! problems found while loading.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Cluster, Diagnostic, Probe};
use crate::yamldoc::DocLines;

/// The lines of every cluster of one [`load_with_positions`](super::load_with_positions).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    /// Cluster name (unique in a valid load) → its file and the lines of its document.
    clusters: HashMap<String, (PathBuf, DocLines)>,
}

impl Positions {
    pub(super) fn insert(&mut self, cluster: String, file: PathBuf, lines: DocLines) {
        self.clusters.insert(cluster, (file, lines));
    }

    /// A problem at `field` (a path from the document root, e.g. `spec.prometheus.url`) of
    /// `cluster`'s document. A cluster these positions do not know (not from the same load)
    /// is reported at its file without a line.
    pub fn diagnostic(&self, cluster: &Cluster, field: &str, message: String) -> Diagnostic {
        let (path, line) = match self.clusters.get(&cluster.name) {
            Some((file, lines)) => (file.clone(), Some(lines.line_of(field))),
            None => (cluster.source.clone(), None),
        };
        Diagnostic {
            path,
            line,
            field: field.to_string(),
            message,
        }
    }

    /// A problem with the query of the check called `check`: at its `expr` or `healthy`.
    pub fn check_query(&self, cluster: &Cluster, check: &str, message: String) -> Diagnostic {
        // A loaded cluster keeps every check, in the order written: its index is the YAML's.
        let field = match cluster.checks.iter().position(|c| c.name == check) {
            Some(i) => match cluster.checks[i].probe {
                Probe::Alert { .. } => format!("spec.checks[{i}].expr"),
                Probe::Healthy { .. } => format!("spec.checks[{i}].healthy"),
                Probe::Http(_) => format!("spec.checks[{i}]"),
            },
            None => "spec.checks".to_string(),
        };
        self.diagnostic(cluster, &field, message)
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::load_with;
    use super::super::testing::{TempDir, line_of, manifest, service};
    use super::super::validate::Environment;

    #[test]
    fn a_check_query_is_located_at_its_own_field_and_line() {
        let text = manifest("demo", &service("web", ""))
            + "  checks:\n    - name: a\n      expr: up == 0\n    - name: b\n      healthy: up\n";
        let dir = TempDir::new();
        let file = dir.write("c.yaml", &text);
        let env = Environment::new(Some("http://127.0.0.1:9090".into()));
        let (desired, positions) = load_with(std::slice::from_ref(&file), &env).expect("valid");
        let cluster = &desired.clusters[0];
        let b = positions.check_query(cluster, "b", "refused".into());
        assert_eq!(b.field, "spec.checks[1].healthy");
        assert_eq!(b.line, Some(line_of(&text, "healthy: up", 0)));
        assert_eq!(b.path, file);
        let a = positions.check_query(cluster, "a", "refused".into());
        assert_eq!(
            (a.field.as_str(), a.line),
            ("spec.checks[0].expr", Some(line_of(&text, "expr: up", 0)))
        );
        // From $PROMETHEUS_URL, not written: the nearest written ancestor.
        let url = positions.diagnostic(cluster, "spec.prometheus.url", "down".into());
        assert_eq!(url.line, Some(line_of(&text, "spec:", 0)));
    }
}
