//! Stop signals: the forms the engine's own parser accepts, written one canonical way.

/// Linux signal names without `SIG`, as the engine knows them (`moby/sys/signal`), apart
/// from the real-time ones (`RTMIN`, `RTMIN+n`, `RTMAX-n`, `RTMAX`), handled below.
const NAMES: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

/// Linux has signals 1 to 64 (`SIGRTMAX`); the engine would take up to 255.
const MAX_NUMBER: u32 = 64;

/// The accepted forms, appended to every signal error.
pub(crate) const SIGNAL_FORMAT: &str =
    "a signal name such as \"SIGTERM\", \"TERM\" or \"SIGRTMIN+3\", or its number such as \"15\"";

/// Parses a `stopSignal`: a name with or without `SIG`, in any case (`SIGTERM`, `term`,
/// `SIGRTMIN+3`), or a number from 1 to 64. Returns the canonical form, so that two
/// spellings of one signal give one spec hash: `SIG` and the upper-case name, or the
/// number without leading zeros (numbers are kept as numbers: they differ between CPU
/// architectures, names do not).
///
/// `SIGSTOP` is refused: it freezes the process instead of ending it, so every stop would
/// wait the whole `stopTimeout` and then kill.
pub(crate) fn parse_signal(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the signal is empty".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n @ 1..=MAX_NUMBER) => Ok(n.to_string()),
            _ => Err(format!("signal numbers go from 1 to {MAX_NUMBER}")),
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if !(NAMES.contains(&name) || is_realtime(name)) {
        return Err("not a Linux signal".into());
    }
    if name == "STOP" {
        return Err(
            "SIGSTOP freezes the process instead of ending it: every stop would wait the whole stopTimeout, then kill"
                .into(),
        );
    }
    Ok(format!("SIG{name}"))
}

/// `RTMIN`, `RTMIN+1` ... `RTMIN+15`, `RTMAX-14` ... `RTMAX-1`, `RTMAX`: the engine's list.
fn is_realtime(name: &str) -> bool {
    let offset = |rest: &str, sign: char| match rest.strip_prefix(sign) {
        None => rest.is_empty(),
        // No leading zero or sign: exactly the spellings in the engine's table.
        Some(n) => !n.starts_with('0') && n.parse::<u32>().is_ok_and(|n| (1..=15).contains(&n)),
    };
    match (name.strip_prefix("RTMIN"), name.strip_prefix("RTMAX")) {
        (Some(rest), _) => offset(rest, '+'),
        (_, Some(rest)) => rest.is_empty() || (offset(rest, '-') && rest != "-15"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_accepted_with_or_without_sig_in_any_case() {
        for text in ["SIGTERM", "TERM", "term", "SigTerm", " SIGTERM "] {
            assert_eq!(parse_signal(text).as_deref(), Ok("SIGTERM"), "{text}");
        }
        assert_eq!(parse_signal("sigquit").as_deref(), Ok("SIGQUIT"));
        assert_eq!(parse_signal("KILL").as_deref(), Ok("SIGKILL"));
        assert_eq!(parse_signal("SIGUSR1").as_deref(), Ok("SIGUSR1"));
    }

    #[test]
    fn numbers_are_kept_as_numbers_from_1_to_64() {
        assert_eq!(parse_signal("15").as_deref(), Ok("15"));
        assert_eq!(parse_signal("015").as_deref(), Ok("15"));
        assert_eq!(parse_signal("64").as_deref(), Ok("64"));
        for text in ["0", "65", "255", "99999999999999999999"] {
            let err = parse_signal(text).unwrap_err();
            assert!(err.contains("1 to 64"), "{text}: {err}");
        }
    }

    #[test]
    fn realtime_signals_follow_the_engines_table() {
        for text in [
            "SIGRTMIN",
            "RTMIN+3",
            "sigrtmin+15",
            "SIGRTMAX",
            "RTMAX-1",
            "RTMAX-14",
        ] {
            let canonical = parse_signal(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                canonical,
                format!("SIG{}", text.to_ascii_uppercase().trim_start_matches("SIG"))
            );
        }
        for text in [
            "RTMIN+0", "RTMIN+16", "RTMIN+03", "RTMIN-1", "RTMAX-15", "RTMAX+1", "RTMIN+",
        ] {
            assert!(parse_signal(text).is_err(), "{text}");
        }
    }

    #[test]
    fn nonsense_and_sigstop_are_refused() {
        for text in ["", "SIG", "SIGTERN", "TERM9", "-15", "1.5", "SIG TERM"] {
            assert!(parse_signal(text).is_err(), "{text:?}");
        }
        let err = parse_signal("SIGSTOP").unwrap_err();
        assert!(err.contains("freezes"), "{err}");
    }
}
