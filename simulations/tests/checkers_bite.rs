//! The checkers catch what they are for, on exact hand-made histories and end states (inside
//! whole runs, `canaries.rs` shows them catching deliberate bugs).

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::{ErrorReply, Reply};
use plexus_simulations::checkers::{acked_writes, convergence, edges, exactly_once, raft_safety, FinalState};
use plexus_simulations::workload::{Action, Record};

fn rec(client: u64, action: Action, result: Result<Reply, ErrorReply>) -> Record {
    Record {
        client,
        action,
        invoked_us: 0,
        completed_us: 1,
        result,
    }
}

#[test]
fn half_follow_is_caught() {
    let mut end = FinalState::default();
    end.out_edges.insert(1_000, BTreeSet::from([2_000]));
    assert_eq!(
        edges::check(&end),
        vec!["edge 1000->2000 has its out-half but not its in-half".to_string()]
    );
    end.in_edges.insert(2_000, BTreeSet::from([1_000]));
    assert!(edges::check(&end).is_empty());
}

#[test]
fn double_apply_is_caught() {
    let mut end = FinalState::default();
    end.timelines.insert(7, vec![(1, b"a".to_vec()), (2, b"a".to_vec())]);
    assert_eq!(
        exactly_once::check(&end),
        vec!["timeline 7 holds item \"a\" twice (again as id 2)".to_string()]
    );
}

#[test]
fn lost_acked_writes_are_caught_and_unknown_outcomes_allowed() {
    let history = vec![
        rec(1, Action::Append(7, b"x".to_vec()), Ok(Reply::Appended(5))),
        rec(1, Action::Follow(1_000, 2), Ok(Reply::Changed(true))),
        rec(1, Action::Unfollow(1_000, 2), Err(ErrorReply::Timeout("t".into()))),
        rec(1, Action::Follow(1_001, 3), Ok(Reply::Changed(true))),
    ];
    let mut end = FinalState::default();
    end.timelines.insert(7, vec![]);
    // 1000->2 may be either way (the unfollow's outcome is unknown); 1001->3 must be present.
    assert_eq!(
        acked_writes::check(&history, &end),
        vec![
            "acked append of \"x\" to timeline 7 as id 5 is lost".to_string(),
            "edge 1001->3 is absent but its writes [(true, true)] (adds, acked) allow only [true]".to_string(),
        ]
    );
}

#[test]
fn diverged_replicas_and_two_leaders_are_caught() {
    let shards = BTreeMap::from([(0u32, vec![(1u64, 10u64, 0xaa_u64), (2, 10, 0xab)])]);
    assert_eq!(convergence::check(&shards).len(), 1);
    // Two leaders in one term under different leader ids is openraft 0.9's design, not a bug.
    let mut samples = BTreeMap::from([
        ((3u32, 4u64, 1u64), BTreeSet::from([1u64])),
        ((3, 4, 2), BTreeSet::from([2])),
    ]);
    assert!(raft_safety::check(&samples).is_empty());
    samples.insert((3, 5, 1), BTreeSet::from([1, 2]));
    samples.insert((3, 6, 1), BTreeSet::from([2]));
    assert_eq!(
        raft_safety::check(&samples),
        vec![
            "group 3 had leaders {1, 2} under leader id (term 5, node 1)".to_string(),
            "group 3 had leaders {2} under leader id (term 6, node 1)".to_string(),
        ]
    );
}
