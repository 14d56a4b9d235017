//! `validate`, `plan` and `status`: read-only commands.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::docker::ObservedContainer;
use crate::manifest;
use crate::metrics::Metrics;
use crate::reconcile::ServiceReport;
use crate::tickets::{Journal, Store, TicketError};

use super::table::Table;
use super::{Failure, StatusArgs, ValidateArgs, outln};

/// How long connecting to the engine may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A cluster whose Prometheus could not be asked to evaluate its checks' PromQL (parsed
/// already, offline, when the manifests were loaded).
pub struct Unchecked {
    pub cluster: String,
    pub url: String,
    pub reason: String,
}

/// Asks each cluster's Prometheus to evaluate its check queries once. They parse (loading
/// refused any that does not, with or without a Prometheus); this finds what the cluster's
/// own Prometheus version refuses besides (a function or syntax newer than it, an
/// evaluation error). Every query it refuses is an error at the query's line, counted with
/// the others; a Prometheus that cannot be asked is returned for the caller to note
/// (`validate` prints it, `run` logs it), or with `strict` an error at `spec.prometheus.url`.
pub async fn check_promql(
    desired: &manifest::DesiredState,
    positions: &manifest::Positions,
    strict: bool,
) -> Result<Vec<Unchecked>, Failure> {
    let found = crate::health::check_queries(desired).await;
    let cluster = |name: &str| desired.clusters.iter().find(|c| c.name == name);
    let mut diagnostics = Vec::new();
    let mut unchecked = Vec::new();
    for (cluster_name, url, reason) in &found.unreachable {
        match cluster(cluster_name) {
            Some(c) if strict => diagnostics.push(positions.diagnostic(
                c,
                "spec.prometheus.url",
                format!(
                    "Prometheus at {url} cannot be asked ({reason}): the checks' PromQL parses but was not evaluated by it, which --strict refuses"
                ),
            )),
            _ => unchecked.push(Unchecked {
                cluster: cluster_name.clone(),
                url: url.clone(),
                reason: reason.clone(),
            }),
        }
    }
    for (_, cluster_name, check, reason) in &found.invalid {
        if let Some(c) = cluster(cluster_name) {
            let url = c.prometheus.url.as_deref().unwrap_or("?");
            diagnostics.push(positions.check_query(
                c,
                check,
                format!("check {check}: Prometheus at {url} refuses the query: {reason}"),
            ));
        }
    }
    if diagnostics.is_empty() {
        return Ok(unchecked);
    }
    diagnostics.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    Err(manifest::ManifestError::Invalid(diagnostics).into())
}

