//! The social feed's replicated state on one shard: registered users, the home timelines and
//! seen filters of the readers this shard owns, which authors are pulled at read time, and the
//! feed outbox that carries fan-out to other shards.
//!
//! How a post reaches readers. A post is applied on its author's shard: it is appended to the
//! author's timeline and, unless the author is pulled, fanned out there and then, in the same
//! apply, to every follower (the author's in-edges live on the author's shard) and the author:
//! recipients on this shard get it at once, the others through one `FeedMsg::Post` per
//! destination shard in the feed outbox, delivered in order and exactly once like edge halves.
//! A follow reaches the followee's shard as an in-edge, and its apply sends the follower the
//! followee's latest posts (`Backfill`); an unfollow sends a `Purge`, a delete a `Delete`. All
//! of these travel the same ordered outbox from the author's shard to the reader's, so a reader
//! never sees a post after its delete, or a backfill after a later unfollow.
//!
//! Hybrid fan-out. An author whose follower count passes `pulled_followers_min` becomes pulled
//! for good: its later posts are not fanned out, every shard learns it (`Pulled`) and drops the
//! author's posts from its home timelines, and readers merge the author's latest posts in at
//! read time from its timeline alone (a rebuild does not merge them either). So no home holds a
//! post that a later delete, sent to the followers of the day, could miss. Staying pulled when
//! the count falls back gives the same feeds (pulling works at any count) without re-fanning
//! out a history.
//!
//! This module is state and its pure transitions; the feed service (`plexus-feed`) reads it
//! and orchestrates reads, rebuilds and ranking.

mod apply;
mod home;
mod seen;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Read as _;

use plexus_proto::{EntryId, ShardId, UserId};
use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};

use super::outbox::{Delivered, Outbox};
use crate::command::FeedMsg;
use home::Home;
use seen::SeenFilter;
pub use seen::SeenSizing;

/// The feed's settings. They are cluster configuration, not replicated state: every replica of
/// a group must be given the same values (they reach it in `StateLimits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedLimits {
    /// Posts kept per home timeline; inserting past it drops the oldest.
    pub home_len_max: usize,
    /// An author with more followers than this is pulled at read time instead of fanned out.
    pub pulled_followers_min: u64,
    /// Posts of the followee copied into a new follower's home timeline.
    pub follow_backfill_posts: usize,
    /// A home timeline is materialised while its reader was active within this window (ms).
    pub active_window_ms: u64,
    /// Sizing of the per-reader seen filters.
    pub seen: SeenSizing,
    /// Largest post text, in bytes.
    pub post_bytes_max: usize,
    /// Bytes the feed outbox may hold before posts, deletes and follows are refused (`Busy`).
    pub outbox_bytes_max: usize,
    /// Deleted posts each home timeline remembers, so a rebuild cannot bring one back.
    pub home_tombstones_max: usize,
    /// Most posts one candidates read returns, and most posts one seen lookup tests.
    pub candidates_max: u32,
    /// Most authors in one latest-posts read.
    pub latest_authors_max: usize,
    /// Most followees a candidates read lists for a rebuild (the lowest ids).
    pub rebuild_followees_max: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        Self {
            home_len_max: 800,
            pulled_followers_min: 10_000,
            follow_backfill_posts: 100,
            active_window_ms: 7 * 24 * 3_600_000,
            seen: SeenSizing {
                items_per_generation: 1_000,
                fp_rate_ppm: 5_000,
            },
            post_bytes_max: 4_096,
            outbox_bytes_max: 64 << 20,
            home_tombstones_max: 256,
            candidates_max: 4_096,
            latest_authors_max: 1_024,
            rebuild_followees_max: 5_000,
        }
    }
}

/// The feed part of one shard's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FeedState {
    /// Feed users this shard owns.
    pub(in crate::state) users: RoaringTreemap,
    /// Materialised home timelines of readers this shard owns.
    pub(in crate::state) homes: BTreeMap<UserId, Home>,
    /// Seen filters of readers this shard owns.
    pub(in crate::state) seen: BTreeMap<UserId, SeenFilter>,
    /// Every pulled author in the cluster (each shard learns of them through `Pulled`).
    pub(in crate::state) pulled: RoaringTreemap,
    /// For pulled authors this shard owns: the shard's last entry id when the author became
    /// pulled. Their posts above it were not fanned out, so deleting one sends no `Delete`.
    pub(in crate::state) pulled_since: BTreeMap<UserId, EntryId>,
    /// Fan-out owed to other shards.
    pub(in crate::state) outbox: Outbox<FeedMsg>,
    /// Per source shard, the last feed-outbox sequence applied here.
    pub(in crate::state) delivered: Delivered,
}

