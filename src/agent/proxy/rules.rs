//! The pure decision: what one request to the Docker API is (its kind and its target), and
//! whether the session's mode lets that kind through. No I/O: resolving the target, who
//! owns it and the quorum gate are the server's (`serve`), with the engine.
//!
//! # Guarantees
//! - A request is matched against a closed list of endpoints on its percent-decoded path,
//!   segment by segment; anything else is refused, naming the endpoint.
//! - What is forwarded is rebuilt from the parsed request ([`forward_path`]: a change's query
//!   from the first value of each parameter it takes, as checked; the body of an exec create
//!   re-serialised, and a network connect/disconnect's made of the container alone), so the
//!   engine never reads the request differently from how it was judged.
//! - What no gate can judge is refused whatever the mode: a rename (the controller would
//!   make a second container for the service), a signal that does not end the process (a
//!   STOPped container still reads as running), and on a member of a quorum group, an exec
//!   (what it starts acts after the gate looked) or an update ([`refused_on_member`]).

use std::fmt;

use serde_json::{Map, Value};

use crate::agent::safety::escape_for_display;
use crate::manifest::SafetyMode;

/// What an agent may do, said in every refusal of an endpoint outside the list.
const ALLOWED: &str = "an agent may read (ps, inspect, logs, events, stats, top, wait, version, \
                       info, networks) and, outside observe mode, start, stop, restart, kill, \
                       pause, unpause, update, exec into, or connect and disconnect the \
                       containers of its cluster";

/// Why a rename is refused, on every container.
const RENAME: &str = "rename is not allowed: renaming a container of a cluster makes the \
                      operator create a second container for its service";

/// The signals a kill (or a stop's `signal`) may carry, with their numbers: those that end
/// the process. Any other leaves it alive in a state the engine still reports as running
/// (STOP, TSTP) or is the service's own business (HUP, USR1, CONT...).
pub const ENDING_SIGNALS: [(&str, &str); 4] =
    [("KILL", "9"), ("TERM", "15"), ("INT", "2"), ("QUIT", "3")];

/// The longest a stop or restart may wait for the process before it kills it (`t`, seconds);
/// a longer (or negative, unending) wait is cut to this: the change holds its cluster's turn
/// meanwhile.
pub const MAX_STOP_WAIT: u64 = 60;

/// Why observe refuses a change.
pub const OBSERVE: &str = "observe mode: only reads reach the engine";

/// The `ps_args` a `top` may carry: BSD `e` (`ps aux e`, `ps eww`) prints the environment of
/// every process, which is where secrets live.
pub const TOP_PS_ARGS: [&str; 4] = ["-ef", "-f", "aux", "-aux"];

/// A request as judged: the API version prefix it came with (`/v1.41`, or empty), kept for
/// forwarding, what it is, and the query it is forwarded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: String,
    pub kind: Kind,
    /// A read's query as sent (a `top`'s checked `ps_args` only); a change's or an exec's
    /// rebuilt from what was checked; `None` for none.
    pub query: Option<String>,
}

/// The kinds of request that can be allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `GET|HEAD /_ping`: the CLI needs the engine's `Api-Version` header.
    Ping,
    /// A read of the engine as a whole.
    Global(Global),
    /// `GET /containers/{id}/json|logs|stats|top`, `POST /containers/{id}/wait`.
    ContainerRead {
        container: String,
        read: ContainerRead,
    },
    /// `GET /networks/{id}`.
    NetworkRead { network: String },
    /// `POST /containers/{id}/<verb>` (exec create included).
    ContainerChange { container: String, verb: Verb },
    /// `POST /networks/{id}/connect|disconnect`: the container is in the body.
    NetworkChange { network: String, verb: Verb },
    /// `POST /exec/{id}/start|resize`, `GET /exec/{id}/json`.
    Exec { exec: String, op: ExecOp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    Version,
    Info,
    Events,
    ContainerList,
    NetworkList,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRead {
    Inspect,
    Logs,
    Stats,
    /// With the one `ps_args` it may carry, already checked against [`TOP_PS_ARGS`].
    Top {
        ps_args: Option<String>,
    },
    Wait,
}

/// A change to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Kill,
    Pause,
    Unpause,
    Update,
    /// Exec create: what runs in the container is started by [`ExecOp::Start`].
    Exec,
    Connect,
    Disconnect,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Kill => "kill",
            Verb::Pause => "pause",
            Verb::Unpause => "unpause",
            Verb::Update => "update",
            Verb::Exec => "exec",
            Verb::Connect => "connect",
            Verb::Disconnect => "disconnect",
        }
    }

    /// Whether it can take a member down, so that on a member it passes the quorum gate
    /// first. Start, unpause and connect only add liveness; an exec or an update is refused
    /// on a member outright ([`refused_on_member`]), because it acts after the gate looked.
    pub fn disruptive(self) -> bool {
        matches!(
            self,
            Verb::Stop | Verb::Restart | Verb::Kill | Verb::Pause | Verb::Disconnect
        )
    }

    /// Whether its body is passed on (checked, for exec and network changes). The others
    /// go with none: old API versions read a start's body as a new host configuration
    /// (privileged, binds), and nothing but the checked body may reach the engine.
    pub fn takes_body(self) -> bool {
        matches!(
            self,
            Verb::Update | Verb::Exec | Verb::Connect | Verb::Disconnect
        )
    }

    fn container_verb(segment: &str) -> Option<Verb> {
        Some(match segment {
            "start" => Verb::Start,
            "stop" => Verb::Stop,
            "restart" => Verb::Restart,
            "kill" => Verb::Kill,
            "pause" => Verb::Pause,
            "unpause" => Verb::Unpause,
            "update" => Verb::Update,
            "exec" => Verb::Exec,
            _ => return None,
        })
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOp {
    /// Runs the exec: the connection upgrades and carries its stdin and output.
    Start,
    Resize,
    Inspect,
}

/// Why a request is refused: the text after "refused by operator: ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused by operator: {}", self.0)
    }
}

impl Kind {
    /// Whether it changes something (so observe refuses it, and the engine's acceptance is
    /// credited to the session). Exec resize is part of running an exec.
    pub fn is_mutation(&self) -> bool {
        match self {
            Kind::ContainerChange { .. } | Kind::NetworkChange { .. } => true,
            Kind::Exec { op, .. } => *op != ExecOp::Inspect,
            _ => false,
        }
    }

