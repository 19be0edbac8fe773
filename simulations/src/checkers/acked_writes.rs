//! No acknowledged write is lost: every acknowledged timeline append is in its timeline with the
//! id it was acknowledged with, every acknowledged filter key is in its filter, and every edge's
//! final state is the effect of its last acknowledged write or of a later write whose outcome the
//! client never learned.

use std::collections::BTreeMap;

use plexus_proto::Reply;

use super::FinalState;
use crate::workload::{Action, Record};

/// Checks `history` against `end`.
pub fn check(history: &[Record], end: &FinalState) -> Vec<String> {
    let mut violations = Vec::new();
    // Per edge: its writes in the single writer's order, as (adds, acknowledged).
    let mut edges: BTreeMap<(u64, u64), Vec<(bool, bool)>> = BTreeMap::new();
    for r in history {
        match (&r.action, &r.result) {
            (Action::Append(owner, item), Ok(Reply::Appended(id))) => {
                let present = end
                    .timelines
                    .get(owner)
                    .is_some_and(|t| t.iter().any(|(i, it)| i == id && it == item));
                if !present {
                    violations.push(format!(
                        "acked append of {:?} to timeline {owner} as id {id} is lost",
                        String::from_utf8_lossy(item)
                    ));
                }
            }
            (Action::FilterAdd(name, key), Ok(_))
                if end.filter_hits.get(&(name.clone(), key.clone())) != Some(&true) =>
            {
                violations.push(format!(
                    "acked key {:?} of filter {name} is lost",
                    String::from_utf8_lossy(key)
                ));
            }
            (Action::Follow(s, d), result) => edges.entry((*s, *d)).or_default().push((true, result.is_ok())),
            (Action::Unfollow(s, d), result) => edges.entry((*s, *d)).or_default().push((false, result.is_ok())),
            _ => {}
        }
    }
    for ((src, dst), writes) in edges {
        let last_acked = writes.iter().rposition(|(_, acked)| *acked);
        let mut allowed: Vec<bool> = match last_acked {
            Some(i) => vec![writes[i].0],
            None => vec![false],
        };
        let after = last_acked.map_or(0, |i| i + 1);
        allowed.extend(writes[after..].iter().map(|(adds, _)| *adds));
        let present = end.out_edges.get(&src).is_some_and(|s| s.contains(&dst));
        if !allowed.contains(&present) {
            violations.push(format!(
                "edge {src}->{dst} is {} but its writes {writes:?} (adds, acked) allow only {allowed:?}",
                if present { "present" } else { "absent" }
            ));
        }
    }
    violations
}
