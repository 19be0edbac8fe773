//! The node's feed pump: delivers the feed outboxes of every shard this node leads, gathered
//! per destination shard.
//!
//! A post fans out to many shards, so shard-by-shard delivery (as the graph's edge halves go)
//! would cost one Raft entry per pair of shards and another to trim it: with 64 shards and a
//! few hundred posts a second that is tens of thousands of entries a second, most of a node's
//! work. Here one pass reads the pending feed messages of every led shard, proposes one
//! `FeedDeliveries` entry per destination carrying every source's batch (up to
//! `FEED_DELIVERY_BYTES_MAX` each), and then one `FeedOutboxTrims` entry per source for all the
//! destinations that confirmed. Per pass that is at most a destination count plus a led-shard
//! count of entries, whatever the load. Delivery stays exactly-once and in order per pair of
//! shards: each batch carries its source's sequence numbers and the destination applies each
//! number once.
//!
//! A pass starts when an apply leaves a feed outbox non-empty (the state machines signal one
//! node-wide `Notify`), after `FEED_PUMP_GATHER` so that the messages of a burst share it, and
//! once every `FEED_PUMP_IDLE_PERIOD` in any case (a replica that became leader with messages
//! pending signals nothing). Passes repeat while they move messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_core::{Command, FeedBatch};
use plexus_proto::{ErrorReply, Reply};
use plexus_raft::META_GROUP;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// How long a pass waits after the first signal, so that a burst's messages share it.
pub const FEED_PUMP_GATHER: Duration = Duration::from_millis(5);
/// The longest time between passes.
pub const FEED_PUMP_IDLE_PERIOD: Duration = Duration::from_secs(1);
/// Feed messages of one source for one destination in a pass, at most.
pub const FEED_DELIVERY_ITEMS_MAX: usize = 1_024;
/// Bytes of feed messages in one delivery entry, about (a single larger batch still goes alone).
pub const FEED_DELIVERY_BYTES_MAX: usize = 1 << 20;
/// Entries (deliveries, then trims) one pass has in flight at once.
pub const FEED_PUMP_IN_FLIGHT_MAX: usize = 16;
/// Passes one wake-up runs at most before it waits again.
pub const FEED_PUMP_PASSES_MAX: usize = 64;

/// Starts the pump; it runs until the returned task is aborted.
pub fn spawn(registry: Arc<Registry>, ready: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = ready.notified() => tokio::time::sleep(FEED_PUMP_GATHER).await,
                _ = tokio::time::sleep(FEED_PUMP_IDLE_PERIOD) => {}
            }
            for _ in 0..FEED_PUMP_PASSES_MAX {
                if !pass(&registry).await {
                    break;
                }
            }
        }
    })
}

/// One pass; whether it delivered anything.
async fn pass(registry: &Registry) -> bool {
    let mut by_dest: BTreeMap<u32, Vec<FeedBatch>> = BTreeMap::new();
    for replica in registry.led_replicas().into_iter().filter(|r| r.group != META_GROUP) {
        let Ok(state) = replica.state().read() else { continue };
        for (dest, first_seq, items) in state.feed_outbox_pending(FEED_DELIVERY_ITEMS_MAX, FEED_DELIVERY_BYTES_MAX) {
            by_dest.entry(dest).or_default().push(FeedBatch {
                from_shard: replica.group,
                first_seq,
                items,
            });
        }
    }
    if by_dest.is_empty() {
        return false;
    }
    // Each destination's batches, cut into entries of about FEED_DELIVERY_BYTES_MAX.
    let mut entries: Vec<(u32, Vec<FeedBatch>)> = Vec::new();
    for (dest, batches) in by_dest {
        let mut entry: Vec<FeedBatch> = Vec::new();
        let mut bytes = 0usize;
        for b in batches {
            let size: usize = b.items.iter().map(|m| m.bytes()).sum();
            if !entry.is_empty() && bytes + size > FEED_DELIVERY_BYTES_MAX {
                entries.push((dest, std::mem::take(&mut entry)));
                bytes = 0;
            }
            bytes += size;
            entry.push(b);
        }
        entries.push((dest, entry));
    }
    let now_millis = registry.clock.now_millis();
    let answers = futures::stream::iter(entries)
        .map(|(dest, batches)| async move {
            let sources: Vec<u32> = batches.iter().map(|b| b.from_shard).collect();
            let answer = registry
                .propose_anywhere(dest, Command::FeedDeliveries { batches, now_millis })
                .await;
            (dest, sources, answer)
        })
        .buffer_unordered(FEED_PUMP_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await;
    let mut trims: BTreeMap<u32, Vec<(u32, u64)>> = BTreeMap::new();
    for (dest, sources, answer) in answers {
        match answer {
            Ok(Reply::Counts(uptos)) if uptos.len() == sources.len() => {
                for (src, upto) in sources.into_iter().zip(uptos) {
                    trims.entry(src).or_default().push((dest, upto));
                }
            }
            Ok(other) => tracing::warn!(dest, ?other, "unexpected feed delivery answer"),
            Err(ErrorReply::NotLeader { .. } | ErrorReply::ShardUnavailable(_) | ErrorReply::Timeout(_)) => {}
            Err(e) => tracing::warn!(dest, error = %e, "feed delivery failed"),
        }
    }
    let delivered = !trims.is_empty();
    let timeout = registry.request_timeout;
    futures::stream::iter(trims)
        .for_each_concurrent(FEED_PUMP_IN_FLIGHT_MAX, |(src, trims)| async move {
            let Some(replica) = registry.get(src).filter(|r| r.is_leader()) else {
                return;
            };
            if let Err(e) = replica.propose(Command::FeedOutboxTrims { trims }, timeout).await {
                tracing::debug!(shard = src, error = %e, "feed outbox trim deferred");
            }
        })
        .await;
    delivered
}
