//! The feed's transitions and reads, as methods of `ShardState`: they need the graph (who
//! follows whom), the timelines (the authors' posts) and the feed state together.
//!
//! Every method here is pure like the rest of `apply`: time comes from the command, and every
//! iteration is over ordered maps and bitmaps.

use std::collections::{BTreeMap, BTreeSet};

use plexus_proto::{
    Direction, EntryId, ErrorReply, FeedCandidates, FeedPost, PostRef, ReadOp, Reply, Response, ShardId, ShardKey,
    UserId, WriteOp, FEED_SEEN_ITEMS_MAX,
};
use roaring::RoaringTreemap;

use super::home::{Home, HomeCaps};
use super::seen::SeenFilter;
use crate::canary::Canary;
use crate::command::{FeedBatch, FeedMsg};
use crate::state::ShardState;

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

fn no_user(user: UserId) -> ErrorReply {
    ErrorReply::NotFound(format!(
        "feed user {user} (register it with `feed user add`, or by a follow)"
    ))
}

impl ShardState {
    fn home_caps(&self) -> HomeCaps {
        HomeCaps {
            len_max: self.limits.feed.home_len_max,
            tombstones_max: self.limits.feed.home_tombstones_max,
        }
    }

    fn require_user(&self, user: UserId) -> Result<(), ErrorReply> {
        if self.feed.users.contains(user) {
            Ok(())
        } else {
            Err(no_user(user))
        }
    }

    /// `Busy` while the feed outbox holds more than its cap: writes that would add fan-out wait
    /// for delivery to catch up instead of growing it without bound.
    pub(in crate::state) fn feed_admit(&self) -> Result<(), ErrorReply> {
        let (messages, bytes) = self.feed.outbox_size();
        if bytes >= self.limits.feed.outbox_bytes_max {
            return Err(ErrorReply::Busy(format!(
                "feed outbox holds {messages} undelivered messages ({bytes} bytes)"
            )));
        }
        Ok(())
    }

    /// The materialised home timeline of `user` at `now_millis`; one past the active window is
    /// dropped (the next read rebuilds it).
    fn live_home(&mut self, user: UserId, now_millis: u64) -> Option<&mut Home> {
        let window = self.limits.feed.active_window_ms;
        let expired = match self.feed.homes.get(&user) {
            None => return None,
            Some(h) => now_millis.saturating_sub(h.active_millis()) > window,
        };
        if expired {
            self.feed.homes.remove(&user);
            return None;
        }
        self.feed.homes.get_mut(&user)
    }

    /// Followers of `author` and the author, grouped by their shard, ascending.
    fn recipients_by_shard(&self, author: UserId) -> BTreeMap<ShardId, Vec<UserId>> {
        let mut by_shard: BTreeMap<ShardId, Vec<UserId>> = BTreeMap::new();
        let followers = self.graph.set(author, Direction::In);
        for user in followers.into_iter().flat_map(RoaringTreemap::iter).chain([author]) {
            by_shard.entry(self.here.shard_of(user)).or_default().push(user);
        }
        for users in by_shard.values_mut() {
            users.sort_unstable();
        }
        by_shard
    }

    /// Sends one feed message: applied at once when `dest` is this shard, else queued.
    fn feed_send(&mut self, dest: ShardId, msg: FeedMsg, now_millis: u64) {
        if dest == self.here.shard {
            self.feed_apply_msg(msg, now_millis);
        } else {
            self.feed.outbox.push(dest, msg);
        }
    }

    /// Sends one message per recipient shard, built by `make` from that shard's recipients. The
    /// `FanoutSkipsShard` canary (simulation only) drops the message to the first remote shard.
    fn feed_fan_out(&mut self, author: UserId, now_millis: u64, make: impl Fn(Vec<UserId>) -> FeedMsg) {
        let mut skip = self.canary == Some(Canary::FanoutSkipsShard);
        for (dest, users) in self.recipients_by_shard(author) {
            if skip && dest != self.here.shard {
                skip = false;
                continue;
            }
            self.feed_send(dest, make(users), now_millis);
        }
    }

