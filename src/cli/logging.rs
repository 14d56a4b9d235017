//! Structured logs on stderr: readable text for people, JSON lines for machines.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `level` (the flag) wins over `RUST_LOG`, which wins over `info`.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter =
        match level {
            Some(level) => EnvFilter::try_new(level)
                .map_err(|e| format!("invalid --log-level {level:?}: {e}"))?,
            None => match std::env::var("RUST_LOG") {
                Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
                    .map_err(|e| format!("invalid RUST_LOG {env:?}: {e}"))?,
                _ => EnvFilter::new("info"),
            },
        };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // The default timer prints UTC in RFC 3339: one zone everywhere.
        .with_timer(tracing_subscriber::fmt::time::SystemTime);
    let _ = match format {
        // Colours only for a person at a terminal: a container's log (`docker logs`), a
        // file or a pipe gets plain text, and NO_COLOR (https://no-color.org) turns them off.
        LogFormat::Text => builder
            .with_ansi(colour(
                std::env::var_os("NO_COLOR"),
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Whether text logs may carry ANSI colours: NO_COLOR unset or empty, and stderr a terminal.
fn colour(no_color: Option<std::ffi::OsString>, stderr_is_terminal: bool) -> bool {
    no_color.is_none_or(|v| v.is_empty()) && stderr_is_terminal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_and_never_under_no_color() {
        assert!(colour(None, true));
        assert!(colour(Some("".into()), true), "an empty NO_COLOR is unset");
        assert!(!colour(Some("1".into()), true));
        assert!(!colour(None, false), "docker logs, a file or a pipe");
        assert!(!colour(Some("1".into()), false));
    }
}
