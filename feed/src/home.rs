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
//! time from the nearest replica of their shards, so like fan-out they show a few milliseconds
//! after their commit. A page reads only references to its window's posts (up to
//! `rank_candidates_max`) and fetches the texts of the few it hands out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plexus_actors::registry::{Fresh, Registry};
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
/// A materialised timeline read after this fraction of the active window is touched again.
const TOUCH_FRACTION: u64 = 8;
/// Posts per pulled author one window reads at most (newest first); a window does not reach
/// below the oldest of an author that returned all of them.
const PULL_POSTS_PER_AUTHOR: usize = 200;

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
    posts: Vec<RankKey>,
    /// The posts that came from the reader's home timeline (their texts are there).
    from_home: BTreeSet<PostRef>,
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
        let mut posts: Vec<RankKey> = Vec::with_capacity(limit);
        let mut from_home: BTreeSet<PostRef> = BTreeSet::new();
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
                .filter(|k| window.last.is_none_or(|last| k.after(&last)));
            let mut last = window.last;
            let mut left_in_window = false;
            for key in rest {
                if posts.len() == limit {
                    left_in_window = true;
                    break;
                }
                last = Some(key);
                if ranked.from_home.contains(&key.post) {
                    from_home.insert(key.post);
                }
                posts.push(key);
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
        let posts = self.texts(&posts, &from_home).await?;
        Ok(Reply::FeedPage(FeedPage { posts, next, newest }))
    }

    /// The page's posts with their texts: those from the home timeline read here, the pulled
    /// ones from their authors' shards. A post deleted since it was ranked is left out.
    async fn texts(&self, page: &[RankKey], from_home: &BTreeSet<PostRef>) -> Result<Vec<RankedPost>, ErrorReply> {
        let mut found: BTreeMap<PostRef, Vec<u8>> = BTreeMap::new();
        let take = |reply: Response, found: &mut BTreeMap<PostRef, Vec<u8>>| match reply? {
            Reply::FeedPosts(posts) => {
                found.extend(posts.into_iter().map(|p| (p.post, p.text)));
                Ok(())
            }
            other => Err(unexpected("a feed texts read", other)),
        };
        let home: Vec<PostRef> = page.iter().map(|k| k.post).filter(|p| from_home.contains(p)).collect();
        if !home.is_empty() {
            let op = ReadOp::FeedTexts {
                owner: self.user,
                posts: home,
            };
            // This replica just served a linearizable read: its applied state is current.
            take(
                self.replica
                    .read(&op, Consistency::Stale, self.registry.request_timeout)
                    .await,
                &mut found,
            )?;
        }
        let pulled: Vec<UserId> = page
            .iter()
            .filter(|k| !from_home.contains(&k.post))
            .map(|k| k.post.author)
            .collect();
        let reads = self
            .group_by_shard(&pulled)
            .into_iter()
            .map(|(shard, authors)| {
                let posts: Vec<PostRef> = page
                    .iter()
                    .map(|k| k.post)
                    .filter(|p| !from_home.contains(p) && authors.contains(&p.author))
                    .collect();
                (
                    shard,
                    ReadOp::FeedTexts {
                        owner: authors[0],
                        posts,
                    },
                )
            })
            .collect();
        for r in self.read_many(reads).await {
            take(r, &mut found)?;
        }
        Ok(page
            .iter()
            .filter_map(|k| {
                let text = found.remove(&k.post)?;
                Some(RankedPost {
                    post: FeedPost { post: k.post, text },
                    score: k.score,
                })
            })
            .collect())
    }

    /// Reads, completes and ranks one window; `None` when it holds no post at all.
    ///
    /// Each source (the home timeline, each pulled author) returns at most its limit, newest
    /// first. A source that returned its whole limit may hold older posts, so the window may not
    /// reach below its oldest returned post: otherwise a post between the two would be missed
    /// here and, being above the window's floor, in every later window too.
    async fn rank_window(&self, w: Window) -> Result<Option<Ranked>, ErrorReply> {
        let max = self.settings.rank_candidates_max;
        let home = self.candidates(w).await?;
        let mut bound = (home.posts.len() >= max).then(|| home.posts.last().copied()).flatten();
        let (pulled, pulled_bound) = self.pull(&home.pulled, w).await?;
        bound = bound.max(pulled_bound);
        let from_home: BTreeSet<PostRef> = home.posts.iter().copied().collect();
        let mut all: BTreeSet<PostRef> = from_home.clone();
        all.extend(pulled);
        let all_len = all.len();
        let window: Vec<PostRef> = all
            .into_iter()
            .rev()
            .take_while(|p| bound.is_none_or(|b| *p >= b))
            .take(max)
            .collect();
        // A window read again from a cursor has its floor fixed, so its reads cannot tell whether
        // anything lies below it: assume so (the next window's read finds out).
        let more_below = w.floor.is_some() || bound.is_some() || all_len > window.len();
        let (Some(first), Some(oldest)) = (window.first().copied(), window.last().copied()) else {
            return Ok(None);
        };
        let below = match w.below {
            Some(b) => b,
            // Invariant: a post with the largest id and author does not exist (ids are millis
            // shifted left), so the newest post always has a successor.
            None => first.successor().unwrap_or(first),
        };
        let floor = w.floor.unwrap_or(oldest);
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
            posts: rank(&window, &similarity, below, params, self.ranked),
            from_home: window.iter().copied().filter(|p| from_home.contains(p)).collect(),
            below,
            floor,
            more_below,
            newest: first.id,
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
        self.activate(now_millis).await?;
        self.rebuild(&first.followees, now_millis).await?;
        read(op).await
    }

    /// Activates the reader's home timeline: fan-out reaches it from now on.
    async fn activate(&self, now_millis: u64) -> Result<(), ErrorReply> {
        let activate = Command::FeedActivate {
            user: self.user,
            now_millis,
        };
        match self.replica.propose(activate, self.registry.request_timeout).await? {
            Reply::Bool(_) => Ok(()),
            other => Err(unexpected("a feed activation", other)),
        }
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

    /// Materialises the activated home timeline: merges the latest posts of `followees` and the
    /// reader's own, read at their shards' leaders after the activation, so nothing posted in
    /// between is missed. An author's shard answers only if it knows the reader follows it (the
    /// in-edge is there): from then on its deletes reach the home, so none is undone by the
    /// merge; a follow still on its way brings the author's posts as a backfill instead.
    async fn rebuild(&self, followees: &[UserId], now_millis: u64) -> Result<(), ErrorReply> {
        let timeout = self.registry.request_timeout;
        let mut authors: Vec<UserId> = followees.to_vec();
        authors.push(self.user);
        let budget = 4 * self.settings.home_len_max;
        let per_author = (budget / authors.len()).clamp(1, self.settings.follow_backfill_posts.max(1));
        let reads: Vec<(ShardId, ReadOp)> = self
            .group_by_shard(&authors)
            .into_iter()
            .map(|(shard, authors)| {
                let op = ReadOp::FeedLatest {
                    authors,
                    per_author: per_author as u32,
                    below: None,
                    floor: None,
                    texts: true,
                    follower: Some(self.user),
                };
                (shard, op)
            })
            .collect();
        let reads = self.registry.read_many(reads, Fresh::Leader).await;
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

    /// Stale reads of many shards, answered in order (`Registry::read_many`).
    async fn read_many(&self, reads: Vec<(ShardId, ReadOp)>) -> Vec<Response> {
        self.registry.read_many(reads, Fresh::Stale).await
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

    /// The window's posts of pulled authors (at most `PULL_POSTS_PER_AUTHOR` each, newest first),
    /// minus those the reader has seen; and the oldest post of an author that returned its whole
    /// allowance, below which the window may not reach. Read from the nearest replica of each
    /// author's shard: like fan-out, a pulled post shows a few milliseconds after its commit.
    async fn pull(&self, authors: &[UserId], w: Window) -> Result<(Vec<PostRef>, Option<PostRef>), ErrorReply> {
        if authors.is_empty() {
            return Ok((Vec::new(), None));
        }
        let reads = self
            .group_by_shard(authors)
            .into_iter()
            .map(|(shard, authors)| {
                let op = ReadOp::FeedLatest {
                    authors,
                    per_author: PULL_POSTS_PER_AUTHOR as u32,
                    below: w.below,
                    floor: w.floor,
                    texts: false,
                    follower: None,
                };
                (shard, op)
            })
            .collect();
        let reads = self.read_many(reads).await;
        let mut posts = Vec::new();
        let mut bound: Option<PostRef> = None;
        for r in reads {
            match r? {
                Reply::FeedPosts(p) => {
                    let mut per_author: BTreeMap<UserId, (usize, PostRef)> = BTreeMap::new();
                    for post in &p {
                        let e = per_author.entry(post.post.author).or_insert((0, post.post));
                        e.0 += 1;
                        e.1 = e.1.min(post.post);
                    }
                    for (n, oldest) in per_author.into_values() {
                        if n >= PULL_POSTS_PER_AUTHOR {
                            bound = bound.max(Some(oldest));
                        }
                    }
                    posts.extend(p.into_iter().map(|p| p.post));
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
                posts: chunk.to_vec(),
            };
            let seen = match self.replica.read_applied(&op)? {
                Reply::Bools(b) if b.len() == chunk.len() => b,
                other => return Err(unexpected("a seen lookup", other)),
            };
            kept.extend(chunk.iter().zip(seen).filter(|(_, s)| !s).map(|(p, _)| *p));
        }
        Ok((kept, bound))
    }

    /// Similarity of the reader to each author of the window, from the scoring pool; empty (all
    /// zero) when the node has no pool or scoring fails: ranking then falls back to recency.
    async fn similarity(&self, window: &[PostRef]) -> BTreeMap<UserId, f32> {
        let Some(pool) = self.registry.scoring() else {
            return BTreeMap::new();
        };
        // The node's GraphSAGE model when it was given one, else the neighbour mean.
        let mode = match pool.model() {
            Some(_) => ScoreMode::Sage,
            None => ScoreMode::NeighborMean,
        };
        let mut authors: Vec<UserId> = window.iter().map(|p| p.author).filter(|a| *a != self.user).collect();
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
            mode,
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
