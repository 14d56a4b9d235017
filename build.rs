//! Records the commit the binary is built from, for `operator --version`: OPERATOR_BUILD_COMMIT
//! when set, else git's HEAD ("unknown" outside a git checkout, e.g. a source tarball).

use std::process::Command;

fn main() {
    // Where there is no .git (a docker build's context leaves it out), the builder says it.
    println!("cargo:rerun-if-env-changed=OPERATOR_BUILD_COMMIT");
    let given = std::env::var("OPERATOR_BUILD_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "unknown");
    let commit = given
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OPERATOR_COMMIT={commit}");
    // A new commit changes HEAD or the branch it points at (only paths that exist: cargo runs
    // this again on every build for one that does not).
    println!("cargo:rerun-if-changed=build.rs");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
