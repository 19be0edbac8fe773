//! Three node processes on loopback: write through the client while the
//! leader of a shard is SIGKILLed and restarted; every acknowledged write must
//! then be on every replica, and reads must be linearizable throughout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_proto::{shard_for_key, Cursor, Direction, ReadOp, Reply, ShardKey};

const SHARDS: u32 = 8;
const OWNERS: u64 = 16;
/// Per owner, below the 800-entry timeline cap so nothing acknowledged is trimmed.
const APPENDS_PER_OWNER_MAX: usize = 300;

type Acked = Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let port = common::base_port(1).to_string();
    let shards = SHARDS.to_string();
    let up = common::up(
        &dir,
        &["--nodes", "3", "--shards", &shards, "--base-port", &port],
        Duration::from_secs(180),
    );
    let client = common::client(&dir).await;

    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..(OWNERS / 2) {
        let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < APPENDS_PER_OWNER_MAX * 2 {
                let owner = w * 2 + (n as u64 % 2);
                if let Ok(id) = c.timeline_append(owner, format!("w{w}-{n}").into_bytes()).await {
                    acked.lock().unwrap().entry(owner).or_default().insert(id);
                }
                n += 1;
            }
        }));
    }
    // Linearizability of reads: a read that starts after a write was
    // acknowledged must observe it, whichever replica leads by then.
    let reader = {
        let (c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut checked = 0u64;
            let mut owner = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                owner = (owner + 1) % OWNERS;
                let before: BTreeSet<u64> = acked.lock().unwrap().get(&owner).cloned().unwrap_or_default();
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

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Find and SIGKILL the leader of owner 0's shard.
    let shard0 = shard_for_key(&ShardKey::Id(0), SHARDS);
    client.refresh_shard_map().await.unwrap();
    let map = client.shard_map();
    let mut victim = None;
    for n in &map.nodes {
        if let Ok(st) = client.node_status(&n.client_addr).await {
            if st.shards.iter().any(|s| s.shard == shard0 && s.leader == Some(n.id)) {
                victim = Some((n.id, st.pid));
            }
        }
    }
    let (victim_id, victim_pid) = victim.expect("shard 0 has a leader");
    eprintln!("killing node {victim_id} (pid {victim_pid}), leader of shard {shard0}");
    common::signal(victim_pid, "KILL");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut restarted = common::start_node(&dir, victim_id);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let reads = reader.await.unwrap();
    assert!(reads > 10, "too few linearizable reads checked: {reads}");

    // Every acknowledged write is on every replica (after catch-up).
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(|s| s.len()).sum();
    assert!(total > 50, "too few acknowledged writes: {total}");
    let map = client.shard_map();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (owner, ids) in &acked {
        let shard = shard_for_key(&ShardKey::Id(*owner), SHARDS);
        for node in &map.shards[shard as usize].replicas {
            let addr = map.node_addr(*node).unwrap().to_string();
            loop {
                let op = ReadOp::TimelineRead {
                    owner: *owner,
                    cursor: Cursor::Latest,
                    limit: 1000,
                };
                let seen: BTreeSet<u64> = match common::stale_read_at(&client, &addr, shard, op).await {
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
    eprintln!("{total} acknowledged writes present on every replica; {reads} linearizable reads checked");

    // Cross-shard follows converge on both halves.
    let pairs: Vec<(u64, u64)> = (0..20).map(|i| (100 + i, 200 + i * 7)).collect();
    for (a, b) in &pairs {
        assert!(client.follow(*a, *b).await.unwrap());
    }
    for (a, b) in &pairs {
        assert!(client.has_edge(*a, *b).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ins, _) = client.neighbors(*b, Direction::In, None, 100).await.unwrap();
            if ins.contains(a) {
                break;
            }
            assert!(Instant::now() < deadline, "in-edge {a} -> {b} never arrived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    client.close().await;
    common::signal(restarted.id(), "TERM");
    let _ = restarted.wait();
    up.stop();
}
