//! The server: accepts the toolbox's connections (at most [`MAX_CONNECTIONS`] at once),
//! decides each request on its head ([`super::rules`]), reads the body only of what passed
//! and needs one, then decides on the target's owner and the gate, with the engine, and
//! forwards what is allowed to the engine's socket on a connection of its own, rewritten to
//! the resolved target.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::gate::{self, Registry};
use super::mask::Masker;
use super::rules::{self, ContainerRead, ExecOp, Global, Kind, Refused, Verb};
use super::{MAX_BODY, MAX_CONNECTIONS, ProxyConfig, ProxyError, ProxyEvent};
use crate::docker::observed::owner;
use crate::docker::{ServiceKey, is_not_found};
use crate::manifest::{Cluster, NetworkMode, SafetyMode};
use crate::tickets::Journal;

/// A client has this long to send a request's body.
const REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the proxy reads a body it will not use (of a refused request, or one that
/// takes none) before it answers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections closed for want of room are said in one event at most this often.
const REFUSED_CONNECTIONS_EVERY: Duration = Duration::from_secs(1);
/// The largest answer buffered to be masked (a container list of a big host is a few MiB).
const ANSWER_LIMIT: usize = 32 << 20;
/// The longest line of the event stream (one event).
const EVENT_LINE_LIMIT: usize = 1 << 20;
/// The read buffer of a connection, which bounds a request's headers.
const HEADER_LIMIT: usize = 64 << 10;
/// A client has this long to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the engine's socket, or one inspect for a decision.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a change waits for the engine's answer: the longest stop timeout a manifest
/// may set, and a margin.
const CHANGE_TIMEOUT: Duration =
    Duration::from_secs(crate::manifest::MAX_STOP_TIMEOUT.as_secs() + 60);
/// The longest a change waits for its cluster's turn (another session's stop may take the
/// container's stop timeout).
const TURN_WAIT: Duration = Duration::from_secs(120);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Send but not Sync: a stream of chunks is read by one task at a time.
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Creates the socket: a stale file is removed first, the new one is restricted to its
/// owner and given to `owner` when set.
pub(super) fn listen(path: &Path, owner: Option<(u32, u32)>) -> Result<UnixListener, ProxyError> {
    let stale = |source| ProxyError::StaleSocket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(stale(std::io::Error::other("it is a directory")));
        }
        Ok(_) => std::fs::remove_file(path).map_err(stale)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(stale(e)),
    }
    let listener = UnixListener::bind(path).map_err(|source| ProxyError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ProxyError::Permissions {
            path: path.to_path_buf(),
            source,
        }
    })?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| {
            ProxyError::Owner {
                path: path.to_path_buf(),
                uid,
                gid,
                source,
            }
        })?;
    }
    Ok(listener)
}

/// What every connection of one proxy shares.
pub(super) struct Shared {
    pub session: String,
    engine_socket: PathBuf,
    docker: Docker,
    mode: SafetyMode,
    cluster: Cluster,
    journal: Journal,
    protected: Vec<String>,
    pub registry: Arc<Registry>,
    events: mpsc::UnboundedSender<ProxyEvent>,
    masker: Masker,
    /// Container names this cluster's manifest adopts, and their service.
    adoptable: HashMap<String, ServiceKey>,
    /// Networks a container of the cluster may be connected to or disconnected from.
    networks: BTreeSet<String>,
    /// Execs this session created, and the container each runs in.
    execs: Mutex<HashMap<String, Container>>,
    mutations: Mutex<Vec<(DateTime<Utc>, String)>>,
    pub cancel: CancellationToken,
}

/// A container as the engine resolved it.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    env: Vec<String>,
    isolation: rules::Isolation,
}

impl Container {
    fn from_inspect(c: ContainerInspectResponse) -> Option<Container> {
        let config = c.config.unwrap_or_default();
        let host = c.host_config.unwrap_or_default();
        Some(Container {
            isolation: rules::Isolation {
                privileged: host.privileged.unwrap_or(false),
                network_mode: host.network_mode.unwrap_or_default(),
                pid_mode: host.pid_mode.unwrap_or_default(),
                ipc_mode: host.ipc_mode.unwrap_or_default(),
                mounts: c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.source)
                    .collect(),
            },
            id: c.id.filter(|id| !id.is_empty())?,
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            env: config.env.unwrap_or_default(),
        })
    }

    fn shown(&self) -> String {
        format!("{} ({})", self.name, self.id)
    }
}

/// A network as the engine resolved it.
struct Network {
    id: String,
    name: String,
}

