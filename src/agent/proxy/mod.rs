//! The authorising Docker API proxy: a session's toolbox reaches Docker only through a unix
//! socket this serves for that session. Each request is parsed as (method, endpoint,
//! target) and decided before anything reaches the engine, so what the agent may do is
//! enforced on the API call, whatever command line produced it.
//!
//! - Reads (ping, version, info, events, container list, inspect, logs, stats, top, wait,
//!   networks) pass in every mode; inspect, list, info, version and network answers are
//!   masked whole ([`mask`]), events line by line; other streams pass as they come.
//! - Changes to containers (start, stop, restart, kill, pause, unpause, update, exec,
//!   network connect and disconnect) are refused in observe; otherwise they pass only for
//!   containers of the session's cluster that the controller owns or adopted, after the
//!   quorum gate for the disruptive ones, one change per cluster at a time ([`Registry`]).
//! - What no gate can judge is refused in every mode: an exec into or an update of a member
//!   of a quorum group (an exec'd process acts after the gate looked; a member's resources
//!   are the manifest's), a rename (the controller would make a second container for the
//!   service), a kill with a signal that does not end the process (a STOPped container
//!   still reads as running).
//! - An exec is refused where it would reach past its container (privileged, the host's or
//!   another container's network, processes or IPC, the engine's socket mounted) or print a
//!   secret environment; a privileged exec is refused everywhere.
//! - Everything else is refused: HTTP 403 with `{"message": "refused by operator: ..."}`,
//!   which the docker CLI prints as the engine's own error.
//!
//! The pure decision is [`rules`]; the server and the forwarding are `serve`; the gate and
//! the registry `gate`.
//!
//! # Guarantees
//! - Every request, allowed or not, produces one [`ProxyEvent`]; connections closed for want
//!   of room are said too, in one event a second at most.
//! - What is forwarded is rebuilt from what was judged: the target by the full id the
//!   decision resolved; a change's query cut to the parameters its verb takes, the first
//!   value of each, checked (a stop's wait capped at [`rules::MAX_STOP_WAIT`]); an exec's
//!   body re-encoded, a network change's made of the container alone; the other bodies
//!   dropped. API versions older than [`rules::MIN_API_VERSION`] (which read some bodies
//!   differently) are refused.
//! - What one session can cost the controller is bounded: at most [`MAX_CONNECTIONS`] open
//!   connections (more are closed as they come); a body read to be checked is at most
//!   [`MAX_BODY`]; the body of a request refused on its head is never kept (at most
//!   [`MAX_BODY`] of it is read and dropped, so a client still writing a small one reads
//!   the refusal, then the connection closes).
//! - A change runs to the engine's answer even when its client goes away, holding its
//!   cluster's turn, and is recorded (event, credit, registry) either way.
//! - [`Proxy::stop`] ends every connection, stream and exec session, and removes the socket.
//!
//! # Caveats
//! - Streams (logs, stats, an exec's output) are not masked: a container that prints a
//!   secret shows it. That is why an exec into a container whose environment holds a
//!   secret is refused.
//! - Ending an exec session closes its connection; a process it started in the container
//!   may go on (the API has no way to stop it), which is why no exec into a member of a
//!   quorum group is allowed.
//! - A connection that never makes a request HTTP can parse (garbage, headers over 64 KiB
//!   or slower than 30 s) is closed without an event: nothing of it reached a decision.
//! - An update's body passes as sent: the engine applies only resource limits and the
//!   restart policy from it, and only to containers outside the quorum groups.

mod gate;
pub mod mask;
pub mod rules;
mod serve;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use gate::{Registry, SETTLE};

use crate::manifest::{Cluster, SafetyMode};
use crate::tickets::Journal;

/// How long [`Proxy::stop`] waits for its connections and streams to end after telling them
/// to; each ends at its next poll, so this is only a bound.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The most connections one session's proxy holds open at once: each costs the controller
/// a file descriptor (two while it forwards), and a loop opening idle ones must not run it
/// out of them.
pub const MAX_CONNECTIONS: usize = 64;

/// The largest request body the proxy reads: the bodies it checks (exec create, update,
/// network connect and disconnect: small JSON), and what it drains of one it refused.
pub const MAX_BODY: usize = 64 << 10;

/// One session's proxy.
pub struct ProxyConfig {
    /// The agent session id, for messages and logs.
    pub session: String,
    /// The socket to create (a stale file there is removed first); mode 0600.
    pub listen: PathBuf,
    /// Gives the socket to this uid:gid when set (the controller runs as root, the toolbox
    /// as another user).
    pub socket_owner: Option<(u32, u32)>,
    /// The real engine's unix socket, where allowed requests go.
    pub engine_socket: PathBuf,
    /// The controller's client, for the inspects a decision needs.
    pub docker: bollard::Docker,
    pub mode: SafetyMode,
    /// The ticket's cluster: its services, groups and network.
    pub cluster: Cluster,
    /// For the live checks the quorum gate reads.
    pub journal: Journal,
    /// Variable names whose values are masked (besides names that look secret).
    pub secret_names: Vec<String>,
    /// Values masked wherever they appear in an answer (shorter than
    /// [`mask::MIN_SECRET_VALUE_LEN`] ignored).
    pub secret_values: Vec<String>,
    /// The controller's own container (names or full ids): no request may target it.
    pub protected: Vec<String>,
    /// Shared by all sessions of one dispatcher.
    pub registry: Arc<Registry>,
    /// Every request with its decision.
    pub events: mpsc::UnboundedSender<ProxyEvent>,
}

