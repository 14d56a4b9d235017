//! Docker Compose files to a manifest (`operator import compose`), so that a compose user
//! starts from their own file instead of a blank page.
//!
//! How a project is read, as compose reads it: each file is parsed into a tree that
//! remembers where every value was written (`node`), its `${VARIABLES}` are substituted
//! (`interpolate`), the files are merged, later ones overriding earlier ones (`merge`), and
//! the result is converted into one `kind: Cluster` manifest (`convert`), whose text,
//! comments included, is written by `emit`. Everything here is pure: the caller reads the
//! files and the environment, and writes the result.
//!
//! # Guarantees
//! Every compose key that is not carried over is named in a comment at its service (or at
//! the top of the manifest), with the reason. Input compose itself would refuse is one
//! [`ComposeError`] naming the file, the line and the key.

mod convert;
mod emit;
mod interpolate;
mod merge;
mod node;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use emit::{ComposeAdopt, Healthcheck, Manifest, Network, Remediation, Resources, Service};

use crate::yamldoc::Diagnostic;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The file is not what compose reads: one problem, at its line and key.
    #[error("{0}")]
    Invalid(Diagnostic),
    /// The project name cannot be a cluster name.
    #[error("invalid project name \"{name}\" (from {from}): {why}; give one with --project")]
    Project {
        name: String,
        from: String,
        why: String,
    },
}

/// One compose file: its path as given (for messages) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// What an import needs besides the files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--project`: wins over the files' top-level `name:` and the folder's name.
    pub project: Option<String>,
    /// The first file's folder, absolute: relative bind sources are resolved against it (as
    /// compose resolves them in every file of a project) and its name is the default project.
    pub project_dir: PathBuf,
    /// Where the manifest goes (absolute): bind sources are written relative to it when they
    /// share more than the root with it; `None`: absolute.
    pub output_dir: Option<PathBuf>,
    /// The variables `${NAME}` may use: the `.env` file overlaid with the process's
    /// environment, as compose has them.
    pub env: BTreeMap<String, String>,
    /// For `~` in bind sources.
    pub home: Option<PathBuf>,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub project: String,
    pub manifest: Manifest,
    /// Things a person should know that are not errors: variables that were not set.
    pub notes: Vec<Diagnostic>,
    /// What the manifest does with the stack compose started.
    pub summary: Summary,
}

/// What an imported manifest means for the containers of a stack compose started: which
/// are adopted, which the controller creates, and what of the compose file was dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Services whose container compose started is taken over (found by its labels).
    pub adopted: Vec<String>,
    /// Services whose container the controller creates although compose may not have
    /// started one, with why.
    pub created: Vec<(String, String)>,
    /// Compose keys not carried over: per service (`None`: the file's top level), each key
    /// as its comment names it (`deploy.placement`, `ports: 9000`).
    pub dropped: Vec<(Option<String>, Vec<String>)>,
}

impl Summary {
    fn of(manifest: &Manifest) -> Summary {
        let dropped_keys = |comments: &[String]| -> Vec<String> {
            comments
                .iter()
                .filter_map(|c| {
                    let rest = c.strip_prefix("compose key ")?;
                    let key = rest.split_once(" not carried over")?.0;
                    Some(key.trim_end_matches(':').to_string())
                })
                .collect()
        };
        let mut summary = Summary::default();
        let top = dropped_keys(&manifest.header);
        if !top.is_empty() {
            summary.dropped.push((None, top));
        }
        for service in &manifest.services {
            if service
                .comments
                .iter()
                .any(|c| c.starts_with("compose key profiles:"))
            {
                summary.created.push((
                    service.name.clone(),
                    "it has profiles: compose starts it only with one of them, the controller always"
                        .into(),
                ));
            } else if service.adopt.is_some() {
                summary.adopted.push(service.name.clone());
            } else {
                summary
                    .created
                    .push((service.name.clone(), "it is not adopted".into()));
            }
            let keys = dropped_keys(&service.comments);
            if !keys.is_empty() {
                summary.dropped.push((Some(service.name.clone()), keys));
            }
        }
        summary
    }

