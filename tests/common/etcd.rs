//! N etcd members (Debian's `/usr/bin/etcd`, 3.4) run by the controller: one builder for
//! their manifest, a `/health` probe and a background sampler of the group's health.
//!
//! Each member is the service `<cluster>-e<i>`: [`EMPTY_IMAGE`] with the host's system
//! folders bind-mounted read-only, on host networking, with a client and a peer port of its
//! own on loopback ([`free_port`]); `--data-dir /data` is in the container's writable layer
//! unless the test mounts a volume there ([`Members::member_volumes`]).
//!
//! ```ignore
//! let b = Fixture::builder("quorum");
//! let members = Members::new(b.cluster(), 3);
//! let spec = members.groups_yaml("members", "majority");
//! let f = b
//!     .manifest("cluster.yaml", |_| members.manifest(&spec))
//!     .run_once()
//!     .manifest("cluster.yaml", |_| members.clone().observe(&[0]).manifest(&spec))
//!     .start();
//! assert!(members.wait_healthy(Duration::from_secs(60)), "{}", members.logs(5));
//! let sampler = members.sampler();
//! // ... break something ...
//! let samples = sampler.stop();
//! assert_eq!(samples.fraction_with_quorum(2), 1.0, "{samples:?}");
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::operator::wait_until;
use super::{EMPTY_IMAGE, cluster_yaml, docker, free_port};

/// The host's system folders, read-only: what runs `/usr/bin/etcd` in [`EMPTY_IMAGE`].
const HOST_MOUNTS: [&str; 5] = [
    "/usr:/usr:ro",
    "/lib:/lib:ro",
    "/lib64:/lib64:ro",
    "/bin:/bin:ro",
    "/etc:/etc:ro",
];

/// Connect and read timeout of one [`health`] probe.
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);
/// How often a [`HealthSampler`] looks at every member.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// A member's `remediation.policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Restart,
    Observe,
    Agent,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Restart => "restart",
            Policy::Observe => "observe",
            Policy::Agent => "agent",
        }
    }
}

/// What one member's service block says beyond its ports and name.
#[derive(Clone, Debug)]
pub struct Member {
    /// `remediation.policy` (default `restart`).
    pub policy: Policy,
    /// `remediation.backoff.initial` and `.max` (default `200ms`, `2s`).
    pub backoff: (String, String),
    /// Appended to etcd's command, e.g. `--heartbeat-interval=150`.
    pub extra_args: Vec<String>,
    /// Appended to the read-only host mounts, e.g. `/tmp/x/e0:/data`.
    pub volumes: Vec<String>,
}

