//! What a periodic resync reconciles, and what it counts as looked at without asking anything.
//!
//! A resync re-enqueues keys from the observed store, never asking the engine (the watcher
//! lists the engine again on its own bound). A key whose last reconcile found it clean and
//! quiet (verified, no ticket, nothing time-based to follow) is remembered with the store's
//! [`revision`](crate::docker::Store::revision) of it then. While the store still shows that
//! revision, nothing a reconcile reads has changed: the resync counts the key as looked at.
//! Every other key is reconciled.
//!
//! # Guarantees
//! - A key is remembered only when no change of its containers landed in the store during
//!   the reconcile that found it quiet (the revision at its start is the one recorded).
//! - The controller forgets a key when its reconcile begins, and every manifest change
//!   forgets them all: a memory is never older than the last clean verdict.
//! - What is not in the store is not skipped by this: a change in the ticket store by another
//!   process, a check's request, a completion enqueue their keys directly.

use std::collections::HashMap;

use crate::docker::ServiceKey;

/// The quiet keys, each with the store revision its last clean, quiet reconcile saw.
#[derive(Debug, Default)]
pub struct Quiet {
    revisions: HashMap<ServiceKey, u64>,
    /// Bumped by [`Quiet::clear`]: a reconcile that began before a manifest change records
    /// nothing.
    generation: u64,
}

/// What a resync does with each key.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Reconcile these.
    pub look: Vec<ServiceKey>,
    /// Unchanged in the store since their last clean, quiet reconcile: counted as looked at.
    pub unchanged: Vec<ServiceKey>,
}

impl Quiet {
    /// `key`'s reconcile that began at store revision `revision`, and when [`Quiet::forget`]
    /// returned `generation`, found it clean and quiet.
    pub fn record(&mut self, key: ServiceKey, revision: u64, generation: u64) {
        if generation == self.generation {
            self.revisions.insert(key, revision);
        }
    }

    /// Forgets `key` (its reconcile begins); returns the generation to record it with.
    pub fn forget(&mut self, key: &ServiceKey) -> u64 {
        self.revisions.remove(key);
        self.generation
    }

    /// Forgets every key (the manifests changed).
    pub fn clear(&mut self) {
        self.revisions.clear();
        self.generation += 1;
    }

    pub fn len(&self) -> usize {
        self.revisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }

    /// Splits `keys` into those to reconcile and those unchanged, by each key's current store
    /// revision (`revision`).
    pub fn plan(
        &self,
        keys: impl IntoIterator<Item = ServiceKey>,
        revision: impl Fn(&ServiceKey) -> u64,
    ) -> Plan {
        let mut plan = Plan::default();
        for key in keys {
            if self.revisions.get(&key) == Some(&revision(&key)) {
                plan.unchanged.push(key);
            } else {
                plan.look.push(key);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_key_is_skipped_while_its_revision_holds_and_looked_at_once_it_changes() {
        let (a, b) = (ServiceKey::new("c", "a"), ServiceKey::new("c", "b"));
        let mut quiet = Quiet::default();
        let generation = quiet.forget(&a);
        quiet.record(a.clone(), 7, generation);
        let revisions = HashMap::from([(a.clone(), 7), (b.clone(), 3)]);
        let plan = quiet.plan([a.clone(), b.clone()], |k| revisions[k]);
        assert_eq!(plan.unchanged, vec![a.clone()]);
        assert_eq!(plan.look, vec![b.clone()], "never found quiet: looked at");
        let plan = quiet.plan([a.clone()], |_| 8);
        assert_eq!(plan.look, vec![a.clone()], "changed in the store");
        let generation = quiet.forget(&a);
        assert_eq!(quiet.plan([a.clone()], |_| 7).look, vec![a.clone()]);
        quiet.clear();
        quiet.record(a.clone(), 7, generation);
        assert!(
            quiet.is_empty(),
            "begun before the manifests changed: not recorded"
        );
    }
}
