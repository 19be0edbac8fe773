//! Raft safety: committed entries never change. Every replica's state machine reports each entry
//! it applies (through `SimHooks::on_apply`) as `(group, index, term, payload hash)`; an index of
//! a group that is ever applied as two different entries — on two replicas, or on one replica
//! before and after a crash — is a violation. Only applied entries count, and an entry is applied
//! only once committed, so this is exactly Raft's state machine safety property.
//!
//! What it is not: a check of what the entries did (the state checkers do that) or of entries
//! that are installed by snapshot rather than applied one by one (they are not reported).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Conflicting entries kept for the report; more are counted, not kept.
pub const CONFLICTS_KEPT_MAX: usize = 16;

/// The first report of one `(group, index)`: `(term, payload hash, node)`.
type Applied = (u64, u64, u64);

#[derive(Debug, Default)]
struct Log {
    first: BTreeMap<(u32, u64), Applied>,
    conflicts: Vec<String>,
    conflicts_total: u64,
    reports: u64,
}

/// Every applied entry seen in a run, shared by the nodes' observers. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct AppliedEntries {
    log: Arc<Mutex<Log>>,
}

impl AppliedEntries {
    /// Records that `node` applied, in `group`, the entry at `index` of `term` whose payload
    /// hashes to `hash`.
    pub fn record(&self, node: u64, group: u32, index: u64, term: u64, hash: u64) {
        // Only ever updated by whole assignments under the lock; a poisoned log is still usable.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.reports += 1;
        let first = *log.first.entry((group, index)).or_insert((term, hash, node));
        if (first.0, first.1) != (term, hash) {
            log.conflicts_total += 1;
            if log.conflicts.len() < CONFLICTS_KEPT_MAX {
                log.conflicts.push(format!(
                    "group {group} index {index} was applied as term {} entry {:016x} on node {} and as term \
                     {term} entry {hash:016x} on node {node}",
                    first.0, first.1, first.2
                ));
            }
        }
    }

    /// Entry reports received (every replica's applies, re-applies after restarts included).
    pub fn reports(&self) -> u64 {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).reports
    }
}

/// Checks what the run's replicas applied.
pub fn check(applied: &AppliedEntries) -> Vec<String> {
    let log = applied.log.lock().unwrap_or_else(|p| p.into_inner());
    let mut violations = log.conflicts.clone();
    let more = log.conflicts_total.saturating_sub(log.conflicts.len() as u64);
    if more > 0 {
        violations.push(format!("and {more} more applied entries conflict"));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_index_two_entries_is_caught_and_repeats_are_fine() {
        let applied = AppliedEntries::default();
        applied.record(1, 3, 10, 2, 0xaa);
        applied.record(2, 3, 10, 2, 0xaa);
        applied.record(1, 3, 10, 2, 0xaa);
        applied.record(1, 4, 10, 5, 0xbb);
        assert!(check(&applied).is_empty());
        applied.record(3, 3, 10, 3, 0xcc);
        assert_eq!(
            check(&applied),
            vec![
                "group 3 index 10 was applied as term 2 entry 00000000000000aa on node 1 and as term 3 entry \
                 00000000000000cc on node 3"
                    .to_string()
            ]
        );
        assert_eq!(applied.reports(), 5);
    }
}