/// How a forward relates to the connection it came on and to the proxy's stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// A read: ends when the proxy stops.
    Read,
    /// An exec start: its connection upgrades (its `Connection` and `Upgrade` headers pass),
    /// and ends when the proxy stops.
    Upgrade,
    /// A change: runs until the engine answered (bounded by [`CHANGE_TIMEOUT`]), even when
    /// the client leaves or the proxy stops, so that its cluster's turn is held until the
    /// engine has acted and the next change is judged on what it did.
    Change,
}

/// How an answer goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deliver {
    /// Buffered and masked whole.
    Masked,
    /// An event stream: masked one event (line) at a time.
    Lines,
    /// As it comes: logs, stats, wait, ping.
    Stream,
}

/// Held by every task that one client connection's requests spawn: [`super::Proxy::stop`]
/// waits for all of them (the sender), and the connection counts against
/// [`MAX_CONNECTIONS`] until the last of them has ended (the permit), an exec session it
/// upgraded to included.
#[derive(Clone)]
struct Alive {
    _proxy: mpsc::Sender<()>,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// What became of one request: the answer and what its event says.
struct Answer {
    response: Response<Body>,
    target: Option<String>,
    allowed: bool,
    reason: String,
    status: Option<u16>,
}

impl Answer {
    fn refused(why: Refused, target: Option<String>) -> Answer {
        let reason = why.to_string();
        Answer {
            response: json_message(StatusCode::FORBIDDEN, &reason),
            target,
            allowed: false,
            reason,
            status: None,
        }
    }

    fn not_found(message: String) -> Answer {
        Answer {
            response: json_message(StatusCode::NOT_FOUND, &message),
            target: None,
            allowed: false,
            reason: message,
            status: None,
        }
    }

    /// The proxy could not do what it decided: the client is told why, as the engine's
    /// error would be.
    fn failed(e: ProxyError, target: Option<String>, allowed: bool) -> Answer {
        let status = match e {
            ProxyError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        let reason = format!("operator proxy: {e}");
        Answer {
            response: json_message(status, &reason),
            target,
            allowed,
            reason,
            status: None,
        }
    }

    fn forwarded(response: Response<Body>, target: Option<String>, reason: String) -> Answer {
        let status = Some(response.status().as_u16());
        Answer {
            response,
            target,
            allowed: true,
            reason,
            status,
        }
    }

    /// The connection closes after this answer: part of the request's body was not read.
    fn closing(mut self) -> Answer {
        self.response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        self
    }
}

/// One inspect the decision needs, bounded: what is `what` (for the error), and the answer
/// for a target the engine does not know (`not_found`, a 404 as the engine words it).
async fn look_up<T>(
    what: String,
    not_found: String,
    inspect: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, Answer> {
    match tokio::time::timeout(ENGINE_TIMEOUT, inspect).await {
        Err(_) => Err(Answer::failed(
            ProxyError::Timeout {
                doing: format!("looking up {what}"),
                seconds: ENGINE_TIMEOUT.as_secs(),
            },
            None,
            false,
        )),
        Ok(Err(e)) if is_not_found(&e) => Err(Answer::not_found(not_found)),
        Ok(Err(source)) => Err(Answer::failed(
            ProxyError::Lookup { what, source },
            None,
            false,
        )),
        Ok(Ok(found)) => Ok(found),
    }
}

/// `{"message": ...}`, as the engine words its errors (the docker CLI prints the message).
fn json_message(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string() + "\n";
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Headers that belong to one connection, not to the message: never passed on (but for an
/// upgrade, which is about the connection).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn without_hop_by_hop(headers: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        if !(upgrade && matches!(name, "connection" | "upgrade")) {
            out.remove(name);
        }
    }
    out
}

impl Shared {
    pub(super) fn new(cfg: ProxyConfig) -> Shared {
        let cluster = cfg.cluster;
        let adoptable = cluster
            .services
            .iter()
            .filter(|s| s.adopt.is_some())
            .map(|s| (s.name.clone(), ServiceKey::new(&cluster.name, &s.name)))
            .collect();
        let networks = std::iter::once(cluster.network.name.clone())
            .chain(
                cluster
                    .services
                    .iter()
                    .filter_map(|s| match &s.network_mode {
                        NetworkMode::Named(n) => Some(n.clone()),
                        NetworkMode::Cluster | NetworkMode::Host => None,
                    }),
            )
            .collect();
        Shared {
            masker: Masker::new(&cfg.secret_names, &cfg.secret_values),
            session: cfg.session,
            engine_socket: cfg.engine_socket,
            docker: cfg.docker,
            mode: cfg.mode,
            journal: cfg.journal,
            protected: cfg.protected,
            registry: cfg.registry,
            events: cfg.events,
            adoptable,
            networks,
            cluster,
            execs: Mutex::new(HashMap::new()),
            mutations: Mutex::new(Vec::new()),
            cancel: CancellationToken::new(),
        }
    }

