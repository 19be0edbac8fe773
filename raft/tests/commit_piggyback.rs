//! The vendored openraft patch (raft/vendor/README.md): a leader sends no AppendEntries just to
//! carry a new commit index; followers learn it from the next entries or the next heartbeat.
//!
//! Three replicas of one group run in this process over an in-memory transport that counts the
//! AppendEntries requests without entries. Unpatched openraft sends one per write to each
//! follower; patched, only the periodic heartbeats (and nothing at all between them) remain.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_proto::WriteOp;
use plexus_raft::network::{decode, encode, BoxFut, PeerRequest, RaftTransport, TransportError};
use plexus_raft::replica::{open_log, Replica, ReplicaOptions};
use plexus_raft::types::Command;

type NodeId = u64;
use plexus_raft::wal::{SnapshotStore, Wal, WalOptions};

const GROUP: u32 = 0;
const HEARTBEAT_MS: u64 = 200;
const WRITES: u64 = 60;

/// Routes each call to the target replica's `handle_peer` and counts empty AppendEntries.
#[derive(Default)]
struct LoopbackTransport {
    replicas: Mutex<BTreeMap<NodeId, Replica>>,
    empty_appends: AtomicU64,
    /// Entries carried by all AppendEntries (a busy stream may carry two writes in one).
    entries_sent: AtomicU64,
}

impl RaftTransport for LoopbackTransport {
    fn call(&self, to: NodeId, msg: Vec<u8>, timeout: Duration) -> BoxFut<Result<Vec<u8>, TransportError>> {
        let target = self.replicas.lock().unwrap().get(&to).cloned();
        let req: Result<PeerRequest, String> = decode(&msg);
        if let Ok(PeerRequest::Append(_, rpc)) = &req {
            self.entries_sent.fetch_add(rpc.entries.len() as u64, Ordering::Relaxed);
            if rpc.entries.is_empty() {
                self.empty_appends.fetch_add(1, Ordering::Relaxed);
            }
        }
        Box::pin(async move {
            let Some(replica) = target else {
                return Err(TransportError::Unreachable(to, "not running".into()));
            };
            let req = req.map_err(|e| TransportError::Remote(to, e))?;
            encode(&replica.handle_peer(req, timeout).await).map_err(|e| TransportError::Remote(to, e))
        })
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_ride_on_entries_and_heartbeats_not_on_extra_appends() {
    let dir = tempfile::tempdir().unwrap();
    let transport = Arc::new(LoopbackTransport::default());
    let opts = ReplicaOptions {
        heartbeat_ms: HEARTBEAT_MS,
        election_timeout_min_ms: 1_000,
        election_timeout_max_ms: 2_000,
        shard_count: 1,
        ..ReplicaOptions::default()
    };
    let mut wals = Vec::new();
    for node in 1..=3u64 {
        let node_dir = dir.path().join(format!("node-{node}"));
        let wal_opts = WalOptions {
            fsync: false,
            ..WalOptions::default()
        };
        let (wal, mut recovered) = Wal::open(&node_dir.join("wal"), wal_opts).unwrap();
        let log = open_log(GROUP, &wal, recovered.groups.remove(&GROUP).unwrap_or_default()).unwrap();
        let snapshots = Arc::new(SnapshotStore::open(&node_dir.join("snapshots")).unwrap());
        let replica = Replica::open(GROUP, node, log, snapshots, transport.clone(), &opts)
            .await
            .unwrap();
        transport.replicas.lock().unwrap().insert(node, replica);
        wals.push(wal);
    }
    let replicas: Vec<Replica> = transport.replicas.lock().unwrap().values().cloned().collect();
    let members = (1..=3u64).map(|n| (n, format!("node-{n}"))).collect();
    replicas[0].bootstrap(members).await.unwrap();
    wait_until("node 1 leads", || replicas[0].is_leader()).await;

    let before = transport.empty_appends.load(Ordering::Relaxed);
    let entries_before = transport.entries_sent.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..WRITES {
        let cmd = Command::Client {
            session: None,
            op: WriteOp::TimelineAppend {
                owner: 7,
                item: i.to_le_bytes().to_vec(),
            },
            now_millis: 1_700_000_000_000,
        };
        let response = replicas[0].propose(cmd, Duration::from_secs(10)).await;
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

    for replica in &replicas {
        replica.shutdown().await;
    }
    for wal in wals {
        wal.close();
    }
}
