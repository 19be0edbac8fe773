//! The node's workload pump: delivers the feed and EMPI outboxes of every shard this node
//! leads, gathered per destination shard.
//!
//! A post fans out to many shards, and a linked record sends index and membership messages to
//! several, so shard-by-shard delivery (as the graph's edge halves go) would cost one Raft
//! entry per pair of shards and another to trim it: with 64 shards and a few hundred posts a
//! second that is tens of thousands of entries a second, most of a node's work. Here one pass
//! reads, per outbox kind (a [`Lane`]: feed, EMPI), the pending messages of every led shard,
//! proposes one delivery entry per destination carrying every source's batch (up to
//! `PUMP_DELIVERY_BYTES_MAX` each), and then one trim entry per source for all the destinations
//! that confirmed. Per pass and lane that is at most a destination count plus a led-shard count
//! of entries, whatever the load. Delivery stays exactly-once and in order per pair of shards:
//! each batch carries its source's sequence numbers and the destination applies each number
//! once.
//!
//! A pass starts when an apply leaves a feed or EMPI outbox non-empty (the state machines
//! signal one node-wide `Notify`), after `PUMP_GATHER` so that the messages of a burst share
//! it, and once every `PUMP_IDLE_PERIOD` in any case (a replica that became leader with
//! messages pending signals nothing). Passes repeat while they move messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_core::state::ShardState;
use plexus_core::{Command, EmpiBatch, EmpiMsg, FeedBatch, FeedMsg};
use plexus_proto::{ErrorReply, Reply, ShardId};
use plexus_raft::META_GROUP;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// How long a pass waits after the first signal, so that a burst's messages share it.
pub const PUMP_GATHER: Duration = Duration::from_millis(5);
/// The longest time between passes.
pub const PUMP_IDLE_PERIOD: Duration = Duration::from_secs(1);
/// Messages of one source for one destination in a pass, at most.
pub const PUMP_DELIVERY_ITEMS_MAX: usize = 1_024;
/// Bytes of messages in one delivery entry, about (a single larger batch still goes alone).
pub const PUMP_DELIVERY_BYTES_MAX: usize = 1 << 20;
/// Entries (deliveries, then trims) one pass has in flight at once.
pub const PUMP_IN_FLIGHT_MAX: usize = 16;
/// Passes one wake-up runs at most before it waits again.
pub const PUMP_PASSES_MAX: usize = 64;

/// One kind of outbox the pump delivers.
trait Lane {
    const NAME: &'static str;
    type Msg: Send;
    type Batch: Send;
    fn pending(state: &ShardState) -> Vec<(ShardId, u64, Vec<Self::Msg>)>;
    fn batch(from_shard: ShardId, first_seq: u64, items: Vec<Self::Msg>) -> Self::Batch;
    fn bytes(batch: &Self::Batch) -> usize;
    fn source(batch: &Self::Batch) -> ShardId;
    fn deliveries(batches: Vec<Self::Batch>, now_millis: u64) -> Command;
    fn trims(trims: Vec<(ShardId, u64)>) -> Command;
}

struct Feed;

impl Lane for Feed {
    const NAME: &'static str = "feed";
    type Msg = FeedMsg;
    type Batch = FeedBatch;
    fn pending(state: &ShardState) -> Vec<(ShardId, u64, Vec<FeedMsg>)> {
        state.feed_outbox_pending(PUMP_DELIVERY_ITEMS_MAX, PUMP_DELIVERY_BYTES_MAX)
    }
    fn batch(from_shard: ShardId, first_seq: u64, items: Vec<FeedMsg>) -> FeedBatch {
        FeedBatch {
            from_shard,
            first_seq,
            items,
        }
    }
    fn bytes(batch: &FeedBatch) -> usize {
        batch.items.iter().map(FeedMsg::bytes).sum()
    }
    fn source(batch: &FeedBatch) -> ShardId {
        batch.from_shard
    }
    fn deliveries(batches: Vec<FeedBatch>, now_millis: u64) -> Command {
        Command::FeedDeliveries { batches, now_millis }
    }
    fn trims(trims: Vec<(ShardId, u64)>) -> Command {
        Command::FeedOutboxTrims { trims }
    }
}

struct Empi;

