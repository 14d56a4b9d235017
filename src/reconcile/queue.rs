//! The work queue: keys due at a time, handed to workers one at a time per key.
//!
//! # Guarantees
//! - A key is never handed out while a worker still holds it: a key scheduled while it is
//!   being processed is parked and becomes due again when [`WorkQueue::done`] is called.
//! - Bursts coalesce: a key appears at most once, at the earliest time asked for.
//! - [`WorkQueue::run_each`] works on different keys side by side, each in a task of its
//!   own: a key waiting on the engine holds only its own slot, never another key's turn.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
}

struct State<K> {
    /// Keys waiting, with the time they are due.
    scheduled: HashMap<K, Instant>,
    /// Keys a worker holds now.
    running: HashSet<K>,
    /// Keys scheduled while running: due again once released.
    parked: HashMap<K, Instant>,
    closed: bool,
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue {
            state: Mutex::new(State {
                scheduled: HashMap::new(),
                running: HashSet::new(),
                parked: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }
}

fn earliest<K: Eq + Hash>(map: &mut HashMap<K, Instant>, key: K, at: Instant) {
    map.entry(key)
        .and_modify(|due| *due = (*due).min(at))
        .or_insert(at);
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `key` due now.
    pub fn add(&self, key: K) {
        self.schedule(key, Instant::now());
    }

    /// Makes `key` due at `at`, unless it is already due earlier.
    pub fn schedule(&self, key: K, at: Instant) {
        {
            let mut s = self.lock();
            if s.closed {
                return;
            }
            if s.running.contains(&key) {
                earliest(&mut s.parked, key, at);
            } else {
                earliest(&mut s.scheduled, key, at);
            }
        }
        self.notify.notify_waiters();
    }

    /// Waits for the next due key and marks it held. `None` once the queue is closed.
    pub async fn next(&self) -> Option<K> {
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
                let now = Instant::now();
                let soonest = s
                    .scheduled
                    .iter()
                    .min_by_key(|(_, due)| **due)
                    .map(|(k, due)| (k.clone(), *due));
                match soonest {
                    Some((key, due)) if due <= now => {
                        s.scheduled.remove(&key);
                        s.running.insert(key.clone());
                        return Some(key);
                    }
                    Some((_, due)) => Some(due),
                    None => None,
                }
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

    /// Releases a key a worker held; if it was scheduled meanwhile it becomes due again.
    pub fn done(&self, key: &K) {
        {
            let mut s = self.lock();
            s.running.remove(key);
            if let Some(at) = s.parked.remove(key) {
                earliest(&mut s.scheduled, key.clone(), at);
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
    /// Hands every due key to `work`, each in a task of its own, at most `limit` at once,
    /// and releases the key ([`WorkQueue::done`]) when its task ends, returned or panicked.
    /// Returns once `stop` fires or the queue is closed, after the tasks still running end.
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
        F: FnMut(K) -> Fut,
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
                key = self.next(), if running.len() < limit => {
                    let Some(key) = key else { break };
                    let id = running.spawn(work(key.clone())).id();
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
        assert_eq!(q.next().await, Some("a"));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_keeps_the_earlier_due_time() {
        let q = WorkQueue::new();
        let start = Instant::now();
        q.schedule("a", start + Duration::from_secs(10));
        q.schedule("a", start + Duration::from_secs(1));
        q.schedule("a", start + Duration::from_secs(5));
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_never_hands_out_a_held_key() {
        let q = Arc::new(WorkQueue::new());
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        q.add("b");
        // "a" is held: only "b" can come out.
        assert_eq!(q.next().await, Some("b"));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished(), "a held key was handed out twice");
        q.done(&"a");
        assert_eq!(waiter.await.unwrap(), Some("a"));
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
        assert_eq!(waiter.await.unwrap(), Some("now"));
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
                q.run_each(limit, &stop, move |key| {
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
                q.run_each(4, &stop, move |_key: &str| {
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
}
