//! What is left of the shell-text judge once the boundaries enforce: the safety mode's
//! spelling on the command line, and commands shown to a person with nothing hidden.
//!
//! A command is no longer judged by its text. It runs in the session's toolbox (no access to
//! the controller, its secrets, database or manifests; no network in observe), and its only
//! route to Docker is the session's proxy, which authorises each API request by mode,
//! ownership and the quorum gate (`docs/agent.md`, the threat model). Text can be written in
//! ways no lexer models; a container boundary and an API verb cannot be talked around.

use std::fmt::Write as _;
use std::str::FromStr;

/// How much the agent may do: the manifest's vocabulary (`spec.agent.safetyMode`).
pub use crate::manifest::SafetyMode;

impl FromStr for SafetyMode {
    type Err = SafetyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SafetyMode::parse(&s.trim().to_ascii_lowercase()).ok_or_else(|| SafetyError::UnknownMode {
            value: s.to_string(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetyError {
    #[error("unknown safety mode `{value}`: expected observe, approve or execute")]
    UnknownMode { value: String },
}

/// `text` as a person must see it before approving it: every control character (a `\r` that
/// would send the cursor back over the command, an escape sequence that would repaint the
/// terminal, a newline that would start a second line looking like the prompt's) and every
/// invisible or direction-changing character is written as an escape, and a backslash as
/// `\\`, so what is printed is exactly what will run and one line long.
pub fn escape_for_display(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || invisible(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that print nothing or reorder what follows: zero-width ones, the bidirectional
/// controls (Trojan Source), the byte-order mark, soft hyphen, line and paragraph separators.
fn invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2069 | 0xFEFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_mode_parses_and_displays() {
        for mode in [
            SafetyMode::Observe,
            SafetyMode::Approve,
            SafetyMode::Execute,
        ] {
            assert_eq!(mode.to_string().parse::<SafetyMode>(), Ok(mode));
        }
        assert_eq!(" Execute ".parse::<SafetyMode>(), Ok(SafetyMode::Execute));
        let err = "yolo".parse::<SafetyMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown safety mode `yolo`: expected observe, approve or execute"
        );
        assert_eq!(SafetyMode::default(), SafetyMode::Observe);
    }

    #[test]
    fn a_carriage_return_cannot_hide_the_command_a_person_approves() {
        let spoof = "docker stop etcd1 etcd2\rls -la /tmp          ";
        let shown = escape_for_display(spoof);
        assert_eq!(shown, "docker stop etcd1 etcd2\\rls -la /tmp          ");
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(
            escape_for_display("a\nb\tc\u{1b}[2K"),
            "a\\nb\\tc\\u{1b}[2K"
        );
        assert_eq!(
            escape_for_display("rm\u{202e}txt.exe"),
            "rm\\u{202e}txt.exe"
        );
        // Unambiguous: a backslash the command really has is shown doubled.
        assert_eq!(escape_for_display("echo \\r"), "echo \\\\r");
        assert_eq!(
            escape_for_display("docker ps -a | grep é"),
            "docker ps -a | grep é"
        );
    }
}
