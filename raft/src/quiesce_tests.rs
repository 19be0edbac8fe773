//! Exact inputs, exact outputs: the leader and follower sides of quiescence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{CommittedLeaderId, LogId, Vote};
use tokio::time::Instant;

use super::*;

const AFTER: Duration = Duration::from_millis(1_000);
const TIMEOUT: Duration = Duration::from_millis(1_500);

fn log_id(term: u64, leader: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, leader), index)
}

/// Group `group` led by node 1 in term 3, idle at entry 7, followers 2 and 3 caught up.
fn led(group: u32) -> LeaderView {
    let last = log_id(3, 1, 7);
    LeaderView {
        group,
        instance: 1,
        is_leader: true,
        vote: Vote::new_committed(3, 1),
        last_log_index: Some(7),
        last_applied: Some(last),
        followers_matched: BTreeMap::from([(2, Some(last)), (3, Some(last))]),
        activity: 10,
        busy: false,
    }
}

fn claim(group: u32) -> QuietClaim {
    QuietClaim {
        group,
        vote: Vote::new_committed(3, 1),
        last: log_id(3, 1, 7),
    }
}

fn pings(entries: &[(u64, Vec<QuietClaim>)]) -> BTreeMap<u64, Vec<QuietClaim>> {
    entries.iter().cloned().collect()
}

fn quiet(groups: &[u32]) -> BTreeSet<u32> {
    groups.iter().copied().collect()
}

/// Runs passes until `view`'s group is claimed (at `t0 + AFTER`) and both followers accepted.
fn quiet_leader(t0: Instant, views: &[LeaderView]) -> QuietLeaders {
    let mut l = QuietLeaders::new(1, AFTER);
    l.pass(t0, views);
    let plan = l.pass(t0 + AFTER, views);
    for (peer, sent) in &plan.pings {
        let groups: Vec<u32> = sent.iter().map(|c| c.group).collect();
        l.on_answer(*peer, sent, Some(&groups));
    }
    l
}

#[test]
fn an_idle_caught_up_group_is_claimed_after_quiesce_after_and_quiet_once_every_follower_accepts() {
    let t0 = Instant::now();
    let mut l = QuietLeaders::new(1, AFTER);
    let views = [led(5)];
    let silent = LeaderPlan {
        pings: pings(&[(2, vec![]), (3, vec![])]),
        quiet: quiet(&[]),
    };
    assert_eq!(l.pass(t0, &views), silent);
    assert_eq!(l.pass(t0 + AFTER - Duration::from_millis(1), &views), silent);
    let claimed = LeaderPlan {
        pings: pings(&[(2, vec![claim(5)]), (3, vec![claim(5)])]),
        quiet: quiet(&[]),
    };
    assert_eq!(l.pass(t0 + AFTER, &views), claimed);
    l.on_answer(2, &[claim(5)], Some(&[5]));
    assert_eq!(l.pass(t0 + AFTER * 2, &views), claimed, "follower 3 has not accepted");
    l.on_answer(3, &[claim(5)], Some(&[5]));
    assert_eq!(
        l.pass(t0 + AFTER * 3, &views),
        LeaderPlan {
            pings: pings(&[(2, vec![claim(5)]), (3, vec![claim(5)])]),
            quiet: quiet(&[5]),
        }
    );
}

#[test]
fn any_request_new_entry_vote_or_restart_ends_the_claim_and_the_wait_starts_again() {
    let t0 = Instant::now();
    let changes: [fn(&mut LeaderView); 4] = [
        |v| v.activity += 1,
        |v| {
            v.last_log_index = Some(8);
            v.last_applied = Some(log_id(3, 1, 8));
            v.followers_matched
                .values_mut()
                .for_each(|m| *m = Some(log_id(3, 1, 8)));
        },
        |v| v.vote = Vote::new_committed(4, 1),
        |v| v.instance += 1,
    ];
    for change in changes {
        let mut views = [led(5)];
        let mut l = quiet_leader(t0, &views);
        assert_eq!(l.pass(t0 + AFTER * 2, &views).quiet, quiet(&[5]));
        change(&mut views[0]);
        let t1 = t0 + AFTER * 3;
        let loud = LeaderPlan {
            pings: pings(&[(2, vec![]), (3, vec![])]),
            quiet: quiet(&[]),
        };
        assert_eq!(l.pass(t1, &views), loud);
        assert_eq!(l.pass(t1 + AFTER - Duration::from_millis(1), &views), loud);
        let plan = l.pass(t1 + AFTER, &views);
        assert!(plan.quiet.is_empty(), "a new claim needs new acceptances");
        assert_eq!(plan.pings.get(&2).map(Vec::len), Some(1));
    }
}

