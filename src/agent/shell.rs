//! The `shell` tool's bounds, output and secrets: what a command may cost and what of its
//! output reaches the model. Where the command runs is the session's toolbox
//! ([`super::toolbox`]); this module is what every way of running one shares.
//!
//! What the model sees is [`ShellOutput::model_json`]: `{stdout, stderr, exit_code,
//! timed_out}` (plus `signal` and a `note` when relevant).
//!
//! # Guarantees
//! - [`ShellLimits`] bounds a command: its timeout, the grace between SIGTERM and SIGKILL of
//!   its group, and how long output is still read after it ended.
//! - At most [`ShellLimits::output_cap`] bytes of stdout and stderr together go back (plus
//!   the notes): a stream that does not fit keeps its head and its tail, and the cut is
//!   stated in the text, with how many bytes were cut. A short stream is never cut to make
//!   room for a long one. Invalid UTF-8 is replaced (lossy), never an error. A [`Capture`]
//!   holds at most the cap in memory however much the command prints.
//! - Secret values a [`ChildEnv`] knows (the API key, `--secret-env` values, the manifests'
//!   secrets) are replaced by `[REDACTED]` in the output, including a part of one at a cut.
//!   A second line only: the toolbox holds none of them, and the proxy masks them in the
//!   engine's answers.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

/// The variable that carries the Anthropic API key: always a secret, whatever the
/// configuration says.
pub const API_KEY_VAR: &str = "ANTHROPIC_API_KEY";

/// A variable whose name contains one of these (ASCII case-insensitive substring) is secret
/// unless the policy allows it by name. Deliberately broad: dropping `KEYBOARD_LAYOUT` from
/// an agent's shell costs nothing, leaking `GITHUB_TOKEN` costs a lot. None of the variables
/// the agent needs (`PATH`, `HOME`, `DOCKER_HOST`, `PROMETHEUS_URL`, `LANG`, `TZ`) matches.
pub const SECRET_NAME_PATTERNS: &[&str] = &[
    "KEY",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
];

/// Secret values shorter than this are not searched for in other variables or in output:
/// a `FOO_KEY=1` must not make every variable whose value is `1` a secret.
pub const MIN_SECRET_VALUE_LEN: usize = 8;

/// A value dropped only because its name matched [`SECRET_NAME_PATTERNS`] is redacted from
/// output only from this length on: such values are sometimes paths (`SSH_AUTH_SOCK`), and
/// redacting a short path everywhere would garble output for no protection.
const MIN_PATTERN_VALUE_REDACT_LEN: usize = 16;

/// What replaces a secret value in output.
pub const REDACTED: &str = "[REDACTED]";

/// Default bound on a command's run time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Default cap on stdout + stderr going back to the model: about 25k tokens of text, the cap
/// HolmesGPT puts on one tool result.
pub const DEFAULT_OUTPUT_CAP: usize = 100_000;

/// Bounds of one command. Builder-style: `ShellLimits::default().timeout(d)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellLimits {
    /// How long the command may run before its group gets SIGTERM.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL of the group.
    pub kill_grace: Duration,
    /// How long output is still read after the shell exited (a process that escaped the
    /// group may hold the pipes open), and the bound on reaping a killed shell.
    pub drain: Duration,
    /// Bytes of stdout and stderr together that go back to the model.
    pub output_cap: usize,
}

impl Default for ShellLimits {
    fn default() -> Self {
        ShellLimits {
            timeout: DEFAULT_TIMEOUT,
            kill_grace: Duration::from_secs(2),
            drain: Duration::from_secs(2),
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }
}

impl ShellLimits {
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes;
        self
    }
}

/// Which variables are secret and what the child gets besides its filtered inheritance.
/// Builder-style: `EnvPolicy::default().secret_name("PD_PASSWORD").set("TZ", "UTC")`.
///
/// Precedence (first that applies wins): [`API_KEY_VAR`] is always dropped; a name in
/// `secret_names` is dropped; a value containing a secret value is dropped; a name in
/// `allow` is kept; a name matching [`SECRET_NAME_PATTERNS`] is dropped; the rest is kept.
/// `overrides` are set last, except one whose value contains a secret value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvPolicy {
    /// Names marked secret by configuration (matched ASCII case-insensitively). Their values
    /// become secret values.
    pub secret_names: Vec<String>,
    /// Secret values known otherwise (an API key given by flag or file rather than the
    /// environment). No variable containing one is passed; output containing one is redacted.
    pub secret_values: Vec<String>,
    /// Names kept although they match [`SECRET_NAME_PATTERNS`] (never [`API_KEY_VAR`]).
    pub allow: Vec<String>,
    /// Variables set (or replaced) for the child.
    pub overrides: BTreeMap<String, String>,
}

