//! One home-feed page, at the leader of the reader's shard.
//!
//! Steps: read the window's posts from the reader's materialised home timeline (a linearizable
//! read on the local replica; if the timeline is not materialised, activate and rebuild it
//! first), pull the posts of followed authors that are not fanned out, drop what the reader has
//! seen, keep the newest `rank_candidates_max` as the window, rank it, and hand out the next
//! posts in rank order after the cursor. A page that exhausts its window continues in the next
//! older one, so pages are full while posts remain.
//!
//! What a reader sees while fan-out is in flight: a post is acknowledged once it is durable in
//! its author's timeline; followers' home timelines get it when the author's shard delivers its
//! feed outbox (usually within tens of milliseconds), so a feed read right after a post may not
//! show it yet. Posts of pulled (high-fan-out) authors are read from their timelines at read
//! time, linearizably at their shards' leaders.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use plexus_actors::registry::Registry;
use plexus_core::Command;
use plexus_proto::{
    shard_for_key, Consistency, ErrorReply, FeedCandidates, FeedCursor, FeedPage, FeedPost, PostRef, RankedPost,
    ReadOp, Reply, Response, ScoreMode, ScoreRequest, ShardId, ShardKey, UserId, FEED_PAGE_ITEMS_MAX,
    SCORE_CANDIDATES_MAX, SCORE_K_MAX,
};
use plexus_raft::replica::Replica;

use crate::cursor::{above_id, Cursor, RankKey};
use crate::rank::{rank, RankParams};
use crate::FeedSettings;

/// Windows one page may run through: a page stops short rather than scan without end.
const WINDOWS_PER_PAGE_MAX: usize = 8;
/// Shard reads of one page (pulls, rebuild) in flight at once.
const READS_IN_FLIGHT_MAX: usize = 16;
/// A materialised timeline read after this fraction of the active window is touched again.
const TOUCH_FRACTION: u64 = 8;

fn bad(msg: String) -> ErrorReply {
    ErrorReply::BadRequest(msg)
}

fn unexpected(what: &str, reply: Reply) -> ErrorReply {
    ErrorReply::Internal(format!("unexpected answer to {what}: {reply:?}"))
}

/// The window a page reads, and where in its rank order the page starts.
#[derive(Clone, Copy, Debug)]
struct Window {
    below: Option<PostRef>,
    floor: Option<PostRef>,
    /// The feed ends at `floor` (a refresh from `After`).
    last_window: bool,
    last: Option<RankKey>,
}

/// A window's posts in rank order, with its bounds fixed.
struct Ranked {
    posts: Vec<(RankKey, FeedPost)>,
    below: PostRef,
    floor: PostRef,
    /// Older posts may exist below `floor`.
    more_below: bool,
    /// The id of the window's newest post.
    newest: u64,
}

/// The page request's context.
pub(crate) struct Reader<'a> {
    pub(crate) settings: &'a FeedSettings,
    pub(crate) registry: Arc<Registry>,
    pub(crate) replica: Replica,
    pub(crate) user: UserId,
    pub(crate) ranked: bool,
}

