//! `validate`, `plan` and `status`: read-only commands.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::manifest;
use crate::metrics::Metrics;
use crate::reconcile::{Controller, ControllerConfig, ServiceReport};

use super::{Failure, PathArgs, ReportArgs};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub fn validate(args: PathArgs) -> Result<ExitCode, Failure> {
    let desired = manifest::load(&args.paths)?;
    for cluster in &desired.clusters {
        println!(
            "ok: cluster {} ({}): {} services on network {}",
            cluster.name,
            cluster.source.display(),
            cluster.services.len(),
            cluster.network.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn reports(args: &ReportArgs) -> Result<Vec<ServiceReport>, Failure> {
    let desired = manifest::load(&args.paths.paths)?;
    let docker = crate::docker::connect(CONNECT_TIMEOUT).await?;
    let controller = Controller::new(
        docker,
        desired,
        Arc::new(Metrics::new()),
        ControllerConfig::default(),
    );
    Ok(controller.report().await?)
}

pub async fn plan(args: ReportArgs) -> Result<ExitCode, Failure> {
    let reports = reports(&args).await?;
    if args.json {
        let steps: Vec<_> = reports
            .iter()
            .filter(|r| !r.drifts.is_empty())
            .map(|r| {
                serde_json::json!({
                    "cluster": r.cluster,
                    "service": r.service,
                    "drifts": r.drifts,
                    "action": r.action,
                    "policy": r.policy,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut any = false;
    for r in reports.iter().filter(|r| !r.drifts.is_empty()) {
        any = true;
        let drift = &r.drifts[0];
        let what = match (&r.action, r.policy) {
            (Some(action), manifest::Policy::Restart) => format!("would {action}"),
            (Some(action), policy) => {
                format!("would not act (policy {policy:?}; a repair would {action})")
            }
            (None, _) => "no built-in repair".to_string(),
        };
        println!(
            "{}/{}: {}: {} -> {what}",
            r.cluster, r.service, drift.kind, drift.detail
        );
    }
    if !any {
        println!("nothing to do: every service is in its desired state");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(args: ReportArgs) -> Result<ExitCode, Failure> {
    let reports = reports(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<20} {:<12} {:<10} {:<14} DRIFT",
        "CLUSTER", "SERVICE", "STATE", "HEALTH", "CONTAINER"
    );
    for r in &reports {
        let (state, health, id) = match &r.container {
            Some(c) => (
                c.status.as_str().to_string(),
                c.health
                    .map(|h| format!("{h:?}").to_lowercase())
                    .unwrap_or_else(|| "-".into()),
                c.id.chars().take(12).collect::<String>(),
            ),
            None => ("absent".into(), "-".into(), "-".into()),
        };
        let drift = if r.drifts.is_empty() {
            "ok".to_string()
        } else {
            r.drifts
                .iter()
                .map(|d| d.kind.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:<16} {:<20} {:<12} {:<10} {:<14} {drift}",
            r.cluster, r.service, state, health, id
        );
        if let Some(e) = &r.last_error {
            println!("    error: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