impl Default for Member {
    fn default() -> Self {
        Member {
            policy: Policy::Restart,
            backoff: ("200ms".into(), "2s".into()),
            extra_args: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

/// N etcd members of one cluster, forming one Raft group (`--initial-cluster-state new`,
/// the cluster name as the cluster token). Cheap to clone: change a clone with the builder
/// methods to write a second version of the manifest (e.g. one member only observed).
#[derive(Clone, Debug)]
pub struct Members {
    /// `metadata.name` of the cluster; also etcd's `--initial-cluster-token`.
    pub cluster: String,
    /// Client ports (`http://127.0.0.1:PORT`, `/health`, `/metrics`), one per member.
    pub client: Vec<u16>,
    /// Peer ports, one per member.
    pub peer: Vec<u16>,
    /// Per member: policy, backoff, extra arguments and volumes.
    pub members: Vec<Member>,
}

impl Members {
    /// `n` members of `cluster`, each with a free client and peer port, all under
    /// `policy: restart` with backoff 200ms..2s.
    pub fn new(cluster: &str, n: usize) -> Members {
        assert!(n >= 1, "an etcd group needs a member");
        let client = (0..n).map(|_| free_port()).collect();
        let peer = (0..n).map(|_| free_port()).collect();
        Members {
            cluster: cluster.to_string(),
            client,
            peer,
            members: vec![Member::default(); n],
        }
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `<cluster>-e<i>`: member `i`'s service and container name.
    pub fn name(&self, i: usize) -> String {
        format!("{}-e{i}", self.cluster)
    }

    /// Every member's service name, in order.
    pub fn names(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.name(i)).collect()
    }

    /// `http://127.0.0.1:PORT` of member `i`'s client port.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client[i])
    }

    /// etcd's `--initial-cluster`: `e0=http://127.0.0.1:PEER0,e1=...`.
    pub fn initial_cluster(&self) -> String {
        (0..self.len())
            .map(|i| format!("e{i}=http://127.0.0.1:{}", self.peer[i]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i` under `policy`.
    pub fn policy(mut self, i: usize, policy: Policy) -> Self {
        self.members[i].policy = policy;
        self
    }

    /// These members under `policy: observe` (e.g. `observe.as_slice()` of an
    /// `Option<usize>`); the others keep theirs.
    pub fn observe(mut self, members: &[usize]) -> Self {
        for &i in members {
            self.members[i].policy = Policy::Observe;
        }
        self
    }

    /// Every member's `remediation.backoff` (`initial`, `max`: durations such as `1s`).
    pub fn backoff(mut self, initial: &str, max: &str) -> Self {
        for m in &mut self.members {
            m.backoff = (initial.into(), max.into());
        }
        self
    }

    /// Member `i`'s `remediation.backoff`.
    pub fn member_backoff(mut self, i: usize, initial: &str, max: &str) -> Self {
        self.members[i].backoff = (initial.into(), max.into());
        self
    }

    /// Appends `args` to every member's etcd command (a changed spec: a rollout).
    pub fn extra_args(mut self, args: &[&str]) -> Self {
        for m in &mut self.members {
            m.extra_args.extend(args.iter().map(|a| a.to_string()));
        }
        self
    }

    /// Appends `args` to member `i`'s etcd command.
    pub fn member_extra_args(mut self, i: usize, args: &[&str]) -> Self {
        self.members[i]
            .extra_args
            .extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Adds `volumes` (`source:target[:ro|:rw]`) to every member.
    pub fn volumes(mut self, volumes: &[&str]) -> Self {
        for m in &mut self.members {
            m.volumes.extend(volumes.iter().map(|v| v.to_string()));
        }
        self
    }

    /// Adds `volumes` to member `i`, e.g. `"/tmp/x/e0:/data"` to keep its data across a
    /// recreate. Prefer a bind mount in the test's folder: a named volume the engine
    /// creates on the fly carries no label, so no [`super::Cleanup`] removes it.
    pub fn member_volumes(mut self, i: usize, volumes: &[&str]) -> Self {
        self.members[i]
            .volumes
            .extend(volumes.iter().map(|v| v.to_string()));
        self
    }

    /// Member `i`'s list item under `spec.services` (indented by 4 spaces, ending in a
    /// newline).
    pub fn service_yaml(&self, i: usize) -> String {
        let m = &self.members[i];
        let (c, p) = (self.client[i], self.peer[i]);
        let volumes: Vec<String> = HOST_MOUNTS
            .iter()
            .map(|v| v.to_string())
            .chain(m.volumes.iter().cloned())
            .map(|v| quote(&v))
            .collect();
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let mut command: Vec<String> = vec![
            "/usr/bin/etcd".to_string(),
            "--name".into(),
            format!("e{i}"),
            "--data-dir".into(),
            "/data".into(),
            "--listen-client-urls".into(),
            url(c),
            "--advertise-client-urls".into(),
            url(c),
            "--listen-peer-urls".into(),
            url(p),
            "--initial-advertise-peer-urls".into(),
            url(p),
            "--initial-cluster".into(),
            self.initial_cluster(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            self.cluster.clone(),
        ];
        command.extend(m.extra_args.iter().cloned());
        let command: Vec<String> = command.iter().map(|a| quote(a)).collect();
        format!(
            "    - name: {name}\n      image: {EMPTY_IMAGE}\n      networkMode: host\n      volumes: [{volumes}]\n      command: [{command}]\n      remediation:\n        policy: {policy}\n        backoff: {{initial: {initial}, max: {max}}}\n",
            name = self.name(i),
            volumes = volumes.join(", "),
            command = command.join(", "),
            policy = m.policy.as_str(),
            initial = m.backoff.0,
            max = m.backoff.1,
        )
    }

    /// Every member's list item under `spec.services`, in order.
    pub fn services_yaml(&self) -> String {
        (0..self.len()).map(|i| self.service_yaml(i)).collect()
    }

    /// A `spec.groups` section (2-space indent, ending in a newline) with one group `name`
    /// of every member; `quorum`: `majority` or a number.
    pub fn groups_yaml(&self, name: &str, quorum: &str) -> String {
        format!(
            "  groups:\n    - name: {name}\n      members: [{}]\n      quorum: {quorum}\n",
            self.names().join(", ")
        )
    }

    /// The inside of a check's `services:` map from Prometheus' `instance` label to the
    /// member: `"127.0.0.1:PORT0": <cluster>-e0, ...` (write `services: {{{map}}}`).
    pub fn instance_map(&self) -> String {
        (0..self.len())
            .map(|i| format!("\"127.0.0.1:{}\": {}", self.client[i], self.name(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The whole Cluster document: the members under `spec.services`, then `extra_spec`
    /// verbatim (spec sections indented by 2 spaces, such as `  checks:`, `  groups:`,
    /// `  prometheus: ...`, each line ending in a newline).
    pub fn manifest(&self, extra_spec: &str) -> String {
        cluster_yaml(&self.cluster, &self.services_yaml()) + extra_spec
    }

    /// How many members answer `/health` true now (probed one after the other).
    pub fn healthy_count(&self) -> usize {
        self.client.iter().filter(|&&p| health(p)).count()
    }

    /// Waits (at most `timeout`) until every member answers `/health` true.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.healthy_count() == self.len())
    }

    /// A [`HealthSampler`] of every member, started now.
    pub fn sampler(&self) -> HealthSampler {
        HealthSampler::start(&self.client)
    }

    /// The last `tail` lines of every member's log (etcd logs to stderr), for assertion
    /// messages.
    pub fn logs(&self, tail: usize) -> String {
        let tail = tail.to_string();
        self.names()
            .iter()
            .map(|name| {
                let out = docker(&["logs", "--tail", &tail, name]);
                format!(
                    "--- {name}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A YAML double-quoted scalar (a JSON string is one).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// What one `/health` probe of a member saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// 200 with `{"health": "true"}`.
    Healthy,
    /// The member is there but not healthy: it answered anything else (503 while it has no
    /// leader, say), or took the connection and did not answer within [`HEALTH_TIMEOUT`]
    /// (frozen, or waiting on Raft: etcd 3.4's `/health` is a quorum read of up to 1 s, so
    /// every member of a healthy group answers late for a moment while leadership moves).
    Unhealthy,
    /// Nothing serves the port: refused, or closed or reset before a byte of an answer (a
    /// stopped, removed or not yet started member on host networking).
    Down,
}

/// `GET http://127.0.0.1:PORT/health` with [`HEALTH_TIMEOUT`] to connect and to read: true
/// iff the answer is 200 with a JSON body whose `health` is `"true"`. Anything else (refused,
/// timed out, 503, no leader, garbage) is false.
pub fn health(client_port: u16) -> bool {
    probe(client_port) == Probe::Healthy
}

/// One `/health` probe of the member on `client_port`, told apart as [`Probe`] says.
pub fn probe(client_port: u16) -> Probe {
    let addr = SocketAddr::from(([127, 0, 0, 1], client_port));
    let mut stream = match TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT) {
        Ok(stream) => stream,
        // A full backlog on loopback: something holds the port but does not accept.
        Err(e) if e.kind() == ErrorKind::TimedOut => return Probe::Unhealthy,
        Err(_) => return Probe::Down,
    };
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    if stream.set_write_timeout(Some(HEALTH_TIMEOUT)).is_err() {
        return Probe::Unhealthy;
    }
    // HTTP/1.0: the server closes after one answer and never chunks it.
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{client_port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Probe::Down;
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Probe::Unhealthy;
        }
        match stream.read(&mut buf) {
            Ok(0) if response.is_empty() => return Probe::Down,
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Probe::Unhealthy;
            }
            Err(_) if response.is_empty() => return Probe::Down,
            Err(_) => return Probe::Unhealthy,
        }
        if response.len() > 64 * 1024 {
            return Probe::Unhealthy;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Probe::Unhealthy;
    };
    let status = head.lines().next().unwrap_or_default();
    let healthy = status.split_whitespace().nth(1) == Some("200")
        && serde_json::from_str::<serde_json::Value>(body.trim())
            .is_ok_and(|v| v["health"] == "true");
    if healthy {
        Probe::Healthy
    } else {
        Probe::Unhealthy
    }
}

/// A background thread probing `/health` of every member (all at once) every
/// [`SAMPLE_INTERVAL`] until [`HealthSampler::stop`]; dropping it stops and joins the thread
/// too.
pub struct HealthSampler {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Vec<Vec<Probe>>>>,
    members: usize,
}

impl HealthSampler {
    /// Starts sampling the members listening on these client ports.
    pub fn start(client_ports: &[u16]) -> HealthSampler {
        let ports = client_ports.to_vec();
        let members = ports.len();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("etcd-health-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                loop {
                    let started = Instant::now();
                    let sample = std::thread::scope(|s| {
                        let probes: Vec<_> =
                            ports.iter().map(|&p| s.spawn(move || probe(p))).collect();
                        probes
                            .into_iter()
                            .map(|h| h.join().unwrap_or(Probe::Unhealthy))
                            .collect::<Vec<_>>()
                    });
                    samples.push(sample);
                    let wait = SAMPLE_INTERVAL.saturating_sub(started.elapsed());
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Stopped, or the sampler was dropped.
                        _ => break samples,
                    }
                }
            })
            .expect("start the health sampler");
        HealthSampler {
            stop: Some(stop),
            thread: Some(thread),
            members,
        }
    }

    /// Stops the thread (after the sample in flight) and returns what it saw.
    pub fn stop(mut self) -> Samples {
        Samples {
            probes: self.finish(),
            members: self.members,
        }
    }

    fn finish(&mut self) -> Vec<Vec<Probe>> {
        drop(self.stop.take());
        self.thread
            .take()
            .map(|t| t.join().expect("the health sampler panicked"))
            .unwrap_or_default()
    }
}

impl Drop for HealthSampler {
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.stop.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// What a [`HealthSampler`] saw: each member's [`Probe`] at each sample instant.
#[derive(Clone)]
pub struct Samples {
    /// Each member's probe at each sample, in order.
    pub probes: Vec<Vec<Probe>>,
    /// How many members were probed at each sample.
    pub members: usize,
}

impl Samples {
    /// How many samples were taken.
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// How many members were `probe` at each sample, in order.
    fn count(&self, probe: Probe) -> impl Iterator<Item = usize> + '_ {
        self.probes
            .iter()
            .map(move |sample| sample.iter().filter(|&&p| p == probe).count())
    }

