//! Per-key linearizability of graph edges: for every edge `src → dst` the workload touched, a
//! Wing–Gong–Lowe search (`wgl`) over its follows, unfollows and `HasEdge` reads against a
//! register model.
//!
//! The sequential model: an edge is a boolean register, initially absent (`false`). `Follow`
//! sets it and answers `Changed(c)` with `c` = the edge was absent before; `Unfollow` clears it
//! and answers `Changed(c)` with `c` = the edge was present before; `HasEdge` answers its value.
//! So an acknowledged write also reads: a `Follow` that answered `Changed(false)` found the edge
//! present. The final out-edges read after healing are one more read per edge, after everything
//! else. A write that failed or timed out may have taken effect at any time after its invocation
//! or never (it returns at `wgl::NEVER`, and it says nothing about what it found). A failed read
//! constrains nothing and is dropped.
//!
//! An answer that no linearization explains is a violation; a key whose search runs past
//! `SEARCH_STEPS_MAX` is reported unchecked, never as a violation.
//!
//! What it is not: a check of the in-halves (`edges` compares out- and in-halves after healing);
//! `HasEdge` reads the out-half on `src`'s shard, which a follow changes atomically.

use plexus_proto::Reply;

use super::linearizable::{describe, final_read, per_key, Outcome, SEARCH_STEPS_MAX};
use super::wgl::{self, Register, RegisterOp, Timed, NEVER};
use super::FinalState;
use crate::workload::{Action, Record};

/// Checks every edge in `history` against the register model, with `end` as the final read.
pub fn check(history: &[Record], end: &FinalState) -> Outcome {
    let (per_edge, last_us) = per_key(history, |r| match &r.action {
        Action::Follow(s, d) | Action::Unfollow(s, d) | Action::HasEdge(s, d) => Some((*s, *d)),
        _ => None,
    });
    let mut outcome = Outcome::default();
    for ((src, dst), records) in per_edge {
        let (ops, what) = build(&records, end, (src, dst), last_us);
        let result = wgl::search(&Register, false, &ops, SEARCH_STEPS_MAX);
        outcome.record(format!("edge {src}->{dst}"), result, ops.len(), |i| what[i].clone());
    }
    outcome
}

/// The register operations of one edge, and a sentence for each (for reports).
fn build(
    records: &[&Record],
    end: &FinalState,
    (src, dst): (u64, u64),
    last_us: u64,
) -> (Vec<Timed<RegisterOp>>, Vec<String>) {
    let mut ops = Vec::with_capacity(records.len() + 1);
    let mut what = Vec::with_capacity(records.len() + 1);
    for r in records {
        let acked = r.result.is_ok();
        let op = match (&r.action, &r.result) {
            (Action::Follow(..), Ok(Reply::Changed(added))) => RegisterOp::Write {
                value: true,
                before: Some(!added),
            },
            (Action::Unfollow(..), Ok(Reply::Changed(removed))) => RegisterOp::Write {
                value: false,
                before: Some(*removed),
            },
            (Action::Follow(..), _) => RegisterOp::Write {
                value: true,
                before: None,
            },
            (Action::Unfollow(..), _) => RegisterOp::Write {
                value: false,
                before: None,
            },
            (Action::HasEdge(..), Ok(Reply::Bool(present))) => RegisterOp::Read(*present),
            _ => continue,
        };
        ops.push(Timed {
            call: r.invoked_us,
            ret: if acked { r.completed_us } else { NEVER },
            op,
        });
        what.push(describe(r));
    }
    // The final state is read only for vertices the workload knows; an edge from elsewhere has
    // no final read.
    if let Some(outs) = end.out_edges.get(&src) {
        let present = outs.contains(&dst);
        ops.push(final_read(last_us, RegisterOp::Read(present)));
        what.push(format!(
            "the final read after healing (edge {})",
            if present { "present" } else { "absent" }
        ));
    }
    (ops, what)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use plexus_proto::{ErrorReply, Response};

    use super::*;
    use crate::checkers::test_support::rec;

    fn end(present: bool) -> FinalState {
        let mut end = FinalState::default();
        let outs = if present {
            BTreeSet::from([2_000])
        } else {
            BTreeSet::new()
        };
        end.out_edges.insert(1_000, outs);
        end
    }

    fn follow(at: (u64, u64), result: Response) -> Record {
        rec(1, Action::Follow(1_000, 2_000), at, result)
    }

    fn unfollow(at: (u64, u64), result: Response) -> Record {
        rec(1, Action::Unfollow(1_000, 2_000), at, result)
    }

    fn has_edge(client: u64, at: (u64, u64), seen: bool) -> Record {
        rec(client, Action::HasEdge(1_000, 2_000), at, Ok(Reply::Bool(seen)))
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let history = vec![
            follow((0, 10), Ok(Reply::Changed(true))),
            unfollow((20, 40), Ok(Reply::Changed(true))),
            has_edge(2, (25, 30), true),
            has_edge(3, (26, 31), false),
            has_edge(3, (41, 50), false),
            follow((60, 70), Err(ErrorReply::Timeout("t".into()))),
            has_edge(2, (80, 90), false),
        ];
        let out = check(&history, &end(true));
        assert_eq!(out.violations, Vec::<String>::new());
        assert_eq!((out.keys_checked, out.unchecked.len()), (1, 0));
    }

    #[test]
    fn another_clients_stale_read_is_caught() {
        // Client 2 reads after the unfollow was acknowledged, and still sees the edge.
        let history = vec![
            follow((0, 10), Ok(Reply::Changed(true))),
            unfollow((20, 30), Ok(Reply::Changed(true))),
            has_edge(2, (35, 40), true),
        ];
        assert_eq!(
            check(&history, &end(false)).violations,
            vec![
                "edge 1000->2000: its 4 operations have no linearization; the longest explained prefix has 2, \
                 and then no order explains client 2 HasEdge(1000, 2000) in [35us, 40us] -> Bool(true)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_follow_applied_twice_answers_what_no_order_explains() {
        // The second answer says the edge was already there, though only this follow adds it:
        // what a retried write applied again (instead of answered from the session) looks like.
        let history = vec![follow((0, 10), Ok(Reply::Changed(false)))];
        let out = check(&history, &end(true));
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert!(
            out.violations[0].ends_with("client 1 Follow(1000, 2000) in [0us, 10us] -> Changed(false)"),
            "{}",
            out.violations[0]
        );
    }

    #[test]
    fn a_lost_edge_fails_the_final_read() {
        let history = vec![follow((0, 10), Ok(Reply::Changed(true)))];
        let out = check(&history, &end(false));
        assert_eq!(out.violations.len(), 1);
        assert!(out.violations[0].ends_with("the final read after healing (edge absent)"));
    }
}