    /// Whether its body is read (at most [`super::MAX_BODY`]): to be checked and forwarded
    /// (exec create, network changes), forwarded as sent (update, exec start). Any other
    /// body is never forwarded.
    pub fn takes_body(&self) -> bool {
        match self {
            Kind::ContainerChange { verb, .. } => verb.takes_body(),
            Kind::NetworkChange { .. } => true,
            Kind::Exec { op, .. } => *op == ExecOp::Start,
            _ => false,
        }
    }
}

/// Parses one request line. `query` is the raw query string, without `?`.
///
/// # Errors
/// The endpoint is not one an agent may use (or its path, target or query cannot be read),
/// a rename, or a change whose query asks for what no gate can judge (a signal that does
/// not end the process).
pub fn classify(method: &str, path: &str, query: Option<&str>) -> Result<Request, Refused> {
    let decoded = percent_decode(path).ok_or_else(|| {
        Refused(format!(
            "the path {} cannot be decoded",
            escape_for_display(path)
        ))
    })?;
    let (version, rest) = split_version(&decoded);
    if !version.is_empty() && !recent_enough(&version[2..]) {
        return Err(Refused(format!(
            "API version {} is not accepted: the proxy speaks {MIN_API_VERSION} and newer",
            escape_for_display(&version[2..])
        )));
    }
    let not_allowed = || {
        Refused(format!(
            "{method} {} is not allowed: {ALLOWED}",
            escape_for_display(if rest.is_empty() { "/" } else { rest })
        ))
    };
    let Some(segments) = rest
        .strip_prefix('/')
        .map(|r| r.split('/').collect::<Vec<_>>())
    else {
        return Err(not_allowed());
    };
    let kind = match (method, segments.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => Kind::Ping,
        ("GET", ["version"]) => Kind::Global(Global::Version),
        ("GET", ["info"]) => Kind::Global(Global::Info),
        ("GET", ["events"]) => Kind::Global(Global::Events),
        ("GET", ["containers", "json"]) => Kind::Global(Global::ContainerList),
        ("GET", ["networks"]) => Kind::Global(Global::NetworkList),
        ("GET", ["networks", id]) => Kind::NetworkRead {
            network: target(id, "network")?,
        },
        ("GET", ["containers", id, read @ ("json" | "logs" | "stats" | "top")]) => {
            let read = match *read {
                "json" => ContainerRead::Inspect,
                "logs" => ContainerRead::Logs,
                "stats" => ContainerRead::Stats,
                _ => ContainerRead::Top {
                    ps_args: top_ps_args(query)?,
                },
            };
            Kind::ContainerRead {
                container: target(id, "container")?,
                read,
            }
        }
        ("POST", ["containers", id, "wait"]) => Kind::ContainerRead {
            container: target(id, "container")?,
            read: ContainerRead::Wait,
        },
        ("POST", ["containers", _, "rename"]) => return Err(Refused(RENAME.to_string())),
        ("POST", ["containers", id, verb]) => match Verb::container_verb(verb) {
            Some(verb) => Kind::ContainerChange {
                container: target(id, "container")?,
                verb,
            },
            None => return Err(not_allowed()),
        },
        ("POST", ["networks", id, verb @ ("connect" | "disconnect")]) => Kind::NetworkChange {
            network: target(id, "network")?,
            verb: if *verb == "connect" {
                Verb::Connect
            } else {
                Verb::Disconnect
            },
        },
        ("POST", ["exec", id, op @ ("start" | "resize")]) => Kind::Exec {
            exec: exec_id(id)?,
            op: if *op == "start" {
                ExecOp::Start
            } else {
                ExecOp::Resize
            },
        },
        ("GET", ["exec", id, "json"]) => Kind::Exec {
            exec: exec_id(id)?,
            op: ExecOp::Inspect,
        },
        _ => return Err(not_allowed()),
    };
    let as_sent = query.filter(|q| !q.is_empty()).map(str::to_string);
    let query = match &kind {
        Kind::Ping | Kind::Global(_) | Kind::NetworkRead { .. } => as_sent,
        Kind::ContainerRead { read, .. } => match read {
            // Every allowed value is made of characters a query carries as they are.
            ContainerRead::Top { ps_args } => ps_args.as_ref().map(|a| format!("ps_args={a}")),
            ContainerRead::Inspect
            | ContainerRead::Logs
            | ContainerRead::Stats
            | ContainerRead::Wait => as_sent,
        },
        Kind::ContainerChange { verb, .. } => change_query(*verb, query)?,
        Kind::NetworkChange { .. } => None,
        Kind::Exec { op, .. } => match op {
            ExecOp::Resize => rebuilt(first_values(query, &["h", "w"])?),
            ExecOp::Start | ExecOp::Inspect => None,
        },
    };
    Ok(Request {
        version: version.to_string(),
        kind,
        query,
    })
}

/// The query a change is forwarded with: only the parameters its verb takes (a stop's or
/// restart's `t` and `signal`, a kill's `signal`; nothing for the others, such as a start's
/// `checkpoint`), the first value of each (the one the engine reads), checked.
fn change_query(verb: Verb, query: Option<&str>) -> Result<Option<String>, Refused> {
    let names: &[&str] = match verb {
        Verb::Stop | Verb::Restart => &["t", "signal"],
        Verb::Kill => &["signal"],
        _ => &[],
    };
    let mut kept = Vec::new();
    for (name, value) in first_values(query, names)? {
        match name {
            "t" => kept.push((name, stop_wait(&value)?.to_string())),
            _ => kept.push((name, ending_signal(verb, &value)?.to_string())),
        }
    }
    Ok(rebuilt(kept))
}

/// The first value of each of `names` in `query` (the one the engine reads of a repeated
/// parameter), in the order of `names`; an empty one is absent, as the engine takes it.
fn first_values(
    query: Option<&str>,
    names: &[&'static str],
) -> Result<Vec<(&'static str, String)>, Refused> {
    let pairs = form_pairs(query.unwrap_or(""))?;
    Ok(names
        .iter()
        .filter_map(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .filter(|(_, v)| !v.is_empty())
                .map(|(_, v)| (*name, v.clone()))
        })
        .collect())
}

/// `name=value&...`, each value percent-encoded but for the characters a query carries as
/// they are; `None` for no pairs.
fn rebuilt(pairs: Vec<(&str, String)>) -> Option<String> {
    let encoded: Vec<String> = pairs
        .into_iter()
        .map(|(name, value)| {
            let value: String = value
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                        char::from(b).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{name}={value}")
        })
        .collect();
    (!encoded.is_empty()).then(|| encoded.join("&"))
}