impl std::fmt::Debug for EnvPolicy {
    // Values are secrets: only their number is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvPolicy")
            .field("secret_names", &self.secret_names)
            .field("secret_values", &self.secret_values.len())
            .field("allow", &self.allow)
            .field("overrides", &self.overrides.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl EnvPolicy {
    pub fn secret_name(mut self, name: impl Into<String>) -> Self {
        self.secret_names.push(name.into());
        self
    }
    pub fn secret_value(mut self, value: impl Into<String>) -> Self {
        self.secret_values.push(value.into());
        self
    }
    pub fn allow(mut self, name: impl Into<String>) -> Self {
        self.allow.push(name.into());
        self
    }
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.overrides.insert(name.into(), value.into());
        self
    }
}

/// Whether `name` matches [`SECRET_NAME_PATTERNS`].
pub fn name_looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PATTERNS.iter().any(|p| upper.contains(p))
}

/// The secrets a session knows, from the controller's environment and the configuration:
/// what its commands' output is redacted of. (Built as the environment a child would get,
/// which is how it finds them; the toolbox gets none of it.)
///
/// # Guarantees
/// - Holds no variable named [`API_KEY_VAR`] and no value containing a secret value (of at
///   least [`MIN_SECRET_VALUE_LEN`] bytes).
/// - Its `Debug` shows names only, never a value.
#[derive(Clone, Default)]
pub struct ChildEnv {
    vars: BTreeMap<String, String>,
    dropped: Vec<String>,
    /// Redacted from output, longest first so a secret containing another goes whole.
    redact: Vec<String>,
    cwd: Option<PathBuf>,
}

impl std::fmt::Debug for ChildEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildEnv")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("dropped", &self.dropped)
            .field("cwd", &self.cwd)
            .finish()
    }
}

impl ChildEnv {
    /// From the controller's own environment. A variable whose name or value is not UTF-8 is
    /// dropped (listed in [`ChildEnv::dropped`] lossily): it cannot be checked for secrets.
    pub fn from_current(policy: &EnvPolicy) -> ChildEnv {
        let mut unreadable = Vec::new();
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(
                |(n, v): (OsString, OsString)| match (n.into_string(), v.into_string()) {
                    (Ok(n), Ok(v)) => Some((n, v)),
                    (n, _) => {
                        unreadable.push(match n {
                            Ok(n) => n,
                            Err(n) => n.to_string_lossy().into_owned(),
                        });
                        None
                    }
                },
            )
            .collect();
        let mut env = ChildEnv::build(vars, policy);
        env.dropped.extend(unreadable);
        env.dropped.sort();
        env
    }

    /// From the given variables (for tests and for a controller that read its environment
    /// once at start).
    pub fn build(vars: impl IntoIterator<Item = (String, String)>, policy: &EnvPolicy) -> ChildEnv {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let named_secret = |name: &str| {
            name == API_KEY_VAR
                || policy
                    .secret_names
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
        };
        // The values no variable may contain: the key, the configured ones, and those of
        // the variables configuration names secret.
        let mut secret_values: Vec<String> = policy
            .secret_values
            .iter()
            .cloned()
            .chain(
                vars.iter()
                    .filter(|(n, _)| named_secret(n))
                    .map(|(_, v)| v.clone()),
            )
            .filter(|v| v.len() >= MIN_SECRET_VALUE_LEN)
            .collect();
        secret_values.sort();
        secret_values.dedup();
        let holds_secret = |value: &str| secret_values.iter().any(|s| value.contains(s.as_str()));

        let mut kept = BTreeMap::new();
        let mut dropped = Vec::new();
        let mut redact = secret_values.clone();
        for (name, value) in vars {
            let allowed = policy.allow.iter().any(|a| a.eq_ignore_ascii_case(&name));
            let drop = named_secret(&name)
                || holds_secret(&value)
                || (!allowed && name_looks_secret(&name));
            if drop {
                if value.len() >= MIN_PATTERN_VALUE_REDACT_LEN {
                    redact.push(value);
                }
                dropped.push(name);
            } else {
                kept.insert(name, value);
            }
        }
        for (name, value) in &policy.overrides {
            if name == API_KEY_VAR || holds_secret(value) {
                kept.remove(name);
                dropped.push(name.clone());
            } else {
                kept.insert(name.clone(), value.clone());
            }
        }
        redact.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        redact.dedup();
        dropped.sort();
        dropped.dedup();
        ChildEnv {
            vars: kept,
            dropped,
            redact,
            cwd: None,
        }
    }

