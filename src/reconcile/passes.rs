//! Full passes: when every key enqueued together (the start's first pass, a periodic resync)
//! has been reconciled once. Pure bookkeeping: the controller tells it when a pass begins,
//! when a key's reconcile ends and which keys are still declared; it says which passes are
//! done and how long they took (`operator_first_reconcile_seconds`,
//! `operator_resync_seconds`).
//!
//! # Guarantees
//! - A pass is done once every key it began with has a reconcile that *started* after the
//!   pass began and ended (a reconcile already under way when the pass began is not enough:
//!   the queue parks the key and hands it out again, and that later reconcile counts).
//! - A key removed from the manifests (or otherwise no longer declared) never keeps a pass
//!   open: [`Passes::retain`] drops it, and a pass it leaves empty is done then.
//! - At most one pass of each kind is open: a resync that comes while the previous one is
//!   still open is not measured (its keys are still reconciled; the open pass finishes with
//!   its own, true duration).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What began a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// The first pass after the controller's start (its first full list of the engine).
    First,
    /// A periodic resync (`run --resync`).
    Resync,
}

/// A pass that is done.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub kind: PassKind,
    /// From the pass's beginning to the end of its last key's reconcile (or the removal that
    /// emptied it).
    pub took: Duration,
    /// The keys it began with.
    pub keys: usize,
    /// Of those, how many were removed (undeclared) before they were reconciled.
    pub removed: usize,
}

#[derive(Debug)]
struct Pass<K> {
    kind: PassKind,
    began: Instant,
    pending: HashSet<K>,
    keys: usize,
    removed: usize,
}

impl<K> Pass<K> {
    fn finished(&self, now: Instant) -> Finished {
        Finished {
            kind: self.kind,
            took: now.saturating_duration_since(self.began),
            keys: self.keys,
            removed: self.removed,
        }
    }
}

/// The open passes (at most one per [`PassKind`]).
#[derive(Debug)]
pub struct Passes<K> {
    open: Vec<Pass<K>>,
}

impl<K> Default for Passes<K> {
    fn default() -> Self {
        Passes { open: Vec::new() }
    }
}

