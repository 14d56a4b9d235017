//! `operator import compose`: reads the compose files and the environment, has
//! [`crate::compose`] convert them, writes the manifest and checks it as `validate` would.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Failure, ImportComposeArgs, outln};
use crate::compose::{self, Options, Source};
use crate::manifest::volume::normalize;

pub fn compose(args: ImportComposeArgs) -> Result<ExitCode, Failure> {
    let mut sources = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let bytes = fs::read(path).map_err(|e| {
            Failure::new(format!("cannot read compose file {}: {e}", path.display()))
        })?;
        let text = crate::yamldoc::decode(path, &bytes).map_err(|d| Failure::new(d.to_string()))?;
        sources.push(Source {
            path: path.clone(),
            text: text.to_string(),
        });
    }
    let first = absolute(&args.files[0])?;
    let project_dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let output_dir = args.output.as_deref().map(absolute).transpose()?;
    let options = Options {
        project: args.project.clone(),
        env: environment(&project_dir)?,
        project_dir,
        output_dir: output_dir.clone(),
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    let imported = compose::import(&sources, &options)?;
    for note in &imported.notes {
        eprintln!("warning: {note}");
    }
    let text = imported.manifest.render();
    let services = imported.manifest.services.len();
    let summary = imported.summary.lines(&imported.project);
    let Some(dir) = output_dir else {
        std::io::stdout().lock().write_all(text.as_bytes())?;
        let checked = check_printed(&text)?;
        // Standard output is the manifest: what it does goes beside it.
        for line in &summary {
            eprintln!("{line}");
        }
        return Ok(checked);
    };
    let file = compose::output_file(&dir, &imported.project);
    let shown = args.output.as_deref().map_or_else(
        || file.clone(),
        |o| compose::output_file(o, &imported.project),
    );
    if file.exists() && !args.force {
        return Err(Failure::new(format!(
            "{} exists: remove it or pass --force to overwrite it",
            shown.display()
        )));
    }
    fs::create_dir_all(&dir)
        .and_then(|()| fs::write(&file, &text))
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", shown.display())))?;
    check(&shown)?;
    outln!(
        "wrote {} (cluster {}, {services} service{})",
        shown.display(),
        imported.project,
        if services == 1 { "" } else { "s" }
    );
    for line in &summary {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `path` made absolute against the working folder, `.` and `..` folded.
fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    let absolute = std::path::absolute(path)
        .map_err(|e| Failure::new(format!("cannot resolve {}: {e}", path.display())))?;
    Ok(normalize(&absolute))
}

/// The variables `${NAME}` may use, as compose has them: the `.env` file in the project's
/// folder, overridden by the process's environment.
fn environment(project_dir: &Path) -> Result<BTreeMap<String, String>, Failure> {
    let dotenv = project_dir.join(".env");
    let mut env = match fs::read(&dotenv) {
        Ok(bytes) => {
            let text =
                crate::yamldoc::decode(&dotenv, &bytes).map_err(|d| Failure::new(d.to_string()))?;
            compose::dotenv(text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read {}: {e}",
                dotenv.display()
            )));
        }
    };
    env.extend(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    Ok(env)
}

/// The written manifest, loaded as `operator validate` loads it: an import that does not
/// pass is an error, with the loader's problems (the file stays, to be fixed).
fn check(shown: &Path) -> Result<(), Failure> {
    crate::manifest::load(&[shown.to_path_buf()]).map_err(|e| {
        Failure::new(format!(
            "{} was written but does not pass `operator validate`; fix it there or in the compose file:\n{}",
            shown.display(),
            e.to_string().trim_end()
        ))
    })?;
    Ok(())
}

/// [`check`] for a manifest printed on standard output: loaded from a temporary copy (its
/// bind mounts are absolute, so where the copy lies does not matter).
fn check_printed(text: &str) -> Result<ExitCode, Failure> {
    let copy = std::env::temp_dir().join(format!("operator-import-{}.yaml", std::process::id()));
    fs::write(&copy, text).map_err(|e| {
        Failure::new(format!(
            "cannot write {} to check the manifest: {e}",
            copy.display()
        ))
    })?;
    let loaded = crate::manifest::load(std::slice::from_ref(&copy));
    let _ = fs::remove_file(&copy);
    loaded.map_err(|e| {
        let problems = e.to_string().replace(&copy.display().to_string(), "(standard output)");
        Failure::new(format!(
            "the manifest printed does not pass `operator validate`; fix it or the compose file:\n{}",
            problems.trim_end()
        ))
    })?;
    Ok(ExitCode::SUCCESS)
}
