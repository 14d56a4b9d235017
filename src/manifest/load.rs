//! Finding manifest files, reading them, and putting the pieces together.

use std::fs;
use std::path::{Path, PathBuf};

use super::raw;
use super::validate::{self, Checked, Environment, Source};
use super::volume::normalize;
use super::{DesiredState, Diagnostic, ManifestError, Positions};
use crate::yamldoc;

/// Loads and validates every manifest under `paths`.
///
/// Each path is a file, or a folder whose `*.yaml` / `*.yml` files are read in name order
/// (not recursively; names starting with `.` are skipped). A file holds one or more YAML
/// documents separated by `---`; empty documents are skipped, every other one must be an
/// `apiVersion: operator/v1`, `kind: Cluster` manifest.
///
/// # Errors
/// - [`ManifestError::Io`] if a path cannot be read;
/// - [`ManifestError::NoManifests`] if a path holds no manifest at all (or `paths` is empty);
/// - [`ManifestError::Invalid`] with every problem of every file, each naming its file,
///   line and field. Nothing is returned unless all files are valid.
///
/// `$PROMETHEUS_URL` is read once, here: it is the Prometheus of every cluster whose
/// manifest has no `spec.prometheus.url`.
pub fn load(paths: &[PathBuf]) -> Result<DesiredState, ManifestError> {
    load_with_positions(paths).map(|(desired, _)| desired)
}

/// [`load`], with where each cluster was written, to report later problems (PromQL that
/// Prometheus refuses) at their lines.
pub fn load_with_positions(paths: &[PathBuf]) -> Result<(DesiredState, Positions), ManifestError> {
    load_with(paths, &Environment::from_process())
}

/// [`load_with_positions`] with the environment given rather than read from the process.
pub(super) fn load_with(
    paths: &[PathBuf],
    env: &Environment,
) -> Result<(DesiredState, Positions), ManifestError> {
    if paths.is_empty() {
        return Err(ManifestError::NoManifests {
            path: PathBuf::new(),
        });
    }
    let mut checked = Vec::new();
    let mut diagnostics = Vec::new();
    let mut files_read = Vec::new();
    for path in paths {
        let mut documents = 0;
        for file in manifest_files(path)? {
            let bytes = fs::read(&file).map_err(|source| ManifestError::Io {
                path: file.clone(),
                source,
            })?;
            match yamldoc::decode(&file, &bytes) {
                Ok(text) => {
                    documents += load_file(&file, text, env, &mut checked, &mut diagnostics)
                }
                Err(not_utf8) => {
                    // A manifest, though unreadable: the path is not empty.
                    documents += 1;
                    diagnostics.push(not_utf8);
                }
            }
            files_read.push(file);
        }
        if documents == 0 {
            return Err(ManifestError::NoManifests { path: path.clone() });
        }
    }
    validate::across(&checked, &mut diagnostics);
    if !diagnostics.is_empty() {
        // File order, then line order: the order in which a reader would fix them.
        diagnostics.sort_by_key(|d| (files_read.iter().position(|f| *f == d.path), d.line));
        return Err(ManifestError::Invalid(diagnostics));
    }
    let mut positions = Positions::default();
    let mut clusters = Vec::with_capacity(checked.len());
    for c in checked {
        positions.insert(c.cluster.name.clone(), c.file, c.lines);
        clusters.push(c.cluster);
    }
    Ok((DesiredState { clusters }, positions))
}

