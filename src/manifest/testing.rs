//! Helpers for the tests of this module: manifests written to unique temporary folders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::load::load_with;
use super::validate::Environment;
use super::{DesiredState, Diagnostic, ManifestError};

/// A fresh folder under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-manifest-test-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` (which may contain folders) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folder");
        }
        std::fs::write(&path, text).expect("write manifest");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster document; `services` is YAML indented under `spec:` (list items at 4 spaces).
/// The first service line is line 7.
pub(super) fn manifest(cluster: &str, services: &str) -> String {
    format!(
        "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: {cluster}\nspec:\n  services:\n{services}"
    )
}

/// One service entry with the given extra lines (indented at 6 spaces).
pub(super) fn service(name: &str, extra: &str) -> String {
    format!("    - name: {name}\n      image: busybox:1.36\n{extra}")
}

/// Loads one file holding `text`, as if `$PROMETHEUS_URL` were unset (whatever the real
/// environment says: tests run in parallel and must not depend on it).
pub(super) fn load_text(text: &str) -> Result<DesiredState, ManifestError> {
    load_text_with(text, None)
}

/// Loads one file holding `text`, as if `$PROMETHEUS_URL` were `prometheus_url`.
pub(super) fn load_text_with(
    text: &str,
    prometheus_url: Option<&str>,
) -> Result<DesiredState, ManifestError> {
    let dir = TempDir::new();
    let file = dir.write("cluster.yaml", text);
    load_with(
        &[file],
        &Environment::new(prometheus_url.map(str::to_string)),
    )
    .map(|(desired, _)| desired)
}

/// Loads `text`, which must be invalid, and returns the diagnostics.
pub(super) fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match load_text(text) {
        Err(ManifestError::Invalid(d)) => d,
        other => panic!("expected invalid manifests, got {other:?}\n{text}"),
    }
}

/// The 1-based line of the `nth` (from 0) line of `text` containing `marker`.
pub(super) fn line_of(text: &str, marker: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{marker:?} not in:\n{text}"))
}

/// Asserts that some diagnostic is for `field` at `line` and mentions every `needle`, and
/// that its printed form starts with `file:line: field: `.
#[track_caller]
pub(super) fn assert_reported(diags: &[Diagnostic], line: usize, field: &str, needles: &[&str]) {
    let Some(d) = diags.iter().find(|d| d.field == field) else {
        panic!("no diagnostic for {field}: {diags:#?}");
    };
    assert_eq!(d.line, Some(line), "{d}");
    let printed = d.to_string();
    let prefix = format!("{}:{line}: {field}: ", d.path.display());
    assert!(
        printed.starts_with(&prefix),
        "{printed:?} does not start with {prefix:?}"
    );
    for needle in needles {
        assert!(d.message.contains(needle), "{needle:?} not in {printed:?}");
    }
}
