//! The work queue: keys due at a time, handed to workers one at a time per key.
//!
//! # Guarantees
//! - A key is never handed out while a worker still holds it: a key scheduled while it is
//!   being processed is parked and becomes due again when [`WorkQueue::done`] is called.
//! - Bursts coalesce: a key appears at most once, at the earliest time asked for.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

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
