//! The audit of agent sessions as the session loop writes it: every step goes into the ticket
//! database (`tickets::Journal`) and into one JSON file per session,
//! `<sessions folder>/{id}.json`, after passing through a [`Redactor`].
//!
//! # Guarantees
//! - Every string written (database and file) is redacted first: the secret values given
//!   (the API key, the values of secret-marked variables) and common key shapes become
//!   `[redacted]`.
//! - The folder is created 0700 and every file is created 0600 from the start (never
//!   widened, then narrowed).
//! - The file is rewritten whole for each step, into `.{id}.json.tmp` in the same folder,
//!   flushed to disk, then renamed over `{id}.json`: a reader (or a crash at any moment)
//!   sees either the previous complete document or the new one, never half of one. A crash
//!   can leave the `.tmp` file behind; it is a partial copy, overwritten by the next write,
//!   and never read.
//! - The database entry is written first, then the file: the database is the record of
//!   truth (`operator audit` reads it); the file holds the same document, for people and
//!   tools that read files. Steps are written one at a time, in the order of their numbers.
//!
//! # Caveats
//! A step that cannot be written is an error: the caller must end the session rather than
//! act unaudited.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::tickets::{
    AgentSession, Approval, AuditKind, Journal, NewEntry, NewSession, SessionEnd, SessionEntry,
    SessionLog, TicketError, Usage, Verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write the agent audit: {0}")]
    Store(#[from] TicketError),
    #[error("cannot create the session folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the session file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the session file {path} cannot be read as a session: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("cannot read random bytes for a session id from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    #[error("the audit task stopped unexpectedly: {0}")]
    Task(String),
}

/// Where session files go by default: `sessions/` beside the ticket database
/// (`~/.operator/sessions/` for the default database).
pub fn default_sessions_dir(db: &Path) -> PathBuf {
    db.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("sessions")
}

/// A new session id: the UTC time and 8 random hex digits, `20261201T031500Z-1a2b3c4d`.
pub fn new_session_id(now: DateTime<Utc>) -> Result<String, AuditError> {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(AuditError::Random)?;
    Ok(format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        hex::encode(bytes)
    ))
}

/// Replaces secrets with `[redacted]` in everything the audit writes.
///
/// # Guarantees
/// Every given secret value is replaced wherever it occurs, longest first (so a secret that
/// contains another is masked whole). Independently of the values given, these shapes are
/// masked: Anthropic keys (`sk-ant-...`), `Bearer TOKEN`, an `x-api-key:` header's value,
/// and the value of an assignment `NAME=value` whose upper-case name contains `KEY`,
/// `TOKEN`, `SECRET` or `PASSWORD` (an environment dump).
///
/// # Caveats
/// Values shorter than [`Redactor::MIN_SECRET_LEN`] characters are not searched for: they
/// cannot be told from ordinary text (a secret `1` would mask every digit one). A secret
/// split across two strings (two output chunks) is not found.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub const MASK: &'static str = "[redacted]";
    pub const MIN_SECRET_LEN: usize = 4;

    /// A redactor for these secret values (empty and too-short ones are ignored).
    pub fn new<S: Into<String>>(secrets: impl IntoIterator<Item = S>) -> Redactor {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| s.chars().count() >= Self::MIN_SECRET_LEN)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// A redactor for the values the named variables have in this process's environment
    /// (e.g. `ANTHROPIC_API_KEY` and the variables the configuration marks secret).
    pub fn from_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Redactor {
        Redactor::new(names.into_iter().filter_map(|n| std::env::var(n).ok()))
    }

    /// The text with every secret and key shape masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), Self::MASK);
            }
        }
        out = mask_after(&out, "sk-ant-", true, 1);
        out = mask_after(&out, "bearer ", false, 8);
        out = mask_after(&out, "x-api-key:", false, 1);
        mask_secret_assignments(&out)
    }

    /// Every string in a JSON value (not the keys), redacted.
    pub fn redact_json(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.redact_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn opt(&self, text: &Option<String>) -> Option<String> {
        text.as_deref().map(|t| self.redact(t))
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Masks the token that follows each (ASCII case-insensitive) `needle`, and the needle too
/// when `mask_needle`; spaces after the needle are kept. Tokens shorter than `min` are left.
fn mask_after(text: &str, needle: &str, mask_needle: bool, min: usize) -> String {
    let lower = text.to_ascii_lowercase(); // same byte offsets as `text`
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(needle) {
        let start = from + found;
        let mut token_start = start + needle.len();
        while text[token_start..].starts_with(' ') {
            token_start += 1;
        }
        let token_len: usize = text[token_start..]
            .chars()
            .take_while(|c| is_token_char(*c))
            .map(char::len_utf8)
            .sum();
        let already = text[token_start..].starts_with(Redactor::MASK);
        if token_len >= min && !already {
            if mask_needle {
                out.push_str(&text[from..start]);
            } else {
                out.push_str(&text[from..token_start]);
            }
            out.push_str(Redactor::MASK);
            from = token_start + token_len;
        } else {
            out.push_str(&text[from..start + needle.len()]);
            from = start + needle.len();
        }
    }
    out.push_str(&text[from..]);
    out
}

/// `NAME=value` where NAME looks like a secret's variable name: the value is masked.
fn mask_secret_assignments(text: &str) -> String {
    const WORDS: [&str; 4] = ["KEY", "TOKEN", "SECRET", "PASSWORD"];
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find('=') {
        let eq = search + found;
        search = eq + 1;
        let name_start = text[..eq]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .last()
            .map(|(i, _)| i)
            .unwrap_or(eq);
        let name = &text[name_start..eq];
        if name.is_empty() || !WORDS.iter().any(|w| name.contains(w)) {
            continue;
        }
        let value_len: usize = text[eq + 1..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ',' | ';' | '&'))
            .map(char::len_utf8)
            .sum();
        if value_len == 0 || text[eq + 1..].starts_with(Redactor::MASK) {
            continue;
        }
        out.push_str(&text[from..=eq]);
        out.push_str(Redactor::MASK);
        from = eq + 1 + value_len;
        search = from;
    }
    out.push_str(&text[from..]);
    out
}

/// What a tool call returned, as recorded in a `tool-result` entry (fields that do not
/// apply are left out). `audit show` reads these names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolResultDetail {
    /// Sent to the model as `is_error`.
    pub is_error: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    /// The output as sent back to the model (already capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The answer of a tool that is not a shell command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why the tool could not run, or what the model was told instead of running it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the output was cut ("kept the first 4000 and last 4000 of 2000000 bytes").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<String>,
}

