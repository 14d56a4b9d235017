//! The work queue: keys due at a time, handed to workers one at a time per key.
//!
//! # Guarantees
//! - A key is never handed out while a worker still holds it: a key scheduled while it is
//!   being processed is parked and becomes due again when [`WorkQueue::done`] is called.
//! - Bursts coalesce: a key appears at most once, at the earliest time asked for (later by
//!   the debounce, if the queue has one: [`WorkQueue::with_debounce`]), and carries the
//!   [`Why`] of that earliest ask (of the first one, when two ask for the same time).
//! - The earliest due key is found in O(log n) of the keys waiting; keys due at the same
//!   time come out in the order they were asked for.
//! - [`WorkQueue::run_each`] works on different keys side by side, each in a task of its
//!   own: a key waiting on the engine holds only its own slot, never another key's turn.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why a key was queued: carried to the worker, which names it in the reconcile's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The engine reported a change to one of the key's containers.
    Event,
    /// The watcher listed the containers again (after a lost or restarted event stream).
    Relist,
    /// The periodic look at every key, whether or not anything was reported.
    Resync,
    /// A previous reconcile asked to be looked at again later.
    Retry,
    /// A health check changed its verdict.
    Check,
    /// A long-running remediation reported back (or its lease ran out).
    Completion,
    /// A service this one depends on changed.
    Dependency,
    /// The desired state (the manifest) changed.
    Manifest,
    /// Another process changed the ticket store (a person's `tickets hold|retry|resolve`).
    Tickets,
    /// The first look after the controller started.
    Startup,
}

impl Why {
    /// The name used in spans, logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Why::Event => "event",
            Why::Relist => "relist",
            Why::Resync => "resync",
            Why::Retry => "retry",
            Why::Check => "check",
            Why::Completion => "completion",
            Why::Dependency => "dependency",
            Why::Manifest => "manifest",
            Why::Tickets => "tickets",
            Why::Startup => "startup",
        }
    }
}

/// With a debounce, a key asked for again and again is still handed out at most this many
/// debounce periods after its earliest ask: the debounce delays work, it never starves it.
pub const DEBOUNCE_HOLD_LIMIT: u32 = 10;

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    /// Added to every ask (see [`WorkQueue::with_debounce`]); zero by default.
    debounce: Duration,
}

struct State<K> {
    /// Keys waiting, in the order they are due.
    scheduled: Timeline<K>,
    /// Keys a worker holds now.
    running: HashSet<K>,
    /// Keys scheduled while running: due again once released.
    parked: HashMap<K, Ask>,
    closed: bool,
}

/// When a waiting key is due, and the earliest ask that it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    due: Instant,
    /// The earliest time asked for (before the debounce is added).
    asked: Instant,
    why: Why,
}

impl Ask {
    /// `old` once asked again for `at` because of `why`; `None` when that changes nothing.
    /// Without a debounce the earlier time wins; with one, see [`WorkQueue::with_debounce`].
    fn merge(old: Option<Ask>, at: Instant, why: Why, debounce: Duration) -> Option<Ask> {
        let after = |from: Instant, wait: Duration| from.checked_add(wait).unwrap_or(from);
        let Some(old) = old else {
            return Some(Ask {
                due: after(at, debounce),
                asked: at,
                why,
            });
        };
        if at > old.due {
            return None;
        }
        let (asked, why) = if at < old.asked {
            (at, why)
        } else {
            (old.asked, old.why)
        };
        let limit = after(asked, debounce.saturating_mul(DEBOUNCE_HOLD_LIMIT));
        let new = Ask {
            due: after(at, debounce).min(limit),
            asked,
            why,
        };
        (new != old).then_some(new)
    }
}

/// Keys waiting, indexed both ways: by key to find and move one, by due time (then by the
/// order they were queued in) to take the earliest. Every operation is O(log n).
struct Timeline<K> {
    by_key: HashMap<K, (Ask, u64)>,
    by_due: BTreeMap<(Instant, u64), K>,
    /// Breaks ties between keys due at the same time: first queued, first out.
    seq: u64,
}

impl<K: Clone + Eq + Hash> Timeline<K> {
    fn new() -> Self {
        Timeline {
            by_key: HashMap::new(),
            by_due: BTreeMap::new(),
            seq: 0,
        }
    }

    fn get(&self, key: &K) -> Option<Ask> {
        self.by_key.get(key).map(|(ask, _)| *ask)
    }

    /// Queues `key` as `ask`, replacing what it was queued as.
    fn put(&mut self, key: K, ask: Ask) {
        if let Some((old, seq)) = self.by_key.remove(&key) {
            self.by_due.remove(&(old.due, seq));
        }
        self.seq += 1;
        self.by_due.insert((ask.due, self.seq), key.clone());
        self.by_key.insert(key, (ask, self.seq));
    }

    fn earliest(&self) -> Option<Instant> {
        self.by_due.first_key_value().map(|(&(due, _), _)| due)
    }