/// The feed state in snapshot form (bitmaps in roaring's portable format).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeedForm {
    #[serde(with = "serde_bytes")]
    users: Vec<u8>,
    homes: Vec<(UserId, Home)>,
    seen: Vec<(UserId, seen::SeenForm)>,
    #[serde(with = "serde_bytes")]
    pulled: Vec<u8>,
    pulled_since: Vec<(UserId, EntryId)>,
    outbox: Outbox<FeedMsg>,
    delivered: Vec<(ShardId, u64)>,
}

fn bitmap_bytes(set: &RoaringTreemap) -> Vec<u8> {
    let mut out = Vec::with_capacity(set.serialized_size());
    // Invariant: serialising into a Vec cannot fail.
    set.serialize_into(&mut out)
        .expect("serialising a bitmap into a Vec cannot fail");
    out
}

fn bitmap_from(bytes: &[u8], what: &str) -> Result<RoaringTreemap, String> {
    let mut reader = bytes;
    let set = RoaringTreemap::deserialize_from(&mut reader).map_err(|e| format!("feed {what}: {e}"))?;
    let mut rest = [0u8; 1];
    if reader.read(&mut rest).map_err(|e| e.to_string())? != 0 {
        return Err(format!("feed {what} has trailing bytes"));
    }
    Ok(set)
}

/// Checks that `pairs` are in strictly ascending key order (a canonical encoding).
fn ascending<K: Ord + Copy + std::fmt::Debug, V>(pairs: &[(K, V)], what: &str) -> Result<(), String> {
    match pairs.windows(2).find(|w| w[0].0 >= w[1].0) {
        Some(w) => Err(format!("feed {what} not in ascending order at {:?}", w[1].0)),
        None => Ok(()),
    }
}

impl FeedState {
    pub(crate) fn to_form(&self) -> FeedForm {
        FeedForm {
            users: bitmap_bytes(&self.users),
            homes: self.homes.iter().map(|(u, h)| (*u, h.clone())).collect(),
            seen: self.seen.iter().map(|(u, s)| (*u, s.to_form())).collect(),
            pulled: bitmap_bytes(&self.pulled),
            pulled_since: self.pulled_since.iter().map(|(u, i)| (*u, *i)).collect(),
            outbox: self.outbox.clone(),
            delivered: self.delivered.pairs(),
        }
    }

    /// Rebuilds the feed state from a snapshot, refusing non-canonical or inconsistent forms.
    pub(crate) fn from_form(form: FeedForm, limits: &FeedLimits) -> Result<Self, String> {
        ascending(&form.homes, "homes")?;
        ascending(&form.seen, "seen filters")?;
        ascending(&form.pulled_since, "pulled authors")?;
        for (user, home) in &form.homes {
            home.validate(*user)?;
        }
        let mut seen = BTreeMap::new();
        for (user, s) in form.seen {
            seen.insert(user, SeenFilter::from_form(s, limits.seen)?);
        }
        let mut outbox = form.outbox;
        outbox.restore()?;
        let pulled = bitmap_from(&form.pulled, "pulled authors")?;
        if let Some((u, _)) = form.pulled_since.iter().find(|(u, _)| !pulled.contains(*u)) {
            return Err(format!("feed author {u} has a pulled-since mark but is not pulled"));
        }
        Ok(Self {
            users: bitmap_from(&form.users, "users")?,
            homes: form.homes.into_iter().collect(),
            seen,
            pulled,
            pulled_since: form.pulled_since.into_iter().collect(),
            outbox,
            delivered: Delivered::from_pairs(&form.delivered).map_err(|e| format!("feed delivered_upto {e}"))?,
        })
    }

    /// Undelivered fan-out over all destinations: (messages, approximate bytes).
    pub(crate) fn outbox_size(&self) -> (usize, usize) {
        (self.outbox.len(), self.outbox.bytes())
    }

    /// Debug check of derived totals.
    pub(crate) fn check(&self) -> bool {
        self.outbox.check()
    }
}