pub async fn validate(args: ValidateArgs) -> Result<ExitCode, Failure> {
    let (desired, positions) = manifest::load_with_positions(&args.paths.paths)?;
    for u in check_promql(&desired, &positions, args.strict).await? {
        eprintln!(
            "note: cluster {}: PromQL parsed but not evaluated, Prometheus at {} is unreachable ({}); \
             `operator run` evaluates it once Prometheus answers (`validate --strict` makes this an error)",
            u.cluster, u.url, u.reason
        );
    }
    for cluster in &desired.clusters {
        let on_network = cluster
            .services
            .iter()
            .any(|s| s.network_mode == manifest::NetworkMode::Cluster);
        let network = if on_network {
            format!("on network {}", cluster.network.name)
        } else {
            "(no cluster network: host or other networks)".to_string()
        };
        outln!(
            "ok: cluster {} ({}): {} {network}, {}",
            cluster.name,
            cluster.source.display(),
            super::counted(cluster.services.len(), "service"),
            super::counted(cluster.checks.len(), "check")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Desired against observed, with what the ticket store remembers (escalation, holds) when
/// its database exists. A read-only command never creates one: a missing default database is
/// a fresh machine, a missing `--db` a typo and an error.
async fn reports(desired: manifest::DesiredState, db: &super::DbArgs) -> Result<Reports, Failure> {
    let path = db.path();
    if db.db.is_some() {
        crate::tickets::require_existing(&path)?;
    }
    let journal = if path.exists() {
        match Store::open_read_only(&path) {
            Ok(store) => Some(Journal::new(Arc::new(store), Arc::new(Metrics::new()))),
            // Just after an upgrade, before the controller migrated it: the containers and
            // checks can still be shown, without what the tickets remember.
            Err(e @ TicketError::NotMigrated { .. }) => {
                eprintln!("note: tickets and escalations not shown: {e}");
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let docker = crate::docker::connect(CONNECT_TIMEOUT).await?;
    let undeclared = crate::reconcile::undeclared(&docker, &desired).await?;
    // An agent serves `policy: agent` where the controller has a key, as `run` decides it
    // (the key's presence only: it is not read here).
    let agent_serves = std::env::var_os("ANTHROPIC_API_KEY").is_some_and(|v| !v.is_empty());
    let services = crate::reconcile::report(docker, &desired, journal.as_ref(), agent_serves).await;
    Ok(Reports {
        services,
        undeclared,
    })
}

/// What `plan` and `status` show.
struct Reports {
    services: Vec<ServiceReport>,
    /// Owned containers no manifest declares (left alone by the controller).
    undeclared: Vec<ObservedContainer>,
}

/// How a person removes a container the controller no longer manages.
fn removal_hint(c: &ObservedContainer) -> String {
    format!(
        "not in the manifests: the controller leaves it alone; `docker rm -f {}` removes it",
        c.name
    )
}

/// One service's step of `plan --json`. `action` is what the controller would do now, as
/// the text form says it: nothing for an escalated service (left alone until a person runs
/// `tickets retry`) or one a person holds; `repair` is the repair the drift calls for.
fn plan_step(r: &ServiceReport) -> serde_json::Value {
    let hands_off = r.escalated || r.held;
    serde_json::json!({
        "cluster": r.cluster,
        "service": r.service,
        "drifts": r.drifts,
        "action": if hands_off { None } else { r.action.as_ref() },
        "repair": r.action,
        "policy": r.policy,
        "escalated": r.escalated,
        "held": r.held,
        "waiting_for": r.waiting_for,
        "gated": r.gated,
        "tickets": r.tickets,
        "outcome": r.outcome,
    })
}

pub async fn plan(args: StatusArgs) -> Result<ExitCode, Failure> {
    let db = args.db;
    let args = args.report;
    let Reports {
        services: reports,
        undeclared,
    } = reports(manifest::load(&args.paths.paths)?, &db).await?;
    if args.json {
        let mut steps: Vec<_> = reports
            .iter()
            .filter(|r| !r.drifts.is_empty())
            .map(plan_step)
            .collect();
        steps.extend(undeclared.iter().map(|c| {
            serde_json::json!({
                "cluster": c.key.cluster,
                "service": c.key.service,
                "undeclared": true,
                "container": c.name,
                "action": null,
            })
        }));
        outln!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut any = false;
    for r in reports.iter().filter(|r| r.error.is_some()) {
        any = true;
        outln!(
            "{}/{}: unknown: {} -> nothing decided",
            r.cluster,
            r.service,
            r.error.as_deref().unwrap_or_default()
        );
    }
    for r in reports.iter().filter(|r| !r.drifts.is_empty()) {
        any = true;
        let drift = &r.drifts[0];
        let tickets = r
            .tickets
            .iter()
            .map(|t| format!("#{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        let what = match (&r.action, r.policy) {
            _ if r.escalated => format!(
                "would not act: escalated (restart budget spent; `operator tickets retry` on {tickets} to try again)"
            ),
            _ if r.held => format!("would not act: a person holds {tickets}"),
            (Some(action), manifest::Policy::Restart) => match (&r.waiting_for, &r.gated) {
                (_, Some(why)) => {
                    format!("would not {action} yet: the quorum gate holds it ({why})")
                }
                (Some(dep), _) => format!("would {action} once {dep} runs"),
                (None, None) => format!("would {action}"),
            },
            (Some(action), policy) => {
                format!("would not act (policy {policy:?}; a repair would {action})")
            }
            (None, _) => "no built-in repair".to_string(),
        };
        outln!(
            "{}/{}: {}: {} -> {what}",
            r.cluster,
            r.service,
            drift.kind,
            drift.detail
        );
    }
    for c in &undeclared {
        any = true;
        outln!(
            "{}/{}: undeclared: container {} -> would not act ({})",
            c.key.cluster,
            c.key.service,
            c.name,
            removal_hint(c)
        );
    }
    if !any {
        outln!("nothing to do: every service is in its desired state");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(args: super::StatusCommandArgs) -> Result<ExitCode, Failure> {
    if !args.watch {
        return status_once(&args.status).await;
    }
    // Clear and redraw on a terminal; piped, each view follows the last.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut first = true;
    loop {
        // The next view is drawn off screen and shown whole: the screen is cleared only
        // once it is ready, however long the engine or a Prometheus takes to answer.
        let fetched_at = chrono::Local::now();
        let (result, view) = super::captured(async {
            let status = status_once(&args.status).await;
            (status, print_activity(&args.status.db))
        })
        .await;
        let (status, activity) = result;
        if let Err(e) = &status {
            // A mistake in the command (no such manifest or database) ends it at once.
            if first {
                return status;
            }
            if e.broken_pipe {
                return status;
            }
        }
        first = false;
        if terminal {
            use std::io::Write as _;
            write!(std::io::stdout().lock(), "\x1b[H\x1b[2J")?;
        }
        outln!(
            "operator status, {} (every {}; Ctrl-C to stop)",
            fetched_at.format("%H:%M:%S"),
            super::audit::human(chrono::Duration::from_std(args.interval).unwrap_or_default())
        );
        outln!();
        // What was drawn before a failure is shown with it.
        super::write_out(format_args!("{view}"))?;
        if let Err(e) = status {
            // A view that cannot be drawn later (the engine restarting) is said, then
            // tried again.
            outln!("cannot draw the view now: {}", e.message);
        }
        activity?;
        if !terminal {
            outln!();
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

/// The live view's second half: the open tickets and the agent sessions still running.
fn print_activity(db: &super::DbArgs) -> Result<(), Failure> {
    const SHOWN: usize = 20;
    let path = db.path();
    if !path.exists() {
        return Ok(());
    }
    let store = Store::open_read_only(&path)?;
    let now = chrono::Utc::now();
    let open: Vec<crate::tickets::Ticket> = store
        .list(None)?
        .into_iter()
        .filter(|t| t.status != crate::tickets::Status::Resolved)
        .collect();
    outln!();
    if open.is_empty() {
        outln!("no open tickets");
    } else {
        let mut table = Table::new(&[
            "TICKET", "CLUSTER", "TARGET", "DRIFT", "STATUS", "FOR", "ACTIONS", "DETAIL",
        ]);
        for t in open.iter().take(SHOWN) {
            let mut detail: String = t.detail.chars().take(60).collect();
            if t.detail.chars().count() > 60 {
                detail.push_str("...");
            }
            table.row(vec![
                format!("#{}", t.id),
                t.cluster.clone(),
                t.target().to_string(),
                t.drift.as_str().to_string(),
                if t.held {
                    format!("{} (held)", t.status.as_str())
                } else {
                    t.status.as_str().to_string()
                },
                super::audit::human(now - t.episode_at),
                t.actions.to_string(),
                detail,
            ]);
        }
        if open.len() > SHOWN {
            table.note(format!(
                "    ... and {} more: operator tickets list --status open",
                open.len() - SHOWN
            ));
        }
        table.print()?;
    }
    let since = now - chrono::Duration::days(1);
    let running: Vec<crate::tickets::AgentSession> = store
        .sessions(&crate::tickets::SessionQuery {
            ticket: None,
            since: Some(since),
        })?
        .into_iter()
        .filter(|s| s.ended_at.is_none())
        .collect();
    if !running.is_empty() {
        outln!();
        let mut table = Table::new(&["SESSION", "TICKET", "SERVICE", "HOLDER", "FOR", "TURNS"]);
        for s in &running {
            table.row(vec![
                s.id.clone(),
                format!("#{}", s.ticket_id),
                format!("{}/{}", s.cluster, s.service),
                s.holder.clone(),
                super::audit::human(now - s.started_at),
                s.turns.to_string(),
            ]);
        }
        table.print()?;
    }
    Ok(())
}

async fn status_once(args: &StatusArgs) -> Result<ExitCode, Failure> {
    let db = &args.db;
    let args = &args.report;
    let desired = manifest::load(&args.paths.paths)?;
    let Reports {
        services: reports,
        undeclared,
    } = reports(desired.clone(), db).await?;
    let health = crate::health::Monitor::instant().round(&desired).await;
    let agent = agent_state(&desired, db);
    if args.json {
        let out = serde_json::json!({"services": reports, "undeclared": undeclared, "health": health, "agent": agent});
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "CLUSTER",
        "SERVICE",
        "STATE",
        "HEALTH",
        "CONTAINER",
        "TICKETS",
        "DRIFT",
    ]);
    for r in &reports {
        let (state, health, id) = match &r.container {
            Some(c) => (
                c.status.as_str().to_string(),
                c.health
                    .map(|h| h.as_str().to_string())
                    .unwrap_or_else(|| "-".into()),
                // An adopted container is marked: it is managed without our labels.
                format!(
                    "{}{}",
                    c.id.chars().take(12).collect::<String>(),
                    if c.adopted { " (adopted)" } else { "" }
                ),
            ),
            None if r.error.is_some() => ("unknown".into(), "-".into(), "-".into()),
            // The name is taken by a container this service does not own (not ours, not
            // adopted): it is there, just not the service's.
            None if r
                .drifts
                .iter()
                .any(|d| d.kind == crate::drift::DriftKind::NameConflict) =>
            {
                ("name-conflict".into(), "-".into(), "-".into())
            }
            None => ("absent".into(), "-".into(), "-".into()),
        };
        let drift = if r.error.is_some() {
            "unknown".to_string()
        } else if r.drifts.is_empty() {
            "ok".to_string()
        } else {
            r.drifts
                .iter()
                .map(|d| d.kind.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let tickets = if r.tickets.is_empty() {
            "-".to_string()
        } else {
            r.tickets
                .iter()
                .map(|t| format!("#{t}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let drift = match (&r.waiting_for, r.escalated, r.held) {
            (_, true, _) => format!("{drift} (escalated)"),
            (_, _, true) => format!("{drift} (held)"),
            (Some(dep), _, _) if !r.drifts.is_empty() => format!("{drift} (waiting for {dep})"),
            _ if r.gated.is_some() => {
                format!(
                    "{drift} (gated: {})",
                    r.gated.as_deref().unwrap_or_default()
                )
            }
            _ => drift,
        };
        table.row(vec![
            r.cluster.clone(),
            r.service.clone(),
            state,
            health,
            id,
            tickets,
            drift,
        ]);
        if let Some(e) = &r.error {
            table.note(format!("    could not observe: {e}"));
        }
    }
    for c in &undeclared {
        table.row(vec![
            c.key.cluster.clone(),
            c.key.service.clone(),
            c.status.as_str().to_string(),
            c.health
                .map(|h| h.as_str().to_string())
                .unwrap_or_else(|| "-".into()),
            c.id.chars().take(12).collect(),
            "-".into(),
            "undeclared".into(),
        ]);
        table.note(format!("    {}", removal_hint(c)));
    }
    table.print()?;
    print_health(&health)?;
    print_agent(&agent)?;
    Ok(ExitCode::SUCCESS)
}

fn print_health(health: &[crate::health::ClusterHealth]) -> Result<(), Failure> {
    use crate::health::{CheckState, Observability};
    if health.is_empty() {
        return Ok(());
    }
    outln!();
    let mut table = Table::new(&["CLUSTER", "CHECK", "SEVERITY", "STATE", "DETAIL"]);
    for cluster in health {
        if let Observability::Lost { reason } = &cluster.observability {
            table.row(vec![
                cluster.cluster.clone(),
                "(observability)".into(),
                "critical".into(),
                "lost".into(),
                format!("Prometheus cannot be asked: {reason}"),
            ]);
        }
        for c in &cluster.checks {
            let v = &c.verdict;
            let state = match v.state {
                CheckState::Passing => "passing",
                CheckState::Pending => "pending",
                CheckState::Failing => "failing",
                CheckState::NoData => "no-data",
                CheckState::Invalid => "invalid",
                CheckState::Unknown => "unknown",
            };
            let detail = if v.state == CheckState::NoData {
                "returns no series at all: misspelled metric or label? it cannot fire".to_string()
            } else if let Some(e) = &v.error {
                e.clone()
            } else {
                v.failing
                    .iter()
                    .map(|f| f.target.clone().unwrap_or_else(|| "cluster".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table.row(vec![
                cluster.cluster.clone(),
                c.check.clone(),
                c.severity.as_str().into(),
                state.into(),
                detail,
            ]);
        }
    }
    table.print()
}

/// Whether the agent can be paged from here, who wants it, and what waits for a person.
fn agent_state(desired: &manifest::DesiredState, db: &super::DbArgs) -> serde_json::Value {
    let wanted = desired.agent_users();
    let enabled = matches!(super::agent::api_key(), Ok(Some(_)));
    let path = db.path();
    let waiting: Vec<serde_json::Value> = if path.exists() {
        Store::open_read_only(&path)
            .and_then(|s| s.pending_approvals(None))
            .map(|a| {
                a.into_iter()
                    .map(|a| serde_json::json!({"ticket": a.ticket_id, "session": a.session_id, "command": a.command, "asked_at": a.asked_at}))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    serde_json::json!({"enabled": enabled, "wanted_by": wanted, "waiting_for_approval": waiting})
}

fn print_agent(agent: &serde_json::Value) -> Result<(), Failure> {
    let wanted = agent["wanted_by"].as_array().map_or(0, Vec::len);
    let waiting = agent["waiting_for_approval"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if wanted == 0 && waiting.is_empty() {
        return Ok(());
    }
    outln!();
    if agent["enabled"] == true {
        outln!(
            "agent: enabled here (ANTHROPIC_API_KEY is set); {wanted} services or checks may page it"
        );
    } else {
        outln!(
            "agent: disabled (ANTHROPIC_API_KEY is not set here); {wanted} services or checks would page it, their tickets stay open for a person"
        );
    }
    for w in waiting {
        outln!(
            "  waiting for approval: ticket #{} (session {}): {}   -> operator tickets approve|reject {}",
            w["ticket"],
            w["session"].as_str().unwrap_or("?"),
            crate::agent::safety::escape_for_display(w["command"].as_str().unwrap_or("?")),
            w["ticket"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{Drift, DriftKind};
    use crate::remediation::Action;

    fn stopped(escalated: bool, held: bool) -> ServiceReport {
        ServiceReport {
            cluster: "demo".into(),
            service: "web".into(),
            image: "busybox".into(),
            policy: manifest::Policy::Restart,
            desired_hash: "0".into(),
            container: None,
            drifts: vec![Drift {
                kind: DriftKind::Stopped,
                detail: "exited (137)".into(),
                network: None,
            }],
            action: Some(Action::Start),
            escalated,
            tickets: vec![7],
            held,
            waiting_for: None,
            error: None,
            gated: None,
            outcome: if escalated {
                "escalated"
            } else if held {
                "held"
            } else {
                "acted"
            },
        }
    }

    #[test]
    fn plan_json_says_no_action_where_the_controller_leaves_the_service_alone() {
        let step = plan_step(&stopped(true, false));
        assert_eq!(step["action"], serde_json::Value::Null, "{step:#}");
        assert_eq!(step["repair"]["action"], "start", "{step:#}");
        assert_eq!(step["escalated"], true);
        let step = plan_step(&stopped(false, true));
        assert_eq!(step["action"], serde_json::Value::Null, "{step:#}");
        let step = plan_step(&stopped(false, false));
        assert_eq!(step["action"]["action"], "start", "{step:#}");
    }
}
