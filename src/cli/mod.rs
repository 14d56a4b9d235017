//! The command line: argument definitions and the commands' printing. The library modules
//! never print; everything a person reads is formed here.

mod logging;
mod reload;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use logging::LogFormat;

const AFTER_HELP: &str = "\
Manifests are YAML files (or folders of them) declaring `kind: Cluster` resources; see
docs/manifests.md. The controller only touches containers labelled operator.managed-by=operator.

Examples:
  operator validate manifests/examples       check manifests without touching Docker
  operator plan manifests/examples           what a reconcile would do now
  operator run manifests/examples            keep the cluster in its declared state
  operator run manifests/examples --once     one repair pass, then exit
  operator status manifests/examples --json  desired against observed, for scripts

The Docker engine is found through DOCKER_HOST or the default socket.";

/// A reconciling controller for plain Docker: keeps containers in the state YAML manifests declare.
#[derive(Debug, Parser)]
#[command(name = "operator", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OPERATOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax, e.g. `info` or `operator=debug`); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info", env = "OPERATOR_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch Docker and keep every declared service in its desired state.
    ///
    /// Lists the owned containers, follows the Docker event stream, and repairs drift
    /// (missing, stopped, paused, unhealthy, changed spec, detached network) with per-service
    /// exponential backoff and a restart budget. Edits to the manifests are picked up while it
    /// runs (checked every 2 s, or at once on SIGHUP); an invalid edit is logged and the last
    /// good state kept. SIGINT/SIGTERM finish in-flight repairs, then exit.
    Run(RunArgs),
    /// Check manifests: syntax, fields, durations, ports, volumes, dependencies. Never touches Docker.
    Validate(PathArgs),
    /// Show what a reconcile would do now, changing nothing.
    Plan(ReportArgs),
    /// Show each declared service, desired against observed, one row a service.
    Status(ReportArgs),
}

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Manifest files or folders (folders: their *.yaml / *.yml files, not recursive).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Address for /metrics and /healthz.
    #[arg(long, default_value = crate::server::DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Re-diff every service this often, whatever the events say (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub resync: Duration,
    /// Services reconciled in parallel (never the same service twice).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// One repair pass in dependency order, then exit (status 1 if anything is left broken).
    #[arg(long)]
    pub once: bool,
    /// Print the --once summary as JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::manifest::parse_duration(s)
}

/// What main prints and returns when a command fails.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

pub fn init_logging(cli: &Cli) {
    logging::init(cli.log_format, &cli.log_level);
}

/// Runs a parsed command line; the exit code is what the process should return.
pub fn execute(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Validate(args) => report::validate(args),
            Command::Plan(args) => report::plan(args).await,
            Command::Status(args) => report::status(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