impl Lane for Empi {
    const NAME: &'static str = "empi";
    type Msg = EmpiMsg;
    type Batch = EmpiBatch;
    fn pending(state: &ShardState) -> Vec<(ShardId, u64, Vec<EmpiMsg>)> {
        state.empi_outbox_pending(PUMP_DELIVERY_ITEMS_MAX, PUMP_DELIVERY_BYTES_MAX)
    }
    fn batch(from_shard: ShardId, first_seq: u64, items: Vec<EmpiMsg>) -> EmpiBatch {
        EmpiBatch {
            from_shard,
            first_seq,
            items,
        }
    }
    fn bytes(batch: &EmpiBatch) -> usize {
        batch.items.iter().map(EmpiMsg::bytes).sum()
    }
    fn source(batch: &EmpiBatch) -> ShardId {
        batch.from_shard
    }
    fn deliveries(batches: Vec<EmpiBatch>, now_millis: u64) -> Command {
        Command::EmpiDeliveries { batches, now_millis }
    }
    fn trims(trims: Vec<(ShardId, u64)>) -> Command {
        Command::EmpiOutboxTrims { trims }
    }
}

/// Starts the pump; it runs until the returned task is aborted.
pub fn spawn(registry: Arc<Registry>, ready: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = ready.notified() => tokio::time::sleep(PUMP_GATHER).await,
                _ = tokio::time::sleep(PUMP_IDLE_PERIOD) => {}
            }
            for _ in 0..PUMP_PASSES_MAX {
                // Both lanes at once: a burst of posts does not hold back linked records.
                let (feed, empi) = futures::join!(pass::<Feed>(&registry), pass::<Empi>(&registry));
                if !feed && !empi {
                    break;
                }
            }
        }
    })
}

/// One pass of lane `L`; whether it delivered anything.
async fn pass<L: Lane>(registry: &Registry) -> bool {
    let mut by_dest: BTreeMap<ShardId, Vec<L::Batch>> = BTreeMap::new();
    for replica in registry.led_replicas().into_iter().filter(|r| r.group != META_GROUP) {
        let Ok(state) = replica.state().read() else { continue };
        for (dest, first_seq, items) in L::pending(&state) {
            by_dest
                .entry(dest)
                .or_default()
                .push(L::batch(replica.group, first_seq, items));
        }
    }
    if by_dest.is_empty() {
        return false;
    }
    // Each destination's batches, cut into entries of about PUMP_DELIVERY_BYTES_MAX.
    let mut entries: Vec<(ShardId, Vec<L::Batch>)> = Vec::new();
    for (dest, batches) in by_dest {
        let mut entry: Vec<L::Batch> = Vec::new();
        let mut bytes = 0usize;
        for b in batches {
            let size = L::bytes(&b);
            if !entry.is_empty() && bytes + size > PUMP_DELIVERY_BYTES_MAX {
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
            let sources: Vec<ShardId> = batches.iter().map(L::source).collect();
            let answer = registry
                .propose_anywhere(dest, L::deliveries(batches, now_millis))
                .await;
            (dest, sources, answer)
        })
        .buffer_unordered(PUMP_IN_FLIGHT_MAX)
        .collect::<Vec<_>>()
        .await;
    let mut trims: BTreeMap<ShardId, Vec<(ShardId, u64)>> = BTreeMap::new();
    for (dest, sources, answer) in answers {
        match answer {
            Ok(Reply::Counts(uptos)) if uptos.len() == sources.len() => {
                for (src, upto) in sources.into_iter().zip(uptos) {
                    trims.entry(src).or_default().push((dest, upto));
                }
            }
            Ok(other) => tracing::warn!(lane = L::NAME, dest, ?other, "unexpected delivery answer"),
            Err(ErrorReply::NotLeader { .. } | ErrorReply::ShardUnavailable(_) | ErrorReply::Timeout(_)) => {}
            Err(e) => tracing::warn!(lane = L::NAME, dest, error = %e, "delivery failed"),
        }
    }
    let delivered = !trims.is_empty();
    let timeout = registry.request_timeout;
    futures::stream::iter(trims)
        .for_each_concurrent(PUMP_IN_FLIGHT_MAX, |(src, trims)| async move {
            let Some(replica) = registry.get(src).filter(|r| r.is_leader()) else {
                return;
            };
            if let Err(e) = replica.propose(L::trims(trims), timeout).await {
                tracing::debug!(lane = L::NAME, shard = src, error = %e, "outbox trim deferred");
            }
        })
        .await;
    delivered
}
