//! The feed scenario: clients that follow, unfollow, post, delete, read home feeds page by page
//! and mark posts seen, through the real client library and the nodes' real feed service.
//!
//! What it is: each feed client owns a few feed users (it alone posts as them and follows from
//! them; it follows anyone's users), picks operations by the seed's weights and records what it
//! did and what came back. Posts per author stay below the state machine's backfill size, and
//! users few enough that no home timeline reaches its cap, so the final expected home feed of
//! every user is exact (`checkers::feed`). A home read pages through the whole feed with the
//! cursors the service returns; a post seen twice in one paging session is recorded there and
//! then, since only the client can see it.
//!
//! What it is not: a checker of final states (`checkers::feed` is).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_client::{Client, ClientError, FeedCursor, PostRef};
use plexus_proto::{shard_for_key, Cursor, Direction, ErrorReply, ReadOp, Reply, ShardKey};
use rand::rngs::StdRng;
use rand::Rng;

use crate::checkers::feed::FeedFinal;
use crate::cluster::Cluster;
use crate::net::SimNet;
use crate::params::{salt, SimParams};
use crate::trace::Trace;
use crate::workload::failure;

/// First feed user id: far from the ids the other workload uses.
pub const FEED_USER_BASE: u64 = 900_000;
/// Posts per author at most: below the nodes' backfill size (`FEED_BACKFILL_POSTS`), so a
/// follow or a rebuild copies all of them.
pub const POSTS_PER_AUTHOR_MAX: u64 = 25;
/// Posts a follow copies into the follower's home timeline (the nodes' setting).
pub const FEED_BACKFILL_POSTS: usize = 100;
/// Posts on one home page.
pub const HOME_PAGE_POSTS: u32 = 7;
/// Pages one home read session may take at most (then it stops, as a reader would).
pub const HOME_PAGES_MAX: usize = 80;

/// The feed users client `client` owns.
pub fn own_users(client: u64, per_client: u64) -> Vec<u64> {
    (0..per_client).map(|i| FEED_USER_BASE + client * 100 + i).collect()
}

/// Every feed user of `clients` clients.
pub fn all_users(clients: u64, per_client: u64) -> Vec<u64> {
    (1..=clients).flat_map(|c| own_users(c, per_client)).collect()
}

/// One feed operation as a client issued it, with what it needs to be checked.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedAction {
    /// Register a user.
    AddUser(u64),
    /// `src` follows `dst`.
    Follow(u64, u64),
    /// `src` unfollows `dst`.
    Unfollow(u64, u64),
    /// A post; the answer is its reference.
    Post(u64, Vec<u8>),
    /// Delete a post.
    Delete(PostRef),
    /// Mark posts seen.
    Seen(u64, Vec<PostRef>),
    /// Read `user`'s home feed page by page, ranked or not: the posts in page order.
    Home {
        /// The reader.
        user: u64,
        /// Ranked or newest first.
        ranked: bool,
    },
}

/// What a feed operation came to.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedOutcome {
    /// A write's answer: whether it changed something.
    Done(bool),
    /// A post's reference.
    Posted(PostRef),
    /// A home read: every post handed out, in order, over all pages.
    Pages(Vec<PostRef>),
}

/// One completed feed operation.
pub type FeedRecord = crate::workload::Completed<FeedAction, FeedOutcome>;

/// The feed history of a run.
pub type FeedHistory = Arc<Mutex<Vec<FeedRecord>>>;

/// How feed clients behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedMix {
    /// Feed clients (0: no feed scenario).
    pub clients: u64,
    /// Feed users each client owns.
    pub users_per_client: u64,
    /// Relative weights of follow, unfollow, post, delete, home read, seen.
    pub weights: [u32; 6],
    /// An author with more followers than this is pulled at read time (the nodes' setting).
    pub pulled_followers_min: u64,
    /// Longest pause between one client's operations, in milliseconds.
    pub think_ms_max: u64,
}

/// Reads `user`'s whole home feed, page by page, as one reader session would.
pub async fn read_all_pages(cl: &Client, user: u64, ranked: bool) -> Result<Vec<PostRef>, ClientError> {
    let mut out = Vec::new();
    let mut cursor = FeedCursor::Latest;
    for _ in 0..HOME_PAGES_MAX {
        let page = cl.feed_home(user, HOME_PAGE_POSTS, cursor, ranked).await?;
        out.extend(page.posts.iter().map(|p| p.post.post));
        match page.next {
            Some(next) => cursor = FeedCursor::Before(next),
            None => break,
        }
    }
    Ok(out)
}