    pub(super) fn mutations(&self) -> Vec<(DateTime<Utc>, String)> {
        self.mutations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn credit(&self, at: DateTime<Utc>, what: String) {
        self.mutations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, what));
    }

    /// Says that connections were closed for want of room (`count` since the last time).
    fn refused_connections(&self, count: u64) {
        warn!(session = %self.session, count, "the docker proxy closed connections: too many open");
        let _ = self.events.send(ProxyEvent {
            at: Utc::now(),
            method: "-".to_string(),
            path: "-".to_string(),
            target: None,
            allowed: false,
            reason: format!(
                "refused by operator: too many connections: {MAX_CONNECTIONS} are open, the \
                 most one session may hold; {count} closed as they came since the last such \
                 event"
            ),
            status: None,
            mutation: false,
        });
    }

    fn exec(&self, id: &str) -> Option<Container> {
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Decides and answers one request, and records its event.
    ///
    /// # Guarantees
    /// The decision runs in a task of its own, to the end, also when the client goes away
    /// meanwhile (a command timeout kills the CLI): a change that reached the engine is
    /// recorded, and its event sent, whether or not anyone reads the answer.
    async fn handle(self: Arc<Self>, req: Request<Incoming>, alive: Alive) -> Response<Body> {
        let at = Utc::now();
        let method = req.method().as_str().to_string();
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string());
        let decided = tokio::spawn({
            let this = self.clone();
            let (method, path) = (method.clone(), path.clone());
            async move {
                let (answer, mutation) = this.decide(req, &alive).await;
                this.record(at, method, path, &answer, mutation);
                answer.response
            }
        });
        match decided.await {
            Ok(response) => response,
            Err(e) => {
                let what = format!(
                    "{method} {}",
                    crate::agent::safety::escape_for_display(&path)
                );
                let answer = Answer::failed(ProxyError::Task { what, source: e }, None, false);
                self.record(at, method, path, &answer, false);
                answer.response
            }
        }
    }

    /// Sends a request's event.
    fn record(
        &self,
        at: DateTime<Utc>,
        method: String,
        path: String,
        answer: &Answer,
        mutation: bool,
    ) {
        debug!(
            session = %self.session,
            %method,
            path = %crate::agent::safety::escape_for_display(&path),
            allowed = answer.allowed,
            status = ?answer.status,
            reason = %answer.reason,
            "docker proxy request"
        );
        // The audit may have gone (its session ended): the answer still goes back.
        let _ = self.events.send(ProxyEvent {
            at,
            method,
            path,
            target: answer.target.clone(),
            allowed: answer.allowed,
            reason: answer.reason.clone(),
            status: answer.status,
            mutation,
        });
    }

