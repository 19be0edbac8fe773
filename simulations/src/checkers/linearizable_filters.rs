//! Per-key linearizability of named filters, on the side a Bloom filter can be checked: for every
//! `(filter, key)` the workload touched, a Wing–Gong–Lowe search (`wgl`) over its adds and
//! `contains` reads against a register model.
//!
//! The sequential model: a key is a boolean register, initially not added (`false`); `FilterAdd`
//! sets it. A filter may answer `contains` with a false positive, so a `true` answer is allowed
//! in every state, and only a `false` answer reads the register: it requires the key not added
//! yet. Likewise `FilterAdd` answers `Changed(c)` with `c` = some key tested absent before it was
//! inserted, and a filter never reports an added key absent, so `Changed(true)` requires the key
//! not added yet, while `Changed(false)` (perhaps a false positive) constrains nothing. A `true`
//! answer, which every state allows and which changes nothing, can always be placed at its
//! invocation, so it is left out of the search. An add that failed or timed out may have taken
//! effect at any time after its invocation or never. The final lookup of every acknowledged key
//! after healing is one more read, after everything else.
//!
//! So the violation is exact: a `contains` (or an add's `Changed(true)`) that says a key is
//! absent although an add of that key was acknowledged before it was invoked. A key whose search
//! runs past `SEARCH_STEPS_MAX` is reported unchecked, never as a violation.
//!
//! What it is not: a check of the false-positive rate, or of sealed filters' contents beyond
//! the absence side.

use plexus_proto::Reply;

use super::linearizable::{describe, final_read, per_key, Outcome, SEARCH_STEPS_MAX};
use super::wgl::{self, Register, RegisterOp, Timed, NEVER};
use super::FinalState;
use crate::workload::{Action, Record};

/// Checks every filter key in `history` against the model, with `end` as the final read.
pub fn check(history: &[Record], end: &FinalState) -> Outcome {
    let (per_filter_key, last_us) = per_key(history, |r| match &r.action {
        Action::FilterAdd(name, key) | Action::FilterContains(name, key) => Some((name.as_str(), key.as_slice())),
        _ => None,
    });
    let mut outcome = Outcome::default();
    for ((name, key), records) in per_filter_key {
        let (ops, what) = build(&records, end, (name, key), last_us);
        let key = String::from_utf8_lossy(key);
        let result = wgl::search(&Register, false, &ops, SEARCH_STEPS_MAX);
        outcome.record(format!("filter {name} key {key:?}"), result, ops.len(), |i| {
            what[i].clone()
        });
    }
    outcome
}

/// The register operations of one filter key, and a sentence for each (for reports).
fn build(
    records: &[&Record],
    end: &FinalState,
    (name, key): (&str, &[u8]),
    last_us: u64,
) -> (Vec<Timed<RegisterOp>>, Vec<String>) {
    let mut ops = Vec::with_capacity(records.len() + 1);
    let mut what = Vec::with_capacity(records.len() + 1);
    for r in records {
        let (op, ret) = match (&r.action, &r.result) {
            (Action::FilterAdd(..), Ok(reply)) => {
                let found_absent = matches!(reply, Reply::Changed(true));
                let op = RegisterOp::Write {
                    value: true,
                    before: found_absent.then_some(false),
                };
                (op, r.completed_us)
            }
            (Action::FilterAdd(..), Err(_)) => (
                RegisterOp::Write {
                    value: true,
                    before: None,
                },
                NEVER,
            ),
            (Action::FilterContains(..), Ok(Reply::Bools(b))) if b.first() == Some(&false) => {
                (RegisterOp::Read(false), r.completed_us)
            }
            // A `true` answer (or a failed read) constrains nothing.
            _ => continue,
        };
        ops.push(Timed {
            call: r.invoked_us,
            ret,
            op,
        });
        what.push(describe(r));
    }
    if end.filter_hits.get(&(name.to_string(), key.to_vec())) == Some(&false) {
        ops.push(final_read(last_us, RegisterOp::Read(false)));
        what.push("the final lookup after healing (absent)".to_string());
    }
    (ops, what)
}

#[cfg(test)]
mod tests {
    use plexus_proto::{ErrorReply, Response};

    use super::*;
    use crate::checkers::test_support::rec;

    fn add(at: (u64, u64), result: Response) -> Record {
        rec(1, Action::FilterAdd("f1-0".into(), b"k".to_vec()), at, result)
    }

    fn contains(client: u64, at: (u64, u64), seen: bool) -> Record {
        rec(
            client,
            Action::FilterContains("f1-0".into(), b"k".to_vec()),
            at,
            Ok(Reply::Bools(vec![seen])),
        )
    }

    #[test]
    fn absence_before_or_during_an_add_and_false_positives_are_allowed() {
        let history = vec![
            contains(2, (0, 5), true),
            contains(2, (6, 9), false),
            add((10, 20), Ok(Reply::Changed(true))),
            contains(3, (15, 25), false),
            contains(3, (30, 40), true),
        ];
        let out = check(&history, &FinalState::default());
        assert_eq!(out.violations, Vec::<String>::new());
        assert_eq!((out.keys_checked, out.unchecked.len()), (1, 0));
        // An add whose outcome is unknown may never have happened.
        let unknown = vec![
            add((0, 10), Err(ErrorReply::Timeout("t".into()))),
            contains(2, (20, 30), false),
        ];
        assert!(check(&unknown, &FinalState::default()).violations.is_empty());
    }

    #[test]
    fn absence_after_an_acknowledged_add_is_caught() {
        let history = vec![
            add((10, 20), Ok(Reply::Changed(true))),
            contains(3, (30, 40), true),
            contains(2, (41, 50), false),
        ];
        assert_eq!(
            check(&history, &FinalState::default()).violations,
            vec![
                "filter f1-0 key \"k\": its 2 operations have no linearization; the longest explained prefix \
                 has 1, and then no order explains client 2 FilterContains(\"f1-0\", [107]) in [41us, 50us] -> \
                 Bools([false])"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_second_add_cannot_find_the_key_absent_after_the_first_was_acknowledged() {
        let history = vec![
            add((10, 20), Ok(Reply::Changed(false))),
            add((30, 40), Ok(Reply::Changed(true))),
        ];
        assert_eq!(check(&history, &FinalState::default()).violations.len(), 1);
    }
}
