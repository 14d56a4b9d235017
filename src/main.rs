//! The `operator` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = operator::cli::Cli::parse();
    operator::cli::init_logging(&cli);
    operator::cli::execute(cli)
}