    /// A working directory to go with the environment.
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> ChildEnv {
        self.cwd = Some(dir.into());
        self
    }

    pub fn cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// The variables the child gets, by name.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Names of the variables withheld from the child (for the audit; never values).
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    /// `text` with every secret value this environment knows replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.redact {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// Redacts `text` and, in case a secret was cut in two by the output cap, a trailing
    /// start of a secret (`at_end`) or a leading end of one (`!at_end`) of at least 4 bytes.
    fn redact_at_cut(&self, text: &str, at_end: bool) -> String {
        let mut out = self.redact(text);
        for secret in &self.redact {
            for len in (4..secret.len()).rev() {
                let part = if at_end {
                    secret.get(..len)
                } else {
                    secret.get(secret.len() - len..)
                };
                let Some(part) = part else { continue };
                if at_end && out.ends_with(part) {
                    out.truncate(out.len() - part.len());
                    out.push_str(REDACTED);
                    break;
                }
                if !at_end && out.starts_with(part) {
                    out = format!("{REDACTED}{}", &out[part.len()..]);
                    break;
                }
            }
        }
        out
    }
}

/// What one command did. `Serialize` gives the audit's full record (`duration_ms`); the
/// model gets [`ShellOutput::model_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShellOutput {
    /// As the model sees it: capped, lossy UTF-8, secrets redacted.
    pub stdout: String,
    pub stderr: String,
    /// `None` when the shell was ended by a signal (then `signal` says which) or could not
    /// be reaped within the bound.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The timeout was reached and the group was killed.
    pub timed_out: bool,
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// Some output was cut to the cap.
    pub truncated: bool,
    /// Bytes the command wrote, before the cap.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Why the output is cut or the command ended early, in a sentence for the model.
    pub note: Option<String>,
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ShellOutput {
    /// The tool result the model sees: `{stdout, stderr, exit_code, timed_out}`, plus
    /// `signal` when the shell died of one and `note` when the output was cut or the command
    /// timed out.
    pub fn model_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(sig) = self.signal {
                obj.insert("signal".into(), sig.into());
            }
            if let Some(note) = &self.note {
                obj.insert("note".into(), note.clone().into());
            }
        }
        v
    }

    /// Exited by itself with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// How a command ended, for [`output`].
pub(crate) struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration: Duration,
}

