//! Picking up manifest edits while running: a cheap fingerprint of the paths (names, sizes,
//! modification times) polled every few seconds, or an immediate look on SIGHUP.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the manifest paths look like on disk; a change means "load again".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

fn entry(path: &Path) -> (PathBuf, u64, Option<SystemTime>) {
    match std::fs::metadata(path) {
        Ok(m) => (path.to_path_buf(), m.len(), m.modified().ok()),
        Err(_) => (path.to_path_buf(), u64::MAX, None),
    }
}

pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut entries = Vec::new();
    for path in paths {
        entries.push(entry(path));
        if path.is_dir()
            && let Ok(dir) = std::fs::read_dir(path)
        {
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml") | Some("yml")
                    )
                })
                .collect();
            files.sort();
            entries.extend(files.iter().map(|f| entry(f)));
        }
    }
    Fingerprint(entries)
}