impl<K: Clone + Eq + Hash> Passes<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a pass of `kind` is open.
    pub fn is_open(&self, kind: PassKind) -> bool {
        self.open.iter().any(|p| p.kind == kind)
    }

    /// Begins a pass of `kind` over `keys` at `now`. Returns `false` (and begins nothing)
    /// when a pass of that kind is still open. A pass over no keys is done at once: it is
    /// returned in `Err`.
    pub fn begin(
        &mut self,
        kind: PassKind,
        keys: impl IntoIterator<Item = K>,
        now: Instant,
    ) -> Result<bool, Finished> {
        if self.is_open(kind) {
            return Ok(false);
        }
        let pending: HashSet<K> = keys.into_iter().collect();
        let pass = Pass {
            kind,
            began: now,
            keys: pending.len(),
            pending,
            removed: 0,
        };
        if pass.pending.is_empty() {
            return Err(pass.finished(now));
        }
        self.open.push(pass);
        Ok(true)
    }

    /// A reconcile of `key` that started at `started` ended at `now`: the passes it
    /// completes, in the order they began.
    pub fn reconciled(&mut self, key: &K, started: Instant, now: Instant) -> Vec<Finished> {
        for pass in &mut self.open {
            if started >= pass.began {
                pass.pending.remove(key);
            }
        }
        self.take_done(now)
    }

    /// Only the keys for which `declared` holds are still waited for: the others (removed
    /// from the manifests) no longer hold their passes open. Returns the passes that are
    /// done now.
    pub fn retain(&mut self, declared: impl Fn(&K) -> bool, now: Instant) -> Vec<Finished> {
        for pass in &mut self.open {
            let before = pass.pending.len();
            pass.pending.retain(|k| declared(k));
            pass.removed += before - pass.pending.len();
        }
        self.take_done(now)
    }

    fn take_done(&mut self, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.open.retain(|pass| {
            if pass.pending.is_empty() {
                done.push(pass.finished(now));
                false
            } else {
                true
            }
        });
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_pass_is_done_when_its_last_key_is_reconciled() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        assert_eq!(passes.begin(PassKind::First, ["a", "b", "c"], t0), Ok(true));
        assert!(passes.reconciled(&"a", at(t0, 1), at(t0, 5)).is_empty());
        // The same key twice does not count for another.
        assert!(passes.reconciled(&"a", at(t0, 6), at(t0, 7)).is_empty());
        assert!(passes.reconciled(&"c", at(t0, 2), at(t0, 9)).is_empty());
        let done = passes.reconciled(&"b", at(t0, 3), at(t0, 12));
        assert_eq!(
            done,
            vec![Finished {
                kind: PassKind::First,
                took: Duration::from_millis(12),
                keys: 3,
                removed: 0,
            }]
        );
        assert!(!passes.is_open(PassKind::First));
    }

    #[test]
    fn a_reconcile_begun_before_the_pass_does_not_count_for_it() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        passes.begin(PassKind::Resync, ["a"], at(t0, 10)).unwrap();
        // Under way when the pass began: the queue runs "a" again after it, and that counts.
        assert!(passes.reconciled(&"a", at(t0, 5), at(t0, 15)).is_empty());
        let done = passes.reconciled(&"a", at(t0, 15), at(t0, 20));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].took, Duration::from_millis(10));
    }

    #[test]
    fn a_key_removed_mid_pass_does_not_keep_the_pass_open() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        passes.begin(PassKind::First, ["a", "gone"], t0).unwrap();
        assert!(passes.reconciled(&"a", at(t0, 1), at(t0, 4)).is_empty());
        // "gone" is removed from the manifests before it was reconciled: it will never be.
        let done = passes.retain(|k| *k != "gone", at(t0, 30));
        assert_eq!(
            done,
            vec![Finished {
                kind: PassKind::First,
                took: Duration::from_millis(30),
                keys: 2,
                removed: 1,
            }]
        );
        assert!(!passes.is_open(PassKind::First));
        // A retain that removes nothing pending finishes nothing.
        passes
            .begin(PassKind::Resync, ["a", "b"], at(t0, 40))
            .unwrap();
        assert!(passes.retain(|k| *k != "gone", at(t0, 41)).is_empty());
        assert!(passes.is_open(PassKind::Resync));
    }

    #[test]
    fn a_pass_whose_keys_are_all_removed_is_done_with_the_removal() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        passes.begin(PassKind::Resync, ["a", "b"], t0).unwrap();
        let done = passes.retain(|_| false, at(t0, 3));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].keys, done[0].removed), (2, 2));
    }

    #[test]
    fn a_pass_over_nothing_is_done_at_once() {
        let t0 = Instant::now();
        let mut passes = Passes::<&str>::new();
        let done = passes.begin(PassKind::First, [], t0).unwrap_err();
        assert_eq!(done.took, Duration::ZERO);
        assert_eq!(done.keys, 0);
        assert!(!passes.is_open(PassKind::First));
    }

    #[test]
    fn one_pass_of_a_kind_at_a_time_and_kinds_are_independent() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        passes.begin(PassKind::First, ["a", "b"], t0).unwrap();
        assert_eq!(
            passes.begin(PassKind::Resync, ["a", "b"], at(t0, 5)),
            Ok(true)
        );
        // A second resync while the first is open is not begun.
        assert_eq!(passes.begin(PassKind::Resync, ["a"], at(t0, 6)), Ok(false));
        // "a" started after both began: counts for both; "b" started between them: only
        // for the first pass.
        assert!(passes.reconciled(&"a", at(t0, 7), at(t0, 8)).is_empty());
        let done = passes.reconciled(&"b", at(t0, 3), at(t0, 9));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].kind, PassKind::First);
        assert!(passes.is_open(PassKind::Resync));
        let done = passes.reconciled(&"b", at(t0, 10), at(t0, 11));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].kind, PassKind::Resync);
        assert_eq!(done[0].took, Duration::from_millis(6));
        // Now a new resync may begin.
        assert_eq!(passes.begin(PassKind::Resync, ["a"], at(t0, 12)), Ok(true));
    }

    #[test]
    fn keys_not_in_the_pass_change_nothing() {
        let t0 = Instant::now();
        let mut passes = Passes::new();
        passes.begin(PassKind::Resync, ["a"], t0).unwrap();
        assert!(passes.reconciled(&"z", at(t0, 1), at(t0, 2)).is_empty());
        assert!(passes.is_open(PassKind::Resync));
    }
}
