#![allow(dead_code)] // each test file uses a different part of this shared module
//! A group of three replicas in this process over an in-memory transport that counts the
//! AppendEntries it carries, for tests of what travels between replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_proto::WriteOp;
use plexus_raft::network::{decode, encode, BoxFut, PeerRequest, RaftTransport, TransportError};
use plexus_raft::replica::{open_log, Replica, ReplicaOptions};
use plexus_raft::types::Command;
use plexus_raft::wal::{SnapshotStore, Wal, WalOptions};

type NodeId = u64;

/// The one group the tests run.
pub const GROUP: u32 = 0;

/// Routes each call to the target replica's `handle_peer` and counts AppendEntries.
#[derive(Default)]
pub struct LoopbackTransport {
    replicas: Mutex<BTreeMap<NodeId, Replica>>,
    /// AppendEntries without entries (heartbeats, commit-only messages, read-index rounds).
    pub empty_appends: AtomicU64,
    /// Entries carried by all AppendEntries (a busy stream may carry two writes in one).
    pub entries_sent: AtomicU64,
    /// Nodes cut off from every other: calls to them and their appends and votes fail.
    pub isolated: Mutex<BTreeSet<NodeId>>,
}

/// The node that sent a Raft request, when the request says (appends and votes do).
fn sender(req: &PeerRequest) -> Option<NodeId> {
    match req {
        PeerRequest::Append(_, rpc) => rpc.vote.leader_id().voted_for(),
        PeerRequest::Vote(_, rpc) | PeerRequest::TransferVote(_, rpc) => rpc.vote.leader_id().voted_for(),
        _ => None,
    }
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
        let isolated = {
            let isolated = self.isolated.lock().unwrap();
            isolated.contains(&to)
                || req
                    .as_ref()
                    .ok()
                    .and_then(sender)
                    .is_some_and(|s| isolated.contains(&s))
        };
        Box::pin(async move {
            if isolated {
                return Err(TransportError::Unreachable(to, "isolated".into()));
            }
            let Some(replica) = target else {
                return Err(TransportError::Unreachable(to, "not running".into()));
            };
            let req = req.map_err(|e| TransportError::Remote(to, e))?;
            encode(&replica.handle_peer(req, timeout).await).map_err(|e| TransportError::Remote(to, e))
        })
    }
}

/// Three running replicas of `GROUP`, node 1 leading, with what keeps them alive.
pub struct Group {
    pub transport: Arc<LoopbackTransport>,
    pub replicas: Vec<Replica>,
    wals: Vec<Wal>,
    _dir: tempfile::TempDir,
}

impl Group {
    /// Starts nodes 1..=3 with `opts` and waits until node 1 leads.
    pub async fn start(opts: ReplicaOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let transport = Arc::new(LoopbackTransport::default());
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
        Self {
            transport,
            replicas,
            wals,
            _dir: dir,
        }
    }

    /// The leader (node 1).
    pub fn leader(&self) -> &Replica {
        &self.replicas[0]
    }

    /// AppendEntries without entries sent so far.
    pub fn empty_appends(&self) -> u64 {
        self.transport.empty_appends.load(Ordering::Relaxed)
    }

    /// Stops every replica and closes the WALs.
    pub async fn stop(self) {
        for replica in &self.replicas {
            replica.shutdown().await;
        }
        for wal in self.wals {
            wal.close();
        }
    }
}

/// A timeline append of `item` to owner 7.
pub fn append(item: u64) -> Command {
    Command::Client {
        session: None,
        op: WriteOp::TimelineAppend {
            owner: 7,
            item: item.to_le_bytes().to_vec(),
        },
        now_millis: 1_700_000_000_000,
    }
}

/// Polls `done` every 10 ms; panics after 20 s.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
