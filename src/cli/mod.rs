//! The command line: argument definitions and the commands' printing. The library modules
//! never print; everything a person reads is formed here.

mod agent;
mod audit;
mod chaos;
mod companions;
mod healthcheck;
mod import;
mod logging;
mod reload;
mod report;
mod run;
mod table;
mod tickets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use logging::LogFormat;

const AFTER_HELP: &str = "\
Manifests are YAML files (or folders of them) declaring `kind: Cluster` resources; see
docs/manifests.md. The controller only touches containers labelled operator.managed-by=operator.

Examples:
  operator validate manifests/examples       check manifests without touching Docker
  operator validate --strict manifests       in CI: a Prometheus that cannot be asked is an error
  operator plan manifests/examples           what a reconcile would do now
  operator run manifests/examples            keep the cluster in its declared state
  operator run manifests/examples --once     one repair pass, then exit
  operator status manifests/examples --json  desired against observed, for scripts
  operator tickets list --status open        what is broken now, and what was done
  operator tickets show 12                   one ticket with its timeline
  operator audit list --since 1d             what agent sessions ran, and the verdicts
  operator audit show SESSION                every step of one session: commands, results
  operator chaos cleanup                     undo the faults a killed drill left behind
  operator import compose compose.yaml -o manifests   a manifest from a compose file

The Docker engine is found through DOCKER_HOST or the default socket.";

/// The version and the commit it was built from (`operator --version`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OPERATOR_COMMIT"),
    ")"
);

