//! The `operator` binary: parse the command line, set up logging, run the command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    operator::metrics::mark_process_start();
    let cli = operator::cli::parse_args();
    if let Err(message) = operator::cli::init_logging(&cli) {
        operator::cli::report_failure(cli.log_format, &message);
        return ExitCode::from(2);
    }
    one_line_panics(cli.log_format);
    // In the sidecar, a manifest's relative bind sources are mapped to host paths.
    operator::docker::hostpath::map_manifest_folders();
    operator::cli::execute(cli)
}

/// A panic is a bug, but what it prints is still one line (JSON with `--log-format json`),
/// not a multi-line report, unless RUST_BACKTRACE asks for the full one.
fn one_line_panics(format: operator::cli::LogFormat) {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(move |info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        operator::cli::report_failure(
            format,
            &format!(
                "internal error (a bug, please report it): thread {thread:?} panicked{at}: {}",
                what.replace('\n', " ")
            ),
        );
    }));
}
