//! Per-check memory across evaluation rounds: the `for` window of each failing target and
//! whether the check has ever seen data. Pure state over [`tokio::time::Instant`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::prometheus::Series;

/// Who a failure is held against: a service, or (`None`) the cluster.
pub type Target = Option<String>;

/// What one evaluation of a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The check ran. `failing` maps each failing target to its offending series (empty:
    /// passing); `has_data` says whether the query saw any series at all.
    Evaluated {
        failing: BTreeMap<Target, Vec<Series>>,
        has_data: bool,
        /// The targets positively seen healthy (a `healthy` query's non-zero series); `None`
        /// when every target not failing is healthy (an alert query, a probe).
        healthy: Option<BTreeSet<Target>>,
    },
    /// Prometheus could not be asked: nothing is concluded.
    Unreachable(String),
    /// The query is invalid: a configuration error.
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckState {
    Passing,
    /// Failing, but not yet for its whole `for` window.
    Pending,
    Failing,
    /// No series at all: neither healthy nor broken.
    NoData,
    Invalid,
    /// Prometheus unreachable.
    Unknown,
}

/// A target failing past its `for` window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingTarget {
    pub target: Target,
    #[serde(skip)]
    pub since: Instant,
    pub series: Vec<Series>,
}

/// The verdict of one round for one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub state: CheckState,
    /// Targets failing past `for`.
    pub failing: Vec<FailingTarget>,
    /// Targets failing, but not yet for `for`.
    pub pending: Vec<Target>,
    /// The check has returned no series at all since start-up for longer than its grace:
    /// probably a misspelled metric or label.
    pub no_data: bool,
    pub error: Option<String>,
    /// See [`Reading::Evaluated`]: the targets known healthy, when only some are.
    pub healthy: Option<BTreeSet<Target>>,
}

#[derive(Debug, Clone)]
pub struct Tracker {
    started: Instant,
    failing_since: BTreeMap<Target, Instant>,
    data_seen: bool,
}

impl Tracker {
    pub fn new(now: Instant) -> Tracker {
        Tracker {
            started: now,
            failing_since: BTreeMap::new(),
            data_seen: false,
        }
    }

    /// Whether the check has ever seen a series (then its selectors need no more probing).
    pub fn data_seen(&self) -> bool {
        self.data_seen
    }

    /// Folds one reading in. `for_duration` is how long a target must fail; `no_data_after`
    /// is how long a check may see nothing at all before that is reported.
    pub fn observe(
        &mut self,
        now: Instant,
        for_duration: Duration,
        no_data_after: Duration,
        reading: &Reading,
    ) -> Verdict {
        let no_data = |data_seen: bool| {
            !data_seen && now.saturating_duration_since(self.started) >= no_data_after
        };
        match reading {
            // Frozen: no window advances or resets while nothing can be seen.
            Reading::Unreachable(reason) => Verdict {
                state: CheckState::Unknown,
                failing: Vec::new(),
                pending: Vec::new(),
                no_data: false,
                error: Some(reason.clone()),
                healthy: None,
            },
            Reading::Invalid(reason) => Verdict {
                state: CheckState::Invalid,
                failing: Vec::new(),
                pending: Vec::new(),
                no_data: false,
                error: Some(reason.clone()),
                healthy: None,
            },
            Reading::Evaluated {
                failing,
                has_data,
                healthy,
            } => {
                self.data_seen |= *has_data;
                self.failing_since
                    .retain(|target, _| failing.contains_key(target));
                let mut past = Vec::new();
                let mut pending = Vec::new();
                for (target, series) in failing {
                    let since = *self.failing_since.entry(target.clone()).or_insert(now);
                    if now.saturating_duration_since(since) >= for_duration {
                        past.push(FailingTarget {
                            target: target.clone(),
                            since,
                            series: series.clone(),
                        });
                    } else {
                        pending.push(target.clone());
                    }
                }
                let state = if !past.is_empty() {
                    CheckState::Failing
                } else if !pending.is_empty() {
                    CheckState::Pending
                } else if !has_data {
                    CheckState::NoData
                } else {
                    CheckState::Passing
                };
                Verdict {
                    state,
                    failing: past,
                    pending,
                    no_data: no_data(self.data_seen),
                    error: None,
                    healthy: healthy.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(targets: &[&str]) -> Reading {
        Reading::Evaluated {
            failing: targets
                .iter()
                .map(|t| {
                    (
                        Some(t.to_string()),
                        vec![Series {
                            labels: BTreeMap::new(),
                            value: 0.0,
                        }],
                    )
                })
                .collect(),
            has_data: true,
            healthy: None,
        }
    }

    fn passing() -> Reading {
        Reading::Evaluated {
            failing: BTreeMap::new(),
            has_data: true,
            healthy: None,
        }
    }

    const FOR: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_target_fails_only_after_its_for_window() {
        let mut t = Tracker::new(Instant::now());
        assert_eq!(
            t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]))
                .state,
            CheckState::Pending
        );
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]))
                .state,
            CheckState::Pending
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let v = t.observe(Instant::now(), FOR, GRACE, &failing(&["a", "b"]));
        assert_eq!(v.state, CheckState::Failing);
        assert_eq!(v.failing.len(), 1);
        assert_eq!(v.pending, vec![Some("b".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_resets_the_window() {
        let mut t = Tracker::new(Instant::now());
        t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]));
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            t.observe(Instant::now(), FOR, GRACE, &passing()).state,
            CheckState::Passing
        );
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(
            t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]))
                .state,
            CheckState::Pending
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_freezes_the_window_and_concludes_nothing() {
        let mut t = Tracker::new(Instant::now());
        t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let v = t.observe(
            Instant::now(),
            FOR,
            GRACE,
            &Reading::Unreachable("down".into()),
        );
        assert_eq!(v.state, CheckState::Unknown);
        assert!(v.failing.is_empty());
        tokio::time::sleep(Duration::from_secs(5)).await;
        // The window kept running from the first failure: failing now.
        assert_eq!(
            t.observe(Instant::now(), FOR, GRACE, &failing(&["a"]))
                .state,
            CheckState::Failing
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_series_at_all_is_reported_after_the_grace_until_data_appears() {
        let mut t = Tracker::new(Instant::now());
        let nothing = Reading::Evaluated {
            failing: BTreeMap::new(),
            has_data: false,
            healthy: None,
        };
        let v = t.observe(Instant::now(), FOR, GRACE, &nothing);
        assert_eq!((v.state, v.no_data), (CheckState::NoData, false));
        tokio::time::sleep(GRACE).await;
        assert!(t.observe(Instant::now(), FOR, GRACE, &nothing).no_data);
        let v = t.observe(Instant::now(), FOR, GRACE, &passing());
        assert_eq!((v.state, v.no_data), (CheckState::Passing, false));
        // Once seen, an empty alert result is simply "nothing wrong".
        assert!(!t.observe(Instant::now(), FOR, GRACE, &nothing).no_data);
    }
}
