//! The work queue's guarantees on paused time: one hand-out per key at a time, bursts
//! coalesced at the earliest due time with its reason, due order, the debounce, and
//! `run_each`'s limits, stop and panics.

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
