//! Timeline ids are strictly ordered: every page a client read is strictly newest-first, every
//! final timeline is strictly oldest-first, and one client's acknowledged appends to one timeline
//! got increasing ids in the order they were acknowledged.

use std::collections::BTreeMap;

use plexus_proto::Reply;

use super::FinalState;
use crate::workload::{Action, Record};

/// Checks `history` and `end`.
pub fn check(history: &[Record], end: &FinalState) -> Vec<String> {
    let mut violations = Vec::new();
    let mut last_id: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for r in history {
        match (&r.action, &r.result) {
            (Action::ReadTimeline(owner), Ok(Reply::Page(page)))
                if page.entries.windows(2).any(|w| w[0].id <= w[1].id) =>
            {
                let ids: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
                violations.push(format!(
                    "client {} read timeline {owner} out of order: {ids:?}",
                    r.client
                ));
            }
            (Action::Append(owner, _), Ok(Reply::Appended(id))) => {
                if let Some(prev) = last_id.insert((r.client, *owner), *id) {
                    if *id <= prev {
                        violations.push(format!(
                            "client {}'s append to timeline {owner} got id {id} after {prev}",
                            r.client
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    for (owner, entries) in &end.timelines {
        if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            violations.push(format!("final timeline {owner} is not strictly ordered"));
        }
    }
    violations
}
