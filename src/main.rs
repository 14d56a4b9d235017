//! The `operator` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = operator::cli::Cli::parse();
    if let Err(message) = operator::cli::init_logging(&cli) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    operator::cli::execute(cli)
}