    /// The decision and, when allowed, the forward. Also says whether the request asks
    /// for a change.
    ///
    /// The head is judged first ([`rules::classify`], [`rules::admit`]): the body of a request
    /// refused there is never kept (at most [`MAX_BODY`] of it is read and dropped, so a
    /// client still writing a small one reads the refusal). A body is read only for what
    /// uses it (exec create and start, update, network changes), at most [`MAX_BODY`].
    async fn decide(&self, mut req: Request<Incoming>, alive: &Alive) -> (Answer, bool) {
        let uri = req.uri().clone();
        let classified = rules::classify(req.method().as_str(), uri.path(), uri.query());
        // An endpoint outside the list counts as a change unless it is a GET or HEAD.
        let mutation = classified.as_ref().map_or_else(
            |_| !matches!(req.method().as_str(), "GET" | "HEAD"),
            |r| r.kind.is_mutation(),
        );
        let request = match classified.and_then(|r| rules::admit(self.mode, &r.kind).map(|()| r)) {
            Ok(request) => request,
            Err(why) => {
                drain(req.into_body()).await;
                return (Answer::refused(why, None).closing(), mutation);
            }
        };
        // Taken before the body is read: the client's half of an exec session.
        let upgrade = matches!(
            request.kind,
            Kind::Exec {
                op: ExecOp::Start,
                ..
            }
        )
        .then(|| hyper::upgrade::on(&mut req));
        let what = format!(
            "{} {}",
            req.method(),
            crate::agent::safety::escape_for_display(uri.path())
        );
        let (parts, body) = req.into_parts();
        let (body, read_whole) = if request.kind.takes_body() {
            let read = tokio::time::timeout(REQUEST_BODY_TIMEOUT, read_body(body, &what))
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::Timeout {
                        doing: format!("reading the body of {what}"),
                        seconds: REQUEST_BODY_TIMEOUT.as_secs(),
                    })
                });
            match read {
                Ok(body) => (body, true),
                Err(e) => return (Answer::failed(e, None, false).closing(), mutation),
            }
        } else {
            (Bytes::new(), drain(body).await)
        };
        let forward = Forward {
            method: parts.method,
            headers: parts.headers,
            request,
            what,
            alive: alive.clone(),
        };
        let answer = self.answer(&forward, body, upgrade).await;
        if read_whole {
            (answer, mutation)
        } else {
            (answer.closing(), mutation)
        }
    }

    /// The decision on what the head alone could not decide, and the forward.
    async fn answer(
        &self,
        forward: &Forward,
        body: Bytes,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Answer {
        match &forward.request.kind {
            Kind::Ping => self.read(forward, "", None, Deliver::Stream).await,
            Kind::Global(global) => {
                let deliver = match global {
                    Global::Events => Deliver::Lines,
                    Global::Version
                    | Global::Info
                    | Global::ContainerList
                    | Global::NetworkList => Deliver::Masked,
                };
                self.read(forward, "", None, deliver).await
            }
            Kind::ContainerRead { container, read } => match self.container(container).await {
                Ok(c) => match self.protected(&c) {
                    Some(refused) => refused,
                    None => {
                        let deliver = match read {
                            ContainerRead::Inspect | ContainerRead::Top { .. } => Deliver::Masked,
                            ContainerRead::Logs | ContainerRead::Stats | ContainerRead::Wait => {
                                Deliver::Stream
                            }
                        };
                        self.read(forward, &c.id, Some(c.shown()), deliver).await
                    }
                },
                Err(answer) => answer,
            },
            Kind::NetworkRead { network } => match self.network(network).await {
                Ok(n) => {
                    self.read(forward, &n.id, Some(n.name.clone()), Deliver::Masked)
                        .await
                }
                Err(answer) => answer,
            },
            Kind::ContainerChange { container, verb } => {
                self.change(forward, None, container, *verb, body).await
            }
            Kind::NetworkChange { network, verb } => match rules::network_body(*verb, &body) {
                Ok(checked) => {
                    let container = checked.container.clone();
                    self.change(
                        forward,
                        Some((network, checked)),
                        &container,
                        *verb,
                        Bytes::new(),
                    )
                    .await
                }
                Err(why) => Answer::refused(why, None),
            },
            Kind::Exec { exec, op } => match self.exec(exec) {
                None => Answer::refused(
                    Refused(format!(
                        "exec {exec} was not created by this session: a session may only use \
                         its own execs"
                    )),
                    None,
                ),
                Some(c) => match op {
                    ExecOp::Inspect => {
                        self.read(forward, exec, Some(c.shown()), Deliver::Masked)
                            .await
                    }
                    ExecOp::Resize => {
                        self.read(forward, exec, Some(c.shown()), Deliver::Stream)
                            .await
                    }
                    ExecOp::Start => self.exec_start(forward, exec, c, body, upgrade).await,
                },
            },
        }
    }

    /// Forwards a read to `target` (a resolved id, or "" for the engine as a whole).
    async fn read(
        &self,
        forward: &Forward,
        target: &str,
        shown: Option<String>,
        deliver: Deliver,
    ) -> Answer {
        let path = rules::forward_path(&forward.request, target);
        let result = async {
            let response = self.send(forward, path, Bytes::new(), Leg::Read).await?;
            self.deliver(response, deliver, &forward.what).await
        }
        .await;
        match result {
            Ok(response) => Answer::forwarded(response, shown, "allowed: a read".to_string()),
            Err(e) => Answer::failed(e, shown, true),
        }
    }

    /// A change to a container (or its network): one per cluster at a time, on a container
    /// of this cluster the controller owns or adopted, after the gate when it can take a
    /// member down.
    async fn change(
        &self,
        forward: &Forward,
        network: Option<(&String, rules::NetworkBody)>,
        container: &str,
        verb: Verb,
        body: Bytes,
    ) -> Answer {
        let cluster = &self.cluster.name;
        let Ok(_turn) = tokio::time::timeout(TURN_WAIT, self.registry.turn(cluster)).await else {
            return Answer::refused(
                Refused(format!(
                    "another change to cluster {cluster} has been under way for more than {}s; \
                     try again",
                    TURN_WAIT.as_secs()
                )),
                None,
            );
        };
        let c = match self.container(container).await {
            Ok(c) => c,
            Err(answer) => return answer,
        };
        let shown = Some(c.shown());
        if let Some(refused) = self.protected(&c) {
            return refused;
        }
        let owned = owner(&c.labels, &c.name, |n| self.adoptable.get(n).cloned())
            .filter(|(key, _)| key.cluster == *cluster);
        let Some((key, _adopted)) = owned else {
            return Answer::refused(
                Refused(format!(
                    "{} is not a container of cluster {cluster} that the operator owns or \
                     adopted: an agent may change only its own cluster's containers",
                    c.name
                )),
                shown,
            );
        };
        let group = self.cluster.groups_of(&key.service).next();
        if let Some(why) = group.and_then(|g| rules::refused_on_member(verb, &c.name, &g.name)) {
            return Answer::refused(why, shown);
        }
        let (path, body) = match (verb, network) {
            (Verb::Exec, _) => {
                let body = match rules::exec_create_body(&body) {
                    Ok(body) => body,
                    Err(why) => return Answer::refused(why, shown),
                };
                if let Some(why) = rules::exec_reach(&c.isolation, &self.engine_socket) {
                    return Answer::refused(
                        Refused(format!(
                            "exec into {} would reach past the container: {why}",
                            c.name
                        )),
                        shown,
                    );
                }
                // Nothing can mask what a shell inside it prints.
                if let Some(name) = self.masker.secret_in_env(&c.env) {
                    return Answer::refused(
                        Refused(format!(
                            "exec into {} would expose its secret environment ({name}); read \
                             it with inspect, where secrets are masked",
                            c.name
                        )),
                        shown,
                    );
                }
                (rules::forward_path(&forward.request, &c.id), body)
            }
            (_, Some((network, checked))) => {
                let n = match self.network(network).await {
                    Ok(n) => n,
                    Err(answer) => return answer,
                };
                if !self.networks.contains(&n.name) {
                    return Answer::refused(
                        Refused(format!(
                            "{} is not a network of cluster {cluster} (those are {})",
                            n.name,
                            self.networks.iter().cloned().collect::<Vec<_>>().join(", ")
                        )),
                        shown,
                    );
                }
                (
                    rules::forward_path(&forward.request, &n.id),
                    checked.with_container(&c.id),
                )
            }
            (_, None) => (
                rules::forward_path(&forward.request, &c.id),
                if verb.takes_body() {
                    body.to_vec()
                } else {
                    Vec::new()
                },
            ),
        };
        let member = group.is_some();
        if verb.disruptive() && member {
            let judged = gate::judge_member(
                &self.docker,
                &self.journal,
                &self.cluster,
                &self.registry,
                &self.adoptable,
                &key.service,
            )
            .await;
            if let Err(why) = judged {
                return Answer::refused(Refused(why), shown);
            }
        }
        let at = Utc::now();
        // Held before it is sent: if the answer never comes (the engine is slow, the proxy
        // stops), the member may still be going down and must count as under way.
        let disrupts = verb.disruptive() && member;
        if disrupts {
            self.registry.disrupted(cluster, &key.service, at);
        }
        let result = tokio::time::timeout(CHANGE_TIMEOUT, async {
            let response = self
                .send(forward, path, Bytes::from(body), Leg::Change)
                .await?;
            buffer(response, &forward.what).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::Timeout {
                doing: format!("waiting for the engine's answer to {}", forward.what),
                seconds: CHANGE_TIMEOUT.as_secs(),
            })
        });
        let (parts, bytes) = match result {
            Ok(answer) => answer,
            Err(e) => return Answer::failed(e, shown, true),
        };
        if !parts.status.is_success() {
            // The engine did nothing (it said why): nothing is under way.
            if disrupts {
                self.registry.forget(cluster, &key.service, at);
            }
        } else if verb == Verb::Exec {
            self.created_exec(&bytes, &c);
        } else {
            let what = match verb {
                Verb::Connect => format!("connect {} to a network", c.name),
                Verb::Disconnect => format!("disconnect {} from a network", c.name),
                _ => format!("{verb} {}", c.name),
            };
            self.credit(at, what);
        }
        match self.masked(parts, &bytes, &forward.what) {
            Ok(response) => Answer::forwarded(response, shown, format!("allowed: {verb}")),
            Err(e) => Answer::failed(e, shown, true),
        }
    }

    /// Remembers an exec the engine created for this session (its id is in the answer).
    fn created_exec(&self, answer: &[u8], c: &Container) {
        let id = serde_json::from_slice::<serde_json::Value>(answer)
            .ok()
            .and_then(|v| v.get("Id")?.as_str().map(str::to_string))
            .filter(|id| !id.is_empty() && id.chars().all(|ch| ch.is_ascii_hexdigit()));
        let Some(id) = id else {
            warn!(session = %self.session, container = %c.name, "the engine's exec-create answer has no exec id; the exec cannot be started");
            return;
        };
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, c.clone());
    }

    /// Starts an exec of this session: the engine upgrades the connection, and both halves
    /// are spliced until either side ends or the proxy stops.
    async fn exec_start(
        &self,
        forward: &Forward,
        exec: &str,
        c: Container,
        body: Bytes,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Answer {
        let shown = Some(c.shown());
        // Always there: taken from every exec start's request before its body was read.
        let Some(client) = upgrade else {
            return Answer::refused(
                Refused("an exec start must come on a connection that can upgrade".into()),
                shown,
            );
        };
        let path = rules::forward_path(&forward.request, exec);
        let at = Utc::now();
        let mut response = match self.send(forward, path, body, Leg::Upgrade).await {
            Ok(response) => response,
            Err(e) => return Answer::failed(e, shown, true),
        };
        let status = response.status();
        if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            self.credit(at, format!("exec in {}", c.name));
        }
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return match self.deliver(response, Deliver::Stream, &forward.what).await {
                Ok(response) => {
                    Answer::forwarded(response, shown, "allowed: exec start".to_string())
                }
                Err(e) => Answer::failed(e, shown, true),
            };
        }
        let engine = hyper::upgrade::on(&mut response);
        let cancel = self.cancel.clone();
        let alive = forward.alive.clone();
        let session = self.session.clone();
        tokio::spawn(async move {
            let _alive = alive;
            tokio::select! {
                _ = cancel.cancelled() => {}
                spliced = splice(client, engine) => if let Err(e) = spliced {
                    debug!(%session, error = %e, "exec session ended");
                },
            }
        });
        let mut answer = Response::new(empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = response.headers().clone();
        Answer::forwarded(answer, shown, "allowed: exec start".to_string())
    }

    /// The refusal of any request that reaches the controller's own container.
    fn protected(&self, c: &Container) -> Option<Answer> {
        let protected = self
            .protected
            .iter()
            .any(|p| *p == c.id || *p == c.name || (p.len() >= 12 && c.id.starts_with(p.as_str())));
        protected.then(|| {
            Answer::refused(
                Refused(format!(
                    "{} is the operator's own container: no request may reach it",
                    c.name
                )),
                Some(c.shown()),
            )
        })
    }

    /// Resolves a container as the engine does (name, id, id prefix).
    async fn container(&self, name: &str) -> Result<Container, Answer> {
        let what = format!("container {name}");
        let raw = look_up(
            what.clone(),
            format!("No such container: {name}"),
            self.docker.inspect_container(name, None),
        )
        .await?;
        Container::from_inspect(raw)
            .ok_or_else(|| Answer::failed(ProxyError::NoId { what }, None, false))
    }

    /// Resolves a network as the engine does.
    async fn network(&self, name: &str) -> Result<Network, Answer> {
        let not_found = format!("network {name} not found");
        let n = look_up(
            format!("network {name}"),
            not_found.clone(),
            self.docker.inspect_network(name, None),
        )
        .await?;
        match (n.id.filter(|id| !id.is_empty()), n.name) {
            (Some(id), Some(name)) => Ok(Network { id, name }),
            _ => Err(Answer::not_found(not_found)),
        }
    }

    /// Sends one request to the engine on a connection of its own.
    async fn send(
        &self,
        forward: &Forward,
        path: String,
        body: Bytes,
        leg: Leg,
    ) -> Result<Response<Incoming>, ProxyError> {
        let socket = &self.engine_socket;
        let stream = tokio::time::timeout(ENGINE_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| ProxyError::Timeout {
                doing: format!("connecting to the engine's socket {}", socket.display()),
                seconds: ENGINE_TIMEOUT.as_secs(),
            })?
            .map_err(|source| ProxyError::EngineConnect {
                path: socket.clone(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|source| ProxyError::EngineHandshake {
                    path: socket.clone(),
                    source,
                })?;
        // A change's connection is not cut when the proxy stops: see [`Leg::Change`].
        let cancel = (leg != Leg::Change).then(|| self.cancel.clone());
        let alive = forward.alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            match cancel {
                Some(cancel) => tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = connection.with_upgrades() => {}
                },
                None => {
                    let _ = connection.with_upgrades().await;
                }
            }
        });
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = forward.method.clone();
        *request.uri_mut() = path.parse().map_err(|source| ProxyError::Path {
            path: path.clone(),
            source,
        })?;
        let mut headers = without_hop_by_hop(&forward.headers, leg == Leg::Upgrade);
        // The body may have been re-encoded: its length is the new one, set by the client.
        headers.remove(header::CONTENT_LENGTH);
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, HeaderValue::from_static("docker"));
        }
        *request.headers_mut() = headers;
        let sent = async {
            sender
                .send_request(request)
                .await
                .map_err(|source| ProxyError::EngineRequest {
                    what: forward.what.clone(),
                    source,
                })
        };
        if leg == Leg::Change {
            return sent.await;
        }
        tokio::select! {
            _ = self.cancel.cancelled() => Err(ProxyError::Stopping { session: self.session.clone() }),
            sent = sent => sent,
        }
    }

    /// The engine's answer as it goes back to the client.
    async fn deliver(
        &self,
        response: Response<Incoming>,
        deliver: Deliver,
        what: &str,
    ) -> Result<Response<Body>, ProxyError> {
        match deliver {
            Deliver::Masked => {
                let (parts, bytes) = buffer(response, what).await?;
                self.masked(parts, &bytes, what)
            }
            Deliver::Lines => {
                let (mut parts, body) = response.into_parts();
                parts.headers = without_hop_by_hop(&parts.headers, false);
                parts.headers.remove(header::CONTENT_LENGTH);
                Ok(Response::from_parts(
                    parts,
                    masked_lines(body, self.masker.clone()),
                ))
            }
            Deliver::Stream => {
                let (mut parts, body) = response.into_parts();
                parts.headers = without_hop_by_hop(&parts.headers, false);
                Ok(Response::from_parts(
                    parts,
                    body.map_err(BoxError::from).boxed_unsync(),
                ))
            }
        }
    }

    /// A buffered answer, masked, with its new length.
    fn masked(
        &self,
        mut parts: hyper::http::response::Parts,
        bytes: &[u8],
        what: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let masked = self
            .masker
            .body(bytes)
            .map_err(|reason| ProxyError::Unmaskable {
                what: what.to_string(),
                reason,
            })?;
        parts.headers = without_hop_by_hop(&parts.headers, false);
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, full(Bytes::from(masked))))
    }
}