/// A stop's or restart's `t`, in whole seconds, capped at [`MAX_STOP_WAIT`] (a negative one
/// waits without end: capped too).
fn stop_wait(value: &str) -> Result<u64, Refused> {
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refused(format!(
            "a stop's t must be a whole number of seconds, not {}",
            escape_for_display(value)
        )));
    }
    let negative = value.starts_with('-') && digits.bytes().any(|b| b != b'0');
    Ok(match digits.parse::<u64>() {
        Ok(seconds) if !negative => seconds.min(MAX_STOP_WAIT),
        _ => MAX_STOP_WAIT,
    })
}

/// The canonical name (`TERM`) of a signal that ends the process ([`ENDING_SIGNALS`]), as a
/// name with or without `SIG` in any case, or its number.
fn ending_signal(verb: Verb, value: &str) -> Result<&'static str, Refused> {
    let upper = value.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    ENDING_SIGNALS
        .iter()
        .find(|(n, number)| *n == name || *number == value)
        .map(|(n, _)| *n)
        .ok_or_else(|| {
            Refused(format!(
                "{verb} with signal {} is not allowed: only a signal that ends the process may \
                 be sent ({}, or none), since a process stopped or signalled otherwise still \
                 reads as running",
                escape_for_display(value),
                ENDING_SIGNALS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Whether `mode` lets a request of this kind through. Approve and execute are the same at
/// the proxy: a person's approval comes before the command runs.
pub fn admit(mode: SafetyMode, kind: &Kind) -> Result<(), Refused> {
    if mode == SafetyMode::Observe && kind.is_mutation() {
        return Err(Refused(OBSERVE.to_string()));
    }
    Ok(())
}

/// The path (with query) forwarded to the engine: the request's version prefix, then the
/// endpoint rebuilt with `target` (the resolved full id) in place of what the client named,
/// then the query as judged ([`Request::query`]).
pub fn forward_path(request: &Request, target: &str) -> String {
    let v = &request.version;
    let path = match &request.kind {
        Kind::Ping => format!("{v}/_ping"),
        Kind::Global(g) => format!(
            "{v}/{}",
            match g {
                Global::Version => "version",
                Global::Info => "info",
                Global::Events => "events",
                Global::ContainerList => "containers/json",
                Global::NetworkList => "networks",
            }
        ),
        Kind::ContainerRead { read, .. } => format!(
            "{v}/containers/{target}/{}",
            match read {
                ContainerRead::Inspect => "json",
                ContainerRead::Logs => "logs",
                ContainerRead::Stats => "stats",
                ContainerRead::Wait => "wait",
                ContainerRead::Top { .. } => "top",
            }
        ),
        Kind::NetworkRead { .. } => format!("{v}/networks/{target}"),
        Kind::ContainerChange { verb, .. } => format!("{v}/containers/{target}/{verb}"),
        Kind::NetworkChange { verb, .. } => format!("{v}/networks/{target}/{verb}"),
        Kind::Exec { op, .. } => format!(
            "{v}/exec/{target}/{}",
            match op {
                ExecOp::Start => "start",
                ExecOp::Resize => "resize",
                ExecOp::Inspect => "json",
            }
        ),
    };
    match &request.query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// Checks an exec-create body and returns the one to forward (re-serialised, so that the
/// engine reads what was checked).
///
/// # Errors
/// Not a JSON object, a field the engine would match by another spelling, or `Privileged`.
pub fn exec_create_body(body: &[u8]) -> Result<Vec<u8>, Refused> {
    let object = json_object(body, "an exec")?;
    // The engine's decoder matches field names without regard to case: every spelling counts.
    if fields(&object, "Privileged").any(|v| !matches!(v, Value::Bool(false) | Value::Null)) {
        return Err(Refused(
            "a privileged exec is not allowed: it would hold every capability of the host"
                .to_string(),
        ));
    }
    serialise(&Value::Object(object))
}

/// Why `verb` is refused on `container`, a member of quorum group `group`, whatever the gate
/// would say: what an exec starts (`docker exec -d m1 sh -c 'sleep 30; kill 1'`) outlives the
/// session and acts after the gate looked, and an update changes what the manifest sets (a
/// CPU quota of 0.001 hobbles a member that still reads as running). `None` for the verbs
/// the gate judges.
pub fn refused_on_member(verb: Verb, container: &str, group: &str) -> Option<Refused> {
    let container = escape_for_display(container);
    let group = escape_for_display(group);
    match verb {
        Verb::Exec => Some(Refused(format!(
            "exec into {container}, a member of quorum group {group}, could act on it after \
             the quorum gate looked; use logs, inspect and the typed tools"
        ))),
        Verb::Update => Some(Refused(format!(
            "update of {container}, a member of quorum group {group}, is not allowed: a \
             member's resources are the manifest's, and a limit can hobble it while it still \
             reads as running"
        ))),
        _ => None,
    }
}

/// What of a container's configuration decides how far an exec into it reaches, as the
/// engine's inspect says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    pub privileged: bool,
    /// `HostConfig.NetworkMode`, `PidMode` and `IpcMode`: `host`, `container:<id>`, or the
    /// container's own.
    pub network_mode: String,
    pub pid_mode: String,
    pub ipc_mode: String,
    /// Where its mounts come from (host paths).
    pub mounts: Vec<String>,
}

/// What an exec into a container would reach beyond it, if more than the container: every
/// capability (privileged); the host's network, whose loopback holds the controller's
/// endpoints and maybe an engine on TCP; the host's processes or IPC (where the controller
/// runs); another container's network, processes or IPC (which may be a member's); or the
/// engine (its socket, or a folder holding it, is mounted). What runs there answers to no
/// proxy.
pub fn exec_reach(isolation: &Isolation, engine_socket: &std::path::Path) -> Option<String> {
    if isolation.privileged {
        return Some("it is privileged: an exec holds every capability of the host".into());
    }
    for (mode, what) in [
        (&isolation.network_mode, "network"),
        (&isolation.pid_mode, "pid"),
        (&isolation.ipc_mode, "ipc"),
    ] {
        if mode == "host" {
            return Some(format!(
                "it shares the host's {what} namespace ({what} host)"
            ));
        }
        if mode.starts_with("container:") {
            return Some(format!(
                "it shares another container's {what} namespace ({what} {})",
                escape_for_display(mode)
            ));
        }
    }
    let engine = |source: &std::path::Path| {
        engine_socket.starts_with(source)
            || ["/run/docker.sock", "/var/run/docker.sock"]
                .iter()
                .any(|s| std::path::Path::new(s).starts_with(source))
            || source
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("docker.sock") || n.ends_with("containerd.sock"))
    };
    isolation
        .mounts
        .iter()
        .find(|m| engine(std::path::Path::new(m.as_str())))
        .map(|m| format!("it mounts {} (the engine's socket)", escape_for_display(m)))
}

/// The container a network connect/disconnect body names, and whether a disconnect is
/// forced; the rest of the body (a connect's `EndpointConfig`: aliases, links, addresses,
/// driver options) is never forwarded, so a container cannot answer for another's name on
/// the cluster's network.
///
/// # Errors
/// Not a JSON object; no `Container`, more than one spelling of it, or not a string; for a
/// disconnect, more than one spelling of `Force` or one that is not a boolean.
pub fn network_body(verb: Verb, body: &[u8]) -> Result<NetworkBody, Refused> {
    let what = format!("a network {verb}");
    let object = json_object(body, &what)?;
    let named: Vec<&Value> = fields(&object, "Container").collect();
    let container = match named.as_slice() {
        [Value::String(c)] => target(c, "container")?,
        [] => return Err(Refused(format!("{what} must name its Container"))),
        _ => {
            return Err(Refused(format!(
                "{what} must name one Container, as one string"
            )));
        }
    };
    // Only a disconnect reads a Force; a connect's is dropped with the rest.
    let force = match fields(&object, "Force").collect::<Vec<_>>().as_slice() {
        _ if verb != Verb::Disconnect => None,
        [] | [Value::Null] => None,
        [Value::Bool(force)] => Some(*force),
        _ => {
            return Err(Refused(format!(
                "{what} may carry one Force, as true or false"
            )));
        }
    };
    Ok(NetworkBody { container, force })
}

/// A checked network connect/disconnect body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkBody {
    /// The container it names, as named.
    pub container: String,
    /// A disconnect's `Force`, when it has one.
    pub force: Option<bool>,
}

impl NetworkBody {
    /// The body to forward: `{"Container": id}`, and `Force` when a disconnect set it.
    pub fn with_container(&self, id: &str) -> Vec<u8> {
        let mut body = serde_json::json!({ "Container": id });
        if let Some(force) = self.force {
            body["Force"] = Value::Bool(force);
        }
        body.to_string().into_bytes()
    }
}

fn json_object(body: &[u8], what: &str) -> Result<Map<String, Value>, Refused> {
    let object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(Refused(format!("the body of {what} must be a JSON object"))),
        Err(e) => return Err(Refused(format!("the body of {what} is not JSON: {e}"))),
    };
    // The engine folds some non-ASCII letters onto ASCII ones when it matches field names;
    // the API has none, so a key that is not ASCII is only ever a way around a check.
    if let Some(key) = object.keys().find(|k| !k.is_ascii()) {
        return Err(Refused(format!(
            "the body of {what} has a field name that is not ASCII ({})",
            escape_for_display(key)
        )));
    }
    Ok(object)
}

/// Every value of `object` whose field name is `name` in any case.
fn fields<'a>(object: &'a Map<String, Value>, name: &'a str) -> impl Iterator<Item = &'a Value> {
    object
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn serialise(value: &Value) -> Result<Vec<u8>, Refused> {
    serde_json::to_vec(value).map_err(|e| Refused(format!("the body cannot be re-encoded: {e}")))
}

/// The oldest API version a request may name. Older versions read some bodies differently
/// (a start's body as a new host configuration, before 1.24).
pub const MIN_API_VERSION: &str = "1.24";

/// Whether `version` (`1.41`) is [`MIN_API_VERSION`] or newer.
fn recent_enough(version: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u32>> { v.split('.').map(|n| n.parse().ok()).collect() };
    match (parse(version), parse(MIN_API_VERSION)) {
        (Some(v), Some(min)) => v >= min,
        _ => false,
    }
}

/// `/v1.41/containers/json` → (`/v1.41`, `/containers/json`); no prefix → (``, path).
pub fn split_version(path: &str) -> (&str, &str) {
    if let Some(after) = path.strip_prefix("/v") {
        let end = after.find('/').unwrap_or(after.len());
        let number = &after[..end];
        if !number.is_empty()
            && number.starts_with(|c: char| c.is_ascii_digit())
            && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        {
            return path.split_at(2 + end);
        }
    }
    ("", path)
}

/// A container or network as a request names it: a name or an id (prefix), with Docker's
/// optional leading `/` dropped. Anything else (a `?`, a space, a `..`) could make the
/// inspect that resolves it ask about something other than what is acted on.
fn target(segment: &str, what: &str) -> Result<String, Refused> {
    let name = segment.strip_prefix('/').unwrap_or(segment);
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(Refused(format!(
            "{} is not a {what} name or id",
            escape_for_display(segment)
        )))
    }
}

/// Exec ids are the engine's hex ids.
fn exec_id(segment: &str) -> Result<String, Refused> {
    if !segment.is_empty() && segment.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(segment.to_string())
    } else {
        Err(Refused(format!(
            "{} is not an exec id",
            escape_for_display(segment)
        )))
    }
}