    /// The share of samples (0.0 to 1.0) with at least `needed` healthy members; 0.0 when
    /// nothing was sampled.
    pub fn fraction_with_quorum(&self, needed: usize) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let ok = self.count(Probe::Healthy).filter(|&h| h >= needed).count();
        ok as f64 / self.len() as f64
    }

    /// The fewest healthy members at any sample (0 when nothing was sampled).
    pub fn min_healthy(&self) -> usize {
        self.count(Probe::Healthy).min().unwrap_or(0)
    }

    /// The most members down at once at any sample (0 when nothing was sampled).
    pub fn max_down(&self) -> usize {
        self.count(Probe::Down).max().unwrap_or(0)
    }

    /// Whether member `i` was down at some sample.
    pub fn saw_down(&self, i: usize) -> bool {
        self.probes.iter().any(|s| s.get(i) == Some(&Probe::Down))
    }

    /// The most healthy members at any sample (0 when nothing was sampled).
    pub fn max_healthy(&self) -> usize {
        self.count(Probe::Healthy).max().unwrap_or(0)
    }
}

/// One line per sample (`H` healthy, `u` unhealthy, `.` down, a column per member), run
/// together where samples repeat: `HHH x40, HuH, H.H x12, ...`. Readable in a failed
/// assertion, unlike a few hundred numbers.
impl std::fmt::Debug for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |s: &Vec<Probe>| -> String {
            s.iter()
                .map(|p| match p {
                    Probe::Healthy => 'H',
                    Probe::Unhealthy => 'u',
                    Probe::Down => '.',
                })
                .collect()
        };
        let mut runs: Vec<(String, usize)> = Vec::new();
        for sample in &self.probes {
            let r = row(sample);
            match runs.last_mut() {
                Some((last, n)) if *last == r => *n += 1,
                _ => runs.push((r, 1)),
            }
        }
        let text: Vec<String> = runs
            .iter()
            .map(|(r, n)| {
                if *n == 1 {
                    r.clone()
                } else {
                    format!("{r} x{n}")
                }
            })
            .collect();
        write!(
            f,
            "{} samples of {} members: {}",
            self.probes.len(),
            self.members,
            text.join(", ")
        )
    }
}
