//! Tickets of what the manifests no longer declare.
//!
//! A ticket closes only when a re-check shows the desired state, but a service, check or
//! cluster that was removed from the manifests has no desired state left to re-check: its
//! tickets would stay open (or escalated) forever and keep the gauges and alerts up. They
//! close instead with their own cause, `removed`, never `self-healed`: nothing healed.
//!
//! # Guarantees
//! - Looked for when the controller starts and after every applied manifest change, so a
//!   removal made while the controller was stopped is seen too.
//! - Only tickets whose cluster, service or check is absent from the desired state close;
//!   a ticket of a declared thing is never touched here.

use chrono::Utc;

use crate::drift::{Fingerprint, Subject, Target};
use crate::manifest::DesiredState;
use crate::tickets::{Journal, Selector, TicketError};

/// Why the ticket of `fingerprint` can no longer be re-checked, or `None` while everything
/// it is about is still declared.
pub(super) fn why_removed(desired: &DesiredState, fingerprint: &Fingerprint) -> Option<String> {
    let Some(cluster) = desired.cluster(&fingerprint.cluster) else {
        return Some(format!(
            "cluster {} is no longer declared",
            fingerprint.cluster
        ));
    };
    if let Target::Service(service) = &fingerprint.target
        && cluster.service(service).is_none()
    {
        return Some(format!("service {service} is no longer declared"));
    }
    match (&fingerprint.subject, &fingerprint.target) {
        (Subject::Check(check), _) if cluster.check(check).is_none() => {
            Some(format!("check {check} is no longer declared"))
        }
        // The cluster's own drift is Prometheus being unreachable, which only matters to
        // checks: with none left, nobody would ever look at Prometheus to close it.
        (Subject::Drift(_), Target::Cluster) if cluster.checks.is_empty() => {
            Some("the cluster declares no checks any more".to_string())
        }
        _ => None,
    }
}

/// Closes every unresolved ticket of something no longer declared (cause `removed`).
/// Returns how many closed.
pub(super) async fn close_removed(
    journal: &Journal,
    desired: &DesiredState,
) -> Result<usize, TicketError> {
    let removed: Vec<_> = journal
        .unresolved(Selector::All)
        .await?
        .into_iter()
        .filter_map(|t| why_removed(desired, &t.fingerprint).map(|why| (t, why)))
        .collect();
    let n = removed.len();
    journal.resolve_removed(removed, Utc::now()).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::drift::DriftKind;
    use crate::metrics::Metrics;
    use crate::tickets::{Cause, DriftSighting, Status, Store};

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "operator-removed-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// Cluster `c` with services `a` and `b`, and the check `up` unless `checks` is false.
    fn desired(dir: &Dir, services: &[&str], checks: bool) -> DesiredState {
        let mut yaml = "apiVersion: operator/v1\nkind: Cluster\nmetadata:\n  name: c\nspec:\n  prometheus: {url: \"http://127.0.0.1:1\"}\n  services:\n".to_string();
        for s in services {
            yaml.push_str(&format!("    - name: {s}\n      image: x\n"));
        }
        if checks {
            yaml.push_str("  checks:\n    - name: up\n      expr: 'up == 0'\n");
        }
        std::fs::write(dir.0.join("c.yaml"), yaml).unwrap();
        crate::manifest::load(std::slice::from_ref(&dir.0)).unwrap()
    }

    #[test]
    fn only_what_is_no_longer_declared_is_removed() {
        let d = dir();
        let desired = desired(&d, &["aa", "bb"], true);
        let stopped = |c: &str, s: &str| Fingerprint::service(c, s, DriftKind::Stopped);
        let lost = Fingerprint::drift("c", Target::Cluster, DriftKind::ObservabilityLost);
        assert_eq!(why_removed(&desired, &stopped("c", "aa")), None);
        assert_eq!(why_removed(&desired, &lost), None);
        assert_eq!(
            why_removed(&desired, &Fingerprint::check("c", Target::Cluster, "up")),
            None
        );
        assert_eq!(
            why_removed(&desired, &stopped("c", "gone")).as_deref(),
            Some("service gone is no longer declared")
        );
        assert_eq!(
            why_removed(&desired, &stopped("old", "aa")).as_deref(),
            Some("cluster old is no longer declared")
        );
        assert_eq!(
            why_removed(
                &desired,
                &Fingerprint::check("c", Target::Service("aa".into()), "renamed")
            )
            .as_deref(),
            Some("check renamed is no longer declared")
        );
        assert_eq!(
            why_removed(
                &desired,
                &Fingerprint::check("c", Target::Service("gone".into()), "up")
            )
            .as_deref(),
            Some("service gone is no longer declared"),
            "a check's ticket on a removed service goes with the service"
        );
        let without_checks = super::tests::desired(&d, &["aa"], false);
        assert_eq!(
            why_removed(&without_checks, &lost).as_deref(),
            Some("the cluster declares no checks any more"),
            "the last check removed: observability no longer matters"
        );
        assert_eq!(
            why_removed(
                &without_checks,
                &Fingerprint::check("c", Target::Cluster, "up")
            )
            .as_deref(),
            Some("check up is no longer declared"),
            "the cluster's last check"
        );
    }

    #[tokio::test]
    async fn removed_tickets_close_as_removed_end_the_escalation_and_never_reopen() {
        let d = dir();
        let store = Arc::new(Store::open(&d.0.join("t.db")).unwrap());
        let metrics = Arc::new(Metrics::new());
        let journal = Journal::new(store.clone(), metrics.clone());
        let now = Utc::now();
        let sighting = |service: &str| DriftSighting {
            fingerprint: Fingerprint::service("c", service, DriftKind::Stopped),
            drift: DriftKind::Stopped,
            detail: "exited".into(),
            cooldown: Duration::from_secs(600),
            evidence: None,
        };
        let (kept, _) = store.record_drift(&sighting("aa"), now).unwrap();
        let (gone, _) = store.record_drift(&sighting("bb"), now).unwrap();
        let escalated = crate::tickets::Budget {
            escalated: true,
            ..Default::default()
        };
        store.save_budget("c", "bb", &escalated).unwrap();
        store.escalate(gone.id, serde_json::json!({}), now).unwrap();

        let closed = close_removed(&journal, &desired(&d, &["aa"], true))
            .await
            .unwrap();
        assert_eq!(closed, 1);
        let gone = store.get(gone.id).unwrap().unwrap();
        assert_eq!(
            (gone.status, gone.resolved_by),
            (Status::Resolved, Some(Cause::Removed))
        );
        assert_eq!(store.get(kept.id).unwrap().unwrap().status, Status::Open);
        assert!(
            !store.load_budget("c", "bb").unwrap().unwrap().escalated,
            "no escalated ticket left: the service is not escalated"
        );
        assert!(
            metrics
                .render()
                .contains("operator_tickets_resolved_total{cause=\"removed\"} 1"),
            "{}",
            metrics.render()
        );
        // Declared again and drifting: a new episode, not a flap of the removed one.
        let (again, _) = store.record_drift(&sighting("bb"), now).unwrap();
        assert_ne!(again.id, gone.id);
        assert_eq!(
            close_removed(&journal, &desired(&d, &["aa", "bb"], true))
                .await
                .unwrap(),
            0
        );
    }
}