impl Reader<'_> {
    /// Serves one page.
    pub(crate) async fn page(&self, limit: u32, cursor: FeedCursor) -> Response {
        if limit == 0 || limit > FEED_PAGE_ITEMS_MAX {
            return Err(bad(format!("limit {limit} is outside 1..={FEED_PAGE_ITEMS_MAX}")));
        }
        let mut window = match cursor {
            FeedCursor::Latest => Window {
                below: None,
                floor: None,
                last_window: false,
                last: None,
            },
            FeedCursor::After(id) => match above_id(id) {
                Some(floor) => Window {
                    below: None,
                    floor: Some(floor),
                    last_window: true,
                    last: None,
                },
                None => return Ok(Reply::FeedPage(FeedPage::default())),
            },
            FeedCursor::Before(token) => {
                let c = Cursor::decode(&token, self.user, self.ranked).map_err(bad)?;
                Window {
                    below: Some(c.below),
                    floor: c.floor,
                    last_window: c.last_window,
                    last: c.last,
                }
            }
        };
        let limit = limit as usize;
        let mut posts: Vec<RankedPost> = Vec::with_capacity(limit);
        let mut newest = None;
        let mut next = None;
        for _ in 0..WINDOWS_PER_PAGE_MAX {
            let Some(ranked) = self.rank_window(window).await? else {
                break;
            };
            newest = newest.or(Some(ranked.newest));
            let rest = ranked
                .posts
                .into_iter()
                .filter(|(k, _)| window.last.is_none_or(|last| k.after(&last)));
            let mut last = window.last;
            let mut left_in_window = false;
            for (key, post) in rest {
                if posts.len() == limit {
                    left_in_window = true;
                    break;
                }
                last = Some(key);
                posts.push(RankedPost { post, score: key.score });
            }
            let here = Cursor {
                user: self.user,
                ranked: self.ranked,
                below: ranked.below,
                floor: Some(ranked.floor),
                last_window: window.last_window,
                last,
            };
            if left_in_window {
                next = Some(here.encode());
                break;
            }
            if window.last_window || !ranked.more_below {
                break;
            }
            // The window is exhausted: the next one is the newest posts below its floor.
            window = Window {
                below: Some(ranked.floor),
                floor: None,
                last_window: false,
                last: None,
            };
            if posts.len() == limit {
                let open = Cursor {
                    floor: None,
                    last: None,
                    below: ranked.floor,
                    ..here
                };
                next = Some(open.encode());
                break;
            }
        }
        Ok(Reply::FeedPage(FeedPage { posts, next, newest }))
    }

    /// Reads, completes and ranks one window; `None` when it holds no post at all.
    async fn rank_window(&self, w: Window) -> Result<Option<Ranked>, ErrorReply> {
        let max = self.settings.rank_candidates_max;
        let home = self.candidates(w).await?;
        let home_full = home.posts.len() >= max;
        let (pulled, pulled_full) = self.pull(&home.pulled, w, max).await?;
        let mut all: BTreeMap<PostRef, FeedPost> = BTreeMap::new();
        for p in home.posts.into_iter().chain(pulled) {
            all.entry(p.post).or_insert(p);
        }
        let more_below = home_full || pulled_full || all.len() > max;
        let window: Vec<FeedPost> = all.into_values().rev().take(max).collect();
        let (Some(first), Some(oldest)) = (window.first().cloned(), window.last().cloned()) else {
            return Ok(None);
        };
        let below = match w.below {
            Some(b) => b,
            // Invariant: a post with the largest id and author does not exist (ids are millis
            // shifted left), so the newest post always has a successor.
            None => first.post.successor().unwrap_or(first.post),
        };
        let floor = w.floor.unwrap_or(oldest.post);
        let similarity = if self.ranked {
            self.similarity(&window).await
        } else {
            BTreeMap::new()
        };
        let params = RankParams {
            similarity_weight: self.settings.similarity_weight,
            half_life_ms: self.settings.recency_half_life_ms,
        };
        Ok(Some(Ranked {
            posts: rank(window, &similarity, below, params, self.ranked),
            below,
            floor,
            more_below,
            newest: first.post.id,
        }))
    }

    /// The window's posts from the reader's home timeline, rebuilding it first if it is not
    /// materialised, and marking the reader active now and then.
    async fn candidates(&self, w: Window) -> Result<FeedCandidates, ErrorReply> {
        let now_millis = self.registry.clock.now_millis();
        let op = ReadOp::FeedCandidates {
            user: self.user,
            below: w.below,
            floor: w.floor,
            max: self.settings.rank_candidates_max as u32,
            now_millis,
        };
        let timeout = self.registry.request_timeout;
        let read = |op: ReadOp| async move {
            match self.replica.read(&op, Consistency::Linearizable, timeout).await? {
                Reply::FeedCandidates(c) => Ok(c),
                other => Err(unexpected("a feed candidates read", other)),
            }
        };
        let first = read(op.clone()).await?;
        if first.materialised {
            if now_millis.saturating_sub(first.active_millis) > self.settings.active_window_ms / TOUCH_FRACTION {
                self.touch_later(now_millis);
            }
            return Ok(first);
        }
        self.rebuild(&first.followees, now_millis).await?;
        read(op).await
    }

    /// Marks the reader active in the background: the page does not wait for the write.
    fn touch_later(&self, now_millis: u64) {
        let replica = self.replica.clone();
        let (user, timeout) = (self.user, self.registry.request_timeout);
        tokio::spawn(async move {
            if let Err(e) = replica
                .propose(Command::FeedActivate { user, now_millis }, timeout)
                .await
            {
                tracing::debug!(user, error = %e, "feed activity mark deferred");
            }
        });
    }

    /// Materialises the reader's home timeline: activate (fan-out reaches it from now on), then
    /// merge the latest posts of every followed author and the reader's own, read at their
    /// shards' leaders after the activation, so nothing posted in between is missed.
    async fn rebuild(&self, followees: &[UserId], now_millis: u64) -> Result<(), ErrorReply> {
        let timeout = self.registry.request_timeout;
        let activate = Command::FeedActivate {
            user: self.user,
            now_millis,
        };
        match self.replica.propose(activate, timeout).await? {
            Reply::Bool(_) => {}
            other => return Err(unexpected("a feed activation", other)),
        }
        let mut authors: Vec<UserId> = followees.to_vec();
        authors.push(self.user);
        let budget = 4 * self.settings.home_len_max;
        let per_author = (budget / authors.len()).clamp(1, self.settings.follow_backfill_posts.max(1));
        let by_shard = self.group_by_shard(&authors);
        let registry = &self.registry;
        let reads = stream::iter(by_shard)
            .map(|(shard, authors)| async move {
                let op = ReadOp::FeedLatest {
                    authors,
                    per_author: per_author as u32,
                    below: None,
                    floor: None,
                };
                registry.read_at_leader(shard, op).await
            })
            .buffered(READS_IN_FLIGHT_MAX)
            .collect::<Vec<Response>>()
            .await;
        let mut posts = Vec::new();
        for r in reads {
            match r? {
                Reply::FeedPosts(p) => posts.extend(p),
                other => return Err(unexpected("a latest-posts read", other)),
            }
        }
        posts.sort_by_key(|p| std::cmp::Reverse(p.post));
        posts.truncate(budget);
        let merge = Command::FeedRebuild {
            user: self.user,
            posts,
            now_millis,
        };
        match self.replica.propose(merge, timeout).await? {
            Reply::Count(_) => Ok(()),
            other => Err(unexpected("a feed rebuild", other)),
        }
    }

    /// Authors grouped by shard (each group at most the state's per-read author limit).
    fn group_by_shard(&self, authors: &[UserId]) -> Vec<(ShardId, Vec<UserId>)> {
        const AUTHORS_PER_READ_MAX: usize = 1_024;
        let mut by_shard: BTreeMap<ShardId, Vec<UserId>> = BTreeMap::new();
        for a in authors {
            by_shard
                .entry(shard_for_key(&ShardKey::Id(*a), self.registry.shard_count))
                .or_default()
                .push(*a);
        }
        by_shard
            .into_iter()
            .flat_map(|(s, a)| {
                a.chunks(AUTHORS_PER_READ_MAX)
                    .map(|c| (s, c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The window's posts of pulled authors, minus those the reader has seen; and whether any
    /// author had more than `max` in the window (so older ones may remain below it).
    async fn pull(&self, authors: &[UserId], w: Window, max: usize) -> Result<(Vec<FeedPost>, bool), ErrorReply> {
        if authors.is_empty() {
            return Ok((Vec::new(), false));
        }
        let registry = &self.registry;
        let reads = stream::iter(self.group_by_shard(authors))
            .map(|(shard, authors)| async move {
                let op = ReadOp::FeedLatest {
                    authors,
                    per_author: max as u32,
                    below: w.below,
                    floor: w.floor,
                };
                // At the leader: a post deleted before this read began must not come back.
                registry.read_at_leader(shard, op).await
            })
            .buffered(READS_IN_FLIGHT_MAX)
            .collect::<Vec<Response>>()
            .await;
        let mut posts = Vec::new();
        let mut full = false;
        for r in reads {
            match r? {
                Reply::FeedPosts(p) => {
                    let mut per_author: BTreeMap<UserId, usize> = BTreeMap::new();
                    for post in &p {
                        *per_author.entry(post.post.author).or_default() += 1;
                    }
                    full |= per_author.values().any(|n| *n >= max);
                    posts.extend(p);
                }
                other => return Err(unexpected("a latest-posts read", other)),
            }
        }
        // The seen filter lives on the reader's shard, here; this replica just answered a
        // linearizable read, so its applied state is current.
        let mut kept = Vec::with_capacity(posts.len());
        for chunk in posts.chunks(self.settings.rank_candidates_max.max(1)) {
            let op = ReadOp::FeedSeenContains {
                user: self.user,
                posts: chunk.iter().map(|p| p.post).collect(),
            };
            let seen = match self
                .replica
                .read(&op, Consistency::Stale, registry.request_timeout)
                .await?
            {
                Reply::Bools(b) if b.len() == chunk.len() => b,
                other => return Err(unexpected("a seen lookup", other)),
            };
            kept.extend(chunk.iter().zip(seen).filter(|(_, s)| !s).map(|(p, _)| p.clone()));
        }
        Ok((kept, full))
    }

    /// Similarity of the reader to each author of the window, from the scoring pool; empty (all
    /// zero) when the node has no pool or scoring fails: ranking then falls back to recency.
    async fn similarity(&self, window: &[FeedPost]) -> BTreeMap<UserId, f32> {
        if self.registry.scoring().is_none() {
            return BTreeMap::new();
        }
        let mut authors: Vec<UserId> = window
            .iter()
            .map(|p| p.post.author)
            .filter(|a| *a != self.user)
            .collect();
        authors.sort_unstable();
        authors.dedup();
        authors.truncate(SCORE_CANDIDATES_MAX.min(SCORE_K_MAX as usize));
        if authors.is_empty() {
            return BTreeMap::new();
        }
        let req = ScoreRequest {
            vertex: self.user,
            k: authors.len() as u32,
            candidates: authors,
            mode: ScoreMode::NeighborMean,
        };
        match plexus_actors::score::execute_score(&self.registry, &self.replica, req).await {
            Ok(Reply::Scores(scores)) => scores.into_iter().collect(),
            Ok(other) => {
                tracing::debug!(
                    user = self.user,
                    ?other,
                    "unexpected scoring answer; ranking by recency"
                );
                BTreeMap::new()
            }
            Err(e) => {
                tracing::debug!(user = self.user, error = %e, "scoring failed; ranking by recency");
                BTreeMap::new()
            }
        }
    }
}
