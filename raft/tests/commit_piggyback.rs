//! The vendored openraft patch (raft/vendor/README.md): a leader sends no AppendEntries just to
//! carry a new commit index; followers learn it from the next entries or the next heartbeat.
//!
//! Three replicas of one group run in this process over an in-memory transport that counts the
//! AppendEntries requests without entries. Unpatched openraft sends one per write to each
//! follower; patched, only the periodic heartbeats (and nothing at all between them) remain.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{append, wait_until, Group};
use plexus_raft::replica::ReplicaOptions;

const HEARTBEAT_MS: u64 = 200;
const WRITES: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_ride_on_entries_and_heartbeats_not_on_extra_appends() {
    let group = Group::start(ReplicaOptions {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_min_ms: 1_000,
        election_timeout_max_ms: 2_000,
        shard_count: 1,
        ..ReplicaOptions::default()
    })
    .await;
    let (transport, replicas) = (&group.transport, &group.replicas);

    let before = transport.empty_appends.load(Ordering::Relaxed);
    let entries_before = transport.entries_sent.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..WRITES {
        let response = replicas[0].propose(append(i), Duration::from_secs(10)).await;
        assert!(response.is_ok(), "write {i}: {response:?}");
    }
    let elapsed = started.elapsed();
    let empty = transport.empty_appends.load(Ordering::Relaxed) - before;
    // Two followers get one heartbeat per period each (plus one period of slack for the ends).
    let heartbeats_max = 2 * (elapsed.as_millis() as u64 / HEARTBEAT_MS + 2);
    assert!(
        empty <= heartbeats_max,
        "{empty} empty AppendEntries for {WRITES} writes in {elapsed:?}: \
         more than the {heartbeats_max} heartbeats of that time"
    );

    // With no commit-only message, followers still learn the last commit: from the heartbeat.
    let last = replicas[0].status().applied_index;
    for follower in &replicas[1..] {
        wait_until("the followers apply the last write", || {
            follower.status().applied_index >= last
        })
        .await;
    }
    // A write commits with one follower's answer, so the other may get the last entry only
    // now; by the time both applied it, each write went to each follower at least once.
    let entries = transport.entries_sent.load(Ordering::Relaxed) - entries_before;
    assert!(
        entries >= 2 * WRITES,
        "every write is carried to both followers, but only {entries} entries were sent"
    );

    group.stop().await;
}