/// What every forward of one request needs.
struct Forward {
    method: hyper::Method,
    headers: HeaderMap,
    request: rules::Request,
    /// `METHOD /path`, for messages.
    what: String,
    /// Held by every task the request spawns.
    alive: Alive,
}

/// Reads a request body, at most [`MAX_BODY`] bytes.
async fn read_body(body: Incoming, what: &str) -> Result<Bytes, ProxyError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(source) => Err(ProxyError::RequestBody {
                what: what.to_string(),
                source: *source,
            }),
            Err(_) => Err(ProxyError::RequestTooLarge {
                what: what.to_string(),
                limit: MAX_BODY,
            }),
        },
    }
}

/// Reads and drops a body that is not used, at most [`MAX_BODY`] of it and for at most
/// [`DRAIN_TIMEOUT`]: a client that is still writing a small one when the answer comes then
/// reads the answer, where it would see a broken pipe. True when it was read to its end.
async fn drain(mut body: Incoming) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if body.size_hint().lower() > MAX_BODY as u64 {
        return false;
    }
    let read = async {
        let mut left = MAX_BODY;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Some(data) = frame.data_ref() {
                match left.checked_sub(data.len()) {
                    Some(rest) => left = rest,
                    None => return false,
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// Reads a whole answer, at most [`ANSWER_LIMIT`] bytes.
async fn buffer(
    response: Response<Incoming>,
    what: &str,
) -> Result<(hyper::http::response::Parts, Bytes), ProxyError> {
    let (parts, body) = response.into_parts();
    match Limited::new(body, ANSWER_LIMIT).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(source) => Err(ProxyError::AnswerBody {
                what: what.to_string(),
                source: *source,
            }),
            Err(_) => Err(ProxyError::AnswerTooLarge {
                what: what.to_string(),
                limit: ANSWER_LIMIT,
            }),
        },
    }
}

/// An event stream masked one event at a time: the engine ends each with a newline. A line
/// longer than [`EVENT_LINE_LIMIT`] ends the stream (it cannot be masked whole).
fn masked_lines(body: Incoming, masker: Masker) -> Body {
    let chunks = body.into_data_stream().map_err(BoxError::from);
    let state = (chunks.boxed(), BytesMut::new(), false, masker);
    let lines = futures::stream::unfold(
        state,
        |(mut chunks, mut buf, mut ended, masker)| async move {
            loop {
                if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line = buf.split_to(end + 1);
                    let masked = mask_line(&masker, &line);
                    return Some((Ok(masked), (chunks, buf, ended, masker)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = buf.split();
                    let masked = mask_line(&masker, &rest);
                    return Some((Ok(masked), (chunks, buf, ended, masker)));
                }
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        if buf.len() > EVENT_LINE_LIMIT {
                            let e: BoxError = format!(
                                "an event longer than {EVENT_LINE_LIMIT} bytes cannot be masked"
                            )
                            .into();
                            // Nothing more is read: the stream ends after this error.
                            buf.clear();
                            ended = true;
                            return Some((Err(e), (chunks, buf, ended, masker)));
                        }
                    }
                    Some(Err(e)) => {
                        buf.clear();
                        return Some((Err(e), (chunks, buf, true, masker)));
                    }
                    None => ended = true,
                }
            }
        },
    );
    BodyExt::boxed_unsync(StreamBody::new(lines.map_ok(Frame::data)))
}

