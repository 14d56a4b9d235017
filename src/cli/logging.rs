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
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