impl ToolResultDetail {
    pub fn duration(mut self, took: Duration) -> Self {
        self.duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self
    }
}

/// The writer a session loop calls for each event. Cheap to clone; clones write to the same
/// session, one step at a time.
#[derive(Clone)]
pub struct AuditLog {
    id: String,
    path: PathBuf,
    journal: Journal,
    redactor: Arc<Redactor>,
    /// The document as last written; held while a step is written, so steps land in both
    /// places in the same order.
    log: Arc<Mutex<SessionLog>>,
}

impl AuditLog {
    /// Records a session's start (the id must be new: see [`new_session_id`]) and writes
    /// its file `<folder>/{id}.json`, creating the folder 0700 if missing.
    pub async fn start(
        journal: Journal,
        folder: &Path,
        redactor: Redactor,
        new: NewSession,
        now: DateTime<Utc>,
    ) -> Result<AuditLog, AuditError> {
        let new = NewSession {
            cluster: redactor.redact(&new.cluster),
            service: redactor.redact(&new.service),
            model: redactor.redact(&new.model),
            holder: redactor.redact(&new.holder),
            ..new
        };
        let folder = folder.to_path_buf();
        let dir = folder.clone();
        blocking(move || private_folder(&dir)).await?;
        let session = journal.session_started(new, now).await?;
        let log = AuditLog {
            path: folder.join(format!("{}.json", session.id)),
            id: session.id.clone(),
            journal,
            redactor: Arc::new(redactor),
            log: Arc::new(Mutex::new(SessionLog {
                session,
                entries: Vec::new(),
            })),
        };
        let doc = log.log.lock().await;
        log.write_file(&doc).await?;
        drop(doc);
        Ok(log)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The session and its entries as written so far.
    pub async fn snapshot(&self) -> SessionLog {
        self.log.lock().await.clone()
    }

    async fn write_file(&self, doc: &SessionLog) -> Result<(), AuditError> {
        let bytes = serde_json::to_vec_pretty(doc).map_err(|e| AuditError::Unreadable {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let path = self.path.clone();
        blocking(move || write_atomically(&path, &bytes)).await
    }

    /// Appends one step (redacted) to the database and the file.
    pub async fn record(&self, entry: NewEntry) -> Result<SessionEntry, AuditError> {
        let r = &self.redactor;
        let entry = NewEntry {
            kind: entry.kind,
            tool_use_id: r.opt(&entry.tool_use_id),
            tool: r.opt(&entry.tool),
            detail: r.redact_json(&entry.detail),
        };
        let mut doc = self.log.lock().await;
        let written = self
            .journal
            .append_entry(self.id.clone(), entry, Utc::now())
            .await?;
        doc.entries.push(written.clone());
        self.write_file(&doc).await?;
        Ok(written)
    }

    /// Text the model wrote.
    pub async fn model_text(&self, text: &str) -> Result<SessionEntry, AuditError> {
        self.record(NewEntry::new(AuditKind::ModelText, json!({ "text": text })))
            .await
    }

    /// A `tool_use` block, with its input as the model sent it.
    pub async fn tool_call(
        &self,
        tool_use_id: &str,
        tool: &str,
        input: &Value,
    ) -> Result<SessionEntry, AuditError> {
        self.record(
            NewEntry::new(AuditKind::ToolCall, json!({ "input": input })).tool(tool_use_id, tool),
        )
        .await
    }

    /// What went back to the model for a call.
    pub async fn tool_result(
        &self,
        tool_use_id: &str,
        tool: &str,
        result: &ToolResultDetail,
    ) -> Result<SessionEntry, AuditError> {
        let detail = serde_json::to_value(result).unwrap_or(Value::Null);
        self.record(NewEntry::new(AuditKind::ToolResult, detail).tool(tool_use_id, tool))
            .await
    }

    /// A decision about a command (`allowed`, `denied`, `approved`, `rejected`) and why.
    pub async fn decision(
        &self,
        kind: AuditKind,
        tool_use_id: &str,
        tool: &str,
        command: &str,
        reason: &str,
    ) -> Result<SessionEntry, AuditError> {
        self.record(
            NewEntry::new(kind, json!({ "command": command, "reason": reason }))
                .tool(tool_use_id, tool),
        )
        .await
    }

    /// Puts a command up for a person's approval (`operator tickets approve|reject`): the
    /// pending approval row and an `approval-requested` entry.
    pub async fn request_approval(
        &self,
        tool_use_id: &str,
        tool: &str,
        command: &str,
    ) -> Result<Approval, AuditError> {
        let command = self.redactor.redact(command);
        let approval = self
            .journal
            .request_approval(
                self.id.clone(),
                self.redactor.redact(tool_use_id),
                command.clone(),
                Utc::now(),
            )
            .await?;
        self.record(
            NewEntry::new(
                AuditKind::ApprovalRequested,
                json!({ "command": command, "approval": approval.id }),
            )
            .tool(tool_use_id, tool),
        )
        .await?;
        Ok(approval)
    }

    /// Counts one API call: a turn, its tokens and its request id, in the header.
    pub async fn turn(
        &self,
        request_id: Option<&str>,
        tokens: Usage,
    ) -> Result<AgentSession, AuditError> {
        let request_id = request_id.map(|r| self.redactor.redact(r));
        let mut doc = self.log.lock().await;
        let session = self
            .journal
            .record_turn(self.id.clone(), request_id, tokens)
            .await?;
        doc.session = session.clone();
        self.write_file(&doc).await?;
        Ok(session)
    }

    /// Records how the session ended. `None`: it was no longer running (marked interrupted
    /// by someone else meanwhile); the header is refreshed from the database either way.
    pub async fn end(&self, end: SessionEnd) -> Result<Option<AgentSession>, AuditError> {
        let end = SessionEnd {
            claim: self.redactor.opt(&end.claim),
            request_ids: end
                .request_ids
                .iter()
                .map(|r| self.redactor.redact(r))
                .collect(),
            ..end
        };
        let mut doc = self.log.lock().await;
        let ended = self
            .journal
            .session_ended(self.id.clone(), end, Utc::now())
            .await?;
        self.refresh(&mut doc).await?;
        Ok(ended)
    }

    /// Records the controller's re-check: the verdict on the session (once) and a `verdict`
    /// entry with what the re-check saw.
    pub async fn verdict(&self, verdict: Verdict, seen: &Value) -> Result<bool, AuditError> {
        let set = self.journal.set_verdict(self.id.clone(), verdict).await?;
        self.record(NewEntry::new(
            AuditKind::Verdict,
            json!({ "verdict": verdict.as_str(), "recheck": seen }),
        ))
        .await?;
        let mut doc = self.log.lock().await;
        self.refresh(&mut doc).await?;
        Ok(set)
    }

    /// Re-reads the header and entries from the database (the record of truth) and
    /// rewrites the file.
    async fn refresh(&self, doc: &mut SessionLog) -> Result<(), AuditError> {
        if let Some(fresh) = self.journal.session(self.id.clone()).await? {
            *doc = fresh;
        }
        self.write_file(doc).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::Task(e.to_string()))?
}

/// Creates the folder 0700 if missing, and keeps an existing one private.
fn private_folder(dir: &Path) -> Result<(), AuditError> {
    let err = |source| AuditError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that `path` is always a complete document: a private
/// temporary file in the same folder, flushed, renamed over it, the folder flushed.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let err = |source| AuditError::File {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover from a crash: its mode is not trusted, it is made again.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// Reads a session file back: `{"session": {...}, "entries": [...]}`, as `audit show --json`
/// prints it. A file that is not such a document is an error naming it.
pub fn read_session_file(path: &Path) -> Result<Value, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let unreadable = |reason: String| AuditError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    if !doc["session"]["id"].is_string() || !doc["entries"].is_array() {
        return Err(unreadable(
            "no `session.id` or no `entries` array".to_string(),
        ));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests;
