//! The write-and-read workload the fault tests run while they break a cluster: writers append
//! to a fixed set of timelines and record every id the cluster acknowledged; a reader checks
//! that each linearizable read sees every write acknowledged before the read began; at the end
//! every acknowledged write must be on every replica of its shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_client::Client;
use plexus_proto::{shard_for_key, Cursor, ReadOp, Reply, ShardKey};
use tokio::task::JoinHandle;

/// Per owner, below the 800-entry timeline cap so nothing acknowledged is trimmed.
pub const APPENDS_PER_OWNER_MAX: usize = 300;
/// Per writer: a bound on a run, far more than any test's few seconds of writing need.
const APPENDS_PER_WRITER_MAX: usize = APPENDS_PER_OWNER_MAX * 2 * 100;

/// Acknowledged timeline ids per owner.
pub type Acked = Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>;

/// A running workload: `owners / 2` writers, each appending to two owners at a time (owners
/// `0..owners` first, then `owners..2 * owners`, ...), and one reader.
pub struct Workload {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
    reader: JoinHandle<u64>,
    acked: Acked,
}

impl Workload {
    pub fn start(client: &Client, owners: u64) -> Self {
        assert!(
            owners >= 2 && owners.is_multiple_of(2),
            "owners must be even and at least 2"
        );
        let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..(owners / 2) {
            let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && n < APPENDS_PER_WRITER_MAX {
                    // Two owners at a time; once they hold APPENDS_PER_OWNER_MAX each, the next
                    // two (`owners` further on), so a slow test never runs out of writes.
                    let generation = (n / (APPENDS_PER_OWNER_MAX * 2)) as u64;
                    let owner = generation * owners + w * 2 + (n as u64 % 2);
                    if let Ok(id) = c.timeline_append(owner, format!("w{w}-{n}").into_bytes()).await {
                        acked.lock().unwrap().entry(owner).or_default().insert(id);
                    }
                    n += 1;
                }
            }));
        }
        // Linearizability of reads: a read that starts after a write was acknowledged must
        // observe it, whichever replica leads by then.
        let reader = {
            let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut checked = 0u64;
                let mut turn = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Every owner written so far, in turn.
                    let (owner, before) = {
                        let acked = acked.lock().unwrap();
                        match acked.iter().nth(turn % acked.len().max(1)) {
                            Some((owner, ids)) => (*owner, ids.clone()),
                            None => (0, BTreeSet::new()),
                        }
                    };
                    turn += 1;
                    if let Ok(page) = c.timeline_read(owner, Cursor::Latest, 1000).await {
                        let seen: BTreeSet<u64> = page.entries.iter().map(|e| e.id).collect();
                        let missing: Vec<_> = before.difference(&seen).collect();
                        assert!(
                            missing.is_empty(),
                            "linearizable read of owner {owner} misses acked ids {missing:?}"
                        );
                        let ids: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
                        assert!(ids.windows(2).all(|w| w[0] > w[1]), "page not newest-first: {ids:?}");
                        checked += 1;
                    }
                }
                checked
            })
        };
        Self {
            stop,
            writers,
            reader,
            acked,
        }
    }

    /// How many writes were acknowledged so far to the owners `owner_in` accepts.
    pub fn acked_where(&self, owner_in: impl Fn(u64) -> bool) -> usize {
        let acked = self.acked.lock().unwrap();
        acked
            .iter()
            .filter(|(o, _)| owner_in(**o))
            .map(|(_, ids)| ids.len())
            .sum()
    }

    /// The ids acknowledged so far to `owner`.
    pub fn acked_ids(&self, owner: u64) -> BTreeSet<u64> {
        self.acked.lock().unwrap().get(&owner).cloned().unwrap_or_default()
    }

    /// Stops writers and reader; returns the acknowledged ids and how many reads were checked.
    async fn stop(self) -> (BTreeMap<u64, BTreeSet<u64>>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            w.await.unwrap();
        }
        let reads = self.reader.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, reads)
    }

    /// Stops the workload and checks its outcome: enough reads checked and writes acknowledged
    /// to mean something, and every acknowledged write on every replica within `within`.
    pub async fn finish(self, client: &Client, within: Duration) {
        let (acked, reads) = self.stop().await;
        assert!(reads > 10, "too few linearizable reads checked: {reads}");
        let total: usize = acked.values().map(|s| s.len()).sum();
        assert!(total > 50, "too few acknowledged writes: {total}");
        assert_on_every_replica(client, &acked, within).await;
        eprintln!("{total} acknowledged writes present on every replica; {reads} linearizable reads checked");
    }
}

/// Waits (up to `within`) until every acknowledged id is on every replica of its owner's shard,
/// read at each replica without a read index; panics naming the first replica that lacks some.
pub async fn assert_on_every_replica(client: &Client, acked: &BTreeMap<u64, BTreeSet<u64>>, within: Duration) {
    let map = client.shard_map();
    let deadline = Instant::now() + within;
    for (owner, ids) in acked {
        let shard = shard_for_key(&ShardKey::Id(*owner), map.shard_count);
        for node in &map.shards[shard as usize].replicas {
            let addr = map.node_addr(*node).unwrap().to_string();
            loop {
                let op = ReadOp::TimelineRead {
                    owner: *owner,
                    cursor: Cursor::Latest,
                    limit: 1000,
                };
                let seen: BTreeSet<u64> = match super::stale_read_at(client, &addr, shard, op).await {
                    Some(Reply::Page(p)) => p.entries.iter().map(|e| e.id).collect(),
                    _ => BTreeSet::new(),
                };
                if ids.is_subset(&seen) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {node} is missing {} acked entries of owner {owner}",
                    ids.difference(&seen).count()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The node that leads `shard`, as the nodes' own status reports say, with its pid.
pub async fn leader_of(client: &Client, shard: u32) -> Option<(u64, u32)> {
    leaders_of(client, shard).await.into_iter().next()
}

/// Every node whose status says it leads `shard` (two, for a while, when an old leader is cut
/// off from its group but not from clients), with their pids.
pub async fn leaders_of(client: &Client, shard: u32) -> Vec<(u64, u32)> {
    if client.refresh_shard_map().await.is_err() {
        return Vec::new();
    }
    let map = client.shard_map();
    let mut leaders = Vec::new();
    for n in &map.nodes {
        if let Ok(st) = client.node_status(&n.client_addr).await {
            if st.shards.iter().any(|s| s.shard == shard && s.leader == Some(n.id)) {
                leaders.push((n.id, st.pid));
            }
        }
    }
    leaders
}
