//! Per-key linearizability: the entry point that checks every key the workload touched —
//! timelines here, edges (`linearizable_edges`) and filter keys (`linearizable_filters`) — each
//! with a Wing–Gong–Lowe search (`wgl`, as Porcupine does it) over the key's history of writes
//! and reads, with their invoke and return times on the virtual clock.
//!
//! The timeline model: a timeline is an ordered list of items; an append adds its item at the
//! end (it answers the item's id, which is checked separately: one item, one id everywhere); a
//! `Latest` read with limit `L` answers the newest `min(L, len)` items, newest first. The final
//! state read after healing is one more read that must see the whole list. An append that failed
//! or timed out may or may not have taken effect: it never returns, so the search may place it
//! anywhere after its invocation or leave it out. As the workload never deletes and stays under
//! the timeline cap, such an append that is absent from the final timeline never took effect and
//! is dropped before the search. Failed reads constrain nothing and are dropped.
//!
//! The search memoises `(linearized set, model state)` pairs and is bounded by
//! `SEARCH_STEPS_MAX` per key: a key whose search runs past it is reported as unchecked, never as
//! a violation. What it is not: a check of ids' order (`timeline_order`).

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::Reply;

use super::wgl::{self, Model, Search, Timed, NEVER};
use super::{linearizable_edges, linearizable_filters, FinalState};
use crate::trace::fnv1a;
use crate::workload::{Action, Record};

/// Search steps (attempts to linearize one operation, plus backtracks) allowed per key.
pub const SEARCH_STEPS_MAX: u64 = 2_000_000;

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys with no linearization, as sentences.
    pub violations: Vec<String>,
    /// Keys whose search ran past `SEARCH_STEPS_MAX` (`timeline 1500`, `edge 1000->2001`,
    /// `filter f1-0 key "k1-7"`).
    pub unchecked: Vec<String>,
    /// Keys checked.
    pub keys_checked: u64,
}

/// The records of `history` grouped by the key `key_of` gives them (records it gives none are
/// left out), each group in history order, and the last completion time of the whole history.
pub(super) fn per_key<'a, K: Ord>(
    history: &'a [Record],
    key_of: impl Fn(&'a Record) -> Option<K>,
) -> (BTreeMap<K, Vec<&'a Record>>, u64) {
    let mut groups: BTreeMap<K, Vec<&Record>> = BTreeMap::new();
    for r in history {
        if let Some(key) = key_of(r) {
            groups.entry(key).or_default().push(r);
        }
    }
    let last_us = history.iter().map(|r| r.completed_us).max().unwrap_or(0);
    (groups, last_us)
}

/// The final read after healing, as one more operation after everything up to `last_us`.
pub(super) fn final_read<Op>(last_us: u64, op: Op) -> Timed<Op> {
    Timed {
        call: last_us.saturating_add(1),
        ret: last_us.saturating_add(2),
        op,
    }
}

/// One recorded operation as a sentence, for violation reports.
pub(crate) fn describe(r: &Record) -> String {
    format!(
        "client {} {:?} in [{}us, {}us] -> {}",
        r.client,
        r.action,
        r.invoked_us,
        r.completed_us,
        crate::workload::summary(&r.result)
    )
}

