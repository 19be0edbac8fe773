//! A client's linearizable reads see its own acknowledged writes: a filter key it added is
//! contained, and an edge from one of its vertices reads as its last write left it (when no write
//! of unknown outcome came after that one). Each client is the only writer of these keys, so the
//! expected answer is exact; a stale read fails this check.

use std::collections::BTreeMap;

use plexus_proto::Reply;

use crate::workload::{Action, Record};

/// Checks `history`, whose records are in completion order (so in order per client).
pub fn check(history: &[Record]) -> Vec<String> {
    let mut violations = Vec::new();
    // (client, src, dst) → the edge's state after the client's writes so far; None = unknown.
    let mut edges: BTreeMap<(u64, u64, u64), Option<bool>> = BTreeMap::new();
    for r in history {
        match (&r.action, &r.result) {
            (Action::Follow(s, d), res) => {
                edges.insert((r.client, *s, *d), res.is_ok().then_some(true));
            }
            (Action::Unfollow(s, d), res) => {
                edges.insert((r.client, *s, *d), res.is_ok().then_some(false));
            }
            (Action::HasEdge(s, d), Ok(Reply::Bool(seen))) => {
                let own = *s / 1_000 == r.client;
                let expected = if own {
                    edges.get(&(r.client, *s, *d)).copied().unwrap_or(Some(false))
                } else {
                    None
                };
                if let Some(expected) = expected {
                    if expected != *seen {
                        violations.push(format!(
                            "client {} read edge {s}->{d} as {seen} at {}us after its own writes left it {expected}",
                            r.client, r.invoked_us
                        ));
                    }
                }
            }
            (Action::FilterContains(name, key), Ok(Reply::Bools(b))) if b.first() != Some(&true) => {
                violations.push(format!(
                    "client {} read its acked key {:?} of filter {name} as absent at {}us",
                    r.client,
                    String::from_utf8_lossy(key),
                    r.invoked_us
                ));
            }
            _ => {}
        }
    }
    violations
}