    /// The feed's client writes: posts, deletes, seen marks and user registration.
    pub(in crate::state) fn feed_write(&mut self, op: &WriteOp, now_millis: u64) -> Response {
        match op {
            WriteOp::FeedPost { author, text } => self.feed_post(*author, text, now_millis),
            WriteOp::FeedDelete { author, id } => self.feed_delete(*author, *id, now_millis),
            WriteOp::FeedSeen { user, posts } => {
                self.require_user(*user)?;
                if posts.len() > FEED_SEEN_ITEMS_MAX {
                    return Err(bad(format!(
                        "{} posts exceed the seen batch limit of {FEED_SEEN_ITEMS_MAX}",
                        posts.len()
                    )));
                }
                let sizing = self.limits.feed.seen;
                let filter = self.feed.seen.entry(*user).or_insert_with(|| SeenFilter::new(sizing));
                let mut changed = false;
                for p in posts {
                    changed |= filter.insert(*p, sizing);
                }
                Ok(Reply::Changed(changed))
            }
            WriteOp::FeedUserAdd { user } => Ok(Reply::Changed(self.feed.users.insert(*user))),
            other => Err(ErrorReply::Internal(format!("not a feed write: {other:?}"))),
        }
    }

    fn feed_post(&mut self, author: UserId, text: &[u8], now_millis: u64) -> Response {
        self.require_user(author)?;
        let max = self.limits.feed.post_bytes_max;
        if text.is_empty() || text.len() > max {
            return Err(bad(format!("a post must hold 1..={max} bytes, not {}", text.len())));
        }
        self.feed_admit()?;
        let id = self
            .timelines
            .append(author, text, now_millis, self.limits.timeline_len_max)?;
        if !self.feed.pulled.contains(author) {
            let post = FeedPost {
                post: PostRef { author, id },
                text: text.to_vec(),
            };
            self.feed_fan_out(author, now_millis, |recipients| FeedMsg::Post {
                post: post.clone(),
                recipients,
            });
        }
        Ok(Reply::Appended(id))
    }

    fn feed_delete(&mut self, author: UserId, id: EntryId, now_millis: u64) -> Response {
        self.require_user(author)?;
        self.feed_admit()?;
        let existed = self.timelines.delete(author, id);
        // A pulled author's posts since it became pulled reached no home timeline.
        let fanned_out = self.feed.pulled_since.get(&author).is_none_or(|since| id <= *since);
        if existed && fanned_out {
            let post = PostRef { author, id };
            self.feed_fan_out(author, now_millis, |recipients| FeedMsg::Delete { post, recipients });
        }
        Ok(Reply::Changed(existed))
    }

    /// After a follow or unfollow of `src` applied here (src's shard): src is a feed user; and
    /// if the edge `changed` while src's home timeline is being rebuilt, the home is dropped (the
    /// next read starts over), because the rebuild chose whom to read before the change.
    ///
    /// Why a rebuild must not outlive a change of its reader's follows: a rebuild merges only
    /// posts that an author's shard gave while it held the in-edge (`FeedLatest::follower`), so
    /// every later delete of theirs reaches the home and leaves a tombstone. An unfollow and
    /// follow again during the rebuild opens a gap in which the author's shard sends no delete.
    pub(in crate::state) fn feed_on_out_edge(&mut self, src: UserId, changed: bool) {
        self.feed.users.insert(src);
        if changed && self.feed.homes.get(&src).is_some_and(|h| !h.is_complete()) {
            self.feed.homes.remove(&src);
        }
    }

    /// After the in-half of `src → dst` changed here (dst's shard): dst is a feed user; a new
    /// follower gets dst's latest posts, a former one loses them; and dst becomes pulled once it
    /// has more followers than the threshold.
    pub(in crate::state) fn feed_on_in_edge(&mut self, src: UserId, dst: UserId, add: bool, now_millis: u64) {
        self.feed.users.insert(dst);
        if self.feed.pulled.contains(dst) {
            return;
        }
        let dest = self.here.shard_of(src);
        if !add {
            self.feed_send(dest, FeedMsg::Purge { user: src, author: dst }, now_millis);
            return;
        }
        let followers = self.graph.set(dst, Direction::In).map_or(0, RoaringTreemap::len);
        if followers > self.limits.feed.pulled_followers_min {
            self.feed_become_pulled(dst);
            self.feed.pulled_since.insert(dst, self.timelines.last_id());
            for shard in (0..self.here.shard_count).filter(|s| *s != self.here.shard) {
                self.feed.outbox.push(shard, FeedMsg::Pulled { author: dst });
            }
            return;
        }
        let posts = self.latest_posts(dst, self.limits.feed.follow_backfill_posts, None, None, true);
        if !posts.is_empty() {
            self.feed_send(dest, FeedMsg::Backfill { user: src, posts }, now_millis);
        }
    }