impl Outcome {
    /// Records one key's search result under `key` (`timeline 1500`, `edge 1000->2001`, ...);
    /// `what` says, for a violation, which operation no order explains.
    pub(crate) fn record(&mut self, key: String, result: Search, ops: usize, what: impl FnOnce(usize) -> String) {
        self.keys_checked += 1;
        match result {
            Search::Linearizable => {}
            Search::Unchecked => self.unchecked.push(key),
            Search::Stuck { depth, op } => self.violations.push(format!(
                "{key}: its {ops} operations have no linearization; the longest explained prefix \
                 has {depth}, and then no order explains {}",
                what(op)
            )),
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.violations.extend(other.violations);
        self.unchecked.extend(other.unchecked);
        self.keys_checked += other.keys_checked;
    }
}

#[derive(Clone, Debug)]
enum Kind {
    /// Appends item number `.0`.
    Append(u32),
    /// Saw these items, newest first; `limit` = None for the final, whole-list read.
    Read { items: Vec<u32>, limit: Option<usize> },
}

#[derive(Clone, Debug)]
struct Op {
    call: u64,
    ret: u64,
    kind: Kind,
    /// For reports: what the operation was.
    what: String,
}

/// Checks every timeline, edge and filter key in `history`, with `end` as the final read.
pub fn check(history: &[Record], end: &FinalState) -> Outcome {
    let mut outcome = check_timelines(history, end);
    outcome.merge(linearizable_edges::check(history, end));
    outcome.merge(linearizable_filters::check(history, end));
    outcome
}

/// Checks every timeline in `history` against the model, with `end` as the final read.
pub fn check_timelines(history: &[Record], end: &FinalState) -> Outcome {
    let (per_owner, last_us) = per_key(history, |r| match &r.action {
        Action::Append(owner, _) | Action::ReadTimeline(owner) => Some(*owner),
        _ => None,
    });
    let mut outcome = Outcome::default();
    for (owner, records) in per_owner {
        let final_items = end.timelines.get(&owner);
        match build(owner, &records, final_items, last_us) {
            Err(v) => outcome.violations.push(v),
            Ok(ops) => {
                let timed: Vec<Timed<Kind>> = ops
                    .iter()
                    .map(|o| Timed {
                        call: o.call,
                        ret: o.ret,
                        op: o.kind.clone(),
                    })
                    .collect();
                let result = wgl::search(&Timeline, TimelineState::default(), &timed, SEARCH_STEPS_MAX);
                outcome.record(format!("timeline {owner}"), result, ops.len(), |i| ops[i].what.clone());
            }
        }
    }
    outcome
}

/// The operations of one key, or a violation found while building them (an item seen that was
/// never appended, or one item seen with two ids).
fn build(
    owner: u64,
    records: &[&Record],
    final_items: Option<&Vec<(u64, Vec<u8>)>>,
    last_us: u64,
) -> Result<Vec<Op>, String> {
    let mut item_no: BTreeMap<&[u8], u32> = BTreeMap::new();
    let mut ids: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        if let Action::Append(_, item) = &r.action {
            let next = item_no.len() as u32;
            item_no.entry(item.as_slice()).or_insert(next);
        }
    }
    let mut see = |item: &[u8], id: u64, source: &str| -> Result<u32, String> {
        let Some(&no) = item_no.get(item) else {
            return Err(format!(
                "timeline {owner}: {source} holds item {:?}, which no append wrote",
                String::from_utf8_lossy(item)
            ));
        };
        match ids.insert(no, id) {
            Some(prev) if prev != id => Err(format!(
                "timeline {owner}: item {:?} has id {prev} and id {id} ({source})",
                String::from_utf8_lossy(item)
            )),
            _ => Ok(no),
        }
    };
    let mut ops = Vec::new();
    let in_final: Option<BTreeSet<&[u8]>> = final_items.map(|f| f.iter().map(|(_, item)| item.as_slice()).collect());
    for r in records {
        let what = describe(r);
        match (&r.action, &r.result) {
            (Action::Append(_, item), Ok(Reply::Appended(id))) => {
                let no = see(item, *id, "an acknowledged append")?;
                ops.push(Op {
                    call: r.invoked_us,
                    ret: r.completed_us,
                    kind: Kind::Append(no),
                    what,
                });
            }
            (Action::Append(_, item), _) => {
                // Unknown outcome: absent at the end means it never took effect.
                if in_final.as_ref().is_some_and(|f| !f.contains(item.as_slice())) {
                    continue;
                }
                let no = item_no.get(item.as_slice()).copied().unwrap_or_default();
                ops.push(Op {
                    call: r.invoked_us,
                    ret: NEVER,
                    kind: Kind::Append(no),
                    what,
                });
            }
            (Action::ReadTimeline(_), Ok(Reply::Page(page))) => {
                let mut items = Vec::with_capacity(page.entries.len());
                for e in &page.entries {
                    items.push(see(&e.item, e.id, "a read")?);
                }
                ops.push(Op {
                    call: r.invoked_us,
                    ret: r.completed_us,
                    kind: Kind::Read {
                        items,
                        limit: Some(crate::workload::READ_PAGE_ENTRIES as usize),
                    },
                    what,
                });
            }
            _ => {}
        }
    }
    if let Some(entries) = final_items {
        let mut items = Vec::with_capacity(entries.len());
        for (id, item) in entries.iter().rev() {
            items.push(see(item, *id, "the final timeline")?);
        }
        ops.push(Op {
            call: last_us.saturating_add(1),
            ret: last_us.saturating_add(2),
            kind: Kind::Read { items, limit: None },
            what: format!("the final read after healing ({} items)", entries.len()),
        });
    }
    Ok(ops)
}

/// The timeline model for `wgl::search`.
struct Timeline;

/// The items appended so far, oldest first, with the running hash after each (the fingerprint).
struct TimelineState {
    items: Vec<u32>,
    hashes: Vec<u64>,
}

impl Default for TimelineState {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            hashes: vec![fnv1a(0xcbf2_9ce4_8422_2325, &[])],
        }
    }
}

impl Model for Timeline {
    type Op = Kind;
    type State = TimelineState;
    /// Whether the step appended (and undoing it pops).
    type Undo = bool;

