//! clap's companions: shell completion scripts and man pages, generated from the same
//! definitions as the command line itself (so they never drift from `--help`); and the
//! editors' companion, the JSON Schema of each file format, generated from its types.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory as _;

use super::{Cli, Failure, SchemaFormat, outln};

/// `operator completions SHELL`: the script on standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "operator", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// `operator man [--dir DIR]`: operator(1) on standard output, or a page per command in DIR.
pub fn man(dir: Option<&Path>) -> Result<ExitCode, Failure> {
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page)?;
        std::io::stdout().lock().write_all(&page)?;
        return Ok(ExitCode::SUCCESS);
    };
    let cannot = |e: std::io::Error| {
        Failure::new(format!("cannot write man pages to {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(cannot)?;
    let before = pages(dir).map_err(cannot)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(cannot)?;
    let written = pages(dir).map_err(cannot)?;
    outln!(
        "wrote {} man pages to {} (operator.1 and one per command; {} new)",
        written.len(),
        dir.display(),
        written.len().saturating_sub(before.len())
    );
    Ok(ExitCode::SUCCESS)
}

/// The `operator*.1` pages in `dir`.
fn pages(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("operator") && name.ends_with(".1") {
            names.push(name);
        }
    }
    Ok(names)
}

/// `operator schema manifest|drill`: the format's JSON Schema on standard output.
pub fn schema(format: SchemaFormat) -> Result<ExitCode, Failure> {
    let schema = match format {
        SchemaFormat::Manifest => crate::manifest::schema(),
        SchemaFormat::Drill => crate::chaos::drill::schema(),
    };
    // Serializing a `serde_json::Value` cannot fail.
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    outln!("{text}");
    Ok(ExitCode::SUCCESS)
}