    /// Records here that `author` is pulled, and drops the author's posts from every home
    /// timeline of this shard: from now on readers get them from the author's timeline only.
    ///
    /// Homes must not keep them. A pulled author's later deletes reach no home (its later
    /// posts were never fanned out), so a copy left in a home (merged by a rebuild, or fanned
    /// out before) could outlive its delete, or come back when its reader follows again.
    fn feed_become_pulled(&mut self, author: UserId) {
        if self.feed.pulled.insert(author) {
            for home in self.feed.homes.values_mut() {
                home.purge(author);
            }
        }
    }

    /// Applies one feed message addressed to this shard.
    fn feed_apply_msg(&mut self, msg: FeedMsg, now_millis: u64) {
        let caps = self.home_caps();
        match msg {
            FeedMsg::Post { post, recipients } => {
                for user in recipients {
                    if let Some(home) = self.live_home(user, now_millis) {
                        home.insert(&post, caps);
                    }
                }
            }
            FeedMsg::Backfill { user, posts } => {
                if let Some(home) = self.live_home(user, now_millis) {
                    for post in &posts {
                        home.insert(post, caps);
                    }
                }
            }
            FeedMsg::Purge { user, author } => {
                if let Some(home) = self.live_home(user, now_millis) {
                    home.purge(author);
                }
            }
            FeedMsg::Delete { post, recipients } => {
                for user in recipients {
                    if let Some(home) = self.live_home(user, now_millis) {
                        home.delete(post, caps);
                    }
                }
            }
            FeedMsg::Pulled { author } => self.feed_become_pulled(author),
        }
    }

    /// `Command::FeedDelivery`: applies the messages not applied before, in order. A batch with
    /// a gap, or naming a recipient or author that does not belong where it claims, is refused
    /// whole.
    pub(in crate::state) fn feed_delivery(
        &mut self,
        from_shard: ShardId,
        first_seq: u64,
        items: &[FeedMsg],
        now_millis: u64,
    ) -> Response {
        let (skip, upto) = self.feed_check_delivery(from_shard, first_seq, items)?;
        for msg in &items[skip..] {
            self.feed_apply_msg(msg.clone(), now_millis);
        }
        if !items.is_empty() {
            self.feed.delivered.record(from_shard, upto);
        }
        Ok(Reply::Count(upto))
    }

    /// Checks a delivery without applying it: how many leading messages were applied before,
    /// and the new high-water mark.
    fn feed_check_delivery(
        &self,
        from_shard: ShardId,
        first_seq: u64,
        items: &[FeedMsg],
    ) -> Result<(usize, u64), ErrorReply> {
        let (skip, upto) = self
            .feed
            .delivered
            .admit(from_shard, first_seq, items.len())
            .map_err(|e| bad(format!("feed {e}")))?;
        let here = self.here;
        let misplaced = |users: &[UserId]| users.iter().find(|u| here.shard_of(**u) != here.shard).copied();
        for msg in items {
            let wrong = match msg {
                FeedMsg::Post { post, recipients } => misplaced(recipients)
                    .or((here.shard_of(post.post.author) != from_shard).then_some(post.post.author)),
                FeedMsg::Delete { post, recipients } => {
                    misplaced(recipients).or((here.shard_of(post.author) != from_shard).then_some(post.author))
                }
                FeedMsg::Backfill { user, .. } | FeedMsg::Purge { user, .. } => misplaced(&[*user]),
                FeedMsg::Pulled { author } => (here.shard_of(*author) != from_shard).then_some(*author),
            };
            if let Some(user) = wrong {
                return Err(bad(format!(
                    "feed message from shard {from_shard} names user {user}, who does not belong there"
                )));
            }
        }
        Ok((skip, upto))
    }

