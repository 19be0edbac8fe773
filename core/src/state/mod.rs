//! The deterministic shard state machine: what one shard replica holds and
//! how a committed `Command` changes it.
//!
//! A shard holds named filters (`filter`), timelines (`timeline`), its graph
//! partition (`graph`), per-vertex feature vectors (`features`), the
//! undelivered halves of cross-shard edges (`outbox`), the exactly-once
//! session table (`session`), the social feed (`feed`) and identity matching
//! (`empi`). Applying is
//! pure: no clock (time arrives in `Command::Client::now_millis`), no RNG, no
//! IO and no iteration over hash maps, so every replica that applies the same
//! log reaches the same `state_hash`. It is not Raft, storage or networking:
//! `sm_store` feeds it committed entries and persists its snapshots.

mod bloom;
mod empi;
mod features;
mod feed;
mod filter;
mod graph;
mod hash;
mod outbox;
mod session;
mod snapshot;
mod timeline;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_features;
#[cfg(test)]
mod tests_graph;
#[cfg(test)]
mod tests_snapshot;

use std::collections::BTreeMap;

use plexus_proto::{
    shard_for_key, ErrorReply, ReadOp, Reply, Response, Session, ShardId, ShardKey, ShardMap, WriteOp, FOLLOW_BATCH_MAX,
};

pub use empi::{new_master_id, EmpiBloomSizing, EmpiLimits, EMPI_BLOOM_CHAIN_MAX, EMPI_BLOOM_FILTER_BYTES_MAX};
pub use features::{FEATURES_DIM_MAX, FEATURES_READ_VERTICES_MAX};
pub use feed::{FeedLimits, SeenSizing};
pub use filter::{
    FILTER_BLOCK_BYTES_MAX, FILTER_FP_RATE_PPM_MAX, FILTER_FP_RATE_PPM_MIN, FILTER_NAME_BYTES_MAX, FILTER_SEALED_MAX,
    FILTER_TAIL_BLOOMS_MAX,
};
pub use snapshot::StateError;

use crate::canary::Canary;
use crate::command::{Command, EdgeUpdate, EmpiMsg, FeedMsg};
use empi::EmpiStore;
use features::FeatureStore;
use feed::FeedState;
use filter::NamedFilter;
use graph::{Graph, Placement};
use outbox::Outbox;
use session::{Admission, Sessions};
use timeline::Timelines;

/// Limits of one shard's state. They are configuration, not replicated
/// state: every replica of a group must be given the same values, or their
/// states may diverge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Entries kept per timeline; appending past it drops the oldest.
    pub timeline_len_max: usize,
    /// Most entries in one timeline page.
    pub page_entries_max: u32,
    /// Most ids in one neighbours page.
    pub neighbors_page_max: u32,
    /// Most keys in one filter add or contains batch.
    pub filter_batch_keys_max: usize,
    /// Largest timeline item or filter key, in bytes.
    pub item_bytes_max: usize,
    /// Most clients in the session table.
    pub sessions_max: usize,
    /// Most cached answers per client.
    pub session_responses_max: usize,
    /// Most undelivered edge updates in the outbox, over all destinations.
    pub outbox_entries_max: usize,
    /// The social feed's settings.
    pub feed: FeedLimits,
    /// Identity matching's settings.
    pub empi: EmpiLimits,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            timeline_len_max: 800,
            page_entries_max: 1_000,
            neighbors_page_max: 10_000,
            filter_batch_keys_max: 100_000,
            item_bytes_max: 64 * 1024,
            sessions_max: 10_000,
            session_responses_max: 1_024,
            outbox_entries_max: 100_000,
            feed: FeedLimits::default(),
            empi: EmpiLimits::default(),
        }
    }
}

/// The replicated state of one shard (or of the meta group).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardState {
    here: Placement,
    limits: StateLimits,
    last_applied: u64,
    shard_map: Option<ShardMap>,
    filters: BTreeMap<String, NamedFilter>,
    timelines: Timelines,
    graph: Graph,
    outbox: Outbox<EdgeUpdate>,
    sessions: Sessions,
    features: FeatureStore,
    feed: FeedState,
    empi: EmpiStore,
    /// Simulation only (see `sim_hooks`): not replicated, not in snapshots or the state hash.
    canary: Option<Canary>,
}

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