/// The files a path stands for: itself, or the YAML files directly inside it, by name.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io)? {
        let file = entry.map_err(io)?.path();
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let yaml = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if !yaml || name.starts_with('.') {
            continue;
        }
        let is_file = fs::metadata(&file)
            .map_err(|source| ManifestError::Io {
                path: file.clone(),
                source,
            })?
            .is_file();
        if is_file {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every document of one file; returns how many were not empty (valid or not).
fn load_file(
    file: &Path,
    text: &str,
    env: &Environment,
    checked: &mut Vec<Checked>,
    diagnostics: &mut Vec<Diagnostic>,
) -> usize {
    let dir = manifest_dir(file);
    let mut documents = 0;
    for mut read in yamldoc::read_all::<raw::Document>(file, text) {
        documents += 1;
        // The reader says a required top-level field is missing with an empty field path.
        let missing = |name: &str| {
            read.problems
                .iter()
                .any(|d| d.field.is_empty() && d.message == format!("missing field `{name}`"))
        };
        if missing("apiVersion") {
            // Nothing says what this is: not an operator manifest at all (a compose file,
            // say). Its first problem says so; every key of it listed would bury that.
            read.problems.sort_by_key(|d| d.line);
            read.problems.truncate(1);
            diagnostics.append(&mut read.problems);
            continue;
        }
        diagnostics.append(&mut read.problems);
        let Some(doc) = read.document.take() else {
            continue;
        };
        let source = Source {
            file,
            dir: &dir,
            lines: &doc.lines,
            env,
        };
        // A field that could not be read holds a stand-in; its problem is reported above,
        // and checking the stand-in would only add a false one.
        let mut found = Vec::new();
        checked.push(validate::document(doc.value, &source, &mut found));
        diagnostics.extend(found.into_iter().filter(|d| !read.is_stand_in(&d.field)));
    }
    documents
}

/// The absolute folder of a manifest, for relative bind mounts. Lexical: `..` is resolved
/// without following symlinks, as a reader of the file would.
fn manifest_dir(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file)
        .map(|p| normalize(&p))
        .unwrap_or_else(|_| file.to_path_buf());
    absolute.parent().map(Path::to_path_buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TempDir, assert_reported, line_of, manifest, service};
    use super::*;

    fn invalid(result: Result<DesiredState, ManifestError>) -> Vec<Diagnostic> {
        match result {
            Err(ManifestError::Invalid(d)) => d,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn multi_document_file_skips_empty_documents() {
        let dir = TempDir::new();
        let text = format!(
            "---\n# nothing here\n---\n{}---\n{}---\n",
            manifest("one", &service("aa", "")),
            manifest("two", &service("bb", ""))
        );
        let state = load(&[dir.write("x.yaml", &text)]).expect("valid");
        let names: Vec<&str> = state.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
    }

    #[test]
    fn folder_contributes_its_yaml_files_in_name_order_only() {
        let dir = TempDir::new();
        dir.write("b.yml", &manifest("bee", &service("bb", "")));
        dir.write("a.yaml", &manifest("ay", &service("aa", "")));
        dir.write("notes.txt", "not yaml");
        dir.write(".hidden.yaml", "not: a manifest");
        dir.write("nested/c.yaml", &manifest("nested", &service("cc", "")));
        let state = load(&[dir.path().to_path_buf()]).expect("valid");
        let names: Vec<&str> = state.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ay", "bee"]);
        assert_eq!(state.clusters[0].source, dir.path().join("a.yaml"));
    }

    #[test]
    fn path_without_manifests_is_an_error() {
        let dir = TempDir::new();
        let err = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, ManifestError::NoManifests { .. }), "{err:?}");
        let file = dir.write("empty.yaml", "# just a comment\n---\n");
        let err = load(std::slice::from_ref(&file)).unwrap_err();
        assert!(
            matches!(&err, ManifestError::NoManifests { path } if *path == file),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty.yaml"), "{err}");
        assert!(matches!(load(&[]), Err(ManifestError::NoManifests { .. })));
    }

    #[test]
    fn missing_path_is_an_io_error_naming_it() {
        let dir = TempDir::new();
        let missing = dir.path().join("missing.yaml");
        let err = load(&[missing]).unwrap_err();
        assert!(matches!(err, ManifestError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.yaml"), "{err}");
    }

    #[test]
    fn lines_in_later_documents_count_from_the_top_of_the_file() {
        let dir = TempDir::new();
        let text = manifest("one", &service("aa", ""))
            + "---\n"
            + &manifest("two", &service("bb", "      imagePullPolicy: always\n"))
            + "---\n"
            + &manifest("three", &service("cc", "      ports: [\"1:abc\"]\n"));
        let file = dir.write("x.yaml", &text);
        let diags = invalid(load(&[file]));
        // serde's error (unknown field) and a semantic one, both as lines of the file.
        assert_reported(
            &diags,
            line_of(&text, "imagePullPolicy", 0),
            "spec.services[0].imagePullPolicy",
            &["unknown field `imagePullPolicy`"],
        );
        assert_reported(
            &diags,
            line_of(&text, "1:abc", 0),
            "spec.services[0].ports[0]",
            &["\"1:abc\""],
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn every_problem_of_a_document_is_reported_in_one_run() {
        let dir = TempDir::new();
        let text = manifest(
            "one",
            &(service(
                "aa",
                "      imagePullPolicy: always\n      ports: \"8080:80\"\n      restartPolicy: sometimes\n",
            ) + &service(
                "bb",
                "      ports: [\"1:abc\"]\n      remediation:\n        window: 10\n        maxRestarts: many\n",
            ) + "    - name: cc\n      dependsOn: [nope]\n"),
        );
        let diags = invalid(load(&[dir.write("x.yaml", &text)]));
        // An unknown field, a wrong type, a bad value, in one service ...
        assert_reported(
            &diags,
            line_of(&text, "imagePullPolicy", 0),
            "spec.services[0].imagePullPolicy",
            &["unknown field `imagePullPolicy`, expected one of `name`, `image`"],
        );
        assert_reported(
            &diags,
            line_of(&text, "8080:80", 0),
            "spec.services[0].ports",
            &["invalid type: string \"8080:80\", expected a sequence"],
        );
        assert_reported(
            &diags,
            line_of(&text, "sometimes", 0),
            "spec.services[0].restartPolicy",
            &["\"sometimes\""],
        );
        // ... bad values and a wrong type in another ...
        assert_reported(
            &diags,
            line_of(&text, "1:abc", 0),
            "spec.services[1].ports[0]",
            &["\"1:abc\""],
        );
        assert_reported(
            &diags,
            line_of(&text, "window: 10", 0),
            "spec.services[1].remediation.window",
            &["no unit"],
        );
        assert_reported(
            &diags,
            line_of(&text, "many", 0),
            "spec.services[1].remediation.maxRestarts",
            &["invalid type: string \"many\""],
        );
        // ... and a missing field in a third, whose other fields are still checked.
        assert_reported(
            &diags,
            line_of(&text, "- name: cc", 0),
            "spec.services[2]",
            &["missing field `image`"],
        );
        assert_reported(
            &diags,
            line_of(&text, "nope", 0),
            "spec.services[2].dependsOn[0]",
            &["unknown service \"nope\""],
        );
        // Nothing said twice, nothing about the values read in place of the bad ones.
        assert_eq!(diags.len(), 8, "{diags:#?}");
    }

    #[test]
    fn wrong_api_version_kind_and_missing_fields_are_reported() {
        let dir = TempDir::new();
        let good = manifest("one", &service("aa", ""));
        let text = good.replace("operator/v1", "apps/v1")
            + "---\n"
            + &good.replace("kind: Cluster", "kind: Deployment")
            + "---\n"
            + &good.replace("      image: busybox:1.36\n", "");
        let file = dir.write("x.yaml", &text);
        let diags = invalid(load(&[file]));
        assert_reported(&diags, 1, "apiVersion", &["\"apps/v1\"", "operator/v1"]);
        assert_reported(&diags, 11, "kind", &["\"Deployment\"", "Cluster"]);
        assert_reported(&diags, 25, "spec.services[0]", &["missing field `image`"]);
        assert_eq!(diags.len(), 3, "{diags:#?}");
    }

    #[test]
    fn errors_of_all_files_are_collected_in_file_then_line_order() {
        let dir = TempDir::new();
        let a = dir.write(
            "a.yaml",
            &manifest(
                "one",
                &service("aa", "      ports: [\"x\"]\n      volumes: [\"v\"]\n"),
            ),
        );
        let b = dir.write("b.yaml", "apiVersion: operator/v1\nkind: [\n");
        let c = dir.write(
            "c.yaml",
            &manifest("three", &service("cc", "      dependsOn: [nope]\n")),
        );
        let diags = invalid(load(&[dir.path().to_path_buf()]));
        let places: Vec<(PathBuf, Option<usize>)> =
            diags.iter().map(|d| (d.path.clone(), d.line)).collect();
        assert_eq!(
            places,
            [
                (a.clone(), Some(9)),
                (a, Some(10)),
                (b.clone(), Some(3)),
                (c, Some(9))
            ]
        );
        let syntax = &diags[2];
        assert!(syntax.message.starts_with("invalid YAML"), "{syntax}");
        let all = ManifestError::Invalid(diags).to_string();
        assert!(all.ends_with("4 errors in the manifests"), "{all}");
        assert!(all.contains(&format!("{}:3: ", b.display())), "{all}");
    }

    #[test]
    fn syntax_error_keeps_earlier_documents_of_the_file_checked() {
        let dir = TempDir::new();
        let text =
            manifest("one", &service("aa", "      ports: [\"bad\"]\n")) + "---\nkind: \"open\n";
        let diags = invalid(load(&[dir.write("x.yaml", &text)]));
        assert_eq!(diags.len(), 2, "{diags:#?}");
        assert_eq!(diags[0].field, "spec.services[0].ports[0]", "{diags:#?}");
        assert!(diags[1].message.starts_with("invalid YAML"), "{}", diags[1]);
    }
}