#[test]
fn a_group_that_is_not_settled_is_never_claimed() {
    let t0 = Instant::now();
    let unsettled: [fn(&mut LeaderView); 6] = [
        |v| {
            v.followers_matched.insert(3, Some(log_id(3, 1, 6)));
        },
        |v| v.last_applied = Some(log_id(3, 1, 6)),
        |v| v.busy = true,
        |v| v.is_leader = false,
        |v| v.vote = Vote::new(3, 1),
        |v| v.vote = Vote::new_committed(3, 2),
    ];
    for make in unsettled {
        let mut view = led(5);
        make(&mut view);
        let mut l = QuietLeaders::new(1, AFTER);
        l.pass(t0, std::slice::from_ref(&view));
        let plan = l.pass(t0 + AFTER * 5, std::slice::from_ref(&view));
        assert!(plan.pings.values().all(Vec::is_empty), "{view:?} was claimed: {plan:?}");
        assert!(plan.quiet.is_empty());
    }
}

#[test]
fn an_unanswered_ping_or_a_refusal_takes_the_acceptance_back() {
    let t0 = Instant::now();
    let views = [led(5)];
    for answer in [None, Some(&[][..])] {
        let mut l = quiet_leader(t0, &views);
        assert_eq!(l.pass(t0 + AFTER * 2, &views).quiet, quiet(&[5]));
        l.on_answer(3, &[claim(5)], answer);
        assert_eq!(l.pass(t0 + AFTER * 3, &views).quiet, quiet(&[]));
    }
}

#[test]
fn an_answer_to_an_older_claim_counts_for_nothing() {
    let t0 = Instant::now();
    let views = [led(5)];
    let mut l = QuietLeaders::new(1, AFTER);
    l.pass(t0, &views);
    l.pass(t0 + AFTER, &views);
    let mut older = claim(5);
    older.last = log_id(3, 1, 6);
    l.on_answer(2, std::slice::from_ref(&older), Some(&[5]));
    l.on_answer(3, std::slice::from_ref(&older), Some(&[5]));
    assert_eq!(l.pass(t0 + AFTER * 2, &views).quiet, quiet(&[]));
}

#[test]
fn claims_go_to_each_groups_own_followers_and_leadership_lost_is_announced() {
    let t0 = Instant::now();
    let a = led(1);
    let mut b = led(2);
    b.followers_matched = BTreeMap::from([(3, Some(log_id(3, 1, 7))), (4, Some(log_id(3, 1, 7)))]);
    let mut l = QuietLeaders::new(1, AFTER);
    l.pass(t0, &[a.clone(), b.clone()]);
    let plan = l.pass(t0 + AFTER, &[a.clone(), b.clone()]);
    assert_eq!(
        plan.pings,
        pings(&[(2, vec![claim(1)]), (3, vec![claim(1), claim(2)]), (4, vec![claim(2)]),])
    );
    // Node 1 loses group 2: node 4 still gets a ping, with no claims, so it releases group 2.
    b.is_leader = false;
    let plan = l.pass(t0 + AFTER * 2, &[a, b]);
    assert_eq!(
        plan.pings,
        pings(&[(2, vec![claim(1)]), (3, vec![claim(1)]), (4, vec![])])
    );
    assert_eq!(plan.quiet, quiet(&[]));
}

#[test]
fn a_group_with_no_other_voter_is_quiet_with_no_ping() {
    let t0 = Instant::now();
    let mut view = led(9);
    view.followers_matched.clear();
    let mut l = QuietLeaders::new(1, AFTER);
    l.pass(t0, std::slice::from_ref(&view));
    let plan = l.pass(t0 + AFTER, std::slice::from_ref(&view));
    assert_eq!(
        plan,
        LeaderPlan {
            pings: BTreeMap::new(),
            quiet: quiet(&[9]),
        }
    );
}

fn follower_of(vote: Vote<u64>) -> impl Fn(u32) -> Option<FollowerView> {
    move |_| {
        Some(FollowerView {
            instance: 1,
            is_leader: false,
            vote,
        })
    }
}

/// A follower side that accepted `claim(5)` from node 1 at `t0`.
fn quiet_follower(t0: Instant) -> QuietFollowers {
    let mut f = QuietFollowers::new(TIMEOUT);
    let (_, actions) = f.on_ping(t0, 1, &[claim(5)], follower_of(Vote::new_committed(3, 1)));
    assert_eq!(actions.len(), 1);
    f.on_heartbeat(1, claim(5), 1, true);
    f
}

#[test]
fn a_claim_matching_the_replicas_vote_is_taken_as_a_heartbeat_once() {
    let t0 = Instant::now();
    let mut f = QuietFollowers::new(TIMEOUT);
    let view = follower_of(Vote::new_committed(3, 1));
    let (already, actions) = f.on_ping(t0, 1, &[claim(5)], &view);
    assert_eq!(already, Vec::<u32>::new());
    assert_eq!(
        actions,
        vec![FollowerAction::Accept {
            leader: 1,
            claim: claim(5),
            instance: 1
        }]
    );
    assert!(!f.is_quiet(5), "quiet only once the heartbeat took");
    f.on_heartbeat(1, claim(5), 1, true);
    assert!(f.is_quiet(5));
    let (already, actions) = f.on_ping(t0 + AFTER, 1, &[claim(5)], &view);
    assert_eq!((already, actions), (vec![5], vec![]));
    assert_eq!(f.quiet_count(), 1);
}