/// One event line masked; a line that cannot be masked is left out (said as a line of its
/// own, so the stream stays one event per line).
fn mask_line(masker: &Masker, line: &[u8]) -> Bytes {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    match masker.body(trimmed) {
        Ok(mut masked) => {
            masked.push(b'\n');
            Bytes::from(masked)
        }
        Err(reason) => Bytes::from(
            serde_json::json!({ "message": format!("operator proxy: an event was left out: {reason}") })
                .to_string()
                + "\n",
        ),
    }
}

/// Joins the client's and the engine's halves of an upgraded connection until both ends
/// are done.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    engine: hyper::upgrade::OnUpgrade,
) -> Result<(), BoxError> {
    let (client, engine) = tokio::try_join!(client, engine)?;
    let mut client = TokioIo::new(client);
    let mut engine = TokioIo::new(engine);
    tokio::io::copy_bidirectional(&mut client, &mut engine).await?;
    Ok(())
}

/// Connections closed for want of room, said in one event at most every
/// [`REFUSED_CONNECTIONS_EVERY`], so that a loop of connections cannot flood the audit.
#[derive(Debug, Default)]
struct Refusals {
    /// Closed since the last event.
    unsaid: u64,
    said_at: Option<Instant>,
}

impl Refusals {
    /// Counts one; how many to say now, when an event is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unsaid += 1;
        let due = self
            .said_at
            .is_none_or(|at| now.duration_since(at) >= REFUSED_CONNECTIONS_EVERY);
        due.then(|| self.say(now))
    }

    /// How many are still unsaid, to say now (a connection was let in, or the proxy stops).
    fn flush(&mut self, now: Instant) -> Option<u64> {
        (self.unsaid > 0).then(|| self.say(now))
    }

    fn say(&mut self, now: Instant) -> u64 {
        self.said_at = Some(now);
        std::mem::take(&mut self.unsaid)
    }
}