/// A reconciling controller for plain Docker: keeps containers in the state YAML manifests declare.
#[derive(Debug, Parser)]
#[command(name = "operator", version = VERSION, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OPERATOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax, e.g. `info` or `operator=debug`) [default: RUST_LOG, else info].
    #[arg(long, global = true, env = "OPERATOR_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch Docker and keep every declared service in its desired state.
    ///
    /// Lists the owned containers, follows the Docker event stream, and repairs drift
    /// (missing, stopped, paused, unhealthy, changed spec, detached network) with per-service
    /// exponential backoff and a restart budget. Edits to the manifests are picked up while it
    /// runs (checked every 2 s, or at once on SIGHUP); an invalid edit is logged and the last
    /// good state kept. SIGINT/SIGTERM finish in-flight repairs, then exit.
    Run(RunArgs),
    /// Check manifests: syntax, fields, durations, ports, volumes, dependencies, checks.
    ///
    /// Never touches Docker. Every PromQL query is parsed, offline: one that does not parse
    /// is an error at its line with no Prometheus running. When a cluster's Prometheus
    /// answers, its check expressions are also evaluated once, so what that Prometheus
    /// version refuses is an error now, not at 3 a.m.; when it cannot be asked, that is a
    /// note (exit 0), or an error with --strict.
    Validate(ValidateArgs),
    /// Show what a reconcile would do now, changing nothing.
    Plan(StatusArgs),
    /// Show each declared service, desired against observed, one row a service.
    ///
    /// With --watch, a live view redrawn every --interval until Ctrl-C: the services (with
    /// what the quorum gate holds back), the checks, the open tickets and the agent sessions
    /// still running.
    #[command(after_help = "Examples:
  operator status manifests/examples               once
  operator status manifests/examples --watch       the live view, redrawn every second
  operator status manifests/examples --json        for scripts")]
    Status(StatusCommandArgs),
    /// Read and act on tickets: one per drift episode, with what was seen and done.
    #[command(subcommand)]
    Tickets(TicketsCommand),
    /// Read what agent sessions did: every model message, command, result and decision.
    ///
    /// Each session is recorded step by step in the ticket database (and in a JSON file
    /// under `sessions/` beside it), secrets redacted. The model's closing words are kept
    /// as its claim; only the controller's re-check (the verdict) resolves a ticket.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run agent sessions for a controller started with `--agent-dispatch external`.
    ///
    /// The split deployment: the controller (no API key) decides and queues; this process
    /// (with ANTHROPIC_API_KEY, e.g. in its own container with the shell) takes requests from
    /// the same ticket database, claims their tickets (a lease: two dispatchers never run one
    /// ticket, and one that dies frees it after --agent-claim-ttl) and runs the sessions.
    /// Only the controller re-checks and resolves. SIGINT/SIGTERM cancel a running session.
    Agent(AgentCommandArgs),
    /// Chaos drills: break a managed cluster on purpose and undo every fault afterwards.
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Write manifests from other tools' files.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Print a shell completion script for operator's commands, flags and values.
    #[command(after_help = "Examples:
  operator completions bash > /etc/bash_completion.d/operator
  operator completions zsh > \"${fpath[1]}/_operator\"
  operator completions fish > ~/.config/fish/completions/operator.fish
  source <(operator completions bash)          just for this shell")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Ask a running controller's /healthz: exit 0 when it answers healthy, 1 otherwise.
    ///
    /// For a container HEALTHCHECK that needs no curl in the image, or a script's check
    /// before it goes on. A controller listening on 0.0.0.0 is asked on 127.0.0.1.
    #[command(after_help = "Examples:
  operator healthcheck                                the controller on 127.0.0.1:9464
  operator healthcheck --listen 127.0.0.1:19464 --timeout 2s")]
    Healthcheck(HealthcheckArgs),
    /// Print the JSON Schema of a file format, for editors: completion, hover and checking.
    ///
    /// `manifest` is a cluster manifest (`kind: Cluster`), `drill` a chaos drill file
    /// (`kind: Drill`). The schema is generated from the types the loader reads the files
    /// into, so it knows every field, refuses unknown and missing ones, and lists the
    /// allowed values; it is never stricter than the loader. It cannot check what needs
    /// the whole file or the cluster (names that must exist, ports, volumes, ranges between
    /// fields): `operator validate` and `operator chaos validate` still have the last word.
    ///
    /// With yaml-language-server (VS Code's YAML extension, Neovim, Helix, ...), save the
    /// schema to a file and point the editor at it, either per file with a first line
    /// `# yaml-language-server: $schema=PATH` (a path relative to the YAML file, or a URL),
    /// or per folder in VS Code's settings.json:
    /// `"yaml.schemas": {"/abs/path/manifest.schema.json": "manifests/**/*.yaml"}`.
    /// See docs/manifests.md and docs/chaos.md.
    #[command(after_help = "Examples:
  operator schema manifest > manifest.schema.json
  operator schema drill > drill.schema.json
  # first line of a manifest, the schema beside it:
  # yaml-language-server: $schema=./manifest.schema.json")]
    Schema {
        /// Which file format.
        #[arg(value_enum)]
        format: SchemaFormat,
    },
    /// Print the man page operator(1), or write one page per command into a folder.
    #[command(after_help = "Examples:
  operator man | man -l -                      read it now
  operator man --dir /usr/local/share/man/man1 operator.1, operator-run.1, operator-tickets-retry.1, ...")]
    Man {
        /// Write operator.1 and a page per command (operator-tickets-retry.1, ...) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// The file formats `operator schema` describes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SchemaFormat {
    /// A cluster manifest (`kind: Cluster`, docs/manifests.md).
    Manifest,
    /// A chaos drill file (`kind: Drill`, docs/chaos.md).
    Drill,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A manifest from Docker Compose files: one `kind: Cluster` for the project.
    ///
    /// Later files override earlier ones, as with `docker-compose -f A -f B`. Carried over:
    /// services, image, command, entrypoint, environment, ports, volumes (relative binds
    /// resolved against the first file's folder, named volumes by their name in the
    /// engine), the network (compose's default network joined as `external: true`),
    /// healthcheck, depends_on, restart (as the controller's remediation), labels,
    /// stop_grace_period, stop_signal and container_name. Every other key is named in a
    /// comment at its service, with why. `${VARIABLES}` are substituted from the
    /// environment and the first file's folder's .env, as compose does. The manifest is
    /// checked as `operator validate` would; exit 1 if it does not pass (it is still
    /// written, to be fixed).
    ///
    /// The project name: --project, else the files' top-level `name:`, else the first
    /// file's folder name (lowercased, [a-z0-9_-] only), as compose chooses it.
    #[command(after_help = "Examples:
  operator import compose docker/tikv/compose.yaml                 the manifest on standard output
  operator import compose docker/tikv/compose.yaml -o manifests    manifests/tikv.yaml
  operator import compose compose.yaml compose.prod.yaml -o out --project shop --force")]
    Compose(ImportComposeArgs),
}

