//! No write is applied twice: every timeline item is unique (the workload never appends the same
//! item twice), so an item that appears twice is a retried append applied again.

use std::collections::BTreeSet;

use super::FinalState;

/// Checks the final timelines.
pub fn check(end: &FinalState) -> Vec<String> {
    let mut violations = Vec::new();
    for (owner, entries) in &end.timelines {
        let mut seen = BTreeSet::new();
        for (id, item) in entries {
            if !seen.insert(item) {
                violations.push(format!(
                    "timeline {owner} holds item {:?} twice (again as id {id})",
                    String::from_utf8_lossy(item)
                ));
            }
        }
    }
    violations
}
