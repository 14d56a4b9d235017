//! The controller's settings ([`ControllerConfig`]), their defaults in one place, apart
//! from the loop that reads them: the CLI and `plan` build and read them without the loop.

use std::time::Duration;

use crate::docker::actions::Limits;

/// Keys reconciled at once by default. A repair spends most of its time waiting on the
/// engine (half a second and more for a container it is still cleaning up after), so this is
/// set for many services repaired side by side, as the engine restarts its own, not for the
/// CPU count; the bound keeps engine connections and store threads within a process's limits.
pub const DEFAULT_WORKERS: usize = 256;

/// Settings of the loop, defaults in one place.
#[derive(Debug, Clone)]
#[must_use]
pub struct ControllerConfig {
    /// How often every key is looked at again, whatever the events say: from the observed
    /// store, without asking the engine (see [`super::resync`]).
    pub resync: Duration,
    /// How often the watcher lists the engine again while its event stream is healthy: the
    /// bound on how long a change the stream missed can go unseen.
    pub relist: Duration,
    /// Keys reconciled in parallel, each in a task of its own (never the same key twice).
    pub workers: usize,
    /// How often a service waiting for a dependency looks again.
    pub dependency_poll: Duration,
    /// How often a failed observation (engine unreachable) is retried.
    pub observe_retry: Duration,
    /// The most a shutdown waits for in-flight repairs.
    pub shutdown_grace: Duration,
    /// The most a long-running remediator may hold a key without reporting back; past it
    /// the attempt is recorded as failed and the key looked at again.
    pub lease_timeout: Duration,
    /// How long a (re)started container must stay running before the controller believes
    /// it is repaired: a crash-looping process is up for a moment after every start.
    pub settle: Duration,
    pub limits: Limits,
    /// Act on nothing, whatever the policies say: drifts open and close tickets, nothing
    /// repairs them (what a chaos drill's `--baseline` compares the controller against).
    pub observe_only: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            resync: Duration::from_secs(30),
            relist: Duration::from_secs(300),
            workers: DEFAULT_WORKERS,
            dependency_poll: Duration::from_secs(1),
            observe_retry: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(60),
            lease_timeout: Duration::from_secs(30 * 60),
            settle: Duration::from_secs(3),
            limits: Limits::default(),
            observe_only: false,
        }
    }
}

impl ControllerConfig {
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    pub fn relist(mut self, relist: Duration) -> Self {
        self.relist = relist;
        self
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    pub fn observe_only(mut self, observe_only: bool) -> Self {
        self.observe_only = observe_only;
        self
    }
}
