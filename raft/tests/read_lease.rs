//! The read lease (`ReplicaOptions::read_lease_ms`, openraft patch 4): a leader that a quorum
//! acknowledged recently answers linearizable reads without a heartbeat round of its own, and
//! goes back to one round per read while it hands its leadership over and for a while after.
//!
//! Three replicas of one group run in this process over an in-memory transport that counts
//! AppendEntries without entries: a read-index round sends one to each follower.

mod common;

use std::time::{Duration, Instant};

use common::{append, Group};
use plexus_proto::{Consistency, Cursor, ReadOp};
use plexus_raft::replica::ReplicaOptions;

const HEARTBEAT_MS: u64 = 100;
const READS: u64 = 40;

fn options(read_lease_ms: u64) -> ReplicaOptions {
    ReplicaOptions {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_min_ms: 1_000,
        election_timeout_max_ms: 2_000,
        read_lease_ms,
        shard_count: 1,
        ..ReplicaOptions::default()
    }
}

/// Makes `READS` linearizable reads on the leader, after one write when `write_first` (so a
/// quorum has just acknowledged the leader). Returns the AppendEntries without entries sent
/// meanwhile and the heartbeats the leader sends on its own in that time.
async fn read_burst(group: &Group, write_first: bool) -> (u64, u64) {
    let leader = group.leader();
    if write_first {
        let written = leader.propose(append(1), Duration::from_secs(10)).await;
        assert!(written.is_ok(), "write: {written:?}");
    }
    let before = group.empty_appends();
    let started = Instant::now();
    let op = ReadOp::TimelineRead {
        owner: 7,
        cursor: Cursor::Latest,
        limit: 10,
    };
    for i in 0..READS {
        let page = leader
            .read(&op, Consistency::Linearizable, Duration::from_secs(10))
            .await;
        assert!(page.is_ok(), "read {i}: {page:?}");
    }
    let empty = group.empty_appends() - before;
    // Two followers get one heartbeat per period each (plus one period of slack for the ends).
    let heartbeats = 2 * (started.elapsed().as_millis() as u64 / HEARTBEAT_MS + 2);
    (empty, heartbeats)
}

/// Each of `READS` reads confirmed leadership with its own heartbeat to both followers.
fn assert_a_round_per_read(empty: u64, when: &str) {
    assert!(
        empty >= 2 * READS,
        "{empty} empty AppendEntries for {READS} reads {when}: each needs one per follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_inside_the_lease_send_nothing_to_the_followers() {
    let group = Group::start(options(400)).await;
    let (empty, heartbeats) = read_burst(&group, true).await;
    assert!(
        empty <= heartbeats,
        "{empty} empty AppendEntries for {READS} leased reads: more than the {heartbeats} heartbeats of that time"
    );
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lease_every_read_confirms_leadership_with_both_followers() {
    let group = Group::start(options(0)).await;
    let (empty, _) = read_burst(&group, true).await;
    assert_a_round_per_read(empty, "without a lease");
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_stops_leased_reads_until_its_election_is_surely_over() {
    let group = Group::start(options(400)).await;
    let leader = group.leader();
    // Under way: the transfer election it may start skips the followers' lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let caught_up = leader.begin_handover(deadline, &|_| true).await.unwrap();
    assert!(caught_up.is_some_and(|c| !c.is_empty()), "a follower is caught up");
    let (empty, _) = read_burst(&group, false).await;
    assert_a_round_per_read(empty, "during a handover");
    // Just ended, without asking anyone to stand: a voter asked earlier might still be winning.
    leader.end_handover();
    let (empty, _) = read_burst(&group, true).await;
    assert_a_round_per_read(empty, "right after a handover");
    group.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_answering_reads_before_another_can_be_elected() {
    let group = Group::start(options(400)).await;
    let old = group.leader();
    let written = old.propose(append(1), Duration::from_secs(10)).await;
    assert!(written.is_ok(), "write: {written:?}");
    group.transport.isolated.lock().unwrap().insert(1);
    // The other two elect one of them once their election timeouts and leases run out.
    common::wait_until("node 2 or 3 leads", || {
        group.replicas[1..].iter().any(|r| r.is_leader())
    })
    .await;
    let new = group.replicas[1..].iter().find(|r| r.is_leader()).unwrap();
    let written = new.propose(append(2), Duration::from_secs(10)).await;
    assert!(written.is_ok(), "write on the new leader: {written:?}");
    // The old leader still believes it leads, but its read lease ran out long before the new
    // leader could be elected: a linearizable read there must fail, not answer without item 2.
    assert!(old.is_leader(), "a cut-off leader learns of no new term");
    let op = ReadOp::TimelineRead {
        owner: 7,
        cursor: Cursor::Latest,
        limit: 10,
    };
    let page = old
        .read(&op, Consistency::Linearizable, Duration::from_millis(500))
        .await;
    assert!(page.is_err(), "a cut-off leader answered a linearizable read: {page:?}");
    group.transport.isolated.lock().unwrap().clear();
    group.stop().await;
}