/// The one `ps_args` of a `top` query, if any; refused unless it is one of [`TOP_PS_ARGS`]
/// (an empty one is the engine's default, `-ef`).
fn top_ps_args(query: Option<&str>) -> Result<Option<String>, Refused> {
    let values: Vec<String> = form_pairs(query.unwrap_or(""))?
        .into_iter()
        .filter(|(k, _)| k == "ps_args")
        .map(|(_, v)| v)
        .collect();
    match values.as_slice() {
        [] => Ok(None),
        [v] if v.is_empty() => Ok(None),
        [v] if TOP_PS_ARGS.contains(&v.as_str()) => Ok(Some(v.clone())),
        [v] => Err(Refused(format!(
            "top with ps_args {} is not allowed (it may print every process's environment); \
             use one of {}",
            escape_for_display(v),
            TOP_PS_ARGS.join(", ")
        ))),
        _ => Err(Refused(
            "top with more than one ps_args is not allowed".into(),
        )),
    }
}

/// A query string's `key=value` pairs, decoded as a form (`+` is a space).
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, Refused> {
    let decode = |s: &str| {
        percent_decode(&s.replace('+', " ")).ok_or_else(|| {
            Refused(format!(
                "the query {} cannot be decoded",
                escape_for_display(query)
            ))
        })
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `%XX` escapes decoded; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, path: &str) -> Kind {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        classify(method, path, query)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
            .kind
    }

    fn refused(method: &str, path: &str) -> String {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        match classify(method, path, query) {
            Ok(r) => panic!("{method} {path} was allowed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_are_recognised_with_and_without_a_version_prefix() {
        for prefix in ["", "/v1.41", "/v1.24", "/v1.40.1", "/v2"] {
            let p = |s: &str| format!("{prefix}{s}");
            assert_eq!(kind("GET", &p("/_ping")), Kind::Ping);
            assert_eq!(kind("HEAD", &p("/_ping")), Kind::Ping);
            assert_eq!(kind("GET", &p("/version")), Kind::Global(Global::Version));
            assert_eq!(kind("GET", &p("/info")), Kind::Global(Global::Info));
            assert_eq!(kind("GET", &p("/events")), Kind::Global(Global::Events));
            assert_eq!(
                kind("GET", &p("/containers/json?all=1")),
                Kind::Global(Global::ContainerList)
            );
            assert_eq!(
                kind("GET", &p("/networks")),
                Kind::Global(Global::NetworkList)
            );
            assert_eq!(
                kind("GET", &p("/networks/c-net")),
                Kind::NetworkRead {
                    network: "c-net".into()
                }
            );
            for (segment, read) in [
                ("json", ContainerRead::Inspect),
                ("logs", ContainerRead::Logs),
                ("stats", ContainerRead::Stats),
                ("top", ContainerRead::Top { ps_args: None }),
            ] {
                assert_eq!(
                    kind("GET", &p(&format!("/containers/etcd1/{segment}"))),
                    Kind::ContainerRead {
                        container: "etcd1".into(),
                        read
                    }
                );
            }
            assert_eq!(
                kind("POST", &p("/containers/3f2a/wait?condition=not-running")),
                Kind::ContainerRead {
                    container: "3f2a".into(),
                    read: ContainerRead::Wait
                }
            );
        }
    }

    #[test]
    fn the_version_prefix_is_split_off_and_kept() {
        assert_eq!(split_version("/v1.41/info"), ("/v1.41", "/info"));
        assert_eq!(split_version("/v1/info"), ("/v1", "/info"));
        assert_eq!(split_version("/info"), ("", "/info"));
        assert_eq!(split_version("/version"), ("", "/version"));
        assert_eq!(split_version("/v1.41"), ("/v1.41", ""));
        assert_eq!(split_version("/vx/info"), ("", "/vx/info"));
        let r = classify("POST", "/v1.41/containers/etcd1/stop", Some("t=5")).unwrap();
        assert_eq!(r.version, "/v1.41");
        assert_eq!(
            forward_path(&r, &"a".repeat(64)),
            format!("/v1.41/containers/{}/stop?t=5", "a".repeat(64))
        );
    }

    #[test]
    fn api_versions_older_than_1_24_are_refused() {
        for version in ["1.23", "1.12", "0.9", "1", "1..2", "1.x"] {
            let path = format!("/v{version}/containers/m1/start");
            let why = classify("POST", &path, None).expect_err(&path).to_string();
            assert!(
                why.contains("API version") || why.contains("is not allowed"),
                "{path}: {why}"
            );
        }
        assert!(classify("POST", "/v1.24/containers/m1/start", None).is_ok());
        assert!(classify("POST", "/v1.41/containers/m1/start", None).is_ok());
    }

    #[test]
    fn a_change_forwards_only_the_first_value_of_the_parameters_its_verb_takes() {
        let id = "f".repeat(64);
        for (path, query, expected) in [
            (
                "/v1.41/containers/m1/stop",
                "t=5&signal=SIGTERM&x=1",
                "t=5&signal=TERM",
            ),
            ("/v1.41/containers/m1/restart", "t=0", "t=0"),
            (
                "/v1.41/containers/m1/kill",
                "signal=KILL&force=1",
                "signal=KILL",
            ),
            // The engine reads the first of a repeated parameter: only it is judged and sent.
            ("/v1.41/containers/m1/stop", "t=1&t=100", "t=1"),
            (
                "/v1.41/containers/m1/kill",
                "signal=TERM&signal=STOP",
                "signal=TERM",
            ),
            ("/v1.41/containers/m1/kill", "signal=&signal=STOP", ""),
            ("/v1.41/containers/m1/stop", "x=1&t=3&signal=", "t=3"),
            (
                "/v1.41/containers/m1/start",
                "checkpoint=c1&checkpoint-dir=/tmp",
                "",
            ),
            ("/v1.41/containers/m1/pause", "x=1", ""),
            ("/v1.41/containers/m1/exec", "x=1", ""),
            ("/v1.41/networks/n/connect", "x=1", ""),
        ] {
            let r = classify("POST", path, Some(query)).unwrap();
            let forwarded = forward_path(&r, &id);
            let expected_path = match expected {
                "" => path.replace("m1", &id).replace("/n/", &format!("/{id}/")),
                q => format!("{}?{q}", path.replace("m1", &id)),
            };
            assert_eq!(forwarded, expected_path, "{path}?{query}");
        }
        let exec = "a".repeat(64);
        let r = classify(
            "POST",
            &format!("/exec/{exec}/resize"),
            Some("h=40&w=80&x=1&h=1"),
        )
        .unwrap();
        assert_eq!(
            forward_path(&r, &exec),
            format!("/exec/{exec}/resize?h=40&w=80")
        );
        // Reads keep their query as sent.
        let r = classify("GET", "/v1.41/containers/m1/logs", Some("follow=1&tail=10")).unwrap();
        assert_eq!(
            forward_path(&r, &id),
            format!("/v1.41/containers/{id}/logs?follow=1&tail=10")
        );
    }

    #[test]
    fn a_kill_may_carry_only_a_signal_that_ends_the_process() {
        for (value, canonical) in [
            ("KILL", "KILL"),
            ("SIGKILL", "KILL"),
            ("sigkill", "KILL"),
            ("Kill", "KILL"),
            ("9", "KILL"),
            ("TERM", "TERM"),
            ("sigterm", "TERM"),
            ("15", "TERM"),
            ("INT", "INT"),
            ("SIGINT", "INT"),
            ("2", "INT"),
            ("quit", "QUIT"),
            ("SigQuit", "QUIT"),
            ("3", "QUIT"),
            ("SIG%4Bill", "KILL"),
        ] {
            let r = classify(
                "POST",
                "/containers/m1/kill",
                Some(&format!("signal={value}")),
            )
            .unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(r.query, Some(format!("signal={canonical}")), "{value}");
        }
        assert_eq!(
            classify("POST", "/containers/m1/kill", None).unwrap().query,
            None,
            "none: the engine's default, KILL"
        );
        for value in [
            "STOP",
            "SIGSTOP",
            "19",
            "TSTP",
            "20",
            "CONT",
            "18",
            "USR1",
            "SIGUSR2",
            "HUP",
            "1",
            "0",
            "-9",
            "09",
            "+9",
            " 9",
            "SIG9",
            "KILL2",
            "SIGKILLx",
            "WINCH",
            "sigk%C4%B1ll",
        ] {
            let why = classify(
                "POST",
                "/containers/m1/kill",
                Some(&format!("signal={value}")),
            )
            .expect_err(value)
            .to_string();
            assert!(
                why.contains("only a signal that ends the process"),
                "{value}: {why}"
            );
        }
        // A stop's signal (read by newer engines) is judged the same way.
        assert!(classify("POST", "/containers/m1/stop", Some("signal=STOP")).is_err());
        assert!(classify("POST", "/containers/m1/restart", Some("signal=HUP")).is_err());
        // The first value is judged, whatever follows.
        assert!(
            classify(
                "POST",
                "/containers/m1/kill",
                Some("signal=STOP&signal=KILL")
            )
            .is_err()
        );
    }

    #[test]
    fn a_stop_waits_at_most_a_minute() {
        for (t, forwarded) in [
            ("0", "t=0"),
            ("10", "t=10"),
            ("60", "t=60"),
            ("61", "t=60"),
            ("3600", "t=60"),
            ("99999999999999999999999", "t=60"),
            ("-1", "t=60"),
            ("-0", "t=0"),
            ("%2B5", "t=5"),
        ] {
            for verb in ["stop", "restart"] {
                let r = classify(
                    "POST",
                    &format!("/containers/m1/{verb}"),
                    Some(&format!("t={t}")),
                )
                .unwrap_or_else(|e| panic!("{t}: {e}"));
                assert_eq!(r.query.as_deref(), Some(forwarded), "{verb} t={t}");
            }
        }
        for t in ["x", "1.5", "-", "5s", "1;t=100", "+5"] {
            assert!(
                classify("POST", "/containers/m1/stop", Some(&format!("t={t}")))
                    .expect_err(t)
                    .to_string()
                    .contains("whole number of seconds")
            );
        }
        assert!(classify("POST", "/containers/m1/stop", Some("t=%zz")).is_err());
    }

    #[test]
    fn rename_is_refused_on_every_container() {
        for path in [
            "/v1.41/containers/m1/rename",
            "/containers/anything/rename",
            "/containers/a%3Fb/rename",
        ] {
            let why = refused("POST", &format!("{path}?name=x"));
            assert!(
                why.contains("rename is not allowed") && why.contains("second container"),
                "{path}: {why}"
            );
        }
    }

    #[test]
    fn on_a_group_member_exec_and_update_are_refused_and_the_rest_left_to_the_gate() {
        let exec = refused_on_member(Verb::Exec, "m1", "g").expect("exec refused");
        assert_eq!(
            exec.to_string(),
            "refused by operator: exec into m1, a member of quorum group g, could act on it \
             after the quorum gate looked; use logs, inspect and the typed tools"
        );
        let update = refused_on_member(Verb::Update, "m1", "g").expect("update refused");
        assert!(
            update
                .to_string()
                .contains("update of m1, a member of quorum group g, is not allowed"),
            "{update}"
        );
        for verb in [
            Verb::Start,
            Verb::Stop,
            Verb::Restart,
            Verb::Kill,
            Verb::Pause,
            Verb::Unpause,
            Verb::Connect,
            Verb::Disconnect,
        ] {
            assert_eq!(refused_on_member(verb, "m1", "g"), None, "{verb}");
        }
        assert!(refused_on_member(Verb::Exec, "m\r1", "g").is_some_and(|r| !r.0.contains('\r')));
    }

    #[test]
    fn only_checked_bodies_and_an_exec_start_s_are_read() {
        let change = |verb| Kind::ContainerChange {
            container: "c".into(),
            verb,
        };
        assert!(change(Verb::Exec).takes_body());
        assert!(change(Verb::Update).takes_body());
        assert!(!change(Verb::Stop).takes_body());
        assert!(!change(Verb::Start).takes_body());
        assert!(
            Kind::NetworkChange {
                network: "n".into(),
                verb: Verb::Connect
            }
            .takes_body()
        );
        let exec = |op| Kind::Exec {
            exec: "ab".into(),
            op,
        };
        assert!(exec(ExecOp::Start).takes_body());
        assert!(!exec(ExecOp::Resize).takes_body());
        assert!(!Kind::Global(Global::Events).takes_body());
        assert!(
            !Kind::ContainerRead {
                container: "c".into(),
                read: ContainerRead::Wait
            }
            .takes_body()
        );
    }

    #[test]
    fn only_update_exec_and_network_changes_carry_a_body() {
        for verb in [
            Verb::Start,
            Verb::Stop,
            Verb::Restart,
            Verb::Kill,
            Verb::Pause,
            Verb::Unpause,
        ] {
            assert!(!verb.takes_body(), "{verb}");
        }
        for verb in [Verb::Update, Verb::Exec, Verb::Connect, Verb::Disconnect] {
            assert!(verb.takes_body(), "{verb}");
        }
    }

    #[test]
    fn container_changes_name_their_verb_and_target() {
        for (segment, verb) in [
            ("start", Verb::Start),
            ("stop", Verb::Stop),
            ("restart", Verb::Restart),
            ("kill", Verb::Kill),
            ("pause", Verb::Pause),
            ("unpause", Verb::Unpause),
            ("update", Verb::Update),
            ("exec", Verb::Exec),
        ] {
            assert_eq!(
                kind("POST", &format!("/v1.41/containers/m1/{segment}")),
                Kind::ContainerChange {
                    container: "m1".into(),
                    verb
                }
            );
        }
        assert_eq!(
            kind("POST", "/networks/c-net/disconnect"),
            Kind::NetworkChange {
                network: "c-net".into(),
                verb: Verb::Disconnect
            }
        );
        assert_eq!(
            kind("POST", "/networks/c-net/connect"),
            Kind::NetworkChange {
                network: "c-net".into(),
                verb: Verb::Connect
            }
        );
    }

    #[test]
    fn only_stop_restart_kill_pause_and_disconnect_pass_the_gate() {
        let gated: Vec<Verb> = [
            Verb::Start,
            Verb::Stop,
            Verb::Restart,
            Verb::Kill,
            Verb::Pause,
            Verb::Unpause,
            Verb::Update,
            Verb::Exec,
            Verb::Connect,
            Verb::Disconnect,
        ]
        .into_iter()
        .filter(|v| v.disruptive())
        .collect();
        // Exec and update are refused on a member before the gate is asked.
        assert_eq!(
            gated,
            [
                Verb::Stop,
                Verb::Restart,
                Verb::Kill,
                Verb::Pause,
                Verb::Disconnect
            ]
        );
    }

    #[test]
    fn exec_endpoints_take_hex_ids_only() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            kind("POST", &format!("/v1.41/exec/{id}/start")),
            Kind::Exec {
                exec: id.clone(),
                op: ExecOp::Start
            }
        );
        assert_eq!(
            kind("POST", &format!("/exec/{id}/resize?h=40&w=80")),
            Kind::Exec {
                exec: id.clone(),
                op: ExecOp::Resize
            }
        );
        assert_eq!(
            kind("GET", &format!("/exec/{id}/json")),
            Kind::Exec {
                exec: id,
                op: ExecOp::Inspect
            }
        );
        assert!(refused("POST", "/exec/etcd1/start").contains("not an exec id"));
    }

    #[test]
    fn everything_else_is_refused_naming_the_endpoint_and_what_is_allowed() {
        for (method, path) in [
            ("POST", "/v1.41/containers/create?name=x"),
            ("DELETE", "/v1.41/containers/etcd1?force=1"),
            ("POST", "/containers/etcd1/attach?stream=1"),
            ("GET", "/containers/etcd1/archive?path=/etc"),
            ("PUT", "/containers/etcd1/archive?path=/"),
            ("HEAD", "/containers/etcd1/archive?path=/"),
            ("POST", "/commit?container=etcd1"),
            ("GET", "/containers/etcd1/export"),
            ("GET", "/containers/etcd1/changes"),
            ("POST", "/containers/prune"),
            ("GET", "/images/json"),
            ("POST", "/images/create?fromImage=x"),
            ("GET", "/volumes"),
            ("POST", "/volumes/create"),
            ("POST", "/build"),
            ("GET", "/plugins"),
            ("GET", "/swarm"),
            ("GET", "/services"),
            ("GET", "/secrets"),
            ("GET", "/configs"),
            ("GET", "/system/df"),
            ("GET", "/distribution/busybox/json"),
            ("POST", "/session"),
            ("POST", "/grpc"),
            ("POST", "/networks/create"),
            ("DELETE", "/networks/c-net"),
            ("POST", "/networks/prune"),
            ("POST", "/containers/etcd1/resize"),
            ("GET", "/containers/etcd1/stop"),
            ("POST", "/containers/json"),
            ("HEAD", "/version"),
            ("GET", "/containers/json/"),
            ("GET", "//containers/json"),
            ("GET", "/"),
            ("GET", ""),
            ("POST", "/v1.41/containers/etcd1/../../images/create"),
        ] {
            let why = refused(method, path);
            assert!(
                why.starts_with("refused by operator: ") && why.contains(" is not allowed: "),
                "{method} {path}: {why}"
            );
            assert!(why.contains("an agent may read"), "{why}");
        }
        assert!(refused("POST", "/v1.41/containers/create").contains("POST /containers/create"));
        assert!(refused("DELETE", "/v1.41/containers/x").contains("DELETE /containers/x"));
    }

    #[test]
    fn targets_that_could_resolve_to_something_else_are_refused() {
        for path in [
            "/containers/a%3Fb/stop",
            "/containers/a%20b/stop",
            "/containers/..%2Fimages/json",
            "/containers/.x/stop",
            "/containers/%0d/stop",
            "/containers/a%zz/stop",
            "/containers/%ff/stop",
        ] {
            let why = refused("POST", path);
            assert!(why.starts_with("refused by operator: "), "{path}: {why}");
            assert!(
                !why.contains('\r'),
                "control characters are escaped: {why:?}"
            );
        }
        // A decoded `/` splits the segment: not one of the endpoints.
        assert!(refused("POST", "/containers/a%2Fb/stop").contains("is not allowed"));
    }

    #[test]
    fn top_takes_no_ps_args_or_one_that_prints_no_environment() {
        for (query, expected) in [
            (None, None),
            (Some(""), None),
            (Some("ps_args="), None),
            (Some("ps_args=-ef"), Some("-ef")),
            (Some("ps_args=-f"), Some("-f")),
            (Some("ps_args=aux"), Some("aux")),
            (Some("ps_args=-aux"), Some("-aux")),
            (Some("ps_args=%2Def"), Some("-ef")),
        ] {
            let r = classify("GET", "/v1.41/containers/c/top", query).unwrap();
            assert_eq!(
                r.kind,
                Kind::ContainerRead {
                    container: "c".into(),
                    read: ContainerRead::Top {
                        ps_args: expected.map(str::to_string)
                    }
                },
                "{query:?}"
            );
            // Only the checked value is forwarded, whatever else the query held.
            let forwarded = forward_path(&r, "ID");
            match expected {
                Some(a) => assert_eq!(forwarded, format!("/v1.41/containers/ID/top?ps_args={a}")),
                None => assert_eq!(forwarded, "/v1.41/containers/ID/top"),
            }
        }
        for query in [
            "ps_args=aux+e",
            "ps_args=auxe",
            "ps_args=eww",
            "ps_args=e",
            "ps_args=-ef&ps_args=e",
            "ps%5Fargs=e",
            "ps_args=aux%20e",
        ] {
            let r = classify("GET", "/containers/c/top", Some(query));
            let why = r.expect_err(query).to_string();
            assert!(why.contains("ps_args"), "{query}: {why}");
        }
        assert!(
            classify("GET", "/containers/c/top", Some("ps_args=-ef%2"))
                .expect_err("broken escape")
                .to_string()
                .contains("cannot be decoded")
        );
    }

    #[test]
    fn observe_admits_reads_only_and_the_other_modes_admit_both() {
        let change = Kind::ContainerChange {
            container: "m1".into(),
            verb: Verb::Stop,
        };
        let net = Kind::NetworkChange {
            network: "n".into(),
            verb: Verb::Connect,
        };
        let start = Kind::Exec {
            exec: "ab".into(),
            op: ExecOp::Start,
        };
        let exec_read = Kind::Exec {
            exec: "ab".into(),
            op: ExecOp::Inspect,
        };
        let read = Kind::ContainerRead {
            container: "m1".into(),
            read: ContainerRead::Logs,
        };
        for k in [&change, &net, &start] {
            let why = admit(SafetyMode::Observe, k).expect_err("observe");
            assert_eq!(
                why.to_string(),
                "refused by operator: observe mode: only reads reach the engine"
            );
            assert_eq!(admit(SafetyMode::Approve, k), Ok(()));
            assert_eq!(admit(SafetyMode::Execute, k), Ok(()));
        }
        for k in [
            &read,
            &exec_read,
            &Kind::Ping,
            &Kind::Global(Global::Events),
        ] {
            for mode in [
                SafetyMode::Observe,
                SafetyMode::Approve,
                SafetyMode::Execute,
            ] {
                assert_eq!(admit(mode, k), Ok(()), "{k:?} in {mode}");
            }
        }
    }

    #[test]
    fn privileged_exec_is_refused_in_every_spelling() {
        let ok =
            exec_create_body(br#"{"Cmd":["echo","hi"],"AttachStdout":true,"Privileged":false}"#)
                .expect("not privileged");
        let forwarded: Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(forwarded["Cmd"], serde_json::json!(["echo", "hi"]));
        for body in [
            r#"{"Cmd":["sh"],"Privileged":true}"#,
            r#"{"Cmd":["sh"],"privileged":true}"#,
            r#"{"Cmd":["sh"],"PRIVILEGED":1}"#,
            r#"{"Cmd":["sh"],"Privileged":false,"privileged":true}"#,
            r#"{"Cmd":["sh"],"Privileged":"true"}"#,
        ] {
            let why = exec_create_body(body.as_bytes())
                .expect_err(body)
                .to_string();
            assert!(why.contains("privileged exec"), "{body}: {why}");
        }
        // A repeated field: the last one counts, here as in the engine, and only it is sent.
        let repeated = exec_create_body(br#"{"Cmd":["sh"],"Privileged":true,"Privileged":false}"#)
            .expect("the last Privileged is false");
        assert_eq!(
            String::from_utf8(repeated).unwrap(),
            r#"{"Cmd":["sh"],"Privileged":false}"#
        );
        // A non-ASCII key the engine might fold onto an ASCII one.
        let why = exec_create_body("{\"Cmd\":[\"sh\"],\"Pr\u{0131}vileged\":true}".as_bytes())
            .expect_err("non-ASCII key")
            .to_string();
        assert!(why.contains("not ASCII"), "{why}");
        for body in ["", "[]", "not json", "\"Privileged\""] {
            assert!(exec_create_body(body.as_bytes()).is_err(), "{body:?}");
        }
    }

    #[test]
    fn an_exec_that_would_reach_past_its_container_is_named() {
        let socket = std::path::Path::new("/var/run/docker.sock");
        let own = Isolation {
            network_mode: "c-net".into(),
            pid_mode: String::new(),
            ipc_mode: "private".into(),
            ..Isolation::default()
        };
        assert_eq!(exec_reach(&own, socket), None);
        for network in ["default", "bridge", "none", "c-net"] {
            let mode = Isolation {
                network_mode: network.into(),
                ipc_mode: "shareable".into(),
                ..own.clone()
            };
            assert_eq!(exec_reach(&mode, socket), None, "{network}");
        }
        let data = Isolation {
            mounts: vec!["/srv/data".to_string(), "/var/lib/app".to_string()],
            ..own.clone()
        };
        assert_eq!(exec_reach(&data, socket), None);
        let reach = |isolation: Isolation| exec_reach(&isolation, socket).unwrap_or_default();
        assert!(
            reach(Isolation {
                privileged: true,
                ..own.clone()
            })
            .contains("privileged")
        );
        for (isolation, expected) in [
            (
                Isolation {
                    network_mode: "host".into(),
                    ..own.clone()
                },
                "the host's network namespace (network host)",
            ),
            (
                Isolation {
                    network_mode: "container:3f2a".into(),
                    ..own.clone()
                },
                "another container's network namespace (network container:3f2a)",
            ),
            (
                Isolation {
                    pid_mode: "host".into(),
                    ..own.clone()
                },
                "the host's pid namespace (pid host)",
            ),
            (
                Isolation {
                    pid_mode: "container:m1".into(),
                    ..own.clone()
                },
                "another container's pid namespace",
            ),
            (
                Isolation {
                    ipc_mode: "host".into(),
                    ..own.clone()
                },
                "the host's ipc namespace (ipc host)",
            ),
            (
                Isolation {
                    ipc_mode: "container:m1".into(),
                    ..own.clone()
                },
                "another container's ipc namespace",
            ),
        ] {
            let why = reach(isolation.clone());
            assert!(why.contains(expected), "{isolation:?}: {why}");
        }
        for source in [
            "/var/run/docker.sock",
            "/var/run",
            "/run",
            "/",
            "/srv/engine/docker.sock",
            "/run/containerd/containerd.sock",
            "/custom",
        ] {
            let mounted = Isolation {
                mounts: vec![source.to_string()],
                ..own.clone()
            };
            let why = exec_reach(&mounted, std::path::Path::new("/custom/engine.sock"));
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.contains("the engine's socket")),
                "{source}: {why:?}"
            );
        }
    }

    #[test]
    fn a_network_body_is_forwarded_as_its_container_alone() {
        let body = network_body(
            Verb::Connect,
            br#"{"Container":"web","EndpointConfig":{"Aliases":["m1"],"Links":["m1:db"],"IPAMConfig":{"IPv4Address":"10.0.0.9"},"DriverOpts":{"x":"y"}},"Force":true}"#,
        )
        .expect("one container");
        assert_eq!(body.container, "web");
        assert_eq!(body.force, None, "a connect has no Force");
        let forwarded: Value = serde_json::from_slice(&body.with_container("0123abcd")).unwrap();
        assert_eq!(forwarded, serde_json::json!({"Container": "0123abcd"}));
        // Any case, and Docker's optional leading slash on a name; a disconnect's Force.
        let lower = network_body(
            Verb::Disconnect,
            br#"{"container":"/web","force":true,"EndpointConfig":{}}"#,
        )
        .expect("any case");
        assert_eq!(lower.container, "web");
        let forwarded: Value = serde_json::from_slice(&lower.with_container("ID")).unwrap();
        assert_eq!(
            forwarded,
            serde_json::json!({"Container": "ID", "Force": true})
        );
        let unforced = network_body(Verb::Disconnect, br#"{"Container":"web","Force":null}"#)
            .expect("a null Force");
        assert_eq!(unforced.with_container("ID"), br#"{"Container":"ID"}"#);
        for body in [
            r#"{}"#,
            r#"{"Container":"a","container":"b"}"#,
            r#"{"Container":1}"#,
            r#"{"Container":"a?b"}"#,
            r#"[]"#,
        ] {
            assert!(
                network_body(Verb::Connect, body.as_bytes()).is_err(),
                "{body}"
            );
        }
        for body in [
            r#"{"Container":"a","Force":"true"}"#,
            r#"{"Container":"a","Force":true,"force":false}"#,
        ] {
            assert!(
                network_body(Verb::Disconnect, body.as_bytes()).is_err(),
                "{body}"
            );
        }
    }
}