    /// `Command::FeedDeliveries`: every batch checked first (a gap or a stray recipient in any
    /// refuses the whole entry, as it would a single delivery), then applied in order.
    pub(in crate::state) fn feed_deliveries(&mut self, batches: &[FeedBatch], now_millis: u64) -> Response {
        let mut sources = BTreeSet::new();
        for b in batches {
            if !sources.insert(b.from_shard) {
                return Err(bad(format!("feed deliveries name source shard {} twice", b.from_shard)));
            }
            self.feed_check_delivery(b.from_shard, b.first_seq, &b.items)?;
        }
        let mut counts = Vec::with_capacity(batches.len());
        for b in batches {
            match self.feed_delivery(b.from_shard, b.first_seq, &b.items, now_millis)? {
                Reply::Count(upto) => counts.push(upto),
                other => return Err(ErrorReply::Internal(format!("feed delivery answered {other:?}"))),
            }
        }
        Ok(Reply::Counts(counts))
    }

    /// `Command::FeedOutboxTrim`.
    pub(in crate::state) fn feed_trim(&mut self, to_shard: ShardId, upto_seq: u64) -> Response {
        Ok(Reply::Count(self.feed.outbox.trim(to_shard, upto_seq)))
    }

    /// `Command::FeedActivate`: `Bool(true)` if the home timeline was materialised (now
    /// touched). Otherwise it starts empty (or, if an earlier rebuild did not finish, keeps what
    /// fan-out brought it since) and the answer is `Bool(false)`: the caller rebuilds it.
    pub(in crate::state) fn feed_activate(&mut self, user: UserId, now_millis: u64) -> Response {
        self.require_user(user)?;
        if let Some(home) = self.live_home(user, now_millis) {
            home.touch(now_millis);
            return Ok(Reply::Bool(home.is_complete()));
        }
        self.feed.homes.insert(user, Home::new(now_millis));
        Ok(Reply::Bool(false))
    }

    /// `Command::FeedRebuild`: merges pulled posts into a materialised home timeline.
    pub(in crate::state) fn feed_rebuild(&mut self, user: UserId, posts: &[FeedPost], now_millis: u64) -> Response {
        self.require_user(user)?;
        let posts_max = 4 * self.limits.feed.home_len_max.max(1);
        if posts.len() > posts_max {
            return Err(bad(format!("a rebuild of {} posts exceeds {posts_max}", posts.len())));
        }
        if let Some(p) = posts.iter().find(|p| p.text.len() > self.limits.item_bytes_max) {
            return Err(bad(format!("post {} of {} bytes is too large", p.post, p.text.len())));
        }
        let caps = self.home_caps();
        // Pulled authors' posts are read from their timelines, never kept in homes (see
        // `feed_become_pulled`); the rebuild may have read them before this shard learnt that.
        let fanned: Vec<&FeedPost> = posts
            .iter()
            .filter(|p| !self.feed.pulled.contains(p.post.author))
            .collect();
        let Some(home) = self.live_home(user, now_millis) else {
            // Expired again between activation and rebuild: the next read starts over.
            return Ok(Reply::Count(0));
        };
        let added = fanned.into_iter().filter(|p| home.insert(p, caps)).count();
        home.set_complete();
        Ok(Reply::Count(added as u64))
    }

    /// `author`'s latest posts ordered below `below` (exclusive) and at or above `floor`, at most
    /// `n`, newest first; with their texts, or references only (`texts` false, texts empty).
    pub(in crate::state) fn latest_posts(
        &self,
        author: UserId,
        n: usize,
        below: Option<PostRef>,
        floor: Option<PostRef>,
        texts: bool,
    ) -> Vec<FeedPost> {
        // Within one author, (id, author) order is id order: turn the bounds into id bounds.
        let before = match below {
            None => None,
            Some(b) if author < b.author => b.id.checked_add(1),
            Some(b) => Some(b.id),
        };
        self.timelines
            .newest(author, before)
            .map(|(id, text)| (PostRef { author, id }, text))
            .take_while(|(p, _)| floor.is_none_or(|f| *p >= f))
            .take(n)
            .map(|(post, text)| FeedPost {
                post,
                text: if texts { text.to_vec() } else { Vec::new() },
            })
            .collect()
    }