    /// The summary as lines for a person: adopted, created, dropped, each said even when
    /// there is none.
    pub fn lines(&self, project: &str) -> Vec<String> {
        let none = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let created: Vec<String> = self
            .created
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        let dropped: Vec<String> = self
            .dropped
            .iter()
            .map(|(service, keys)| {
                format!(
                    "{}: {}",
                    service.as_deref().unwrap_or("(top level)"),
                    keys.join(", ")
                )
            })
            .collect();
        vec![
            format!(
                "adopted: {} (the containers compose started in project {project}, found by their compose labels)",
                none(&self.adopted)
            ),
            format!("created: {}", none(&created)),
            format!(
                "dropped: {}{}",
                if dropped.is_empty() {
                    "none".to_string()
                } else {
                    dropped.join("; ")
                },
                if dropped.is_empty() {
                    ""
                } else {
                    " (each is a comment in the manifest, with why)"
                }
            ),
        ]
    }
}

/// Converts the compose project made of `files` (later files override earlier ones) into
/// one manifest.
///
/// # Errors
/// The first problem found, as one [`ComposeError`]; see the module's guarantees.
pub fn import(files: &[Source], options: &Options) -> Result<Imported, ComposeError> {
    let mut trees = Vec::with_capacity(files.len());
    let mut notes = Vec::new();
    for file in files {
        let mut tree = node::read(&file.path, &file.text)?;
        notes.extend(interpolate::tree(&mut tree, &options.env)?);
        trees.push(tree);
    }
    if trees.is_empty() {
        return Err(ComposeError::Invalid(Diagnostic {
            path: PathBuf::new(),
            line: None,
            field: String::new(),
            message: "no compose file given".into(),
        }));
    }
    let root = merge::files(trees)?;
    let project = project_name(&root, options)?;
    let context = convert::Context {
        project: &project,
        project_dir: &options.project_dir,
        output_dir: options.output_dir.as_deref(),
        home: options.home.as_deref(),
    };
    let mut manifest = convert::manifest(&root, &context)?;
    let sources: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    let mut header = vec![
        format!(
            "Imported by `operator import compose` from {} (compose project {project}).",
            sources.join(", ")
        ),
        "Each comment \"compose key ...\" names what was not carried over, and why.".into(),
    ];
    header.append(&mut manifest.header);
    manifest.header = header;
    Ok(Imported {
        summary: Summary::of(&manifest),
        project,
        manifest,
        notes,
    })
}

/// The project name, as compose chooses it: `--project`, else the top-level `name:`, else
/// the first file's folder name; lowercased and kept to `[a-z0-9_-]`.
fn project_name(root: &node::Node, options: &Options) -> Result<String, ComposeError> {
    let (raw, from) = if let Some(name) = &options.project {
        (name.clone(), "--project".to_string())
    } else if let Some(node) = root.get("name") {
        (
            node.text("a project name")?,
            format!("name: at {}:{}", node.at.file.display(), node.at.line),
        )
    } else {
        let folder = options
            .project_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            folder,
            format!("the folder {}", options.project_dir.display()),
        )
    };
    let name = normalize_project(&raw);
    crate::manifest::validate::dns_label(&name).map_err(|why| ComposeError::Project {
        name: name.clone(),
        from,
        why,
    })?;
    Ok(name)
}

/// compose's rule: lowercase, then only `a-z`, `0-9`, `_` and `-` kept.
pub fn normalize_project(raw: &str) -> String {
    raw.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect()
}

/// The variables of a `.env` file: `NAME=VALUE` lines (an `export ` before the name is
/// allowed), `#` comments and blank lines skipped, one pair of surrounding quotes taken off.
pub fn dotenv(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|&(open, close)| value.strip_prefix(open).and_then(|v| v.strip_suffix(close)))
            .unwrap_or(value);
        vars.insert(name.trim().to_string(), unquoted.to_string());
    }
    vars
}

/// Where the manifest of `project` goes in `dir`.
pub fn output_file(dir: &Path, project: &str) -> PathBuf {
    dir.join(format!("{project}.yaml"))
}

#[cfg(test)]
mod tests;