/// The [`ShellOutput`] of a command whose streams were captured in `out` and `err`: cut to
/// `limits.output_cap` together, redacted, with the notes that say what was cut or killed.
/// Shared by every way a command runs (here, and in the session's toolbox).
pub(crate) fn output(
    out: &Capture,
    err: &Capture,
    limits: &ShellLimits,
    env: &ChildEnv,
    ended: Ended,
) -> ShellOutput {
    let (out_budget, err_budget) = budgets(out.total, err.total, limits.output_cap);
    let (stdout, out_cut) = out.render(out_budget, limits.output_cap, env);
    let (stderr, err_cut) = err.render(err_budget, limits.output_cap, env);
    let truncated = out_cut + err_cut > 0;
    let mut notes = Vec::new();
    if ended.timed_out {
        notes.push(format!(
            "the command was still running after the {} s timeout and was killed with its \
             whole process group",
            limits.timeout.as_secs_f64()
        ));
    }
    if truncated {
        notes.push(format!(
            "output cut to {} bytes of stdout and stderr together ({} of {} stdout bytes and \
             {} of {} stderr bytes cut); head and tail kept, the cut is marked in the text",
            limits.output_cap, out_cut, out.total, err_cut, err.total
        ));
    }
    ShellOutput {
        stdout,
        stderr,
        exit_code: ended.exit_code,
        signal: ended.signal,
        timed_out: ended.timed_out,
        duration: ended.duration,
        truncated,
        stdout_bytes: out.total,
        stderr_bytes: err.total,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// How many bytes of each stream go back, `cap` in all: everything when both fit; else a
/// stream shorter than its half keeps all of it and the other gets the rest.
fn budgets(out: u64, err: u64, cap: usize) -> (usize, usize) {
    let cap64 = cap as u64;
    if out + err <= cap64 {
        return (out as usize, err as usize);
    }
    let half = cap / 2;
    if out <= half as u64 {
        (out as usize, cap - out as usize)
    } else if err <= (cap - half) as u64 {
        (cap - err as usize, err as usize)
    } else {
        (half, cap - half)
    }
}

/// One stream: its first `cap / 2` bytes, its last `cap - cap / 2`, and its length. Enough
/// to render it within any budget up to `cap`.
#[derive(Debug)]
pub(crate) struct Capture {
    head: Vec<u8>,
    head_cap: usize,
    tail: VecDeque<u8>,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    pub(crate) fn new(cap: usize) -> Capture {
        Capture {
            head: Vec::new(),
            head_cap: cap / 2,
            tail: VecDeque::new(),
            tail_cap: cap - cap / 2,
            total: 0,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head.len();
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_cap..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// The stream in at most `budget` bytes (plus the cut marker), redacted; and how many
    /// bytes were cut.
    fn render(&self, budget: usize, cap: usize, env: &ChildEnv) -> (String, u64) {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        if self.total <= budget as u64 {
            // Whole: the head, then what of the tail follows it.
            let mut all = self.head.clone();
            let rest = (self.total as usize - self.head.len()).min(tail.len());
            all.extend_from_slice(&tail[tail.len() - rest..]);
            return (env.redact(&String::from_utf8_lossy(&all)), 0);
        }
        let head_len = utf8_prefix_len(&self.head[..(budget / 2).min(self.head.len())]);
        let tail_want = (budget - budget / 2).min(tail.len());
        let tail_bytes = utf8_suffix(&tail[tail.len() - tail_want..]);
        let cut = self.total - head_len as u64 - tail_bytes.len() as u64;
        let head = env.redact_at_cut(&String::from_utf8_lossy(&self.head[..head_len]), true);
        let tail = env.redact_at_cut(&String::from_utf8_lossy(tail_bytes), false);
        (
            format!(
                "{head}\n[... {cut} bytes cut: output longer than {cap} bytes; head and tail \
                 kept ...]\n{tail}"
            ),
            cut,
        )
    }
}

/// `bytes` shortened by a multi-byte character the cut split at its end, if any.
fn utf8_prefix_len(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    }
}

/// `bytes` without the continuation bytes a cut left at its start (at most 3).
fn utf8_suffix(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
        .count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-ant-test-0123456789abcdef";

    fn secretive_vars() -> Vec<(String, String)> {
        [
            ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ("HOME", "/root"),
            ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            ("PROMETHEUS_URL", "http://127.0.0.1:9090"),
            (API_KEY_VAR, KEY),
            ("COPY_OF_IT", KEY),
            ("CURL_HEADER", "x-api-key: sk-ant-test-0123456789abcdef"),
            ("GITHUB_TOKEN", "ghp_notreallyatoken123"),
            ("db_password", "hunter2hunter2"),
            ("PD_ADMIN", "pd-admin-credentials"),
            ("GRAFANA_API_KEY", "grafana-allowed-value"),
            ("SHORT_KEY", "1"),
            ("VERBOSE", "1"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_child_environment_holds_no_key_and_no_secret_marked_variable() {
        let policy = EnvPolicy::default()
            .secret_name("pd_admin")
            .allow("GRAFANA_API_KEY")
            .set("TZ", "UTC")
            .set("LEAK", format!("Bearer {KEY}"));
        let env = ChildEnv::build(secretive_vars(), &policy);
        let names: Vec<&str> = env.vars().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "DOCKER_HOST",
                "GRAFANA_API_KEY",
                "HOME",
                "PATH",
                "PROMETHEUS_URL",
                "TZ",
                "VERBOSE"
            ]
        );
        assert_eq!(
            env.dropped(),
            [
                API_KEY_VAR,
                "COPY_OF_IT",
                "CURL_HEADER",
                "GITHUB_TOKEN",
                "LEAK",
                "PD_ADMIN",
                "SHORT_KEY",
                "db_password"
            ]
        );
        let debug = format!("{env:?} {policy:?}");
        assert!(
            !debug.contains(KEY) && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn the_api_key_cannot_be_allowed_or_set() {
        let policy = EnvPolicy::default()
            .allow(API_KEY_VAR)
            .set(API_KEY_VAR, "another-value-entirely");
        let env = ChildEnv::build(secretive_vars(), &policy);
        assert_eq!(env.get(API_KEY_VAR), None);
    }

    #[test]
    fn a_key_given_as_a_value_removes_the_variables_holding_it() {
        let policy = EnvPolicy::default().secret_value(KEY);
        let vars = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("INNOCENT".to_string(), format!("prefix{KEY}")),
        ];
        let env = ChildEnv::build(vars, &policy);
        assert_eq!(env.dropped(), ["INNOCENT"]);
    }

    #[test]
    fn a_secret_split_by_the_cut_is_redacted_on_both_sides() {
        let env = ChildEnv::build(secretive_vars(), &EnvPolicy::default());
        assert_eq!(
            env.redact_at_cut("xx sk-ant-test-01", true),
            format!("xx {REDACTED}")
        );
        assert_eq!(
            env.redact_at_cut("89abcdef yy", false),
            format!("{REDACTED} yy")
        );
        assert_eq!(env.redact_at_cut("plain text", true), "plain text");
    }

    #[test]
    fn capture_keeps_head_and_tail_in_bounded_memory() {
        let mut c = Capture::new(10);
        for chunk in [&b"0123"[..], b"4567", b"89abcdefghij"] {
            c.push(chunk);
        }
        assert_eq!(c.total, 20);
        assert_eq!(c.head, b"01234");
        assert_eq!(c.tail.iter().copied().collect::<Vec<_>>(), b"fghij");
        let env = ChildEnv::default();
        let (text, cut) = c.render(10, 10, &env);
        assert_eq!(cut, 10);
        assert_eq!(
            text,
            "01234\n[... 10 bytes cut: output longer than 10 bytes; head and tail kept ...]\nfghij"
        );
        let (text, cut) = c.render(4, 10, &env);
        assert_eq!(cut, 16);
        assert!(text.starts_with("01\n") && text.ends_with("\nij"));
    }

    #[test]
    fn capture_renders_a_stream_that_fits_whole() {
        let mut c = Capture::new(10);
        c.push(b"abc");
        c.push(b"defgh");
        let (text, cut) = c.render(10, 10, &ChildEnv::default());
        assert_eq!((text.as_str(), cut), ("abcdefgh", 0));
        let mut c = Capture::new(0);
        c.push(b"abc");
        let (text, cut) = c.render(0, 0, &ChildEnv::default());
        assert_eq!(cut, 3);
        assert!(text.contains("3 bytes cut"));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut c = Capture::new(10);
        c.push("ééééééééé".as_bytes()); // 18 bytes
        let (text, cut) = c.render(7, 10, &ChildEnv::default());
        assert!(!text.contains('\u{FFFD}'), "{text}");
        // 3 bytes of head hold one whole "é", 4 of tail two.
        assert!(
            text.starts_with("é\n[") && text.ends_with("]\néé"),
            "{text}"
        );
        assert_eq!(cut, 12);
    }

    #[test]
    fn budgets_give_a_short_stream_all_of_it() {
        assert_eq!(budgets(10, 20, 100), (10, 20));
        assert_eq!(budgets(10, 1000, 100), (10, 90));
        assert_eq!(budgets(1000, 30, 100), (70, 30));
        assert_eq!(budgets(1000, 1000, 101), (50, 51));
        assert_eq!(budgets(0, 0, 0), (0, 0));
    }

    #[test]
    fn secret_name_patterns_keep_what_the_agent_needs() {
        for name in [
            "PATH",
            "HOME",
            "DOCKER_HOST",
            "PROMETHEUS_URL",
            "LANG",
            "TZ",
            "USER",
        ] {
            assert!(!name_looks_secret(name), "{name}");
        }
        for name in [
            "AWS_SECRET_ACCESS_KEY",
            "api_key",
            "GH_TOKEN",
            "PGPASSWORD",
            "SSH_AUTH_SOCK",
        ] {
            assert!(name_looks_secret(name), "{name}");
        }
    }
}