/// Accepts connections until the proxy stops; then waits for every connection to end
/// (each ends on the same token). A connection beyond [`MAX_CONNECTIONS`] open is closed
/// as it comes.
pub(super) async fn accept(shared: Arc<Shared>, listener: UnixListener, alive: mpsc::Sender<()>) {
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = Refusals::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match room.clone().try_acquire_owned() {
                    Ok(permit) => {
                        if let Some(count) = refusals.flush(Instant::now()) {
                            shared.refused_connections(count);
                        }
                        let alive = Alive {
                            _proxy: alive.clone(),
                            _permit: Arc::new(permit),
                        };
                        connections.spawn(connection(shared.clone(), stream, alive));
                    }
                    Err(_) => {
                        drop(stream);
                        if let Some(count) = refusals.refused(Instant::now()) {
                            shared.refused_connections(count);
                        }
                    }
                },
                Err(e) => {
                    warn!(session = %shared.session, error = %e, "the docker proxy cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    if let Some(count) = refusals.flush(Instant::now()) {
        shared.refused_connections(count);
    }
    while connections.join_next().await.is_some() {}
}

/// Serves one client connection (HTTP/1 with upgrades) until it closes or the proxy stops.
async fn connection(shared: Arc<Shared>, stream: UnixStream, alive: Alive) {
    let cancel = shared.cancel.clone();
    let service = hyper::service::service_fn({
        let alive = alive.clone();
        move |req| {
            let shared = shared.clone();
            let alive = alive.clone();
            async move { Ok::<_, Infallible>(shared.handle(req, alive).await) }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HEADER_LIMIT);
    let served = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = cancel.cancelled() => {}
        result = served => if let Err(e) = result {
            debug!(error = %e, "docker proxy connection ended");
        },
    }
    drop(alive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_said_at_once_then_at_most_once_a_second() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut r = Refusals::default();
        assert_eq!(r.flush(at(0)), None, "nothing to say");
        assert_eq!(r.refused(at(0)), Some(1), "the first is said at once");
        for ms in [1, 2, 500, 999] {
            assert_eq!(r.refused(at(ms)), None);
        }
        assert_eq!(
            r.refused(at(1000)),
            Some(5),
            "the second's worth, with this one"
        );
        assert_eq!(r.refused(at(1200)), None);
        assert_eq!(
            r.flush(at(1300)),
            Some(1),
            "what is left, when a connection is let in"
        );
        assert_eq!(r.flush(at(1400)), None);
    }
}