    fn step(&self, state: &mut TimelineState, op: &Kind) -> Option<bool> {
        match op {
            Kind::Append(item) => {
                // The vector starts with the empty list's hash and only grows here.
                let last = state.hashes.last().copied().unwrap_or_default();
                state.items.push(*item);
                state.hashes.push(fnv1a(last, &item.to_le_bytes()));
                Some(true)
            }
            Kind::Read { items, limit } => {
                let len = state.items.len();
                let want = limit.map_or(len, |l| l.min(len));
                let seen = items.len() == want && items.iter().zip(state.items.iter().rev()).all(|(a, b)| a == b);
                seen.then_some(false)
            }
        }
    }

    fn undo(&self, state: &mut TimelineState, appended: bool) {
        if appended {
            state.items.pop();
            state.hashes.pop();
        }
    }

    fn fingerprint(&self, state: &TimelineState) -> u64 {
        state.hashes.last().copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use plexus_proto::{ErrorReply, Page, Response, TimelineEntry};

    use super::*;
    use crate::checkers::test_support::rec;

    fn page(entries: &[(u64, &str)]) -> Response {
        Ok(Reply::Page(Page {
            entries: entries
                .iter()
                .map(|(id, item)| TimelineEntry {
                    id: *id,
                    item: item.as_bytes().to_vec(),
                })
                .collect(),
            has_more: false,
        }))
    }

    fn append(item: &str, at: (u64, u64), result: Response) -> Record {
        rec(1, Action::Append(7, item.as_bytes().to_vec()), at, result)
    }

    fn read(client: u64, at: (u64, u64), seen: &[(u64, &str)]) -> Record {
        rec(client, Action::ReadTimeline(7), at, page(seen))
    }

    fn end(items: &[(u64, &str)]) -> FinalState {
        let mut end = FinalState::default();
        end.timelines
            .insert(7, items.iter().map(|(id, i)| (*id, i.as_bytes().to_vec())).collect());
        end
    }

    #[test]
    fn a_concurrent_read_may_see_either_side_of_an_append() {
        let history = vec![
            append("a", (0, 10), Ok(Reply::Appended(1))),
            append("b", (20, 40), Ok(Reply::Appended(2))),
            read(2, (25, 30), &[(2, "b"), (1, "a")]),
            read(3, (26, 31), &[(1, "a")]),
            read(3, (41, 50), &[(2, "b"), (1, "a")]),
        ];
        let out = check(&history, &end(&[(1, "a"), (2, "b")]));
        assert_eq!(out.violations, Vec::<String>::new());
        assert_eq!((out.keys_checked, out.unchecked.len()), (1, 0));
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_append_is_caught() {
        let history = vec![
            append("a", (0, 10), Ok(Reply::Appended(1))),
            append("b", (20, 30), Ok(Reply::Appended(2))),
            read(2, (35, 40), &[(1, "a")]),
        ];
        let out = check(&history, &end(&[(1, "a"), (2, "b")]));
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert!(
            out.violations[0].starts_with("timeline 7: its 4 operations have no linearization"),
            "{}",
            out.violations[0]
        );
        assert!(out.violations[0].contains("ReadTimeline(7) in [35us, 40us]"));
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Both reads overlap the append, but the second starts after the first returned.
        let history = vec![
            append("a", (0, 100), Ok(Reply::Appended(1))),
            read(2, (10, 20), &[(1, "a")]),
            read(3, (30, 40), &[]),
        ];
        assert_eq!(check(&history, &end(&[(1, "a")])).violations.len(), 1);
    }

    #[test]
    fn a_timed_out_append_may_take_effect_late_or_never() {
        let timeout = Err(ErrorReply::Timeout("t".into()));
        let history = vec![
            append("a", (0, 10), timeout.clone()),
            append("b", (20, 30), Ok(Reply::Appended(2))),
            read(2, (35, 40), &[(2, "b")]),
            read(2, (45, 50), &[(3, "a"), (2, "b")]),
            append("c", (60, 70), timeout),
        ];
        let out = check(&history, &end(&[(2, "b"), (3, "a")]));
        assert_eq!(out.violations, Vec::<String>::new());
    }

    #[test]
    fn an_item_applied_twice_or_renumbered_is_caught() {
        let history = vec![append("a", (0, 10), Ok(Reply::Appended(1)))];
        let out = check(&history, &end(&[(1, "a"), (2, "a")]));
        assert_eq!(
            out.violations,
            vec!["timeline 7: item \"a\" has id 1 and id 2 (the final timeline)".to_string()]
        );
        let out = check(&history, &end(&[(1, "a"), (2, "zz")]));
        assert_eq!(
            out.violations,
            vec!["timeline 7: the final timeline holds item \"zz\", which no append wrote".to_string()]
        );
    }
}