#[derive(Debug, Args)]
pub struct ImportComposeArgs {
    /// Compose files, in override order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Write DIR/<project>.yaml (the folder is made if missing) instead of standard output;
    /// bind mounts are then written relative to DIR where they can be.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// The compose project's name (the cluster's name, and `<project>_default`, its
    /// network).
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// Overwrite DIR/<project>.yaml if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Run a drill: check the steady state, then per trial start the workload, inject the
    /// faults, wait for recovery, and measure time to detect and to recover from the ticket
    /// database. Writes journal.json, report.md and two SVG charts.
    ///
    /// Starts its own controller (`operator run MANIFEST`) when none owns the database, and
    /// stops it at the end; otherwise uses the running one. Every fault is undone whatever
    /// happens (Ctrl-C, SIGTERM and SIGHUP included); a killed run is undone by `chaos
    /// cleanup` or the next controller start. One drill at a time per cluster. Exit 0 when
    /// every trial passed, 1 otherwise.
    #[command(after_help = "Examples:
  operator chaos run chaos/etcd/kill-member.yaml
  operator chaos run chaos/etcd/kill-member.yaml --trials 5 --baseline   side by side with the engine alone
  operator chaos run chaos/etcd/freeze-member.yaml --seed 42 --report /tmp/freeze
  operator chaos run chaos/etcd/kill-member.yaml --json | jq .summary")]
    Run(ChaosRunArgs),
    /// Check drill files (and their manifests) without touching anything.
    #[command(after_help = "Examples:
  operator chaos validate chaos/etcd/*.yaml")]
    Validate {
        #[arg(required = true, value_name = "DRILL")]
        drills: Vec<PathBuf>,
    },
    /// Render a run's report again from its journal (a report folder or its journal.json).
    #[command(after_help = "Examples:
  operator chaos report ~/.operator/chaos/20261201T101500Z-1a2b3c4d
  operator chaos report ~/.operator/chaos/20261201T101500Z-1a2b3c4d --json   the summary as JSON")]
    Report {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print the summary (per remediation: success rate, TTD and TTR percentiles, lost
        /// writes) as JSON instead of the file list.
        #[arg(long)]
        json: bool,
    },
    /// List past runs (newest first) from the report folders beside the database.
    #[command(after_help = "Examples:
  operator chaos list
  operator chaos list --json | jq '.[0]'")]
    List {
        /// Where the runs' folders are [default: chaos/ beside the database].
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Undo the faults drills left behind (a drill killed mid-fault), from the fault ledger
    /// in the ticket database; each undone fault is printed.
    ///
    /// Only the faults of runs whose runner is gone (its pid and start time) are undone,
    /// unless --force. Exit 1 if a fault could not be undone. The controller does the same
    /// at its start.
    #[command(after_help = "Examples:
  operator chaos cleanup                 undo what dead drills left
  operator chaos cleanup --force --json  also the faults of drills still running, as JSON")]
    Cleanup {
        /// Also undo the faults of runs whose runner still runs (or runs on another host).
        #[arg(long)]
        force: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args)]
pub struct ChaosRunArgs {
    /// The drill file.
    #[arg(value_name = "DRILL")]
    pub drill: PathBuf,
    /// Trials per remediation [default: the drill's `trials`].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: Option<u32>,
    /// Seed for random targets [default: the drill's `seed`, else a fresh one, recorded].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// The run's report folder [default: chaos/RUN_ID beside the database].
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Also run every trial with the controller only observing and the engine's restart
    /// policy (unless-stopped) on, and report both side by side. Needs the runner's own
    /// controller: refused while another controller owns the database.
    #[arg(long)]
    pub baseline: bool,
    /// How long the first look may wait for the cluster to become steady (a controller the
    /// runner just started creates and starts it) before the run is refused.
    #[arg(long, default_value = "90s", value_parser = parse_positive_duration, value_name = "DUR")]
    pub settle_timeout: Duration,
    /// Print the journal and the summary as JSON at the end.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct AgentCommandArgs {
    /// The same manifests as the controller's (the clusters' agent limits, tools' scope).
    #[command(flatten)]
    pub paths: PathArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List agent sessions, newest first: ticket, model, safety mode, duration, turns,
    /// tokens (input/output/cache read/cache write), why it stopped and the verdict.
    ///
    /// STOP is the API's last stop_reason (end_turn, max_tokens, refusal...) or why the
    /// controller ended it (budget, cancelled, api-error...); `failed:` or `interrupted`
    /// says the session did not end normally. VERDICT is the controller's re-check:
    /// `resolved`, `not-resolved`, or `-` before it.
    #[command(after_help = "Examples:
  operator audit list                   every session
  operator audit list --ticket 12       the sessions paged for ticket 12
  operator audit list --since 6h --json the last six hours, for scripts")]
    List {
        /// Only the sessions of this ticket.
        #[arg(long, value_name = "ID")]
        ticket: Option<i64>,
        /// Only sessions started within this long (e.g. 30m, 6h, 7d).
        #[arg(long, value_parser = crate::manifest::parse_duration, value_name = "DUR")]
        since: Option<Duration>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one session and every step in order; each command with its result under it
    /// (exit code, duration, the head of its output), linked by tool_use id.
    #[command(after_help = "Examples:
  operator audit show 20261201T031500Z-1a2b3c4d
  operator audit show 20261201T031500Z-1a2b3c4d --json | jq '.entries[] | select(.kind == \"tool-call\")'")]
    Show {
        /// The session id, as `audit list` and `tickets show` print it.
        session: String,
        /// Print the session and all its entries as JSON (the same document as its file).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Where the ticket database is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Ticket database file [default: ~/.operator/tickets.db].
    #[arg(long, env = "OPERATOR_DB", value_name = "FILE", global = true)]
    pub db: Option<PathBuf>,
}

impl DbArgs {
    pub fn path(&self) -> PathBuf {
        self.db.clone().unwrap_or_else(crate::tickets::default_path)
    }
}

#[derive(Debug, Subcommand)]
pub enum TicketsCommand {
    /// List tickets, newest first.
    List {
        /// Only tickets in this status (`held`: unresolved tickets a person holds).
        #[arg(long, value_parser = ["open", "remediating", "resolved", "escalated", "held"])]
        status: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one ticket with its timeline.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Mark a ticket resolved by a person. If the drift is still there, the controller
    /// reopens it at its next look.
    Resolve {
        id: i64,
        /// A note for the timeline (what was done).
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Hands off: the controller records drift on this ticket but takes no action.
    Hold {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Let the controller act on a held ticket again.
    Unhold {
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Give an escalated ticket's service a fresh restart budget; the controller tries again.
    ///
    /// With --force, also on an open ticket whose action the quorum gate holds back: its next
    /// restart or recreate goes ahead whatever the gate says (a member's quorum, the
    /// concurrency and replacement caps). Recorded on the ticket with $USER and the reason;
    /// used once. A rollout's first try has no ticket: edit the manifest instead.
    Retry {
        id: i64,
        /// Override the quorum gate for the ticket's next action.
        #[arg(long)]
        force: bool,
        /// Why, recorded on the ticket with the override.
        #[arg(long, requires = "force")]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Let the command an agent session of this ticket waits on run (safety mode approve).
    /// `tickets show ID` lists what waits.
    Approve {
        id: i64,
        /// A note recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Refuse the command an agent session of this ticket waits on; the model is told why.
    Reject {
        id: i64,
        /// Why, as the model will read it.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub report: ReportArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The address the controller serves /metrics and /healthz on (its run --listen; the
    /// same OPERATOR_LISTEN, so an image that sets it needs no flag for either).
    #[arg(long, env = "OPERATOR_LISTEN", default_value = crate::server::DEFAULT_LISTEN, value_parser = parse_listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = parse_positive_duration, value_name = "DUR")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StatusCommandArgs {
    #[command(flatten)]
    pub status: StatusArgs,
    /// Redraw the view every --interval until Ctrl-C, with the open tickets and the agent
    /// sessions still running.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// How often --watch redraws (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_positive_duration, value_name = "DUR", requires = "watch")]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct PathArgs {
    /// Manifest files or folders (folders: their *.yaml / *.yml files, not recursive).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// A cluster Prometheus that cannot be asked to evaluate the checks' PromQL is an error
    /// (exit 1) instead of a note: for CI, where "not evaluated" must not pass.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Address for /metrics and /healthz (loopback unless told otherwise; the sidecar image
    /// sets OPERATOR_LISTEN=0.0.0.0:9464 so its network can scrape it).
    #[arg(long, env = "OPERATOR_LISTEN", default_value = crate::server::DEFAULT_LISTEN, value_parser = parse_listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Look at every service again this often, whatever the events say (e.g. 30s, 5m), from
    /// the controller's own view of the engine (no engine call): a service unchanged there
    /// since its last clean look counts as looked at.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, value_name = "DUR")]
    pub resync: Duration,
    /// List the engine again this often while its event stream is healthy (e.g. 5m, 1h):
    /// the bound on how long a change the stream missed goes unseen. It is also listed
    /// after any stream error and when the manifests adopt other containers.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration, value_name = "DUR")]
    pub relist: Duration,
    #[command(flatten)]
    pub db: DbArgs,
    /// Services reconciled in parallel (never the same service twice): repairs of
    /// different services wait on the engine side by side up to this many.
    #[arg(long, default_value_t = crate::reconcile::config::DEFAULT_WORKERS, value_parser = parse_workers, value_name = "N")]
    pub workers: usize,
    /// A repaired container must stay running this long (and healthy, if it has a
    /// healthcheck) before its ticket resolves; `--once` waits for it before its last look.
    #[arg(long, default_value = "3s", value_parser = crate::manifest::parse_duration, value_name = "DUR")]
    pub settle: Duration,
    /// One repair pass in dependency order, then exit (status 1 if anything is left broken).
    #[arg(long)]
    pub once: bool,
    /// Print the --once summary as JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// How long the controller waits for an agent session to report back. Past it the
    /// request is withdrawn: a session not begun never starts, a running one is ended by its
    /// dispatcher at its next claim renewal, and the service is looked at again. Keep it
    /// above the manifests' `spec.agent.maxSessionTime` (10m by default).
    #[arg(long, default_value = "30m", value_parser = parse_positive_duration, value_name = "DUR")]
    pub agent_lease_timeout: Duration,
    /// Repair nothing, whatever the manifests' policies say: drifts still open and close
    /// tickets (closed as self-healed when they go away). What `operator chaos run
    /// --baseline` measures the controller against.
    #[arg(long)]
    pub observe_only: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// The agent paged for `policy: agent` and `escalateTo: agent`. It runs only when
/// `ANTHROPIC_API_KEY` is set (never a flag: flags show in `ps`); `ANTHROPIC_BASE_URL` points
/// it at another endpoint. Per-cluster limits are in the manifest's `spec.agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Model for sessions whose manifest names none.
    #[arg(long, env = "OPERATOR_AGENT_MODEL", default_value = crate::agent::dispatcher::DEFAULT_MODEL, value_name = "MODEL")]
    pub agent_model: String,
    /// What the agent's commands may do where the manifest does not say: observe (no
    /// network, Docker reads only), approve (every command waits for `operator tickets
    /// approve`), execute (the proxy's ownership and quorum rules only).
    #[arg(long, env = "OPERATOR_SAFETY_MODE", default_value = "observe", value_parser = ["observe", "approve", "execute"], value_name = "MODE")]
    pub safety_mode: String,
    /// Agent sessions at once (the rest queue in ticket order).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub agent_sessions: usize,
    /// Tokens all agent sessions may use in any rolling hour. Past it no session starts: a
    /// ticket that would page the agent escalates to a person, with the reason.
    #[arg(long, value_name = "N")]
    pub agent_hourly_tokens: Option<u64>,
    /// How long a command in approve mode waits for a person before it is refused.
    #[arg(long, default_value = "10m", value_parser = crate::manifest::parse_duration, value_name = "DUR")]
    pub approval_timeout: Duration,
    /// An environment variable the agent's commands must not see (repeatable), besides
    /// ANTHROPIC_API_KEY and names containing KEY, TOKEN, SECRET, PASSWORD, AUTH...
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
    /// Where sessions run: `local` (in this process, when ANTHROPIC_API_KEY is set) or
    /// `external` (this controller only queues them; `operator agent` processes on the same
    /// database run them: the key then stays with them).
    #[arg(long, default_value = "local", value_parser = ["local", "external"], value_name = "WHERE")]
    pub agent_dispatch: String,
    /// How long a dispatcher's claim on a ticket lasts unless renewed: one that dies frees
    /// its ticket after this.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, value_name = "DUR")]
    pub agent_claim_ttl: Duration,
    /// The image of the agent's toolbox, the container each session's commands run in
    /// (it needs sh, coreutils' timeout, and the docker client; curl and jq help). Default:
    /// in the sidecar, the sidecar's own image; on a host, operator-toolbox:latest
    /// (`scripts/build-image.sh --toolbox` builds it; scripts/setup.sh does).
    #[arg(long, env = "OPERATOR_TOOLBOX_IMAGE", value_name = "IMAGE")]
    pub toolbox_image: Option<String>,
}

/// An address to listen on: `IP:PORT`. The message says what is wrong with it (a host
/// name, an address that is no IP, a port out of range) and the form.
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    const FORM: &str = "expected IP:PORT, e.g. 127.0.0.1:9464 (this host only) or 0.0.0.0:9464 \
                        (every interface)";
    let s = s.trim();
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("no port: {FORM}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "the port \"{port}\" is not a number from 0 to 65535: {FORM}"
        ));
    }
    let why = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        format!("\"{inner}\" is not a valid IPv6 address")
    } else if host.contains(':') {
        "an IPv6 address is written in brackets, e.g. [::1]:9464".to_string()
    } else if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        format!("\"{host}\" is not a valid IPv4 address (four numbers from 0 to 255)")
    } else if host.is_empty() {
        "the IP address is missing".to_string()
    } else {
        format!("\"{host}\" is a host name, not an IP address; a host name is not accepted")
    };
    Err(format!("{why}: {FORM}"))
}

/// `--workers`: at least one, or nothing would ever be reconciled.
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (with 0 workers no service is ever reconciled)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "\"{s}\" is not a whole number of workers (at least 1)"
        )),
    }
}

/// The command line, parsed. A usage error is printed as clap prints it and exits with its
/// code (2), except under `--log-format json` (or `OPERATOR_LOG_FORMAT=json`), where it is
/// one JSON line like the log's own, so a log collector reads it too. `--help` and
/// `--version` are printed as usual.
pub fn parse_args() -> Cli {
    let error = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    if error.use_stderr() && json_wanted(std::env::args_os().skip(1)) {
        report_failure(LogFormat::Json, &one_line(&error.render().to_string()));
        std::process::exit(error.exit_code());
    }
    error.exit()
}

/// Whether the (unparsed) arguments, or else the environment, ask for JSON logs.
fn json_wanted(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let mut given = None;
    for (i, arg) in args.iter().enumerate() {
        if arg == "--" {
            break;
        }
        if let Some(value) = arg.strip_prefix("--log-format=") {
            given = Some(value.to_string());
        } else if arg == "--log-format" {
            given = args.get(i + 1).cloned();
        }
    }
    given
        .or_else(|| std::env::var("OPERATOR_LOG_FORMAT").ok())
        .is_some_and(|f| f.trim() == "json")
}

/// clap's message on one line: without its `error: ` prefix and blank lines.
fn one_line(rendered: &str) -> String {
    let text = rendered.trim();
    let text = text.strip_prefix("error: ").unwrap_or(text);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match crate::manifest::parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// What main prints and returns when a command fails.
#[derive(Debug)]
pub struct Failure {
    message: String,
    /// Standard output was closed by its reader (`operator ... | head`): not a failure, so
    /// the command exits quietly with success, as other Unix tools do.
    broken_pipe: bool,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            broken_pipe: false,
        }
    }
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        let broken_pipe = (&e as &dyn std::error::Error)
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
        Failure {
            message: e.to_string(),
            broken_pipe,
        }
    }
}

/// `println!` for command output: a closed standard output is an error the caller returns
/// (and `execute` turns into a quiet exit), never a panic. Inside [`captured`], the line
/// goes to the capture instead.
macro_rules! outln {
    () => {{
        $crate::cli::write_out(format_args!("\n"))?;
    }};
    ($($arg:tt)*) => {{
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))?;
    }};
}
pub(crate) use outln;

/// `1 service`, `2 services`, `0 services`: a count with its noun.
pub(crate) fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

tokio::task_local! {
    /// Where [`outln!`] writes while a view is being drawn off screen.
    static CAPTURE: std::cell::RefCell<String>;
}

/// Writes command output: to the capture of [`captured`] when inside one, else to stdout.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut text = Some(text);
    let kept = CAPTURE.try_with(|buffer| {
        use std::fmt::Write as _;
        if let Some(text) = text.take() {
            // Writing to a String cannot fail.
            let _ = buffer.borrow_mut().write_fmt(text);
        }
    });
    match (kept, text) {
        (Ok(()), _) | (_, None) => Ok(()),
        (Err(_), Some(text)) => {
            use std::io::Write as _;
            std::io::stdout().lock().write_fmt(text)
        }
    }
}

/// Runs `work` with its [`outln!`] output kept, not printed: the output comes back with
/// the result, to be printed at once (a live view redrawn only once the next one is ready).
pub(crate) async fn captured<T>(work: impl std::future::Future<Output = T>) -> (T, String) {
    CAPTURE
        .scope(std::cell::RefCell::new(String::new()), async {
            let result = work.await;
            let text = CAPTURE.with(|buffer| buffer.take());
            (result, text)
        })
        .await
}

/// Sets up logging; an invalid filter is a usage error.
pub fn init_logging(cli: &Cli) -> Result<(), String> {
    logging::init(cli.log_format, cli.log_level.as_deref())
}

/// Says why the command failed: one line on stderr, whatever the message holds (a list of
/// manifest errors included). `error: ...` for people; with `--log-format json` a JSON
/// object like the log's own lines (level `ERROR`), so a log collector reading the JSON
/// lines gets the reason too. Written directly, not through the log filter, which may be
/// `off`.
pub fn report_failure(format: LogFormat, message: &str) {
    let line = match format {
        LogFormat::Text => format!("error: {message}"),
        // Built in the log's own field order (a `json!` map would sort the keys).
        LogFormat::Json => format!(
            "{{\"timestamp\":{},\"level\":\"ERROR\",\"message\":{},\"target\":\"operator\"}}",
            serde_json::Value::from(
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
            serde_json::Value::from(message),
        ),
    };
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs a parsed command line; the exit code is what the process should return.
pub fn execute(cli: Cli) -> ExitCode {
    let format = cli.log_format;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_failure(format, &format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Validate(args) => report::validate(args).await,
            Command::Plan(args) => report::plan(args).await,
            Command::Status(args) => report::status(args).await,
            Command::Tickets(command) => tickets::run(command),
            Command::Audit(command) => audit::run(command),
            Command::Chaos(command) => chaos::run(command).await,
            Command::Import(ImportCommand::Compose(args)) => import::compose(args),
            Command::Completions { shell } => companions::completions(shell),
            Command::Healthcheck(args) => healthcheck::run(args).await,
            Command::Man { dir } => companions::man(dir.as_deref()),
            Command::Schema { format } => companions::schema(format),
        }
    });
    match result {
        Ok(code) => code,
        Err(Failure {
            broken_pipe: true, ..
        }) => ExitCode::SUCCESS,
        Err(Failure { message, .. }) => {
            report_failure(format, &message);
            ExitCode::FAILURE
        }
    }
}