/// Runs feed client `client` until `stop` is set.
#[allow(clippy::too_many_arguments)]
pub async fn run_feed_client(
    client: u64,
    net: Arc<SimNet>,
    nodes: BTreeMap<String, u64>,
    mut rng: StdRng,
    mix: FeedMix,
    history: FeedHistory,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let Some(cl) = crate::workload::connect(client, &net, &nodes, rng.gen::<u64>(), &stop, &trace).await else {
        return;
    };
    let own = own_users(client, mix.users_per_client);
    let everyone = all_users(mix.clients, mix.users_per_client);
    let total: u32 = mix.weights.iter().sum::<u32>().max(1);
    let mut posts_by: BTreeMap<u64, u64> = BTreeMap::new();
    let mut posted: Vec<PostRef> = Vec::new();
    let mut last_page: Vec<PostRef> = Vec::new();
    let mut registered: BTreeSet<u64> = BTreeSet::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let me = own[rng.gen_range(0..own.len())];
        let other = everyone[rng.gen_range(0..everyone.len())];
        let mut pick = rng.gen_range(0..total);
        let mut kind = 0;
        while pick >= mix.weights[kind] {
            pick -= mix.weights[kind];
            kind += 1;
        }
        let action = if !registered.contains(&me) {
            FeedAction::AddUser(me)
        } else {
            match kind {
                0 if other != me => FeedAction::Follow(me, other),
                1 if other != me => FeedAction::Unfollow(me, other),
                2 if posts_by.get(&me).copied().unwrap_or(0) < POSTS_PER_AUTHOR_MAX => {
                    *posts_by.entry(me).or_default() += 1;
                    FeedAction::Post(me, format!("p{client}-{n}").into_bytes())
                }
                3 if !posted.is_empty() => FeedAction::Delete(posted[rng.gen_range(0..posted.len())]),
                5 if !last_page.is_empty() => {
                    let k = rng.gen_range(1..=last_page.len().min(3));
                    FeedAction::Seen(me, last_page[..k].to_vec())
                }
                _ => FeedAction::Home {
                    user: me,
                    ranked: rng.gen_bool(0.5),
                },
            }
        };
        let invoked_us = trace.now_us();
        let result: Result<FeedOutcome, ClientError> = match action.clone() {
            FeedAction::AddUser(u) => cl.feed_user_add(u).await.map(FeedOutcome::Done),
            FeedAction::Follow(a, b) => cl.follow(a, b).await.map(FeedOutcome::Done),
            FeedAction::Unfollow(a, b) => cl.unfollow(a, b).await.map(FeedOutcome::Done),
            FeedAction::Post(a, text) => cl.feed_post(a, text).await.map(FeedOutcome::Posted),
            FeedAction::Delete(p) => cl.feed_delete(p.author, p.id).await.map(FeedOutcome::Done),
            FeedAction::Seen(u, posts) => cl.feed_seen(u, posts).await.map(FeedOutcome::Done),
            FeedAction::Home { user, ranked } => read_all_pages(&cl, user, ranked).await.map(FeedOutcome::Pages),
        };
        match (&action, &result) {
            (FeedAction::AddUser(u), Ok(_)) => {
                registered.insert(*u);
            }
            (FeedAction::Post(..), Ok(FeedOutcome::Posted(p))) => posted.push(*p),
            (FeedAction::Home { .. }, Ok(FeedOutcome::Pages(p))) => last_page = p.iter().take(10).copied().collect(),
            _ => {}
        }
        let result = result.map_err(failure);
        let shown = match &result {
            Ok(FeedOutcome::Pages(p)) => format!("pages n={} first={:?}", p.len(), p.first()),
            other => format!("{other:?}"),
        };
        trace.event(format_args!("feed client {client} {action:?} -> {shown}"));
        history.lock().unwrap_or_else(|p| p.into_inner()).push(FeedRecord {
            client,
            action,
            invoked_us,
            completed_us: trace.now_us(),
            result,
        });
        let think = rng.gen_range(1..=mix.think_ms_max.max(1));
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    cl.close().await;
}

/// What the healed cluster holds for the feed: every feed user's final timeline, follows and
/// seen answers, read from a replica's state, and each user's whole home feed (time-ordered and
/// ranked) read through the real service by a fresh client.
pub async fn final_feed(cluster: &Cluster, params: &SimParams, net: &Arc<SimNet>, trace: &Trace) -> FeedFinal {
    let mix = &params.feed;
    let users = all_users(mix.clients, mix.users_per_client);
    let read =
        |user: u64, op: ReadOp| cluster.read_applied(shard_for_key(&ShardKey::Id(user), params.shard_count), &op);
    let mut end = FeedFinal::default();
    for u in &users {
        let op = ReadOp::TimelineRead {
            owner: *u,
            cursor: Cursor::After(0),
            limit: 1_000,
        };
        if let Some(Reply::Page(p)) = read(*u, op) {
            let posts = p.entries.iter().map(|e| PostRef { author: *u, id: e.id }).collect();
            end.timelines.insert(*u, posts);
        }
        let op = ReadOp::Neighbors {
            vertex: *u,
            direction: Direction::Out,
            after: None,
            limit: 10_000,
        };
        if let Some(Reply::Vertices { ids, .. }) = read(*u, op) {
            end.follows.insert(*u, ids.into_iter().collect());
        }
    }
    for u in &users {
        let candidates = end.candidates(*u);
        let op = ReadOp::FeedSeenContains {
            user: *u,
            posts: candidates.clone(),
        };
        if let Some(Reply::Bools(b)) = read(*u, op) {
            end.seen.insert(*u, candidates.into_iter().zip(b).collect());
        }
    }
    let seed = params.seed ^ salt::FEED_CLIENT;
    let stop = AtomicBool::new(false);
    let Some(cl) = crate::workload::connect(0, net, &cluster.client_addrs(), seed, &stop, trace).await else {
        return end;
    };
    for u in &users {
        for ranked in [false, true] {
            let got = match read_all_pages(&cl, *u, ranked).await {
                Ok(posts) => Ok(posts),
                // A user no client registered has no feed to check.
                Err(ClientError::Server(ErrorReply::NotFound(_))) => continue,
                Err(e) => Err(e.to_string()),
            };
            trace.event(format_args!(
                "feed final user {u} ranked={ranked} -> {:?}",
                got.as_ref().map(Vec::len)
            ));
            let slot = if ranked {
                &mut end.ranked
            } else {
                &mut end.chronological
            };
            slot.insert(*u, got);
        }
    }
    cl.close().await;
    end
}