    /// Takes the earliest key if it is due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(K, Ask)> {
        let entry = self.by_due.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let key = entry.remove();
        let (ask, _) = self
            .by_key
            .remove(&key)
            .expect("every key in by_due is in by_key");
        Some((key, ask))
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::with_debounce(Duration::ZERO)
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A queue that waits `debounce` past every time asked for, so a burst of asks for one
    /// key runs it once, after the burst (kube-runtime's debounced scheduler does the same).
    ///
    /// An ask for a key already waiting restarts its wait from the ask's own time, unless it
    /// asks for a time later than the key is due (then it changes nothing). The restarts
    /// stop [`DEBOUNCE_HOLD_LIMIT`] periods after the key's earliest ask, so a key asked for
    /// without pause is still handed out. The reason kept is that of the earliest ask.
    ///
    /// # Caveats
    /// Every ask is delayed, retries included: `schedule_why(key, at, ..)` is due at
    /// `at + debounce` at the earliest.
    pub fn with_debounce(debounce: Duration) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                scheduled: Timeline::new(),
                running: HashSet::new(),
                parked: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
            debounce,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `key` due now, counted as a [`Why::Retry`] (see [`WorkQueue::add_why`]).
    pub fn add(&self, key: K) {
        self.add_why(key, Why::Retry);
    }

    /// Makes `key` due at `at`, counted as a [`Why::Retry`] (see [`WorkQueue::schedule_why`]).
    pub fn schedule(&self, key: K, at: Instant) {
        self.schedule_why(key, at, Why::Retry);
    }

    /// Makes `key` due now, because of `why`.
    pub fn add_why(&self, key: K, why: Why) {
        self.schedule_why(key, Instant::now(), why);
    }

    /// Makes `key` due at `at` because of `why`, unless it is already due earlier; the key
    /// keeps the reason of its earliest ask.
    pub fn schedule_why(&self, key: K, at: Instant, why: Why) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            if s.running.contains(&key) {
                // No one can take it before `done`, so there is no one to wake.
                if let Some(ask) = Ask::merge(s.parked.get(&key).copied(), at, why, self.debounce) {
                    s.parked.insert(key, ask);
                }
                return;
            }
            match Ask::merge(s.scheduled.get(&key), at, why, self.debounce) {
                Some(ask) => s.scheduled.put(key, ask),
                None => return,
            }
        }
        self.notify.notify_waiters();
    }

    /// Waits for the next due key, marks it held and says why it was queued. `None` once
    /// the queue is closed.
    pub async fn next(&self) -> Option<(K, Why)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a schedule() in between is not lost.
            notified.as_mut().enable();
            let wake_at = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some((key, ask)) = s.scheduled.pop_due(Instant::now()) {
                    s.running.insert(key.clone());
                    return Some((key, ask.why));
                }
                s.scheduled.earliest()
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Releases a key a worker held; if it was scheduled meanwhile it becomes due again,
    /// with the reason it was parked with.
    pub fn done(&self, key: &K) {
        {
            let mut s = self.lock();
            s.running.remove(key);
            if let Some(ask) = s.parked.remove(key) {
                // A held key is never in `scheduled`, so the parked ask stands as it is.
                s.scheduled.put(key.clone(), ask);
            }
        }
        self.notify.notify_waiters();
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// Keys waiting (due or later), not counting those being processed.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.scheduled.len() + s.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// Hands every due key to `work` with the reason it was queued, each in a task of its
    /// own, at most `limit` at once, and releases the key ([`WorkQueue::done`]) when its task
    /// ends, returned or panicked. Returns once `stop` fires or the queue is closed, after
    /// the tasks still running end.
    ///
    /// One caller takes keys from the queue, so idle capacity costs nothing: there are no
    /// idle workers to wake on every [`WorkQueue::schedule`].
    ///
    /// # Guarantees
    /// - A key is never worked on twice at once (see [`WorkQueue::next`]).
    /// - While fewer than `limit` keys are being worked on, a due key starts at once, however
    ///   long the others take.
    /// - A task that started is never cancelled by `stop`: it is awaited.
    pub async fn run_each<F, Fut>(&self, limit: usize, stop: &CancellationToken, mut work: F)
    where
        F: FnMut(K, Why) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let limit = limit.max(1);
        let mut running = JoinSet::new();
        let mut keys: HashMap<Id, K> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(ended) = running.join_next_with_id() => self.ended(&mut keys, ended),
                next = self.next(), if running.len() < limit => {
                    let Some((key, why)) = next else { break };
                    let id = running.spawn(work(key.clone(), why)).id();
                    keys.insert(id, key);
                }
            }
        }
        while let Some(ended) = running.join_next_with_id().await {
            self.ended(&mut keys, ended);
        }
    }

    fn ended(&self, keys: &mut HashMap<Id, K>, ended: Result<(Id, ()), JoinError>) {
        let id = match ended {
            Ok((id, ())) => id,
            Err(e) => e.id(),
        };
        if let Some(key) = keys.remove(&id) {
            self.done(&key);
        }
    }
}

#[cfg(test)]
mod tests;
