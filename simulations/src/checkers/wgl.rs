//! The Wing–Gong–Lowe linearizability search (as Porcupine does it), generic over a sequential
//! model, shared by the per-key linearizability checkers (`linearizable`, `linearizable_edges`,
//! `linearizable_filters`).
//!
//! What it is: given one key's operations with their invoke and return times on the virtual
//! clock, a depth-first search for a total order that respects real time (an operation that
//! returned before another was invoked comes first) and that the model accepts step by step.
//! Lowe's memoisation prunes `(set of linearized operations, model state)` pairs already tried;
//! the state enters the memo as the model's 64-bit fingerprint. An operation whose outcome is
//! unknown (it failed or timed out, so it may have taken effect later or never) returns at
//! `NEVER`: the search may place it anywhere after its invocation, and placing it after every
//! other operation is the same as it never taking effect.
//!
//! What it is not: a property. It knows no keys and no workload; each checker builds the
//! operations of one key and says what a violation means. It is bounded by the caller's step
//! budget, past which it answers `Unchecked`, never a violation.

use std::collections::BTreeSet;

/// Time of an operation that never returned.
pub const NEVER: u64 = u64::MAX;

/// A sequential specification: a state, and which operations it allows and how they change it.
pub trait Model {
    /// One operation, with what it answered.
    type Op;
    /// The sequential state.
    type State;
    /// What `undo` needs to take a step back.
    type Undo;

    /// Takes `op` on `state` if the model allows it (its answer is one the state gives), and
    /// returns how to undo it; `None` (state untouched) if the model does not allow it.
    fn step(&self, state: &mut Self::State, op: &Self::Op) -> Option<Self::Undo>;

    /// Undoes the step that returned `undo`.
    fn undo(&self, state: &mut Self::State, undo: Self::Undo);

    /// A 64-bit fingerprint of `state`: equal states must give equal fingerprints.
    fn fingerprint(&self, state: &Self::State) -> u64;
}

/// One operation of a history: invoked at `call`, returned at `ret` (`NEVER` if unknown).
#[derive(Clone, Debug)]
pub struct Timed<O> {
    /// Virtual microseconds at invocation.
    pub call: u64,
    /// Virtual microseconds at return, or `NEVER`.
    pub ret: u64,
    /// The operation and its answer.
    pub op: O,
}

/// What the search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Some order explains every operation.
    Linearizable,
    /// The step budget ran out first.
    Unchecked,
    /// No linearization; `depth` operations were the most ever placed, and `op` (an index into
    /// the history) is the operation whose return forced the search back at that depth.
    Stuck {
        /// Most operations ever placed.
        depth: usize,
        /// The operation no order could place before its return.
        op: usize,
    },
}

/// Searches for a linearization of `history` from `init`, within `steps_max` steps (attempts to
/// place one operation, plus backtracks).
pub fn search<M: Model>(model: &M, mut state: M::State, history: &[Timed<M::Op>], steps_max: u64) -> Search {
    // Events: (time, 0 = call / 1 = return, op). Calls sort before returns at one instant, so
    // operations that touch at an instant count as concurrent (the permissive reading).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * history.len());
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, 0, i));
        events.push((op.ret, 1, i));
    }
    events.sort_unstable();
    // A doubly linked list over the events: node 0 is the head sentinel, event k is node k + 1,
    // node n + 1 is the tail sentinel. Placing an operation unlinks its two events.
    let n = events.len();
    let tail = n + 1;
    let mut next: Vec<usize> = (1..=n + 1).chain(std::iter::once(tail)).collect();
    let mut prev: Vec<usize> = std::iter::once(0).chain(0..=n).collect();
    let mut call_node = vec![0usize; history.len()];
    let mut ret_node = vec![0usize; history.len()];
    for (k, (_, is_ret, op)) in events.iter().enumerate() {
        if *is_ret == 0 {
            call_node[*op] = k + 1;
        } else {
            ret_node[*op] = k + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, q) = (prev[x], next[x]);
        next[p] = x;
        prev[q] = x;
    };

    let words = history.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    // The operations placed so far, in order, each with how to undo it.
    let mut stack: Vec<(usize, M::Undo)> = Vec::new();
    let mut seen: BTreeSet<(Vec<u64>, u64)> = BTreeSet::new();
    let mut steps = 0u64;
    let (mut deepest, mut stuck_op) = (0usize, 0usize);
    let mut node = next[0];
    while next[0] != tail {
        steps += 1;
        if steps > steps_max {
            return Search::Unchecked;
        }
        let (_, is_ret, op) = events[node - 1];
        if is_ret == 0 {
            if let Some(undo) = model.step(&mut state, &history[op].op) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), model.fingerprint(&state))) {
                    stack.push((op, undo));
                    unlink(&mut next, &mut prev, call_node[op]);
                    unlink(&mut next, &mut prev, ret_node[op]);
                    node = next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
                model.undo(&mut state, undo);
            }
            node = next[node];
        } else {
            // An operation returned before it could be placed: undo the last placement.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_op = op;
            }
            let Some((last, undo)) = stack.pop() else {
                return Search::Stuck {
                    depth: deepest,
                    op: stuck_op,
                };
            };
            model.undo(&mut state, undo);
            linearized[last / 64] &= !(1 << (last % 64));
            relink(&mut next, &mut prev, ret_node[last]);
            relink(&mut next, &mut prev, call_node[last]);
            node = next[call_node[last]];
        }
    }
    Search::Linearizable
}