#[test]
fn a_heartbeat_that_fails_leaves_the_group_loud() {
    let t0 = Instant::now();
    let mut f = QuietFollowers::new(TIMEOUT);
    f.on_ping(t0, 1, &[claim(5)], follower_of(Vote::new_committed(3, 1)));
    f.on_heartbeat(1, claim(5), 1, false);
    assert!(!f.is_quiet(5));
}

#[test]
fn claims_the_replica_cannot_vouch_for_are_refused() {
    let t0 = Instant::now();
    let refused: [(u64, Vote<u64>, bool); 4] = [
        (1, Vote::new_committed(4, 2), false), // the replica follows another leader now
        (1, Vote::new(3, 1), false),           // its vote for node 1 is not committed
        (2, Vote::new_committed(3, 1), false), // the claim comes from a node its vote does not name
        (1, Vote::new_committed(3, 1), true),  // it leads the group itself
    ];
    for (from, vote, is_leader) in refused {
        let mut f = QuietFollowers::new(TIMEOUT);
        let view = move |_| {
            Some(FollowerView {
                instance: 1,
                is_leader,
                vote,
            })
        };
        let (already, actions) = f.on_ping(t0, from, &[claim(5)], view);
        assert_eq!((already, actions), (vec![], vec![]), "from {from}, vote {vote}");
    }
    let mut f = QuietFollowers::new(TIMEOUT);
    let (already, actions) = f.on_ping(t0, 1, &[claim(5)], |_| None);
    assert_eq!((already, actions), (vec![], vec![]), "a group not hosted here");
}

#[test]
fn a_claim_no_longer_made_is_released_after_a_refresh() {
    let t0 = Instant::now();
    let mut f = quiet_follower(t0);
    let (already, actions) = f.on_ping(t0 + AFTER, 1, &[], follower_of(Vote::new_committed(3, 1)));
    assert_eq!(already, Vec::<u32>::new());
    assert_eq!(
        actions,
        vec![FollowerAction::Release {
            group: 5,
            refresh: Some(claim(5))
        }]
    );
    assert!(!f.is_quiet(5));
}

#[test]
fn a_renewed_claim_is_released_and_accepted_again() {
    let t0 = Instant::now();
    let mut f = quiet_follower(t0);
    let mut renewed = claim(5);
    renewed.last = log_id(3, 1, 9);
    let (_, actions) = f.on_ping(
        t0 + AFTER,
        1,
        &[renewed.clone()],
        follower_of(Vote::new_committed(3, 1)),
    );
    assert_eq!(
        actions,
        vec![
            FollowerAction::Release {
                group: 5,
                refresh: Some(claim(5))
            },
            FollowerAction::Accept {
                leader: 1,
                claim: renewed,
                instance: 1
            },
        ]
    );
}

#[test]
fn a_silent_leader_node_loses_its_groups_without_a_refresh() {
    let t0 = Instant::now();
    let mut f = quiet_follower(t0);
    let view = follower_of(Vote::new_committed(3, 1));
    assert_eq!(f.pass(t0 + TIMEOUT - Duration::from_millis(1), &view), vec![]);
    // Pings from another node do not vouch for node 1's groups.
    f.on_ping(t0 + AFTER, 2, &[], &view);
    assert_eq!(
        f.pass(t0 + TIMEOUT, &view),
        vec![FollowerAction::Release {
            group: 5,
            refresh: None
        }]
    );
    assert!(!f.is_quiet(5));
}

#[test]
fn a_new_vote_a_restart_or_leadership_here_releases_at_once() {
    let t0 = Instant::now();
    let views: [FollowerView; 3] = [
        FollowerView {
            instance: 1,
            is_leader: false,
            vote: Vote::new_committed(4, 2),
        },
        FollowerView {
            instance: 2,
            is_leader: false,
            vote: Vote::new_committed(3, 1),
        },
        FollowerView {
            instance: 1,
            is_leader: true,
            vote: Vote::new_committed(3, 1),
        },
    ];
    for v in views {
        let mut f = quiet_follower(t0);
        let view = |_| Some(v.clone());
        assert_eq!(
            f.pass(t0 + Duration::from_millis(10), view),
            vec![FollowerAction::Release {
                group: 5,
                refresh: None
            }],
            "{v:?}"
        );
    }
    let mut f = quiet_follower(t0);
    assert_eq!(
        f.pass(t0, |_| None),
        vec![FollowerAction::Release {
            group: 5,
            refresh: None
        }],
        "a replica that is gone"
    );
}

#[test]
fn claims_past_the_cap_are_not_read() {
    let t0 = Instant::now();
    let mut f = QuietFollowers::new(TIMEOUT);
    let claims: Vec<QuietClaim> = (0..QUIET_CLAIMS_PER_PING_MAX as u32 + 10).map(claim).collect();
    let (_, actions) = f.on_ping(t0, 1, &claims, follower_of(Vote::new_committed(3, 1)));
    assert_eq!(actions.len(), QUIET_CLAIMS_PER_PING_MAX);
}