/// One request and what became of it; or connections closed before any request, for want
/// of room (method and path `-`, not allowed, their count in the reason).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyEvent {
    pub at: DateTime<Utc>,
    pub method: String,
    /// As the client sent it, with its query.
    pub path: String,
    /// The container (`name (id)`) or network it was resolved to.
    pub target: Option<String>,
    /// Whether it was forwarded to the engine.
    pub allowed: bool,
    pub reason: String,
    /// The engine's answer, when it was forwarded and answered.
    pub status: Option<u16>,
    /// Whether it asks for a change, refused or not: one of the changes an agent may make,
    /// or any other endpoint but a GET or HEAD.
    pub mutation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot remove the stale file {path} before listening there: {source}")]
    StaleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} readable and writable by its owner only (mode 0600): {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {path} to uid {uid}, gid {gid}: {source}")]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the engine's socket {path}: {source}")]
    EngineConnect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine's socket {path} did not take an HTTP connection: {source}")]
    EngineHandshake {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("the engine did not answer {what}: {source}")]
    EngineRequest {
        what: String,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot look up {what} on the engine: {source}")]
    Lookup {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the proxy failed while deciding {what}: {source}")]
    Task {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the engine's inspect of {what} gave no id")]
    NoId { what: String },
    #[error("cannot send {path} to the engine: {source}")]
    Path {
        path: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("timed out after {seconds}s while {doing}")]
    Timeout { doing: String, seconds: u64 },
    #[error("the proxy of session {session} is stopping")]
    Stopping { session: String },
    #[error("the body of {what} is larger than {limit} bytes")]
    RequestTooLarge { what: String, limit: usize },
    #[error("cannot read the body of {what}: {source}")]
    RequestBody {
        what: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the engine's answer to {what} is larger than {limit} bytes, too large to mask")]
    AnswerTooLarge { what: String, limit: usize },
    #[error("cannot read the engine's answer to {what}: {source}")]
    AnswerBody {
        what: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the engine's answer to {what} cannot be masked: {reason}")]
    Unmaskable { what: String, reason: String },
}

/// A running proxy. Dropping it without [`Proxy::stop`] still tells everything to end and
/// removes the socket, without waiting.
pub struct Proxy {
    shared: Arc<serve::Shared>,
    socket: PathBuf,
    accept: Option<JoinHandle<()>>,
    /// Closed once every task the proxy spawned has ended.
    alive: Option<mpsc::Receiver<()>>,
}

impl Proxy {
    /// Listens on `cfg.listen` and serves it until [`Proxy::stop`].
    ///
    /// # Errors
    /// The socket cannot be created, restricted to its owner or given to `socket_owner`.
    pub async fn start(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        let listener = serve::listen(&cfg.listen, cfg.socket_owner)?;
        let socket = cfg.listen.clone();
        let shared = Arc::new(serve::Shared::new(cfg));
        let (alive_tx, alive) = mpsc::channel(1);
        let accept = tokio::spawn(serve::accept(shared.clone(), listener, alive_tx));
        tracing::info!(session = %shared.session, socket = %socket.display(), "docker proxy listening");
        Ok(Proxy {
            shared,
            socket,
            accept: Some(accept),
            alive: Some(alive),
        })
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Changes this session made that the engine accepted (2xx, or 101 for an exec start):
    /// when and what, in order. A session's verdict credits only these.
    pub fn mutations(&self) -> Vec<(DateTime<Utc>, String)> {
        self.shared.mutations()
    }

    /// Stops accepting, ends every open connection and stream (logs -f, events, exec
    /// sessions) and removes the socket. Waits at most 5 s for them to end. Returns the
    /// session's [`Proxy::mutations`] as they stand then, a change that was still on its way
    /// to the engine included.
    pub async fn stop(mut self) -> Vec<(DateTime<Utc>, String)> {
        self.shared.cancel.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = tokio::time::timeout(STOP_WAIT, accept).await;
        }
        if let Some(mut alive) = self.alive.take() {
            let _ = tokio::time::timeout(STOP_WAIT, alive.recv()).await;
        }
        self.remove_socket();
        self.shared.mutations()
    }

    fn remove_socket(&self) {
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                session = %self.shared.session,
                socket = %self.socket.display(),
                error = %e,
                "cannot remove the proxy's socket"
            ),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if self.accept.is_some() {
            self.remove_socket();
        }
    }
}