/// A register of one boolean, initially `false`: the model of an edge (`src → dst` present or
/// not) and of a filter key (added or not).
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

/// An operation on a `Register`, with what it answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// Sets the value; `before`, when the answer told it, is the value it found.
    Write {
        /// The value written.
        value: bool,
        /// The value the write answered it found, if its answer said.
        before: Option<bool>,
    },
    /// Read the value as this.
    Read(bool),
}

impl Model for Register {
    type Op = RegisterOp;
    type State = bool;
    type Undo = bool;

    fn step(&self, state: &mut bool, op: &RegisterOp) -> Option<bool> {
        let was = *state;
        match *op {
            RegisterOp::Write { before: Some(b), .. } if b != was => None,
            RegisterOp::Write { value, .. } => {
                *state = value;
                Some(was)
            }
            RegisterOp::Read(v) => (v == was).then_some(was),
        }
    }

    fn undo(&self, state: &mut bool, undo: bool) {
        *state = undo;
    }

    fn fingerprint(&self, state: &bool) -> u64 {
        u64::from(*state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(call: u64, ret: u64, op: RegisterOp) -> Timed<RegisterOp> {
        Timed { call, ret, op }
    }

    const SET: RegisterOp = RegisterOp::Write {
        value: true,
        before: None,
    };

    #[test]
    fn a_register_read_must_see_the_last_completed_write() {
        let ok = [
            t(0, 10, SET),
            t(5, 8, RegisterOp::Read(false)),
            t(11, 12, RegisterOp::Read(true)),
        ];
        assert_eq!(search(&Register, false, &ok, 1_000), Search::Linearizable);
        let stale = [t(0, 10, SET), t(11, 12, RegisterOp::Read(false))];
        assert_eq!(
            search(&Register, false, &stale, 1_000),
            Search::Stuck { depth: 1, op: 1 }
        );
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never() {
        let late = [
            t(0, NEVER, SET),
            t(20, 30, RegisterOp::Read(false)),
            t(40, 50, RegisterOp::Read(true)),
        ];
        assert_eq!(search(&Register, false, &late, 1_000), Search::Linearizable);
        let never = [t(0, NEVER, SET), t(20, 30, RegisterOp::Read(false))];
        assert_eq!(search(&Register, false, &never, 1_000), Search::Linearizable);
        // Once seen, it cannot be unseen.
        let flicker = [
            t(0, NEVER, SET),
            t(20, 30, RegisterOp::Read(true)),
            t(40, 50, RegisterOp::Read(false)),
        ];
        assert_eq!(
            search(&Register, false, &flicker, 1_000),
            Search::Stuck { depth: 2, op: 2 }
        );
    }

    #[test]
    fn a_write_that_says_what_it_found_is_checked_too() {
        let found_set = RegisterOp::Write {
            value: true,
            before: Some(true),
        };
        // Nothing set the value before this write, so it cannot have found it set.
        assert_eq!(
            search(&Register, false, &[t(0, 10, found_set)], 1_000),
            Search::Stuck { depth: 0, op: 0 }
        );
        assert_eq!(
            search(&Register, false, &[t(0, 10, SET), t(20, 30, found_set)], 1_000),
            Search::Linearizable
        );
    }

    #[test]
    fn the_step_budget_makes_it_unchecked_not_a_violation() {
        let stale = [t(0, 10, SET), t(11, 12, RegisterOp::Read(false))];
        assert_eq!(search(&Register, false, &stale, 1), Search::Unchecked);
    }
}