impl ShardState {
    /// An empty state for `shard` of `shard_count` (the meta group passes
    /// `META_GROUP`, which owns no key).
    pub fn new(shard: ShardId, shard_count: u32, limits: StateLimits) -> Self {
        Self {
            here: Placement { shard, shard_count },
            limits,
            last_applied: 0,
            shard_map: None,
            filters: BTreeMap::new(),
            timelines: Timelines::default(),
            graph: Graph::default(),
            outbox: Outbox::default(),
            sessions: Sessions::default(),
            features: FeatureStore::default(),
            feed: FeedState::default(),
            empi: EmpiStore::default(),
            canary: None,
        }
    }

    /// Switches a canary bug on or off (the simulator's `SimHooks`; never set in production).
    pub fn set_canary(&mut self, canary: Option<Canary>) {
        self.canary = canary;
    }

    /// Apply one committed command at log `index`. Pure and deterministic.
    ///
    /// Answers, besides the errors each op documents:
    /// - `FilterCreate`: `Changed(created)`; an existing name with another
    ///   spec is `BadRequest`.
    /// - `FilterAdd`: `Changed(any key tested absent before its insertion)`.
    /// - `FilterSeal`: `Changed(the tail held keys)`; a missing filter is `NotFound`.
    /// - `TimelineAppend`: `Appended(id)`; `TimelineDelete`, `Follow`,
    ///   `Unfollow`: `Changed(..)`. A full outbox is `Busy`, not applied.
    /// - `SetFeatures`: `Changed(the stored bytes differ)`; an empty vector
    ///   removes the vertex's features; more than `FEATURES_DIM_MAX` values
    ///   or a NaN/infinite value is `BadRequest`.
    /// - `EdgeDelivery`: `Count(delivered_upto)` for the source shard.
    /// - `OutboxTrim`: `Count(entries dropped)`.
    /// - `EmpiPut`: `Counts` (per put, the record's identity once applied, 0 if superseded); `EmpiConstrain`, `EmpiReassign`, `EmpiSetModel`: `Changed`;
    ///   `EmpiMerge`: `Count(members moved)`; `EmpiDeliveries`: `Counts`; `EmpiOutboxTrims`:
    ///   `Count(dropped)`. A full EMPI outbox refuses puts, constraints, reassigns and merges
    ///   with `Busy`, not applied.
    /// - `SetShardMap`, `Noop`: `Done`.
    ///
    /// A client op whose key is not this shard's is `WrongShard`. A write
    /// under a session (`Client` with one, or `InSession`) is answered from
    /// the session table when it is a retry (or `StaleSession` when already
    /// acknowledged), and not applied.
    ///
    /// Indexes must increase: an `index` at or below `last_applied` (once
    /// that is non-zero) is answered `Internal` without applying, so a
    /// caller's replay bug cannot apply a write twice.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Response {
        if self.last_applied != 0 && index <= self.last_applied {
            return Err(ErrorReply::Internal(format!(
                "log index {index} is not after the last applied index {}",
                self.last_applied
            )));
        }
        let answer = match cmd {
            Command::Client {
                session: Some(s),
                op,
                now_millis,
            } => self.in_session(index, s, |state| state.apply_write(op, *now_millis)),
            Command::InSession { session, cmd } if cmd.takes_session() => {
                self.in_session(index, session, |state| state.apply_command(cmd))
            }
            Command::InSession { cmd, .. } => Err(ErrorReply::BadRequest(format!(
                "a session wraps only a workload's write for one request, not {}",
                cmd.name()
            ))),
            other => self.apply_command(other),
        };
        self.last_applied = index;
        debug_assert!(self.outbox.check());
        debug_assert!(self.feed.check());
        debug_assert!(self.empi.check());
        answer
    }

    /// Applies `apply` unless the session table says the write under `s` is a retry or stale;
    /// then records its answer.
    fn in_session(&mut self, index: u64, s: &Session, apply: impl FnOnce(&mut Self) -> Response) -> Response {
        match self.sessions.admit(s, self.canary) {
            Admission::Answer(answer) => answer,
            Admission::Apply => {
                let answer = apply(self);
                let (sessions_max, responses_max) = (self.limits.sessions_max, self.limits.session_responses_max);
                self.sessions.record(s, index, &answer, sessions_max, responses_max);
                answer
            }
        }
    }

    /// Applies one command outside any session (`InSession` has been unwrapped).
    fn apply_command(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::Client { op, now_millis, .. } => self.apply_write(op, *now_millis),
            Command::EdgeDelivery {
                from_shard,
                first_seq,
                items,
            } => self.edge_delivery(*from_shard, *first_seq, items),
            Command::OutboxTrim { to_shard, upto_seq } => Ok(Reply::Count(self.outbox.trim(*to_shard, *upto_seq))),
            Command::FeedDelivery {
                from_shard,
                first_seq,
                items,
                now_millis,
            } => self.feed_delivery(*from_shard, *first_seq, items, *now_millis),
            Command::FeedOutboxTrim { to_shard, upto_seq } => self.feed_trim(*to_shard, *upto_seq),
            Command::FeedDeliveries { batches, now_millis } => self.feed_deliveries(batches, *now_millis),
            Command::FeedOutboxTrims { trims } => {
                let dropped = trims.iter().map(|(to, upto)| self.feed.outbox.trim(*to, *upto)).sum();
                Ok(Reply::Count(dropped))
            }
            Command::FeedActivate { user, now_millis } => self
                .check_key(&ShardKey::Id(*user))
                .and_then(|()| self.feed_activate(*user, *now_millis)),
            Command::FeedRebuild {
                user,
                posts,
                now_millis,
            } => self
                .check_key(&ShardKey::Id(*user))
                .and_then(|()| self.feed_rebuild(*user, posts, *now_millis)),
            Command::EmpiPut { puts, now_millis } => self.empi_put(puts, *now_millis),
            Command::EmpiConstrain {
                key,
                other,
                link,
                now_millis,
            } => self.empi_constrain(key, other, *link, *now_millis),
            Command::EmpiReassign {
                key,
                master,
                now_millis,
            } => self.empi_reassign(key, *master, *now_millis),
            Command::EmpiMerge { from, into, now_millis } => self.empi_merge(*from, *into, *now_millis),
            Command::EmpiDeliveries { batches, now_millis } => self.empi_deliveries(batches, *now_millis),
            Command::EmpiOutboxTrims { trims } => self.empi_trims(trims),
            Command::EmpiSetModel { version, model } => self.empi_set_model(*version, model),
            Command::SetShardMap(map) => {
                self.shard_map = Some(map.clone());
                Ok(Reply::Done)
            }
            Command::Noop => Ok(Reply::Done),
            Command::InSession { .. } => Err(ErrorReply::BadRequest("sessions do not nest".into())),
        }
    }

    /// `Command::EdgeDelivery`: the in-halves, then the feed's reaction to each one applied.
    fn edge_delivery(&mut self, from_shard: ShardId, first_seq: u64, items: &[EdgeUpdate]) -> Response {
        let (upto, skip) = self.graph.deliver(self.here, from_shard, first_seq, items)?;
        // An edge delivery carries no clock, and needs none: the follower of a delivered in-half
        // lives on the source shard, never here, so the feed's reaction is always queued for it
        // (and checked against the clock of the feed delivery that carries it there).
        for u in &items[skip..] {
            debug_assert_ne!(self.here.shard_of(u.src), self.here.shard);
            self.feed_on_in_edge(u.src, u.dst, u.add, 0);
        }
        Ok(Reply::Count(upto))
    }

    /// `WrongShard` unless `key` belongs to this shard.
    fn check_key(&self, key: &ShardKey) -> Result<(), ErrorReply> {
        let expected = shard_for_key(key, self.here.shard_count);
        if expected == self.here.shard {
            Ok(())
        } else {
            Err(ErrorReply::WrongShard {
                got: self.here.shard,
                expected,
            })
        }
    }

    fn check_filter_batch(&self, name: &str, keys: &[Vec<u8>]) -> Result<(), ErrorReply> {
        if name.len() > FILTER_NAME_BYTES_MAX {
            return Err(bad(format!(
                "filter name of {} bytes exceeds {FILTER_NAME_BYTES_MAX}",
                name.len()
            )));
        }
        if keys.len() > self.limits.filter_batch_keys_max {
            return Err(bad(format!(
                "{} filter keys exceed the batch limit of {}",
                keys.len(),
                self.limits.filter_batch_keys_max
            )));
        }
        if let Some(k) = keys.iter().find(|k| k.len() > self.limits.item_bytes_max) {
            return Err(bad(format!(
                "filter key of {} bytes exceeds {}",
                k.len(),
                self.limits.item_bytes_max
            )));
        }
        Ok(())
    }

    fn apply_write(&mut self, op: &WriteOp, now_millis: u64) -> Response {
        self.check_key(&op.shard_key())?;
        match op {
            WriteOp::FilterCreate { name, spec } => {
                self.check_filter_batch(name, &[])?;
                match self.filters.get(name) {
                    Some(f) if f.spec() == spec => Ok(Reply::Changed(false)),
                    Some(f) => Err(bad(format!(
                        "filter {name:?} exists with a different spec {:?}",
                        f.spec()
                    ))),
                    None => {
                        self.filters.insert(name.clone(), NamedFilter::new(*spec)?);
                        Ok(Reply::Changed(true))
                    }
                }
            }
            WriteOp::FilterAdd { name, keys } => {
                self.check_filter_batch(name, keys)?;
                match self.filters.get_mut(name) {
                    Some(f) => f.add(keys).map(Reply::Changed),
                    None => {
                        // Created only if the add succeeds, so a refused add leaves no trace.
                        let mut f = NamedFilter::new(Default::default())?;
                        let changed = f.add(keys)?;
                        self.filters.insert(name.clone(), f);
                        Ok(Reply::Changed(changed))
                    }
                }
            }
            WriteOp::FilterSeal { name } => match self.filters.get_mut(name) {
                Some(f) => f.seal().map(Reply::Changed),
                None => Err(ErrorReply::NotFound(format!("filter {name:?}"))),
            },
            WriteOp::TimelineAppend { owner, item } => {
                if item.len() > self.limits.item_bytes_max {
                    return Err(bad(format!(
                        "timeline item of {} bytes exceeds {}",
                        item.len(),
                        self.limits.item_bytes_max
                    )));
                }
                let id = self
                    .timelines
                    .append(*owner, item, now_millis, self.limits.timeline_len_max)?;
                debug_assert!(self.timelines.check_owner(*owner, self.limits.timeline_len_max));
                Ok(Reply::Appended(id))
            }
            WriteOp::TimelineDelete { owner, id } => Ok(Reply::Changed(self.timelines.delete(*owner, *id))),
            WriteOp::Follow { src, dst } => {
                self.feed_admit()?;
                self.follow(*src, *dst, true, now_millis).map(Reply::Changed)
            }
            WriteOp::Unfollow { src, dst } => {
                self.feed_admit()?;
                self.follow(*src, *dst, false, now_millis).map(Reply::Changed)
            }
            WriteOp::FollowMany { src, dsts } => self.follow_many(*src, dsts, now_millis),
            WriteOp::SetFeatures { vertex, features } => self.features.set(*vertex, features).map(Reply::Changed),
            WriteOp::FeedPost { .. }
            | WriteOp::FeedDelete { .. }
            | WriteOp::FeedSeen { .. }
            | WriteOp::FeedUserAdd { .. } => self.feed_write(op, now_millis),
        }
    }

    /// Follow (`add`) or unfollow: the out-half here, the in-half here or through the outbox,
    /// and the feed's reaction (registration, backfill or purge); whether the edge changed.
    fn follow(&mut self, src: u64, dst: u64, add: bool, now_millis: u64) -> Result<bool, ErrorReply> {
        let (outbox, max) = (&mut self.outbox, self.limits.outbox_entries_max);
        let changed = if add {
            self.graph.follow(self.here, src, dst, outbox, max, self.canary)?
        } else {
            self.graph.unfollow(self.here, src, dst, outbox, max)?
        };
        self.feed_on_out_edge(src, changed);
        if changed && self.here.shard_of(dst) == self.here.shard {
            self.feed_on_in_edge(src, dst, add, now_millis);
        }
        Ok(changed)
    }

    /// `WriteOp::FollowMany`: every edge or, refused before anything is touched, none.
    fn follow_many(&mut self, src: u64, dsts: &[u64], now_millis: u64) -> Response {
        if dsts.len() > FOLLOW_BATCH_MAX {
            return Err(bad(format!(
                "{} followees exceed the batch limit of {FOLLOW_BATCH_MAX}",
                dsts.len()
            )));
        }
        if dsts.contains(&src) {
            return Err(bad(format!("vertex {src} cannot follow itself")));
        }
        self.feed_admit()?;
        let remote = dsts
            .iter()
            .filter(|d| self.here.shard_of(**d) != self.here.shard && !self.graph.has_edge(src, **d))
            .count();
        if self.outbox.len() + remote > self.limits.outbox_entries_max {
            return Err(ErrorReply::Busy(format!(
                "edge outbox holds {} undelivered updates; {remote} more do not fit",
                self.outbox.len()
            )));
        }
        let mut added = 0u64;
        for dst in dsts {
            // Invariant: no self-loop and room for every half were checked above, so no edge
            // of the batch is refused after others were applied.
            added += u64::from(self.follow(src, *dst, true, now_millis)?);
        }
        Ok(Reply::Count(added))
    }

    /// Serve a read from the applied state.
    pub fn read(&self, op: &ReadOp) -> Response {
        self.check_key(&op.shard_key())?;
        match op {
            ReadOp::FilterContains { name, keys } => {
                self.check_filter_batch(name, keys)?;
                let answers = match self.filters.get(name) {
                    Some(f) => keys.iter().map(|k| f.contains(k)).collect(),
                    None => vec![false; keys.len()],
                };
                Ok(Reply::Bools(answers))
            }
            ReadOp::TimelineRead { owner, cursor, limit } => {
                let limit = capped_limit(*limit, self.limits.page_entries_max)?;
                Ok(Reply::Page(self.timelines.read(*owner, *cursor, limit)))
            }
            ReadOp::Neighbors {
                vertex,
                direction,
                after,
                limit,
            } => {
                let limit = capped_limit(*limit, self.limits.neighbors_page_max)?;
                Ok(self.graph.neighbors(*vertex, *direction, *after, limit))
            }
            ReadOp::NeighborSet { vertex, direction } => {
                self.graph.neighbor_set(*vertex, *direction).map(Reply::Bitmap)
            }
            ReadOp::Degree { vertex, direction } => Ok(Reply::Count(self.graph.degree(*vertex, *direction))),
            ReadOp::HasEdge { src, dst } => Ok(Reply::Bool(self.graph.has_edge(*src, *dst))),
            ReadOp::Features { vertices } => self.read_features(vertices),
            ReadOp::FeedCandidates { .. }
            | ReadOp::FeedLatest { .. }
            | ReadOp::FeedTexts { .. }
            | ReadOp::FeedSeenContains { .. } => self.feed_read(op),
            ReadOp::Empi(read) => self.empi_read(read),
        }
    }

    /// Answers `ReadOp::Features`: at most `FEATURES_READ_VERTICES_MAX`
    /// vertices, every one owned by this shard (else `WrongShard`).
    fn read_features(&self, vertices: &[u64]) -> Response {
        if vertices.len() > FEATURES_READ_VERTICES_MAX {
            return Err(bad(format!(
                "{} vertices exceed the features read limit of {FEATURES_READ_VERTICES_MAX}",
                vertices.len()
            )));
        }
        for v in vertices {
            self.check_key(&ShardKey::Id(*v))?;
        }
        Ok(Reply::Features(
            vertices
                .iter()
                .map(|v| self.features.get(*v).map(<[f32]>::to_vec))
                .collect(),
        ))
    }

    /// Outbox entries not yet trimmed, grouped per destination shard:
    /// `(dest, first_seq, items)`, at most `items_max` items per destination,
    /// destinations ascending, none empty.
    pub fn outbox_pending(&self, items_max: usize) -> Vec<(ShardId, u64, Vec<EdgeUpdate>)> {
        self.outbox.pending(items_max, usize::MAX)
    }

    /// Undelivered edge updates over all destinations.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Feed-outbox messages not yet trimmed, grouped per destination shard:
    /// `(dest, first_seq, messages)`, per destination at most `items_max` messages and about
    /// `bytes_max` bytes (at least one message), destinations ascending, none empty.
    pub fn feed_outbox_pending(&self, items_max: usize, bytes_max: usize) -> Vec<(ShardId, u64, Vec<FeedMsg>)> {
        self.feed.outbox.pending(items_max, bytes_max)
    }

    /// Undelivered feed messages over all destinations.
    pub fn feed_outbox_len(&self) -> usize {
        self.feed.outbox.len()
    }

    /// EMPI-outbox messages not yet trimmed, grouped per destination shard:
    /// `(dest, first_seq, messages)`, per destination at most `items_max` messages and about
    /// `bytes_max` bytes (at least one message), destinations ascending, none empty.
    pub fn empi_outbox_pending(&self, items_max: usize, bytes_max: usize) -> Vec<(ShardId, u64, Vec<EmpiMsg>)> {
        self.empi.outbox.pending(items_max, bytes_max)
    }

    /// Undelivered EMPI messages over all destinations.
    pub fn empi_outbox_len(&self) -> usize {
        self.empi.outbox.len()
    }

    /// The cluster's shard map, once `Command::SetShardMap` has applied.
    pub fn shard_map(&self) -> Option<&ShardMap> {
        self.shard_map.as_ref()
    }

    /// The index passed to the last `apply` (0 before the first).
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// This state's shard id.
    pub fn shard(&self) -> ShardId {
        self.here.shard
    }

    /// The limits this state enforces.
    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }
}

/// A requested page size capped at `max`; zero is refused.
fn capped_limit(limit: u32, max: u32) -> Result<usize, ErrorReply> {
    if limit == 0 {
        return Err(bad("page limit must be at least 1".into()));
    }
    Ok(limit.min(max.max(1)) as usize)
}
