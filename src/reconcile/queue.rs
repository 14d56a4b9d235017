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
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queue_coalesces_bursts_into_one_item() {
        let q = WorkQueue::new();
        for _ in 0..100 {
            q.add("a");
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some(("a", Why::Retry)));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_keeps_the_earlier_due_time() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.schedule("a", start + Duration::from_secs(10));
        q.schedule("a", start + Duration::from_secs(1));
        q.schedule("a", start + Duration::from_secs(5));
        assert_eq!(q.next().await, Some(("a", Why::Retry)));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_never_hands_out_a_held_key() {
        let q = Arc::new(WorkQueue::new());
        q.add("a");
        assert_eq!(q.next().await, Some(("a", Why::Retry)));
        q.add("a");
        q.add("b");
        // "a" is held: only "b" can come out.
        assert_eq!(q.next().await, Some(("b", Why::Retry)));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "a held key was handed out twice");
        q.done(&"a");
        assert_eq!(waiter.await.unwrap(), Some(("a", Why::Retry)));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wakes_a_sleeping_worker_for_an_earlier_key() {
        let q = Arc::new(WorkQueue::new());
        let start = Instant::now();
        q.schedule("late", start + Duration::from_secs(100));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add("now");
        assert_eq!(waiter.await.unwrap(), Some(("now", Why::Retry)));
        assert!(Instant::now() - start < Duration::from_secs(100));
    }

    /// Records how many tasks run at once (overall and per key) and how often each key ran.
    #[derive(Default)]
    struct Tally {
        now: usize,
        most: usize,
        per_key: HashMap<&'static str, usize>,
        most_per_key: usize,
        runs: HashMap<&'static str, usize>,
    }

    impl Tally {
        fn enter(&mut self, key: &'static str) {
            self.now += 1;
            self.most = self.most.max(self.now);
            let k = self.per_key.entry(key).or_default();
            *k += 1;
            self.most_per_key = self.most_per_key.max(*k);
            *self.runs.entry(key).or_default() += 1;
        }

        fn leave(&mut self, key: &'static str) {
            self.now -= 1;
            *self.per_key.entry(key).or_default() -= 1;
        }
    }

    /// Runs `run_each` with `limit`; each key's work takes `takes` (paused time) and may
    /// schedule its own key again once (`again`).
    fn drive(
        q: &Arc<WorkQueue<&'static str>>,
        limit: usize,
        takes: Duration,
        again: &'static [&'static str],
    ) -> (
        Arc<Mutex<Tally>>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let task = {
            let (q, tally, stop) = (q.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let work_q = q.clone();
                q.run_each(limit, &stop, move |key, _why| {
                    let (q, tally) = (work_q.clone(), tally.clone());
                    async move {
                        let first = {
                            let mut t = tally.lock().unwrap();
                            t.enter(key);
                            t.runs[key] == 1
                        };
                        if first && again.contains(&key) {
                            q.add(key);
                        }
                        tokio::time::sleep(takes).await;
                        tally.lock().unwrap().leave(key);
                    }
                })
                .await
            })
        };
        (tally, stop, task)
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_works_on_different_keys_side_by_side() {
        let q = Arc::new(WorkQueue::new());
        let start = Instant::now();
        for key in ["a", "b", "c", "d", "e"] {
            q.add(key);
        }
        let (tally, stop, task) = drive(&q, 64, Duration::from_secs(10), &[]);
        tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(1)).await;
        {
            let t = tally.lock().unwrap();
            assert_eq!(t.most, 5, "every key started at once");
            assert_eq!(t.now, 0, "and all finished after one work's time");
        }
        stop.cancel();
        task.await.unwrap();
        assert!(Instant::now() - start < Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_keeps_to_its_limit() {
        let q = Arc::new(WorkQueue::new());
        for key in ["a", "b", "c", "d", "e"] {
            q.add(key);
        }
        let (tally, stop, task) = drive(&q, 2, Duration::from_secs(1), &[]);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(tally.lock().unwrap().runs.len(), 5, "all started by 2.5 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        {
            let t = tally.lock().unwrap();
            assert_eq!(t.most, 2);
            assert_eq!(t.now, 0);
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_never_works_on_a_key_twice_at_once() {
        let q = Arc::new(WorkQueue::new());
        q.add("a");
        q.add("b");
        // Each schedules itself again while it is being worked on: parked, then run again.
        let (tally, stop, task) = drive(&q, 64, Duration::from_secs(5), &["a", "b"]);
        tokio::time::sleep(Duration::from_secs(11)).await;
        {
            let t = tally.lock().unwrap();
            assert_eq!(t.most_per_key, 1, "a key ran twice at once");
            assert_eq!((t.runs["a"], t.runs["b"]), (2, 2));
            assert_eq!(t.most, 2, "different keys still side by side");
        }
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_releases_the_key_of_a_task_that_panicked() {
        let q = Arc::new(WorkQueue::new());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (q, runs, stop) = (q.clone(), runs.clone(), stop.clone());
            tokio::spawn(async move {
                q.run_each(4, &stop, move |_key: &str, _why| {
                    let runs = runs.clone();
                    async move {
                        if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                            panic!("the first run of the key panics");
                        }
                    }
                })
                .await
            })
        };
        q.add("a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add("a");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_lets_running_work_finish_on_stop_and_starts_none() {
        let q = Arc::new(WorkQueue::new());
        let start = Instant::now();
        q.add("a");
        let (tally, stop, task) = drive(&q, 4, Duration::from_secs(10), &[]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        q.add("b");
        task.await.unwrap();
        let t = tally.lock().unwrap();
        assert_eq!(t.now, 0, "the running work finished");
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        assert!(!t.runs.contains_key("b"), "nothing starts after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_releases_waiting_workers() {
        let q = Arc::new(WorkQueue::<&str>::new());
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }

    /// Takes `n` keys that are all due now, in the order they come out.
    async fn take<K: Clone + Eq + Hash>(q: &WorkQueue<K>, n: usize) -> Vec<(K, Why)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let taken = q.next().await.expect("the queue is open");
            q.done(&taken.0);
            out.push(taken);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn queue_hands_out_the_earliest_of_many_keys_each_when_due() {
        let q = WorkQueue::new();
        let start = Instant::now();
        // 100 keys due 1..=100 s from now, asked for in a scrambled order.
        for i in 0..100u64 {
            let secs = (i * 37) % 100 + 1;
            q.schedule_why(secs, start + Duration::from_secs(secs), Why::Resync);
        }
        for secs in 1..=100u64 {
            assert_eq!(q.next().await, Some((secs, Why::Resync)));
            assert_eq!(Instant::now() - start, Duration::from_secs(secs));
        }
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_moves_a_key_earlier_but_never_later() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.schedule("a", start + Duration::from_secs(10));
        q.schedule("b", start + Duration::from_secs(5));
        q.schedule("a", start + Duration::from_secs(1)); // earlier: moves ahead of "b"
        q.schedule("b", start + Duration::from_secs(20)); // later: "b" stays at 5 s
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some(("a", Why::Retry)));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(q.next().await, Some(("b", Why::Retry)));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(q.is_empty(), "the key moved earlier left nothing behind");
    }

    #[tokio::test(start_paused = true)]
    async fn queue_keeps_the_reason_of_the_earliest_ask() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.schedule_why("a", start + Duration::from_secs(30), Why::Resync);
        q.schedule_why("a", start + Duration::from_secs(2), Why::Retry);
        q.schedule_why("a", start + Duration::from_secs(9), Why::Check);
        assert_eq!(q.next().await, Some(("a", Why::Retry)));

        // Two asks for the same time: the first one's reason stands.
        q.add_why("b", Why::Event);
        q.add_why("b", Why::Completion);
        assert_eq!(q.next().await, Some(("b", Why::Event)));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_parks_a_held_key_with_the_reason_of_its_earliest_ask() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.add_why("a", Why::Startup);
        assert_eq!(q.next().await, Some(("a", Why::Startup)));
        q.schedule_why("a", start + Duration::from_secs(60), Why::Resync);
        q.schedule_why("a", start + Duration::from_secs(3), Why::Completion);
        q.schedule_why("a", start + Duration::from_secs(3), Why::Event);
        assert_eq!(q.len(), 1, "parked keys are counted as waiting");
        tokio::time::sleep(Duration::from_secs(10)).await;
        q.done(&"a");
        // Due since 3 s: out at once, with the reason of that ask.
        assert_eq!(q.next().await, Some(("a", Why::Completion)));
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_hands_out_keys_due_together_in_the_order_asked() {
        let q = WorkQueue::new();
        for key in ["c", "a", "d", "b"] {
            q.add_why(key, Why::Event);
        }
        let order: Vec<_> = take(&q, 4).await.into_iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["c", "a", "d", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_pops_ten_thousand_keys_in_due_order() {
        const N: u64 = 10_000;
        let q = WorkQueue::new();
        let start = Instant::now();
        // Scrambled (7919 is prime to N), and each key asked for a second, later time too.
        for i in 0..N {
            let key = (i * 7919) % N;
            q.schedule_why(key, start + Duration::from_millis(key), Why::Resync);
            q.schedule_why(key, start + Duration::from_millis(key + N), Why::Retry);
        }
        assert_eq!(q.len(), N as usize);
        tokio::time::advance(Duration::from_millis(N)).await;
        let taken = take(&q, N as usize).await;
        let expected: Vec<_> = (0..N).map(|key| (key, Why::Resync)).collect();
        assert_eq!(taken, expected);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_delays_a_key_by_the_period() {
        let q = WorkQueue::with_debounce(Duration::from_secs(2));
        let start = Instant::now();
        q.add_why("a", Why::Event);
        assert_eq!(q.next().await, Some(("a", Why::Event)));
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_runs_a_burst_once_after_its_last_ask() {
        let q = Arc::new(WorkQueue::with_debounce(Duration::from_secs(3)));
        let start = Instant::now();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        q.add_why("a", Why::Event);
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add_why("a", Why::Relist); // restarts the wait: due at 4 s, not 3 s
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !waiter.is_finished(),
            "the second ask restarted the debounce"
        );
        assert_eq!(waiter.await.unwrap(), Some(("a", Why::Event)));
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_ignores_an_ask_later_than_the_key_is_due() {
        let q = WorkQueue::with_debounce(Duration::from_secs(2));
        let start = Instant::now();
        q.add_why("a", Why::Event);
        q.schedule_why("a", start + Duration::from_secs(30), Why::Retry);
        assert_eq!(q.next().await, Some(("a", Why::Event)));
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_holds_a_key_asked_for_without_pause_back_only_so_long() {
        let debounce = Duration::from_secs(1);
        let q = Arc::new(WorkQueue::with_debounce(debounce));
        let start = Instant::now();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        // An ask every half period, for longer than the hold limit.
        let asker = {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    q.add_why("a", Why::Event);
                    tokio::time::sleep(debounce / 2).await;
                }
            })
        };
        assert_eq!(waiter.await.unwrap(), Some(("a", Why::Event)));
        asker.abort();
        assert_eq!(Instant::now() - start, debounce * DEBOUNCE_HOLD_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn run_each_hands_the_work_the_reason_the_key_was_queued() {
        let q = Arc::new(WorkQueue::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        q.add_why("a", Why::Manifest);
        let task = {
            let (q, seen, stop) = (q.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                q.run_each(4, &stop, move |key: &str, why| {
                    let seen = seen.clone();
                    async move { seen.lock().unwrap().push((key, why)) }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [("a", Why::Manifest)]);
    }

    #[test]
    fn why_names_are_kebab_case_and_distinct() {
        let all = [
            Why::Event,
            Why::Relist,
            Why::Resync,
            Why::Retry,
            Why::Check,
            Why::Completion,
            Why::Dependency,
            Why::Manifest,
            Why::Tickets,
            Why::Startup,
        ];
        let names: HashSet<_> = all.iter().map(Why::as_str).collect();
        assert_eq!(names.len(), all.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{name}"
            );
        }
    }
}