    /// The feed's reads.
    pub(in crate::state) fn feed_read(&self, op: &ReadOp) -> Response {
        let f = &self.limits.feed;
        match op {
            ReadOp::FeedCandidates {
                user,
                below,
                floor,
                max,
                now_millis,
            } => {
                self.require_user(*user)?;
                let home = self.feed.homes.get(user);
                let materialised = home
                    .filter(|h| h.is_complete() && now_millis.saturating_sub(h.active_millis()) <= f.active_window_ms);
                let empty = RoaringTreemap::new();
                let out = self.graph.set(*user, Direction::Out).unwrap_or(&empty);
                let seen = self.feed.seen.get(user);
                let max = (*max).min(f.candidates_max) as usize;
                let posts = materialised.map_or_else(Vec::new, |h| {
                    h.window(*below, *floor)
                        .filter(|(p, _)| p.author == *user || out.contains(p.author))
                        // A home restored from a snapshot older than the purge on `Pulled`.
                        .filter(|(p, _)| !self.feed.pulled.contains(p.author))
                        .filter(|(p, _)| !seen.is_some_and(|s| s.contains(**p)))
                        .take(max)
                        .map(|(p, _)| *p)
                        .collect()
                });
                let mut pulled: Vec<UserId> = (out & &self.feed.pulled).iter().collect();
                if self.feed.pulled.contains(*user) {
                    pulled.push(*user);
                    pulled.sort_unstable();
                }
                let followees = match materialised {
                    Some(_) => Vec::new(),
                    None => out.iter().take(f.rebuild_followees_max).collect(),
                };
                Ok(Reply::FeedCandidates(FeedCandidates {
                    materialised: materialised.is_some(),
                    active_millis: home.map_or(0, Home::active_millis),
                    posts,
                    pulled,
                    followees,
                }))
            }
            ReadOp::FeedLatest {
                authors,
                per_author,
                below,
                floor,
                texts,
                follower,
            } => {
                if authors.len() > f.latest_authors_max {
                    return Err(bad(format!(
                        "{} authors exceed the latest-posts limit of {}",
                        authors.len(),
                        f.latest_authors_max
                    )));
                }
                for a in authors {
                    self.check_key(&ShardKey::Id(*a))?;
                }
                let n = (*per_author as usize).min(f.home_len_max);
                // The author itself counts: its own deletes always reach its home.
                let followed = |a: &UserId| {
                    follower.is_none_or(|f| f == *a || self.graph.set(*a, Direction::In).is_some_and(|s| s.contains(f)))
                };
                let posts = authors
                    .iter()
                    .filter(|a| followed(a))
                    .flat_map(|a| self.latest_posts(*a, n, *below, *floor, *texts))
                    .collect();
                Ok(Reply::FeedPosts(posts))
            }
            ReadOp::FeedTexts { owner, posts } => {
                if posts.len() > f.candidates_max as usize {
                    return Err(bad(format!(
                        "{} posts exceed the texts limit of {}",
                        posts.len(),
                        f.candidates_max
                    )));
                }
                let home = self.feed.homes.get(owner);
                let found = posts
                    .iter()
                    .filter_map(|p| {
                        let text = home.and_then(|h| h.text(p)).or_else(|| {
                            (self.here.shard_of(p.author) == self.here.shard)
                                .then(|| self.timelines.get(p.author, p.id))
                                .flatten()
                        })?;
                        Some(FeedPost {
                            post: *p,
                            text: text.to_vec(),
                        })
                    })
                    .collect();
                Ok(Reply::FeedPosts(found))
            }
            ReadOp::FeedSeenContains { user, posts } => {
                self.require_user(*user)?;
                if posts.len() > f.candidates_max as usize {
                    return Err(bad(format!(
                        "{} posts exceed the seen lookup limit of {}",
                        posts.len(),
                        f.candidates_max
                    )));
                }
                let seen = self.feed.seen.get(user);
                Ok(Reply::Bools(
                    posts.iter().map(|p| seen.is_some_and(|s| s.contains(*p))).collect(),
                ))
            }
            other => Err(ErrorReply::Internal(format!("not a feed read: {other:?}"))),
        }
    }
}
